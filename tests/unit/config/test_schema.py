"""The config schemas (vit_dt/config/schema.py): every shipped option composes typed, and a misspelt key or a wrong
type is refused at composition, naming the key, by compose(), `vit-dt train` and `vit-dt sweep` alike."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import is_dataclass

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tests.helpers import REPO, run_cli
from vit_dt.config import compose, to_container
from vit_dt.config.compose import error_message
from vit_dt.paths import conf_dir

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((conf_dir() / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_typed_and_complete(group, option):
    cfg = compose([f"{group}={option}"])
    assert is_dataclass(OmegaConf.get_type(cfg)) and is_dataclass(OmegaConf.get_type(cfg[group]))
    # A type-only schema field (MISSING) is one the YAML always provides: none may be left unset.
    assert OmegaConf.missing_keys(cfg) == set()
    to_container(cfg)   # every interpolation resolves to its field's type


@pytest.mark.parametrize("profile", [o for g, o in OPTIONS if g == "cluster"])
def test_every_cluster_profile_composes_with_each_option_of_the_other_groups(profile):
    for group, option in OPTIONS:
        if group != "cluster":
            compose([f"cluster={profile}", f"{group}={option}"])


def test_composed_yaml_values_are_kept_and_optional_profile_keys_take_the_profile_defaults():
    from vit_dt.slurm.profile import ClusterProfile

    cfg = to_container(compose(["cluster=local"]))
    assert cfg["trainer"]["micro_batch"] == 32 and cfg["cluster"]["partitions"]["local"]["gpus_per_node"] == "auto"
    assert cfg["cluster"]["signal_delay_s"] == ClusterProfile.signal_delay_s      # local.yaml does not set it
    assert list(cfg["optimizer"]) == ["name", "lr", "weight_decay", "fused", "lr_scaling", "base_batch", "betas",
                                      "eps", "master_update"]                     # no other optimizer's keys
    assert ClusterProfile.from_config(cfg["cluster"]).signal_delay_s == ClusterProfile.signal_delay_s


@pytest.mark.parametrize("overrides, key", [
    (["trainer.micro_bach=32"], "trainer.micro_bach"),
    (["+trainer.micro_bach=32"], "trainer.micro_bach"),          # what Hydra's own message suggests
    (["++cluster.acount=x"], "cluster.acount"),
    (["precison=bf16"], "precison"),
    (["cluster=vaughan", "++cluster.partitions.t4v2.gpu_per_node=8"], "cluster.partitions.t4v2.gpu_per_node"),
    (["optimizer=adamw", "optimizer.momentum=0.9"], "optimizer.momentum"),   # an SGD key
    (["dataset=cifar10", "+dataset.val_fraction=0.1"], "dataset.val_fraction"),   # a digits key
])
def test_misspelt_or_foreign_key_is_refused_at_composition(overrides, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose(overrides)
    assert key in error_message(err.value)


@pytest.mark.parametrize("override, why", [
    ("trainer.epochs=abc", "could not be converted to Integer"),
    ("trainer.global_batch=abc", "could not be converted to Integer"),
    ("trainer.global_batch=1.5", "could not be converted to Integer"),
    ("resources.mem_gb=abc", "could not be converted to Float"),
    ("model.activation_checkpointing=maybe", "is not a valid bool"),
    ("cluster.interconnect.latency_us=fast", "could not be converted to Float"),
    ("point=abc", "could not be converted to Integer"),
])
def test_wrong_type_is_refused_at_composition(override, why):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        compose([override])
    message = error_message(err.value)
    assert override.split("=")[0] in message and why in message


def test_free_form_fields_still_take_new_keys():
    cfg = to_container(compose(["+deepspeed.overrides.zero_optimization.reduce_bucket_size=1000",
                                "+cluster.env.MY_VAR=1", "debug=slow_rank", "debug.delay_s={1: 0.5}"]))
    assert cfg["deepspeed"]["overrides"] == {"zero_optimization": {"reduce_bucket_size": 1000}}
    assert cfg["cluster"]["env"]["MY_VAR"] == "1" and cfg["debug"]["delay_s"] == {1: 0.5}


def test_the_debug_group_is_off_by_default_and_typed_when_chosen():
    assert compose([])["debug"] is None
    with pytest.raises((HydraException, OmegaConfBaseException), match="dely_s"):
        compose(["debug=slow_rank", "debug.dely_s={1: 0.5}"])


@pytest.mark.parametrize("override, key", [("trainer.micro_bach=32", "trainer.micro_bach"),
                                           ("trainer.epochs=abc", "trainer.epochs")])
def test_train_refuses_before_a_run_directory_exists(tmp_path, override, key):
    proc = run_cli("train", override, f"out_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sweep, key", [
    ("trainer.micro_bach=32,64", "trainer.micro_bach"),
    ("trainer.epochs=abc,2", "trainer.epochs"),
    ("precison=fp32,bf16", "precison"),          # a root key: the point's copy kept no struct mode
    ("+trainer.micro_bach=32,64", "trainer.micro_bach"),
])
def test_sweep_refuses_every_bad_point_before_anything_is_written(tmp_path, capsys, sweep, key):
    from vit_dt import cli

    code = cli.main(["sweep", "cluster=local", sweep, "--dry-run", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nothing was submitted" in err and f"point 0 [cluster=local {sweep.split(',')[0]}" in err and key in err
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())


def test_a_sweep_of_valid_values_still_runs(tmp_path, capsys):
    from vit_dt import cli

    assert cli.main(["sweep", "cluster=local", "trainer.micro_batch=16,32", "--dry-run", f"out_dir={tmp_path}"]) == 0
    assert "point(s) 0-1" in capsys.readouterr().out


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ), cwd=REPO)


def test_schema_module_imports_no_torch():
    proc = _python("import sys, vit_dt.config.schema; assert 'torch' not in sys.modules and "
                   "'deepspeed' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vit_dt'))")
    assert proc.returncode == 0, proc.stderr


def test_a_hydra_app_finds_the_schemas_through_the_launcher_plugin():
    """`vit-dt sweep` is a Hydra app: the schemas conf/ names must be registered by the time it loads config.yaml,
    without vit_dt.config having been imported (Hydra imports the plugin modules when it starts)."""
    proc = _python(
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        "from vit_dt.paths import conf_dir\n"
        "assert 'vit_dt.config.schema' not in sys.modules\n"
        "with initialize_config_dir(config_dir=str(conf_dir()), version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['optimizer=sgd'])\n"
        "print(OmegaConf.get_type(cfg.optimizer).__name__)\n")
    assert proc.returncode == 0, proc.stderr
    assert "SGDSchema" in proc.stdout


@pytest.mark.parametrize("command", [
    ["train", "trainer.micro_bach=32"], ["train", "+trainer.epoch=5"],
    ["sweep", "cluster=local", "trainer.micro_bach=32,64", "--dry-run"],
])
def test_an_unknown_key_is_refused_with_the_nearest_valid_one(tmp_path, command):
    proc = run_cli(*command, f"out_dir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    wanted = "trainer.epochs" if "epoch=5" in command[-1] else "trainer.micro_batch"
    assert f"did you mean {wanted}?" in proc.stderr, proc.stderr


def test_the_default_dataset_with_the_default_optimizer_takes_its_tuned_defaults_and_overrides_still_win():
    """conf/dataset/tuned/digits_adamw.yaml: what makes the default run learn (tests/e2e/test_first_run.py). It is
    chosen by the pair; other pairs keep the groups' own defaults, and the command line wins over it."""
    def picked(overrides):
        cfg = to_container(compose(overrides))
        return cfg["trainer"]["epochs"], cfg["trainer"]["warmup_epochs"], cfg["optimizer"]["lr"]

    group_defaults = (3, 1.0)
    assert picked([]) == (8, 0.5, 2e-3)
    assert picked(["trainer.epochs=2", "optimizer.lr=1e-3"]) == (2, 0.5, 1e-3)
    assert picked(["dataset=synthetic"]) == (*group_defaults, 1e-3)
    assert picked(["optimizer=sgd"])[:2] == group_defaults
