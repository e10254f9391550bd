"""Micro-batch, gradient accumulation and global batch: one rule, used by validation and the DeepSpeed config; and
the steps an epoch of them takes, one rule for the loader, the training loop, its lr schedule and the scaling model."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vit_dt.config.schema import ScalingSchema, TrainerSchema


class BatchError(ValueError):
    pass


@dataclass(frozen=True)
class Batch:
    micro: int        # per rank, per micro-step
    grad_accum: int
    world_size: int

    @property
    def global_(self) -> int:
        return self.micro * self.grad_accum * self.world_size


def micro_steps_per_epoch(samples: int, world_size: int, micro_batch: int, drop_last: bool = True) -> int:
    """Micro-batches each rank takes in one epoch (the same on every rank): the sampler deals `samples` out evenly
    over the ranks; with drop_last the ragged tail is dropped (training), without it the last batch is short."""
    if drop_last:
        return (samples // world_size) // micro_batch
    return math.ceil(math.ceil(samples / world_size) / micro_batch)


def optimizer_steps(micro_steps: int, grad_accum: int = 1, drop_last: bool = True, max_steps: int | None = None) -> int:
    """Optimizer steps of an epoch of `micro_steps` micro-batches per rank: whole groups of grad_accum (with
    drop_last; else a short last group counts too), capped at `max_steps` (trainer.max_steps_per_epoch) when set."""
    steps = micro_steps // grad_accum if drop_last else math.ceil(micro_steps / grad_accum)
    return min(steps, max_steps) if max_steps else steps


def steps_per_epoch(samples: int, world_size: int, micro_batch: int, grad_accum: int = 1, drop_last: bool = True,
                    max_steps: int | None = None) -> int:
    """Optimizer steps per epoch of `samples` training samples on `world_size` ranks, as vit-dt's loader and
    training loop count them (drop_last) or as a loader that keeps the tail would."""
    return optimizer_steps(micro_steps_per_epoch(samples, world_size, micro_batch, drop_last), grad_accum,
                           drop_last, max_steps)


def resolve_batch(trainer: TrainerSchema, scaling: ScalingSchema, world_size: int) -> Batch:
    """The batch sizes for `world_size` ranks, from the typed trainer and scaling configs (vit_dt.config.typed).

    With a fixed global batch (`trainer.global_batch`, required by `scaling.fixed=global`) the micro-batch is derived
    and must divide evenly; otherwise `trainer.micro_batch` is kept and the global batch grows with the world size.
    """
    grad_accum = _count(trainer.grad_accum, "trainer.grad_accum")
    if world_size < 1:
        raise BatchError(f"world size {world_size} is invalid: it must be >= 1")
    global_batch = trainer.global_batch
    # only StrongScalingSchema declares `fixed`
    if scaling.mode == "strong" and getattr(scaling, "fixed", None) == "global" and global_batch is None:
        raise BatchError("scaling.fixed=global needs trainer.global_batch (e.g. trainer.global_batch=256)")
    if global_batch is None:
        micro = _count(trainer.micro_batch, "trainer.micro_batch")
        return Batch(micro=micro, grad_accum=grad_accum, world_size=world_size)
    global_batch = _count(global_batch, "trainer.global_batch", optional=True)
    per_step = world_size * grad_accum
    if global_batch < per_step or global_batch % per_step:
        valid = [n for n in range(1, global_batch + 1) if global_batch % (n * grad_accum) == 0]
        raise BatchError(
            f"trainer.global_batch={global_batch} is not divisible by world size x grad_accum = "
            f"{world_size} x {grad_accum} = {per_step}; world sizes that divide it with grad_accum={grad_accum}: "
            f"{valid}")
    return Batch(micro=global_batch // per_step, grad_accum=grad_accum, world_size=world_size)


def _count(value: Any, key: str, optional: bool = False) -> int:
    """`value` as an integer >= 1 (a whole float such as 64.0 counts); BatchError naming `key` otherwise."""
    if not isinstance(value, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BatchError(f"{key}={value!r} is invalid: it must be an integer >= 1" + (" or null" if optional else ""))
    return value
