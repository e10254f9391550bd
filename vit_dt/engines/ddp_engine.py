"""vit-dt's step on plain PyTorch DDP, with the same timers (device events) as the DeepSpeed engine."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from vit_dt.config.schema import TrainerSchema
from vit_dt.engines.base import TrainEngine, compile_options, compile_requested, cuda_graphs_requested, make_scheduler
from vit_dt.measure.breakdown import TIMER_KEYS
from vit_dt.measure.step_timing import DeviceClock, Mark
from vit_dt.optim.master_weights import build_master_weights_optimizer
from vit_dt.optim.optimizers import OptimizerSpec, build_optimizer


class DDPEngine(TrainEngine):
    """Plain PyTorch DDP: the comparison the paper left as future work (DDP overlaps all-reduce with backward)."""

    def __init__(self, model, trainer: TrainerSchema, device: torch.device, precision: str, schedule: dict,
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
        self.compiled = compile_requested(trainer)
        if self.compiled:
            # The DDP wrapper, not the bare model: dynamo's DDPOptimizer then splits graphs at bucket boundaries
            # so the all-reduce still overlaps backward.
            self.ddp.compile(**compile_options(trainer))
        self._cuda_graphs = cuda_graphs_requested(trainer)
        self.module = model
        self.device = device
        self.optimizer_spec = optimizer
        self.grad_clip = float(trainer.grad_clip or 0.0)   # null: no clipping
        if precision == "fp16":
            self.optimizer = build_optimizer(model.parameters(), optimizer, device)
        else:
            # vit-dt's step (fp32 masters for a bf16 module; foreach clipping) also clips: the engine does not.
            self.optimizer = build_master_weights_optimizer(model.parameters(), optimizer, device,
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
        self.loss_weight = 1.0           # trainer.balance=speed: b_r x world / B (vit_dt/run/balance.py)
        self._grads = _LastGradient(self.clock, [p for p in model.parameters() if p.requires_grad])

    def set_loss_weight(self, weight: float) -> None:
        """Scale this rank's mean loss (per-rank micro-batches: see vit_dt.run.balance.loss_weight)."""
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
