"""Who am I in the job? Rank discovery for every way vit-dt starts ranks, and process-group set-up.

Sources, in order: MPI (mpirun or `srun --mpi=pmix`, through mpi4py), an explicit RANK/WORLD_SIZE environment
(`vit-dt train trainer.nproc=N`, torchrun), a Slurm step (srun: SLURM_PROCID ...), submitit's local executor, and
finally a single process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from vit_dt.config.choices import MPI_LAUNCHERS

PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    nodes: int
    master_addr: str
    master_port: int
    source: str  # single | env | slurm | mpi | submitit-local

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        """The variables torch.distributed's env:// rendezvous and DeepSpeed read (LOCAL_RANK included: without
        it DeepSpeed falls back to its own MPI discovery)."""
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


def port_for_job(job_id: str, environ: Mapping[str, str] = os.environ) -> int:
    """A rendezvous port derived from the Slurm job id, so two jobs sharing a node never both take 29500.

    Shifted by the cluster's identity (its name and slurm.conf): two Slurm clusters sharing machines (the test
    suite's local cluster beside another one) number their jobs from 1 alike, and job 11 of each took port 20011."""
    import zlib

    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    cluster = f"{environ.get('SLURM_CLUSTER_NAME', '')}|{environ.get('SLURM_CONF', '')}"
    return PORT_BASE + (int(digits) + zlib.crc32(cluster.encode())) % PORT_SPAN


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_address(host: str) -> str:
    """An address of `host` that this node can reach; the name itself when it does not resolve here."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def first_slurm_host(nodelist: str) -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def _slurm_job_id() -> str:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID", "0")


def _from_mpi() -> DistEnv:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank = int(os.environ.get("SLURM_LOCALID") or os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
                     or os.environ.get("MPI_LOCALRANKID") or local.Get_rank())
    node_rank = int(os.environ.get("SLURM_NODEID") or os.environ.get("OMPI_COMM_WORLD_NODE_RANK") or 0)
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
    if "SLURM_JOB_ID" in os.environ:
        port = port_for_job(_slurm_job_id())
    else:
        port = comm.bcast(free_port() if rank == 0 else None, root=0)
    # Rank 0 tells everyone where it is: MPI's own notion of rank 0, whatever the host names are.
    addr = comm.bcast(resolve_address(os.environ.get("SLURMD_NODENAME") or socket.gethostname())
                      if rank == 0 else None, root=0)
    return DistEnv(rank, size, local_rank, node_rank, nodes, addr, port, "mpi")


def _from_env() -> DistEnv:
    world = int(os.environ["WORLD_SIZE"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    rank = int(os.environ["RANK"])
    return DistEnv(rank=rank, world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", rank % local_world)),
                   node_rank=int(os.environ.get("GROUP_RANK", rank // local_world)),
                   nodes=max(1, world // local_world), master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=int(os.environ.get("MASTER_PORT", 29500)), source="env")


def _from_slurm() -> DistEnv:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
    return DistEnv(rank=int(os.environ["SLURM_PROCID"]), world_size=int(os.environ["SLURM_NTASKS"]),
                   local_rank=int(os.environ.get("SLURM_LOCALID", 0)), node_rank=int(os.environ.get("SLURM_NODEID", 0)),
                   nodes=int(os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1),
                   master_addr=resolve_address(first_slurm_host(nodelist)),
                   master_port=port_for_job(_slurm_job_id()), source="slurm")


def _from_submitit_local() -> DistEnv:
    world = int(os.environ["SUBMITIT_LOCAL_NTASKS"])
    rank = int(os.environ["SUBMITIT_LOCAL_GLOBALID"])
    return DistEnv(rank=rank, world_size=world, local_rank=int(os.environ.get("SUBMITIT_LOCAL_LOCALID", rank)),
                   node_rank=0, nodes=1, master_addr="127.0.0.1",
                   master_port=port_for_job(os.environ.get("SUBMITIT_LOCAL_JOB_ID", "0")), source="submitit-local")


def discover(launcher: str | None = None) -> DistEnv:
    if launcher in MPI_LAUNCHERS or ("OMPI_COMM_WORLD_SIZE" in os.environ and "RANK" not in os.environ):
        return _from_mpi()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _from_env()
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:
        return _from_slurm()
    if "SUBMITIT_LOCAL_NTASKS" in os.environ:
        return _from_submitit_local()
    return DistEnv(0, 1, 0, 0, 1, "127.0.0.1", free_port(), "single")


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def choose_backend() -> str:
    """NCCL where this rank has a GPU, gloo otherwise (CPU partitions, CI)."""
    return "nccl" if use_cuda() else "gloo"


# OpenMP threads that wait for work spin on their core (GNU libgomp: up to GOMP_SPINCOUNT=300000 spins per wait
# unless OMP_WAIT_POLICY says otherwise; Intel's runtime for KMP_BLOCKTIME=200 ms). On a core other processes also
# want, the spinning thread and the one it waits for take turns: a 1-rank CPU baseline on a loaded 2-core machine
# ran 8x slower per step than each rank of a 2-rank run, and the report showed 815% efficiency. Passive waiting
# costs a wake-up per parallel region instead. torch sets neither variable; the user's own setting wins.
QUIET_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def gpu_device_files() -> bool:
    """Whether this node shows a GPU device file (NVIDIA or ROCm), without importing torch."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def quiet_openmp(environ: dict | os._Environ = os.environ, gpu: bool | None = None) -> dict:
    """Set QUIET_OPENMP in `environ` where the user has not, on CPU-only nodes (`gpu`: default gpu_device_files());
    returns what was set. Must run before torch is imported: OpenMP runtimes read these once, when loaded."""
    if gpu if gpu is not None else gpu_device_files():
        return {}
    added = {k: v for k, v in QUIET_OPENMP.items() if k not in environ}
    environ.update(added)
    return added


def prepare_accelerator_env() -> None:
    """Must run before deepspeed is imported: DeepSpeed picks its accelerator at import time."""
    if "DS_ACCELERATOR" not in os.environ and not use_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"


def init_process_group(env: DistEnv, timeout_s: float) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    env.export()
    bound = timedelta(seconds=timeout_s)
    dist.init_process_group(backend=choose_backend(), init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=bound)
    bound_later_groups(bound)


def bound_later_groups(bound: timedelta) -> None:
    """Give every process group made later without a timeout this run's bound instead of torch's 30 minutes.

    DeepSpeed makes its own groups (`dist.new_group(ranks)`, no timeout): torch then takes its module default, and
    a stopped rank held a DeepSpeed job for 22 minutes where trainer.dist_timeout_s promised 120 s. torch reads
    that default when each group is made (distributed_c10d._get_default_timeout), so setting it here bounds them."""
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = bound
    if isinstance(c10d.default_pg_nccl_timeout, timedelta):     # None where torch was built without NCCL
        c10d.default_pg_nccl_timeout = bound


def _single_process() -> bool:
    """No initialised process group (a single process, a unit test), or a group of one: nothing to gather."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


def gather_to_all_ranks(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (`all_gather_object`).

    Without an initialised process group (a single process) this is just [value]. A collective: every rank
    must call it. With NCCL the objects travel through the current CUDA device, so set it first.
    """
    import torch.distributed as dist

    if _single_process():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def gather_to_rank0(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0; None on the other ranks (`gather_object`).

    Without an initialised process group (a single process) this is just [value]. A collective: every rank
    must call it. With NCCL the objects travel through the current CUDA device, so set it first.
    """
    import torch.distributed as dist

    if _single_process():
        return [value]
    rank = dist.get_rank()
    gathered: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered if rank == 0 else None


def exit_without_teardown_after_success() -> None:
    """Make this process leave with status 0, skipping interpreter teardown, once it exits normally.

    A rank that finished its run (result.json, results store and W&B already closed) sometimes aborted while the
    interpreter tore down torch's gloo / DeepSpeed's communication threads: "terminate called without an active
    exception", SIGABRT, exit status 134; seen twice in three full test-suite runs here. Slurm then marks a
    completed point failed. Registered last, this atexit handler runs first: it flushes and `os._exit(0)`s before
    any C++ destructor runs. Only call it after the work succeeded; a failing rank keeps its normal exit.
    """
    import atexit
    import logging

    def leave() -> None:
        mpi = sys.modules.get("mpi4py.MPI")   # mpirun counts a rank that skipped MPI_Finalize as failed
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.Finalize()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    atexit.register(leave)


def destroy_process_group() -> None:
    """Without it, gloo ranks sometimes abort at interpreter exit (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
