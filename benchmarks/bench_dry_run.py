"""How long does a 500-point dry run take, cost estimate included? No Slurm needed: nothing is queued.

    python benchmarks/bench_dry_run.py            # 500 points over 4 shapes, time_min=auto (goal: < 5 s)
    python benchmarks/bench_dry_run.py --quick    # 40 points over 4 shapes (CI)

"vit-dt's own time" is the whole `vit-dt sweep ... --dry-run` command: Python start-up, Hydra's parse of the
sweep, composing and validating every point, estimating each one's cost and time limit, grouping, rendering one
sbatch script per shape, writing sweep.json, and printing the summary (total GPU-hours, compressed point lists).
There is no sbatch in a dry run, so all of it is ours.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 5.0


def sweep_args(quick: bool) -> tuple[list[str], int]:
    seeds = 10 if quick else 125
    return ["cluster=vaughan", "model=vit_b_16", "dataset=cifar10", "resources.gpus=1,2,4,8",
            f"trainer.seed=range({seeds})", "resources.time_min=auto"], 4 * seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 points over 4 shapes")
    parser.add_argument("--out", "--json", dest="out", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    from vit_dt.slurm.manifest import read_manifest

    overrides, points = sweep_args(args.quick)
    with tempfile.TemporaryDirectory(prefix="vitdt-bench-") as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [sys.executable, "-m", "vit_dt.cli", "sweep", *overrides, f"hydra.sweep.dir={sweep_dir}",
                   "--dry-run", "--no-verify-data"]
        tic = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        total = time.perf_counter() - tic
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
        manifest = read_manifest(sweep_dir)
    assert len(manifest["points"]) == points, "unexpected sweep size"
    summary = proc.stdout[proc.stdout.index("vit-dt sweep: "):]
    gpu_hours = re.search(r"^  total: ([\d.]+) GPU-hours", summary, re.M)
    numbers = {
        "benchmark": "dry_run", "quick": args.quick, "points": points, "shapes": len(manifest["jobs"]),
        "total_s": round(total, 3), "compose_validate_s": manifest["prepare_seconds"],
        "estimate_render_write_s": manifest["submit_seconds"],
        "startup_s": round(total - manifest["prepare_seconds"] - manifest["submit_seconds"], 3),
        "summary_lines": len(summary.splitlines()), "total_gpu_hours": float(gpu_hours.group(1)) if gpu_hours else None,
        "goal_s": GOAL_S,
    }
    print(f"dry run of {points} points over {numbers['shapes']} shapes, cost estimate included:")
    print(f"  whole command (vit-dt's own time)   {total:6.2f} s   (goal < {GOAL_S:.0f} s: "
          f"{'met' if total < GOAL_S else 'NOT met'})")
    print(f"    start-up (Python, imports, Hydra)   {numbers['startup_s']:6.2f} s")
    print(f"    compose + validate + estimate       {manifest['prepare_seconds']:6.2f} s")
    print(f"    group, render, manifest             {manifest['submit_seconds']:6.2f} s")
    print(f"  summary: {numbers['summary_lines']} lines, total {numbers['total_gpu_hours']} GPU-hours")
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1) + "\n")
    print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
