"""`up`, `down`, `status`, `env`: the local cluster as a whole."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import daemons, system
from .config import DEFAULT_STATE_DIR, STATE_DIR_ENV, ClusterSpec


@dataclass(frozen=True)
class ClusterInfo:
    """What a client needs to know about a running local cluster."""

    state_dir: Path
    slurm_conf: Path
    cluster_name: str
    partitions: dict[str, list[str]]
    default_partition: str
    started: bool  # False: it was already up and `up` changed nothing
    seconds: float  # how long `up` took
    logs: Path = field(default=Path())

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.slurm_conf)}

    @property
    def export_line(self) -> str:
        return f"export SLURM_CONF={self.slurm_conf}"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def saved_spec(state_dir: Path | None = None) -> ClusterSpec:
    """The spec `up` last used in `state_dir` (so `down` finds the right PID files), else the default."""
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
    spec_file = state_dir / "spec.json"
    if spec_file.exists():
        return ClusterSpec.from_json(spec_file.read_text())
    return ClusterSpec(state_dir=state_dir)


@contextlib.contextmanager
def _locked(spec: ClusterSpec) -> Iterator[None]:
    """One `up`/`down` at a time per state dir (several test sessions may share one cluster)."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.state_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_up(spec: ClusterSpec) -> bool:
    if any(pid is None for pid in daemons.daemon_pids(spec).values()):
        return False
    states = daemons.node_states(spec)
    # Busy nodes are fine; "down", "drain" or a trailing "*" (not responding) are not.
    healthy = {"idle", "mixed", "allocated", "completing"}
    return sorted(states) == sorted(spec.node_names) and all(s in healthy for s in states.values())


def _info(spec: ClusterSpec, started: bool, seconds: float) -> ClusterInfo:
    return ClusterInfo(
        state_dir=spec.state_dir,
        slurm_conf=spec.slurm_conf,
        cluster_name=spec.cluster_name,
        partitions=spec.partitions,
        default_partition="cpu",
        started=started,
        seconds=round(seconds, 2),
        logs=spec.log_dir,
    )


def up(spec: ClusterSpec | None = None) -> ClusterInfo:
    """Start the local cluster, or return at once if it is already up.

    A cluster that is only partly up (a daemon died) is stopped and started afresh. A fresh start
    forgets all jobs: controller state and the accounting database are wiped.
    """
    t0 = time.monotonic()
    spec = spec or ClusterSpec()
    system.check_prerequisites()
    with _locked(spec):
        if spec.spec_file.exists():
            previous = ClusterSpec.from_json(spec.spec_file.read_text())
            if previous == spec and _is_up(spec):
                return _info(spec, started=False, seconds=time.monotonic() - t0)
            # Stop whatever the previous spec started (its nodes and ports may differ).
            daemons.stop_all(previous)
        try:
            _start(spec)
        except BaseException:
            daemons.stop_all(spec)
            raise
    return _info(spec, started=True, seconds=time.monotonic() - t0)


def _start(spec: ClusterSpec) -> None:
    system.wipe_runtime_state(spec)
    system.prepare_directories(spec)
    system.write_config_files(spec)
    system.make_fake_gpus(spec)
    system.make_munge_key(spec)
    system.ensure_node_names_resolve(spec)
    daemons.start_munged(spec)
    daemons.start_mariadb(spec)
    daemons.reset_accounting_db(spec, system.db_password(spec))
    daemons.start_slurmdbd(spec)
    daemons.start_slurmctld(spec)
    daemons.start_slurmds(spec)
    daemons.wait_nodes_idle(spec)
    daemons.warm_up(spec)


def down(spec: ClusterSpec | None = None) -> list[str]:
    """Stop every daemon of the cluster and wait until all are dead. Returns the daemons stopped."""
    spec = spec or saved_spec(None)
    if not spec.state_dir.exists():
        return []
    with _locked(spec):
        return daemons.stop_all(spec)


def status(spec: ClusterSpec | None = None) -> dict:
    """A JSON-able summary: whether it is up, each daemon's PID (None: not running), node states."""
    spec = spec or saved_spec(None)
    pids = daemons.daemon_pids(spec)
    nodes = daemons.node_states(spec) if pids.get("slurmctld") else {}
    return {
        "up": _is_up(spec) if all(pids.values()) else False,
        "state_dir": str(spec.state_dir),
        "slurm_conf": str(spec.slurm_conf),
        "daemons": pids,
        "nodes": nodes,
        "partitions": spec.partitions,
    }


def env(spec: ClusterSpec | None = None) -> dict[str, str]:
    """The environment variables a Slurm client (sbatch, srun, submitit) needs for this cluster."""
    spec = spec or saved_spec(None)
    return {"SLURM_CONF": str(spec.slurm_conf)}
