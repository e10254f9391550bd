"""What every engine is: one micro-step, timing switches, evaluation; plus the compile and lr-schedule settings
both engines share."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch

from vit_dt.config.choices import COMPILE_MODES, LR_SCHEDULES
from vit_dt.config.schema import TrainerSchema


class TrainEngine(ABC):
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def micro_step(self, images: torch.Tensor, labels: torch.Tensor, boundary: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward of one micro-batch; optimizer step when `boundary`. Returns (loss, logits), detached."""

    @abstractmethod
    def set_timing(self, enabled: bool) -> None:
        """Switch the per-phase timers on (for the coming optimizer step) or off; call between steps. The timers
        record device events and never synchronise (vit_dt.measure.step_timing reads them later)."""

    @abstractmethod
    def last_step_timers(self) -> dict[str, float]:
        """fwd, bwd, bwd_inner, bwd_allreduce, step in ms for the last timed optimizer step (this rank). Call once
        that step's device work is done, before the next timed step begins."""

    input_dtype: torch.dtype = torch.float32   # bf16 where the module itself is bf16 (master weights)

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.module(images.to(self.input_dtype)).float()

    def autocast(self):
        return nullcontext()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def compile_requested(trainer: TrainerSchema) -> bool:
    return trainer.compile


# torch.compile modes; reduce-overhead replays the compiled forward and backward as CUDA graphs (one launch each):
# worth it where the host cannot keep up with the GPU (small micro-batches, docs/performance.md).


def compile_options(trainer: TrainerSchema) -> dict[str, str]:
    mode = trainer.compile_mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"trainer.compile_mode={mode!r} is invalid; valid: {', '.join(COMPILE_MODES)}")
    return {} if mode == "default" else {"mode": mode}


def cuda_graphs_requested(trainer: TrainerSchema) -> bool:
    """Whether the compiled forward and backward replay as CUDA graphs: each step must then say that a new one
    begins (`torch.compiler.cudagraph_mark_step_begin()`), so the last step's graph outputs may be overwritten."""
    return compile_requested(trainer) and trainer.compile_mode == "reduce-overhead"




def make_scheduler(optimizer, warmup_steps: int, total_steps: int, schedule: str = "cosine"):
    """Linear warm-up, then constant or cosine decay to zero at `total_steps` (stepped once per optimizer step)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"trainer.lr_schedule={schedule!r} is invalid; valid: {', '.join(LR_SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
