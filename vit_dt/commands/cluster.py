"""`vit-dt cluster up|down|status|env`: the local multi-node Slurm cluster (vit_dt.localcluster).

`up` and `env` print only the `export SLURM_CONF=...` line on stdout (progress goes to stderr), so
`eval "$(vit-dt cluster up)"` sets up the current shell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from vit_dt import localcluster
from vit_dt.localcluster import ClusterError, ClusterSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-dt cluster",
        description="Start, stop or inspect a real multi-node Slurm cluster on this machine (needs root).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the cluster keeps configs, logs and state "
        "(default: $VIT_DT_CLUSTER_DIR or /tmp/vit-dt-cluster)",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{up,down,status,env}")
    up = sub.add_parser("up", help="start the cluster (no-op when it is already up)")
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="first of the 127.0.0.1 ports used (default: $VIT_DT_CLUSTER_PORT or 16817)",
    )
    sub.add_parser("down", help="stop every daemon of the cluster")
    status = sub.add_parser("status", help="daemons, nodes and partitions (exit status 1 when not up)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    sub.add_parser("env", help="print the export line a Slurm client needs")
    return parser


def _spec(args: argparse.Namespace) -> ClusterSpec:
    kwargs = {}
    if args.state_dir is not None:
        kwargs["state_dir"] = args.state_dir
    if getattr(args, "base_port", None) is not None:
        kwargs["base_port"] = args.base_port
    return ClusterSpec(**kwargs)


def _saved_or_given_spec(args: argparse.Namespace) -> ClusterSpec:
    """For down/status/env: the spec `up` saved in the state dir, so ports and nodes match."""
    return localcluster.saved_spec(args.state_dir)


def _cmd_up(args: argparse.Namespace) -> int:
    info = localcluster.up(_spec(args))
    verb = "started" if info.started else "already up"
    print(f"local Slurm cluster {verb} in {info.seconds:.1f} s; state and logs in {info.state_dir}", file=sys.stderr)
    for name, nodes in info.partitions.items():
        default = " (default)" if name == info.default_partition else ""
        print(f"  partition {name}{default}: {','.join(nodes)}", file=sys.stderr)
    print("Slurm clients need this in their environment:", file=sys.stderr)
    print(info.export_line)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = localcluster.down(_saved_or_given_spec(args))
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    spec = _saved_or_given_spec(args)
    state = localcluster.status(spec)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0 if state["up"] else 1
    print(f"cluster: {'up' if state['up'] else 'NOT up'}  (state dir {state['state_dir']})")
    for daemon, pid in state["daemons"].items():
        print(f"  {daemon:12s} {'pid ' + str(pid) if pid else 'not running'}")
    if state["daemons"].get("slurmctld"):
        env = {**os.environ, **localcluster.env(spec)}
        sinfo = subprocess.run(["sinfo", "--Node", "--long"], env=env, capture_output=True, text=True)
        print(sinfo.stdout.rstrip() or sinfo.stderr.rstrip())
    return 0 if state["up"] else 1


def _cmd_env(args: argparse.Namespace) -> int:
    spec = _saved_or_given_spec(args)
    if not spec.slurm_conf.is_file():
        # `eval "$(vit-dt cluster env)"` would point every Slurm client at a file that is not there.
        raise ClusterError(f"no local cluster config at {spec.slurm_conf}; start one with `vit-dt cluster up`")
    for key, value in localcluster.env(spec).items():
        print(f"export {key}={value}")
    return 0


_ACTIONS = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status, "env": _cmd_env}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _ACTIONS[args.action](args)
    except (ClusterError, ValueError) as err:
        print(f"vit-dt cluster {args.action}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
