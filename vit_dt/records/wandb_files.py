"""What a W&B run leaves in its run directory, and reading it back without W&B's servers.

The run id file (`wandb-run-id.txt`) that keeps one W&B run across Slurm requeues and restarts; the offline
segments each attempt writes (`wandb/offline-run-<time>-<id>/run-<id>.wandb`), found and ordered for `vit-dt sync`;
and the records inside them (history, config, summary), read with `wandb leet inspect` or by decoding W&B's log
format directly, for tests and for resuming a run's step axis. See docs/wandb.md.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets as _secrets
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("vit_dt.wandb")

RUN_ID_FILE = "wandb-run-id.txt"
_RUN_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_RUN_ID_LEN = 12        # W&B's own ids have 8; 12 keep collisions negligible across many sweeps in one project
_VALID_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# ---------------------------------------------------------------- the run id kept in the run directory

def new_run_id() -> str:
    """A fresh W&B run id (base 36, from `secrets`: no global RNG state is touched, so training is unaffected)."""
    return "".join(_secrets.choice(_RUN_ID_CHARS) for _ in range(_RUN_ID_LEN))


def read_run_id(run_dir: Path) -> str | None:
    """The W&B run id stored in run_dir, or None when there is none (or it is not a valid id)."""
    try:
        text = (Path(run_dir) / RUN_ID_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text if _VALID_RUN_ID.fullmatch(text) else None


def run_id_for(run_dir: Path) -> str:
    """The run's W&B id: read from `<run_dir>/wandb-run-id.txt`, or created there on the first start.

    Created atomically: the id is written to a temporary file which is then hard-linked to the final name, so
    the file is never seen half-written and, should two starts race, the first one wins and both use its id.
    Only rank 0 calls this. An unreadable file is replaced (with a warning): a new W&B run, but training goes on.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_ID_FILE
    if (found := read_run_id(run_dir)) is not None:
        return found
    run_dir.mkdir(parents=True, exist_ok=True)
    # A file that appeared since the first read came from a racing start (hard links publish whole files): it is
    # valid, and replacing it would give the two starts two W&B runs. Only a file that still reads invalid is.
    invalid = path.exists() and read_run_id(run_dir) is None
    tmp = run_dir / f".{RUN_ID_FILE}.{os.getpid()}.{_secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w") as handle:
            handle.write(new_run_id() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if invalid:
            log.warning("%s does not hold a valid W&B run id; starting a new W&B run for %s", path, run_dir)
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)                       # fails if the file exists: the first writer wins
            except FileExistsError:
                pass
            except OSError:                              # a file system without hard links
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as handle:
                        handle.write(tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    found = read_run_id(run_dir)
    if found is None:
        raise OSError(f"could not store a W&B run id in {path}")
    return found


def segment_files(run_dir: Path, run_id: str) -> list[Path]:
    """This W&B run's local logs in run_dir (offline segments and online runs' transaction logs), oldest first."""
    wandb_dir = Path(run_dir) / "wandb"
    files = [f for f in wandb_dir.glob(f"*/run-{run_id}.wandb") if f.parent.name.startswith(("offline-run-", "run-"))]
    return sorted(files, key=lambda f: segment_sort_key(f.parent))


def last_logged_step(files: Sequence[Path]) -> int | None:
    """The largest history step in these .wandb logs (torn tails of killed runs are read up to the last record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    last = None
    for file in files:
        try:
            payloads = _log_payloads(Path(file).read_bytes())
            for payload in payloads:
                record = pb.Record()
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "history":
                    step = int(record.history.step.num)
                    last = step if last is None else max(last, step)
        except Exception as error:  # noqa: BLE001 - a segment we cannot read must not stop training
            log.warning("could not read the earlier W&B segment %s (%s); its steps are not known", file, error)
    return last


# ---------------------------------------------------------------- finding and reading offline runs

def run_id_of(run_dir: Path) -> str | None:
    """The W&B run id of an offline-run-*/run-* folder, from its `run-<id>.wandb` file."""
    for file in sorted(Path(run_dir).glob("run-*.wandb")):
        return file.name[len("run-"):-len(".wandb")]
    return None


_SEGMENT_NAME = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(.+)")


def segment_sort_key(run_dir: Path) -> tuple:
    """Orders the segments of one W&B run by start: `offline-run-<YYYYmmdd_HHMMSS>-<id>[-<n>]` (W&B adds -1, -2,
    ... when a second segment starts within the same second)."""
    run_dir = Path(run_dir)
    run_id = run_id_of(run_dir) or ""
    match = _SEGMENT_NAME.fullmatch(run_dir.name)
    stamp, rest = (match.group(1), match.group(2)) if match else ("", run_dir.name)
    suffix = rest[len(run_id) + 1:] if run_id and rest.startswith(run_id + "-") else ""
    return (str(run_dir.parent), run_id, stamp, int(suffix) if suffix.isdigit() else 0, run_dir.name)


def find_offline_runs(root: Path) -> list[Path]:
    """Every offline W&B run directory (offline-run-*/ holding a .wandb file) under root; the segments of one
    resumed run (same folder, same id) in the order they started, which is the order they must be uploaded in."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("offline-run-*/run-*.wandb")}, key=segment_sort_key)


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
                                          "run_id": run.run_id, "resume": run.resume}}
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
    group, job_type, tags, name, exit_code, run_id and resume (whether it was written to continue a run).

    `run_dir` is our run directory, its wandb/ folder, an offline-run-* folder or the .wandb file itself; given a
    run directory of a restarted run it reads the newest segment (read_offline_segments reads them all).
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
                              "tags": [], "name": None, "exit_code": None, "run_id": None, "resume": False,
                              "file": str(path)}
    for record in records:
        kind = record.get("type")
        if kind == "run":
            run = record["run"]
            result["config"].update(_public(run.get("config", {}).get("update", {})))
            result.update(group=run.get("run_group") or None, job_type=run.get("job_type") or None,
                          tags=list(run.get("tags") or []), name=run.get("display_name") or None,
                          run_id=run.get("run_id") or None, resume=bool(run.get("resume")))
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


def read_offline_segments(run_dir: Path, reader: str = "auto") -> list[dict]:
    """Every offline segment of a run directory's W&B run, oldest first, each as read_offline_run reads it.

    A run restarted n times has n + 1 segments with the same run_id (the id in `wandb-run-id.txt`); a run
    directory without that file (written before ids were kept) gives all its offline runs.
    """
    run_id = read_run_id(run_dir)
    segments = [s for s in find_offline_runs(Path(run_dir) / "wandb") if run_id is None or run_id_of(s) == run_id]
    return [read_offline_run(segment, reader=reader) for segment in segments]
