"""vit_dt.wandb_run and `vit-dt sync`: real offline W&B runs written, read back, and checked for secrets."""
from __future__ import annotations

import secrets as pysecrets
from pathlib import Path

import pytest

from vit_dt.commands import sync as sync_cmd
from vit_dt.wandb_run import (REDACTED, WandbRun, find_offline_runs, flat_config, flatten, read_offline_run,
                              resolve_mode, scrub_secrets)

BREAKDOWN_KEYS = ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step")


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """Keep W&B's own settings and caches out of $HOME, and start each test without a W&B mode in the env."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def make_cfg(mode: str | None = "offline", **wandb_extra) -> dict:
    return {
        "cluster": {"name": "local", "setup": ["module load cuda"], "env": {"NCCL_DEBUG": "WARN"}},
        "model": {"name": "vit_tiny", "hidden_dim": 128},
        "trainer": {"lr": 0.001, "micro_batch": 32},
        "scaling": {"mode": "strong"},
        "wandb": {"mode": mode, "project": "vit-dt-test", "entity": None, "group": None, "tags": []} | wandb_extra,
    }


def test_mode_comes_from_config_then_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(make_cfg("offline")) == "offline"        # config wins
    assert resolve_mode(make_cfg(None)) == "disabled"            # unset in config: the environment
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(make_cfg(None)) == "offline"             # neither: offline, safe on compute nodes
    assert resolve_mode({}) == "offline"
    with pytest.raises(ValueError, match="'dryrun'.*offline, online, disabled"):
        resolve_mode(make_cfg("dryrun"))


def test_flatten_and_scrub():
    api_key = "k" * 40
    cfg = {"a": {"b": {"c": 1}, "empty": {}}, "wandb": {"api_key": api_key},
           "cluster": {"setup": [f"export WANDB_API_KEY={api_key}", "module load x"], "env": {"HF_TOKEN": "hf_abc"}},
           "db": {"password": "hunter2", "Secret_Thing": {"nested": 1}}, "n": None}
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}
    scrubbed = scrub_secrets(cfg, secrets=[api_key])
    assert scrubbed["wandb"]["api_key"] == REDACTED
    assert scrubbed["cluster"]["setup"] == [f"export WANDB_API_KEY={REDACTED}", "module load x"]
    assert scrubbed["cluster"]["env"]["HF_TOKEN"] == REDACTED
    assert scrubbed["db"] == {"password": REDACTED, "Secret_Thing": REDACTED}
    assert scrubbed["a"] == {"b": {"c": 1}, "empty": {}}
    assert cfg["wandb"]["api_key"] == api_key                   # a copy: the input is untouched


def test_flat_config_redacts_the_environment_api_key(monkeypatch):
    value = pysecrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", value)
    flat = flat_config({"cluster": {"setup": [f"echo {value}"]}, "trainer": {"lr": 0.1}})
    assert flat == {"cluster.setup": [f"echo {REDACTED}"], "trainer.lr": 0.1}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_offline_run_is_read_back_and_holds_no_secret(tmp_path, monkeypatch):
    api_key = pysecrets.token_hex(20)                           # random, so a hit cannot be a coincidence
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    cfg = make_cfg("offline", tags=["from-config"])
    cfg["cluster"]["setup"].append(f"export WANDB_API_KEY={api_key}")   # a careless profile
    cfg["cluster"]["env"]["SOME_TOKEN"] = "tok-123456"
    run_dir = tmp_path / "sweep" / "points" / "0"

    run = WandbRun.start(cfg, run_dir, rank=0, group="sweep-20260101", job_type="strong",
                         tags=["cluster:local", "gpu:cpu", "layout:intra", "cluster:local"], name="vit_tiny-n1x2")
    assert run.active and run.mode == "offline"
    for step in range(1, 4):
        run.log({"step/loss": 2.0 / step, "step/lr": 1e-3, "step/skipped": None}
                | {f"step/time/{k}_ms": 10.0 * step for k in BREAKDOWN_KEYS}, step=step)
    run.log({"epoch/img_per_s": 123.0, "epoch/comm_share": 0.25}, step=10**6)
    run.summary({"epoch_time_s_mean": 4.5, "img_per_s": 123.0, "comm_share": 0.25, "final_val_acc": 0.875,
                 "mfu": None, "status": "completed"})
    wandb_dir = run.dir
    run.finish()
    run.finish()                                                # idempotent

    assert find_offline_runs(tmp_path / "sweep") == [wandb_dir]
    assert wandb_dir.is_relative_to(run_dir)
    leet, proto = read_offline_run(run_dir, reader="leet"), read_offline_run(run_dir, reader="proto")
    for back in (leet, proto):
        assert back["group"] == "sweep-20260101"
        assert back["job_type"] == "strong"
        assert back["tags"] == ["cluster:local", "gpu:cpu", "layout:intra"]
        assert back["name"] == "vit_tiny-n1x2"
        assert back["exit_code"] == 0
        config = back["config"]
        assert config["trainer.lr"] == 0.001 and config["model.name"] == "vit_tiny"
        assert config["scaling.mode"] == "strong" and config["wandb.tags"] == ["from-config"]
        assert config["cluster.env.SOME_TOKEN"] == REDACTED
        assert config["cluster.setup"][-1] == f"export WANDB_API_KEY={REDACTED}"
        step_rows = [row for row in back["history"] if "step/loss" in row]
        assert [row["_step"] for row in step_rows] == [1, 2, 3]
        assert all(f"step/time/{k}_ms" in row for row in step_rows for k in BREAKDOWN_KEYS)
        assert "step/skipped" not in step_rows[0]
        assert step_rows[2]["step/time/bwd_allreduce_ms"] == 30.0
        assert back["history"][-1]["epoch/comm_share"] == 0.25
        summary = back["summary"]
        assert summary["epoch_time_s_mean"] == 4.5 and summary["final_val_acc"] == 0.875
        assert summary["status"] == "completed" and "mfu" not in summary
    assert {k: v for k, v in leet.items() if k != "file"} == {k: v for k, v in proto.items() if k != "file"}

    files = files_under(run_dir)
    assert any(p.suffix == ".wandb" for p in files)
    # The config travels in plain bytes inside these files, so an unscrubbed key would be found by this scan.
    assert any(f"WANDB_API_KEY={REDACTED}".encode() in p.read_bytes() for p in files)
    leaks = [p for p in files if api_key.encode() in p.read_bytes()]
    assert leaks == [], f"WANDB_API_KEY found in {leaks}"


def test_disabled_mode_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    for cfg, rank in ((make_cfg("disabled"), 0), (make_cfg("offline"), 1)):
        run_dir = tmp_path / f"rank{rank}"
        run = WandbRun.start(cfg, run_dir, rank=rank, group="g", job_type="none", tags=["t"], name=None)
        assert not run.active and run.dir is None
        run.log({"step/loss": 1.0}, step=1)
        run.summary({"final_val_acc": 0.5})
        run.finish(1)
        assert not run_dir.exists()
    monkeypatch.setenv("WANDB_MODE", "disabled")               # mode unset in config: the environment decides
    run = WandbRun.start(make_cfg(None), tmp_path / "env", rank=0, group=None, job_type="none", tags=[], name=None)
    assert not run.active and not (tmp_path / "env").exists()
    with pytest.raises(ValueError, match="valid: offline, online, disabled"):
        WandbRun.start(make_cfg("sometimes"), tmp_path, rank=1, group=None, job_type="x", tags=[], name=None)


def test_read_offline_run_reports_missing_logs_and_bad_reader(tmp_path):
    with pytest.raises(FileNotFoundError, match="run-\\*.wandb"):
        read_offline_run(tmp_path)
    with pytest.raises(ValueError, match="auto, leet, proto"):
        read_offline_run(tmp_path, reader="json")


def test_sync_lists_offline_runs_and_reports_a_failed_upload(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    for point in (0, 1):
        run = WandbRun.start(make_cfg("offline"), sweep / "points" / str(point), rank=0, group="s", job_type="weak",
                             tags=[], name=f"p{point}")
        run.log({"step/loss": 1.0}, step=1)
        run.finish()
    runs = find_offline_runs(sweep)
    assert len(runs) == 2
    (runs[1] / f"{next(runs[1].glob('run-*.wandb')).name}.synced").touch()   # what wandb sync leaves behind

    assert sync_cmd.main([str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"to sync  {runs[0]}" in out and f"synced   {runs[1]}" in out and "1 to sync" in out
    assert sync_cmd.main([str(sweep), "--dry-run", "--include-synced"]) == 0
    assert "2 to sync" in capsys.readouterr().out

    # No W&B server here: point wandb at a closed port and check the failure is reported, not swallowed.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    api_key = "local-" + pysecrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    assert sync_cmd.main([str(sweep), "--timeout-s", "5"]) == 1
    assert str(runs[0]) in capsys.readouterr().err
    sync_logs = list((sweep / "wandb" / "logs").glob("debug-sync.*.log"))   # kept with the sweep, not in the cwd
    assert sync_logs
    assert [p for p in files_under(sweep) if api_key.encode() in p.read_bytes()] == []
    assert sync_cmd.main([str(tmp_path / "nothing-here")]) == 2


def test_a_step_that_goes_back_is_warned_about(tmp_path, caplog):
    run = WandbRun.start(make_cfg("offline"), tmp_path, rank=0, group=None, job_type="none", tags=[], name=None)
    run.log({"step/loss": 1.0}, step=5)
    run.log({"epoch/acc": 0.5}, step=5)                          # same step: merged into one row
    with caplog.at_level("WARNING", logger="vit_dt.wandb"):
        run.log({"step/loss": 0.5}, step=3)
    run.finish()
    assert "step goes back" in caplog.text
    history = read_offline_run(tmp_path)["history"]
    assert history == [{"step/loss": 1.0, "epoch/acc": 0.5, "_step": 5}]   # W&B dropped the step-3 row
