"""result.json and the sweep's append-only results store (`results.jsonl`).

The store is JSON lines: one record per finished run, appended by whichever rank-0 process finishes, from any
node of the cluster. JSON lines was chosen over SQLite and Parquet because an append is one `write()` of one
line (SQLite's locking is unreliable on the network file systems sweeps live on, Parquet files cannot be
appended to), a torn line from a killed writer damages only itself, and `cat`, `jq` and pandas read it as is.
Appends take an exclusive `flock` so that writers on file systems where O_APPEND alone is not atomic (NFS)
still never interleave. A requeued run appends again; `latest_by_point` keeps the last record per point.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vit_dt import atomic

RESULT_NAME = "result.json"
STORE_NAME = "results.jsonl"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):            # numpy arrays and scalars, torch tensors
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def _finite(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (jq, browsers) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(record: Mapping[str, Any], indent: int | None = None) -> str:
    normalised = json.loads(json.dumps(record, default=_json_default))  # numpy/Path -> JSON types first
    return json.dumps(_finite(normalised), indent=indent, allow_nan=False, separators=None if indent else (",", ":"))


def write_result(run_dir: Path, result: Mapping[str, Any]) -> Path:
    """Atomically write `run_dir/result.json`; returns its path."""
    return atomic.write_text(Path(run_dir) / RESULT_NAME, to_json(result, indent=2) + "\n")


def read_result(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / RESULT_NAME).read_text(encoding="utf-8"))


class ResultsStore:
    """The append-only JSON-lines store of a sweep. `path` is the .jsonl file or a directory holding results.jsonl."""

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path / STORE_NAME if path.is_dir() or path.suffix != ".jsonl" else path

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line, atomically with respect to other appenders on any node."""
        line = (to_json(record) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)   # RDWR: to check the last byte
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if self._ends_without_newline(fd):
                    line = b"\n" + line      # a writer died mid-line: keep its fragment on a line of its own
                view = memoryview(line)
                while view:                  # a regular file takes it in one write(); loop in case it does not
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @staticmethod
    def _ends_without_newline(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"

    def records(self) -> list[dict]:
        """Every readable record in append order; an unreadable line (a torn write) is skipped with a warning."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        records = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if not record:
                    raise ValueError("an empty JSON object, not a record")
            except ValueError as error:
                where = "last line (a writer stopped mid-append?)" if number == len(lines) else f"line {number}"
                warnings.warn(f"{self.path}: skipping unreadable {where}: {error}", RuntimeWarning, stacklevel=2)
                continue
            records.append(record)
        return records

    def latest_by_point(self) -> dict[Any, dict]:
        """The last record of each sweep point (a requeued or re-run point appends again), in first-seen order."""
        return latest_by_point(self.records())


def latest_by_point(records: Iterable[Mapping[str, Any]]) -> dict[Any, dict]:
    """The last of `records` for each sweep point, in first-seen order."""
    latest: dict[Any, dict] = {}
    for record in records:
        latest[point_of(record)] = record
    return latest


class SourceError(ValueError):
    """A path that is neither a sweep directory, a results store, a result.json nor a run directory holding one."""


SOURCES = f"a sweep directory (holding {STORE_NAME}), a {STORE_NAME} or a {RESULT_NAME} (or the run directory holding it)"


def read_source(source: Path | str) -> tuple[list[dict], Path]:
    """The records of one source and the file they were read from: a sweep directory (its results.jsonl), a
    .jsonl store, a result.json, or a run directory holding a result.json and no store. Unreadable store lines
    are skipped with a warning (ResultsStore.records); anything else that is not records raises SourceError."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"no results store at {source}: it does not exist; pass {SOURCES}")
    if source.is_dir():
        if (source / STORE_NAME).is_file():
            store = ResultsStore(source / STORE_NAME)
            return store.records(), store.path
        if not (source / RESULT_NAME).is_file():
            raise SourceError(f"no results store at {source / STORE_NAME} (no run of this sweep has finished yet, or "
                              f"not a sweep directory) and no {RESULT_NAME}; pass {SOURCES}")
        source = source / RESULT_NAME
    if source.suffix == ".jsonl":
        return ResultsStore(source).records(), source
    if source.suffix == ".json":
        return [_read_result_file(source)], source
    raise SourceError(f"{source} is not a results store: pass {SOURCES}")


def _read_result_file(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:          # JSONDecodeError, UnicodeDecodeError
        raise SourceError(f"{path} is not a {RESULT_NAME}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or "status" not in record:
        raise SourceError(f"{path} is not a {RESULT_NAME} (no `status` key)")
    return record


_POINT_IN_PATH = re.compile(r"(?:^|/)points/(\d+)(?:/|$)")


def point_of(record: Mapping[str, Any]) -> Any:
    """A record's sweep point: its `point`, else the index in its run_dir (.../points/<i>), else its run_dir."""
    if record.get("point") is not None:
        return record["point"]
    run_dir = str(record.get("run_dir") or "")
    match = _POINT_IN_PATH.search(run_dir.replace(os.sep, "/"))
    if match:
        return int(match.group(1))
    return run_dir or None


TABLE_COLUMNS = ("point", "status", "world_size", "nodes", "global_batch", "epoch_time_s", "img_per_s",
                 "comm_share", "final_val_acc")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def warmup_flags(epochs: Sequence[Any]) -> list[bool]:
    """Per epoch record, whether it was the first epoch of its attempt (the run's start or a checkpoint resume),
    which pays for warm-up: allocator, compile/JIT builds, loader workers, a cold page cache.

    Trainer.fit marks each epoch `"warmup": true/false`; an epoch without the mark (records from before it) counts
    as warm-up only when it is the run's first epoch."""
    return [bool(e.get("warmup", i == 0)) if isinstance(e, Mapping) else i == 0 for i, e in enumerate(epochs)]


def steady_mask(epochs: Sequence[Any]) -> list[bool]:
    """Per epoch record, whether it counts as steady state: every epoch not marked warm-up (warmup_flags); all of
    them when that leaves none (a run of one epoch, or of one epoch per attempt)."""
    flags = warmup_flags(epochs)
    return [not w for w in flags] if not all(flags) else [True] * len(flags)


def steady_epochs(epochs: Sequence[Any]) -> list[Any]:
    """The epoch records that steady-state figures (epoch_time_s_mean, img_per_s, tflops, MFU, the breakdown)
    average over: steady_mask. The one definition result.json, `vit-dt results` and the analysis share."""
    return [e for e, keep in zip(epochs, steady_mask(epochs)) if keep]


def _global_batch(record: Mapping[str, Any]) -> int | None:
    if record.get("global_batch") is not None:
        return record["global_batch"]
    trainer = (record.get("config") or {}).get("trainer") or {}
    if trainer.get("global_batch") is not None:
        return trainer["global_batch"]
    micro, accum, world = trainer.get("micro_batch"), trainer.get("grad_accum") or 1, record.get("world_size")
    return micro * accum * world if micro and world else None


def steady_epoch_values(record: Mapping[str, Any], key: str) -> list[float]:
    """`key` of each steady-state epoch of a record (steady_epochs) that has it."""
    epochs = [e for e in record.get("epochs") or [] if isinstance(e, Mapping)]
    return [e[key] for e in steady_epochs(epochs) if e.get(key) is not None]


def table_row(record: Mapping[str, Any]) -> dict:
    """The columns of `vit-dt results` for one record; values a failed or older record lacks are None."""
    epoch_time = record.get("epoch_time_s_mean")
    if epoch_time is None:
        epoch_time = _mean(steady_epoch_values(record, "time_s"))
    img_per_s = record.get("img_per_s")
    if img_per_s is None:
        img_per_s = _mean(steady_epoch_values(record, "img_per_s"))
    return {"point": point_of(record), "status": record.get("status"), "world_size": record.get("world_size"),
            "nodes": record.get("nodes"), "global_batch": _global_batch(record), "epoch_time_s": epoch_time,
            "img_per_s": img_per_s, "comm_share": record.get("comm_share"),
            "final_val_acc": record.get("final_val_acc")}


# Config entries that name or place a run rather than describe it: never "what differs" between points.
_BOOKKEEPING = ("out_dir", "point", "run_name", "sweep_dir", "wandb.")


def flat_config(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's composed config as `dotted.key: value` text (strings as they are, the rest as JSON)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif prefix:
            out[prefix[:-1]] = node if isinstance(node, str) else json.dumps(node, sort_keys=True, default=str)

    walk(record.get("config") or {}, "")
    return out


def varying_settings(records: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The config keys whose values differ between the records that carry a config (a sweep's swept settings,
    plus whatever follows from them), bookkeeping left out."""
    configs = [flat_config(r) for r in records if r.get("config")]
    keys = set().union(*configs) if configs else set()
    return tuple(sorted(k for k in keys if not k.startswith(_BOOKKEEPING)
                        and len({c.get(k) for c in configs}) > 1))


def settings_text(record: Mapping[str, Any], keys: Iterable[str]) -> str:
    """`key=value, ...` of `keys` for one record ("" without a config)."""
    values = flat_config(record)
    return ", ".join(f"{k}={values.get(k, 'unset')}" for k in keys) if values else ""


def _sort_key(row: Mapping[str, Any]) -> tuple:
    point = row["point"]
    return (0, point, "") if isinstance(point, int) else (1, 0, str(point))


def sorted_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By point; a point's records (with --all, its superseded ones) keep their store order."""
    return sorted(records, key=lambda r: _sort_key({"point": point_of(r)}))


def results_table(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One row per record (TABLE_COLUMNS), sorted by point."""
    return [table_row(r) for r in sorted_records(records)]


def to_csv(records: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write results_table(records) as CSV (empty cells for missing values), atomically; one more column per
    setting the records differ in (varying_settings), so a table of a sweep says what each point was."""
    records = sorted_records(records)
    varying = varying_settings(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*TABLE_COLUMNS, *varying], lineterminator="\n")
    writer.writeheader()
    for record in records:
        settings = flat_config(record)
        writer.writerow({k: ("" if v is None else v) for k, v in table_row(record).items()}
                        | {k: settings.get(k, "") for k in varying})
    return atomic.write_text(Path(path), buffer.getvalue())
