"""A newcomer's first `vit-dt train trainer.nproc=2`, exactly as typed (no other override): it learns the default
dataset, its terminal is quiet and its step lines say how training goes, and Ctrl-C in a real terminal ends it in
one line. The out directory comes from VIT_DT_OUT_DIR, as conf/config.yaml reads it."""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import read_result, run_cli, run_dir_from_output

pytestmark = pytest.mark.slow

DEFAULT_RUN = ("train", "trainer.nproc=2")
STEP_LINE = re.compile(r"epoch \d+ step \d+/\d+ loss [\d.]+ [\d.]+ img/s lr [\d.e+-]+$", re.M)
CUDA_HOME_WARNING = "No CUDA runtime is found, using CUDA_HOME="


def _first_run_env(tmp_path: Path) -> dict[str, str]:
    """A fresh user's environment: outputs under tmp_path, W&B's defaults (offline) with its caches kept there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(VIT_DT_OUT_DIR=str(tmp_path / "outputs"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    return env


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("first-run")
    env = _first_run_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", *DEFAULT_RUN], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, read_result(run_dir), proc


def test_the_default_run_learns_the_default_dataset_to_90_percent(default_run):
    """The acceptance of issue 17: two CPU ranks, no override, >= 90% held-out accuracy on digits."""
    _, result, _ = default_run
    assert result["status"] == "completed" and result["world_size"] == 2
    assert result["config"]["dataset"]["name"] == "digits"
    assert result["final_val_acc"] >= 0.90, [e["val_acc"] for e in result["epochs"]]


def test_step_lines_carry_loss_throughput_and_lr(default_run):
    _, _, proc = default_run
    lines = STEP_LINE.findall(proc.stdout)
    assert len(lines) >= 2, proc.stdout[-3000:]


def test_irrelevant_warnings_stay_in_the_run_log_not_the_terminal(default_run):
    run_dir, _, proc = default_run
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert STEP_LINE.search(log) and "epoch 0:" in log           # the run log holds rank 0's whole output
    assert CUDA_HOME_WARNING not in proc.stdout + proc.stderr
    import torch

    if not torch.cuda.is_available():                               # where torch warns about CUDA_HOME at all
        assert CUDA_HOME_WARNING in log


class _Terminal:
    """A real pseudo-terminal: the command's controlling tty, everything it prints read from the master side."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        self.output = bytearray()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:                 # EIO: every process holding the slave side has closed it
                return
            if not chunk:
                return
            self.output += chunk

    def text(self, start: int = 0) -> str:
        return bytes(self.output[start:]).decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: re.Pattern, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pattern.search(self.text()):
            assert self.proc.poll() is None, f"ended ({self.proc.returncode}) before {pattern.pattern}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {pattern.pattern} in {timeout_s} s:\n{self.text()}"
            time.sleep(0.2)

    def ctrl_c(self) -> int:
        """Types Ctrl-C: the line discipline sends SIGINT to the foreground process group, as at a shell."""
        mark = len(self.output)
        os.write(self.master, b"\x03")
        return mark

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        os.close(self.master)


def _rank_processes(run_dir: Path) -> list[int]:
    """Live processes started as `python -m vit_dt.run.rank RUN_DIR` for this run."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vit_dt.run.rank" in argv and str(run_dir).encode() in argv:
            pids.append(int(entry.name))
    return pids


def test_ctrl_c_in_a_terminal_ends_a_two_rank_run_in_one_line_with_status_130(tmp_path):
    terminal = _Terminal([sys.executable, "-m", "vit_dt.cli", *DEFAULT_RUN], _first_run_env(tmp_path))
    try:
        terminal.wait_for(STEP_LINE, timeout_s=600)                  # training has started on both ranks
        run_dir = run_dir_from_output(terminal.text())
        assert _rank_processes(run_dir), "no rank process found while training"
        mark = terminal.ctrl_c()
        assert terminal.proc.wait(timeout=120) == 130, terminal.text()
        terminal.reader.join(timeout=10)
        after = terminal.text(mark).replace("^C", "")                # the terminal's own echo of the key
        lines = [line for line in after.splitlines() if line.strip()]
        assert lines == [f"vit-dt train: interrupted; run dir kept at {run_dir}"], after
        assert "Traceback" not in terminal.text(), terminal.text()
        assert run_dir.is_dir() and (run_dir / "config.yaml").is_file()
        # stopped, not failed: no failed result.json, no rank's error file
        assert not (run_dir / "result.json").exists() and not list(run_dir.glob("error-rank*.txt"))
        assert _rank_processes(run_dir) == []
    finally:
        terminal.close()


def test_a_failing_rank_still_ends_the_launcher_with_a_one_line_summary(tmp_path):
    """The other way `vit-dt train` can end early: a rank fails. Its traceback is the rank's (in its log and on the
    terminal), and the launcher adds where the logs are."""
    proc = run_cli("train", "trainer.nproc=1", "wandb.mode=disabled", "trainer.micro_batch=4096",
                   env={"VIT_DT_OUT_DIR": str(tmp_path / "outputs")})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = run_dir_from_output(proc.stdout)
    assert f"vit-dt train: run failed (exit status 1); logs: {run_dir / 'logs'}" in proc.stderr
    assert read_result(run_dir)["status"] == "failed"
