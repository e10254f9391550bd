"""Balancing micro-batches across ranks by measured speed (`trainer.balance=speed`, engine=ddp only).

In data parallelism every rank's step ends at the same gradient all-reduce, so a slow rank (an older GPU in a
mixed partition) makes all the others wait. With `trainer.balance=speed` the global micro-batch
B = micro_batch x world_size stays the same, but it is split into per-rank *shares* b_r in proportion to each
rank's measured speed, so every rank computes for about the same time:

* calibration: the first epoch runs with equal shares (exactly what `balance=off` does); the per-rank breakdown the
  trainer samples anyway (vit_dt/measure/breakdown.py) gives each rank's speed in images per second of forward + backward
  compute (`bwd_inner`, without the wait at the all-reduce; the optimizer step is left out: it does not depend on
  the batch);
* re-planning: at the end of every epoch rank 0 splits B by the speeds just measured (`split_by_speed`) and
  broadcasts the shares; the next epoch runs with them. Speeds are measured at the shares in use, so a re-plan
  also corrects what a fixed per-call cost made the previous one miss;
* the loss: rank r's mean loss is multiplied by b_r x world_size / B (`loss_weight`), so DDP's gradient average
  is the gradient of the mean loss over the whole global batch, as with equal shares.

Everything here is pure (no torch.distributed); vit_dt/run/loop.py does the collectives, vit_dt/data/loader.py the
per-rank batches. docs/studies/mixed-gpus.md shows it at work.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from vit_dt.config.choices import BALANCE_MODES
from vit_dt.measure.breakdown import compute_ms

CALIBRATION = ("epoch 0 runs with equal shares; at the end of every epoch the shares of the next one are re-planned "
               "from that epoch's measured speeds (images per second of fwd + bwd_inner)")


def equal_shares(global_micro: int, world_size: int) -> list[int]:
    """Every rank the same micro-batch (global_micro must be a multiple of world_size)."""
    if world_size < 1 or global_micro % world_size:
        raise ValueError(f"global micro-batch {global_micro} does not split evenly over {world_size} ranks")
    return [global_micro // world_size] * world_size


def split_by_speed(speeds: Sequence[float], total: int) -> list[int]:
    """Integer shares of `total` samples, proportional to `speeds`, each >= 1, summing to `total`.

    Largest-remainder rounding of the exact quotas total x speed_r / sum(speeds); a rank whose quota is below 1
    gets 1 and the rest is split again over the others. Ties go to the lower rank, so every caller gets the same
    answer from the same speeds.
    """
    n = len(speeds)
    if n < 1:
        raise ValueError("split_by_speed needs at least one rank's speed, got none")
    if any(not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s <= 0
           for s in speeds):
        raise ValueError(f"speeds must be finite and > 0, got {list(speeds)}")
    if not isinstance(total, int) or total < n:
        raise ValueError(f"cannot give each of {n} ranks at least 1 of {total} samples")
    fixed: set[int] = set()
    while True:
        free = [r for r in range(n) if r not in fixed]
        budget = total - len(fixed)
        speed_sum = math.fsum(speeds[r] for r in free)
        quotas = {r: budget * speeds[r] / speed_sum for r in free}
        low = [r for r in free if quotas[r] < 1]
        if not low:
            break
        fixed.update(low)
    shares = [1] * n
    for r in free:
        shares[r] = int(math.floor(quotas[r]))
    left = budget - sum(shares[r] for r in free)
    for r in sorted(free, key=lambda r: (-(quotas[r] - shares[r]), r))[:left]:
        shares[r] += 1
    return shares


def loss_weight(share: int, world_size: int, global_micro: int) -> float:
    """The factor on rank r's mean loss so that DDP's average of the ranks' gradients is the gradient of the mean
    loss over all `global_micro` samples: (1/W) sum_r (b_r W / B) grad(mean_r) = (1/B) sum_i grad(loss_i)."""
    return share * world_size / global_micro


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / max: 0 when every rank takes the same time, near 1 when one rank takes far longer."""
    if not values or max(values) <= 0:
        return None
    return (max(values) - min(values)) / max(values)


def measured_speeds(per_rank: Sequence[Mapping[str, float]], shares: Sequence[int], grad_accum: int
                    ) -> list[float] | None:
    """Each rank's images per second of forward + backward compute, from its sampled breakdown (ms per step, summed
    over the step's `grad_accum` micro-steps); None when any rank has no timed step to go by."""
    if len(per_rank) != len(shares):
        raise ValueError(f"{len(per_rank)} ranks' breakdowns for {len(shares)} shares")
    speeds = []
    for row, share in zip(per_rank, shares):
        busy_ms = float(row.get("fwd", 0.0)) + float(row.get("bwd_inner", 0.0))
        if not row.get("samples") or busy_ms <= 0:
            return None
        speeds.append(share * grad_accum / (busy_ms / 1e3))
    return speeds


def epoch_entry(epoch: int, mode: str, shares: Sequence[int], per_rank: Sequence[Mapping[str, float]] | None,
                grad_accum: int) -> dict:
    """What one epoch measured at its shares, and the shares of the next epoch (rank 0 decides, then broadcasts).

    With mode `off`, or without a measurement, the next epoch keeps the shares.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"trainer.balance={mode!r} is invalid; valid: {', '.join(BALANCE_MODES)}")
    shares = list(shares)
    speeds = measured_speeds(per_rank, shares, grad_accum) if per_rank else None
    compute = [compute_ms(row) for row in per_rank] if per_rank and all(r.get("samples") for r in per_rank) \
        else None
    step_times = [float(row.get("step_time", 0.0)) for row in per_rank] if compute else None
    next_shares = split_by_speed(speeds, sum(shares)) if mode == "speed" and speeds else shares
    return {"epoch": epoch, "shares": shares, "speed_img_per_s": speeds, "compute_ms": compute,
            "spread": spread(compute) if compute else None,
            "step_time_ms": statistics.fmean(step_times) if step_times else None, "next_shares": next_shares}


def summarise(mode: str, entries: Sequence[Mapping], global_micro: int) -> dict:
    """result.json's `balance`: the mode, per-epoch entries, and the spread of per-rank compute time before (the
    first epoch, equal shares) and after (the last epoch; with re-planned shares when mode is `speed`)."""
    entries = [dict(e) for e in entries]
    first, last = (entries[0], entries[-1]) if entries else ({}, {})
    return {
        "mode": mode, "global_micro_batch": global_micro,
        "calibration": CALIBRATION if mode == "speed" else None,
        "shares": last.get("shares"), "next_shares": last.get("next_shares"),
        "speed_img_per_s": last.get("speed_img_per_s"),
        "spread_before": first.get("spread"),
        "spread_after": last.get("spread") if len(entries) > 1 else None,
        "step_time_ms_before": first.get("step_time_ms"),
        "step_time_ms_after": last.get("step_time_ms") if len(entries) > 1 else None,
        "epochs": entries,
    }
