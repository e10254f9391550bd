"""`vit-dt sync SWEEP_DIR|--remote [NAME] [--dry-run] [--include-synced]`: upload a sweep's offline W&B runs (from a
login node; --remote: a sweep `vit-dt sweep --remote` submitted, uploaded from its login node).

Compute nodes write W&B runs offline into each point's run directory; this finds them all and runs
`wandb sync` on each. The API key comes from the environment (`WANDB_API_KEY`) or `wandb login`, as usual.

A run that was requeued or restarted has one offline folder per attempt, all with the run's id (segments). They
are uploaded oldest first, each continuing the same W&B run (they were written with resume="allow"); when one
fails, the later segments of that run wait for the next `vit-dt sync`, so steps never arrive out of order.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from vit_dt.records.wandb_files import find_offline_runs, is_synced, run_id_of, wandb_executable


def _run_key(segment: Path) -> tuple[str, str]:
    """Segments of one W&B run: same wandb/ folder (same run directory), same run id."""
    return str(segment.parent), run_id_of(segment) or segment.name


def _segments(runs: list[Path]) -> dict[Path, tuple[int, int]]:
    """For each offline folder, (k, n): it is segment k of the n segments of its W&B run."""
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for run in runs:                                  # find_offline_runs lists the segments of a run oldest first
        groups[_run_key(run)].append(run)
    return {run: (k, len(group)) for group in groups.values() for k, run in enumerate(group, start=1)}


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
    parser.add_argument("sweep_dir", type=Path, nargs="?", help="a sweep (or run) directory; searched recursively")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    parser.add_argument("--include-synced", action="store_true", help="upload runs already marked as synced too")
    parser.add_argument("--project", help="upload into this W&B project instead of the run's own")
    parser.add_argument("--entity", help="upload under this W&B entity instead of the default one")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="give up on a run after this many seconds (wandb sync retries for a long time offline)")
    from vit_dt.commands import remote

    remote.add_option(parser, "run on the login node, with its own W&B key (its environment or ~/.netrc): the upload")
    args = parser.parse_args(argv)
    if args.remote is not None:
        if args.sweep_dir is not None:
            print("vit-dt sync: --remote NAME names the sweep; drop SWEEP_DIR", file=sys.stderr)
            return 2
        passed = [*(["--dry-run"] if args.dry_run else []), *(["--include-synced"] if args.include_synced else []),
                  *(["--project", args.project] if args.project else []),
                  *(["--entity", args.entity] if args.entity else []),
                  *(["--timeout-s", str(args.timeout_s)] if args.timeout_s is not None else [])]
        return remote.on_login_node("sync", args.remote, passed)
    if args.sweep_dir is None:
        parser.error("the following arguments are required: sweep_dir (or --remote [NAME])")
    if not args.sweep_dir.is_dir():
        print(f"vit-dt sync: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    runs = find_offline_runs(args.sweep_dir)
    if not runs:
        print(f"no offline W&B runs under {args.sweep_dir}")
        return 0
    pending = [r for r in runs if args.include_synced or not is_synced(r)]
    segments = _segments(runs)
    for run in runs:
        state = "to sync" if run in pending else "synced"
        k, n = segments[run]
        print(f"{state:8} {run}" + (f"  (W&B run {run_id_of(run)}: segment {k} of {n})" if n > 1 else ""))
    for run in pending:
        k, _ = segments[run]
        later_synced = [r for r in runs if _run_key(r) == _run_key(run) and segments[r][0] > k and r not in pending]
        if later_synced:
            print(f"warning: {run} is older than the already synced {later_synced[0]}; uploading it appends its "
                  f"steps after the newer ones", file=sys.stderr)
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
    failed, held_back = [], []
    blocked: set[tuple[str, str]] = set()           # W&B runs with a segment that failed in this pass
    for number, run in enumerate(pending, start=1):
        if _run_key(run) in blocked:                  # its earlier segment is not up: uploading this would put
            held_back.append(run)                     # later steps before earlier ones
            print(f"[{number}/{len(pending)}] held back {run}: an earlier segment of its W&B run did not sync",
                  flush=True)
            continue
        print(f"[{number}/{len(pending)}] wandb sync {run}", flush=True)
        if not _sync_one(command + [str(run.resolve())], args.timeout_s, args.sweep_dir) or not is_synced(run):
            failed.append(run)
            blocked.add(_run_key(run))
    if failed or held_back:
        print(f"{len(failed)} run(s) failed to sync (is the network up and WANDB_API_KEY set?):", file=sys.stderr)
        for run in failed:
            print(f"  {run}", file=sys.stderr)
        if held_back:
            print(f"{len(held_back)} later segment(s) of those runs held back (run `vit-dt sync` again):",
                  file=sys.stderr)
            for run in held_back:
                print(f"  {run}", file=sys.stderr)
        return 1
    print(f"synced {len(pending)} run(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
