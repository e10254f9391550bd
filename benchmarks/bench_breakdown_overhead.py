"""What does recording the wall-clock breakdown cost? Step time with DeepSpeed's timers off, on every step, and
switched on for every N-th step only (what the trainer does), for a tiny ViT on a real DeepSpeed engine.

    python benchmarks/bench_breakdown_overhead.py                  # CPU, 10 rounds (goal: sampled < 2%)
    python benchmarks/bench_breakdown_overhead.py --quick          # CPU, short (CI)
    python benchmarks/bench_breakdown_overhead.py --device cuda --model vit_b_16 --batch 128   # on a GPU

Modes run interleaved in rounds (off, on, sampled, off again, ...) so that drift of a shared machine hits all of
them alike; each round times a block of steps and divides by the step count (on a GPU the block ends with one
synchronize, so "off" pays no per-step sync). "off (A/A)" repeats "off": its difference from "off" is the noise
floor of the measurement. A timed step does what the trainer does on a sampled step (vit_dt.measure.step_timing): timers
on, and once the step has finished on the device, read them and add them to the StepSampler; no synchronisation.

On a busy shared CPU the step-time differences are mostly noise, so the benchmark also measures the cost
directly: the wall time spent inside the timing machinery (DeepSpeed's timer calls, our switch, read and add, and
any wait for a timed step still running on the device), per step, as a share of the step time ("timing share").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

GOAL_OVERHEAD = 0.02
MODELS = {
    "tiny": dict(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256),
    "vit_b_16": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_engine(device: str, model_name: str, batch: int):
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(key, value)
    import deepspeed
    import torch
    import torchvision

    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(num_classes=10, **MODELS[model_name])
    config = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "train_batch_size": batch,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "wall_clock_breakdown": True, "steps_per_print": 10**9}
    if device == "cuda":
        config["bf16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps at batch 16 (CI: checks the plumbing, measures nothing)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=tuple(MODELS), default="tiny")
    parser.add_argument("--batch", type=int, help="micro-batch (default 64, --quick 16)")
    parser.add_argument("--rounds", type=int, help="rounds over all modes (default 10, --quick 2)")
    parser.add_argument("--steps", type=int, help="steps per mode and round (default 10, --quick 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; 1 is steadier on a "
                        "shared machine)")
    parser.add_argument("--sample-every", type=int, default=5, help="the trainer's timer_sample_every (default 5)")
    parser.add_argument("--json", type=Path, help="where to write the numbers (default "
                        "$VIT_DT_OUT_DIR/bench/breakdown_overhead.json, VIT_DT_OUT_DIR defaulting to outputs)")
    args = parser.parse_args(argv)
    batch = args.batch or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 10)
    steps = args.steps or (3 if args.quick else 10)
    every = args.sample_every
    out = args.json or Path(os.environ.get("VIT_DT_OUT_DIR", "outputs")) / "bench" / "breakdown_overhead.json"

    engine = build_engine(args.device, args.model, batch)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from vit_dt.engines.deepspeed_timers import read_engine_timers, set_engine_timing
    from vit_dt.measure.step_timing import DeviceClock, SampledStepTimer, StepSampler

    device = torch.device(args.device)
    size = MODELS[args.model]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Direct measure: wall time spent inside the timing machinery itself (DeepSpeed's timer start/stop, our
    # switch/read/add, and any wait for a timed step the device has not finished). It is what timing costs on a
    # CPU, and robust to a busy machine, where step-time differences drown in noise; on a GPU the end-to-end
    # difference also shows lost CPU/GPU overlap, which this cannot.
    spent = [0.0]

    def instrumented(function):
        def wrapper(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - tic
        return wrapper

    for name in ("_start_timers", "_stop_timers"):
        setattr(engine, name, instrumented(getattr(engine, name)))

    class Timing:
        """The trainer's engine interface for timing, on the raw DeepSpeed engine."""

        def set_timing(self, enabled: bool) -> None:
            set_engine_timing(engine, enabled)

        def last_step_timers(self) -> dict:
            return read_engine_timers(engine)

    means = StepSampler(sample_every=1, warmup_steps=0)    # every timed step of every mode, for the printout

    def step_timer(every: int | None) -> SampledStepTimer:
        sampler = StepSampler(sample_every=every or 1, warmup_steps=0 if every else 10**9)
        return SampledStepTimer(Timing(), sampler, DeviceClock(device),
                                on_sample=lambda timers, _info: means.add(timers, data_wait_ms=0.0, step_ms=0.0))

    def train_step(timer: SampledStepTimer, step: int) -> None:
        instrumented(timer.begin)(step)
        loss = torch.nn.functional.cross_entropy(engine(images.to(dtype)).float(), labels)
        engine.backward(loss)
        engine.step()
        instrumented(timer.end)()

    modes = {"off": None, "on, every step": 1, f"sampled 1/{every}": every, "off (A/A)": None}
    per_mode: dict[str, list[float]] = {mode: [] for mode in modes}
    spent_per_mode: dict[str, float] = dict.fromkeys(modes, 0.0)
    warm = step_timer(1)
    for step in range(3):                                   # warm-up: allocator, first-step setup
        train_step(warm, step)
    warm.finish()
    for _ in range(rounds):
        for mode, mode_every in modes.items():
            timer = step_timer(mode_every)
            sync()
            spent[0] = 0.0
            start = time.perf_counter()
            for step in range(steps):
                train_step(timer, step)
            instrumented(timer.finish)()
            sync()
            per_mode[mode].append((time.perf_counter() - start) * 1e3 / steps)
            spent_per_mode[mode] += spent[0] * 1e3 / steps / rounds
    torch.distributed.destroy_process_group()

    base = statistics.median(per_mode["off"])
    base_min = min(per_mode["off"])
    rows = []
    for mode, values in per_mode.items():
        median = statistics.median(values)
        rows.append({"mode": mode, "step_ms_median": median, "step_ms_min": min(values), "step_ms_max": max(values),
                     "overhead_median": median / base - 1, "overhead_min": min(values) / base_min - 1,
                     "timing_ms_per_step": spent_per_mode[mode],
                     "timing_share": (spent_per_mode[mode] - spent_per_mode["off"]) / base,
                     "rounds_ms": values})
    noise = abs(rows[-1]["overhead_median"])
    sampled = next(r for r in rows if r["mode"].startswith("sampled"))
    numbers = {
        "benchmark": "breakdown_overhead", "device": args.device, "model": args.model, "batch": batch,
        "rounds": rounds, "steps_per_round": steps, "sample_every": every, "world_size": 1,
        "host": platform.node(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "quick": args.quick, "goal_overhead": GOAL_OVERHEAD, "noise_floor": noise,
        "sampled_timing_share": sampled["timing_share"], "sampled_overhead_median": sampled["overhead_median"],
        "sampled_within_goal": sampled["timing_share"] < GOAL_OVERHEAD,
        "timer_means_ms": {k: round(v, 3) for k, v in means.summary().items() if k in ("fwd", "bwd", "step")},
        "modes": rows,
    }

    print(f"breakdown overhead: {args.model} batch {batch} on {args.device}, {rounds} rounds x {steps} steps, "
          f"timers on every {every}th step when sampled")
    print(f"{'mode':<16} {'median ms/step':>14} {'min':>9} {'max':>9} {'vs off (median)':>16} {'vs off (min)':>13} "
          f"{'timing ms/step':>15} {'timing share':>13}")
    for row in rows:
        print(f"{row['mode']:<16} {row['step_ms_median']:>14.2f} {row['step_ms_min']:>9.2f} {row['step_ms_max']:>9.2f} "
              f"{100 * row['overhead_median']:>15.2f}% {100 * row['overhead_min']:>12.2f}% "
              f"{row['timing_ms_per_step']:>15.3f} {100 * row['timing_share']:>12.3f}%")
    print(f"noise floor (off vs off again, medians): {100 * noise:.2f}%. Timing share = time spent in the timing "
          f"machinery per step / median step time (goal for sampled: < {100 * GOAL_OVERHEAD:.0f}%): "
          f"{100 * sampled['timing_share']:.3f}%")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(numbers, indent=1) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
