"""A real multi-node Slurm cluster on this machine, for tests and as a playground.

    from vit_dt import localcluster
    info = localcluster.up()          # idempotent; a few seconds from cold
    os.environ.update(localcluster.env())
    ...                               # sbatch / srun / submitit against partitions cpu and gpu
    localcluster.down()

Needs root and the Debian packages that scripts/install-system-deps.sh installs. See docs/local-cluster.md.
"""

from .config import ClusterSpec, NodeSpec
from .lifecycle import ClusterInfo, down, env, saved_spec, status, up
from .system import ClusterError, missing_packages

__all__ = [
    "ClusterError",
    "ClusterInfo",
    "ClusterSpec",
    "NodeSpec",
    "down",
    "env",
    "missing_packages",
    "saved_spec",
    "status",
    "up",
]
