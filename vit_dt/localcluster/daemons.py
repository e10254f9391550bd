"""Starting and stopping the cluster's daemons: munged, MariaDB, slurmdbd, slurmctld, one slurmd per node.

Every daemon writes a PID file under `<state>/run/`; stopping goes by those files only (never by
process name, other Slurms may run here). A stopped daemon can linger as a zombie until its parent
reaps it, so a zombie counts as dead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import LOOPBACK, ClusterSpec
from .system import ClusterError

SLURMD_PREFIX = "slurmd-"


@dataclass(frozen=True)
class Daemon:
    pid_name: str  # PID file stem under <state>/run/
    comm: str  # expected /proc/<pid>/comm


def daemons_in_stop_order(spec: ClusterSpec) -> list[Daemon]:
    """Compute nodes first, the database and munge last (slurmctld/slurmdbd talk to them while stopping)."""
    slurmds = [Daemon(f"{SLURMD_PREFIX}{name}", "slurmd") for name in spec.node_names]
    return slurmds + [
        Daemon("slurmctld", "slurmctld"),
        Daemon("slurmdbd", "slurmdbd"),
        Daemon("mariadbd", "mariadbd"),
        Daemon("munged", "munged"),
    ]


# --- process inspection ------------------------------------------------------------------------------
def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: the state follows the last ')'.
    return text[text.rindex(")") + 2]


def is_alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def read_pid(spec: ClusterSpec, daemon: Daemon) -> int | None:
    """The PID of `daemon` when its PID file names a live process of the right program, else None."""
    try:
        pid = int(spec.pid_file(daemon.pid_name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not is_alive(pid) or not _comm(pid).startswith(daemon.comm[:15]):
        return None
    return pid


def daemon_pids(spec: ClusterSpec) -> dict[str, int | None]:
    return {d.pid_name: read_pid(spec, d) for d in daemons_in_stop_order(spec)}


# --- waiting -----------------------------------------------------------------------------------------
def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while not ready():
        if time.monotonic() > deadline:
            tail = f"\nlast lines of {log}:\n{_log_tail(log)}" if log else ""
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def slurm_env(spec: ClusterSpec) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(spec.slurm_conf)}


def _run(cmd: list[str], spec: ClusterSpec, what: str, log: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command that must succeed (daemons that fork return once they are started)."""
    # cwd: daemons inherit it; the caller's directory may be a temporary one that disappears.
    proc = subprocess.run(cmd, env=slurm_env(spec), cwd=spec.state_dir, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = f"\nlast lines of {log}:\n{_log_tail(log)}" if log else ""
        raise ClusterError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}{tail}"
        )
    return proc


def _require_port_free(port: int, who: str) -> None:
    if _port_open(port):
        raise ClusterError(
            f"port {port} on 127.0.0.1 (for {who}) is already taken by another program; "
            "stop it or choose another ClusterSpec.base_port"
        )


# --- munge -------------------------------------------------------------------------------------------
def start_munged(spec: ClusterSpec) -> None:
    spec.munge_socket.unlink(missing_ok=True)
    log = spec.log_file("munged")
    log.touch()
    os.chown(log, *_munge_ids())
    seed = spec.munge_dir / "munged.seed"
    pid_file = spec.pid_file("munged")  # in the munge-owned directory: munged writes it as user munge
    pid_file.unlink(missing_ok=True)
    uid, gid = _munge_ids()
    cmd = [
        "munged",
        f"--socket={spec.munge_socket}",
        f"--key-file={spec.munge_key}",
        f"--pid-file={pid_file}",
        f"--log-file={log}",
        f"--seed-file={seed}",
    ]
    _run(cmd, spec, "starting munged", log, user=uid, group=gid, extra_groups=[])
    wait_for("munged's socket", spec.munge_socket.exists, 10, log)


def _munge_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("munge")
    return entry.pw_uid, entry.pw_gid


# --- MariaDB -----------------------------------------------------------------------------------------
def _mariadb_client(spec: ClusterSpec) -> list[str]:
    return ["mariadb", "--no-defaults", f"--socket={spec.db_socket}", "-u", "root"]


def _db_initialised(spec: ClusterSpec) -> bool:
    return (spec.db_dir / "mysql" / "user.frm").exists() or (spec.db_dir / "mysql" / "global_priv.frm").exists()


def start_mariadb(spec: ClusterSpec) -> None:
    log = spec.log_file("mariadbd")
    _require_port_free(spec.db_port, "MariaDB")
    if not _db_initialised(spec):
        # The data directory survives restarts (initialising takes seconds); only the accounting
        # database inside it is dropped on each fresh start.
        subprocess.run(["rm", "-rf", str(spec.db_dir)], check=True)
        spec.db_dir.mkdir(parents=True)
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={spec.db_dir}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            spec,
            "initialising the MariaDB data directory",
        )
    spec.db_socket.unlink(missing_ok=True)
    cmd = [
        "mariadbd",
        "--no-defaults",
        f"--datadir={spec.db_dir}",
        f"--socket={spec.db_socket}",
        f"--port={spec.db_port}",
        f"--bind-address={LOOPBACK}",
        f"--pid-file={spec.pid_file('mariadbd')}",
        f"--log-error={log}",
        "--user=root",
        "--skip-name-resolve",
        "--skip-log-bin",
        # Values slurmdbd asks for (it warns below them).
        "--innodb-buffer-pool-size=128M",
        "--innodb-log-file-size=64M",
        "--innodb-lock-wait-timeout=900",
    ]
    with open(log, "ab") as out:
        # Not a forking daemon: a session of its own keeps it alive after the caller exits.
        subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=spec.state_dir, start_new_session=True
        )
    ping = ["mariadb-admin", "--no-defaults", f"--socket={spec.db_socket}", "-u", "root", "ping"]
    wait_for(
        "MariaDB to answer",
        lambda: spec.db_socket.exists() and subprocess.run(ping, capture_output=True).returncode == 0,
        60,
        log,
    )


def reset_accounting_db(spec: ClusterSpec, password: str) -> None:
    """Drop and recreate the accounting database: job ids restart at 1 with a fresh controller,
    and old rows would mix with new ones in sacct."""
    db = spec.accounting_db
    sql = f"""
        DROP DATABASE IF EXISTS `{db}`;
        CREATE DATABASE `{db}`;
        CREATE USER IF NOT EXISTS 'slurm'@'{LOOPBACK}' IDENTIFIED BY '{password}';
        ALTER USER 'slurm'@'{LOOPBACK}' IDENTIFIED BY '{password}';
        GRANT ALL ON `{db}`.* TO 'slurm'@'{LOOPBACK}';
        FLUSH PRIVILEGES;
    """
    # SQL through stdin: the password never shows up in a process listing.
    _run(_mariadb_client(spec), spec, "resetting the accounting database", spec.log_file("mariadbd"), input=sql)


# --- Slurm -------------------------------------------------------------------------------------------
def start_slurmdbd(spec: ClusterSpec) -> None:
    log = spec.log_file("slurmdbd")
    _require_port_free(spec.slurmdbd_port, "slurmdbd")
    _run(["slurmdbd"], spec, "starting slurmdbd", log)
    wait_for("slurmdbd to listen", lambda: _port_open(spec.slurmdbd_port), 30, log)


def _ctld_up(spec: ClusterSpec) -> bool:
    proc = subprocess.run(["scontrol", "ping"], env=slurm_env(spec), capture_output=True, text=True)
    return proc.returncode == 0 and "UP" in proc.stdout


def start_slurmctld(spec: ClusterSpec) -> None:
    log = spec.log_file("slurmctld")
    _require_port_free(spec.slurmctld_port, "slurmctld")
    # -c: start from a clean slate even if a state file survived.
    _run(["slurmctld", "-c"], spec, "starting slurmctld", log)
    wait_for("slurmctld to answer `scontrol ping`", lambda: _ctld_up(spec), 30, log)


def start_slurmds(spec: ClusterSpec) -> None:
    for node in spec.nodes:
        _require_port_free(node.port, f"slurmd {node.name}")
        _run(["slurmd", "-N", node.name], spec, f"starting slurmd for node {node.name}", spec.log_dir / f"slurmd-{node.name}.log")


def node_states(spec: ClusterSpec) -> dict[str, str]:
    """Node name -> Slurm state ("idle", "mixed", "down*", ...); empty when slurmctld does not answer."""
    proc = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %T"], env=slurm_env(spec), capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, state = line.split()
        states[name] = state.lower()
    return states


def wait_nodes_idle(spec: ClusterSpec, timeout_s: float = 30) -> None:
    def all_idle() -> bool:
        states = node_states(spec)
        return sorted(states) == sorted(spec.node_names) and all(s == "idle" for s in states.values())

    wait_for(f"nodes {spec.node_names} to become idle", all_idle, timeout_s, spec.log_file("slurmctld"))


def warm_up(spec: ClusterSpec, timeout_s: float = 30) -> None:
    """Run one tiny job and wait until sacct lists it: the first job after slurmctld starts reaches
    the accounting database only seconds later, and a test reading sacct must not miss it."""
    proc = _run(
        ["srun", "--partition=cpu", "--nodes=1", "--ntasks=1", "--time=1", "--job-name=vitdt-warmup",
         "sh", "-c", "echo $SLURM_JOB_ID"],
        spec,
        "the warm-up job",
        spec.log_file("slurmctld"),
        timeout=timeout_s,
    )
    job_id = proc.stdout.strip().splitlines()[-1]

    def in_sacct() -> bool:
        out = subprocess.run(
            ["sacct", "--noheader", "--allocations", "--parsable2", f"--jobs={job_id}", "--format=JobID,State"],
            env=slurm_env(spec),
            capture_output=True,
            text=True,
        )
        return out.returncode == 0 and f"{job_id}|COMPLETED" in out.stdout

    wait_for(f"warm-up job {job_id} to appear in sacct", in_sacct, timeout_s, spec.log_file("slurmdbd"))


# --- stopping ----------------------------------------------------------------------------------------
# Slurm first (all at once: they stop in well under a second), then the database, then munge.
STOP_PHASES = (("slurmd", "slurmctld"), ("slurmdbd",), ("mariadbd",), ("munged",))


def cancel_all_jobs(spec: ClusterSpec, timeout_s: float = 15) -> None:
    """Cancel every job and wait until they are gone: a slurmd stopped under a running job leaves its
    slurmstepd and the job's processes behind as orphans."""
    env = slurm_env(spec)
    listing = subprocess.run(["squeue", "--noheader", "--format=%A"], env=env, capture_output=True, text=True)
    job_ids = listing.stdout.split() if listing.returncode == 0 else []
    if not job_ids:
        return
    subprocess.run(["scancel", "--quiet", *job_ids], env=env, capture_output=True)

    def queue_empty() -> bool:
        out = subprocess.run(["squeue", "--noheader", "--format=%A"], env=env, capture_output=True, text=True)
        return out.returncode != 0 or not out.stdout.strip()

    try:
        wait_for(f"cancelled jobs {job_ids} to end", queue_empty, timeout_s)
    except ClusterError:
        pass  # stop anyway; the daemons must go down even if a job refuses to die


def stop_all(spec: ClusterSpec, timeout_s: float = 20) -> list[str]:
    """Cancel all jobs, stop every daemon named by a PID file, wait until all are dead.

    Returns the PID-file names of the daemons that were running.
    """
    if read_pid(spec, Daemon("slurmctld", "slurmctld")) is not None:
        cancel_all_jobs(spec)
    stopped: list[str] = []
    for phase in STOP_PHASES:
        group = [d for d in daemons_in_stop_order(spec) if d.comm in phase]
        pids = {d.pid_name: pid for d in group if (pid := read_pid(spec, d)) is not None}
        for pid in pids.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(is_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids.values():
            if is_alive(pid):
                _signal(pid, signal.SIGKILL)
        wait_for(f"{sorted(pids)} to die", lambda: not any(is_alive(p) for p in pids.values()), 10)
        for d in group:
            spec.pid_file(d.pid_name).unlink(missing_ok=True)
        stopped.extend(sorted(pids))
    for node in spec.node_names:
        shutil.rmtree(spec.vader_dir(node), ignore_errors=True)
    return stopped


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
