"""`vit-dt sync SWEEP_DIR [--dry-run] [--include-synced]`: upload a sweep's offline W&B runs (from a login node).

Compute nodes write W&B runs offline into each point's run directory; this finds them all and runs
`wandb sync` on each. The API key comes from the environment (`WANDB_API_KEY`) or `wandb login`, as usual.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from vit_dt.wandb_run import wandb_executable, find_offline_runs, is_synced


def _sync_one(command: list[str], timeout_s: float | None, cwd: Path) -> bool:
    # Own process group: on a timeout, wandb's helper (wandb-core) goes down with it instead of lingering.
    # wandb sync writes its debug logs to ./wandb/logs: run it in the sweep directory so they stay with the sweep.
    process = subprocess.Popen(command, start_new_session=True, cwd=cwd)
    try:
        return process.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        print(f"  gave up after {timeout_s:g} s", file=sys.stderr)
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vit-dt sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a sweep (or run) directory; searched recursively")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    parser.add_argument("--include-synced", action="store_true", help="upload runs already marked as synced too")
    parser.add_argument("--project", help="upload into this W&B project instead of the run's own")
    parser.add_argument("--entity", help="upload under this W&B entity instead of the default one")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="give up on a run after this many seconds (wandb sync retries for a long time offline)")
    args = parser.parse_args(argv)

    if not args.sweep_dir.is_dir():
        print(f"vit-dt sync: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    runs = find_offline_runs(args.sweep_dir)
    if not runs:
        print(f"no offline W&B runs under {args.sweep_dir}")
        return 0
    pending = [r for r in runs if args.include_synced or not is_synced(r)]
    for run in runs:
        state = "to sync" if run in pending else "synced"
        print(f"{state:8} {run}")
    print(f"{len(runs)} offline run(s), {len(pending)} to sync")
    if args.dry_run or not pending:
        return 0

    command = wandb_executable() + ["sync"]
    if args.include_synced:
        command.append("--include-synced")
    if args.project:
        command += ["--project", args.project]
    if args.entity:
        command += ["--entity", args.entity]
    failed = []
    for number, run in enumerate(pending, start=1):
        print(f"[{number}/{len(pending)}] wandb sync {run}", flush=True)
        if not _sync_one(command + [str(run.resolve())], args.timeout_s, args.sweep_dir) or not is_synced(run):
            failed.append(run)
    if failed:
        print(f"{len(failed)} run(s) failed to sync (is the network up and WANDB_API_KEY set?):", file=sys.stderr)
        for run in failed:
            print(f"  {run}", file=sys.stderr)
        return 1
    print(f"synced {len(pending)} run(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
