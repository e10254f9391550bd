"""One W&B run per job: rank 0 only, offline by default, never a secret on disk.

Compute nodes usually have no network, so runs are written offline into the run directory and uploaded later
from a login node with `vit-dt sync SWEEP_DIR`. The API key is only ever read by wandb itself from the
environment; vit-dt never passes it, and scrubs it (and anything that looks like a secret) out of the config
before W&B writes it. A W&B failure never stops training: the run degrades to a no-op with a warning, and the
results store keeps the numbers. See docs/wandb.md.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("vit_dt.wandb")

WANDB_MODES = ("offline", "online", "disabled")
DEFAULT_MODE = "offline"
DEFAULT_PROJECT = "vit-dt"
REDACTED = "<redacted>"
SECRET_KEY_PARTS = ("key", "token", "secret", "password")
_MIN_SECRET_LEN = 8     # shorter env values would redact ordinary words and numbers


# ---------------------------------------------------------------- configuration and scrubbing

def resolve_mode(cfg: Mapping[str, Any]) -> str:
    """cfg.wandb.mode if set (the default config reads $WANDB_MODE), else $WANDB_MODE, else offline."""
    mode = (cfg.get("wandb") or {}).get("mode") or os.environ.get("WANDB_MODE") or DEFAULT_MODE
    mode = str(mode).strip().lower()
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={mode!r} is not valid; valid: {', '.join(WANDB_MODES)} "
                         f"(set it with wandb.mode=... or $WANDB_MODE)")
    return mode


def flatten(tree: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"lr": 1e-3}} -> {"trainer.lr": 1e-3}: one W&B config column per Hydra override key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def _secret_values() -> list[str]:
    value = os.environ.get("WANDB_API_KEY", "")
    return [value] if len(value) >= _MIN_SECRET_LEN else []


def looks_secret(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def scrub_secrets(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy with values under secret-looking keys and every occurrence of $WANDB_API_KEY's value redacted."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {k: (REDACTED if looks_secret(str(k)) and v is not None else scrub_secrets(v, secrets))
                for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):   # lists, tuples, OmegaConf ListConfig
        return [scrub_secrets(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    return value


def flat_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config W&B records at init: flattened, then scrubbed (key names are checked at every level)."""
    return scrub_secrets(flatten(scrub_secrets(cfg)))


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(str(item)[:64], None)     # W&B rejects tags longer than 64 characters
    return list(seen)


# ---------------------------------------------------------------- the run

class WandbRun:
    """A W&B run, or a no-op (rank != 0, mode disabled, or after a W&B failure) that writes nothing."""

    def __init__(self, run: Any = None, mode: str = "disabled"):
        self._run, self.mode = run, mode
        self._last_step: int | None = None
        self._warned_step = False

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def dir(self) -> Path | None:
        """The W&B run directory (offline-run-...), for `vit-dt sync` and tests; None when inactive."""
        return Path(self._run.dir).parent if self._run is not None else None

    @classmethod
    def start(cls, cfg: Mapping[str, Any], run_dir: Path, *, rank: int, group: str | None, job_type: str,
              tags: list[str], name: str | None) -> "WandbRun":
        mode = resolve_mode(cfg)           # a bad mode is a config error on every rank, so check it first
        if rank != 0 or mode == "disabled":
            return cls()
        wb_cfg = cfg.get("wandb") or {}
        secrets = _secret_values()
        init_kwargs = dict(
            project=wb_cfg.get("project") or DEFAULT_PROJECT,
            entity=wb_cfg.get("entity") or None,
            group=scrub_secrets(group or wb_cfg.get("group") or None, secrets),
            job_type=scrub_secrets(job_type, secrets),
            tags=scrub_secrets(_dedupe(list(tags)), secrets),
            name=scrub_secrets(name, secrets),
            config=flat_config(cfg),
            dir=str(run_dir),
        )
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run = cls._init(mode, init_kwargs)
        if run is None and mode == "online":
            log.warning("W&B online init failed; writing the run offline instead (upload it with `vit-dt sync`)")
            mode, run = "offline", cls._init("offline", init_kwargs)
        return cls(run, mode) if run is not None else cls()

    @staticmethod
    def _init(mode: str, kwargs: dict) -> Any:
        try:
            import wandb

            return wandb.init(mode=mode, **kwargs)
        except Exception as error:  # noqa: BLE001 - W&B must never stop training
            log.warning("W&B init (mode=%s) failed, continuing without W&B: %s", mode, error)
            return None

    def _guard(self, what: str, call) -> None:
        if self._run is None:
            return
        try:
            call()
        except Exception as error:  # noqa: BLE001
            log.warning("W&B %s failed, W&B is off for the rest of this run: %s", what, error)
            self._run = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """One history row at `step`; rows with the same step merge. Steps must not go back: W&B drops such rows."""
        if self._run is None:
            return
        if self._last_step is not None and step < self._last_step and not self._warned_step:
            log.warning("W&B drops history rows whose step goes back (step %d after %d); log with steps that "
                        "only grow", step, self._last_step)
            self._warned_step = True
        self._last_step = step if self._last_step is None else max(step, self._last_step)
        values = {k: v for k, v in metrics.items() if v is not None}
        self._guard("log", lambda: self._run.log(values, step=step))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        values = scrub_secrets({k: v for k, v in metrics.items() if v is not None})
        self._guard("summary", lambda: self._run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            log.warning("W&B finish failed: %s", error)


# ---------------------------------------------------------------- finding and reading offline runs

def find_offline_runs(root: Path) -> list[Path]:
    """Every offline W&B run directory (offline-run-*/ holding a .wandb file) under root, sorted."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("offline-run-*/run-*.wandb")})


def is_synced(run_dir: Path) -> bool:
    """wandb sync leaves run-<id>.wandb.synced beside the log once uploaded."""
    return any(Path(run_dir).glob("run-*.wandb.synced"))


def _wandb_file(path: Path) -> Path:
    path = Path(path)
    if path.is_file() and path.suffix == ".wandb":
        return path
    files = list(path.rglob("run-*.wandb")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no W&B run log (run-*.wandb) under {path}")
    return max(files, key=lambda f: f.stat().st_mtime)   # a requeued job may have made several: the newest


def wandb_executable() -> list[str]:
    beside = Path(sys.executable).with_name("wandb")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def _records_via_leet(path: Path) -> Iterator[dict]:
    """The log's records as dicts, through `wandb leet inspect --json` (wandb >= 0.31)."""
    done = subprocess.run(wandb_executable() + ["leet", "inspect", "--json", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env=os.environ | {"WANDB_SILENT": "true"})
    if done.returncode != 0:
        raise RuntimeError(f"wandb leet inspect failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    for line in done.stdout.splitlines():
        if line.strip().startswith("{"):
            yield json.loads(line)


# The .wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks
# of chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each payload a protobuf Record.
_HEADER = 7
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run log (no :W&B header)")
    pos, pending = _HEADER, b""
    while pos + _CHUNK_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER:        # the rest of a block too small for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:   # zero padding at a block's end
            pos += room
            continue
        payload = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if len(payload) < length:
            return                      # torn tail of a run that was killed: stop at the last whole record
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = ".".join(item.nested_key) if len(item.nested_key) else item.key
        out[key] = json.loads(item.value_json) if item.value_json else None
    return out


def _records_via_proto(path: Path) -> Iterator[dict]:
    """The same dicts as _records_via_leet, decoded with wandb's protobuf Record (works without leet)."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in _log_payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            yield {"type": "run", "run": {"config": {"update": _items(run.config.update)}, "run_group": run.run_group,
                                          "job_type": run.job_type, "tags": list(run.tags),
                                          "display_name": run.display_name, "project": run.project,
                                          "run_id": run.run_id}}
        elif kind == "config":
            yield {"type": "config", "config": {"update": _items(record.config.update)}}
        elif kind == "history":
            yield {"type": "history", "history": {"item": _items(record.history.item),
                                                  "step": {"num": record.history.step.num}}}
        elif kind == "summary":
            removed = [".".join(r.nested_key) if len(r.nested_key) else r.key for r in record.summary.remove]
            yield {"type": "summary", "summary": {"update": _items(record.summary.update), "remove": removed}}
        elif kind == "exit":
            yield {"type": "exit", "exit": {"exit_code": record.exit.exit_code}}


def _public(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # W&B's own bookkeeping lives under _wandb / _runtime / _step / _timestamp; callers want their own keys.
    return {k: v for k, v in mapping.items() if not k.startswith("_")}


def _removed_keys(summary: Mapping[str, Any]) -> list[str]:
    removed = summary.get("remove") or []
    return [r if isinstance(r, str) else ".".join(r.get("nested_key") or []) or r.get("key", "") for r in removed]


def read_offline_run(run_dir: Path, reader: str = "auto") -> dict:
    """An offline W&B run read back from its files: config, summary, history (list of dicts with "_step"),
    group, job_type, tags, name, exit_code.

    `run_dir` is our run directory, its wandb/ folder, an offline-run-* folder or the .wandb file itself.
    reader: "leet" (`wandb leet inspect --json`, wandb >= 0.31), "proto" (decode the log here), or "auto"
    (leet, falling back to proto when the CLI cannot do it).
    """
    readers = {"leet": _records_via_leet, "proto": _records_via_proto}
    if reader not in (*readers, "auto"):
        raise ValueError(f"reader={reader!r}; valid: auto, {', '.join(readers)}")
    path = _wandb_file(Path(run_dir))
    if reader == "auto":
        try:
            records = list(_records_via_leet(path))
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as error:
            warnings.warn(f"wandb leet inspect unusable ({error}); decoding {path.name} directly", RuntimeWarning)
            records = list(_records_via_proto(path))
    else:
        records = list(readers[reader](path))

    result: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "group": None, "job_type": None,
                              "tags": [], "name": None, "exit_code": None, "file": str(path)}
    for record in records:
        kind = record.get("type")
        if kind == "run":
            run = record["run"]
            result["config"].update(_public(run.get("config", {}).get("update", {})))
            result.update(group=run.get("run_group") or None, job_type=run.get("job_type") or None,
                          tags=list(run.get("tags") or []), name=run.get("display_name") or None)
        elif kind == "config":
            result["config"].update(_public(record["config"].get("update", {})))
        elif kind == "history":
            history = record["history"]
            row = _public(history.get("item", {}))
            row["_step"] = int((history.get("step") or {}).get("num", 0))
            result["history"].append(row)
        elif kind == "summary":
            summary = record["summary"]
            result["summary"].update(_public(summary.get("update", {})))
            for key in _removed_keys(summary):
                result["summary"].pop(key, None)
        elif kind == "exit":
            result["exit_code"] = int((record.get("exit") or {}).get("exit_code", 0))
    return result
