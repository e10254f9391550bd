"""A node taken down under a running 2-node point, on the real local Slurm cluster: Slurm requeues the job, it
resumes from its last checkpoint on the nodes left, and the point completes with no command typed."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from vit_dt.records.store import ResultsStore
from vit_dt.slurm.manifest import read_manifest

EPOCHS = 10
FAST = ["dataset=digits", "model=vit_tiny", "trainer.micro_batch=16", "wandb.mode=disabled"]


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", "update", *args], check=True, capture_output=True)


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_a_node_taken_down_mid_run_is_requeued_and_the_point_completes_unattended(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "node-down"
    # ~2 s an epoch (rank 0 sleeps 0.2 s a forward): the node goes down with most of the run still to do
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "resources.nodes=2", f"trainer.epochs={EPOCHS}",
                        "trainer.max_steps_per_epoch=6", "debug=slow_rank", "debug.delay_s={0:0.2}", *FAST)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    point = read_manifest(sweep_dir)["points"][0]
    run_dir = Path(point["run_dir"])
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("epoch-*")):      # mid-training: an epoch is done
        assert time.monotonic() < deadline, "the point did not start training"
        time.sleep(0.5)
    node = json.loads((run_dir / "heartbeats" / "rank-1.json").read_text())["host"]   # Slurm's node name
    # The node's slurmd keeps answering, so Slurm returns it to service by itself (ReturnToService=2)
    _scontrol(f"nodename={node}", "state=down", "reason=vit-dt-test")
    rows = wait_until_done(sweep_dir)
    assert rows[0].state == "completed" and rows[0].attempts == 1, rows    # no --resume was typed
    records = ResultsStore(sweep_dir / "results.jsonl").records()
    assert [r["status"] for r in records] == ["completed"], records
    assert [e["epoch"] for e in records[0]["epochs"]] == list(range(EPOCHS))
    logs = "".join(p.read_text(errors="replace") for p in (sweep_dir / "slurm").glob("*_log.out"))
    assert "resumed from" in logs, logs[-3000:]
