"""What a Hydra user types, in `vit-dt train` and `vit-dt sweep`: --cfg/--resolve, -m, --help with the config
groups, a wrong group option in one line, and `+key=...` typos refused with the nearest key."""
from __future__ import annotations

import pytest
import yaml

from tests.helpers import run_cli
from vit_dt.config.groups import group_options


def test_cfg_job_prints_the_composed_config_and_runs_nothing(tmp_path):
    proc = run_cli("train", "model=vit_b_16", "trainer.epochs=7", f"out_dir={tmp_path}", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["name"] == "vit_b_16" and cfg["trainer"]["epochs"] == 7 and "hydra" not in cfg
    assert list(tmp_path.iterdir()) == []          # no run directory: nothing ran


def test_cfg_shows_interpolations_and_resolve_resolves_them(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_DT_OUT_DIR", raising=False)
    raw = yaml.safe_load(run_cli("train", "--cfg", "job").stdout)
    assert raw["out_dir"].startswith("${oc.env:VIT_DT_OUT_DIR")
    resolved = run_cli("train", "--resolve", env={"VIT_DT_OUT_DIR": str(tmp_path)})   # --resolve alone: job
    assert resolved.returncode == 0 and yaml.safe_load(resolved.stdout)["out_dir"] == str(tmp_path)
    both = yaml.safe_load(run_cli("train", "--cfg=all", "--resolve").stdout)
    assert "hydra" in both and "trainer" in both and both["hydra"]["sweep"]["dir"].startswith("outputs/sweeps/")


def test_cfg_never_prints_a_secret():
    key = "0123456789abcdef0123456789abcdef01234567"
    proc = run_cli("train", f"wandb.project=p-{key}", "--cfg", "job", "--resolve", env={"WANDB_API_KEY": key})
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout and "p-<redacted>" in proc.stdout


def test_cfg_with_a_bad_value_names_the_valid_ones():
    proc = run_cli("train", "--cfg", "jobs")
    assert proc.returncode == 2 and "--cfg 'jobs' is invalid; valid: --cfg job|hydra|all" in proc.stderr


def test_sweep_cfg_prints_every_point_and_queues_nothing(tmp_path):
    proc = run_cli("sweep", "-m", "cluster=vaughan", "resources.gpus=1,2,4,8", f"hydra.sweep.dir={tmp_path / 's'}",
                   "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    points = list(yaml.safe_load_all(proc.stdout))
    assert [p["resources"]["gpus"] for p in points] == [1, 2, 4, 8]
    assert "# point 3: cluster=vaughan resources.gpus=8" in proc.stdout
    assert not (tmp_path / "s").exists()


def test_multirun_flag_is_accepted_by_sweep(tmp_path):
    proc = run_cli("sweep", "-m", "cluster=vaughan", "resources.gpus=1,2", f"hydra.sweep.dir={tmp_path / 's'}",
                   "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "2 point(s) -> 2 Slurm job(s) rendered" in proc.stdout
    long = run_cli("sweep", "--multirun", "cluster=vaughan", f"hydra.sweep.dir={tmp_path / 't'}", "--dry-run")
    assert long.returncode == 0, long.stderr


def test_train_points_a_multirun_to_sweep():
    proc = run_cli("train", "-m", "trainer.seed=0,1")
    assert proc.returncode == 2 and "vit-dt sweep" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_lists_the_config_groups_from_conf(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    assert "== Configuration groups ==" in proc.stdout
    groups = group_options()
    assert {"cluster", "dataset", "model", "optimizer", "scaling"} <= set(groups)
    for group, options in groups.items():
        assert f"{group}: {', '.join(options)} (default: " in proc.stdout, group
    assert "cluster: local, localslurm, nebula, tesla, vaughan (default: local)" in proc.stdout


@pytest.mark.parametrize("command, override, nearest", [
    (["train"], "cluster=vaugan", "cluster=vaughan"),
    (["sweep", "--dry-run"], "dataset=cifar11", "dataset=cifar10"),
])
def test_a_wrong_group_option_is_one_line_with_the_valid_ones(tmp_path, command, override, nearest):
    proc = run_cli(*command, override, f"out_dir={tmp_path}")
    group = override.split("=")[0]
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr           # one line, not Hydra's search path
    assert f"did you mean {nearest}?" in proc.stderr
    assert f"valid: {', '.join(group_options()[group])}" in proc.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [["train"], ["sweep", "cluster=vaughan", "--dry-run"]])
def test_plus_trainer_epoch_is_refused_with_trainer_epochs(tmp_path, command):
    """Hydra's own advice for `trainer.epoch=5` is `+trainer.epoch=5`: refused, in train and in sweep."""
    proc = run_cli(*command, "+trainer.epoch=5", f"out_dir={tmp_path}")
    assert proc.returncode == 2, proc.stdout
    assert "did you mean trainer.epochs?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()
