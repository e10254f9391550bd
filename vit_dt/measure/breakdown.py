"""Per-rank wall-clock breakdown of a training step, gathered to rank 0, with straggler detection.

DeepSpeed's `wall_clock_breakdown` timers (fwd, bwd = bwd_inner + bwd_allreduce, step) run on sampled steps only
and are read once those steps have finished on the device (vit_dt.measure.step_timing), so timing never synchronises it.
Each rank keeps running means; once per epoch they are gathered to rank 0 and `analyse` turns them into shares of
the step time and a straggler verdict. docs/metrics.md explains the numbers.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

TIMER_KEYS = ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step")
EXTRA_KEYS = ("data_wait", "step_time")          # measured by the trainer, not by DeepSpeed


def read_engine_timers(engine: Any) -> dict[str, float]:
    """This rank's DeepSpeed timers (ms) for the last timed optimizer step, reset for the next timed one.

    The global timers (fwd, bwd, ...) add up all micro-steps of the accumulation window. On a GPU they are CUDA
    events: read them once the step's device work is done (vit_dt.measure.step_timing), or reading waits for it. This is
    what `engine.get_wall_clock_timers()` would report, read later: DeepSpeed fills that snapshot inside `step()`,
    which synchronises the device on every timed step. A key it did not time reads 0.0.
    """
    timers = engine.timers.timers
    return {key: float(timers[key].elapsed(reset=True)) if key in timers else 0.0 for key in TIMER_KEYS}


def quiet_engine_timer_log(engine: Any) -> None:
    """DeepSpeed prints timed steps' timers from rank 0 (print_dist, whatever the log level) and ZeRO logs its
    optimizer timers every step; vit-dt records the breakdown itself. Keep the reset the print did, without reading
    the timers first (a read synchronises the device)."""
    timers = getattr(engine, "timers", None)
    if timers is None or not hasattr(timers, "timers"):
        return

    def reset_only(names, normalizer=1.0, reset=True, memory_breakdown=False, ranks=None):
        for name in names:
            if reset and name in timers.timers:
                timers.timers[name].reset()

    timers.log = reset_only


def set_engine_timing(engine: Any, enabled: bool) -> None:
    """Switch DeepSpeed's wall-clock timers on or off for the next optimizer step; call between steps.

    The engine decides at init which timers it starts and stops (`engine.engine_timers`); swapping that set gives
    timed steps their events and untimed steps no timer work at all. Its `wall_clock_breakdown` flag stays off:
    with it on, `step()` reads the timers at once (a device synchronisation) and resets them; vit-dt reads them
    later with `read_engine_timers`, which also resets them, so each timed step reports that step alone.
    """
    from deepspeed.runtime.engine import EngineTimers

    engine._config.wall_clock_breakdown = False
    engine.engine_timers = EngineTimers(enable_micro_timers=False,
                                        enable_global_timers=bool(enabled) or engine.flops_profiler_enabled())


class StepSampler:
    """Which steps to time (every `sample_every`-th after `warmup_steps`) and the running means of the timed ones."""

    def __init__(self, sample_every: int, warmup_steps: int):
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {sample_every}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        self.sample_every, self.warmup_steps = sample_every, warmup_steps
        self.reset()

    def should_sample(self, step: int) -> bool:
        """True for steps warmup_steps, warmup_steps + sample_every, ... (0-based step numbers)."""
        return step >= self.warmup_steps and (step - self.warmup_steps) % self.sample_every == 0

    def add(self, timers_ms: Mapping[str, float], data_wait_ms: float, step_ms: float) -> None:
        for key in TIMER_KEYS:
            self._sums[key] += float(timers_ms.get(key, 0.0))
        self._sums["data_wait"] += float(data_wait_ms)
        self._sums["step_time"] += float(step_ms)
        self._samples += 1

    def summary(self) -> dict[str, float]:
        """Mean ms per timed step for each TIMER_KEY, data_wait and step_time, and the number of samples."""
        n = self._samples
        means = {key: (total / n if n else 0.0) for key, total in self._sums.items()}
        return means | {"samples": n}

    def reset(self) -> None:
        self._sums = dict.fromkeys(TIMER_KEYS + EXTRA_KEYS, 0.0)
        self._samples = 0


def gather_to_rank0(summary: dict) -> list[dict] | None:
    """Every rank's summary, in rank order, on rank 0; None on the other ranks.

    Without an initialised process group (a single process) this is just [summary]. A collective: every rank
    must call it. With NCCL the objects travel through the current CUDA device, so set it first.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [summary]
    rank = dist.get_rank()
    gathered: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(summary, gathered, dst=0)
    return gathered if rank == 0 else None


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
