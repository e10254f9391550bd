"""Sampled step timing that never synchronises the device: which steps are timed, when their numbers are read,
and that a real engine's timers come out right through it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed: in-process engines run on the CPU

import pytest
import torch

from tests.helpers import typed
from vit_dt.measure.breakdown import TIMER_KEYS
from vit_dt.measure.step_timing import DeviceClock, SampledStepTimer, StepSampler

CPU = torch.device("cpu")


def test_sampler_skips_warmup_then_samples_every_n():
    sampler = StepSampler(sample_every=3, warmup_steps=2)
    assert [s for s in range(12) if sampler.should_sample(s)] == [2, 5, 8, 11]
    every = StepSampler(sample_every=1, warmup_steps=0)
    assert all(every.should_sample(s) for s in range(5))


def test_sampler_means_and_reset():
    sampler = StepSampler(sample_every=1, warmup_steps=0)
    assert sampler.summary()["samples"] == 0 and sampler.summary()["fwd"] == 0.0
    sampler.add({"fwd": 10.0, "bwd": 20.0, "bwd_inner": 15.0, "bwd_allreduce": 5.0, "step": 4.0},
                data_wait_ms=1.0, step_ms=40.0)
    sampler.add({"fwd": 30.0, "bwd": 40.0, "bwd_inner": 25.0, "bwd_allreduce": 15.0},  # no "step": counts as 0
                data_wait_ms=3.0, step_ms=80.0)
    summary = sampler.summary()
    assert summary == {"fwd": 20.0, "bwd": 30.0, "bwd_inner": 20.0, "bwd_allreduce": 10.0, "step": 2.0,
                       "data_wait": 2.0, "step_time": 60.0, "samples": 2}
    sampler.reset()
    assert sampler.summary()["samples"] == 0 and sampler.summary()["step_time"] == 0.0


def test_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match="sample_every"):
        StepSampler(sample_every=0, warmup_steps=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        StepSampler(sample_every=1, warmup_steps=-1)


class RecordingEngine:
    """Stands in for an engine's timing interface only (the real engines are exercised below)."""

    def __init__(self):
        self.calls: list = []
        self.timed_steps = 0

    def set_timing(self, enabled):
        self.calls.append(("set_timing", enabled))

    def last_step_timers(self):
        self.timed_steps += 1
        self.calls.append(("read",))
        return {"fwd": float(self.timed_steps)}


def test_device_clock_on_a_cpu_measures_host_time_and_is_always_done():
    clock = DeviceClock(CPU)
    start = clock.mark()
    time.sleep(0.01)
    end = clock.mark()
    assert clock.done(end) and clock.ms(start, end) >= 10


def test_timed_steps_are_read_after_they_end_and_reach_on_sample_with_their_info():
    engine, seen = RecordingEngine(), []
    timer = SampledStepTimer(engine, StepSampler(sample_every=3, warmup_steps=1), DeviceClock(CPU),
                             on_sample=lambda timers, info: seen.append((timers, info)))
    for step in range(8):
        timer.begin(step)
        timer.end(data_wait_ms=0.5, step=step)
    timer.finish()
    assert [info["step"] for _, info in seen] == [1, 4, 7]
    assert [timers["fwd"] for timers, _ in seen] == [1.0, 2.0, 3.0]
    summary = timer.sampler.summary()
    assert summary["samples"] == 3 and summary["fwd"] == 2.0 and summary["data_wait"] == 0.5
    assert summary["step_time"] >= 0.0
    # Timing is switched on only for the timed steps, and each timed step is read before the next one starts.
    on = [i for i, call in enumerate(engine.calls) if call == ("set_timing", True)]
    reads = [i for i, call in enumerate(engine.calls) if call == ("read",)]
    assert len(on) == 3 and all(read < later for read, later in zip(reads, on[1:]))


def test_finish_without_a_timed_step_reads_nothing():
    engine = RecordingEngine()
    timer = SampledStepTimer(engine, StepSampler(sample_every=5, warmup_steps=10), DeviceClock(CPU))
    for step in range(3):
        timer.begin(step)
        timer.end()
    timer.finish()
    assert ("read",) not in engine.calls and timer.sampler.summary()["samples"] == 0


def _engine(kind: str, device: torch.device):
    from vit_dt.config.batch import Batch
    from vit_dt.config.ds_config import derive_deepspeed_config
    from vit_dt.engines import DDPEngine, DeepSpeedEngine
    from vit_dt.models.vit import build_model
    from vit_dt.optim.optimizers import OptimizerSpec

    torch.manual_seed(0)
    model = build_model(typed("model", **{"name": "vit_tiny", "image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2,
                         "hidden_dim": 32, "mlp_dim": 64, "dropout": 0.0}), 10).to(device)
    spec = OptimizerSpec.from_config(typed("optimizer", **{"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}), 8)
    schedule = {"warmup_steps": 0, "total_steps": 100, "schedule": "constant"}
    trainer_cfg = {"grad_clip": 1.0, "compile": False}
    if kind == "deepspeed":
        config = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="fp32", zero_stage=0, grad_clip=1.0,
                                         wall_clock_breakdown=True)
        return DeepSpeedEngine(model, config, typed("trainer", **trainer_cfg), device, schedule, spec)
    return DDPEngine(model, typed("trainer", **trainer_cfg), device, "fp32", schedule, 1, spec)


def _run(engine, device, steps: int, every: int) -> dict:
    timer = SampledStepTimer(engine, StepSampler(sample_every=every, warmup_steps=1), DeviceClock(device))
    images, labels = torch.randn(8, 3, 16, 16, device=device), torch.randint(0, 10, (8,), device=device)
    for step in range(steps):
        timer.begin(step)
        engine.micro_step(images, labels, boundary=True)
        timer.end()
    timer.finish()
    return timer.sampler.summary()


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_real_engines_report_each_timed_step_through_the_timer(one_rank_group, kind):
    summary = _run(_engine(kind, CPU), CPU, steps=7, every=2)
    assert summary["samples"] == 3                                # steps 1, 3, 5
    assert summary["fwd"] > 0 and summary["bwd"] > 0 and summary["step"] > 0, summary
    assert summary["bwd_inner"] <= summary["bwd"] + 1e-6
    timed = summary["fwd"] + summary["bwd"] + summary["step"]
    assert timed <= 1.05 * summary["step_time"], summary           # one step's timers, not several piled up


GPU_WORKER = """
import json, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from vit_dt.run.distributed import free_port
import test_step_timing as t

os.environ["LOCAL_RANK"] = "0"
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
device = torch.device("cuda", 0)
engine = t._engine(sys.argv[2], device)

def forbidden(*_args, **_kwargs):
    raise AssertionError("a timed step synchronised the device")

torch.cuda.synchronize = forbidden
print(json.dumps(t._run(engine, device, steps=6, every=1)))
dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (device synchronisation)")
@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_timing_every_step_on_a_gpu_never_synchronises_the_whole_device(kind):
    """In a fresh interpreter, so DeepSpeed drives CUDA (this session's in-process engines run on the CPU)."""
    from tests.helpers import REPO as repo
    env = os.environ | {"DS_ACCELERATOR": "cuda", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", GPU_WORKER, str(repo), kind], capture_output=True, text=True,
                          timeout=300, env=env, cwd=repo)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 5 and all(summary[key] >= 0 for key in TIMER_KEYS)
    assert summary["fwd"] > 0 and summary["step_time"] >= summary["fwd"]
