"""The callable submitit pickles for every sweep point; it runs in each task (one per rank) of the job.

It calls the run entry (default `vit_dt.run.rank:run_rank`) and leaves a launch record per rank,
`<run_dir>/launch/rank<R>.json`: which host, Slurm/MPI ids, device and rendezvous (RANK, MASTER_ADDR/PORT)
the rank actually used. That record is what to read first when a multi-node job misbehaves.

Being a submitit Checkpointable, a point that gets USR2 before its time limit is requeued with the same
arguments; the trainer resumes from the run directory's checkpoint if there is one.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from submitit.helpers import Checkpointable

from vit_dt import atomic
from vit_dt.records.result import RESULT_NAME

DEFAULT_ENTRY = "vit_dt.run.rank:run_rank"
# Entries of sweeps queued before the package took its wings (vit_dt/run/): their sweep.json and pickled tasks still
# name them, and a requeue or `--resume` of such a sweep must keep working.
MOVED_ENTRIES = {"vit_dt.train:run_rank": DEFAULT_ENTRY, "vit_dt.preflight:run_rank": "vit_dt.run.preflight:run_rank"}
RECORDED_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
    "SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "SLURMD_NODENAME", "SLURM_JOB_PARTITION", "SLURM_RESTART_COUNT",
    "SLURM_CLUSTER_NAME",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
    "SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS",
)


def load_entry(spec: str) -> Callable[[dict, str], Any]:
    """`module:function` -> the function (a clear error for a typo, before anything is submitted)."""
    module_name, sep, attr = MOVED_ENTRIES.get(spec, spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry {spec!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"entry {spec!r} cannot be loaded: {exc}") from None


def noop_entry(cfg: dict[str, Any], run_dir: str) -> None:
    """An entry that trains nothing (`hydra.launcher.entry=vit_dt.slurm.job_entry:noop_entry`): for timing the
    orchestration alone (benchmarks/bench_submit.py) and checking a cluster's launch wiring."""
    return None


class PointTask(Checkpointable):
    """One sweep point: `entry(cfg, run_dir)` in every rank of its job."""

    def __init__(self, cfg: dict[str, Any], run_dir: str, entry: str = DEFAULT_ENTRY) -> None:
        from vit_dt.records.secrets import scrub_secrets

        # submitit pickles the task into the sweep folder: no secret goes with it. The job reads the W&B key from
        # the environment sbatch passes on, as W&B itself does.
        self.cfg = scrub_secrets(cfg)
        self.run_dir = str(run_dir)
        self.entry = entry

    def __call__(self) -> Any:
        started = time.time()
        done = completed_result(Path(self.run_dir))
        if done is not None:
            # A requeue that lands after the run recorded its result (USR2 between result.json and exit) must not
            # train again and append a second record to the results store.
            import vit_dt

            print(f"vit-dt: {self.run_dir} already holds a completed result.json; nothing to do "
                  f"(code: {Path(vit_dt.__file__).resolve().parent})", flush=True)
            return done
        _clear_own_error(Path(self.run_dir))
        status = "failed"
        try:
            result = load_entry(self.entry)(self.cfg, self.run_dir)
            status = "returned"
            # submitit pickles the result after this returns; then the task leaves without a teardown abort.
            from vit_dt.run.distributed import exit_without_teardown_after_success

            exit_without_teardown_after_success()
            return result
        except SystemExit:
            status = "interrupted"  # submitit's exit after checkpoint + requeue (USR2): the job runs again
            raise
        finally:
            _write_launch_record(Path(self.run_dir), started, status)


def _rank_label() -> str:
    return os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0")


def _clear_own_error(run_dir: Path) -> None:
    """A requeued attempt starts clean: in a multi-rank job the other ranks of the interrupted attempt usually
    record the broken connection to rank 0 as their error, which is not why anything failed."""
    try:
        (run_dir / f"error-rank{_rank_label()}.txt").unlink(missing_ok=True)
    except OSError:
        pass


def completed_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result.json when it says `completed`, else None (missing, failed, unreadable)."""
    try:
        result = json.loads((run_dir / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "completed" else None


def _write_launch_record(run_dir: Path, started: float, status: str) -> None:
    import vit_dt
    from vit_dt.records.provenance import container_seen

    rank = _rank_label()
    # code: where this attempt imported vit_dt from (the sweep's snapshot, unless it was submitted --no-snapshot)
    record = {"rank_label": rank, "hostname": socket.gethostname(), "pid": os.getpid(), "status": status,
              "code": str(Path(vit_dt.__file__).resolve().parent),
              "seconds": round(time.time() - started, 3), "container": container_seen(),
              "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ}}
    try:
        atomic.write_text(run_dir / "launch" / f"rank{rank}.json", json.dumps(record, indent=1, sort_keys=True))
    except OSError:  # a missing record must never fail a run that trained
        pass
