"""DeepSpeed or plain DDP behind one small interface, so the training loop does not care which runs.

An engine does one micro-step (forward, backward, and at the accumulation boundary the all-reduce and optimizer
step), evaluates, and reports the wall-clock breakdown of the last optimizer step when timing was switched on.

Fast-path switches (docs/performance.md): `trainer.compile` compiles the module in place (DeepSpeed's
`engine.compile()`, `nn.Module.compile` for DDP), so parameter names and checkpoints are the same either way; the
optimizer comes from `vit_dt.optimizers` (torch's fused AdamW on CUDA, never DeepSpeed's FusedAdam JIT build).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from vit_dt.breakdown import TIMER_KEYS, quiet_engine_timer_log, read_engine_timers, set_engine_timing
from vit_dt.ds_config import vit_dt_clips
from vit_dt.master_weights import MasterWeightsOptimizer
from vit_dt.optimizers import OptimizerSpec, build_optimizer
from vit_dt.step_timing import DeviceClock, Mark

ENGINES = ("deepspeed", "ddp")


class TrainEngine(ABC):
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def micro_step(self, images: torch.Tensor, labels: torch.Tensor, boundary: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward of one micro-batch; optimizer step when `boundary`. Returns (loss, logits), detached."""

    @abstractmethod
    def set_timing(self, enabled: bool) -> None:
        """Switch the per-phase timers on (for the coming optimizer step) or off; call between steps. The timers
        record device events and never synchronise (vit_dt.step_timing reads them later)."""

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


def compile_requested(trainer_cfg: Mapping[str, Any]) -> bool:
    value = trainer_cfg.get("compile", False)
    if not isinstance(value, bool):
        raise ValueError(f"trainer.compile={value!r} is invalid; valid: true, false")
    return value


# torch.compile modes; reduce-overhead replays the compiled forward and backward as CUDA graphs (one launch each):
# worth it where the host cannot keep up with the GPU (small micro-batches, docs/performance.md).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(trainer_cfg: Mapping[str, Any]) -> dict[str, str]:
    mode = trainer_cfg.get("compile_mode", "default")
    if mode not in COMPILE_MODES:
        raise ValueError(f"trainer.compile_mode={mode!r} is invalid; valid: {', '.join(COMPILE_MODES)}")
    return {} if mode == "default" else {"mode": mode}


LR_SCHEDULES = ("constant", "cosine")


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


class DeepSpeedEngine(TrainEngine):
    def __init__(self, model, ds_config: dict, trainer_cfg: Mapping[str, Any], device: torch.device, schedule: dict,
                 optimizer: OptimizerSpec, master_weights: bool = False):
        import deepspeed

        stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        if master_weights and stage > 0:
            raise ValueError(f"master_weights with deepspeed.zero_stage={stage}: ZeRO partitions its own fp32 masters")
        if optimizer.name == "lamb" and stage > 0:
            # ZeRO flattens parameters into partitions: LAMB's per-layer trust ratio would become per-partition.
            raise ValueError(f"optimizer=lamb with deepspeed.zero_stage={stage} would compute LAMB's trust ratio "
                             f"over flattened ZeRO partitions instead of per layer; valid: deepspeed.zero_stage=0 or "
                             f"engine=ddp")
        self.optimizer_spec = optimizer
        self.master_weights = bool(master_weights)
        if self.master_weights:
            model.to(device=device, dtype=torch.bfloat16)
        if vit_dt_clips("fp16" if ds_config["fp16"]["enabled"] else "bf16 or fp32", stage):
            # vit-dt's step: fp32 masters for a bf16 module, foreach clipping (ds_config.vit_dt_clips).
            torch_optimizer = MasterWeightsOptimizer(model.parameters(),
                                                     lambda params: build_optimizer(params, optimizer, device),
                                                     clip=float(trainer_cfg.get("grad_clip") or 0.0))
        else:
            torch_optimizer = build_optimizer(model.parameters(), optimizer, device)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=torch_optimizer, lr_scheduler=make_scheduler(torch_optimizer, **schedule),
            config=ds_config)
        self.module = self.engine.module
        # DeepSpeed's bf16/fp16 modes hold the model in half precision: inputs must match. Its torch_autocast mode
        # keeps fp32 weights and casts inside forward, so inputs stay fp32.
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            "bf16" if ds_config["bf16"]["enabled"] or self.master_weights else "fp16" if ds_config["fp16"]["enabled"]
            else "", torch.float32)
        # One rank has nothing to reduce: DeepSpeed would still copy every gradient through an all-reduce.
        self.engine.enable_backward_allreduce = self.engine.dp_world_size > 1 or stage > 0
        quiet_engine_timer_log(self.engine)
        self.compiled = compile_requested(trainer_cfg)
        if self.compiled:
            # In place (nn.Module.compile): DeepSpeed's hooks and the state_dict keys stay as they were.
            self.engine.compile(compile_kwargs=compile_options(trainer_cfg))
        self._cuda_graphs = self.compiled and compile_options(trainer_cfg).get("mode") == "reduce-overhead"
        self._timers_wanted = bool(ds_config.get("wall_clock_breakdown"))
        self._timing: bool | None = None
        self.set_timing(False)

    def set_timing(self, enabled: bool) -> None:
        enabled = self._timers_wanted and enabled
        if enabled != self._timing:
            set_engine_timing(self.engine, enabled)
            self._timing = enabled

    def micro_step(self, images, labels, boundary):
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()   # the last step's graph outputs are no longer needed
        logits = self.engine(images.to(self.input_dtype))
        loss = F.cross_entropy(logits.float(), labels)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach(), logits.detach()

    def eval_logits(self, images):
        with torch.no_grad():
            return self.engine(images.to(self.input_dtype)).float()

    def last_step_timers(self):
        return read_engine_timers(self.engine) if self._timers_wanted else {}

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DDPEngine(TrainEngine):
    """Plain PyTorch DDP: the comparison the paper left as future work (DDP overlaps all-reduce with backward)."""

    def __init__(self, model, trainer_cfg: Mapping[str, Any], device: torch.device, precision: str, schedule: dict,
                 grad_accum: int, optimizer: OptimizerSpec, master_weights: bool = False):
        from torch.nn.parallel import DistributedDataParallel

        self.master_weights = bool(master_weights)
        self.input_dtype = torch.bfloat16 if self.master_weights else torch.float32
        model.to(device=device, dtype=self.input_dtype)
        ids = [device.index] if device.type == "cuda" else None
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_initialized() else 1
        # One rank has nothing to reduce: DDP's reducer would only copy every gradient through its buckets, and
        # compiled, its graph splits at bucket boundaries cost launch overhead at small batches.
        self.ddp = DistributedDataParallel(model, device_ids=ids) if world > 1 else model
        self.compiled = compile_requested(trainer_cfg)
        if self.compiled:
            # The DDP wrapper, not the bare model: dynamo's DDPOptimizer then splits graphs at bucket boundaries
            # so the all-reduce still overlaps backward.
            self.ddp.compile(**compile_options(trainer_cfg))
        self._cuda_graphs = self.compiled and compile_options(trainer_cfg).get("mode") == "reduce-overhead"
        self.module = model
        self.device = device
        self.optimizer_spec = optimizer
        self.grad_clip = float(trainer_cfg.get("grad_clip") or 0.0)
        if precision == "fp16":
            self.optimizer = build_optimizer(model.parameters(), optimizer, device)
        else:
            # vit-dt's step (fp32 masters for a bf16 module; foreach clipping) also clips: the engine does not.
            self.optimizer = MasterWeightsOptimizer(model.parameters(),
                                                    lambda params: build_optimizer(params, optimizer, device),
                                                    clip=self.grad_clip)
            self.grad_clip = 0.0
        self.scheduler = make_scheduler(self.optimizer, **schedule)
        self.grad_accum = grad_accum
        # Autocast only where the module is fp32: a bf16 module computes in bf16 by itself.
        self.dtype = None if self.master_weights else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.clock = DeviceClock(device)
        self._timing = False
        self._spans: list[tuple[str, Mark, Mark]] = []   # (timer, start, end) of the timed step, read later
        self.loss_weight = 1.0           # trainer.balance=speed: b_r x world / B (vit_dt/balance.py)
        self._grads = _LastGradient(self.clock, [p for p in model.parameters() if p.requires_grad])

    def set_loss_weight(self, weight: float) -> None:
        """Scale this rank's mean loss (per-rank micro-batches: see vit_dt.balance.loss_weight)."""
        self.loss_weight = float(weight)

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def set_timing(self, enabled):
        if enabled and not self._timing:
            self._spans = []
        self._timing = enabled
        self._grads.attach(enabled)

    def micro_step(self, images, labels, boundary):
        sync = nullcontext() if boundary or not hasattr(self.ddp, "no_sync") else self.ddp.no_sync()
        timing = self._timing
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with sync:
            t0 = self.clock.mark() if timing else None
            with self.autocast():
                logits = self.ddp(images.to(self.input_dtype))
                loss = F.cross_entropy(logits.float(), labels)
            t1 = self.clock.mark() if timing else None
            scaled = loss / self.grad_accum
            if self.loss_weight != 1.0:
                scaled = scaled * self.loss_weight
            self._grads.start(timing)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            t2 = self.clock.mark() if timing else None
        if timing:
            # DDP's all-reduce runs inside backward, overlapped: bwd_allreduce is the part left after this rank's
            # last gradient (the last bucket, and waiting for slower ranks), bwd_inner the rest.
            ready = self._grads.ready or t2
            self._spans += [("fwd", t0, t1), ("bwd", t1, t2), ("bwd_inner", t1, ready), ("bwd_allreduce", ready, t2)]
        if boundary:
            t3 = self.clock.mark() if timing else None
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if timing:
                self._spans.append(("step", t3, self.clock.mark()))
        return loss.detach(), logits.detach()

    def last_step_timers(self):
        if not self._spans:
            return {}
        timers = dict.fromkeys(TIMER_KEYS, 0.0)
        for key, start, end in self._spans:
            timers[key] += max(0.0, self.clock.ms(start, end))
        return timers

    def state_dict(self) -> dict:
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class _LastGradient:
    """A parameter hook (post gradient accumulation) marking when the last gradient of a timed backward was ready:
    the end of this rank's own backward compute. What DDP's backward() takes after it is the all-reduce it could
    not hide, including waiting for slower ranks, which would otherwise count as this rank's compute. On a GPU the
    mark is an event on the compute stream: no synchronisation inside backward."""

    def __init__(self, clock: DeviceClock, params: list[torch.nn.Parameter]):
        self.clock, self.params = clock, params
        self.timing, self.ready = False, None
        self._handles: list = []

    def attach(self, enabled: bool) -> None:
        """Hooks only while timing: untimed backwards make no Python call per parameter."""
        if enabled and not self._handles:
            self._handles = [p.register_post_accumulate_grad_hook(self) for p in self.params]
        elif not enabled and self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def start(self, timing: bool) -> None:
        self.timing, self.ready = timing, None

    def __call__(self, _param) -> None:
        if self.timing:
            self.ready = self.clock.mark()
