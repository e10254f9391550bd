"""Each rank's heartbeat: who it is, where it runs, and what it is doing, refreshed by a background thread.

When a collective times out, the rank that gave up knows only that *some* peer stopped answering: gloo and NCCL
do not say which. Every rank therefore keeps a small file in its run directory (`heartbeats/rank-<R>.json`) that a
daemon thread rewrites every few seconds with the rank's current phase. A stopped (SIGSTOP) or dead rank stops
writing, while a rank that merely waits inside a collective keeps beating, so the stale files name the silent
ranks, their hosts and their last phases. The failure record and `vit-dt status` show them.

The files live beside result.json on the shared file system, so a rank on one node reads the beats of another.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vit_dt import atomic

log = logging.getLogger("vit_dt.run.heartbeat")

HEARTBEAT_DIR = "heartbeats"
# A beat this many intervals old means the rank stopped: one missed beat may be a slow shared file system.
STALE_AFTER_BEATS = 3


def heartbeat_interval_s(dist_timeout_s: float) -> float:
    """Seconds between beats: a tenth of the collective bound, so a rank that stopped is seen as stale well
    before the bound trips; between 1 s and 15 s (a thousand ranks beating every second would load a shared file
    system)."""
    return min(15.0, max(1.0, float(dist_timeout_s) / 10))


def beat_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR / f"rank-{rank}.json"


class Heartbeat:
    """This rank's heartbeat. `phase()` says what the rank does now ("start-up: rendezvous", "epoch 3: training");
    `step()` counts training steps within it. The thread writes both every `interval_s`."""

    def __init__(self, run_dir: str | os.PathLike, rank: int, interval_s: float, attempt: str):
        self.path = beat_path(run_dir, rank)
        self.rank, self.interval_s, self.attempt = rank, interval_s, attempt
        # Slurm's node name where there is one: several nodes may share a host name (containers, the local cluster)
        self.host, self.pid = os.environ.get("SLURMD_NODENAME") or socket.gethostname(), os.getpid()
        self.started = time.time()
        self._phase, self._phase_since, self._step = "start-up", self.started, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_once = False

    def start(self) -> "Heartbeat":
        self._write()
        self._thread = threading.Thread(target=self._beat, name=f"vit-dt-heartbeat-{self.rank}", daemon=True)
        self._thread.start()
        return self

    def phase(self, name: str) -> None:
        self._phase, self._phase_since, self._step = name, time.time(), None
        self._write()

    def step(self, number: int) -> None:
        self._step = number      # written by the thread: no file system call in the training loop

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def _write(self) -> None:
        phase = self._phase if self._step is None else f"{self._phase} (step {self._step})"
        try:
            atomic.write_json(self.path, {"rank": self.rank, "host": self.host, "pid": self.pid, "phase": phase,
                                          "phase_since": self._phase_since, "attempt": self.attempt,
                                          "beat": time.time(), "interval_s": self.interval_s})
        except OSError as exc:     # a full or read-only file system must not stop training; say it once
            if not self._failed_once:
                log.warning("heartbeat of rank %d not written (%s): a stall would not name this rank", self.rank, exc)
                self._failed_once = True


_current: Heartbeat | None = None


def attempt_id(master_addr: str, master_port: int) -> str:
    """What this attempt's ranks share and an earlier attempt's (a requeue, a resume) do not: the Slurm job and its
    restart count, and the rendezvous address."""
    job = os.environ.get("SLURM_JOB_ID", "local")
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}@{master_addr}:{master_port}"


def start(run_dir: str | os.PathLike, rank: int, dist_timeout_s: float, attempt: str) -> Heartbeat:
    """Start this process's heartbeat; `phase()` and `step()` below then report to it."""
    global _current
    if _current is not None:
        _current.stop()
    _current = Heartbeat(run_dir, rank, heartbeat_interval_s(dist_timeout_s), attempt).start()
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def phase(name: str) -> None:
    """Say what this rank does now; a no-op without a heartbeat (unit tests, a single process)."""
    if _current is not None:
        _current.phase(name)


def step(number: int) -> None:
    if _current is not None:
        _current.step(number)


@dataclass(frozen=True)
class SilentRank:
    rank: int
    host: str | None
    phase: str | None        # None: no beat from this attempt
    silent_s: float | None   # seconds since its last beat

    def describe(self) -> str:
        if self.phase is None:
            return f"rank {self.rank} never started in this attempt"
        where = f" on {self.host}" if self.host else ""
        return f"rank {self.rank}{where} went silent {self.silent_s:.0f} s ago during '{self.phase}'"

    def as_record(self) -> dict:
        return {"rank": self.rank, "host": self.host, "phase": self.phase, "silent_s": self.silent_s}


def silent_ranks(run_dir: str | os.PathLike, world_size: int, attempt: str, now: float | None = None,
                 skip: int | None = None) -> list[SilentRank]:
    """The ranks of `attempt` whose last beat is more than STALE_AFTER_BEATS intervals old, or that have not beaten
    in this attempt at all (a file left by an earlier attempt does not count). `skip`: the asking rank itself."""
    import json

    now = time.time() if now is None else now
    silent = []
    for rank in range(world_size):
        if rank == skip:
            continue
        try:
            beat = json.loads(beat_path(run_dir, rank).read_text())
        except (OSError, ValueError):
            beat = None
        if beat is None or beat.get("attempt") != attempt:
            silent.append(SilentRank(rank, beat and beat.get("host"), None, None))
            continue
        age = now - float(beat["beat"])
        if age > STALE_AFTER_BEATS * float(beat.get("interval_s") or 1.0):
            silent.append(SilentRank(rank, beat.get("host"), beat.get("phase"), age))
    return silent
