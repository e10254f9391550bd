"""The sweep manifest `<sweep_dir>/sweep.json`: points, overrides, shapes, job ids, submission times.

Written atomically (temp file + rename) so `vit-dt status` never reads half a manifest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vit_dt import atomic

MANIFEST_NAME = "sweep.json"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    pass


def manifest_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / MANIFEST_NAME


def write_manifest(sweep_dir: str | Path, manifest: dict[str, Any]) -> Path:
    return atomic.write_json(manifest_path(sweep_dir), manifest, indent=1, sort_keys=False, default=str)


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    path = manifest_path(sweep_dir)
    if not path.is_file():
        raise ManifestError(f"{path} does not exist: is {sweep_dir} a sweep directory made by `vit-dt sweep`?")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:                # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a sweep manifest: it holds a JSON {_json_type(data)}, not an object "
                            f"with schema_version, sweep_dir, jobs and points (written by `vit-dt sweep`)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema_version {data.get('schema_version')!r}; "
                            f"this vit-dt reads {SCHEMA_VERSION}")
    problem = _shape_problem(data)
    if problem:
        raise ManifestError(f"{path} is not a valid sweep manifest: {problem}")
    data.setdefault("sweep_dir", str(sweep_dir))
    data.setdefault("jobs", [])
    return data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _shape_problem(data: dict[str, Any]) -> str | None:
    """What is mistyped in the fields that `vit-dt status` and `--resume` read (points, jobs, sweep_dir), or None."""
    if "sweep_dir" in data and not isinstance(data["sweep_dir"], str):
        return f"`sweep_dir` must be a string, got {data['sweep_dir']!r}"
    if "points" not in data:
        return "`points` is missing"
    for key in ("points", "jobs"):
        if key not in data:
            continue
        if not isinstance(data[key], list):
            return f"`{key}` must be an array, got a JSON {_json_type(data[key])}"
        bad = [i for i, item in enumerate(data[key]) if not isinstance(item, dict)]
        if bad:
            return f"`{key}` entries must be objects; entry {bad[0]} is a {_json_type(data[key][bad[0]])}"
    for i, point in enumerate(data["points"]):
        missing = [k for k in ("index", "run_dir") if k not in point]
        if missing:
            return f"points[{i}] has no {' or '.join(missing)}"
    return None
