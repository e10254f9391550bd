"""Know the cost before you queue it, on the real local Slurm cluster: a sweep calibrated from a finished sweep gets
per-point time limits from its estimate (`resources.time_min=auto`, read back from sacct's TimeLimit) that hold: no
point is requeued for time. `--max-gpu-hours` too small queues nothing. `vit-dt status` sets the hours used
(sacct elapsed x ranks on the CPU partition) against the estimate."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from tests.helpers import run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

POINTS = ["cluster=localslurm", "resources.layout=intra", "dataset=digits", "model=vit_tiny",
          "trainer.micro_batch=64", "trainer.epochs=2", "wandb.mode=disabled"]


def _sacct(job_ids: list[str]) -> list[list[str]]:
    """One line per allocation, requeued attempts included (--duplicates): JobID, TimelimitRaw (min), State."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-o", "JobID,TimelimitRaw,State", "--parsable2",
                          *[a for b in bases for a in ("-j", b)]], capture_output=True, text=True, check=True,
                         env=dict(os.environ)).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def _queued() -> int:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return len(out.split())


def test_calibrated_time_limits_hold_and_a_budget_refuses(slurm_cluster, tmp_path):
    calib = run_sweep_cli(tmp_path / "calib", *POINTS, "resources.gpus=1")
    assert calib.proc.returncode == 0, calib.proc.stderr
    assert {r.state for r in wait_until_done(calib.sweep_dir)} == {"completed"}

    before = _queued()
    refused = run_sweep_cli(tmp_path / "refused", *POINTS, "resources.gpus=1,2", "--calibrate-from",
                            str(calib.sweep_dir), "--max-gpu-hours", "0.0001")
    assert refused.proc.returncode == 2 and "exceeds --max-gpu-hours 0.0001" in refused.proc.stderr
    assert not (tmp_path / "refused").exists() and _queued() == before

    sweep = run_sweep_cli(tmp_path / "auto", *POINTS, "resources.gpus=1,2", "resources.time_min=auto",
                          "--calibrate-from", str(calib.sweep_dir))
    assert sweep.proc.returncode == 0, sweep.proc.stderr
    assert f"source: calibrated from {calib.sweep_dir}/points/0: points 0-1" in sweep.proc.stdout
    rows = wait_until_done(sweep.sweep_dir)
    assert {r.state for r in rows} == {"completed"}, [(r.index, r.state, r.reason) for r in rows]

    manifest = json.loads((sweep.sweep_dir / "sweep.json").read_text())
    job_ids = [p["job_id"] for p in manifest["points"]]
    lines = _sacct(job_ids)
    limits = {line[0]: int(line[1]) for line in lines}
    for point in manifest["points"]:
        estimate = point["estimate"]
        assert estimate["source"] == "calibrated" and estimate["time_auto"] and estimate["segments"] == 1
        assert limits[point["job_id"]] == estimate["time_min"] == point["shape"]["time_min"] < 240
        # the limit held: the run finished inside it, in one attempt (no requeue, no attempts/ folder)
        result = json.loads((sweep.sweep_dir / "points" / str(point["index"]) / "result.json").read_text())
        assert result["status"] == "completed" and len(result["epochs"]) == 2
        assert not (sweep.sweep_dir / "points" / str(point["index"]) / "attempts").exists()
    assert sorted(line[0] for line in lines) == sorted(job_ids)       # one allocation per job: none requeued
    assert {line[2] for line in lines} == {"COMPLETED"}

    status = run_cli("status", str(sweep.sweep_dir), timeout=120)
    assert status.returncode == 0, status.stderr
    assert "of an estimated" in status.stdout and "CPU rank-hours" in status.stdout, status.stdout
    usage = json.loads(run_cli("status", str(sweep.sweep_dir), "--json", timeout=120).stdout)["usage"]
    assert usage["used_hours"] > 0 and usage["estimated_hours"] > 0
