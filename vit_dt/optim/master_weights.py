"""The optimizer step of vit-dt's fast paths: fp32 master weights behind a bf16 module, and foreach gradient clipping.

With `deepspeed.bf16_mode=master` the module itself is bf16 (weights, activations and gradients: half the memory
traffic of autocast, whose LayerNorms and residual stream stay fp32), while the optimizer steps fp32 copies of
the weights, so small updates are not rounded away. `MasterWeightsOptimizer` owns those copies: after backward it
copies the bf16 gradients into fp32, clips them with one foreach norm (no host sync), steps the inner torch
optimizer and copies the result back into the module. The same class serves an fp32 module (autocast, fp32) with
no copies at all: then it is only the clipping, done without DeepSpeed's per-parameter loop. With
`optimizer.master_update=fused` (AdamW only) the copy, the clipping and the update become one compiled pass over
the bf16 gradients (vit_dt/optim/master_adamw.py).

It is a torch Optimizer whose `param_groups` and `state` are the inner optimizer's, so lr schedulers and
DeepSpeed's client-optimizer path work on it unchanged; its state_dict carries the fp32 masters, so a checkpoint
resumes without losing the low bits that the bf16 module does not hold.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from vit_dt.optim.master_adamw import FusedMasterAdamW
from vit_dt.optim.optimizers import MASTER_UPDATES, OptimizerSpec, build_optimizer

InnerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class _FromInner:
    """An optimizer attribute that is the inner optimizer's once there is one, looked up on every access (the inner
    load_state_dict replaces the objects); before that, Optimizer.__init__'s own placeholder."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        inner = obj.__dict__.get("inner")
        return getattr(inner, self.name) if inner is not None else obj.__dict__[f"_own_{self.name}"]

    def __set__(self, obj, value) -> None:
        inner = obj.__dict__.get("inner")
        if inner is not None:
            setattr(inner, self.name, value)
        else:
            obj.__dict__[f"_own_{self.name}"] = value


class MasterWeightsOptimizer(torch.optim.Optimizer):
    param_groups = _FromInner()
    state = _FromInner()

    def __init__(self, params: Iterable[torch.nn.Parameter], build_inner: InnerFactory, clip: float = 0.0,
                 update: str = "separate"):
        if update not in MASTER_UPDATES:
            raise ValueError(f"optimizer.master_update={update!r} is invalid; valid: {', '.join(MASTER_UPDATES)}")
        self.model_params = [p for p in params if p.requires_grad]
        self.copies = any(p.dtype != torch.float32 for p in self.model_params)
        # Without copies there is nothing to fuse: the fp32 module's own parameters are the masters.
        self.update = update if self.copies else "separate"
        if self.copies:
            self.masters = [p.detach().float().clone() for p in self.model_params]
            if self.update == "separate":
                for master in self.masters:
                    master.grad = torch.zeros_like(master)
        else:
            self.masters = self.model_params
        # Optimizer's own init first, into placeholders; from then on param_groups and state are the inner's.
        super().__init__(self.masters, {})
        self.inner = build_inner(self.masters)
        self.defaults = self.inner.defaults
        self.clip = float(clip or 0.0)
        self._fused = FusedMasterAdamW(self.inner) if self.update == "fused" else None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightsOptimizer.step does not take a closure")
        if self._fused is not None:
            self._fused.step(self.model_params, self.masters, self.clip)
            return
        if self.copies:
            have = [(m, p.grad) for m, p in zip(self.masters, self.model_params) if p.grad is not None]
            missing = [m.grad for m, p in zip(self.masters, self.model_params) if p.grad is None]
            if have:
                torch._foreach_copy_([m.grad for m, _ in have], [g for _, g in have])
            if missing:
                torch._foreach_zero_(missing)
        if self.clip:
            self._clip([m.grad for m in self.masters])
        self.inner.step()
        if self.copies:
            torch._foreach_copy_(self.model_params, self.masters)

    def _clip(self, grads: list[torch.Tensor]) -> None:
        """torch's clip_grad_norm_ (same coefficient), one foreach norm and no host sync. A fused torch optimizer
        takes the clipping as its `grad_scale` (the divisor GradScaler hands it), applied inside its own kernel:
        one pass over every gradient less than scaling them first (~0.3 ms per ViT-B/16 step on an H100)."""
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        coefficient = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
        if self._fused_inner:
            self.inner.grad_scale = (1.0 / coefficient).reshape(1)
        else:
            torch._foreach_mul_(grads, coefficient)

    @property
    def _fused_inner(self) -> bool:
        return bool(self.inner.defaults.get("fused")) and getattr(self.inner, "_step_supports_amp_scaling", False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.model_params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(),
                "master_params": [m.detach().clone() for m in self.masters] if self.copies else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict["inner"])
        masters = state_dict.get("master_params")
        if self.copies and masters is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.masters, [m.to(self.masters[0].device) for m in masters])
                torch._foreach_copy_(self.model_params, self.masters)
        self._place_step_counters()

    def _place_step_counters(self) -> None:
        """Each Adam `step` counter where the code stepping it wants it: on the device for the fused update and
        torch's fused/capturable kernels, on the CPU for torch's foreach and for-loop forms (a device counter there
        costs a host sync per parameter per step). A checkpoint may come from any of them."""
        if not isinstance(self.inner, (torch.optim.Adam, torch.optim.AdamW)):
            return
        for group in self.inner.param_groups:
            on_device = self._fused is not None or group.get("fused") or group.get("capturable")
            for param in group["params"]:
                state = self.inner.state.get(param)
                if state and torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(param.device if on_device else "cpu", torch.float32)


def build_master_weights_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec, device: torch.device,
                                   clip: float) -> MasterWeightsOptimizer:
    """vit-dt's optimizer step for the `optimizer` config group: the named torch optimizer on fp32 masters."""
    return MasterWeightsOptimizer(params, lambda masters: build_optimizer(masters, spec, device), clip=clip,
                                  # only AdamW has the key (the fused bf16 master step); the others step separately
                                  update=spec.options.get("master_update", "separate"))
