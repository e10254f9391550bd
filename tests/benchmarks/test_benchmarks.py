"""The benchmarks run end to end in --quick mode and write well-formed JSON. Speed is not checked here (a timed test
on a shared CPU would be flaky); the numbers come from running the benchmarks themselves (docs/performance.md)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow   # each runs its benchmark end to end (~30 s on a 2-core CPU)


def run_benchmark(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", f"--out={out}", *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.is_file(), proc.stdout[-2000:]
    return proc


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_throughput_benchmark_quick_writes_every_path(tmp_path):
    out = tmp_path / "throughput.json"
    proc = run_benchmark("bench_throughput.py", out)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "throughput" and report["quick"] is True
    assert (report["device"], report["model"], report["precision"]) == ("cpu", "vit_tiny", "fp32")
    assert report["versions"]["torch"] and report["versions"]["deepspeed"]
    assert positive(report["flops_per_image"]) and report["peak_tflops"] is None   # no peak on a CPU
    assert list(report["paths"]) == ["reference", "deepspeed", "ddp"]
    assert report["goals"] == []          # the H100 goals (benchmarks/goals.py) are not this run's
    for name, entry in report["paths"].items():
        assert positive(entry["img_per_s"]) and positive(entry["step_ms_median"]), (name, entry)
        assert len(entry["img_per_s_repeats"]) == report["repeats"]
        assert sorted(entry["img_per_s_repeats"])[len(entry["img_per_s_repeats"]) // 2] == \
            entry["img_per_s"]                                       # the median of the repeats
        assert positive(entry["first_step_s"]) and entry["compile_s"] is None   # nothing compiled
        assert entry["mfu"] is None and positive(entry["tflops"]) and positive(entry["peak_mem_gb"])
    assert report["paths"]["reference"]["ratio_to_reference"] is None
    for name in ("deepspeed", "ddp"):
        entry = report["paths"][name]
        assert entry["ratio_to_reference"] == entry["img_per_s"] / report["paths"]["reference"]["img_per_s"]
    assert report["paths"]["deepspeed"]["settings"]["loop"] == "vit-dt DeepSpeedEngine"
    assert report["paths"]["deepspeed"]["settings"]["optimizer"] == "AdamW"
    assert "| reference |" in proc.stdout and "| deepspeed |" in proc.stdout


def test_throughput_benchmark_races_a_variant_beside_the_base_paths(tmp_path):
    out = tmp_path / "throughput.json"
    proc = run_benchmark("bench_throughput.py", out, "--paths=reference,ddp", "--variant=noclip:trainer.grad_clip=0",
                         "--variant=noclip:trainer.timer_sample_every=2", "--variant=b4:trainer.micro_batch=4",
                         "--variant=coarse:model.patch_size=8")
    report = json.loads(out.read_text())
    assert report["variants"] == {"noclip": ["trainer.grad_clip=0", "trainer.timer_sample_every=2"],
                                  "b4": ["trainer.micro_batch=4"], "coarse": ["model.patch_size=8"]}
    # The reference is plain PyTorch (vit-dt's config does not reach it): no variant of it.
    assert list(report["paths"]) == ["reference", "ddp", "ddp+noclip", "ddp+b4", "ddp+coarse"]
    base, variant = report["paths"]["ddp"], report["paths"]["ddp+noclip"]
    assert (base["settings"]["grad_clip"], base["settings"]["timer_sample_every"]) == (1.0, 5)
    assert (variant["settings"]["grad_clip"], variant["settings"]["timer_sample_every"]) == (0.0, 2)
    assert variant["settings"]["variant"] == {"name": "noclip", "overrides": report["variants"]["noclip"]}
    assert positive(variant["img_per_s"]) and positive(variant["ratio_to_reference"])
    # A variant's own batch counts its images: img/s is its batch over its median step.
    smaller = report["paths"]["ddp+b4"]
    assert (report["batch"], base["batch"], smaller["batch"]) == (8, 8, 4)
    assert base["flops_per_image"] == smaller["flops_per_image"] == report["flops_per_image"]
    coarse = report["paths"]["ddp+coarse"]       # 4x fewer tokens: its own FLOPs per image, its own TFLOP/s
    assert coarse["flops_per_image"] < base["flops_per_image"] / 3
    assert coarse["tflops"] == pytest.approx(coarse["img_per_s"] * coarse["flops_per_image"] / 1e12)
    for entry in (base, smaller):
        assert entry["img_per_s"] == pytest.approx(entry["batch"] / (entry["step_ms_median"] / 1e3))
    assert "| ddp+noclip | 8 |" in proc.stdout and "| ddp+b4 | 4 |" in proc.stdout


def test_throughput_benchmark_refuses_a_bad_variant_before_building_anything(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_throughput.py"), "--quick",
                               f"--out={tmp_path / 'x.json'}", *args],
                              capture_output=True, text=True, timeout=300, cwd=REPO,
                              env=os.environ | {"DS_ACCELERATOR": "cpu"})

    proc = bench("--variant=optimizer.master_update=fused")
    assert proc.returncode == 2 and "--variant 'optimizer.master_update=fused' is invalid; valid: NAME:KEY=VALUE" \
        in proc.stderr
    proc = bench("--paths=reference", "--variant=fused:optimizer.master_update=fused")
    assert proc.returncode == 2 and "--paths has none of them; valid: add deepspeed, ddp or ceiling" in proc.stderr
    proc = bench("--variant=half:precision=bf16")
    assert proc.returncode == 2 and "the precision is the whole race's" in proc.stderr and "valid: --precision" \
        in proc.stderr
    proc = bench("--variant=fused:optimizer.master_update=one_pass")
    assert proc.returncode != 0 and "optimizer.master_update='one_pass' is invalid; valid: separate, fused" in \
        proc.stderr + proc.stdout
    assert "warming up" not in proc.stdout and not (tmp_path / "x.json").exists()


def test_throughput_benchmark_rejects_an_unknown_path(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_throughput.py"), "--quick",
                           "--paths=reference,fsdp", f"--out={tmp_path / 'x.json'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "--paths fsdp is unknown; valid: reference, deepspeed, ddp, ceiling" in proc.stderr


def test_ddp_cpu_benchmark_quick_races_three_contenders_on_two_ranks(tmp_path):
    out = tmp_path / "ddp.json"
    proc = run_benchmark("bench_ddp_cpu.py", out)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "ddp_cpu" and report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["goal_ratio"] == 1.05
    contenders = report["contenders"]
    assert set(contenders) == {"plain_ddp", "vitdt_ddp", "vitdt_deepspeed"}
    assert contenders["plain_ddp"]["ratio_to_plain"] == 1.0
    for name, entry in contenders.items():
        assert positive(entry["step_ms_median"]), name
        assert len(entry["step_ms"]) == report["timed_steps"] == report["steps"] * report["repeats"], name
        assert positive(entry["ratio_to_plain_paired"])
        assert entry["img_per_s"] == pytest.approx(report["batch_per_rank"] * 2 / (entry["step_ms_median"] / 1e3))
        assert entry["meets_goal"] == (entry["ratio_to_plain"] <= 1.05)
    assert contenders["plain_ddp"]["settings"]["loop"] == "plain PyTorch DDP"
    assert "| vitdt_ddp |" in proc.stdout


def test_balance_benchmark_quick_runs_both_modes_and_narrows_the_spread(tmp_path):
    out = tmp_path / "balance.json"
    proc = run_benchmark("bench_balance.py", out)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "balance" and report["world_size"] == 2 and report["engine"] == "ddp"
    assert report["quick"] is True and report["slow_rank"] == 1 and report["global_micro_batch"] == 32
    assert set(report["modes"]) == {"off", "speed"}
    assert all(len(runs) == report["repeats"] for runs in report["runs"].values())
    off, speed = report["modes"]["off"], report["modes"]["speed"]
    assert off["shares"] == [16, 16] and sum(speed["shares"]) == 32 and speed["shares"][1] < speed["shares"][0]
    for entry in (off, speed):
        assert positive(entry["step_ms"]) and positive(entry["img_per_s"]) and entry["replicas_in_sync"]
        assert len(entry["compute_ms"]) == 2 and all(positive(v) for v in entry["compute_ms"])
    # rank 1 sleeps 10 ms per image: a gap no load on a shared CPU closes by chance
    assert report["spread_narrowed"] and speed["spread"] < off["spread"]
    assert "| speed |" in proc.stdout and "| off |" in proc.stdout


def test_breakdown_overhead_benchmark_quick_times_each_mode_through_the_step_timer(tmp_path):
    out = tmp_path / "overhead.json"
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_breakdown_overhead.py"), "--quick",
                           f"--json={out}"], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "breakdown_overhead" and report["sample_every"] == 5
    assert [row["mode"] for row in report["modes"]] == ["off", "on, every step", "sampled 1/5", "off (A/A)"]
    for row in report["modes"]:
        assert positive(row["step_ms_median"]) and len(row["rounds_ms"]) == report["rounds"], row
    # The timed steps went through SampledStepTimer and DeepSpeed's real timers: every phase took time.
    assert all(positive(report["timer_means_ms"][key]) for key in ("fwd", "bwd", "step")), report["timer_means_ms"]


def test_throughput_profile_on_a_cpu_is_refused_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_throughput.py"), "--quick",
                           f"--profile={tmp_path / 'prof'}", f"--out={tmp_path / 'x.json'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=os.environ | {"DS_ACCELERATOR": "cpu"})
    assert proc.returncode != 0 and "profiling measures device busy time and needs a CUDA device" in proc.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "prof").exists()


def test_step_profile_summary_counts_device_work_once_and_ranks_kernels():
    """No GPU here, so no CUDA kernels can be recorded: plain objects stand in for a profiler's events."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    sys.path.insert(0, str(REPO / "benchmarks"))
    import step_profile

    def event(name, us, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(name=name, device_type=device, device_time_total=us, is_user_annotation=annotation)

    events = [event("gemm", 6000), event("gemm", 6000), event("adamw", 1000), event("memset", 500),
              event("Optimizer.step#AdamW.step", 1500, annotation=True),   # spans adamw: not counted again
              event("aten::mm", 9999, device=DeviceType.CPU)]               # host side: not device work
    summary = step_profile.summarise(SimpleNamespace(events=lambda: events), steps=2, wall_s=0.020)
    assert summary["device_busy_ms_per_step"] == pytest.approx(6.75)      # (6 + 6 + 1 + 0.5) ms / 2 steps
    assert summary["wall_ms_per_step"] == pytest.approx(10.0)
    assert summary["device_idle_share"] == pytest.approx(0.325)                 # 1 - 6.75 / 10
    assert summary["device_launches_per_step"] == 2.0
    assert [k["name"] for k in summary["costliest"]] == ["gemm", "adamw", "memset"]
    assert summary["costliest"][0] == {"name": "gemm", "ms_per_step": 6.0, "calls_per_step": 1.0}
    assert "| x | 10.00 | 6.75 | 32.5% | 2 | gemm (6.00) |" in step_profile.table({"x": summary})


def test_dry_run_benchmark_quick_reports_the_sweeps_cost(tmp_path):
    out = tmp_path / "dry_run.json"
    run_benchmark("bench_dry_run.py", out)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "dry_run" and (report["points"], report["shapes"]) == (40, 4)
    assert positive(report["total_s"]) and positive(report["total_gpu_hours"]) and report["summary_lines"] < 20
