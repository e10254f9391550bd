"""Ending a newcomer's `vit-dt train trainer.nproc=2` early: Ctrl-C in a real terminal ends it in one line with exit
status 130, and a failing rank ends it with a one-line summary. (That the same run, left alone, learns the default
dataset and keeps its terminal quiet: tests/e2e/test_train.py.)"""
from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import fresh_user_env, read_result, run_cli, run_dir_from_output

pytestmark = pytest.mark.slow

DEFAULT_RUN = ("train", "trainer.nproc=2")
STEP_LINE = re.compile(r"epoch \d+ step \d+/\d+ loss [\d.]+ [\d.]+ img/s lr [\d.e+-]+$", re.M)


class _Terminal:
    """A real pseudo-terminal: the command's controlling tty, everything it prints read from the master side."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        self.output = bytearray()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=self._foreground_job)
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @staticmethod
    def _foreground_job() -> None:
        """In the child, before exec: the pty becomes its controlling terminal, and SIGINT gets its default action
        back, as an interactive shell gives a foreground job. A suite started in the background by a script
        (`make test &`) inherits SIGINT ignored, and an ignored signal survives exec: Ctrl-C would do nothing."""
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

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
    terminal = _Terminal([sys.executable, "-m", "vit_dt.cli", *DEFAULT_RUN], fresh_user_env(tmp_path))
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
