"""Start N ranks of one run on this machine (no Slurm): `vit-dt train trainer.nproc=N`.

Each rank is a fresh `python -m vit_dt.run.rank RUN_DIR` process with the env:// rendezvous variables set. Every
rank's whole output lands in RUN_DIR/logs/rank<R>.log (the run log); rank 0's also reaches this terminal, less
the lines in TERMINAL_NOISE. If a rank fails, the others are stopped.

Ctrl-C: the ranks are started with SIGINT ignored (an ignored signal survives exec, and Python then installs no
KeyboardInterrupt handler), so the terminal's SIGINT, which reaches the whole foreground process group, stops the
launcher alone. It then stops the ranks with SIGTERM, which unwinds each rank quietly (a lock its DeepSpeed op build
held is released: vit_dt.run.rank.run_stoppable), and raises `Interrupted` for its caller to say so in one line.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from vit_dt.run.distributed import free_port, quiet_openmp

GRACE_S = 10.0
# Lines that say nothing to someone training here: kept in the run log, left out of the terminal.
TERMINAL_NOISE = (
    re.compile(rb"No CUDA runtime is found, using CUDA_HOME="),      # torch's cpp_extension on a machine without CUDA
    # `import deepspeed` compiles tiny test programs to see which ops this machine could build (libaio, ...), and
    # setuptools logs each gcc line; DeepSpeed then says its op loaded. Neither is news to the user.
    re.compile(rb"\] compilers\.C\.|^(gcc|g\+\+|c\+\+) "),
    re.compile(rb"^DeepSpeed deepspeed\.ops\.\S+ built successfully"),
)


class Interrupted(Exception):
    """Ctrl-C reached the launcher; every rank has been stopped."""


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def is_noise(line: bytes) -> bool:
    return any(pattern.search(line) for pattern in TERMINAL_NOISE)


class _Forwarder:
    """Copies rank 0's stdout and stderr, line by line, to its log file and (unless noise, or once muted) to this
    process's own stdout and stderr."""

    def __init__(self, log_path: Path):
        self.log = open(log_path, "ab")
        self.lock = threading.Lock()
        self.muted = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, source: IO[bytes], terminal: IO[bytes]) -> None:
        thread = threading.Thread(target=self._copy, args=(source, terminal), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _copy(self, source: IO[bytes], terminal: IO[bytes]) -> None:
        for line in iter(source.readline, b""):
            with self.lock:
                self.log.write(line)
                self.log.flush()
            if not self.muted.is_set() and not is_noise(line):
                try:
                    terminal.write(line)
                    terminal.flush()
                except (OSError, ValueError):     # the terminal went away: the log keeps everything
                    pass
        source.close()

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=GRACE_S)
        self.log.close()


def launch(run_dir: Path, nproc: int, timeout_s: float | None = None) -> int:
    """The first non-zero exit code of the ranks, else 0; raises Interrupted on Ctrl-C."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[subprocess.Popen] = []
    forwarder = _Forwarder(logs / "rank0.log")
    with _sigint_ignored():     # inherited by the ranks (see the module docstring)
        for rank in range(nproc):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       OMP_NUM_THREADS=str(threads_per_rank(nproc)), PYTHONUNBUFFERED="1")
            quiet_openmp(env)     # before the rank imports torch: passive OpenMP waits on a CPU-only machine
            out = subprocess.PIPE if rank == 0 else open(logs / f"rank{rank}.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "vit_dt.run.rank", str(run_dir)], env=env,
                                          stdout=out, stderr=subprocess.PIPE if rank == 0 else subprocess.STDOUT))
    forwarder.start(procs[0].stdout, sys.stdout.buffer)
    forwarder.start(procs[0].stderr, sys.stderr.buffer)
    try:
        return _wait(procs, timeout_s)
    except KeyboardInterrupt:
        forwarder.muted.set()       # what the stopped ranks still print goes to the run log only
        with _sigint_ignored():     # a second Ctrl-C must not cut the clean-up short
            _stop(procs)
        raise Interrupted() from None
    finally:
        forwarder.close()


class _sigint_ignored:
    """SIGINT ignored for the block (only the main thread may change signal handlers; elsewhere a no-op)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait(procs: list[subprocess.Popen], timeout_s: float | None) -> int:
    deadline = time.monotonic() + timeout_s if timeout_s else None
    failed_at = None
    while any(p.poll() is None for p in procs):
        codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
        now = time.monotonic()
        if codes and failed_at is None:
            failed_at = now
        if (failed_at is not None and now - failed_at > GRACE_S) or (deadline and now > deadline):
            _stop(procs)
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)
