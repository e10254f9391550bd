"""Balancing micro-batches by measured speed: two CPU ranks, one slowed per sample, balance=off against balance=speed.

Each contender is a real `vit-dt train` run (engine=ddp, vit_tiny; 2 local gloo ranks); the last rank sleeps
`--delay` seconds per image in every forward (`debug=slow_rank debug.delay_per_sample_s`, a slower GPU). The runs
alternate (off, speed, then speed, off, ...) so load drifting on a shared machine hits both alike; medians over
the repeats are reported. Goal (issue 8): balancing narrows the spread of per-rank compute time.

    python benchmarks/bench_balance.py --quick     # CI: seconds, checks it works, not how well
    python benchmarks/bench_balance.py             # the measurement

Per run, from result.json's `balance` (docs/results.md): the shares and per-rank compute time (fwd + bwd_inner +
optimizer step, ms per step) of the last epoch, their spread (max - min) / max, the step time, and img/s over the
epochs after the first (the first is balance=speed's calibration epoch, run at equal shares).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

MODES = ("off", "speed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 2 epochs of 4 steps, one repeat")
    parser.add_argument("--nproc", type=int, default=2, help="CPU ranks; the last one is slowed")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per image the slow rank sleeps")
    parser.add_argument("--micro-batch", type=int, default=16, help="images per rank per step at equal shares")
    parser.add_argument("--dataset", default="digits", choices=("digits", "synthetic"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a vit-dt config override for every run (repeatable)")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/balance-<time>.json)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is stopped")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.steps, args.repeats = 2, 4, 1
    for key in ("nproc", "micro_batch", "epochs", "steps", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.nproc < 2 or args.epochs < 2:
        parser.error("--nproc and --epochs must be >= 2: one rank is slowed, and balancing starts after epoch 0")
    if args.delay <= 0:
        parser.error(f"--delay must be > 0, got {args.delay}")
    return args


def overrides(args, mode: str, out_dir: Path) -> list[str]:
    slow = args.nproc - 1
    return [f"dataset={args.dataset}", "model=vit_tiny", "engine=ddp", "wandb.mode=disabled",
            f"trainer.nproc={args.nproc}", f"trainer.micro_batch={args.micro_batch}", f"trainer.epochs={args.epochs}",
            f"trainer.max_steps_per_epoch={args.steps}", "trainer.timer_warmup_steps=1",
            "trainer.timer_sample_every=2", "trainer.checkpoint=false", "trainer.log_every=0",
            f"trainer.balance={mode}", "debug=slow_rank",
            f"debug.delay_per_sample_s={{{slow}: {args.delay}}}",
            f"out_dir={out_dir}", *args.overrides]


def run_once(args, mode: str, out_dir: Path) -> dict:
    command = [sys.executable, "-m", "vit_dt.cli", "train", *overrides(args, mode, out_dir)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=REPO,
                          env=os.environ | {"DS_ACCELERATOR": "cpu"})
    if proc.returncode != 0:
        raise RuntimeError(f"balance={mode} run failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    run_dir = next(Path(line.split(": ", 1)[1].strip()) for line in proc.stdout.splitlines()
                   if line.startswith("run directory: "))
    result = json.loads((run_dir / "result.json").read_text())
    bal, last = result["balance"], result["balance"]["epochs"][-1]
    return {"mode": mode, "run_dir": str(run_dir), "replicas_in_sync": result["replicas_in_sync"],
            "shares": last["shares"], "compute_ms": last["compute_ms"], "spread": last["spread"],
            "spread_first_epoch": bal["spread_before"], "step_ms": last["step_time_ms"],
            "speed_img_per_s": last["speed_img_per_s"], "img_per_s": result["img_per_s"],
            "straggler_flagged": bool((result.get("straggler") or {}).get("flagged"))}


def summarise(runs: list[dict]) -> dict:
    median = lambda key: float(statistics.median(r[key] for r in runs))   # noqa: E731
    ranks = len(runs[0]["compute_ms"])
    return {"shares": runs[-1]["shares"],
            "compute_ms": [float(statistics.median(r["compute_ms"][k] for r in runs)) for k in range(ranks)],
            "spread": median("spread"), "spread_first_epoch": median("spread_first_epoch"),
            "step_ms": median("step_ms"), "img_per_s": median("img_per_s"),
            "replicas_in_sync": all(r["replicas_in_sync"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    import common

    args = parse_args(argv)
    stamp = f"{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out = Path(args.out or REPO / f"outputs/bench/balance-{stamp}.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_dir = out.parent / f"{out.stem}-runs"
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        order = MODES if repeat % 2 == 0 else MODES[::-1]
        for mode in order:
            entry = run_once(args, mode, runs_dir)
            runs[mode].append(entry)
            print(f"repeat {repeat} balance={mode}: shares {entry['shares']}, compute ms "
                  f"{[round(v, 1) for v in entry['compute_ms']]}, spread {entry['spread']:.3f}, "
                  f"{entry['img_per_s']:.1f} img/s", flush=True)
    modes = {mode: summarise(entries) for mode, entries in runs.items()}
    off, speed = modes["off"], modes["speed"]
    report = {
        "benchmark": "balance",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": args.nproc, "backend": "gloo", "engine": "ddp", "model": "vit_tiny", "dataset": args.dataset,
        "micro_batch": args.micro_batch, "global_micro_batch": args.micro_batch * args.nproc,
        "slow_rank": args.nproc - 1, "per_sample_delay_s": args.delay, "epochs": args.epochs,
        "steps_per_epoch": args.steps, "repeats": args.repeats, "overrides": args.overrides, "quick": args.quick,
        "versions": common.versions(), "runs": runs, "modes": modes,
        "spread_narrowed": speed["spread"] < off["spread"],
        "img_per_s_ratio": speed["img_per_s"] / off["img_per_s"] if off["img_per_s"] else None,
        "step_ms_ratio": speed["step_ms"] / off["step_ms"] if off["step_ms"] else None,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.nproc} CPU ranks (gloo, engine=ddp), vit_tiny on {args.dataset}, global micro-batch "
          f"{report['global_micro_batch']}; rank {report['slow_rank']} sleeps {args.delay * 1e3:g} ms per image; "
          f"{args.epochs} epochs x {args.steps} steps, median of {args.repeats} run(s) per mode")
    print("| balance | shares (last epoch) | compute ms per rank | compute spread | step ms | img/s | in sync |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, entry in modes.items():
        compute = ", ".join(f"{v:.1f}" for v in entry["compute_ms"])
        print(f"| {mode} | {entry['shares']} | {compute} | {entry['spread']:.3f} | {entry['step_ms']:.1f} | "
              f"{entry['img_per_s']:.1f} | {'yes' if entry['replicas_in_sync'] else 'no'} |")
    verdict = "narrowed" if report["spread_narrowed"] else "NOT narrowed"
    print(f"compute spread {off['spread']:.3f} -> {speed['spread']:.3f} ({verdict}); "
          f"img/s x{report['img_per_s_ratio']:.2f}, step time x{report['step_ms_ratio']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
