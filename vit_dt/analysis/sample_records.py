"""Realistic result records without running anything: for tests, docs and trying `vit-dt report` out.

`make_record` builds one record in the schema vit_dt/record.py writes (completed or failed) from a handful of
numbers; `simulated_sweep` fills a whole sweep from the scaling model plus seeded noise. Nothing here is used
to produce a real report: reports read the results store only.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from vit_dt.analysis.scaling_model import Interconnect, Profile, predict, shape, steps_per_epoch

VIT_B_16_PARAMS = 86_567_656            # torchvision vit_b_16 with a 10-class head
VIT_B_16_TRAIN_FLOPS = 105.9e9          # per training image (fwd + bwd), FlopCounterMode


def make_record(*, world_size: int, epoch_time_s: float, micro_batch: int, nodes: int | None = None,
                layout: str = "intra", scaling: str = "strong", grad_accum: int = 1, train_samples: int = 50_000,
                epochs: int = 3, step_parts_ms: Mapping[str, float] | None = None, status: str = "completed",
                point: int | None = None, sweep_dir: str = "/sweeps/sample", num_params: int = VIT_B_16_PARAMS,
                precision: str = "fp32", engine: str = "deepspeed", model: str = "vit_b_16",
                dataset: str = "cifar10", val_acc: Sequence[float] | None = None,
                train_loss: Sequence[float] | None = None, gpu_model: str | None = "T4", peak_tflops: float = 8.1,
                interconnect: Mapping[str, float] | None = None, fraction_per_gpu: float = 0.1,
                fixed: str = "micro", drop_last: bool = True, first_epoch_factor: float = 1.15,
                finished_at: str = "2026-01-01T00:00:00+00:00") -> dict:
    """One record. `step_parts_ms` (fwd, bwd_inner, bwd_allreduce, step, data_wait) is the timed step's split;
    without it there is no breakdown (as from a run with the timers off)."""
    nodes = nodes if nodes is not None else (world_size if layout == "inter" else 1)
    per_node = max(1, world_size // nodes)
    global_batch = micro_batch * grad_accum * world_size
    steps = steps_per_epoch(train_samples, world_size, micro_batch, grad_accum, drop_last)
    run_dir = f"{sweep_dir}/points/{point if point is not None else world_size}"
    identity = {
        "schema_version": 1, "run_dir": run_dir, "run_name": None, "sweep_dir": sweep_dir, "point": point,
        "cluster": "sample", "layout": layout, "scaling": scaling, "engine": engine, "precision": precision,
        "zero_stage": 0 if engine == "deepspeed" else None, "dataset": dataset, "model": model,
        "world_size": world_size, "nodes": nodes, "ranks_per_node": per_node, "launch": "slurm",
        "slurm_job_id": None,
    }
    config = {"cluster": {"name": "sample", "interconnect": dict(interconnect or {"intra_node_gbps": 10.0,
                                                                                    "inter_node_gbps": 10.0,
                                                                                    "latency_us": 20.0})},
              "resources": {"layout": layout, "nodes": nodes, "gpus_per_node": per_node},
              "scaling": {"mode": scaling, **({"fraction_per_gpu": fraction_per_gpu} if scaling == "weak" else {}),
                          **({"fixed": fixed} if scaling == "strong" else {})},
              "trainer": {"epochs": epochs, "micro_batch": micro_batch, "grad_accum": grad_accum,
                          "global_batch": global_batch if fixed == "global" else None, "max_steps_per_epoch": None},
              "model": {"name": model}, "dataset": {"name": dataset}, "precision": precision, "engine": engine,
              "deepspeed": {"zero_stage": 0}, "wandb": {"mode": "offline", "project": "vit-dt"}}
    if status != "completed":
        return {"status": status, "error": "RuntimeError: sample failure", **identity,
                "started_at": finished_at, "finished_at": finished_at, "epochs": [], "final_val_acc": None,
                "config": config}
    val_acc = list(val_acc) if val_acc is not None else [0.3 + 0.08 * e for e in range(epochs)]
    train_loss = list(train_loss) if train_loss is not None else [2.0 - 0.2 * e for e in range(epochs)]
    breakdown = None
    if step_parts_ms is not None:
        parts = {k: float(step_parts_ms.get(k, 0.0)) for k in ("fwd", "bwd_inner", "bwd_allreduce", "step",
                                                               "data_wait")}
        parts["bwd"] = parts["bwd_inner"] + parts["bwd_allreduce"]
        parts["step_time"] = 1e3 * epoch_time_s / max(1, steps)
        parts["compute"] = parts["fwd"] + parts["bwd_inner"] + parts["step"]
        breakdown = parts
    epoch_rows = []
    for e in range(epochs):
        time_s = epoch_time_s * (first_epoch_factor if e == 0 else 1.0)
        seen = steps * global_batch
        row = {"epoch": e, "time_s": time_s, "steps": steps, "train_samples_seen": seen,
               "train_loss": train_loss[e], "train_acc": min(1.0, val_acc[e] + 0.02), "val_loss": train_loss[e] + 0.1,
               "val_acc": val_acc[e], "img_per_s": seen / time_s, "lr": 1e-4}
        if breakdown:
            row.update(breakdown_ms=dict(breakdown), comm_share=breakdown["bwd_allreduce"] / breakdown["step_time"],
                       data_wait_share=breakdown["data_wait"] / breakdown["step_time"])
        epoch_rows.append(row)
    img_per_s = steps * global_batch / epoch_time_s
    tflops = img_per_s / world_size * VIT_B_16_TRAIN_FLOPS / 1e12
    per_rank = [dict(breakdown, rank=r, comm_share=breakdown["bwd_allreduce"] / breakdown["step_time"])
                for r in range(world_size)] if breakdown else None
    return {
        "status": "completed", "error": None, **identity, "started_at": finished_at, "finished_at": finished_at,
        "hostnames": [f"node{i}" for i in range(nodes)], "device": "cuda", "gpu_model": gpu_model,
        "micro_batch": micro_batch, "grad_accum": grad_accum, "global_batch": global_batch,
        "train_samples": train_samples, "val_samples": 10_000, "num_params": num_params,
        "flops_per_image": VIT_B_16_TRAIN_FLOPS, "epochs": epoch_rows, "final_val_acc": val_acc[-1],
        "final_train_loss": train_loss[-1], "epoch_time_s_mean": epoch_time_s,
        "epoch_time_s_all_mean": sum(r["time_s"] for r in epoch_rows) / epochs,
        "img_per_s": img_per_s, "img_per_s_per_gpu": img_per_s / world_size, "tflops": tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None, "peak_mem_gb": 9.5,
        "breakdown_ms": {"per_rank": per_rank, "mean": dict(breakdown)} if breakdown else None,
        "comm_share": breakdown["bwd_allreduce"] / breakdown["step_time"] if breakdown else None,
        "data_wait_share": breakdown["data_wait"] / breakdown["step_time"] if breakdown else None,
        "straggler": {"flagged": False, "slow_rank": None, "skew": 0.01, "threshold": 0.2},
        "param_checksums": [1.0] * world_size, "replicas_in_sync": True, "config": config,
    }


T4_PROFILE = Profile(fwd_ms_per_image=10.5, bwd_ms_per_image=21.0, optimizer_ms=60.0, data_wait_ms_per_image=1.5,
                     overhead_ms=15.0, grad_bytes=VIT_B_16_PARAMS * 4, micro_batch=64, train_samples=50_000)


def simulated_sweep(*, gpus: Sequence[int], layout: str = "intra", scaling: str = "strong",
                    micro_batches: Sequence[int] = (64,), profile: Profile = T4_PROFILE,
                    interconnect: Interconnect = Interconnect(16.0, 24.0, 10.0), noise: float = 0.02,
                    seed: int = 0, epochs: int = 3, start_point: int = 0, sweep_dir: str = "/sweeps/sample",
                    fraction_per_gpu: float = 0.1, **extra: Any) -> list[dict]:
    """Records of a sweep as the model (plus +-noise, seeded) says it would come out; one per (micro-batch, N)."""
    rng = random.Random(seed)
    records, point = [], start_point
    base = profile if scaling == "strong" else _weak_profile(profile, fraction_per_gpu)
    for micro in micro_batches:
        for row in predict(base, interconnect, gpus, layout=layout, micro_batch=micro, scaling=scaling):
            jitter = 1.0 + rng.uniform(-noise, noise)
            parts = base.compute_ms(micro, 1)
            nodes, _ = shape(row.world_size, layout, 1)
            step_parts = {"fwd": parts["fwd"] * jitter, "bwd_inner": parts["bwd"] * jitter,
                          "bwd_allreduce": row.allreduce_ms * jitter if row.world_size > 1 else 0.5,
                          "step": parts["optimizer"], "data_wait": parts["data_wait"]}
            accuracy_drop = 0.02 * (row.global_batch / 64) ** 0.5
            records.append(make_record(
                world_size=row.world_size, nodes=nodes, epoch_time_s=row.epoch_s * jitter, micro_batch=micro,
                layout=layout, scaling=scaling, train_samples=base.samples(row.world_size), epochs=epochs,
                step_parts_ms=step_parts, point=point, sweep_dir=sweep_dir, fraction_per_gpu=fraction_per_gpu,
                val_acc=[max(0.05, 0.3 + 0.1 * e - accuracy_drop) for e in range(epochs)], **extra))
            point += 1
    return records


def _weak_profile(profile: Profile, fraction_per_gpu: float) -> Profile:
    from dataclasses import replace

    full = profile.train_samples or 50_000
    return replace(profile, scaling="weak", train_samples=int(full * fraction_per_gpu), world_size=1)


def write_store(sweep_dir, records: Sequence[Mapping[str, Any]]):
    """Write `records` as sweep_dir/results.jsonl (one JSON line each, the store's format); returns the path."""
    from pathlib import Path

    from vit_dt.results import STORE_NAME, to_json

    path = Path(sweep_dir) / STORE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(to_json(r) + "\n" for r in records), encoding="utf-8")
    return path
