"""A sweep runs the code it was submitted with (vit_dt/slurm/snapshot.py), on the real local Slurm cluster.

A 2-point sweep is submitted from a copy of this checkout, with its jobs held (`--begin` an hour ahead). The copy's
working tree is then broken (the trainer, and vit_dt itself, raise on import) and the jobs are released: both points
complete, record the commit checked out at submission and that they imported vit_dt from the sweep's snapshot; a
point requeued after the edit imports the snapshot too. Their provenance block is in result.json, in the results
store line and in the offline W&B run's config (read back).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.sweeps import wait_until_done
from tests.helpers import REPO, isolate_wandb
from vit_dt.records.wandb_files import read_offline_run
from vit_dt.slurm.manifest import read_manifest
from vit_dt.slurm.snapshot import make_snapshot

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
BROKEN = "raise RuntimeError('the working tree was edited after submission')\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _checkout_copy(tmp_path: Path) -> Path:
    """This checkout's files (uncommitted ones included) as a fresh git checkout with one commit."""
    copy = Path(make_snapshot(tmp_path / "src", REPO).path)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "the code submitted")
    return copy


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True)


def _launch_records(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("launch/rank*.json"))]


@pytest.mark.timeout(900)
def test_jobs_run_the_code_frozen_at_submission(slurm_cluster, tmp_path, monkeypatch):
    isolate_wandb(tmp_path, monkeypatch)
    copy = _checkout_copy(tmp_path)
    commit = _git(copy, "rev-parse", "HEAD")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{copy}:{copy}/launchers", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=localslurm", "trainer.seed=0,1", "dataset=digits",
         "model=vit_tiny", "trainer.micro_batch=16", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
         "wandb.mode=offline", "wandb.project=vit-dt-test", "++cluster.sbatch_args.begin=now+3600",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=copy)   # cwd: the checkout, as users submit
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = read_manifest(sweep)
    snapshot = sweep / "code"
    assert manifest["code"]["snapshot"] == str(snapshot) and manifest["code"]["kind"] == "git"
    assert f"code:      {snapshot}" in proc.stdout
    assert manifest["provenance"]["code"]["commit"] == commit and manifest["provenance"]["code"]["dirty"] is False

    # The jobs wait; meanwhile the working tree changes so that its vit_dt cannot even be imported.
    for module in ("vit_dt/run/loop.py", "vit_dt/__init__.py"):
        (copy / module).write_text(BROKEN)
    (job,) = manifest["jobs"]
    _scontrol("update", f"jobid={job['job_id']}", "StartTime=now")
    rows = wait_until_done(sweep)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 2, \
        [(r.index, r.state, r.stderr) for r in rows]

    store = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    for point in manifest["points"]:
        run_dir = Path(point["run_dir"])
        result = json.loads((run_dir / "result.json").read_text())
        block = result["provenance"]
        assert block["code"]["commit"] == commit and block["code"]["imported_from"] == str(snapshot / "vit_dt")
        assert block["code"]["foreign_modules"] == []      # every vit_dt module from the snapshot
        assert block["request"]["overrides"] == point["overrides"]
        assert "vit-dt sweep" in block["request"]["command_line"]
        assert block["machine"]["job_id"] and block["machine"]["slurm_version"].startswith("slurm")
        assert block["machine"]["gpus"] is None and block["machine"]["gpus_reason"]
        assert block["environment"]["packages_sha256"] == manifest["provenance"]["environment"]["packages_sha256"]
        assert block["environment"]["torch"] and block["environment"]["python"]
        assert next(r for r in store if r["point"] == point["index"])["provenance"] == block
        config = read_offline_run(run_dir)["config"]
        assert config["provenance.code.commit"] == commit
        assert config["provenance.environment.packages_sha256"] == block["environment"]["packages_sha256"]
        assert all(r["code"] == str(snapshot / "vit_dt") for r in _launch_records(run_dir))

    # A requeue after the edit: the job starts again from its script, imports the snapshot again (the working
    # tree's vit_dt raises on import), and finds its point done.
    first = manifest["points"][0]
    _scontrol("requeue", first["job_id"])
    _scontrol("update", f"jobid={first['job_id']}", "StartTime=now")    # a requeued job keeps its --begin
    log = Path(first["logs"]["stdout"])
    deadline = time.monotonic() + 240
    expected = f"already holds a completed result.json; nothing to do (code: {snapshot / 'vit_dt'})"
    while expected not in log.read_text():
        assert time.monotonic() < deadline, f"the requeued job did not run the snapshot:\n{log.read_text()[-2000:]}"
        time.sleep(2)

    # `vit-dt rerun` of a completed point, here, from the recorded snapshot (the working tree's vit_dt still raises):
    # the same weights and accuracy, in a run directory of its own.
    point = manifest["points"][1]
    original = json.loads((Path(point["run_dir"]) / "result.json").read_text())
    rerun = subprocess.run([sys.executable, "-m", "vit_dt.cli", "rerun", point["run_dir"]], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "note:" not in rerun.stdout, rerun.stdout        # snapshot present, same packages: nothing to say
    out = Path(next(line for line in rerun.stdout.splitlines() if line.startswith("run directory: "))[15:])
    again = json.loads((out / "result.json").read_text())
    assert again["status"] == "completed"
    assert again["param_checksums"] == original["param_checksums"]
    assert again["final_val_acc"] == original["final_val_acc"]
    assert again["provenance"]["code"]["imported_from"] == str(snapshot / "vit_dt")
    assert again["provenance"]["code"]["foreign_modules"] == []
    assert again["provenance"]["request"]["rerun_of"] == str(Path(point["run_dir"]).resolve())
    assert len((sweep / "results.jsonl").read_text().splitlines()) == 2     # the sweep's store is untouched

    # ... and on Slurm: a one-point sweep of the point's shape, its job importing the recorded snapshot.
    rerun = subprocess.run([sys.executable, "-m", "vit_dt.cli", "rerun", point["run_dir"], "--slurm"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rerun_sweep = Path(next(line for line in rerun.stdout.splitlines() if line.startswith("sweep dir: "))[11:])
    assert f"code:      {snapshot} (the recorded run's snapshot)" in rerun.stdout
    (rerun_job,) = read_manifest(rerun_sweep)["jobs"]
    _scontrol("update", f"jobid={rerun_job['job_id']}", "StartTime=now")   # the recorded profile's --begin too
    rows = wait_until_done(rerun_sweep)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")], [(r.state, r.stderr) for r in rows]
    again = json.loads((rerun_sweep / "points" / "0" / "result.json").read_text())
    assert again["param_checksums"] == original["param_checksums"]
    assert again["final_val_acc"] == original["final_val_acc"]
    assert again["provenance"]["code"]["imported_from"] == str(snapshot / "vit_dt")
    assert again["provenance"]["code"]["commit"] == commit and again["provenance"]["machine"]["job_id"]
