"""Bytes of model states each rank really holds (parameters, gradients, optimizer states, master copies), measured
from the engine's tensors during the first optimizer steps of a run.

Why not just peak memory: on a CPU the only peak there is the process RSS (Python, libraries, data, everything),
which barely moves between ZeRO stages; on a GPU `max_memory_allocated` mixes model states with activations.
ZeRO's promise is about model states, so this probe counts exactly those, on any device:

- parameters: the module's parameter tensors as this rank holds them (ZeRO-3: its partition `ds_tensor`, plus any
  parameter DeepSpeed keeps whole, see `stage3_param_persistence_threshold`);
- gradients: the most gradient bytes alive at once, sampled after every parameter's gradient is accumulated in
  backward and after the optimizer step (ZeRO-2/3 free or partition gradients as their buckets are reduced);
- optimizer states: the torch optimizer's `state` (AdamW: exp_avg and exp_avg_sq), over the partition under ZeRO;
- master params: parameters the torch optimizer steps that are not the module's (ZeRO's fp32 partition copy);
- live tensors: every tensor storage reachable from Python, the larger of two looks in the last probed step: in
  backward (DeepSpeed's gradient buckets exist then) and right after the optimizer step. Flat buffers and buckets
  count at their allocated size, as a GPU allocator would count them; activations held only by autograd do not.

The probe only watches the first `steps` optimizer steps (its per-gradient hook is O(parameters)), then removes
its hooks. It never breaks training: an error inside a hook switches the probe off and is logged.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch._subclasses.fake_tensor import FakeTensor

log = logging.getLogger("vit_dt.measure.memory")

GIB = 2**30
CATEGORIES = ("params", "gradients", "optimizer_states", "master_params")


@dataclass
class MemorySnapshot:
    """Bytes held by one rank; `gradients` is the peak over the probed steps, the rest as of the last one."""
    params: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    master_params: int = 0
    live_tensors: int | None = None
    offloaded: int = 0          # of the above (gradients of the master params only): held on the CPU while the
                                # module computes on an accelerator (ZeRO-Offload of optimizer or parameters)
    steps: int = 0

    @property
    def model_states(self) -> int:
        return self.params + self.gradients + self.optimizer_states + self.master_params

    def to_gb(self) -> dict[str, float | int | None]:
        data = asdict(self)
        out: dict[str, float | int | None] = {k: (v / GIB if v is not None else None)
                                              for k, v in data.items() if k != "steps"}
        out["model_states"] = self.model_states / GIB
        out["steps"] = self.steps
        return out


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _unique(tensors: Iterable[torch.Tensor | None]) -> list[torch.Tensor]:
    """Distinct tensors by (address, size): two views of the same bytes count once, disjoint views of one flat
    buffer count each (their sum is the buffer without its padding)."""
    seen, out = set(), []
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer that really steps: DeepSpeed's ZeRO optimizers wrap one as `.optimizer`."""
    seen = 0
    while optimizer is not None and seen < 4:
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer) and not isinstance(inner, torch.optim.Optimizer):
            return optimizer
        optimizer, seen = inner, seen + 1
    return None


class MemoryProbe:
    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 steps: int = 3):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.module, self.optimizer, self.device, self.steps = module, optimizer, torch.device(device), steps
        self.snapshot = MemorySnapshot()
        self._params = [p for p in module.parameters()]
        self._module_param_ids = {id(p) for p in self._params}
        self._handles: list[Any] = []
        self._active = True
        self._scanned_in_backward, self._live_in_backward = False, 0
        for p in self._params:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
        self._handles.append(optimizer.register_step_post_hook(self._on_step))

    @classmethod
    def attach(cls, engine: Any, device: torch.device, steps: int = 3) -> MemoryProbe | None:
        """A probe on a vit-dt engine (DeepSpeed or DDP); None when its optimizer is not a torch optimizer."""
        inner = inner_optimizer(getattr(engine, "optimizer", None))
        module = getattr(engine, "module", None)
        if inner is None or module is None:
            log.warning("memory probe: no torch optimizer found behind %s; memory_model_gb not recorded",
                        type(getattr(engine, "optimizer", None)).__name__)
            return None
        return cls(module, inner, device, steps)

    # ------------------------------------------------------------ measuring

    def _optimizer_params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _gradients_now(self) -> int:
        grads = [p.grad for p in self._params] + [p.grad for p in self._optimizer_params()
                                                   if id(p) not in self._module_param_ids]
        return sum(_nbytes(g) for g in _unique(grads))

    def _params_held(self) -> list[torch.Tensor]:
        held = []
        for p in self._params:
            held.append(p.data)
            partition = getattr(p, "ds_tensor", None)       # ZeRO-3: this rank's shard of the parameter
            if partition is not None:
                held.append(partition)
        return _unique(held)

    def _offloaded(self, tensors: Iterable[torch.Tensor]) -> int:
        if self.device.type == "cpu":
            return 0
        return sum(_nbytes(t) for t in tensors if t.device.type == "cpu")

    def _on_grad(self, _param: torch.Tensor) -> None:
        if not self._active:
            return
        try:
            self.snapshot.gradients = max(self.snapshot.gradients, self._gradients_now())
            if self.snapshot.steps == self.steps - 1 and not self._scanned_in_backward:
                self._scanned_in_backward = True           # once, while the reduction buckets are allocated
                self._live_in_backward = live_tensor_bytes()
        except Exception:  # a probe must never break training
            log.exception("memory probe failed in a gradient hook; switching it off")
            self.close()

    def _on_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        if not self._active:
            return
        try:
            s = self.snapshot
            masters = _unique(p for p in self._optimizer_params() if id(p) not in self._module_param_ids)
            states = _unique(v for state in self.optimizer.state.values() for v in state.values()
                             if torch.is_tensor(v))
            params = self._params_held()
            s.params = sum(_nbytes(t) for t in params)
            s.master_params = sum(_nbytes(t) for t in masters)
            s.optimizer_states = sum(_nbytes(t) for t in states)
            s.gradients = max(s.gradients, self._gradients_now())
            s.offloaded = self._offloaded(params + masters + states + _unique(p.grad for p in masters))
            s.steps += 1
            if s.steps >= self.steps:
                s.live_tensors = max(live_tensor_bytes(), self._live_in_backward)
                self.close()
        except Exception:
            log.exception("memory probe failed after an optimizer step; switching it off")
            self.close()

    def close(self) -> None:
        self._active = False
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self) -> dict | None:
        """This rank's numbers in GiB, or None when no optimizer step was probed."""
        return self.snapshot.to_gb() if self.snapshot.steps else None


def live_tensor_bytes() -> int:
    """Bytes of every distinct storage behind a tensor the garbage collector can reach (CPU and GPU alike)."""
    storages: dict[tuple, int] = {}
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance falls back to obj.__class__, which on lazy proxies and deprecated
        # module attributes runs their code (warnings, imports) just by looking.
        if not issubclass(type(obj), torch.Tensor) or issubclass(type(obj), FakeTensor):
            continue   # FakeTensors (torch.compile's tracing leftovers) hold no memory; reading their pointer warns
        try:
            if obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
            storages[(obj.device, storage.data_ptr())] = storage.nbytes()
        except Exception:  # tensor subclasses and half-built objects: skip
            continue
    return sum(storages.values())


def combine(per_rank: list[dict | None]) -> dict | None:
    """The record's `memory_model_gb`: per category the largest rank (the one that runs out first), and each
    rank's model-state total."""
    present = [r for r in per_rank if r]
    if not present:
        return None
    keys = [k for k in present[0] if k != "steps"]
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in present if r.get(key) is not None]
        out[key] = max(values) if values else None
    out["steps_probed"] = min(r["steps"] for r in present)
    out["per_rank_model_states"] = [r["model_states"] if r else None for r in per_rank]
    return out
