"""`vit-dt status [SWEEP_DIR | --remote [NAME]] [--json]`: each point's Slurm state, result status and log paths.

States: pending, running, completed, failed, timeout, cancelled (unknown when Slurm has no record).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vit-dt status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", help="a directory made by `vit-dt sweep` (holds sweep.json); "
                        "default: the latest sweep (<out_dir>/sweeps/latest)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    from vit_dt.commands import remote

    remote.add_option(parser, "asked on the login node: the status")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: a return code, not an exception
        return int(exit_.code or 0)
    if args.remote is not None:
        if args.sweep_dir is not None:
            print("vit-dt status: --remote NAME names the sweep; drop SWEEP_DIR", file=sys.stderr)
            return 2
        return remote.on_login_node("status", args.remote, ["--json"] if args.json else [])

    if args.sweep_dir is None:
        from vit_dt.commands.options import latest_sweep_or_report

        args.sweep_dir = latest_sweep_or_report("status")
        if args.sweep_dir is None:
            return 2
    from vit_dt.slurm.manifest import ManifestError
    from vit_dt.slurm.status import format_table, sweep_status

    try:
        manifest, rows = sweep_status(args.sweep_dir)
    except ManifestError as exc:
        print(f"vit-dt status: error: {exc}", file=sys.stderr)
        return 2
    from vit_dt.slurm.usage import sweep_usage

    usage = sweep_usage(manifest)      # GPU-hours used (sacct) against the estimate sweep.json keeps
    if args.json:
        print(json.dumps({"sweep_dir": manifest["sweep_dir"], "warning": manifest.get("status_warning"),
                          "points": [r.to_dict() for r in rows], "usage": usage.to_dict()}, indent=1))
    else:
        print(format_table(manifest, rows))
        if usage.line():
            print(usage.line() + (f" (warning: {usage.warning})" if usage.warning else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
