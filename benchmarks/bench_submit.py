"""How long does submitting a sweep take? 48 points over 4 resource shapes, to the local Slurm cluster.

    python benchmarks/bench_submit.py            # 48 points, 4 shapes (goal: < 5 s of our own time)
    python benchmarks/bench_submit.py --quick    # 8 points, 2 shapes (CI)

Run it from the checkout: the sweep snapshots the code vit_dt is imported from (goal: < 1 s for this repository),
and that cost is reported on its own line, as is gathering the provenance (git state, package list).

"Our own time" is the whole `vit-dt sweep` command (Python start-up, Hydra composition and validation of every
point, grouping, pickling, writing the manifest) minus the time spent inside sbatch, which belongs to Slurm.
The jobs run a no-op entry and are cancelled at the end, so the benchmark leaves the cluster as it found it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 5.0
SNAPSHOT_GOAL_S = 1.0    # freezing this repository's code into <sweep>/code/ (docs/sweeps.md)


def sweep_args(quick: bool) -> tuple[list[str], int, int]:
    if quick:
        return ["resources.nodes=1,2", "trainer.seed=range(4)"], 8, 2
    return ["resources.nodes=1,2", "resources.gpus_per_node=1,2", "trainer.seed=range(12)"], 48, 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 points over 2 shapes")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    from vit_dt import localcluster
    from vit_dt.slurm.manifest import read_manifest

    info = localcluster.up()
    env = dict(os.environ, **info.env)
    overrides, points, shapes = sweep_args(args.quick)
    with tempfile.TemporaryDirectory(prefix="vitdt-bench-") as tmp:
        sweep_dir = Path(tmp) / "sweep"
        command = [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=localslurm", *overrides,
                   "hydra.launcher.entry=vit_dt.slurm.job_entry:noop_entry", f"hydra.sweep.dir={sweep_dir}"]
        tic = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        total = time.perf_counter() - tic
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
            return 1
        manifest = read_manifest(sweep_dir)
        job_ids = [j["job_id"] for j in manifest["jobs"]]
        subprocess.run(["scancel", *job_ids], env=env, check=False)
    assert len(manifest["points"]) == points and len(manifest["jobs"]) == shapes, "unexpected sweep size"
    sbatch = manifest["sbatch_seconds"]
    numbers = {
        "points": points, "shapes": shapes, "job_arrays": len(job_ids),
        "total_s": round(total, 3), "inside_sbatch_s": round(sbatch, 3), "our_own_s": round(total - sbatch, 3),
        "compose_validate_s": manifest["prepare_seconds"], "submit_phase_s": manifest["submit_seconds"],
        "startup_s": round(total - manifest["prepare_seconds"] - manifest["submit_seconds"], 3), "goal_s": GOAL_S,
        "snapshot_s": manifest["code"]["seconds"], "snapshot_files": manifest["code"]["files"],
        "snapshot_mb": round(manifest["code"]["bytes"] / 1e6, 2), "snapshot_goal_s": SNAPSHOT_GOAL_S,
        "provenance_s": manifest.get("provenance_seconds"),
    }
    print(f"submitting {points} points over {shapes} shapes ({len(job_ids)} job arrays):")
    print(f"  whole command     {total:7.2f} s")
    print(f"  inside sbatch     {sbatch:7.2f} s")
    print(f"  our own time      {total - sbatch:7.2f} s   (goal < {GOAL_S:.0f} s: "
          f"{'met' if total - sbatch < GOAL_S else 'NOT met'})")
    print(f"    start-up (Python, imports, Hydra)   {numbers['startup_s']:6.2f} s")
    print(f"    compose + validate every point      {manifest['prepare_seconds']:6.2f} s")
    print(f"    group, pickle, sbatch, manifest     {manifest['submit_seconds']:6.2f} s")
    print(f"      of which: snapshot the code       {numbers['snapshot_s']:6.2f} s   ({numbers['snapshot_files']} files, "
          f"{numbers['snapshot_mb']:.1f} MB; goal < {SNAPSHOT_GOAL_S:.0f} s: "
          f"{'met' if numbers['snapshot_s'] < SNAPSHOT_GOAL_S else 'NOT met'})")
    print(f"      of which: provenance              {numbers['provenance_s'] or 0:6.2f} s   (git state, package list)")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
