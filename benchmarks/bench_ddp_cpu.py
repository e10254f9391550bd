"""Two CPU ranks (gloo, vit_tiny): vit-dt's step time against a plain torchrun DDP loop, in the same run.

The script launches itself under torchrun (`python -m torch.distributed.run --standalone --nproc-per-node 2`). Both
ranks hold every contender and alternate between them step by step, so load drifting on a shared machine hits all
contenders alike; the median step time is compared. Goal (issue 6): vit-dt step time <= 1.05 x the plain DDP loop.

    python benchmarks/bench_ddp_cpu.py --quick     # CI: seconds, checks it works, not how fast
    python benchmarks/bench_ddp_cpu.py             # the measurement
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path as FsPath

sys.path.insert(0, str(FsPath(__file__).resolve().parent))
sys.path.insert(0, str(FsPath(__file__).resolve().parents[1]))

GOAL_RATIO = 1.05
CONTENDERS = ("plain_ddp", "vitdt_ddp", "vitdt_deepspeed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: batch 8, few steps")
    parser.add_argument("--nproc", type=int, default=2, help="CPU ranks")
    parser.add_argument("--batch", type=int, default=32, help="images per rank per step")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender = steps x repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a vit-dt config override for every contender (repeatable)")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/ddp-cpu-<time>.json)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the ranks are stopped")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.steps, args.repeats = min(args.batch, 8), 1, 2, 2
    for key in ("nproc", "batch", "steps", "repeats", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    return args


def worker(args) -> None:
    """One rank under torchrun: build every contender, alternate timed repeats, rank 0 writes the JSON."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import common
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    cfg = common.bench_config("vit_tiny", args.image_size, args.batch, "fp32", False, args.overrides, world_size=world)
    seed = 1000 * rank   # different data per rank, as in training; same weights (the engines broadcast rank 0's)
    paths = {"plain_ddp": common.reference_path(cfg, device, seed=seed, ddp=True),
             "vitdt_ddp": common.ddp_path(cfg, device, seed=seed),
             "vitdt_deepspeed": common.deepspeed_path(cfg, device, seed=seed)}
    for path in paths.values():
        common.first_steps(path.step, args.warmup, device)
    # Rounds of one step per contender, in rotating order: on a shared CPU, load changes within seconds, and
    # per-step medians over interleaved steps shrug off both that drift and the spikes.
    rounds = args.steps * args.repeats
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(common.time_steps(paths[name].step, 1, device))
    # A step ends when the slowest rank's all-reduce does: take the slowest rank's time per step.
    gathered: list = [None] * world
    dist.all_gather_object(gathered, times)
    if rank == 0:
        per_step = {name: [max(r[name][i] for r in gathered) for i in range(rounds)] for name in names}
        medians = {name: common.median(values) for name, values in per_step.items()}
        plain = medians["plain_ddp"]
        report = {
            "benchmark": "ddp_cpu",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "world_size": world, "backend": "gloo", "threads_per_rank": args.threads, "model": "vit_tiny",
            "image_size": args.image_size, "batch_per_rank": args.batch, "warmup": args.warmup,
            "steps": args.steps, "repeats": args.repeats, "timed_steps": rounds, "overrides": args.overrides,
            "quick": args.quick, "goal_ratio": GOAL_RATIO, "versions": common.versions(),
            "contenders": {name: {"settings": paths[name].settings, "step_ms_median": medians[name] * 1e3,
                                  "step_ms": [t * 1e3 for t in per_step[name]],
                                  "img_per_s": args.batch * world / medians[name],
                                  "ratio_to_plain": medians[name] / plain,
                                  # Same-round ratios: what slow drift cannot move.
                                  "ratio_to_plain_paired": common.median(
                                      [t / p for t, p in zip(per_step[name], per_step["plain_ddp"])]),
                                  "meets_goal": medians[name] / plain <= GOAL_RATIO}
                           for name in names},
        }
        FsPath(args.out).write_text(json.dumps(report, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def launch(args) -> int:
    out = FsPath(args.out or f"outputs/bench/ddp-cpu-{_dt.datetime.now():%Y%m%d-%H%M%S}.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    forwarded = [f"--batch={args.batch}", f"--image-size={args.image_size}", f"--threads={args.threads}",
                 f"--warmup={args.warmup}", f"--steps={args.steps}", f"--repeats={args.repeats}", f"--out={out}",
                 *[f"--set={o}" for o in args.overrides]] + (["--quick"] if args.quick else [])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               str(FsPath(__file__).resolve()), "--worker", *forwarded]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(command, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        print(f"torchrun exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode
    report = json.loads(out.read_text())
    print(f"{report['world_size']} CPU ranks (gloo), vit_tiny {report['image_size']}px, "
          f"batch {report['batch_per_rank']}/rank, {report['threads_per_rank']} thread(s)/rank")
    print("| contender | step ms (median) | img/s | vs plain DDP | same-step ratio | <= 1.05x |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, entry in report["contenders"].items():
        print(f"| {name} | {entry['step_ms_median']:.1f} | {entry['img_per_s']:.1f} | {entry['ratio_to_plain']:.3f} | "
              f"{entry['ratio_to_plain_paired']:.3f} | {'yes' if entry['meets_goal'] else 'no'} |")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
