"""LAMB with torch ops (runs on CPU and GPU; DeepSpeed's FusedLamb is CUDA-only)."""
from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"), one trust ratio per parameter tensor.

    Per tensor p with gradient g at step t:
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * p
        r = clamp(||p|| / ||u||, min_trust, max_trust), or 1 when ||p|| or ||u|| is 0
        p = p - lr * r * u
    The clamp bounds are DeepSpeed FusedLamb's max_coeff/min_coeff defaults, so the two agree.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_trust: float = 10.0, min_trust: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"LAMB needs lr, eps, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"LAMB betas must be in [0, 1); got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_trust=max_trust, min_trust=min_trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad.to(exp_avg.dtype)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
                update = (exp_avg / (1 - beta1 ** step)).div_(denom)
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                # Norms stay on the device: no .item(), so the step never waits for the GPU.
                weight_norm, update_norm = p.norm(), update.norm()
                ratio = (weight_norm / update_norm).clamp(group["min_trust"], group["max_trust"])
                trust = torch.where((weight_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                p.sub_(update * (trust * group["lr"]).to(p.dtype))
        return loss
