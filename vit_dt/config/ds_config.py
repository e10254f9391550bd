"""The DeepSpeed JSON, derived from the composed config and never edited by hand.

The batch keys come from `vit_dt.config.batch` so `train_batch_size = micro x grad_accum x world size` always holds,
and user overrides (`deepspeed.overrides`) are checked against DeepSpeed's real key names: a misspelt key such as
the paper's `micro_batch_per_gpu` is an error, not a silently ignored setting.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Mapping

from vit_dt.config.batch import Batch
from vit_dt.config.choices import BF16_MODES, PRECISIONS
from vit_dt.config.schema import RootSchema

# Top-level keys DeepSpeed 0.19 reads (docs "DeepSpeed Configuration JSON"); anything else it would silently ignore.
KNOWN_TOP_LEVEL_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "optimizer", "scheduler", "fp16", "bf16", "torch_autocast", "amp", "gradient_clipping",
    "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "zero_optimization",
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown",
    "dump_state", "memory_breakdown", "flops_profiler", "activation_checkpointing", "comms_logger",
    "communication_data_type", "seq_parallel_communication_data_type", "data_types", "tensorboard", "wandb",
    "csv_monitor", "comet", "checkpoint", "data_efficiency", "curriculum_learning", "elasticity", "aio",
    "compression_training", "autotuning", "dataloader_drop_last", "disable_allgather", "graph_harvesting",
    "compile", "timers", "use_data_before_expert_parallelism", "gradient_allreduce_op",
})
# Owned by vit-dt: overriding them would break the batch identity or the measurements.
DERIVED_KEYS = {
    "train_batch_size": "trainer.micro_batch / trainer.global_batch",
    "train_micro_batch_size_per_gpu": "trainer.micro_batch",
    "gradient_accumulation_steps": "trainer.grad_accum",
    "bf16": "precision=bf16",
    "fp16": "precision=fp16",
    "torch_autocast": "precision=bf16 deepspeed.bf16_mode=autocast",
}
# native: DeepSpeed's bf16 (bf16 weights, fp32 master copy in the optimizer); autocast: DeepSpeed's torch_autocast
# (fp32 weights, bf16 matmuls inside forward). h100-baseline.md measured autocast faster with engine.compile().
# auto: master at ZeRO-0 and with engine=ddp, autocast at ZeRO 1-3 (docs/performance.md has the measurements).


def resolve_bf16_mode(mode: str, zero_stage: int, engine: str = "deepspeed", grad_accum: int = 1) -> str:
    """The bf16 mode a run uses: `auto` resolved, impossible combinations refused with the valid choices.

    `master` accumulates micro-batch gradients in the bf16 module's own .grad, so `auto` takes it only without
    gradient accumulation; with it, autocast's fp32 gradients do the summing."""
    if mode not in BF16_MODES:
        raise DeepSpeedConfigError(f"deepspeed.bf16_mode={mode!r} is invalid; valid: {', '.join(BF16_MODES)}")
    if mode == "master" and grad_accum > 1:
        raise DeepSpeedConfigError(f"deepspeed.bf16_mode=master would sum trainer.grad_accum={grad_accum} micro-batch "
                                   f"gradients in bf16; valid with grad_accum > 1: auto, autocast"
                                   + ("" if engine == "ddp" else ", native"))
    if engine == "ddp":
        if mode == "native":
            raise DeepSpeedConfigError("deepspeed.bf16_mode=native is DeepSpeed's own bf16 optimizer; with engine=ddp "
                                       "valid: auto, master, autocast")
        return "master" if mode == "auto" and grad_accum == 1 else "autocast" if mode == "auto" else mode
    if mode == "auto":
        return "master" if zero_stage == 0 and grad_accum == 1 else "autocast"
    if mode == "master" and zero_stage > 0:
        raise DeepSpeedConfigError(f"deepspeed.bf16_mode=master keeps whole fp32 master weights on every rank, but "
                                   f"deepspeed.zero_stage={zero_stage} partitions them itself; valid with ZeRO 1-3: "
                                   f"auto, autocast, native")
    return mode


def bf16_mode_for(cfg: RootSchema) -> str | None:
    """The resolved bf16 mode of a typed config (vit_dt.config.typed); None unless precision=bf16."""
    if cfg.precision != "bf16":
        return None
    return resolve_bf16_mode(cfg.deepspeed.bf16_mode, cfg.deepspeed.zero_stage, cfg.engine, cfg.trainer.grad_accum)


def vit_dt_clips(zero_stage: int, deepspeed_half_precision: bool) -> bool:
    """At ZeRO-0 vit-dt's optimizer clips with one foreach norm instead of DeepSpeed's per-parameter loop (4.8 ms
    and ~460 launches per ViT-B/16 step on an H100). Not under DeepSpeed's own fp16 or bf16 ("native") optimizer:
    it wraps vit-dt's and steps fp32 copies of its own, which vit-dt's clipping would never touch."""
    return zero_stage == 0 and not deepspeed_half_precision


ZERO_STAGES = (0, 1, 2, 3)
QUIET_STEPS_PER_PRINT = 10**9  # DeepSpeed prints from rank 0 only; vit-dt records timings itself.


class DeepSpeedConfigError(ValueError):
    pass


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, sorted(valid), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def validate_overrides(overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key in DERIVED_KEYS:
            raise DeepSpeedConfigError(
                f"deepspeed.overrides.{key} is derived by vit-dt; set {DERIVED_KEYS[key]} instead")
        if key not in KNOWN_TOP_LEVEL_KEYS:
            raise DeepSpeedConfigError(
                f"deepspeed.overrides.{key} is not a DeepSpeed config key{_suggest(key, KNOWN_TOP_LEVEL_KEYS)}; "
                f"valid keys: {', '.join(sorted(KNOWN_TOP_LEVEL_KEYS - set(DERIVED_KEYS)))}")
    if "zero_optimization" in overrides:
        _validate_zero_section(overrides["zero_optimization"])


def _validate_zero_section(section: Mapping[str, Any]) -> None:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # pydantic model with extra="forbid"

    valid = set(DeepSpeedZeroConfig.model_fields)
    valid |= {f.alias for f in DeepSpeedZeroConfig.model_fields.values() if f.alias}
    for key in section:
        if key not in valid:
            raise DeepSpeedConfigError(
                f"deepspeed.overrides.zero_optimization.{key} is not a ZeRO config key{_suggest(key, valid)}; "
                f"valid keys: {', '.join(sorted(valid))}")


def _deep_merge(base: dict, extra: Mapping[str, Any]) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def derive_deepspeed_config(*, batch: Batch, precision: str, zero_stage: int, grad_clip: float | None,
                            wall_clock_breakdown: bool, overrides: Mapping[str, Any] | None = None,
                            bf16_mode: str = "auto") -> dict:
    if precision not in PRECISIONS:
        raise DeepSpeedConfigError(f"precision={precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    if zero_stage not in ZERO_STAGES:
        raise DeepSpeedConfigError(
            f"deepspeed.zero_stage={zero_stage!r} is invalid; valid: {', '.join(map(str, ZERO_STAGES))}")
    if precision == "bf16":
        bf16_mode = resolve_bf16_mode(bf16_mode, zero_stage, grad_accum=batch.grad_accum)
    elif bf16_mode not in BF16_MODES:
        raise DeepSpeedConfigError(f"deepspeed.bf16_mode={bf16_mode!r} is invalid; valid: {', '.join(BF16_MODES)}")
    autocast = precision == "bf16" and bf16_mode == "autocast"
    master = precision == "bf16" and bf16_mode == "master"
    overrides = dict(overrides or {})
    validate_overrides(overrides)

    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage in (1, 2):
        # Overlap the gradient reduction with backward and keep gradients in one buffer (fewer copies). A bucket
        # smaller than the model (DeepSpeed's default 5e8 elements holds all of ViT-B/16) lets ZeRO-2 really shard
        # gradients and avoids two model-sized fp32 buckets per rank (docs/studies/zero.md).
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=int(2e7))
    elif zero_stage == 3:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    config: dict[str, Any] = {
        "train_batch_size": batch.global_,
        "train_micro_batch_size_per_gpu": batch.micro,
        "gradient_accumulation_steps": batch.grad_accum,
        "zero_optimization": zero,
        "wall_clock_breakdown": bool(wall_clock_breakdown),
        "steps_per_print": QUIET_STEPS_PER_PRINT,
        "bf16": {"enabled": precision == "bf16" and bf16_mode == "native"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # vit-dt passes torch's AdamW (no FusedAdam JIT build)
        # DeepSpeed's throughput timer synchronises the device at the start and end of every step by default:
        # the CPU can then never run ahead of the GPU. vit-dt measures throughput itself.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    }
    if autocast:
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if master:
        # The module is bf16 and DeepSpeed runs its fp32 path: reduce the gradients in bf16, as its bf16 mode does.
        config["communication_data_type"] = "bf16"
    # Always explicit: DeepSpeed's own default is 1.0, which would clip a second time, in its per-parameter loop,
    # behind vit-dt's foreach clipping (measured 4.8 ms and ~460 extra kernel launches per ViT-B/16 step on an H100).
    deepspeed_half = config["bf16"]["enabled"] or config["fp16"]["enabled"]
    config["gradient_clipping"] = 0.0 if vit_dt_clips(zero_stage, deepspeed_half) else float(grad_clip or 0.0)
    _deep_merge(config, overrides)
    check_batch_identity(config)
    return config


def check_batch_identity(config: Mapping[str, Any]) -> None:
    total = config["train_batch_size"]
    parts = config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"]
    if parts == 0 or total % parts:
        raise DeepSpeedConfigError(
            f"train_batch_size={total} is not micro-batch x grad_accum x world size ({parts} x N)")
