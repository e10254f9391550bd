"""The sweep manifest `<sweep_dir>/sweep.json`: points, overrides, shapes, job ids, submission times.

Written atomically (temp file + rename) so `vit-dt status` never reads half a manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "sweep.json"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    pass


def manifest_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / MANIFEST_NAME


def write_manifest(sweep_dir: str | Path, manifest: dict[str, Any]) -> Path:
    target = manifest_path(sweep_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=False, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    path = manifest_path(sweep_dir)
    if not path.is_file():
        raise ManifestError(f"{path} does not exist: is {sweep_dir} a sweep directory made by `vit-dt sweep`?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema_version {data.get('schema_version')!r}; "
                            f"this vit-dt reads {SCHEMA_VERSION}")
    return data
