"""The result record (result.json, one line of results.jsonl): its file names, its fields, writing it, and reading
values out of it. Torch-free.

vit_dt/run/record.py writes a record; `vit-dt results` (vit_dt/records/table.py), the report (vit_dt/analysis) and
`vit-dt predict` read it, all through the accessors here, so that they read the same value from the same record,
however old it is.

One fallback rule for records written by older versions of vit-dt (a field added later is absent from them):

    1. the field itself, when the record has it (not null);
    2. else the value derived from the record's own other fields, where the field follows from them
       (global_batch = micro_batch * grad_accum * world_size, epoch_time_s_mean = mean steady-state epoch time,
       img_per_s = mean steady-state epoch img/s, ranks_per_node = world_size / nodes);
    3. else the composed config's setting the field was copied from (CONFIG_PATHS), when the record carries its
       config;
    4. else None.

Which epochs count (the steady-state rule) is a property of the record too: see `warmup_flags`.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vit_dt import atomic

RESULT_NAME = "result.json"        # one run's record, in its run directory
STORE_NAME = "results.jsonl"       # a sweep's records, one per line, in its sweep directory
SCHEMA_VERSION = 1

# Top-level fields readers use (the writer, vit_dt/run/record.py, has the full list).
STATUS = "status"
POINT = "point"
RUN_DIR = "run_dir"
WORLD_SIZE = "world_size"
NODES = "nodes"
RANKS_PER_NODE = "ranks_per_node"
MICRO_BATCH = "micro_batch"
GRAD_ACCUM = "grad_accum"
GLOBAL_BATCH = "global_batch"
EPOCHS = "epochs"
EPOCH_TIME = "epoch_time_s_mean"   # mean seconds of the steady-state epochs
IMG_PER_S = "img_per_s"            # images per second, all ranks, over the steady-state epochs
CONFIG = "config"                  # the composed config, secrets scrubbed
FAILURE_CAUSE = "failure_cause"    # a failed record's cause, one of FAILURE_CAUSES (vit_dt/run/rank.py)
FAILURE_CAUSES = ("io", "collective", "hang", "error")
SILENT_RANKS = "silent_ranks"
SLURM_ENERGY = "slurm_energy_j"    # added by the report from sacct, never stored (see slurm_energy_j)      # a failed record's ranks that stopped answering: rank, host, phase, silent_s
# Per epoch record (the `epochs` list)
EPOCH_SECONDS = "time_s"
EPOCH_IMG_PER_S = "img_per_s"
EPOCH_STEPS = "steps"
EPOCH_WARMUP = "warmup"            # added after the first records: see warmup_flags
# Energy (vit_dt/measure/energy.py, docs/metrics.md): per epoch record {gpu_j, cpu_j, total_j, j_per_image,
# avg_watts, sources, reason, per_rank}; the record's own {total_j, j_per_image, avg_watts, sources, reason}. A value
# no source gave is null with the reason, never 0. Absent from records written before it existed.
EPOCH_ENERGY = "energy"
ENERGY = "energy"

# Rule 3: the config setting each identity field copies (older or failed records may lack the field itself).
CONFIG_PATHS: dict[str, tuple[str, ...]] = {
    "cluster": ("cluster", "name"),
    "layout": ("resources", "layout"),
    "scaling": ("scaling", "mode"),
    "engine": ("engine",),
    "precision": ("precision",),
    "dataset": ("dataset", "name"),
    "model": ("model", "name"),
    "point": ("point",),
    "grad_accum": ("trainer", "grad_accum"),
    "image_size": ("model", "image_size"),
    "patch_size": ("model", "patch_size"),
}


# ---------------------------------------------------------------- writing and reading the file

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


# ---------------------------------------------------------------- the steady-state rule

def warmup_flags(epochs: Sequence[Any]) -> list[bool]:
    """Per epoch record, whether it was the first epoch of its attempt (the run's start or a checkpoint resume),
    which pays for warm-up: allocator, compile/JIT builds, loader workers, a cold page cache.

    Trainer.fit marks each epoch `"warmup": true/false`; an epoch without the mark (records from before it) counts
    as warm-up only when it is the run's first epoch."""
    return [bool(e.get(EPOCH_WARMUP, i == 0)) if isinstance(e, Mapping) else i == 0 for i, e in enumerate(epochs)]


def steady_mask(epochs: Sequence[Any]) -> list[bool]:
    """Per epoch record, whether it counts as steady state: every epoch not marked warm-up (warmup_flags); all of
    them when that leaves none (a run of one epoch, or of one epoch per attempt)."""
    flags = warmup_flags(epochs)
    return [not w for w in flags] if not all(flags) else [True] * len(flags)


def steady_epochs(epochs: Sequence[Any]) -> list[Any]:
    """The epoch records that steady-state figures (epoch_time_s_mean, img_per_s, tflops, MFU, the breakdown)
    average over: steady_mask. The one definition result.json, `vit-dt results` and the analysis share."""
    return [e for e, keep in zip(epochs, steady_mask(epochs)) if keep]


def steady_epoch_values(record: Mapping[str, Any], key: str) -> list[float]:
    """`key` of each steady-state epoch of a record (steady_epochs) that has it."""
    epochs = [e for e in record.get(EPOCHS) or [] if isinstance(e, Mapping)]
    return [e[key] for e in steady_epochs(epochs) if e.get(key) is not None]


# ---------------------------------------------------------------- reading values

def config_value(record: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The record's composed config at `keys` (e.g. "trainer", "micro_batch"); `default` when absent or null."""
    node: Any = record.get(CONFIG) or {}
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node if node is not None else default


def value(record: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A top-level field, else (rule 3) the config setting it copies (CONFIG_PATHS); `default` when neither."""
    if record.get(name) is not None:
        return record[name]
    path = CONFIG_PATHS.get(name)
    return config_value(record, *path, default=default) if path else default


def status(record: Mapping[str, Any]) -> str | None:
    return record.get(STATUS)


def is_completed(record: Mapping[str, Any]) -> bool:
    return status(record) == "completed"


_POINT_IN_PATH = re.compile(r"(?:^|/)points/(\d+)(?:/|$)")


def point_of(record: Mapping[str, Any]) -> Any:
    """A record's sweep point: its `point`, else the index in its run_dir (.../points/<i>), else its run_dir."""
    if record.get(POINT) is not None:
        return record[POINT]
    run_dir = str(record.get(RUN_DIR) or "")
    match = _POINT_IN_PATH.search(run_dir.replace(os.sep, "/"))
    if match:
        return int(match.group(1))
    return run_dir or None


def world_size(record: Mapping[str, Any]) -> int | None:
    return int(record[WORLD_SIZE]) if record.get(WORLD_SIZE) else None


def nodes(record: Mapping[str, Any]) -> int | None:
    return int(record[NODES]) if record.get(NODES) else None


def ranks_per_node(record: Mapping[str, Any]) -> int:
    """The field, else world_size / nodes (at least 1; a record without either counts as 1 x 1)."""
    if record.get(RANKS_PER_NODE):
        return int(record[RANKS_PER_NODE])
    return max(1, int(record.get(WORLD_SIZE) or 1) // max(1, int(record.get(NODES) or 1)))


def grad_accum(record: Mapping[str, Any]) -> int:
    return int(value(record, GRAD_ACCUM) or 1)


def micro_batch(record: Mapping[str, Any]) -> int | None:
    """The field as the run resolved it; from the config only when the run had no fixed global batch (with one, the
    config's micro_batch was not used)."""
    if record.get(MICRO_BATCH) is not None:
        return record[MICRO_BATCH]
    if config_value(record, "trainer", "global_batch") is None:
        return config_value(record, "trainer", "micro_batch")
    return None


def global_batch(record: Mapping[str, Any]) -> int | None:
    """The field; else micro_batch * grad_accum * world_size of the record (rule 2); else the config's fixed
    trainer.global_batch, or its micro_batch * grad_accum times the record's world size (rule 3)."""
    if record.get(GLOBAL_BATCH) is not None:
        return int(record[GLOBAL_BATCH])
    world = record.get(WORLD_SIZE)
    micro, accum = record.get(MICRO_BATCH), record.get(GRAD_ACCUM) or 1
    if micro and world:
        return int(micro) * int(accum) * int(world)
    fixed = config_value(record, "trainer", "global_batch")
    if fixed is not None:
        return int(fixed)
    micro, accum = config_value(record, "trainer", "micro_batch"), config_value(record, "trainer", "grad_accum") or 1
    return int(micro) * int(accum) * int(world) if micro and world else None


def epoch_time(record: Mapping[str, Any]) -> float | None:
    """Mean train-epoch seconds over the steady-state epochs: the field, else the mean of the steady epochs'
    time_s (steady_epochs: without each attempt's first, warm-up epoch; with no other epoch, all of them).
    None when neither gives a time > 0."""
    seconds = record.get(EPOCH_TIME)
    if seconds is None:
        steady = steady_epoch_values(record, EPOCH_SECONDS)
        seconds = statistics.fmean(steady) if steady else None
    return float(seconds) if seconds is not None and seconds > 0 else None


def img_per_s(record: Mapping[str, Any]) -> float | None:
    """Images per second (all ranks) over the steady-state epochs: the field, else the steady epochs' mean."""
    rate = record.get(IMG_PER_S)
    if rate is None:
        steady = steady_epoch_values(record, EPOCH_IMG_PER_S)
        rate = statistics.fmean(steady) if steady else None
    return float(rate) if rate is not None else None


def energy(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's energy summary ({} for records without one)."""
    value = record.get(ENERGY)
    return value if isinstance(value, Mapping) else {}


def j_per_image(record: Mapping[str, Any]) -> float | None:
    """Joules per training image over the steady-state epochs (GPU + CPU packages, whatever was readable)."""
    value = energy(record).get("j_per_image")
    return float(value) if isinstance(value, (int, float)) else None


def slurm_energy_j(record: Mapping[str, Any]) -> float | None:
    """Slurm's ConsumedEnergy of the run's job (sacct, the whole job: start-up included), where the cluster
    gathers energy. Not in the stored record (the job is still running when it is written): the report adds it
    in memory from `vit-dt status`'s accounting (vit_dt/commands/report.py)."""
    value = record.get(SLURM_ENERGY)
    return float(value) if isinstance(value, (int, float)) else None


def epoch_energy_j(record: Mapping[str, Any]) -> float | None:
    """Mean joules of a steady-state epoch (None where no epoch has a reading)."""
    epochs = [e for e in record.get(EPOCHS) or [] if isinstance(e, Mapping)]
    values = [(e.get(EPOCH_ENERGY) or {}).get("total_j") for e in steady_epochs(epochs)]
    present = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.fmean(present) if present else None


def last_epoch(record: Mapping[str, Any]) -> Mapping[str, Any]:
    epochs = record.get(EPOCHS) or []
    return epochs[-1] if epochs and isinstance(epochs[-1], Mapping) else {}


def final_train_acc(record: Mapping[str, Any]) -> float | None:
    return last_epoch(record).get("train_acc")


def steps_per_epoch(record: Mapping[str, Any]) -> int | None:
    """Optimizer steps of the record's last epoch."""
    return last_epoch(record).get(EPOCH_STEPS)


def flat_config(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's composed config as `dotted.key: value` text (strings as they are, the rest as JSON)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, item in node.items():
                walk(item, f"{prefix}{key}.")
        elif prefix:
            out[prefix[:-1]] = node if isinstance(node, str) else json.dumps(node, sort_keys=True, default=str)

    walk(record.get(CONFIG) or {}, "")
    return out
