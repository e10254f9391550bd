"""Preparing this machine for the local cluster: prerequisites, directories, files, host names.

Everything here is idempotent; `up()` calls it on every fresh start.
"""

from __future__ import annotations

import ctypes.util
import os
import pwd
import secrets
import shutil
import socket
import stat
from pathlib import Path

from vit_dt import atomic

from .config import (
    ClusterSpec,
    gpu_device_paths,
    render_gres_conf,
    render_hosts_block,
    render_slurm_conf,
    render_slurmdbd_conf,
    render_task_prolog,
)

HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# vit-dt localcluster"

# Executable -> the Debian package that ships it (scripts/install-system-deps.sh installs them).
REQUIRED_EXECUTABLES = {
    "munged": "munge",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    # mariadb-server depends on the client package that ships these two.
    "mariadb": "mariadb-server",
    "mariadb-admin": "mariadb-server",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sinfo": "slurm-client",
    "srun": "slurm-client",
    "sacct": "slurm-client",
    "scontrol": "slurm-client",
}


class ClusterError(RuntimeError):
    """The local cluster cannot be started, stopped or queried; the message says why."""


def missing_packages() -> list[str]:
    """Debian packages whose programs are missing here (empty: all present)."""
    missing = {pkg for exe, pkg in REQUIRED_EXECUTABLES.items() if shutil.which(exe) is None}
    # slurmd loads the pmix plugin at start; without libpmix2 `--mpi=pmix` steps fail later.
    if ctypes.util.find_library("pmix") is None and not list(Path("/usr/lib").glob("*/libpmix.so.2*")):
        missing.add("libpmix2")
    return sorted(missing)


def check_prerequisites() -> None:
    """Raise ClusterError naming what is missing: root, packages, the munge user."""
    if os.geteuid() != 0:
        raise ClusterError(
            "the local Slurm cluster must be started as root (SlurmdUser=root runs jobs as root, "
            "fake GPUs need mknod, node names go into /etc/hosts); current uid is "
            f"{os.geteuid()}"
        )
    missing = missing_packages()
    if missing:
        raise ClusterError(
            f"missing Debian packages {missing}: run `sudo scripts/install-system-deps.sh` first"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        raise ClusterError("user 'munge' does not exist: reinstall the 'munge' package") from None


def prepare_directories(spec: ClusterSpec) -> None:
    for path in (spec.state_dir, spec.etc_dir, spec.run_dir, spec.log_dir, spec.ctld_state_dir, spec.gpu_dev_dir):
        path.mkdir(parents=True, exist_ok=True)
    # munged refuses directories that others can write to.
    spec.state_dir.chmod(0o755)
    for node in spec.node_names:
        (spec.spool_dir / node).mkdir(parents=True, exist_ok=True)
        (spec.tmpfs_dir / node).mkdir(parents=True, exist_ok=True)


def wipe_runtime_state(spec: ClusterSpec) -> None:
    """Forget the previous run: controller state (job ids restart at 1), spools, logs, node tmp."""
    for path in (spec.ctld_state_dir, spec.spool_dir, spec.tmpfs_dir, spec.log_dir):
        shutil.rmtree(path, ignore_errors=True)
    for node in spec.node_names:
        shutil.rmtree(spec.vader_dir(node), ignore_errors=True)


def db_password(spec: ClusterSpec) -> str:
    """The local MariaDB password of the `slurm` user: made once, kept mode 0600, never printed."""
    path = spec.db_password_file
    if not path.exists():
        atomic.write_text(path, secrets.token_hex(16), 0o600)
    return path.read_text().strip()


def write_config_files(spec: ClusterSpec) -> None:
    atomic.write_text(spec.slurm_conf, render_slurm_conf(spec), 0o644)
    atomic.write_text(spec.gres_conf, render_gres_conf(spec), 0o644)
    # slurmdbd refuses to start when its conf (which holds a password) is readable by others.
    atomic.write_text(spec.slurmdbd_conf, render_slurmdbd_conf(spec, db_password(spec)), 0o600)
    atomic.write_text(spec.task_prolog, render_task_prolog(spec), 0o755)
    atomic.write_text(spec.spec_file, spec.to_json(), 0o644)


def make_fake_gpus(spec: ClusterSpec) -> None:
    """Character devices for gres.conf (it rejects plain files); 1,3 is /dev/null's number."""
    for path in gpu_device_paths(spec):
        if path.exists() and stat.S_ISCHR(path.stat().st_mode):
            continue
        path.unlink(missing_ok=True)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def make_munge_key(spec: ClusterSpec) -> None:
    """A key of our own (munged as user munge, key mode 0400) so the system's munge stays untouched."""
    munge = pwd.getpwnam("munge")
    spec.munge_dir.mkdir(parents=True, exist_ok=True)
    os.chown(spec.munge_dir, munge.pw_uid, munge.pw_gid)
    spec.munge_dir.chmod(0o755)  # clients of every user connect to the socket in here
    if not spec.munge_key.exists():
        fd = os.open(spec.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(1024))
    os.chown(spec.munge_key, munge.pw_uid, munge.pw_gid)
    spec.munge_key.chmod(0o400)


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


def ensure_node_names_resolve(spec: ClusterSpec, hosts_file: Path = HOSTS_FILE) -> None:
    """Make c1..cN, g1..gM resolve to 127.0.0.1 (MASTER_ADDR is often the first node's name).

    Rewrites only our own marked line, in place: /etc/hosts is often a bind mount that cannot be
    replaced by rename.
    """
    if all(_resolves_to_loopback(name) for name in spec.node_names):
        return
    wanted = f"{render_hosts_block(spec)}  {HOSTS_MARKER}"
    try:
        lines = hosts_file.read_text().splitlines()
        kept = [line for line in lines if HOSTS_MARKER not in line]
        with open(hosts_file, "w") as fh:
            fh.write("\n".join(kept + [wanted]) + "\n")
    except OSError as err:
        raise ClusterError(
            f"cannot add the node names {spec.node_names} to {hosts_file} ({err}); add this line by hand: {wanted}"
        ) from err
    unresolved = [name for name in spec.node_names if not _resolves_to_loopback(name)]
    if unresolved:
        raise ClusterError(f"node names {unresolved} still do not resolve to 127.0.0.1 after editing {hosts_file}")
