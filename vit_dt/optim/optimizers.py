"""Optimizers by name (the `optimizer` config group) and the learning-rate scaling rule for a changed global batch.

AdamW and SGD are torch's own. LAMB is implemented here with torch ops: DeepSpeed's FusedLamb is a CUDA JIT build
(no CPU), and its build path is the one that crashes on H100's arch "9.0a" (see docs/performance.md).

The scaling rule turns `optimizer.lr` (tuned at `optimizer.base_batch` images per optimizer step) into the lr a
run with another global batch uses: linear (Goyal et al. 2017) or square root (Hoffer et al. 2017; Krizhevsky 2014).
The paper grew the global batch with the GPU count and kept the lr fixed; either rule fixes that.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from vit_dt.config.choices import LR_RULES, MASTER_UPDATES, OPTIMIZERS
from vit_dt.config.schema import OptimizerSchema

if TYPE_CHECKING:  # torch is imported where optimizers are built: validating a sweep on a login node stays fast
    import torch

# Keys each optimizer reads from its config group; anything else is a typo the run would silently ignore.
_COMMON_KEYS = frozenset({"name", "lr", "weight_decay", "lr_scaling", "base_batch"})
_OWN_KEYS = {
    "adamw": frozenset({"betas", "eps", "fused", "master_update"}),
    "sgd": frozenset({"momentum", "nesterov", "fused"}),
    "lamb": frozenset({"betas", "eps", "max_trust", "min_trust", "fused"}),
}


class OptimizerConfigError(ValueError):
    pass


def unknown_name_error(name: Any) -> str | None:
    """Why `optimizer.name` is no optimizer's, or None (checked before typing: the name picks the schema)."""
    return None if name in OPTIMIZERS else f"optimizer={name!r} is unknown; valid: {', '.join(OPTIMIZERS)}"


def zero_stage_error(name: str, stage: int) -> str | None:
    """Why optimizer `name` cannot step under DeepSpeed ZeRO `stage`, or None when it can."""
    if name == "lamb" and stage > 0:
        # ZeRO flattens parameters into partitions: LAMB's per-layer trust ratio would become per-partition.
        return (f"optimizer=lamb with deepspeed.zero_stage={stage} would compute LAMB's trust ratio over flattened "
                f"ZeRO partitions instead of per layer; valid: deepspeed.zero_stage=0 or engine=ddp")
    return None


def scale_lr(base_lr: float, global_batch: int, rule: str, base_batch: int | None) -> float:
    """The lr for `global_batch`: unchanged (`none`), x global/base (`linear`) or x sqrt(global/base) (`sqrt`)."""
    if rule not in LR_RULES:
        raise OptimizerConfigError(f"optimizer.lr_scaling={rule!r} is invalid; valid: {', '.join(LR_RULES)}")
    if rule == "none":
        return float(base_lr)
    if not isinstance(base_batch, int) or isinstance(base_batch, bool) or base_batch < 1:
        raise OptimizerConfigError(
            f"optimizer.base_batch={base_batch!r} is invalid: optimizer.lr_scaling={rule} needs the global batch "
            f"optimizer.lr was tuned at, an integer >= 1 (e.g. optimizer.base_batch=256)")
    if global_batch < 1:
        raise OptimizerConfigError(f"global batch {global_batch} is invalid: it must be >= 1")
    ratio = global_batch / base_batch
    return float(base_lr) * (ratio if rule == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class OptimizerSpec:
    """A validated `optimizer` config group, resolved for one run's global batch."""
    name: str
    lr_base: float
    lr_effective: float          # what the optimizer starts from (the schedule's peak)
    lr_rule: str
    base_batch: int | None
    global_batch: int
    weight_decay: float
    options: Mapping[str, Any]   # the optimizer's own keys (betas, momentum, ...)

    @classmethod
    def from_config(cls, cfg: OptimizerSchema, global_batch: int) -> "OptimizerSpec":
        """The typed `optimizer` group (vit_dt.config.typed: an instance of the option's own schema)."""
        name = cfg.name
        if unknown_name_error(name):
            raise OptimizerConfigError(unknown_name_error(name))
        valid = _COMMON_KEYS | _OWN_KEYS[name]
        declared = {f.name for f in fields(cfg)}
        unknown = sorted(declared - valid)
        if unknown:   # another optimizer's schema under this name: a key this optimizer would not read
            raise OptimizerConfigError(
                f"optimizer.{unknown[0]} is not a setting of optimizer {name}; valid: {', '.join(sorted(valid))}")
        for key in ("lr", "weight_decay"):
            value = getattr(cfg, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise OptimizerConfigError(f"optimizer.{key}={value!r} is invalid: it must be a number >= 0")
        # only AdamW declares master_update (the fused bf16 master step); the others always step separately
        update = getattr(cfg, "master_update", "separate")
        if update not in MASTER_UPDATES:
            raise OptimizerConfigError(
                f"optimizer.master_update={update!r} is invalid; valid: {', '.join(MASTER_UPDATES)}")
        lr = scale_lr(float(cfg.lr), int(global_batch), cfg.lr_scaling, cfg.base_batch)
        options = {key: getattr(cfg, key) for key in sorted(declared & _OWN_KEYS[name])}
        return cls(name=name, lr_base=float(cfg.lr), lr_effective=lr, lr_rule=cfg.lr_scaling,
                   base_batch=cfg.base_batch, global_batch=int(global_batch), weight_decay=float(cfg.weight_decay),
                   options=options)

    def record(self) -> dict[str, Any]:
        """The fields result.json carries, so a results table shows which lr each run really trained with."""
        return {"optimizer": self.name, "lr_rule": self.lr_rule, "lr_base": self.lr_base,
                "lr_base_batch": self.base_batch, "lr_effective": self.lr_effective}


def lr_record(optimizer_cfg: OptimizerSchema | None, global_batch: int) -> dict[str, Any]:
    """result.json's optimizer fields for the typed `optimizer` group (all None without one)."""
    if optimizer_cfg is None:
        return dict.fromkeys(("optimizer", "lr_rule", "lr_base", "lr_base_batch", "lr_effective"))
    return OptimizerSpec.from_config(optimizer_cfg, global_batch).record()


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec,
                    device: torch.device) -> torch.optim.Optimizer:
    """torch's AdamW/SGD (fused kernels on CUDA unless `fused: false`) or vit-dt's LAMB."""
    import torch

    from vit_dt.optim.lamb import Lamb

    params = list(params)
    opts = spec.options
    cuda = device.type == "cuda"
    if spec.name in ("adamw", "sgd"):
        # torch's fused kernels exist for CUDA only; `fused: null` means "where they exist".
        fused = cuda if opts["fused"] is None else bool(opts["fused"]) and cuda
    if spec.name == "adamw":
        # torch's AdamW, never DeepSpeed's "AdamW" (FusedAdam: a JIT build that crashes on H100's arch "9.0a").
        return torch.optim.AdamW(params, lr=spec.lr_effective, weight_decay=spec.weight_decay,
                                 betas=tuple(opts["betas"]), eps=float(opts["eps"]),
                                 fused=fused)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr_effective, weight_decay=spec.weight_decay,
                               momentum=float(opts["momentum"]), nesterov=bool(opts["nesterov"]),
                               fused=fused)
    betas, eps = tuple(opts["betas"]), float(opts["eps"])
    trust = dict(max_trust=float(opts["max_trust"]), min_trust=float(opts["min_trust"]))
    if opts["fused"]:
        # LAMB's `fused: true` is an explicit request for DeepSpeed's CUDA kernel, never a silent default.
        if not cuda:
            raise OptimizerConfigError(
                f"optimizer.fused=true for lamb needs a CUDA device (DeepSpeed's FusedLamb); this rank runs on "
                f"{device.type}: set optimizer.fused=false for vit-dt's torch-ops LAMB")
        return _deepspeed_fused_lamb(params, spec, betas, eps, device, **trust)
    return Lamb(params, lr=spec.lr_effective, betas=betas, eps=eps, weight_decay=spec.weight_decay, **trust)


def _deepspeed_fused_lamb(params, spec: OptimizerSpec, betas, eps: float, device: torch.device, max_trust: float,
                          min_trust: float) -> torch.optim.Optimizer:
    """DeepSpeed's FusedLamb (CUDA only, JIT-built on first use; not yet measured on the H100).

    DeepSpeed parses torch's arch list and fails on "9.0a"; pinning the list to this GPU's plain arch avoids that.
    """
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    from deepspeed.ops.lamb import FusedLamb

    return FusedLamb(params, lr=spec.lr_effective, betas=betas, eps=eps, weight_decay=spec.weight_decay,
                     max_coeff=max_trust, min_coeff=min_trust)
