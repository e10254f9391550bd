"""DeepSpeed's C++ ops that it compiles on first use: one cache, an announced build, and a bounded lock wait.

On CPU, `deepspeed.initialize` builds its shared-memory all-reduce op (`deepspeed_shm_comm`, about two minutes on
two cores) the first time, into `$TORCH_EXTENSIONS_DIR` (vit_dt.paths.torch_extensions_dir: the same cache for
the CLI, the Makefile and Slurm jobs). torch serialises builders with a lock file in the op's build directory and
waits on it without a limit; a builder that was stopped (SIGSTOP, a frozen node) held every later rank there.
`load_ops` loads the op itself before DeepSpeed asks for it: it says when it builds, keeps the compiler's lines
out of the log, and gives up on a lock whose holder stopped, naming the lock and the holder.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vit_dt.engines.deepspeed_ops")

# What DeepSpeed builds at initialize on this accelerator (its accelerator returns None where it builds nothing).
INITIALIZE_OPS = ("ShareMemCommBuilder",)
BUILD_EXPECTED = "about 2 minutes on 2 CPU cores"
# A holder we cannot see (another node over a shared file system) may build for minutes; past this, give up.
UNSEEN_HOLDER_BOUND_S = 900.0
POLL_S = 0.5
SAY_WAIT_AFTER_S = 5.0


class OpLockTimeout(TimeoutError):
    """A wait on an op's build lock that outlived its bound."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    state: str          # /proc/<pid>/stat's state letter: R running, S sleeping, T stopped, ...

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")

    def describe(self) -> str:
        what = "stopped" if self.stopped else {"Z": "a zombie", "D": "in disk wait"}.get(self.state, "running")
        return f"pid {self.pid} on this node ({what})"


def lock_holder(lock_path: str | os.PathLike) -> LockHolder | None:
    """The process on this node holding an flock on `lock_path`, from /proc/locks; None if none is visible (no
    holder, or one on another node of a shared file system)."""
    try:
        stat = os.stat(lock_path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f":{stat.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiter's line has "->" after the number
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(inode):
            pid = int(fields[4])
            if pid == os.getpid():
                continue
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = "?"
            return LockHolder(pid, state)
    return None


def wait_for(work: threading.Thread, lock_path: Path, what: str, stopped_bound_s: float,
             unseen_bound_s: float = UNSEEN_HOLDER_BOUND_S) -> None:
    """Wait for `work` (a started thread that takes the lock at `lock_path`), giving up when the lock's holder
    has been stopped for `stopped_bound_s`, or when no holder is visible and the wait passed `unseen_bound_s`. A
    running holder (a build in progress) is waited for."""
    started = time.monotonic()
    stopped_since = None
    said = False
    while work.is_alive():
        work.join(POLL_S)
        if not work.is_alive():
            break
        waited = time.monotonic() - started
        holder = lock_holder(lock_path) if lock_path.exists() else None
        if holder is not None and not said and waited > SAY_WAIT_AFTER_S:
            log.warning("waiting for %s: its lock %s is held by %s", what, lock_path, holder.describe())
            said = True
        if holder is not None and holder.stopped:
            stopped_since = stopped_since or time.monotonic()
            if time.monotonic() - stopped_since > stopped_bound_s:
                raise OpLockTimeout(f"gave up after {waited:.0f} s waiting for {what}: its lock {lock_path} is "
                                    f"held by {holder.describe()}; continue or kill that process, or remove "
                                    f"{lock_path.parent} to rebuild")
            continue
        stopped_since = None
        if holder is None and waited > unseen_bound_s:
            raise OpLockTimeout(f"gave up after {waited:.0f} s loading {what} (lock {lock_path}, holder not on this "
                                f"node): is another node's build stuck? remove {lock_path.parent} to rebuild")


def load_ops(stopped_bound_s: float) -> None:
    """Load (building once if needed) the ops `deepspeed.initialize` would build, announcing a build and bounding
    a wait on a stopped builder's lock by `stopped_bound_s`. DeepSpeed then finds them loaded."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    from vit_dt.paths import torch_extensions_dir

    cache = torch_extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(cache)      # torch reads it at build time
    for name in INITIALIZE_OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            continue
        build_dir = cache / builder.NAME
        what = f"DeepSpeed's {builder.NAME} op"
        if not (build_dir / f"{builder.NAME}.so").exists():
            log.warning("building %s once (%s) into %s; later runs reuse it", what, BUILD_EXPECTED, build_dir)
        failure: list[BaseException] = []

        def load() -> None:
            try:
                builder.load(verbose=False)     # compiler lines stay out; a failed build raises with them
            except BaseException as exc:       # re-raised in the caller's thread
                failure.append(exc)

        work = threading.Thread(target=load, name=f"vit-dt-load-{builder.NAME}", daemon=True)
        started = time.monotonic()
        work.start()
        wait_for(work, build_dir / "lock", what, stopped_bound_s)
        if failure:
            raise failure[0]
        if time.monotonic() - started > 10:
            log.info("%s ready after %.0f s", what, time.monotonic() - started)
