"""The sweep's append-only results store (`results.jsonl`), and reading records from a store or a result.json.

The store is JSON lines: one record per finished run, appended by whichever rank-0 process finishes, from any
node of the cluster. JSON lines was chosen over SQLite and Parquet because an append is one `write()` of one
line (SQLite's locking is unreliable on the network file systems sweeps live on, Parquet files cannot be
appended to), a torn line from a killed writer damages only itself, and `cat`, `jq` and pandas read it as is.
Appends take an exclusive `flock` so that writers on file systems where O_APPEND alone is not atomic (NFS)
still never interleave. A requeued run appends again; `latest_by_point` keeps the last record per point.
"""
from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vit_dt.records.result import RESULT_NAME, STORE_NAME, point_of, to_json


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
