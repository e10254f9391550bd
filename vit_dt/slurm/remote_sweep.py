"""`vit-dt sweep --remote`: a sweep submitted from this machine to a login node over SSH, and its copy here.

    <out_dir>/remote/<name>.json   the record: which login node, where the sweep lives there (`--remote` reads it)
    <out_dir>/remote/<name>/       this machine's copy: code/ and provenance/shipped.* as shipped from here;
                                   sweep.json, results.jsonl, points/*/ (result.json, config, logs), slurm/
                                   (scripts, logs) and report/ as pulled back (`pull`)

A submission: check that the login node's Python can run vit-dt (else the install command); create the sweep
directory there (named by the time here, suffixed when taken); freeze the code here (vit_dt/slurm/snapshot.py) with
what only this machine knows (git commit, uncommitted diff) and rsync both there; run `vit-dt sweep` there,
importing the shipped snapshot, with `hydra.launcher.shipped_snapshot=true` so every job imports it too. A sweep
the login node refuses leaves no directory there and none here: its message is shown as that node wrote it.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_dt.slurm.remote import (
    NOT_INSTALLED,
    Connection,
    RemoteError,
    RemoteSpec,
    python_command,
    refuse_secrets,
    setup_lines,
    shell_word,
)
from vit_dt.slurm.snapshot import CODE_SUBDIR

REMOTE_SUBDIR = "remote"          # <out_dir>/remote: records and copies of remote sweeps
RECORD_SUFFIX = ".json"
SWEEPS_SUBDIR = "sweeps"          # <cluster.remote.work_dir>/sweeps/<name> on the login node
CHECK_IMPORTS = "import hydra, omegaconf, submitit, yaml"   # what `vit-dt sweep` needs on a login node
# What `pull` leaves on the login node: the code (shipped from here), checkpoints and W&B runs (large; `vit-dt sync
# --remote` uploads the runs from there), submitit's pickles, and the submission lock.
PULL_FILTERS = ("--exclude=/code/", "--exclude=checkpoints/", "--exclude=wandb/", "--exclude=*.pkl",
                "--exclude=.submit.lock")


def remote_root() -> Path:
    """<out_dir>/remote, next to <out_dir>/sweeps (out_dir and $VIT_DT_OUT_DIR count, as for a sweep)."""
    from vit_dt.slurm.sweep_dir import sweeps_root

    return sweeps_root().parent / REMOTE_SUBDIR


def submit(spec: RemoteSpec, overrides: Sequence[str], options: Sequence[str], *,
           argv: Sequence[str] | None = None, root: Path | None = None) -> int:
    """Ship the code and run `vit-dt sweep OPTIONS OVERRIDES` on the login node; returns its exit status (a
    RemoteError when vit-dt cannot run there, before anything is created there)."""
    refuse_secrets(overrides, "the override")
    refuse_secrets(spec.setup, "a cluster.remote.setup line", shell=True)
    root = remote_root() if root is None else Path(root)
    connection = Connection(spec)
    connection.open()
    work = check_vit_dt(connection)
    name = time.strftime("%Y%m%d-%H%M%S")
    remote_dir = _create_remote_dir(connection, work, name)
    local_dir = _claim_local(root, Path(remote_dir).name)
    try:
        _freeze_here(local_dir, argv)
        connection.rsync([str(local_dir / CODE_SUBDIR), str(local_dir / "provenance")], f":{remote_dir}/")
    except BaseException:
        _forget(connection, remote_dir, local_dir)
        raise
    sweep = ["-m", "vit_dt.cli", "sweep", *options, *overrides, f"hydra.sweep.dir={_hydra_quoted(remote_dir)}",
             "hydra.launcher.shipped_snapshot=true"]
    code = f"{remote_dir}/{CODE_SUBDIR}"
    status = connection.run([f"cd {shell_word(work)} || exit 2", *setup_lines(spec),
                             python_command(spec, sweep, code_dir=code, env={"VIT_DT_OUT_DIR": work})]).returncode
    if status != 0 and not _exists(connection, f"{remote_dir}/sweep.json"):
        _forget(connection, remote_dir, local_dir)      # refused: nothing was queued, nothing is kept
        return status
    record = {"name": local_dir.name, "remote": spec.to_dict(), "work_dir": work, "sweep_dir": remote_dir,
              "local_dir": str(local_dir), "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "exit_status": status, "dry_run": "--dry-run" in options}
    from vit_dt import atomic

    atomic.write_json(root / f"{local_dir.name}{RECORD_SUFFIX}", record, indent=1)
    print(f"remote:    {spec.where}:{remote_dir}\n"
          f"here:      {local_dir} (`vit-dt report --remote` pulls the results into it)\n"
          f"follow:    vit-dt status --remote {local_dir.name}")
    return status


def check_vit_dt(connection: Connection) -> str:
    """The login node's work directory (absolute), once its Python is known to run vit-dt; else a RemoteError
    with the login node's own message and the install command."""
    spec = connection.spec
    python = shell_word(spec.python)
    done = connection.run([*setup_lines(spec),
                           f"command -v {python} >/dev/null 2>&1 || {{ echo \"{python}: not found\" >&2; "
                           f"exit {NOT_INSTALLED}; }}",
                           f"{python} -c '{CHECK_IMPORTS}' </dev/null || exit {NOT_INSTALLED}",
                           f"mkdir -p {shell_word(spec.work_dir)}/{SWEEPS_SUBDIR} && cd {shell_word(spec.work_dir)} "
                           f"|| exit 2", "pwd"], capture=True, timeout=300)
    if done.returncode == NOT_INSTALLED:
        raise RemoteError(f"vit-dt cannot run on {spec.where} with cluster.remote.python={spec.python}; the login "
                          f"node said:\n{done.stderr.strip()}\n{install_hint(spec)}")
    if done.returncode != 0 or not done.stdout.strip():
        what = "a cluster.remote.setup line failed, or " if spec.setup else ""
        raise RemoteError(f"{spec.where}: {what}cannot use cluster.remote.work_dir={spec.work_dir} (exit status "
                          f"{done.returncode}); the login node said:\n{done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def install_hint(spec: RemoteSpec) -> str:
    """How to install vit-dt on the login node (docs/quickstart.md), and the key that then names its Python."""
    source = _repository_url() or "<this repository's URL>"
    ssh = f"ssh {'-p ' + str(spec.port) + ' ' if spec.port else ''}{spec.user + '@' if spec.user else ''}{spec.host}"
    return (f"install vit-dt there (docs/quickstart.md), e.g.:\n"
            f"  {ssh} 'git clone {source} vit-dt && python3 -m venv vit-dt/.venv && "
            f"vit-dt/.venv/bin/pip install -e \"./vit-dt[mpi]\"'\n"
            f"then set cluster.remote.python: ~/vit-dt/.venv/bin/python (in the profile, or as an override)")


def _repository_url() -> str | None:
    import subprocess

    from vit_dt.slurm.snapshot import git_root, package_root

    checkout = git_root(package_root())
    if checkout is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(checkout), "remote", "get-url", "origin"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _create_remote_dir(connection: Connection, work: str, name: str) -> str:
    """<work>/sweeps/<name>, created there for this sweep alone (`-2`, `-3`, ... when the name is taken)."""
    sweeps = f"{shell_word(work)}/{SWEEPS_SUBDIR}"
    done = connection.run([f"n={name}; i=1",
                           f'while ! mkdir {sweeps}/"$n" 2>/dev/null; do i=$((i+1)); n={name}-$i; '
                           f'[ "$i" -le 1000 ] || {{ echo "cannot create a sweep directory in {work}/{SWEEPS_SUBDIR}"'
                           f' >&2; exit 2; }}; done',
                           f'echo {sweeps}/"$n"'], capture=True, timeout=120)
    if done.returncode != 0 or not done.stdout.strip():
        raise RemoteError(f"{connection.spec.where}: {done.stderr.strip() or 'cannot create the sweep directory'}")
    return done.stdout.strip().splitlines()[-1]


def _claim_local(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1001):
        candidate = root / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RemoteError(f"cannot create a directory for {name} in {root}")


def _freeze_here(local_dir: Path, argv: Sequence[str] | None) -> None:
    """The snapshot, and the code's provenance only this machine can gather, into `local_dir` (then shipped)."""
    from vit_dt.records import provenance
    from vit_dt.slurm.snapshot import git_root, make_snapshot, package_root

    root = package_root()
    checkout = git_root(root)
    make_snapshot(local_dir, root)
    code, diff = provenance.code_fields(checkout or root, is_checkout=checkout is not None)
    provenance.write_shipped(local_dir, code, diff, argv)


def _exists(connection: Connection, path: str) -> bool:
    return connection.run([f"test -e {shell_word(path)}"], capture=True, timeout=120).returncode == 0


def _forget(connection: Connection, remote_dir: str, local_dir: Path) -> None:
    """Remove the directory made for a sweep that was not submitted, there and here."""
    try:
        connection.run([f"rm -rf {shell_word(remote_dir)}"], capture=True, timeout=300)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _hydra_quoted(path: str) -> str:
    """A path as one Hydra override value, whatever characters it holds."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- after submission: the record, status, sync and the copy here ---------------------------------------------------
def read_record(name: str | None, root: Path | None = None) -> dict[str, Any]:
    """The record `name` names (a record's name, its .json file, or the copy's directory); None: the latest."""
    root = remote_root() if root is None else Path(root)
    if name is None:
        records = sorted(root.glob(f"*{RECORD_SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))
        if not records:
            raise RemoteError(f"no remote sweep recorded in {root}: submit one with `vit-dt sweep --remote ...`")
        path = records[-1]
    else:
        given = Path(name)
        candidates = [given if given.suffix == RECORD_SUFFIX else given.with_name(given.name + RECORD_SUFFIX),
                      root / f"{name}{RECORD_SUFFIX}"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            known = ", ".join(sorted(p.stem for p in root.glob(f"*{RECORD_SUFFIX}"))) or "none"
            raise RemoteError(f"no remote sweep {name!r} in {root}; recorded: {known}")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RemoteError(f"cannot read the remote sweep's record {path}: {exc}") from None
    if not isinstance(record, dict) or not {"remote", "sweep_dir", "local_dir"} <= set(record):
        raise RemoteError(f"{path} is not a remote sweep's record (written by `vit-dt sweep --remote`)")
    return record


def connect(record: dict[str, Any]) -> Connection:
    connection = Connection(RemoteSpec.from_config(record["remote"]))
    connection.open()
    return connection


def run_vit_dt(record: dict[str, Any], command: str, args: Sequence[str]) -> int:
    """`vit-dt COMMAND <the sweep there> ARGS` on the login node, with the sweep's own code; its output as is."""
    connection = connect(record)
    spec = connection.spec
    code = f"{record['sweep_dir']}/{CODE_SUBDIR}"
    argv = ["-m", "vit_dt.cli", command, record["sweep_dir"], *args]
    return connection.run([f"cd {shell_word(record['work_dir'])} || exit 2", *setup_lines(spec),
                           python_command(spec, argv, code_dir=code, env={"VIT_DT_OUT_DIR": record["work_dir"]})]
                          ).returncode


def pull(record: dict[str, Any]) -> Path:
    """Bring sweep.json, the results store, the records, logs, scripts and any report here; returns the copy."""
    connection = connect(record)
    local_dir = Path(record["local_dir"])
    local_dir.mkdir(parents=True, exist_ok=True)
    connection.rsync([f":{record['sweep_dir']}/"], f"{local_dir}/", PULL_FILTERS)
    return local_dir
