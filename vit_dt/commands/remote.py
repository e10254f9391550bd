"""`--remote`: `vit-dt sweep` from this machine onto a login node over SSH, and `status`, `results`, `report` and
`sync` of such a sweep (the work: vit_dt/slurm/remote_sweep.py; the connection: vit_dt/slurm/remote.py).

    vit-dt sweep --remote alice@login.example.org cluster=mycluster resources.gpus=1,2,4
    vit-dt status --remote               # the latest remote sweep; --remote NAME for another
    vit-dt report --remote               # pulls its results here, then builds the report here
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

OPTION = "--remote"
LATEST = ""               # `--remote` without a name: the latest remote sweep
# `vit-dt sweep` options a remote sweep passes on; the others work on this machine's files or code
PASSED_ON = ("--dry-run", "--no-verify-data", "--max-gpu-hours")
NOT_REMOTE = {
    "--resume": "resume on the login node: `vit-dt status --remote` names the sweep directory there",
    "--calibrate-from": "its runs are read on the login node, where they may not be; submit there to calibrate",
    "--no-snapshot": "the shipped code snapshot is what a remote sweep runs",
    "--cfg": "print the configs here without --remote", "-c": "print the configs here without --remote",
    "--resolve": "print the configs here without --remote",
}


def add_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--remote [NAME]` on a command that reads a sweep."""
    parser.add_argument(OPTION, nargs="?", const=LATEST, metavar="NAME",
                        help=f"{what} of a sweep submitted with `vit-dt sweep --remote` (NAME: its name under "
                             f"<out_dir>/remote/; default: the latest)")


def take_destination(args: Sequence[str]) -> tuple[bool, str | None, list[str]]:
    """`vit-dt sweep`'s `--remote [[user@]host[:port]]` out of `args`: (given, destination or None, the rest). A
    word after it is the destination when it is not an option and not an override (no `=`)."""
    rest, given, destination = [], False, None
    args = list(args)
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name == OPTION:
            given = True
            if eq:
                destination = value
            elif i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                destination = args[i + 1]
                i += 1
        else:
            rest.append(args[i])
        i += 1
    return given, destination, rest


def sweep(destination: str | None, args: list[str], argv: Sequence[str]) -> int:
    """`vit-dt sweep --remote ...`: `args` are the overrides and the options passed on."""
    from vit_dt.commands.options import unknown_options, unknown_options_message
    from vit_dt.slurm.remote import RemoteError
    from vit_dt.slurm.remote_sweep import submit

    for arg in args:
        why = NOT_REMOTE.get(arg.split("=", 1)[0])
        if why:
            print(f"vit-dt sweep: {arg.split('=', 1)[0]} does not go with --remote: {why}", file=sys.stderr)
            return 2
    unknown = unknown_options(args, PASSED_ON)
    if unknown:
        print(unknown_options_message("sweep --remote", unknown, PASSED_ON), file=sys.stderr)
        return 2
    options, overrides, i = [], [], 0
    while i < len(args):
        if args[i] == "--max-gpu-hours" and i + 1 < len(args):
            options += args[i:i + 2]
            i += 2
            continue
        (options if args[i].split("=", 1)[0] in PASSED_ON else overrides).append(args[i])
        i += 1
    try:
        spec = _spec(destination, overrides)
        # cluster.remote.* is this machine's business (how to reach the login node): not sent there
        sent = [o for o in overrides if not _key(o).startswith("cluster.remote.")]
        return submit(spec, sent, options, argv=["vit-dt", "sweep", *argv])
    except (RemoteError, OSError) as exc:
        print(f"vit-dt sweep: error: {exc}", file=sys.stderr)
        return 2


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _spec(destination: str | None, overrides: Sequence[str]):
    """The profile's `remote:` block (composed here with the sweep's cluster=... and cluster.remote.* overrides),
    with `destination` as its host."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from vit_dt.config.compose import compose, error_message
    from vit_dt.slurm.remote import RemoteError, RemoteSpec

    chosen = [o for o in overrides if _key(o) == "cluster" or _key(o).startswith("cluster.remote.")]
    try:
        cfg = compose(chosen)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise RemoteError(f"{error_message(exc)}\n(--remote submits to one login node: one cluster=..., and "
                          f"cluster.remote.* without comma lists)") from None
    return RemoteSpec.from_config(OmegaConf.to_container(cfg.cluster.remote, resolve=True), destination)


def record_or_error(command: str, name: str | None):
    """The record `--remote NAME` names (LATEST: the latest), or None after one line saying why not."""
    from vit_dt.slurm.remote import RemoteError
    from vit_dt.slurm.remote_sweep import read_record

    try:
        return read_record(name or None)
    except RemoteError as exc:
        print(f"vit-dt {command}: {exc}", file=sys.stderr)
        return None


def on_login_node(command: str, name: str | None, args: Sequence[str]) -> int:
    """`vit-dt COMMAND <the sweep there> ARGS` run on the login node (status, sync); its output as it wrote it."""
    from vit_dt.slurm.remote import RemoteError
    from vit_dt.slurm.remote_sweep import run_vit_dt

    record = record_or_error(command, name)
    if record is None:
        return 2
    try:
        return run_vit_dt(record, command, args)
    except RemoteError as exc:
        print(f"vit-dt {command}: {exc}", file=sys.stderr)
        return 2


def pulled(command: str, name: str | None) -> str | None:
    """Pull the sweep's results here and return the copy's directory (status, report read it offline), or None
    after one line saying why not."""
    from vit_dt.slurm.remote import RemoteError
    from vit_dt.slurm.remote_sweep import pull

    record = record_or_error(command, name)
    if record is None:
        return None
    try:
        local = pull(record)
    except RemoteError as exc:
        print(f"vit-dt {command}: {exc}", file=sys.stderr)
        return None
    print(f"vit-dt {command}: pulled {record['sweep_dir']} from {record['remote']['host']} into {local}",
          file=sys.stderr)
    return str(local)
