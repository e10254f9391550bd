"""Everything that can be checked before a run starts or a job is queued, with messages that name the bad value
and what would be valid."""
from __future__ import annotations

from typing import Any, Mapping

from vit_dt.config.batch import BatchError, resolve_batch
from vit_dt.config.choices import (
    BALANCE_MODES,
    BF16_MODES,
    COMPILE_MODES,
    DATASETS,
    ENGINES,
    LR_SCHEDULES,
    MODEL_NAMES,
    PRECISIONS,
    SCALING_MODES,
    STRONG_FIXED,
    WANDB_MODES,
    ZERO_STAGES,
)

# GPUs before Ampere have no bf16 arithmetic: DeepSpeed would emulate it or fail at the first step.
NO_BF16_GPUS = ("K80", "P100", "T4", "V100")


class ConfigError(ValueError):
    pass


# Characters no path may hold that reaches a job script: `#SBATCH` lines cannot be quoted, and a newline there
# ends the directive, so the rest of the path would run as a shell command.
UNSAFE_CHARACTERS = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte"}
PATH_KEYS = (("out_dir",), ("dataset", "root"), ("sweep_dir",))


def _one_of(key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is invalid; valid: {', '.join(map(str, valid))}")


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r} is invalid: it must be an integer >= 1")


def _number(key: str, value: Any, minimum: float, *, integer: bool = False, optional: bool = False,
            above: bool = False) -> None:
    """`value` is a number (an integer when `integer`) >= `minimum` (> when `above`), or None when `optional`."""
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum or (above and value == minimum):
        bound = f"{'>' if above else '>='} {minimum:g}"
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{key}={value!r} is invalid: it must be {what} {bound}" + (" or null" if optional else ""))


def validate(cfg: Mapping[str, Any], world_size: int) -> None:
    """Raise ConfigError for the first impossible setting of a run with `world_size` ranks.

    `cfg` is the resolved plain dict of a composed config. Its own checks read that dict first, so a value of the
    wrong type put there (not through composition, which types every value) gets the message naming the valid
    ones; the checks that the run's components make themselves then run on the typed config they will receive."""
    from vit_dt.config.ds_config import DeepSpeedConfigError, bf16_mode_for, validate_overrides
    from vit_dt.config.typed import ConfigTypeError, typed_config
    from vit_dt.models.catalog import geometry_errors
    from vit_dt.optim.optimizers import OptimizerConfigError, OptimizerSpec, unknown_name_error, zero_stage_error

    _check_paths(cfg)
    _positive_int("repeats", cfg.get("repeats", 1))      # absent from configs saved before the key existed
    _one_of("precision", cfg["precision"], PRECISIONS)
    _one_of("engine", cfg["engine"], ENGINES)
    _one_of("dataset.name", cfg["dataset"]["name"], DATASETS)
    _one_of("model.name", cfg["model"]["name"], MODEL_NAMES)
    _one_of("wandb.mode", cfg["wandb"]["mode"], WANDB_MODES)
    scaling = cfg["scaling"]
    _one_of("scaling.mode", scaling["mode"], SCALING_MODES)
    if scaling["mode"] == "strong":
        _one_of("scaling.fixed", scaling["fixed"], STRONG_FIXED)
    if scaling["mode"] == "weak":
        fraction = scaling["fraction_per_gpu"]
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"scaling.fraction_per_gpu={fraction!r} is invalid: it must be in (0, 1]")
    trainer = cfg["trainer"]
    for key in ("epochs", "nproc", "grad_accum", "micro_batch", "timer_sample_every"):
        _positive_int(f"trainer.{key}", trainer[key])
    _check_trainer_settings(trainer)
    _check_dataset_settings(cfg["dataset"])
    _check_balance(cfg)
    _check_debug(cfg)
    for key in ("image_size", "patch_size"):   # geometry_errors' own first check, before typing refuses a str
        value = cfg["model"][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.{key}={value!r} is invalid: it must be an integer >= 1")
    _one_of("model.activation_checkpointing", cfg["model"]["activation_checkpointing"], (False, True))
    _one_of("model.fast_attention", cfg["model"]["fast_attention"], (False, True))
    _check_precision_on_partition(cfg)
    _one_of("deepspeed.zero_stage", cfg["deepspeed"]["zero_stage"], ZERO_STAGES)
    _one_of("deepspeed.bf16_mode", cfg["deepspeed"]["bf16_mode"], BF16_MODES)
    _one_of("trainer.compile", trainer["compile"], (False, True))
    _one_of("trainer.compile_mode", trainer["compile_mode"], COMPILE_MODES)

    if unknown_name_error(cfg["optimizer"]["name"]):    # before typing: the name picks the optimizer's schema
        raise ConfigError(unknown_name_error(cfg["optimizer"]["name"]))
    try:
        config = typed_config(cfg)
    except ConfigTypeError as exc:
        raise ConfigError(str(exc)) from None
    model_errors = geometry_errors(config.model)
    if model_errors:
        raise ConfigError(model_errors[0])
    bf16_mode = None
    if config.precision == "bf16":
        try:
            bf16_mode = bf16_mode_for(config)
        except DeepSpeedConfigError as exc:
            raise ConfigError(str(exc)) from None
    # only AdamW declares master_update; the other optimizers always step separately
    if getattr(config.optimizer, "master_update", "separate") == "fused" and bf16_mode != "master":
        # The fused update steps fp32 masters of a bf16 module; without them it would silently not be used.
        raise ConfigError(
            f"optimizer.master_update=fused needs bf16 master weights, but this run has precision={config.precision}"
            + (f" with deepspeed.bf16_mode resolving to {bf16_mode}" if bf16_mode else "")
            + "; valid: precision=bf16 with deepspeed.bf16_mode=master (or auto at ZeRO-0, grad_accum 1), or "
              "optimizer.master_update=separate")
    zero_error = zero_stage_error(config.optimizer.name, config.deepspeed.zero_stage)
    if config.engine == "deepspeed" and zero_error:
        raise ConfigError(zero_error)
    try:
        batch = resolve_batch(config.trainer, config.scaling, world_size)
        validate_overrides(config.deepspeed.overrides)
        OptimizerSpec.from_config(config.optimizer, batch.global_)
    except (BatchError, DeepSpeedConfigError, OptimizerConfigError) as exc:
        raise ConfigError(str(exc)) from None


def _check_trainer_settings(trainer: Mapping[str, Any]) -> None:
    """The trainer keys a run reads only once it has started: refused here instead of on a compute node."""
    _one_of("trainer.lr_schedule", trainer["lr_schedule"], LR_SCHEDULES)
    _number("trainer.warmup_epochs", trainer["warmup_epochs"], 0)
    _number("trainer.grad_clip", trainer["grad_clip"], 0, optional=True)
    _number("trainer.seed", trainer["seed"], 0, integer=True)
    _number("trainer.timer_warmup_steps", trainer["timer_warmup_steps"], 0, integer=True)
    _number("trainer.log_every", trainer["log_every"], 0, integer=True)
    _number("trainer.dist_timeout_s", trainer["dist_timeout_s"], 0, above=True)
    _number("trainer.max_steps_per_epoch", trainer["max_steps_per_epoch"], 1, integer=True, optional=True)
    _number("trainer.num_workers", trainer["num_workers"], 0, integer=True, optional=True)
    _one_of("trainer.checkpoint", trainer["checkpoint"], (False, True))


def _check_dataset_settings(dataset: Mapping[str, Any]) -> None:
    if "hflip" in dataset:     # not a key of synthetic data
        _one_of("dataset.hflip", dataset["hflip"], (False, True))
    fraction = dataset.get("val_fraction")     # a key of digits only
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction < 1):
        raise ConfigError(f"dataset.val_fraction={fraction!r} is invalid: it must lie strictly between 0 and 1")


def _check_precision_on_partition(cfg: Mapping[str, Any]) -> None:
    cluster = cfg["cluster"]
    partition = cfg["resources"]["partition"] or cluster["default_partition"]
    # an unknown partition is resolve_shape's error to report; gpu_model is optional in a profile
    gpu_model = str((cluster["partitions"].get(partition) or {}).get("gpu_model") or "")
    if cfg["precision"] == "bf16" and gpu_model.upper().startswith(NO_BF16_GPUS):
        raise ConfigError(f"precision=bf16 is invalid on partition {partition!r} ({gpu_model}: no bf16 support); "
                          f"valid there: fp32, fp16")


def _check_balance(cfg: Mapping[str, Any]) -> None:
    """trainer.balance (vit_dt/run/balance.py)."""
    trainer = cfg["trainer"]
    mode = trainer["balance"]
    _one_of("trainer.balance", mode, BALANCE_MODES)
    if mode == "speed" and cfg["engine"] != "ddp":
        raise ConfigError(f"trainer.balance=speed is invalid with engine={cfg['engine']}: DeepSpeed needs the same "
                          f"train_micro_batch_size_per_gpu on every rank, so per-rank micro-batches need "
                          f"engine=ddp; valid: engine=ddp with trainer.balance=speed, or trainer.balance=off")


def _check_debug(cfg: Mapping[str, Any]) -> None:
    """The test-only `debug` node (conf/debug/), absent unless asked for: debug.delay_per_sample_s, the per-image
    slowdown that trainer.balance=speed is tested against."""
    # `debug` is optional (RootSchema gives it a default, None) and null unless a test asks for it
    delays = (cfg.get("debug") or {}).get("delay_per_sample_s") or {}
    if not isinstance(delays, Mapping) or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in delays.values()):
        raise ConfigError(f"debug.delay_per_sample_s={delays!r} is invalid: it must map ranks to "
                          f"seconds >= 0 per sample, e.g. {{1: 0.005}}")


def unsafe_path_problem(key: str, value: object) -> str | None:
    """Why `key=value` cannot go into a job script, or None when it can."""
    text = str(value)
    found = [name for char, name in UNSAFE_CHARACTERS.items() if char in text]
    if not found:
        return None
    return (f"{key}={text!r} holds {' and '.join(found)}: a path that reaches an sbatch script cannot; "
            f"choose a path without control characters")


def _check_paths(cfg: Mapping[str, Any]) -> None:
    for keys in PATH_KEYS:
        node: Any = cfg
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None and (problem := unsafe_path_problem(".".join(keys), node)):
            raise ConfigError(problem)
