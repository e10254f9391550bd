"""A checkpoint write that fills its file system, on the real local Slurm cluster: a real tmpfs, too small for a
second checkpoint, mounted over the point's checkpoint directory while the job waits in a downed partition."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from vit_dt.records.store import ResultsStore
from vit_dt.slurm.manifest import read_manifest

FAST = ["dataset=digits", "model=vit_tiny", "trainer.micro_batch=16", "wandb.mode=disabled",
        "trainer.max_steps_per_epoch=3"]
CHECKPOINT_MB = 6.6      # vit_tiny with its AdamW state, as written here: one fits in 10 MB, two do not


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")


def _partition(state: str) -> None:
    subprocess.run(["scontrol", "update", "partitionname=cpu", f"state={state}"], check=True, capture_output=True)


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_a_full_disk_keeps_the_previous_checkpoint_records_io_and_resume_completes(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "full"
    _partition("down")       # queued, not started: room to put the small file system under the point
    try:
        sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "trainer.epochs=3", *FAST)
        assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
        run_dir = Path(read_manifest(sweep_dir)["points"][0]["run_dir"])
        checkpoints = run_dir / "checkpoints"
        _mount_tmpfs(checkpoints, "10m")
    finally:
        _partition("up")
    try:
        rows = wait_until_done(sweep_dir)
        assert rows[0].state == "failed", rows

        # the previous checkpoint is whole, the half-written one is gone
        assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-1"], list(checkpoints.iterdir())
        manifest = json.loads((checkpoints / "epoch-1" / "MANIFEST.json").read_text())
        assert manifest and all((checkpoints / "epoch-1" / name).is_file() for name in manifest)

        # the record keeps both measured epochs and says I/O, in the store and in `vit-dt status`
        failed = ResultsStore(sweep_dir / "results.jsonl").records()
        assert [r["status"] for r in failed] == ["failed"], failed
        assert failed[0]["failure_cause"] == "io" and len(failed[0]["epochs"]) == 2, failed[0]
        assert "No space left on device" in failed[0]["error"], failed[0]["error"]
        status = subprocess.run([sys.executable, "-m", "vit_dt.cli", "status", str(sweep_dir)], capture_output=True,
                                text=True, timeout=120)
        assert "I/O error" in status.stdout and "after 2 epoch(s)" in status.stdout, status.stdout

        # room again (a cleaned-up quota, a bigger scratch): --resume continues from epoch-1 and completes
        subprocess.run(["mount", "-o", "remount,size=64m", str(checkpoints)], check=True)
        resumed = subprocess.run([sys.executable, "-m", "vit_dt.cli", "sweep", "--resume", str(sweep_dir)],
                                 capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        time.sleep(1)
        rows = wait_until_done(sweep_dir)
        assert rows[0].state == "completed", rows
        records = ResultsStore(sweep_dir / "results.jsonl").records()
        assert [r["status"] for r in records] == ["failed", "completed"], records
        assert [e["epoch"] for e in records[-1]["epochs"]] == [0, 1, 2]
        logs = "".join(p.read_text(errors="replace") for p in sweep_dir.rglob("*_log.out"))
        assert "resumed from" in logs and "epoch-1 (1 epochs done)" in logs, logs[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(checkpoints)], capture_output=True)
