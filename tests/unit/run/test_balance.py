"""trainer.balance=speed: per-rank micro-batches by measured speed (issue 8, item 3).

The share split (proportional, integer, summing to the global micro-batch, each >= 1, deterministic), the loss
weight (real autograd: weighted uneven shards average to the global batch's gradient, on model copies and through
DDPEngine on two real gloo ranks), the shard plan with per-rank batch sizes, the config checks, and a real 2-rank
`vit-dt train` with one rank slowed per sample: the slow rank gets the smaller share and the spread narrows.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DIGITS_FAST, REPO, read_result, run_cli, run_dir_from_output, typed
from vit_dt.config import ConfigError, compose, to_container, validate
from vit_dt.data.loader import ShardBatchSampler, make_loader, shard_plan
from vit_dt.data.tensors import TensorImages
from vit_dt.models.vit import build_model
from vit_dt.run.balance import (
    epoch_entry,
    equal_shares,
    loss_weight,
    measured_speeds,
    split_by_speed,
    spread,
    summarise,
)

TINY = {"name": "vit_tiny", "image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 32,
        "mlp_dim": 64, "dropout": 0.0}


# ---------------------------------------------------------------- the share split

@pytest.mark.parametrize("speeds, total, shares", [
    ([3.0, 1.0], 32, [24, 8]),              # exactly proportional
    ([1.0, 1.0, 2.0], 16, [4, 4, 8]),
    ([221.5, 68.8], 32, [24, 8]),           # 24.42 / 7.58: largest remainder
    ([1.0, 1.0, 1.0], 4, [2, 1, 1]),        # a tie: the lower rank gets the extra sample
    ([1000.0, 1.0, 1.0], 8, [6, 1, 1]),     # quotas below 1 are raised to 1, the rest re-split
    ([5.0], 7, [7]),
    ([1.0, 1e-9], 2, [1, 1]),               # the minimum: one each
])
def test_split_by_speed(speeds, total, shares):
    assert split_by_speed(speeds, total) == shares


def test_split_is_integer_proportional_and_deterministic():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        world = int(torch.randint(1, 9, (1,), generator=gen))
        total = world * int(torch.randint(1, 65, (1,), generator=gen))
        speeds = (torch.rand(world, generator=gen, dtype=torch.float64) * 100 + 0.5).tolist()
        shares = split_by_speed(speeds, total)
        assert all(isinstance(b, int) and b >= 1 for b in shares) and sum(shares) == total
        assert split_by_speed(list(speeds), total) == shares
        quotas = [total * s / sum(speeds) for s in speeds]
        if min(quotas) >= 1:
            assert all(abs(b - q) < 1 for b, q in zip(shares, quotas)), (speeds, total, shares)
        faster = max(range(world), key=lambda r: speeds[r])
        assert shares[faster] == max(shares)


@pytest.mark.parametrize("speeds, total, message", [
    ([], 4, "at least one rank"), ([1.0, 0.0], 4, "finite and > 0"), ([1.0, float("nan")], 4, "finite and > 0"),
    ([1.0, -2.0], 4, "finite and > 0"), ([1.0, 1.0, 1.0], 2, "at least 1 of 2 samples"),
])
def test_split_rejects_what_it_cannot_split(speeds, total, message):
    with pytest.raises(ValueError, match=message):
        split_by_speed(speeds, total)


def test_equal_shares_and_spread():
    assert equal_shares(32, 2) == [16, 16]
    with pytest.raises(ValueError):
        equal_shares(10, 3)
    assert spread([100.0, 250.0]) == pytest.approx(0.6)
    assert spread([5.0, 5.0]) == 0.0 and spread([]) is None and spread([0.0, 0.0]) is None


def _row(fwd, bwd_inner, step=5.0, samples=3, step_time=None):
    return {"fwd": fwd, "bwd": bwd_inner + 1.0, "bwd_inner": bwd_inner, "bwd_allreduce": 1.0, "step": step,
            "data_wait": 0.0, "step_time": step_time or fwd + bwd_inner + step + 1.0, "samples": samples}


def test_speeds_come_from_fwd_and_bwd_inner_and_count_every_micro_step():
    rows = [_row(10.0, 30.0), _row(60.0, 20.0)]
    assert measured_speeds(rows, [16, 16], grad_accum=1) == pytest.approx([400.0, 200.0])
    assert measured_speeds(rows, [16, 16], grad_accum=2) == pytest.approx([800.0, 400.0])
    assert measured_speeds([rows[0], _row(1.0, 1.0, samples=0)], [16, 16], 1) is None   # no timed step


def test_epoch_entry_replans_with_speed_and_keeps_shares_with_off():
    rows = [_row(10.0, 30.0), _row(60.0, 60.0)]             # rank 1 three times slower per sample
    entry = epoch_entry(0, "speed", [16, 16], rows, grad_accum=1)
    assert entry["next_shares"] == [24, 8] and entry["shares"] == [16, 16]
    assert entry["compute_ms"] == [45.0, 125.0] and entry["spread"] == pytest.approx(80 / 125)
    assert epoch_entry(0, "off", [16, 16], rows, 1)["next_shares"] == [16, 16]
    assert epoch_entry(0, "speed", [16, 16], None, 1)["next_shares"] == [16, 16]    # nothing measured: keep
    with pytest.raises(ValueError, match="trainer.balance='fast' is invalid; valid: off, speed"):
        epoch_entry(0, "fast", [16, 16], rows, 1)
    after = epoch_entry(1, "speed", [24, 8], [_row(15.0, 45.0), _row(30.0, 30.0)], 1)
    summary = summarise("speed", [entry, after], 32)
    assert (summary["spread_before"], summary["spread_after"]) == (entry["spread"], after["spread"])
    assert summary["shares"] == [24, 8] and summary["global_micro_batch"] == 32 and len(summary["epochs"]) == 2
    one = summarise("off", [epoch_entry(0, "off", [16, 16], rows, 1)], 32)
    assert one["spread_after"] is None and one["calibration"] is None


# ---------------------------------------------------------------- the loss weight

def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_loss_weight_makes_the_average_of_uneven_shards_the_global_batch_gradient():
    torch.manual_seed(0)
    model = build_model(typed("model", **TINY), num_classes=10)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    full = _grads(model, F.cross_entropy(model(images), labels))
    shares, world = [11, 4, 1], 3
    for weighted in (True, False):
        per_rank, start = [], 0
        for share in shares:
            replica = copy.deepcopy(model)
            loss = F.cross_entropy(replica(images[start:start + share]), labels[start:start + share])
            per_rank.append(_grads(replica, loss * loss_weight(share, world, 16) if weighted else loss))
            start += share
        averaged = [sum(g) / world for g in zip(*per_rank)]   # what DDP's all-reduce gives every rank
        close = all(torch.allclose(a, f, rtol=1e-5, atol=1e-7) for a, f in zip(averaged, full))
        assert close == weighted
    assert sum(loss_weight(b, world, 16) for b in shares) / world == pytest.approx(1.0)


ENGINE_WORKER = textwrap.dedent('''
    import json, sys, time
    import torch, torch.distributed as dist
    from vit_dt.run.balance import loss_weight
    from vit_dt.engines import DDPEngine
    from vit_dt.models.vit import build_model
    from vit_dt.optim.optimizers import OptimizerSpec
    from tests.helpers import typed

    out, tiny, shares = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world, total = dist.get_rank(), dist.get_world_size(), sum(shares)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(total, 3, 16, 16, generator=gen), torch.randint(0, 10, (total,), generator=gen)
    start = sum(shares[:rank])
    mine = slice(start, start + shares[rank])
    spec = OptimizerSpec.from_config(typed("optimizer", **{"name": "sgd", "lr": 1.0, "weight_decay": 0.0, "momentum": 0.0}), total)
    schedule = {"warmup_steps": 0, "total_steps": 10, "schedule": "constant"}

    def engine(slow=0.0):
        torch.manual_seed(0)
        model = build_model(typed("model", **tiny), 10)
        if slow:
            model.register_forward_hook(lambda *_: time.sleep(slow), prepend=True)
        return DDPEngine(model, typed("trainer", **{"grad_clip": 0.0}), torch.device("cpu"), "fp32", schedule, 1, spec)

    states = {}
    for weighted in (True, False):
        e = engine()
        if weighted:
            e.set_loss_weight(loss_weight(shares[rank], world, total))
        e.micro_step(images[mine], labels[mine], boundary=True)       # one SGD step, lr 1: weights - gradient
        states[weighted] = e.module.state_dict()
    # The timers: rank 1 sleeps 0.3 s in its forward; rank 0 waits for it at the end of its backward.
    e = engine(slow=0.3 if rank == 1 else 0.0)
    e.set_timing(True)
    e.micro_step(images[mine], labels[mine], boundary=True)
    timers = [None] * world
    dist.all_gather_object(timers, e.last_step_timers())
    if rank == 0:
        torch.save({"weighted": states[True], "unweighted": states[False], "timers": timers}, out)
    # As vit_dt.run.rank does: the DDP wrapper goes before its process group (a reducer outliving the group can abort
    # the interpreter at exit: "terminate called without an active exception", SIGABRT).
    del e
    import gc
    gc.collect()
    dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_engine_on_two_ranks_with_uneven_shares_steps_like_the_global_batch(tmp_path):
    """Real DDP over gloo: ranks holding 11 and 5 of 16 samples, weighted, take the full batch's SGD step; the
    engine's timers put rank 0's wait for the slow rank into bwd_allreduce, not into its compute."""
    script, out = tmp_path / "worker.py", tmp_path / "out.pt"
    script.write_text(ENGINE_WORKER)
    shares, port = [11, 5], _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(out), json.dumps(TINY), json.dumps(shares)],
                              env=os.environ | {"RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                                "MASTER_PORT": str(port), "PYTHONPATH": str(REPO),
                                                "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    saved = torch.load(out, weights_only=False)

    torch.manual_seed(0)
    model = build_model(typed("model", **TINY), num_classes=10)
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    F.cross_entropy(model(images), labels).backward()
    expected = {name: before[name] - p.grad for name, p in model.named_parameters()}   # SGD, lr 1
    for name, value in expected.items():
        assert torch.allclose(saved["weighted"][name], value, rtol=1e-5, atol=1e-6), name
    assert not all(torch.allclose(saved["unweighted"][n], v, rtol=1e-5, atol=1e-6) for n, v in expected.items())

    fast, slow = saved["timers"]
    for row in (fast, slow):
        assert row["bwd"] == pytest.approx(row["bwd_inner"] + row["bwd_allreduce"])
    assert slow["fwd"] >= 300.0
    assert fast["bwd_allreduce"] > 200.0 and fast["bwd_inner"] < fast["bwd_allreduce"]      # waiting, not computing
    assert slow["bwd_allreduce"] < 150.0


# ---------------------------------------------------------------- the shard plan with per-rank batch sizes

def _indexed(n: int) -> TensorImages:
    return TensorImages(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), [str(i) for i in range(n)])


@pytest.mark.parametrize("n, shares", [(103, [20, 12]), (100, [1, 7, 4]), (64, [3, 29]), (50, [8, 8])])
def test_shares_keep_steps_equal_and_every_sample_at_most_once(n, shares):
    world, batch = len(shares), sum(shares) // len(shares)
    plans = [shard_plan(n, rank=r, world_size=world, batch_size=batch, seed=3, epoch=1, shuffle=True,
                        drop_last=True, shares=shares) for r in range(world)]
    even = [shard_plan(n, rank=r, world_size=world, batch_size=batch, seed=3, epoch=1, shuffle=True, drop_last=True)
            for r in range(world)]
    steps = n // sum(shares)
    assert all(len(plan) == steps == len(e) for plan, e in zip(plans, even))
    for rank, plan in enumerate(plans):
        assert [len(b) for b in plan] == [shares[rank]] * steps
    seen = torch.cat([torch.cat(plan) for plan in plans]).tolist()
    assert len(seen) == len(set(seen)) == steps * sum(shares)
    for step in range(steps):       # the same global batch at each step as with equal shares
        together = torch.cat([p[step] for p in plans]).tolist()
        assert sorted(together) == sorted(torch.cat([e[step] for e in even]).tolist())
    if len(set(shares)) == 1:
        assert all(torch.equal(torch.cat(p), torch.cat(e)) for p, e in zip(plans, even))


def test_loaders_take_shares_between_epochs_on_both_paths():
    from tests.fixtures.datasets import NotInMemory

    ds = _indexed(60)
    for rank, share in enumerate([9, 3]):
        a = make_loader(ds, rank=rank, world_size=2, batch_size=6, seed=0, train=True, device="cpu")
        b = make_loader(NotInMemory(ds), rank=rank, world_size=2, batch_size=6, seed=0, train=True, device="cpu",
                        num_workers=0)
        assert [len(y) for _, y in a] == [6] * 5
        for loader in (a, b):
            loader.set_epoch(2)
            loader.set_shares([9, 3])
        ya, yb = [y.tolist() for _, y in a], [y.tolist() for _, y in b]
        assert ya == yb and [len(y) for y in ya] == [share] * 5 == [share] * len(a)
        assert a.num_samples == 5 * share and a.total_samples == 60
        a.set_shares(None)
        assert [len(y) for _, y in a] == [6] * 5


@pytest.mark.parametrize("shares, message", [
    ([10, 3], "must sum to world_size x batch_size = 2 x 6"), ([12, 0], "one entry >= 1"), ([4, 4, 4], "per rank (2)"),
])
def test_bad_shares_are_refused(shares, message):
    sampler = ShardBatchSampler(60, rank=0, world_size=2, batch_size=6, seed=0, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sampler.set_shares(shares)
    evaluation = ShardBatchSampler(60, rank=0, world_size=2, batch_size=6, seed=0, shuffle=False, drop_last=False)
    with pytest.raises(ValueError, match="drop_last=True"):
        evaluation.set_shares([8, 4])


# ---------------------------------------------------------------- config

def test_balance_modes_and_engine_are_checked_before_anything_runs(tmp_path):
    validate(to_container(compose(["engine=ddp", "trainer.balance=speed"])), world_size=2)
    validate(to_container(compose(["trainer.balance=off"])), world_size=2)
    with pytest.raises(ConfigError, match=r"trainer.balance='fast' is invalid; valid: off, speed"):
        validate(to_container(compose(["engine=ddp", "trainer.balance=fast"])), world_size=2)
    with pytest.raises(ConfigError, match=r"debug.delay_per_sample_s=\{1: -0.1\} is invalid"):
        validate(to_container(compose(["engine=ddp", "debug=slow_rank", "debug.delay_per_sample_s={1: -0.1}"])), 2)
    proc = run_cli("train", "engine=deepspeed", "trainer.balance=speed", "trainer.nproc=2", f"out_dir={tmp_path}")
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()
    assert "trainer.balance=speed is invalid with engine=deepspeed" in proc.stderr
    assert "valid: engine=ddp with trainer.balance=speed, or trainer.balance=off" in proc.stderr


# ---------------------------------------------------------------- a real 2-rank run, rank 1 slowed per sample

PER_SAMPLE_DELAY_S = 0.01
BALANCED = [*DIGITS_FAST, "engine=ddp", "trainer.nproc=2", "trainer.balance=speed", "trainer.epochs=3",
            "trainer.max_steps_per_epoch=8", "trainer.timer_warmup_steps=1", "trainer.timer_sample_every=1",
            "debug=slow_rank", f"debug.delay_per_sample_s={{1: {PER_SAMPLE_DELAY_S}}}"]


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = run_cli("train", *BALANCED, f"out_dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, read_result(run_dir), proc.stdout


@pytest.mark.slow
def test_balanced_run_gives_the_slow_rank_less_and_narrows_the_spread(balanced_run):
    _, result, stdout = balanced_run
    assert result["status"] == "completed" and result["replicas_in_sync"], result["param_checksums"]
    bal = result["balance"]
    assert bal["mode"] == "speed" and bal["global_micro_batch"] == 32
    epochs = bal["epochs"]
    assert [e["shares"] for e in epochs][0] == [16, 16]                     # epoch 0 calibrates at equal shares
    for previous, entry in zip(epochs, epochs[1:]):
        assert entry["shares"] == previous["next_shares"]                  # each epoch runs the plan made before it
    for entry in epochs[1:]:
        assert sum(entry["shares"]) == 32 and entry["shares"][1] < entry["shares"][0]
    speeds = epochs[0]["speed_img_per_s"]
    assert speeds[1] < speeds[0]
    assert bal["spread_before"] > 0.4 and bal["spread_after"] < 0.6 * bal["spread_before"], bal
    assert bal["step_time_ms_after"] < bal["step_time_ms_before"]
    # the global batch is unchanged: every step still trains on 32 images
    assert all(e["train_samples_seen"] == 8 * 32 for e in result["epochs"])
    assert "balance: epoch 0 shares [16, 16]" in stdout


@pytest.mark.slow
def test_balanced_run_resumes_with_its_shares(balanced_run):
    """The checkpoint holds the next epoch's shares: a resumed run (one more epoch) starts from them."""
    from omegaconf import OmegaConf

    from vit_dt.run.local_launch import launch

    run_dir, first, _ = balanced_run
    state = torch.load(run_dir / "checkpoints" / "epoch-3" / "state.pt", weights_only=False)["train_state"]
    assert state["shares"] == first["balance"]["next_shares"]
    config = OmegaConf.load(run_dir / "config.yaml")
    config.trainer.epochs = 4
    OmegaConf.save(config, run_dir / "config.yaml")
    assert launch(run_dir, 2, timeout_s=300) == 0
    result = read_result(run_dir)
    epochs = result["balance"]["epochs"]
    assert len(epochs) == 4 and epochs[3]["shares"] == first["balance"]["next_shares"]
    assert epochs[:3] == first["balance"]["epochs"] and result["replicas_in_sync"]
