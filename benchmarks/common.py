"""What both benchmarks share: the composed vit-dt config, the three step functions being raced, and the timer.

Each step function does one optimizer step on a fixed synthetic batch that already sits on the device, so the race
measures the training step and not the input pipeline (the trainer's data-wait share measures that).
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from vit_dt.config.typed import typed_config, typed_group

StepFn = Callable[[], torch.Tensor]


def bench_config(model: str, image_size: int, batch: int, precision: str, compile_model: bool,
                 extra: Sequence[str] = (), world_size: int = 1) -> dict[str, Any]:
    """The fully composed vit-dt config a user's run with these settings would get (so defaults are the real ones),
    validated as a run's is: a bad --set stops the benchmark before it builds anything (SystemExit naming it)."""
    from vit_dt.config.compose import compose, to_container
    from vit_dt.config.validate import ConfigError, validate

    overrides = ["dataset=synthetic", f"dataset.image_size={image_size}", f"model={model}",
                 f"model.image_size={image_size}", f"trainer.micro_batch={batch}", f"precision={precision}",
                 f"trainer.compile={str(compile_model).lower()}", "wandb.mode=disabled", *extra]
    cfg = to_container(compose(overrides))
    try:
        validate(cfg, world_size)
    except ConfigError as exc:
        raise SystemExit(f"invalid benchmark config: {exc}") from None
    return cfg


def synthetic_batch(cfg: dict, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size, batch = int(cfg["model"]["image_size"]), int(cfg["trainer"]["micro_batch"])
    images = torch.randn(batch, 3, size, size, generator=gen)
    labels = torch.randint(0, int(cfg["dataset"]["num_classes"]), (batch,), generator=gen)
    return images.to(device), labels.to(device)


def _fresh_model(cfg: dict, seed: int, stock: bool = False) -> torch.nn.Module:
    """vit-dt's model; `stock`: torchvision's as it comes (its generic attention forward), for the reference."""
    from vit_dt.models.vit import build_model

    torch.manual_seed(seed)
    model_cfg = dict(cfg["model"], fast_attention=False) if stock else cfg["model"]
    return build_model(typed_group("model", model_cfg), int(cfg["dataset"]["num_classes"]))


def _schedule() -> dict:
    # Constant lr after no warm-up: the schedule's cost is the same whatever its shape.
    return {"warmup_steps": 0, "total_steps": 10**6, "schedule": "constant"}


def bf16_mode(cfg: dict, engine: str, requested: str | None = None) -> str | None:
    """The bf16 mode a real run with this config (and `engine`) would resolve; `requested` overrides the config's."""
    from vit_dt.config.ds_config import bf16_mode_for

    deepspeed = dict(cfg["deepspeed"], **({"bf16_mode": requested} if requested else {}))
    return bf16_mode_for(typed_config(dict(cfg, engine=engine, deepspeed=deepspeed)))


@dataclass
class Path:
    """One contender: a step function plus what it holds (released before the next path is built)."""
    name: str
    step: StepFn
    settings: dict[str, Any]
    holds: list[Any] = field(default_factory=list)
    compiled: bool = False
    resident_before: int = 0     # device bytes allocated before this path was built (the other contenders')
    batch: int = 0               # images per step (a --variant may change trainer.micro_batch)
    flops_per_image: float = 0.0 # training FLOPs per image of this path's model


def reference_path(cfg: dict, device: torch.device, seed: int = 0, ddp: bool = False) -> Path:
    """The plain PyTorch loop a user would write: torchvision's model as it comes, autocast (bf16), torch.compile,
    fused AdamW, same grad clipping.

    With `ddp`, the model is wrapped in torch's DistributedDataParallel (the plain torchrun DDP loop).
    """
    from vit_dt.optim.optimizers import OptimizerSpec, build_optimizer

    images, labels = synthetic_batch(cfg, device, seed)
    model = _fresh_model(cfg, seed, stock=True).to(device)
    optimizer = build_optimizer(model.parameters(), OptimizerSpec.from_config(typed_group("optimizer", cfg["optimizer"]), images.shape[0]),
                                device)
    net: torch.nn.Module = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    compiled = bool(cfg["trainer"]["compile"])
    if compiled:
        net = torch.compile(net)
    precision = cfg["precision"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    clip = float(cfg["trainer"].get("grad_clip") or 0.0)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    settings = {"loop": "plain PyTorch" + (" DDP" if ddp else ""), "precision": precision,
                "autocast": dtype is not None, "compile": compiled, "optimizer": type(optimizer).__name__,
                "fused": bool(optimizer.defaults.get("fused")), "grad_clip": clip}
    return Path("reference", step, settings, holds=[model, net, optimizer], compiled=compiled)


def ceiling_path(cfg: dict, device: torch.device, seed: int = 0) -> Path:
    """vit-dt's model and optimizer step in a bare loop, no engine and no trainer around them: the speed the engines
    could reach if their own work cost nothing (their gap to it is engine overhead, not model or step)."""
    from vit_dt.engines import compile_options, cuda_graphs_requested
    from vit_dt.optim.master_weights import build_master_weights_optimizer
    from vit_dt.optim.optimizers import OptimizerSpec

    images, labels = synthetic_batch(cfg, device, seed)
    model = _fresh_model(cfg, seed).to(device)
    precision = cfg["precision"]
    master = bf16_mode(cfg, "ddp") == "master"
    if master:
        model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)
    spec = OptimizerSpec.from_config(typed_group("optimizer", cfg["optimizer"]), images.shape[0])
    clip = float(cfg["trainer"].get("grad_clip") or 0.0)
    optimizer = build_master_weights_optimizer(model.parameters(), spec, device, clip=clip)
    compiled = bool(cfg["trainer"]["compile"])
    options = compile_options(cfg["trainer"])
    net = torch.compile(model, **options) if compiled else model
    cuda_graphs = cuda_graphs_requested(cfg["trainer"])
    dtype = None if master else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> torch.Tensor:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    settings = {"loop": "plain PyTorch, vit-dt's model and step", "precision": precision,
                "bf16_mode": "master" if master else None, "compile": compiled,
                "compile_mode": options.get("mode", "default"),
                "fast_attention": bool(cfg["model"].get("fast_attention", True)), "grad_clip": clip,
                "master_update": optimizer.update}
    return Path("ceiling", step, settings, holds=[model, net, optimizer],
                compiled=compiled or optimizer.update == "fused")


class _TrainerStep:
    """The per-step work of vit_dt.run.loop.Trainer around the engine: the sampled breakdown timers (events, read
    once a timed step has finished), the engine's micro-step and the on-device metric totals. No data loader: the
    batch is fixed."""

    def __init__(self, engine, cfg: dict, images: torch.Tensor, labels: torch.Tensor):
        from vit_dt.measure.step_timing import DeviceClock, SampledStepTimer, StepSampler
        from vit_dt.run.loop import accumulate_totals

        trainer = cfg["trainer"]
        self.engine, self.images, self.labels = engine, images, labels
        self.sampler = StepSampler(sample_every=int(trainer["timer_sample_every"]),
                                   warmup_steps=int(trainer["timer_warmup_steps"]))
        self.timer = SampledStepTimer(engine, self.sampler, DeviceClock(images.device))
        self.totals = torch.zeros(3, device=images.device, dtype=torch.float64)
        self.accumulate = accumulate_totals
        self.index = 0

    def __call__(self) -> torch.Tensor:
        self.timer.begin(self.index)
        loss, logits = self.engine.micro_step(self.images, self.labels, boundary=True)
        self.accumulate(self.totals, loss * self.labels.numel(), logits, self.labels)
        self.timer.end()
        self.index += 1
        return loss


def deepspeed_path(cfg: dict, device: torch.device, seed: int = 0, requested: str | None = None) -> Path:
    """vit-dt's DeepSpeedEngine in the trainer's per-step work; `requested`: a bf16 mode other than the config's."""
    import torch.distributed as dist

    from vit_dt.config.batch import resolve_batch
    from vit_dt.config.ds_config import derive_deepspeed_config
    from vit_dt.engines import DeepSpeedEngine
    from vit_dt.optim.optimizers import OptimizerSpec

    world = dist.get_world_size() if dist.is_initialized() else 1
    batch = resolve_batch(typed_group("trainer", cfg["trainer"]), typed_group("scaling", cfg["scaling"]), world)
    mode = bf16_mode(cfg, "deepspeed", requested)
    ds_config = derive_deepspeed_config(
        batch=batch, precision=cfg["precision"], zero_stage=int(cfg["deepspeed"]["zero_stage"]),
        grad_clip=cfg["trainer"].get("grad_clip"), wall_clock_breakdown=cfg["deepspeed"]["wall_clock_breakdown"],
        overrides=cfg["deepspeed"].get("overrides") or {}, bf16_mode=mode or "auto")
    spec = OptimizerSpec.from_config(typed_group("optimizer", cfg["optimizer"]), batch.global_)
    engine = DeepSpeedEngine(_fresh_model(cfg, seed), ds_config, typed_group("trainer", cfg["trainer"]), device, _schedule(), spec,
                             master_weights=mode == "master")
    images, labels = synthetic_batch(cfg, device, seed)
    settings = {"loop": "vit-dt DeepSpeedEngine", "precision": cfg["precision"], "bf16_mode": mode,
                "zero_stage": ds_config["zero_optimization"]["stage"],
                "compile": engine.compiled, "compile_mode": cfg["trainer"].get("compile_mode", "default"),
                "fast_attention": bool(cfg["model"].get("fast_attention", True)),
                "optimizer": type(getattr(engine.engine.basic_optimizer, "inner", engine.engine.basic_optimizer)).__name__,
                "wrapped_optimizer": type(engine.optimizer).__name__,
                "master_update": getattr(engine.engine.basic_optimizer, "update", None),
                "wall_clock_breakdown": bool(ds_config["wall_clock_breakdown"]),
                "timer_sample_every": int(cfg["trainer"]["timer_sample_every"]),
                "grad_clip": float(cfg["trainer"].get("grad_clip") or 0.0),
                "clipped_by": "deepspeed" if ds_config.get("gradient_clipping") else "vit-dt optimizer step"}
    name = f"deepspeed-{mode}" if cfg["precision"] == "bf16" else "deepspeed"
    return Path(name, _TrainerStep(engine, cfg, images, labels), settings, holds=[engine],
                compiled=engine.compiled or settings["master_update"] == "fused")


def ddp_path(cfg: dict, device: torch.device, seed: int = 0) -> Path:
    import torch.distributed as dist

    from vit_dt.config.batch import resolve_batch
    from vit_dt.engines import DDPEngine
    from vit_dt.optim.optimizers import OptimizerSpec

    world = dist.get_world_size() if dist.is_initialized() else 1
    batch = resolve_batch(typed_group("trainer", cfg["trainer"]), typed_group("scaling", cfg["scaling"]), world)
    spec = OptimizerSpec.from_config(typed_group("optimizer", cfg["optimizer"]), batch.global_)
    mode = bf16_mode(cfg, "ddp")
    engine = DDPEngine(_fresh_model(cfg, seed), typed_group("trainer", cfg["trainer"]), device, cfg["precision"], _schedule(),
                       batch.grad_accum, spec, master_weights=mode == "master")
    images, labels = synthetic_batch(cfg, device, seed)
    settings = {"loop": "vit-dt DDPEngine", "precision": cfg["precision"], "compile": engine.compiled,
                "compile_mode": cfg["trainer"].get("compile_mode", "default"),
                "bf16_mode": mode,
                "fast_attention": bool(cfg["model"].get("fast_attention", True)),
                "optimizer": type(getattr(engine.optimizer, "inner", engine.optimizer)).__name__,
                "master_update": getattr(engine.optimizer, "update", None),
                "timer_sample_every": int(cfg["trainer"]["timer_sample_every"]),
                "grad_clip": float(cfg["trainer"].get("grad_clip") or 0.0)}
    return Path("ddp", _TrainerStep(engine, cfg, images, labels), settings, holds=[engine],
                compiled=engine.compiled or settings["master_update"] == "fused")


def release(path: Path) -> None:
    """Free a path's model, optimizer and compiled graphs."""
    path.holds.clear()
    path.step = None  # type: ignore[assignment]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def time_steps(step: StepFn, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps, measured between two device syncs (no sync inside)."""
    barrier()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def first_steps(step: StepFn, warmup: int, device: torch.device) -> float:
    """Runs the warm-up steps; returns the first step's seconds (it includes torch.compile's compilation)."""
    first = time_steps(step, 1, device)
    for _ in range(max(0, warmup - 1)):
        step()
    sync(device)
    return first


def measured_matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """This GPU's bf16 matmul rate right now (the baseline's "physical limit" is MFU against this, not the spec)."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def versions() -> dict[str, str | None]:
    import platform

    try:
        import deepspeed

        ds = deepspeed.__version__
    except ImportError:
        ds = None
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "deepspeed": ds, "cuda": torch.version.cuda}


def init_single_rank_group(device: torch.device) -> None:
    """World size 1 on a free port: nccl on a GPU, gloo on a CPU (what DeepSpeed and DDP need)."""
    import torch.distributed as dist

    from vit_dt.run.distributed import free_port

    if dist.is_initialized():
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
