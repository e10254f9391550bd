"""vit-dt's step on DeepSpeed: ZeRO 0-3, bf16 master weights / autocast / native, DeepSpeed's sampled timers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vit_dt.config.ds_config import vit_dt_clips
from vit_dt.config.schema import TrainerSchema
from vit_dt.engines.base import TrainEngine, compile_options, compile_requested, cuda_graphs_requested, make_scheduler
from vit_dt.engines.deepspeed_ops import load_ops
from vit_dt.engines.deepspeed_timers import quiet_engine_timer_log, read_engine_timers, set_engine_timing
from vit_dt.optim.master_weights import build_master_weights_optimizer
from vit_dt.optim.optimizers import OptimizerSpec, build_optimizer, zero_stage_error


class DeepSpeedEngine(TrainEngine):
    def __init__(self, model, ds_config: dict, trainer: TrainerSchema, device: torch.device, schedule: dict,
                 optimizer: OptimizerSpec, master_weights: bool = False):
        import deepspeed

        stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        if master_weights and stage > 0:
            raise ValueError(f"master_weights with deepspeed.zero_stage={stage}: ZeRO partitions its own fp32 masters")
        refused = zero_stage_error(optimizer.name, stage)
        if refused:
            raise ValueError(refused)
        self.optimizer_spec = optimizer
        self.master_weights = bool(master_weights)
        if self.master_weights:
            model.to(device=device, dtype=torch.bfloat16)
        if vit_dt_clips(stage, deepspeed_half_precision=ds_config["fp16"]["enabled"] or ds_config["bf16"]["enabled"]):
            # vit-dt's step: fp32 masters for a bf16 module, foreach clipping (ds_config.vit_dt_clips).
            torch_optimizer = build_master_weights_optimizer(model.parameters(), optimizer, device,
                                                             clip=float(trainer.grad_clip or 0.0))   # null: no clipping
        else:
            torch_optimizer = build_optimizer(model.parameters(), optimizer, device)
        load_ops(stopped_bound_s=trainer.dist_timeout_s)   # announced, bounded: not inside initialize's silent wait
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
        self.compiled = compile_requested(trainer)
        if self.compiled:
            # In place (nn.Module.compile): DeepSpeed's hooks and the state_dict keys stay as they were.
            self.engine.compile(compile_kwargs=compile_options(trainer))
        self._cuda_graphs = cuda_graphs_requested(trainer)
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
