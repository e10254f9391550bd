"""A training run killed after an epoch and started again in its run directory (what a Slurm requeue does) stays
one W&B run: two offline segments with the run directory's id, the second continuing the step axis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import DIGITS_FAST, isolate_wandb, read_result, write_run_config
from vit_dt.commands import sync as sync_cmd
from vit_dt.records.wandb_files import (
    RUN_ID_FILE,
    find_offline_runs,
    last_logged_step,
    read_offline_segments,
    read_run_id,
    segment_files,
)

pytestmark = pytest.mark.slow
EPOCHS, STEPS = 3, 6
OVERRIDES = [*[o for o in DIGITS_FAST if not o.startswith("wandb.")], "wandb.mode=offline",
             "wandb.project=vit-dt-test", f"trainer.epochs={EPOCHS}", f"trainer.max_steps_per_epoch={STEPS}",
             "trainer.timer_sample_every=1", "trainer.timer_warmup_steps=0",     # a W&B row at every step
             "debug=slow_rank", "debug.delay_s={0: 0.15}"]    # ~1.5 s epochs: time to kill the run inside epoch 1


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    isolate_wandb(tmp_path, monkeypatch)
    # W&B writes its offline log every 15 s by default (rows logged since are lost when the job is killed; the
    # resumed attempt then logs the epoch rows again from its checkpoint): flush often, so that attempt 1 leaves
    # rows behind whatever this machine's speed.
    monkeypatch.setenv("WANDB__TRANSACTION_LOG_FLUSH_INTERVAL", "0.2")


def _start(run_dir: Path) -> subprocess.Popen:
    # Each attempt its own W&B helper, as each Slurm attempt has: not the one of this pytest process (wandb puts its
    # address in WANDB_SERVICE once a test here used W&B), which would still hold the killed attempt's run open.
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vit_dt.run.rank", str(run_dir)], env=env,
                            stdout=open(run_dir / f"attempt-{time.monotonic_ns()}.log", "w"), stderr=subprocess.STDOUT)


def _helpers_of(pid: int) -> list[int]:
    """wandb-core processes serving `pid` (they run in a session of their own, started with --pid PID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--pid" in args and args[args.index(b"--pid") + 1:args.index(b"--pid") + 2] == [str(pid).encode()]:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _kill_after_checkpoint(run_dir: Path, epochs_done: int) -> None:
    """SIGKILL the run and its W&B helper once its epoch checkpoint is there and W&B has that epoch's rows on disk
    (so: inside the next epoch), as Slurm ends a job it requeues."""
    proc = _start(run_dir)
    target = run_dir / "checkpoints" / f"epoch-{epochs_done}"
    deadline = time.monotonic() + 300

    def on_disk() -> int:
        run_id = read_run_id(run_dir)
        return (last_logged_step(segment_files(run_dir, run_id)) or 0) if run_id else 0

    while not (target.exists() and on_disk() >= epochs_done * STEPS):
        assert proc.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    helpers = _helpers_of(proc.pid)
    assert helpers, "no wandb-core of the run's own"
    proc.send_signal(signal.SIGKILL)
    for pid in helpers:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in helpers):
        assert time.monotonic() < deadline, "wandb-core outlived the run"
        time.sleep(0.05)


def test_a_requeued_run_is_one_wandb_run_with_a_continuing_step_axis(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run_config(run_dir, [*OVERRIDES, f"out_dir={run_dir}"])
    _kill_after_checkpoint(run_dir, epochs_done=1)
    run_id = read_run_id(run_dir)
    assert run_id and (run_dir / RUN_ID_FILE).exists()         # made by the first start

    proc = _start(run_dir)                                      # the requeued attempt: same run dir, same config
    assert proc.wait(timeout=300) == 0, sorted(run_dir.glob("attempt-*.log"))[-1].read_text()[-3000:]
    log = sorted(run_dir.glob("attempt-*.log"))[-1].read_text()
    assert "resumed from" in log and "epoch-1" in log
    assert f"W&B run {run_id} continues (segment 2" in log
    assert read_result(run_dir)["status"] == "completed"
    assert read_run_id(run_dir) == run_id                       # reused, not replaced

    first, second = read_offline_segments(run_dir)
    assert first["run_id"] == second["run_id"] == run_id and first["resume"] and second["resume"]
    steps = [[row["_step"] for row in segment["history"]] for segment in (first, second)]
    assert steps[0] == list(range(1, len(steps[0]) + 1)) and len(steps[0]) >= STEPS   # epoch 0 and some of 1
    assert steps[1] and steps[1][0] > steps[0][-1]             # continues the step axis, never goes back
    # Every global step is in W&B exactly once: what attempt 1 logged of the interrupted epoch 1 (redone by
    # attempt 2 from the epoch-1 checkpoint) is not logged again, and what it did not get to disk is.
    assert steps[0] + steps[1] == list(range(1, EPOCHS * STEPS + 1))
    epochs = [row["_step"] for segment in (first, second) for row in segment["history"] if "epoch/val_acc" in row]
    assert epochs == [STEPS, 2 * STEPS, 3 * STEPS]              # each epoch once, at its last global step
    assert second["exit_code"] == 0 and second["summary"]["status"] == "completed"
    assert second["config"]["trainer.epochs"] == EPOCHS

    segments = find_offline_runs(run_dir)
    assert sync_cmd.main([str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"to sync  {segments[0]}  (W&B run {run_id}: segment 1 of 2)" in out
    assert f"to sync  {segments[1]}  (W&B run {run_id}: segment 2 of 2)" in out
