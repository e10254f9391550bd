"""`python -u -m vit_dt.slurm.mpi_task FOLDER`: submitit's task runner for ranks started by `mpirun`.

mpirun starts the ranks itself, so Slurm's per-task variables describe mpirun's daemons, not the ranks:
every rank would call itself task 0 and write the same submitit result file. This wrapper maps the MPI
launcher's variables (Open MPI, PMIx, MPICH/Hydra) onto SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, gives each
rank only its own GPU when the node's allocation lists several, sends the rank's output to submitit's per-task
log files (mpirun has no per-task --output), and then runs submitit's own `submitit.core._submit`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

_RANK = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_LOCAL_RANK = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_LOCAL_SIZE = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def _first(env: MutableMapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[n] for n in names if env.get(n)), None)


def map_mpi_to_slurm(env: MutableMapping[str, str]) -> None:
    """Rewrite `env` so that SLURM_PROCID etc. describe this MPI rank (no-op outside an MPI launch)."""
    rank = _first(env, _RANK)
    if rank is None:
        return
    local_rank = _first(env, _LOCAL_RANK) or "0"
    local_size = int(_first(env, _LOCAL_SIZE) or 1)
    env["SLURM_PROCID"] = rank
    env["SLURM_LOCALID"] = local_rank
    env["SLURM_NODEID"] = str(int(rank) // max(1, local_size))  # ranks are placed node by node (ppr:N:node)
    size = _first(env, _SIZE)
    if size:
        env["SLURM_NTASKS"] = size
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if len(visible) > 1:
        env["CUDA_VISIBLE_DEVICES"] = visible[int(local_rank) % len(visible)]


def _redirect_output() -> None:
    from submitit.slurm.slurm import SlurmJobEnvironment

    os.environ.setdefault("SUBMITIT_FOLDER", sys.argv[1])
    paths = SlurmJobEnvironment().paths
    paths.folder.mkdir(parents=True, exist_ok=True)
    for stream, path in ((1, paths.stdout), (2, paths.stderr)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, stream)
        os.close(fd)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vit_dt.slurm.mpi_task SUBMITIT_FOLDER")
    map_mpi_to_slurm(os.environ)
    _redirect_output()
    from submitit.core.submission import submitit_main

    submitit_main()


if __name__ == "__main__":
    main()
