"""Sweep directories on the real local Slurm cluster: a directory named with every shell character runs, and the
hints vit-dt prints work when pasted into bash; two sweeps started together keep to their own directories."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.sweeps import wait_until_done
from tests.helpers import REPO
from vit_dt.records.store import ResultsStore
from vit_dt.slurm.manifest import read_manifest

QUICK = ["dataset=digits", "model=vit_tiny", "trainer.micro_batch=16", "wandb.mode=disabled", "trainer.epochs=1",
         "trainer.max_steps_per_epoch=3"]
NASTY = "my sweep; $(touch PWNED1) `touch PWNED2` 'single' \"double\" & | > x"


def hydra_quoted(value: str) -> str:
    """`value` as a quoted string of Hydra's override grammar (backslashes and single quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def paste(hint: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a printed command line in bash, as a user pasting it would (vit-dt on PATH)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "launchers")]))
    return subprocess.run(["bash", "-c", hint], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def hint(output: str, label: str) -> str:
    return next(line.split(label, 1)[1].strip() for line in output.splitlines() if label in line)


@pytest.mark.slurm
def test_a_sweep_dir_of_shell_characters_runs_and_its_hints_paste_into_bash(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / NASTY
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=localslurm", "trainer.seed=0,1",
                           *QUICK, f"hydra.sweep.dir={hydra_quoted(str(sweep_dir))}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = read_manifest(sweep_dir)
    subprocess.run(["scancel", first["points"][1]["job_id"]], check=True)
    rows = wait_until_done(sweep_dir, timeout_s=300)
    assert [r.state for r in rows] == ["completed", "cancelled"]

    status = paste(hint(proc.stdout, "status:"), cwd=tmp_path)          # the sweep's own hint, pasted
    assert status.returncode == 0 and "cancelled" in status.stdout, status.stdout + status.stderr
    resumed = paste(hint(status.stdout, "resume:"), cwd=tmp_path)       # status's hint, pasted
    assert resumed.returncode == 0 and "point 1: cancelled" in resumed.stdout, resumed.stdout + resumed.stderr
    rows = wait_until_done(sweep_dir, timeout_s=300)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 2
    assert not list(tmp_path.rglob("PWNED*")) and not (tmp_path / "x").exists()   # nothing of the name ran


@pytest.mark.slurm
def test_two_sweeps_started_together_keep_to_their_own_directories_and_records(slurm_cluster, tmp_path):
    command = [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=localslurm", "trainer.micro_batch=16,32",
               *QUICK[:2], *QUICK[3:], f"out_dir={tmp_path}"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    dirs = sorted((tmp_path / "sweeps").glob("2*"))
    assert len(dirs) == 2
    for sweep_dir in dirs:
        wait_until_done(sweep_dir, timeout_s=600)
        manifest = read_manifest(sweep_dir)
        records = [r for r in ResultsStore(sweep_dir / "results.jsonl").records() if r["status"] == "completed"]
        assert sorted(r["point"] for r in records) == [0, 1]
        for record in records:
            run_dir = Path(record["run_dir"])
            assert run_dir.parent.parent == sweep_dir                         # trained in its own sweep
            assert record["config"]["sweep_dir"] == str(sweep_dir)
            assert record["config"]["trainer"]["micro_batch"] == [16, 32][record["point"]]
            saved = json.loads((run_dir / "result.json").read_text())
            assert saved["config"]["sweep_dir"] == str(sweep_dir)
        assert {p["job_id"] for p in manifest["points"]}.isdisjoint(
            {p["job_id"] for p in read_manifest(next(d for d in dirs if d != sweep_dir))["points"]})
