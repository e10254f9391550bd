"""Start N ranks of one run on this machine (no Slurm): `vit-dt train trainer.nproc=N`.

Each rank is a fresh `python -m vit_dt.run.rank RUN_DIR` process with the env:// rendezvous variables set; rank 0
prints to this terminal, the others log to RUN_DIR/logs/. If a rank fails, the others are stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vit_dt.run.distributed import free_port, quiet_openmp

GRACE_S = 10.0


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(run_dir: Path, nproc: int, timeout_s: float | None = None) -> int:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(threads_per_rank(nproc)))
        quiet_openmp(env)     # before the rank imports torch: passive OpenMP waits on a CPU-only machine
        out = None if rank == 0 else open(logs / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "vit_dt.run.rank", str(run_dir)], env=env,
                                      stdout=out, stderr=subprocess.STDOUT if out else None))
    return _wait(procs, timeout_s)


def _wait(procs: list[subprocess.Popen], timeout_s: float | None) -> int:
    deadline = time.monotonic() + timeout_s if timeout_s else None
    failed_at = None
    while any(p.poll() is None for p in procs):
        codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
        now = time.monotonic()
        if codes and failed_at is None:
            failed_at = now
        if (failed_at is not None and now - failed_at > GRACE_S) or (deadline and now > deadline):
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)
