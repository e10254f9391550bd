"""Throughput race in ONE process: a plain PyTorch loop against vit-dt's DeepSpeed and DDP engine paths.

Same model, batch and synthetic data for every contender; warm-up excluded (the first step, which includes
torch.compile's compilation, is reported separately); timed repeats interleave the contenders and the median is
reported; img/s, MFU, peak memory and the ratio vit-dt / reference. Writes JSON.

    python benchmarks/bench_throughput.py --quick                       # CI: tiny ViT on the CPU, seconds
    python benchmarks/bench_throughput.py --model vit_b_16 --batch 256 --precision bf16 --compile   # one H100

With ViT-B/16 at 224 px in bf16 on an H100 the report also checks the throughput goals (benchmarks/goals.py).

The reference is the H100 baseline's "plain PyTorch, bf16 autocast, torch.compile" loop (docs/performance.md);
on a CPU, fp32 eager. vit-dt's paths use the config a real run composes (grad clipping, sampled breakdown timers,
bf16 mode); change any of it with --set KEY=VALUE (Hydra overrides), e.g. --set deepspeed.zero_stage=1. A variant
races vit-dt's paths again with more overrides, in the same process and interleaved with the rest:

    ... --paths deepspeed --variant fused:optimizer.master_update=fused     # rows deepspeed-master, +fused
    ... --batch 64 --paths deepspeed --variant b256:trainer.micro_batch=256  # batch 64 against 256, one run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path as FsPath

sys.path.insert(0, str(FsPath(__file__).resolve().parent))          # benchmarks/common.py
sys.path.insert(0, str(FsPath(__file__).resolve().parents[1]))      # vit_dt without an install

import common  # noqa: E402
import goals  # noqa: E402

PATHS = ("reference", "deepspeed", "ddp", "ceiling")
DEFAULT_PATHS = ("reference", "deepspeed", "ddp")
BF16_MODES = ("master", "autocast", "native")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: vit_tiny at 32 px, batch 8, few steps, CPU")
    parser.add_argument("--model", default="vit_tiny", choices=("vit_tiny", "vit_b_16"))
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 for vit_b_16, 32 for vit_tiny")
    parser.add_argument("--batch", type=int, default=64, help="images per step (one rank)")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile every contender (trainer.compile)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated subset of {', '.join(PATHS)} (ceiling: vit-dt's model and step in a "
                        "bare loop, what the engines would reach with no overhead of their own)")
    parser.add_argument("--bf16-modes", default="master",
                        help=f"with bf16: DeepSpeed modes to race, comma-separated ({', '.join(BF16_MODES)})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per path (the first includes compile)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per path; the median is reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a vit-dt config override for every contender (repeatable)")
    parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="race each vit-dt path (not the reference) once more as NAME with this override; "
                        "repeat a NAME to give it several overrides")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="after timing, profile --profile-steps steps of each path (CUDA only): Chrome traces "
                        "in DIR, device busy/idle per step and the costliest kernels in the JSON")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/throughput-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.image_size, args.batch = "vit_tiny", args.image_size or 32, min(args.batch, 8)
        args.warmup, args.steps, args.repeats = 2, 3, 3
        args.device = "cpu" if args.device == "auto" else args.device
    args.image_size = args.image_size or (224 if args.model == "vit_b_16" else 32)
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        parser.error(f"--paths {','.join(sorted(unknown))} is unknown; valid: {', '.join(PATHS)}")
    modes = set(args.bf16_modes.split(",")) - set(BF16_MODES)
    if modes:
        parser.error(f"--bf16-modes {','.join(sorted(modes))} is unknown; valid: {', '.join(BF16_MODES)}")
    args.variants = parse_variants(parser, args.variants)
    if args.variants and set(args.paths.split(",")) <= {"reference"}:
        parser.error("--variant races vit-dt's paths again, but --paths has none of them; valid: add deepspeed, ddp "
                     "or ceiling to --paths")
    for key in ("batch", "steps", "repeats", "warmup", "profile_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    return args


def parse_variants(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, list[str]]:
    """`NAME:KEY=VALUE` specs -> {NAME: [KEY=VALUE, ...]} in the order the names first appear."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, _, override = spec.partition(":")
        if not name.isidentifier() or "=" not in override:
            parser.error(f"--variant {spec!r} is invalid; valid: NAME:KEY=VALUE with NAME a word, e.g. "
                         f"fused:optimizer.master_update=fused")
        if override.split("=")[0].lstrip("+~") == "precision":
            parser.error(f"--variant {spec!r}: the precision is the whole race's (its bf16 modes, the peak MFU is "
                         f"taken against); valid: --precision, one run per precision")
        variants.setdefault(name, []).append(override)
    return variants


def pick_device(choice: str):
    import torch

    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def warm_up(path: common.Path, args, device) -> dict:
    """Build-time memory and the untimed warm-up steps (the first one includes compilation)."""
    import torch

    from vit_dt.measure import metrics

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = common.first_steps(path.step, args.warmup, device)
    if device.type == "cuda":
        # Minus what was resident before this path was built (the other contenders): this path's own peak.
        peak = (torch.cuda.max_memory_allocated(device) - path.resident_before) / 2**30
    else:
        peak = metrics.peak_memory_gb(device)
    return {"first_step_s": first, "peak_mem_gb": peak}


def summarise(path: common.Path, warm: dict, per_step: list[float], peak_tflops: float | None) -> dict:
    from vit_dt.measure import metrics

    step_s = common.median(per_step)
    img_per_s = path.batch / step_s
    tflops = metrics.achieved_tflops(img_per_s, path.flops_per_image)
    return {
        "settings": path.settings,
        "img_per_s": img_per_s,
        "batch": path.batch,
        "flops_per_image": path.flops_per_image,
        "img_per_s_repeats": [path.batch / s for s in per_step],
        "step_ms_median": step_s * 1e3,
        "first_step_s": warm["first_step_s"],
        # The first step minus a steady one: graph capture and code generation (only meaningful when compiled;
        # the fused master update's kernels compile once per process: the first path using them pays).
        "compile_s": max(0.0, warm["first_step_s"] - step_s) if path.compiled else None,
        "tflops": tflops,
        "mfu": metrics.mfu(tflops, peak_tflops),
        "peak_mem_gb": warm["peak_mem_gb"],
    }


def build(name: str, cfg: dict, device, mode: str | None) -> common.Path:
    if name == "reference":
        return common.reference_path(cfg, device)
    if name == "deepspeed":
        return common.deepspeed_path(cfg, device, requested=mode)
    if name == "ceiling":
        return common.ceiling_path(cfg, device)
    return common.ddp_path(cfg, device)


def run(args) -> dict:
    device = pick_device(args.device)
    if args.profile and device.type != "cuda":
        raise SystemExit(f"--profile {args.profile}: profiling measures device busy time and needs a CUDA device; "
                         f"this run is on {device.type}")
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")   # before deepspeed is imported
    import torch

    from vit_dt.measure import metrics

    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True       # fp32 runs as a user's would on an H100
        torch.backends.cudnn.allow_tf32 = True
    configs = {None: common.bench_config(args.model, args.image_size, args.batch, precision, args.compile,
                                         args.overrides)}
    # Every variant's config composes (and is validated) before any model is built.
    for variant, overrides in args.variants.items():
        configs[variant] = common.bench_config(args.model, args.image_size, args.batch, precision, args.compile,
                                               [*args.overrides, *overrides])
    cfg = configs[None]
    common.init_single_rank_group(device)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    gpu_model = metrics.gpu_model_from_name(gpu_name) if gpu_name else None
    # Per config: a variant may change the model's geometry (and so its FLOPs per image).
    flops_of = {variant: metrics.vit_flops_per_image(c["model"], int(c["dataset"]["num_classes"]), training=True)
                for variant, c in configs.items()}
    flops = flops_of[None]
    peak = metrics.peak_tflops(gpu_model, metrics.matmul_precision(precision)) if gpu_model else None

    contenders = []
    for variant in configs:
        for name in args.paths.split(","):
            if variant is not None and name == "reference":
                continue   # plain PyTorch: vit-dt's config does not reach it
            modes = args.bf16_modes.split(",") if name == "deepspeed" and precision == "bf16" else [None]
            contenders += [(name, mode, variant) for mode in modes]
    if args.compile:
        import torch._dynamo.config
        import torch._inductor.config

        torch._inductor.config.fx_graph_cache = False   # each contender's compile time is its own, not a cache hit
        # Each contender is compiled as in a run of its own: dynamo keys its caches on the code, which every model
        # here shares. A second batch size would otherwise turn the batch dimension dynamic for later contenders,
        # and past the recompile limit (8) a contender would silently run eagerly.
        torch._dynamo.config.automatic_dynamic_shapes = False
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 4 * len(contenders)))
    paths, warm = [], {}
    for name, mode, variant in contenders:
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        path = build(name, configs[variant], device, mode)
        if variant is not None:
            path.name += f"+{variant}"
            path.settings["variant"] = {"name": variant, "overrides": args.variants[variant]}
        path.resident_before = resident
        path.batch = int(configs[variant]["trainer"]["micro_batch"])
        path.flops_per_image = flops_of[variant]
        print(f"warming up {path.name} ...", flush=True)
        warm[path.name] = warm_up(path, args, device)
        paths.append(path)
    # Timed repeats interleave the contenders (alternating order), so drifting clocks or load hit all alike.
    per_step: dict[str, list[float]] = {path.name: [] for path in paths}
    for repeat in range(args.repeats):
        for path in (paths if repeat % 2 == 0 else paths[::-1]):
            per_step[path.name].append(common.time_steps(path.step, args.steps, device))
    results = {path.name: summarise(path, warm[path.name], per_step[path.name], peak)
               for path in paths}
    if args.profile:
        import step_profile

        for path in paths:
            print(f"profiling {path.name} ...", flush=True)
            results[path.name]["profile"] = step_profile.profile_step(
                path.step, args.profile_steps, device, FsPath(args.profile) / f"{path.name}.trace.json")
    for path in paths:
        common.release(path)
    reference = results.get("reference", {}).get("img_per_s")
    matmul = common.measured_matmul_tflops(device) if precision == "bf16" else None
    for key, entry in results.items():
        entry["ratio_to_reference"] = entry["img_per_s"] / reference if reference and key != "reference" else None
        entry["mfu_vs_measured_matmul"] = metrics.mfu(entry["tflops"], matmul) if matmul else None
    report = {
        "benchmark": "throughput",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type, "gpu_name": gpu_name, "gpu_model": gpu_model,
        "model": args.model, "image_size": args.image_size, "batch": int(cfg["trainer"]["micro_batch"]),
        "precision": precision,
        "compile": args.compile, "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
        "overrides": args.overrides, "variants": args.variants, "quick": args.quick,
        "flops_per_image": flops, "peak_tflops": peak, "measured_matmul_tflops": matmul,
        "peak_mem_note": "torch.cuda.max_memory_allocated during the path's warm-up minus what was resident before it "
        "was built" if device.type == "cuda" else "process max RSS, cumulative: only the first path's is its own",
        "versions": common.versions(),
        "paths": results,
    }
    report["goals"] = goals.check(report)   # the one-H100 goals, where this run is theirs (else empty)
    return report


def table(report: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [f"{report['model']} {report['image_size']}px, batch {report['batch']}, {report['precision']}, "
            f"compile={report['compile']}, {report['gpu_name'] or 'CPU'}",
            "| path | batch | img/s | step ms | MFU | MFU vs measured matmul | peak mem GB | first step s | "
            "compile s | vs reference |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in report["paths"].items():
        mfu = None if entry["mfu"] is None else 100 * entry["mfu"]
        measured = None if entry.get("mfu_vs_measured_matmul") is None else 100 * entry["mfu_vs_measured_matmul"]
        rows.append(f"| {name} | {entry['batch']} | {entry['img_per_s']:,.1f} | {entry['step_ms_median']:.2f} | "
                    f"{fmt(mfu, '.1f')}{'%' if mfu is not None else ''} | "
                    f"{fmt(measured, '.1f')}{'%' if measured is not None else ''} | "
                    f"{fmt(entry['peak_mem_gb'], '.2f')} | {entry['first_step_s']:.2f} | "
                    f"{fmt(entry['compile_s'], '.1f')} | {fmt(entry['ratio_to_reference'], '.3f')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    out = FsPath(args.out or f"outputs/bench/throughput-{_dt.datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    if report["goals"]:
        print(goals.table(report["goals"]))
    profiles = {name: entry["profile"] for name, entry in report["paths"].items() if "profile" in entry}
    if profiles:
        import step_profile

        print(step_profile.table(profiles))
    print(f"wrote {out}")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
