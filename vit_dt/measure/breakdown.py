"""Per-rank wall-clock breakdown of a training step: what the numbers are, and the straggler verdict.

DeepSpeed's `wall_clock_breakdown` timers (fwd, bwd = bwd_inner + bwd_allreduce, step) run on sampled steps only
and are read once those steps have finished on the device (vit_dt.measure.step_timing), so timing never synchronises it.
Each rank keeps running means (StepSampler); once per epoch they are gathered to rank 0
(vit_dt.run.distributed.gather_to_rank0) and `analyse` turns them into shares of the step time and a straggler
verdict. Switching and reading DeepSpeed's timers: vit_dt.engines.deepspeed_timers. docs/metrics.md explains the
numbers. Pure Python: no torch, no collectives.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

TIMER_KEYS = ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step")
EXTRA_KEYS = ("data_wait", "step_time")          # measured by the trainer, not by DeepSpeed


def compute_ms(row: Mapping[str, float]) -> float:
    """Time a rank spends computing: forward, backward without the all-reduce, optimizer step."""
    return float(row.get("fwd", 0.0)) + float(row.get("bwd_inner", 0.0)) + float(row.get("step", 0.0))


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def analyse(per_rank: Sequence[Mapping[str, float]], straggler_threshold: float = 0.2) -> dict:
    """Communication and data-wait shares and a straggler verdict from the gathered per-rank summaries.

    A slow rank computes longer; the others reach the all-reduce first and wait there for it, so their
    bwd_allreduce grows while the slow rank's stays short. `skew` compares the slowest rank's compute time
    with the median of the other ranks: skew 0.5 means it computes 50% longer. Flagged when skew > threshold.
    """
    if not per_rank:
        raise ValueError("analyse needs at least one rank's summary, got none")
    rows = []
    for rank, summary in enumerate(per_rank):
        row = {key: float(value) for key, value in summary.items() if isinstance(value, (int, float))}
        row["rank"] = rank
        row["compute"] = compute_ms(row)
        row["comm_share"] = _share(row.get("bwd_allreduce", 0.0), row.get("step_time", 0.0))
        rows.append(row)
    keys = [k for k in TIMER_KEYS + EXTRA_KEYS + ("compute",) if all(k in r for r in rows)]
    mean = {key: statistics.fmean(r[key] for r in rows) for key in keys}
    if all("samples" in r for r in rows):
        mean["samples"] = statistics.fmean(r["samples"] for r in rows)
    return {
        "per_rank": rows,
        "mean": mean,
        "comm_share": _share(mean.get("bwd_allreduce", 0.0), mean.get("step_time", 0.0)),
        "data_wait_share": _share(mean.get("data_wait", 0.0), mean.get("step_time", 0.0)),
        "straggler": _straggler(rows, straggler_threshold),
    }


def _straggler(rows: list[dict], threshold: float) -> dict:
    if len(rows) < 2:
        return {"flagged": False, "slow_rank": None, "skew": 0.0, "threshold": threshold}
    slow = max(rows, key=lambda r: r["compute"])
    others = [r for r in rows if r is not slow]
    typical = statistics.median(r["compute"] for r in others)
    skew = (slow["compute"] - typical) / typical if typical > 0 else 0.0
    flagged = skew > threshold
    # Corroboration, not a condition: the ranks that waited show it as extra all-reduce time.
    wait_gap = statistics.median(r.get("bwd_allreduce", 0.0) for r in others) - slow.get("bwd_allreduce", 0.0)
    return {"flagged": flagged, "slow_rank": slow["rank"] if flagged else None, "skew": skew,
            "threshold": threshold, "others_allreduce_wait_ms": wait_gap}
