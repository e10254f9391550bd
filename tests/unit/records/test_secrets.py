"""A W&B key never lands in anything vit-dt writes at submission: sweep.json (the command line as typed), the
sbatch scripts (an env value that holds it), each point's config.yaml, and the task submitit pickles."""
from __future__ import annotations

import pickle
from pathlib import Path

from vit_dt.config.compose import compose, to_container
from vit_dt.records.secrets import REDACTED, scrub_override
from vit_dt.slurm.executor import job_spec
from vit_dt.slurm.job_entry import PointTask
from vit_dt.slurm.profile import ClusterProfile
from vit_dt.slurm.render import render_sbatch
from vit_dt.slurm.shape import resolve_shape

KEY = "wandb-key-0123456789abcdef"


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_dry_run_sweep_writes_no_secret_whatever_the_command_line(tmp_path, monkeypatch, capsys):
    from vit_dt.commands import sweep

    monkeypatch.setenv("WANDB_API_KEY", KEY)
    args = ["cluster=nebula", f"hydra.sweep.dir={tmp_path}", "--dry-run", "trainer.seed=0,1",
            "run_name=${oc.env:WANDB_API_KEY}",                       # resolved only when read
            "+cluster.env.OTHER=${oc.env:WANDB_API_KEY}",              # a value that holds the key, any name
            "+cluster.env.MY_TOKEN=typed-token-value-42"]             # typed in clear under a secret-looking name
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert KEY not in out and "typed-token-value-42" not in out
    assert _files_holding(tmp_path, KEY) == [] and _files_holding(tmp_path, "typed-token-value-42") == []
    scripts = list(tmp_path.rglob("*.sbatch"))
    assert scripts and all("# OTHER: not written (its value holds a secret)" in p.read_text() for p in scripts)
    import json

    argv = json.loads((tmp_path / "sweep.json").read_text())["argv"]
    assert "run_name=${oc.env:WANDB_API_KEY}" in argv                   # as typed, never resolved
    assert f"+cluster.env.MY_TOKEN={REDACTED}" in argv


def test_an_env_value_holding_the_key_is_named_not_written(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    cfg = to_container(compose(["cluster=vaughan", f"+cluster.env.NOTE=prefix-{KEY}", "++cluster.env.NCCL_DEBUG=WARN"]))
    profile = ClusterProfile.from_config(cfg["cluster"])
    text = render_sbatch(job_spec(profile, resolve_shape(cfg, profile), "/f", job_name="j", array_size=None))
    assert KEY not in text and "# NOTE: not written (its value holds a secret)" in text
    assert 'export NCCL_DEBUG="WARN"' in text


def test_the_pickled_task_holds_no_secret(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    cfg = {"run_name": f"run-{KEY}", "cluster": {"env": {"WANDB_API_KEY": KEY, "HF_TOKEN": "hf-token-xyz"}}}
    blob = pickle.dumps(PointTask(cfg, "/run"))
    assert KEY.encode() not in blob and b"hf-token-xyz" not in blob
    assert cfg["cluster"]["env"]["WANDB_API_KEY"] == KEY            # the caller's config is left as it was


def test_scrub_override(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert scrub_override("+cluster.env.API_TOKEN=abc") == f"+cluster.env.API_TOKEN={REDACTED}"
    assert scrub_override(f"run_name=x{KEY}") == f"run_name=x{REDACTED}"
    assert scrub_override("trainer.seed=0,1") == "trainer.seed=0,1"
