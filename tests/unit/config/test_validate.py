"""The config tree composes, impossible settings fail early with clear messages, and the DeepSpeed JSON is derived."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import typed
from vit_dt.config import ConfigError, compose, to_container, validate
from vit_dt.config.batch import resolve_batch
from vit_dt.config.ds_config import derive_deepspeed_config
from vit_dt.paths import conf_dir

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_composes_and_validates(group, option):
    cfg = to_container(compose([f"{group}={option}"]))
    assert cfg[group] is not None
    validate(cfg, world_size=1)


def test_groups_cover_every_concern():
    assert {"cluster", "resources", "dataset", "model", "scaling", "trainer", "deepspeed", "wandb"} <= set(GROUPS)


def _check(overrides, world_size=1):
    from vit_dt.commands.train import compose_checked

    cfg = compose_checked(overrides)
    validate(cfg, world_size)
    return cfg


def test_unknown_dataset_lists_valid_options():
    with pytest.raises(ConfigError) as err:
        _check(["dataset=imagenet1k"])
    assert "imagenet1k" in str(err.value) and "cifar10" in str(err.value) and "digits" in str(err.value)


def test_unknown_dataset_name_value_lists_valid_names():
    with pytest.raises(ConfigError, match=r"dataset.name='mnist' is invalid; valid: digits, synthetic, cifar10"):
        _check(["dataset.name=mnist"])


def test_global_batch_not_divisible_names_values():
    with pytest.raises(ConfigError) as err:
        _check(["trainer.global_batch=100", "trainer.nproc=3"])
    message = str(err.value)
    assert "trainer.global_batch=100" in message and "3 x 1 = 3" in message and "[1, 2, 4, 5," in message


@pytest.mark.parametrize("value", ["0", "-64"])   # not an integer ("abc", "1.5"): refused at composition, see
def test_global_batch_must_be_a_positive_integer_or_null(value):   # test_config_schema.py
    with pytest.raises(ConfigError, match=r"trainer.global_batch=.* is invalid: it must be an integer >= 1 or null"):
        _check([f"trainer.global_batch={value}"])


def test_paper_typo_in_deepspeed_overrides_is_rejected():
    with pytest.raises(ConfigError) as err:
        _check(["+deepspeed.overrides.micro_batch_per_gpu=64"])
    assert "micro_batch_per_gpu" in str(err.value) and "train_micro_batch_size_per_gpu" in str(err.value)


def test_derived_key_override_points_to_trainer_setting():
    with pytest.raises(ConfigError, match="set trainer.micro_batch instead"):
        _check(["+deepspeed.overrides.train_micro_batch_size_per_gpu=8"])


def test_unknown_zero_key_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match="overlap_com .*overlap_comm"):
        _check(["+deepspeed.overrides.zero_optimization.overlap_com=true"])


def test_known_deepspeed_override_is_merged():
    batch = resolve_batch(typed("trainer", **{"micro_batch": 8, "grad_accum": 1}), typed("scaling", **{"mode": "none"}), 2)
    ds = derive_deepspeed_config(batch=batch, precision="fp32", zero_stage=2, grad_clip=1.0,
                                 wall_clock_breakdown=True,
                                 overrides={"zero_optimization": {"reduce_bucket_size": 1000}, "steps_per_print": 5})
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                       "reduce_bucket_size": 1000}
    assert ds["steps_per_print"] == 5


@pytest.mark.parametrize("key,value,valid", [
    ("precision", "fp8", "fp32, bf16, fp16"), ("engine", "fsdp", "deepspeed, ddp"),
    ("scaling.mode", "medium", None), ("deepspeed.zero_stage", 4, "0, 1, 2, 3"),
    ("wandb.mode", "cloud", "offline, online, disabled"), ("model.name", "vit_h_14", "vit_tiny, vit_b_16"),
    ("trainer.compile_mode", "cudagraphs", "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
    # read only once a run has started: refused here instead of on a compute node
    ("trainer.lr_schedule", "linear", "constant, cosine"), ("dataset.hflip", "maybe", "False, True"),
    ("trainer.checkpoint", "yes", "False, True"),
    ("trainer.warmup_epochs", -1, "a number >= 0"), ("trainer.grad_clip", "high", "a number >= 0 or null"),
    ("trainer.seed", 1.5, "an integer >= 0"), ("trainer.log_every", -10, "an integer >= 0"),
    ("trainer.dist_timeout_s", 0, "a number > 0"), ("trainer.max_steps_per_epoch", 0, "an integer >= 1 or null"),
    ("trainer.num_workers", -1, "an integer >= 0 or null"), ("dataset.val_fraction", 1.0, "strictly between 0 and 1"),
])
def test_bad_values_name_the_valid_ones(key, value, valid):
    cfg = to_container(compose([]))
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=1)
    assert f"{key}={value!r} is invalid" in str(err.value)
    if valid:
        assert valid in str(err.value)


def test_lamb_under_zero_is_refused_before_queueing():
    with pytest.raises(ConfigError, match=r"optimizer=lamb with deepspeed.zero_stage=2 .*valid: deepspeed.zero_stage=0"):
        _check(["optimizer=lamb", "deepspeed.zero_stage=2"])
    _check(["optimizer=lamb", "deepspeed.zero_stage=2", "engine=ddp"])      # DDP never partitions the parameters
    _check(["optimizer=lamb"])


def _derive(overrides, world_size):
    cfg = to_container(compose(overrides))
    validate(cfg, world_size)
    batch = resolve_batch(typed("trainer", **cfg["trainer"]), typed("scaling", **cfg["scaling"]), world_size)
    return derive_deepspeed_config(batch=batch, precision=cfg["precision"], zero_stage=cfg["deepspeed"]["zero_stage"],
                                   grad_clip=cfg["trainer"]["grad_clip"], wall_clock_breakdown=True,
                                   overrides=cfg["deepspeed"]["overrides"], bf16_mode=cfg["deepspeed"]["bf16_mode"])


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_strong_scaling_paper_variant_keeps_micro_batch(world_size):
    ds = _derive(["scaling=strong", "scaling.fixed=micro", "trainer.micro_batch=64"], world_size)
    assert ds["train_micro_batch_size_per_gpu"] == 64
    assert ds["train_batch_size"] == 64 * world_size


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_strong_scaling_fixed_global_batch_splits_it(world_size):
    ds = _derive(["scaling=strong", "scaling.fixed=global", "trainer.global_batch=256"], world_size)
    assert ds["train_batch_size"] == 256
    assert ds["train_micro_batch_size_per_gpu"] == 256 // world_size


def test_strong_fixed_global_without_global_batch_fails():
    with pytest.raises(ConfigError, match="scaling.fixed=global needs trainer.global_batch"):
        _check(["scaling=strong", "scaling.fixed=global"])


@pytest.mark.parametrize("world_size", [1, 4])
def test_weak_scaling_keeps_per_rank_batch(world_size):
    ds = _derive(["scaling=weak", "trainer.micro_batch=32"], world_size)
    assert ds["train_micro_batch_size_per_gpu"] == 32 and ds["train_batch_size"] == 32 * world_size


def test_gradient_accumulation_enters_the_identity():
    ds = _derive(["trainer.micro_batch=16", "trainer.grad_accum=4"], 2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) \
        == (128, 16, 4)
    ds = _derive(["trainer.global_batch=128", "trainer.grad_accum=4", "scaling=strong", "scaling.fixed=global"], 4)
    assert ds["train_micro_batch_size_per_gpu"] == 8


def test_precision_sets_deepspeed_modes():
    native = _derive(["precision=bf16", "deepspeed.bf16_mode=native"], 1)
    assert native["bf16"]["enabled"] and not native["fp16"]["enabled"]
    master = _derive(["precision=bf16"], 1)       # default auto: vit-dt's master weights at ZeRO-0
    assert not master["bf16"]["enabled"] and "torch_autocast" not in master
    assert master["communication_data_type"] == "bf16"
    zero2 = _derive(["precision=bf16", "deepspeed.zero_stage=2"], 1)   # auto: autocast where ZeRO owns the masters
    assert zero2["torch_autocast"]["enabled"] and not zero2["bf16"]["enabled"]
    accumulating = _derive(["precision=bf16", "trainer.grad_accum=4"], 1)   # auto: fp32 gradients to sum into
    assert accumulating["torch_autocast"]["enabled"]
    with pytest.raises(ConfigError, match="deepspeed.bf16_mode=master would sum trainer.grad_accum=4"):
        _derive(["precision=bf16", "trainer.grad_accum=4", "deepspeed.bf16_mode=master"], 1)
    fp16 = _derive(["precision=fp16"], 1)
    assert fp16["fp16"]["enabled"] and not fp16["bf16"]["enabled"]
    fp32 = _derive([], 1)
    assert not fp32["bf16"]["enabled"] and not fp32["fp16"]["enabled"]


def test_train_cli_rejects_bad_input_before_running(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "train", "precision=fp8", f"out_dir={tmp_path}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "precision='fp8' is invalid; valid: fp32, bf16, fp16" in proc.stderr
    assert not (Path(tmp_path) / "runs").exists()


def test_train_refuses_unknown_options_naming_the_valid_ones(tmp_path, capsys):
    from vit_dt.commands import train

    assert train.main(["--epochs", "1", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "vit-dt train: unknown option(s) ['--epochs']; valid: -h, --help" in err and "trainer.epochs=1" in err
    assert "Exception" not in err and not (Path(tmp_path) / "runs").exists()


def test_unknown_options_leave_hydra_overrides_alone():
    from vit_dt.commands.options import unknown_options

    args = ["trainer.seed=-1", "+x=1", "++y=2", "~z", "--dry-run", "--epochs=3", "-n"]
    assert unknown_options(args, ("--dry-run", "-h", "--help")) == ["--epochs=3", "-n"]


def test_bf16_on_a_t4_partition_is_refused_before_queueing():
    with pytest.raises(ConfigError, match=r"precision=bf16 is invalid on partition 't4v2' \(T4: no bf16 support\)"):
        _check(["cluster=vaughan", "resources.partition=t4v2", "precision=bf16"])
    _check(["cluster=vaughan", "resources.partition=a40", "precision=bf16"])


def test_train_refuses_hydra_run_settings_it_would_ignore(capsys):
    from vit_dt.commands import train

    assert train.main(["hydra.run.dir=/tmp/x/myrun", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "hydra.run.dir=/tmp/x/myrun has no effect" in err and "out_dir=DIR" in err
