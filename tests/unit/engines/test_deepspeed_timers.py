"""vit_dt.engines.deepspeed_timers: DeepSpeed's own timers read and reset, and real DeepSpeed CPU engines (1 and 2
ranks, gloo) timed on sampled steps only, their per-rank summaries gathered and analysed as a run does."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vit_dt.engines.deepspeed_timers import read_engine_timers
from vit_dt.measure.breakdown import TIMER_KEYS, analyse


def test_read_engine_timers_reads_deepspeeds_timers_resets_them_and_fills_missing(monkeypatch):
    """DeepSpeed's own timer group (host timers on the CPU accelerator) behind a stand-in engine object."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.timer import SynchronizedWallClockTimer

    class Engine:
        timers = SynchronizedWallClockTimer()

    engine = Engine()
    for name, seconds in (("fwd", 0.02), ("step", 0.01), ("fwd", 0.02)):   # two micro-steps' forwards add up
        engine.timers(name).start()
        time.sleep(seconds)
        engine.timers(name).stop()
    first = read_engine_timers(engine)
    assert set(first) == set(TIMER_KEYS)
    assert first["fwd"] >= 40 and first["step"] >= 10 and first["bwd"] == first["bwd_allreduce"] == 0.0, first
    assert read_engine_timers(engine) == dict.fromkeys(TIMER_KEYS, 0.0)   # reset by the first read


# ------------------------------------------------------------------------------------- real DeepSpeed on CPU

WORKER = textwrap.dedent('''
    """One rank of a tiny-ViT DeepSpeed run on CPU; rank 0 writes what the timers and the sampler saw as JSON."""
    import json, os, sys, time
    import torch, torchvision, deepspeed
    from vit_dt.engines.deepspeed_timers import read_engine_timers, set_engine_timing
    from vit_dt.measure.step_timing import StepSampler
    from vit_dt.run.distributed import gather_to_rank0

    out, delays, steps, warmup, every = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    delay = delays[rank]

    class Slowed(torch.nn.Module):
        """The test-only straggler: sleeps inside forward, so DeepSpeed's fwd timer sees it."""
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
        def forward(self, x):
            if delay:
                time.sleep(delay)
            return self.inner(x)

    torch.manual_seed(0)
    model = Slowed(torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                                       hidden_dim=32, mlp_dim=64, num_classes=10))
    micro = 8
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "train_batch_size": micro * torch.distributed.get_world_size(),
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "wall_clock_breakdown": True, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    TIMER_NAMES = ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step")

    def pending_timer_records():
        return {n: len(engine.timers(n).event_timers) for n in TIMER_NAMES if n in engine.timers.timers}

    def one_step():
        start = time.perf_counter()
        images = torch.randn(micro, 3, 16, 16)
        labels = torch.randint(0, 10, (micro,))
        fetched = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(engine(images), labels)
        engine.backward(loss)
        engine.step()
        return (fetched - start) * 1e3, (time.perf_counter() - start) * 1e3

    report = {"pending_flag_only": None, "pending_set_engine_timing": []}
    if torch.distributed.get_world_size() == 1:
        # How DeepSpeed behaves when only its config flag is flipped off: the timers it started at init keep running
        # and nothing resets them, so the next timed step would report the sum of all untimed ones.
        engine._config.wall_clock_breakdown = False
        for _ in range(3):
            one_step()
        report["pending_flag_only"] = pending_timer_records()
        engine._config.wall_clock_breakdown = True
        one_step()                                   # a timed step logs and so resets them

    sampler = StepSampler(sample_every=every, warmup_steps=warmup)
    for step in range(steps):
        sampled = sampler.should_sample(step)
        if sampled:
            report["pending_set_engine_timing"].append(pending_timer_records())
        set_engine_timing(engine, sampled)
        wait_ms, step_ms = one_step()
        if sampled:
            sampler.add(read_engine_timers(engine), data_wait_ms=wait_ms, step_ms=step_ms)
    per_rank = gather_to_rank0(sampler.summary())
    if rank == 0:
        report["per_rank"] = per_rank
        with open(out, "w") as handle:
            json.dump(report, handle)
    else:
        assert per_rank is None, per_rank
    torch.distributed.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed(tmp_path: Path, delays: list[float], steps: int, warmup: int, every: int) -> dict:
    """Start len(delays) real ranks (env-var rendezvous, gloo) and return rank 0's report."""
    script, out = tmp_path / "worker.py", tmp_path / "report.json"
    script.write_text(WORKER)
    world, port = len(delays), _free_port()
    from tests.helpers import REPO as repo
    base_env = os.environ | {"DS_ACCELERATOR": "cpu", "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                             "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                             "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = []
    for rank in range(world):
        env = base_env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(script), str(out), json.dumps(delays), str(steps),
                                        str(warmup), str(every)], env=env, stdout=log, stderr=subprocess.STDOUT),
                      log))
    try:
        codes = [proc.wait(timeout=300) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(world))
    assert codes == [0] * world, logs
    return json.loads(out.read_text())


def test_real_deepspeed_engine_timers_one_rank(tmp_path):
    report = run_deepspeed(tmp_path, delays=[0.0], steps=9, warmup=1, every=2)
    # Flipping only the config flag leaves DeepSpeed's timers running across untimed steps...
    assert any(count >= 3 for count in report["pending_flag_only"].values()), report["pending_flag_only"]
    # ...set_engine_timing leaves nothing behind, so each timed step reports that step alone.
    assert report["pending_set_engine_timing"], "no step was sampled"
    for pending in report["pending_set_engine_timing"]:
        assert all(count == 0 for count in pending.values()), pending

    (summary,) = report["per_rank"]
    assert summary["samples"] == 4                      # steps 1, 3, 5, 7
    for key in ("fwd", "bwd", "bwd_inner", "step", "step_time"):
        assert summary[key] > 0, (key, summary)
    assert summary["bwd"] >= summary["bwd_inner"]
    timed = summary["fwd"] + summary["bwd"] + summary["step"]
    measured = summary["step_time"] - summary["data_wait"]
    # The timers cover the step except the loss and Python glue between the engine calls.
    assert 0.6 * measured <= timed <= 1.01 * measured, summary


@pytest.mark.slow
def test_real_deepspeed_two_ranks_straggler_flagged_balanced_not(tmp_path):
    (tmp_path / "straggler").mkdir()
    slowed = run_deepspeed(tmp_path / "straggler", delays=[0.0, 0.25], steps=8, warmup=2, every=1)
    result = analyse(slowed["per_rank"])
    rank0, rank1 = result["per_rank"]
    assert rank0["samples"] == rank1["samples"] == 6
    assert result["straggler"]["flagged"] is True, result
    assert result["straggler"]["slow_rank"] == 1
    assert rank1["fwd"] > 200                           # the delay sits in rank 1's forward
    assert rank0["bwd_allreduce"] > rank1["bwd_allreduce"] + 100, result   # rank 0 waits for it in the all-reduce
    assert result["comm_share"] > 0

    (tmp_path / "balanced").mkdir()
    # Same delay on both ranks: equal work, so no straggler even on a busy machine.
    balanced = run_deepspeed(tmp_path / "balanced", delays=[0.25, 0.25], steps=8, warmup=2, every=1)
    result = analyse(balanced["per_rank"])
    assert result["straggler"]["flagged"] is False, result
    assert result["straggler"]["slow_rank"] is None
