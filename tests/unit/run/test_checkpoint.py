"""Exact resume from atomic epoch checkpoints, with a real kill in the middle and a truncated checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import DIGITS_FAST, read_result, write_run_config

pytestmark = pytest.mark.slow
OVERRIDES = [*DIGITS_FAST, "trainer.epochs=4", "trainer.max_steps_per_epoch=12"]


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vit_dt.run.rank", str(run_dir)], env=env,
                            stdout=open(run_dir / f"attempt-{time.monotonic_ns()}.log", "w"), stderr=subprocess.STDOUT)


def _run_to_end(run_dir: Path) -> dict:
    proc = _start(run_dir)
    assert proc.wait(timeout=600) == 0, sorted(run_dir.glob("attempt-*.log"))[-1].read_text()[-3000:]
    return read_result(run_dir)


def _kill_after_checkpoint(run_dir: Path, epochs_done: int) -> None:
    proc = _start(run_dir)
    target = run_dir / "checkpoints" / f"epoch-{epochs_done}"
    deadline = time.monotonic() + 600
    while not target.exists():
        assert proc.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    write_run_config(run_dir, [*OVERRIDES, f"out_dir={run_dir}"])
    return _run_to_end(run_dir)


def test_killed_run_resumes_exactly(tmp_path, uninterrupted):
    write_run_config(tmp_path, [*OVERRIDES, f"out_dir={tmp_path}"])
    _kill_after_checkpoint(tmp_path, epochs_done=2)
    saved = torch.load(tmp_path / "checkpoints" / "epoch-2" / "state.pt", weights_only=False)
    first_attempt_times = [e["time_s"] for e in saved["train_state"]["epochs"]]

    result = _run_to_end(tmp_path)
    assert result["status"] == "completed" and len(result["epochs"]) == 4
    assert [e["time_s"] for e in result["epochs"][:2]] == first_attempt_times  # not redone
    assert result["param_checksums"] == uninterrupted["param_checksums"]
    assert [e["val_acc"] for e in result["epochs"]] == [e["val_acc"] for e in uninterrupted["epochs"]]
    # the resumed attempt's first epoch paid the warm-up again: out of the steady-state figures, like epoch 0
    assert [e["warmup"] for e in result["epochs"]] == [True, False, True, False]
    assert [e["warmup"] for e in uninterrupted["epochs"]] == [True, False, False, False]
    assert result["epoch_time_s_mean"] == (result["epochs"][1]["time_s"] + result["epochs"][3]["time_s"]) / 2


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    write_run_config(tmp_path, [*OVERRIDES, f"out_dir={tmp_path}"])
    _kill_after_checkpoint(tmp_path, epochs_done=2)
    state = tmp_path / "checkpoints" / "epoch-2" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    result = _run_to_end(tmp_path)
    log = sorted(tmp_path.glob("attempt-*.log"))[-1].read_text()
    assert "epoch-2 is unusable" in log and "checksum" in log
    assert "resumed from" in log and "epoch-1" in log
    assert result["param_checksums"] == uninterrupted["param_checksums"]


def test_no_checkpoint_starts_fresh(tmp_path):
    write_run_config(tmp_path, [*OVERRIDES, "trainer.epochs=1", f"out_dir={tmp_path}"])
    result = _run_to_end(tmp_path)
    log = sorted(tmp_path.glob("attempt-*.log"))[-1].read_text()
    assert "resumed from" not in log and result["status"] == "completed"
    assert (tmp_path / "checkpoints" / "epoch-1" / "MANIFEST.json").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
