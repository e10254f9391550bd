"""Shared fixtures. `slurm_cluster`: the real local Slurm cluster (vit_dt.localcluster), once per session.
`login_node`: a real sshd on 127.0.0.1 whose sessions see that cluster, once per session.
`one_rank_group`: a real one-rank process group for in-process engines, once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local Slurm cluster (or reuse a running one) and point SLURM_CONF at it.

    Skips only when the Debian packages are absent and VIT_DT_REQUIRE_SLURM is unset (CI sets it,
    so a missing cluster fails there). Stops the cluster at the end of the session if this session
    started it, unless VIT_DT_KEEP_CLUSTER=1; a cluster that was already up is left running.
    """
    from vit_dt import localcluster

    missing = localcluster.missing_packages()
    if missing and not os.environ.get("VIT_DT_REQUIRE_SLURM"):
        pytest.skip(
            f"local Slurm cluster unavailable: Debian packages {missing} are not installed "
            "(run scripts/install-system-deps.sh as root; set VIT_DT_REQUIRE_SLURM=1 to fail instead)"
        )
    try:
        info = localcluster.up()
    except localcluster.ClusterError as err:
        pytest.fail(f"the local Slurm cluster did not start: {err}", pytrace=False)
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(info.env)
    yield info
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if info.started and os.environ.get("VIT_DT_KEEP_CLUSTER") != "1":
        localcluster.down()


@pytest.fixture(scope="session")
def login_node(slurm_cluster, tmp_path_factory):
    """A cluster login node reached over SSH (tests/fixtures/sshd.py): Debian's sshd on 127.0.0.1 with a
    throw-away key, its sessions seeing the local Slurm cluster. Skips, saying why, where openssh-server, the ssh
    client or rsync is missing, unless VIT_DT_REQUIRE_SLURM is set (CI installs them: scripts/install-system-deps.sh)."""
    from tests.fixtures import sshd

    missing = sshd.missing()
    if missing:
        why = (f"no login node to test against: Debian packages {missing} are not installed "
               "(run scripts/install-system-deps.sh as root)")
        if os.environ.get("VIT_DT_REQUIRE_SLURM"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    node = sshd.start(tmp_path_factory.mktemp("login-node"), {**slurm_cluster.env, "OMP_NUM_THREADS": "1"})
    yield node
    node.stop()


@pytest.fixture(scope="session")
def one_rank_group():
    """DeepSpeed and DDP engines need a process group: a real one-rank gloo group (in-process engines run on the
    CPU: test modules that build them set DS_ACCELERATOR=cpu on import).

    One for the whole session, not one per module: DeepSpeed caches the groups it first sees, and an engine built
    after that group was destroyed and another created fails ("Group ... is not registered")."""
    import torch.distributed as dist

    from vit_dt.run.distributed import free_port

    if dist.is_initialized():
        yield
        return
    # A tcp:// rendezvous, not RANK/MASTER_PORT variables, which would leak into other tests' subprocesses.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    previous = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"   # DeepSpeed insists on it even with a process group in place
    yield
    dist.destroy_process_group()
    if previous is None:
        os.environ.pop("LOCAL_RANK", None)
    else:
        os.environ["LOCAL_RANK"] = previous
