"""Views for the studies beyond the paper, read from the same records as the scaling report. Pure functions.

ZeRO study: one row per completed DeepSpeed run, with its stage (and offload), the model states each rank holds
(`memory_model_gb`, measured by vit_dt/measure/memory.py), the peak memory (`peak_mem_gb`: CUDA max allocated on a
GPU, the process peak RSS on a CPU), the step time and the gradient-reduction time (`bwd_allreduce`).

Per-rank step time: for every multi-rank run with a per-rank breakdown, each rank's compute and all-reduce time
next to its host and GPU (`ranks` in result.json), and the slowest rank named. docs/studies/ explains both.
"""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vit_dt.measure.hardware import describe_rank
from vit_dt.records.result import epoch_time

MEMORY_PARTS = ("params", "gradients", "optimizer_states", "master_params")


# ---------------------------------------------------------------- ZeRO

def _zero_section(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((record.get("deepspeed_config") or {}).get("zero_optimization")) or {}


def offload_of(record: Mapping[str, Any]) -> str:
    """"" (none), "opt→cpu", "opt→cpu, param→nvme", ... from the DeepSpeed JSON the run used."""
    section = _zero_section(record)
    parts = []
    for key, short in (("offload_optimizer", "opt"), ("offload_param", "param")):
        device = (section.get(key) or {}).get("device")
        if device and device != "none":
            parts.append(f"{short}→{device}")
    return ", ".join(parts)


def zero_label(record: Mapping[str, Any]) -> str:
    stage = record.get("zero_stage")
    offload = offload_of(record)
    return f"ZeRO-{stage}" + (f" + {offload}" if offload else "")


def _step_time_ms(record: Mapping[str, Any]) -> float | None:
    mean = (record.get("breakdown_ms") or {}).get("mean") or {}
    if mean.get("step_time"):
        return float(mean["step_time"])
    epochs = record.get("epochs") or []
    seconds = epoch_time(record)
    steps = epochs[-1].get("steps") if epochs else None
    return 1e3 * seconds / steps if seconds and steps else None


def zero_rows(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Completed DeepSpeed runs as ZeRO-study rows, ordered by model, world size, stage, offload."""
    rows = []
    for r in records:
        if r.get("engine") != "deepspeed" or r.get("zero_stage") is None:
            continue
        mean = (r.get("breakdown_ms") or {}).get("mean") or {}
        memory = r.get("memory_model_gb") or {}
        rows.append({
            "label": zero_label(r), "zero_stage": int(r["zero_stage"]), "offload": offload_of(r),
            "reduce_bucket_size": _zero_section(r).get("reduce_bucket_size"),
            "model": r.get("model"), "world_size": int(r.get("world_size") or 1), "nodes": int(r.get("nodes") or 1),
            "micro_batch": r.get("micro_batch"), "precision": r.get("precision"), "device": r.get("device"),
            "step_time_ms": _step_time_ms(r), "allreduce_ms": mean.get("bwd_allreduce"),
            "compute_ms": (float(mean.get("fwd", 0.0)) + float(mean.get("bwd_inner", 0.0))) if mean else None,
            "optimizer_ms": mean.get("step"), "comm_share": r.get("comm_share"), "img_per_s": r.get("img_per_s"),
            "epoch_time_s": epoch_time(r), "peak_mem_gb": r.get("peak_mem_gb"),
            **{f"{part}_gb": memory.get(part) for part in MEMORY_PARTS},
            "model_states_gb": memory.get("model_states"), "live_tensors_gb": memory.get("live_tensors"),
            "offloaded_gb": memory.get("offloaded"), "final_val_acc": r.get("final_val_acc"),
            "point": r.get("point"), "run_dir": str(r.get("run_dir") or "")})
    return sorted(rows, key=lambda x: (str(x["model"]), x["world_size"], x["micro_batch"] or 0, x["zero_stage"],
                                       x["offload"], str(x["point"])))


def is_zero_study(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Worth a section: runs of at least two ZeRO configurations (stage or offload)."""
    return len({(r["zero_stage"], r["offload"]) for r in rows}) >= 2


def peak_memory_meaning(rows: Sequence[Mapping[str, Any]]) -> str:
    devices = {r.get("device") for r in rows}
    if devices == {"cpu"}:
        return "process peak RSS (CPU: Python, libraries and data included)"
    if devices == {"cuda"}:
        return "torch.cuda.max_memory_allocated (GPU)"
    return "peak memory (GPU: max allocated; CPU: process peak RSS)"


# ---------------------------------------------------------------- per rank

def _rank_hardware(record: Mapping[str, Any], rank: int) -> dict:
    for row in record.get("ranks") or []:
        if row.get("rank") == rank:
            return dict(row)
    hosts = record.get("hostnames") or []
    host = hosts[0] if len(hosts) == 1 else None                   # older records: hosts not per rank
    return {"rank": rank, "host": host, "node": host, "device": record.get("device"), "gpu_name": None,
            "gpu_model": record.get("gpu_model"), "gpu_model_source": "record" if record.get("gpu_model") else "none"}


def run_label(record: Mapping[str, Any]) -> str:
    if record.get("point") is not None:
        text = f"point {record['point']}"
    else:
        text = f"run {Path(str(record.get('run_dir') or 'run')).name}"
    text += f", N={record.get('world_size')}"
    if record.get("engine") == "deepspeed" and record.get("zero_stage") is not None:
        text += f", {zero_label(record)}"
    return text


def per_rank_runs(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Multi-rank runs with a per-rank breakdown: each rank's times and hardware, and the slowest rank.

    Slowest = the rank with the longest compute (fwd + bwd_inner + optimizer step), as the straggler check
    (vit_dt/measure/breakdown.py) defines it: in data parallelism every rank's step ends at the same all-reduce, so the
    step time is alike on all ranks and the fast ones show the difference as all-reduce wait."""
    runs = []
    for r in records:
        per_rank = ((r.get("breakdown_ms") or {}).get("per_rank")) or []
        if len(per_rank) < 2:
            continue
        ranks = []
        for i, row in enumerate(per_rank):
            rank = int(row.get("rank", i))
            compute = row.get("compute")
            if compute is None:
                compute = float(row.get("fwd", 0.0)) + float(row.get("bwd_inner", 0.0)) + float(row.get("step", 0.0))
            ranks.append({**_rank_hardware(r, rank), "rank": rank, "compute_ms": float(compute),
                          "fwd_ms": float(row.get("fwd", 0.0)), "allreduce_ms": float(row.get("bwd_allreduce", 0.0)),
                          "optimizer_ms": float(row.get("step", 0.0)),
                          "step_time_ms": float(row.get("step_time", 0.0)),
                          "data_wait_ms": float(row.get("data_wait", 0.0))})
        slow = max(ranks, key=lambda x: x["compute_ms"])
        others = [x["compute_ms"] for x in ranks if x is not slow]
        typical = statistics.median(others)
        straggler = r.get("straggler") or {}
        models = Counter(x.get("gpu_model") or ("cpu" if x.get("device") == "cpu" else "?") for x in ranks)
        runs.append({"label": run_label(r), "point": r.get("point"), "run_dir": str(r.get("run_dir") or ""),
                     "world_size": len(ranks), "ranks": ranks, "slowest_rank": slow["rank"],
                     "slowest": describe_rank(slow), "slowest_host": slow.get("node") or slow.get("host"),
                     "slowest_gpu": slow.get("gpu_model") or slow.get("gpu_name")
                     or ("cpu" if slow.get("device") == "cpu" else None),
                     "slowest_compute_ms": slow["compute_ms"], "others_median_compute_ms": typical,
                     "skew": (slow["compute_ms"] - typical) / typical if typical > 0 else 0.0,
                     "flagged": bool(straggler.get("flagged")), "threshold": straggler.get("threshold"),
                     "gpu_mix": dict(models), "mixed_gpus": len(models) > 1})
    return sorted(runs, key=lambda x: (not x["flagged"], -x["skew"], str(x["point"])))


def notable_runs(runs: Sequence[Mapping[str, Any]], limit: int = 4) -> list[dict]:
    """Runs whose per-rank view is worth a plot: a flagged straggler or ranks on different GPU models."""
    return [dict(r) for r in runs if r["flagged"] or r["mixed_gpus"]][:limit]


def straggler_notes(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per flagged run naming the slow rank, its host and its GPU."""
    notes = []
    for run in runs:
        if not run["flagged"]:
            continue
        slow = next(x for x in run["ranks"] if x["rank"] == run["slowest_rank"])
        waits = [x["allreduce_ms"] for x in run["ranks"] if x is not slow]
        wait = statistics.median(waits) - slow["allreduce_ms"] if waits else 0.0
        notes.append(f"Straggler in {run['label']}: {run['slowest']} computes {100 * run['skew']:.0f}% longer than "
                     f"the median of the other ranks ({run['slowest_compute_ms']:.0f} vs "
                     f"{run['others_median_compute_ms']:.0f} ms per step); the others wait for it in the "
                     f"all-reduce (+{wait:.0f} ms per step).")
    mixed = [r for r in runs if r["mixed_gpus"]]
    for run in mixed:
        mix = ", ".join(f"{model} ×{count}" for model, count in sorted(run["gpu_mix"].items()))
        notes.append(f"Mixed GPUs in {run['label']}: {mix}; the slowest rank is {run['slowest']}.")
    return notes
