"""Micro-batch, gradient accumulation and global batch: one rule, used by validation and the DeepSpeed config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


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


def resolve_batch(trainer: Mapping[str, Any], scaling: Mapping[str, Any], world_size: int) -> Batch:
    """The batch sizes for `world_size` ranks.

    With a fixed global batch (`trainer.global_batch`, required by `scaling.fixed=global`) the micro-batch is derived
    and must divide evenly; otherwise `trainer.micro_batch` is kept and the global batch grows with the world size.
    """
    grad_accum = _count(trainer.get("grad_accum"), "trainer.grad_accum")
    if world_size < 1:
        raise BatchError(f"world size {world_size} is invalid: it must be >= 1")
    global_batch = trainer.get("global_batch")
    if scaling.get("mode") == "strong" and scaling.get("fixed") == "global" and global_batch is None:
        raise BatchError("scaling.fixed=global needs trainer.global_batch (e.g. trainer.global_batch=256)")
    if global_batch is None:
        micro = _count(trainer.get("micro_batch"), "trainer.micro_batch")
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
