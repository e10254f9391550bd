"""`optimizer.master_update=fused`: AdamW with fp32 masters in one compiled pass, against the separate update.

The compiled forms run through inductor's C++ backend on this CPU (the CUDA form is the same graph, lowered to
Triton); the engines are real DeepSpeed (DS_ACCELERATOR=cpu) and DDP over the session's one-rank gloo group.
"""
from __future__ import annotations

import copy
import dataclasses
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed: this test runs on the CPU

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers import typed
from vit_dt.config.batch import Batch
from vit_dt.config.ds_config import derive_deepspeed_config
from vit_dt.engines import DDPEngine, DeepSpeedEngine
from vit_dt.models.vit import build_model
from vit_dt.optim.master_adamw import adamw_master_update, clip_coefficient
from vit_dt.optim.master_weights import MasterWeightsOptimizer
from vit_dt.optim.optimizers import OptimizerConfigError, OptimizerSpec

CPU = torch.device("cpu")
SHAPES = [(64, 48), (96,), (3, 5, 7)]


def bf16_params(seed: int = 0, device: str = "cpu") -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen).to(device, torch.bfloat16)) for shape in SHAPES]


def adamw_step(update: str, params, clip: float = 1.0, compiled: bool = True,
               fused_kernel: bool | None = None) -> MasterWeightsOptimizer:
    # A large eps makes the step depend on the gradients' scale, so clipping shows (Adam is otherwise nearly blind).
    # On CUDA the separate update steps torch's fused AdamW by default, as build_optimizer gives it there.
    fused_kernel = params[0].is_cuda if fused_kernel is None else fused_kernel
    optimizer = MasterWeightsOptimizer(
        params, lambda m: torch.optim.AdamW(m, lr=0.1, eps=1e-2, weight_decay=0.05, fused=fused_kernel),
        clip=clip, update=update)
    if update == "fused" and not compiled:
        optimizer._fused.kernels = (clip_coefficient, adamw_master_update)
    return optimizer


def set_gradients(params, step: int, scale: float = 10.0) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for param in params:
        param.grad = (torch.randn(param.shape, generator=gen) * scale).to(param.device, torch.bfloat16)


def run_steps(optimizer, params, steps: range, scheduler=None) -> None:
    for step in steps:
        set_gradients(params, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def assert_same_training_state(a: MasterWeightsOptimizer, b: MasterWeightsOptimizer) -> None:
    """Same masters, moments and step counts (to fp32 rounding); bf16 weights that are their own masters rounded."""
    for master_a, master_b, weight_a, weight_b in zip(a.masters, b.masters, a.model_params, b.model_params):
        torch.testing.assert_close(master_a, master_b, rtol=1e-5, atol=1e-5)
        assert torch.equal(weight_a.detach(), master_a.to(torch.bfloat16))
        # Masters equal to ~1e-6 may round to neighbouring bf16 values: one bf16 spacing apart at most.
        torch.testing.assert_close(weight_a.detach().float(), weight_b.detach().float(), rtol=2 ** -7, atol=2 ** -7)
        state_a, state_b = a.state[master_a], b.state[master_b]
        assert set(state_a) == set(state_b) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(state_a["step"]) == float(state_b["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("clip", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_fused_update_matches_the_separate_update_under_a_changing_lr(compiled, clip):
    fused_params, separate_params = bf16_params(), bf16_params()
    fused, separate = adamw_step("fused", fused_params, clip, compiled), adamw_step("separate", separate_params, clip)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s)) for o in (fused, separate)]
    run_steps(fused, fused_params, range(2), schedules[0])
    graphs_after_two_steps = counters["stats"]["unique_graphs"]
    run_steps(fused, fused_params, range(2, 6), schedules[0])
    run_steps(separate, separate_params, range(6), schedules[1])
    assert fused.param_groups[0]["lr"] == pytest.approx(1 / 7 * 0.1)
    assert_same_training_state(fused, separate)
    assert all(master.grad is None for master in fused.masters)   # no fp32 gradient buffers
    # The lr is a device tensor: four more lr values reuse the kernels compiled in the first steps.
    assert counters["stats"]["unique_graphs"] == graphs_after_two_steps


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: the fused update's Triton kernels against torch's CUDA fused AdamW")
def test_fused_update_on_cuda_matches_torchs_fused_adamw():
    fused_params, separate_params = bf16_params(device="cuda"), bf16_params(device="cuda")
    fused, separate = adamw_step("fused", fused_params), adamw_step("separate", separate_params)
    assert separate._fused_inner        # the clipping rides the fused kernel's grad_scale there
    for optimizer, params in ((fused, fused_params), (separate, separate_params)):
        run_steps(optimizer, params, range(6), torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s)))
    assert_same_training_state(fused, separate)
    assert all(fused.state[m]["step"].is_cuda for m in fused.masters)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: where a loaded step counter belongs differs by AdamW form there")
def test_step_counters_follow_the_update_across_checkpoints_on_cuda():
    """torch's foreach AdamW (optimizer.fused=false) keeps `step` on the CPU, the fused forms on the device; a
    counter on the wrong side would cost a host sync per parameter per step (foreach) or fail (fused)."""
    foreach_params = bf16_params(device="cuda")
    foreach = adamw_step("separate", foreach_params, fused_kernel=False)
    run_steps(foreach, foreach_params, range(3))
    assert all(not foreach.state[m]["step"].is_cuda for m in foreach.masters)
    fused_params = bf16_params(seed=7, device="cuda")
    fused = adamw_step("fused", fused_params)
    fused.load_state_dict(copy.deepcopy(foreach.state_dict()))
    assert all(fused.state[m]["step"].is_cuda for m in fused.masters)
    run_steps(fused, fused_params, range(3, 5))
    run_steps(foreach, foreach_params, range(3, 5))
    assert_same_training_state(fused, foreach)
    back = adamw_step("separate", bf16_params(seed=11, device="cuda"), fused_kernel=False)
    back.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert all(not back.state[m]["step"].is_cuda for m in back.masters)


def test_each_kernel_is_one_graph_without_breaks():
    """Compiled without fullgraph (so dynamo's recompile limit falls back to eager instead of failing): that they
    are still whole graphs is checked here."""
    params = bf16_params()
    masters = [p.detach().float() for p in params]
    moments = [torch.zeros_like(m) for m in masters]
    grads = [p.detach().clone() for p in params]
    with torch.no_grad():   # as MasterWeightsOptimizer.step calls them
        update = torch._dynamo.explain(adamw_master_update)(
            grads, masters, moments, [torch.zeros_like(m) for m in masters], params, [torch.zeros(()) for _ in params],
            torch.tensor(0.1), torch.tensor(0.5), beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
        clip = torch._dynamo.explain(clip_coefficient)(grads, 1.0)
    assert (update.graph_count, update.graph_break_count) == (1, 0), update.break_reasons
    assert (clip.graph_count, clip.graph_break_count) == (1, 0), clip.break_reasons


def test_checkpoint_of_either_update_resumes_under_the_other():
    straight_params = bf16_params()
    straight = adamw_step("separate", straight_params)
    run_steps(straight, straight_params, range(3))
    saved = copy.deepcopy(straight.state_dict())
    run_steps(straight, straight_params, range(3, 5))     # the run that never stopped

    fused_params = bf16_params(seed=7)                     # other weights: only the checkpoint can make them match
    fused = adamw_step("fused", fused_params)
    fused.load_state_dict(saved)
    run_steps(fused, fused_params, range(3, 5))
    assert_same_training_state(fused, straight)

    back = adamw_step("separate", bf16_params(seed=11))    # and the fused run's checkpoint under the separate update
    back.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert_same_training_state(back, fused)


def test_fused_update_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match=r"master_update=fused steps AdamW only, not SGD; valid: optimizer=adamw"):
        MasterWeightsOptimizer(bf16_params(), lambda m: torch.optim.SGD(m, lr=0.1), update="fused")
    with pytest.raises(ValueError, match=r"does not implement AdamW's amsgrad=True"):
        MasterWeightsOptimizer(bf16_params(), lambda m: torch.optim.AdamW(m, amsgrad=True), update="fused")
    with pytest.raises(ValueError, match=r"master_update='fast' is invalid; valid: separate, fused"):
        MasterWeightsOptimizer(bf16_params(), lambda m: torch.optim.AdamW(m), update="fast")
    fp32 = [torch.nn.Parameter(torch.ones(3))]
    assert MasterWeightsOptimizer(fp32, lambda m: torch.optim.AdamW(m), update="fused").update == "separate"


def test_config_validation_names_a_bad_master_update_and_where_it_is_valid():
    base = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    assert OptimizerSpec.from_config(typed("optimizer", **(base | {"master_update": "fused"})), 256).options["master_update"] == "fused"
    with pytest.raises(OptimizerConfigError, match=r"optimizer.master_update='one_pass' is invalid; valid: separate, "
                                                   r"fused"):
        OptimizerSpec.from_config(typed("optimizer", **(base | {"master_update": "one_pass"})), 256)
    with pytest.raises(OptimizerConfigError, match=r"optimizer.master_update is not a setting of optimizer sgd"):
        # SGD's keys and master_update: composition cannot produce it (SGD's schema refuses master_update)
        sgd_with_update = dataclasses.make_dataclass("SGDWithUpdate", [("master_update", str, "fused")],
                                                     bases=(type(typed("optimizer", name="sgd")),))
        OptimizerSpec.from_config(sgd_with_update(**{**vars(typed("optimizer", name="sgd", lr=0.1,
                                                                  weight_decay=0.0))}), 256)


def test_composed_config_carries_the_update_to_the_spec():
    from vit_dt.config.compose import compose, to_container

    for overrides, expected in (([], "separate"), (["optimizer.master_update=fused"], "fused")):
        cfg = to_container(compose(overrides))
        assert OptimizerSpec.from_config(typed("optimizer", **cfg["optimizer"]), 256).options["master_update"] == expected


def test_validation_refuses_the_fused_update_where_there_are_no_bf16_masters():
    from vit_dt.config.compose import compose, to_container
    from vit_dt.config.validate import ConfigError, validate

    validate(to_container(compose(["optimizer.master_update=fused", "precision=bf16"])), 1)   # auto -> master
    with pytest.raises(ConfigError, match=r"optimizer.master_update=fused needs bf16 master weights, but this run "
                                          r"has precision=fp32; valid: precision=bf16 with deepspeed.bf16_mode="
                                          r"master .*, or optimizer.master_update=separate"):
        validate(to_container(compose(["optimizer.master_update=fused"])), 1)
    with pytest.raises(ConfigError, match=r"precision=bf16 with deepspeed.bf16_mode resolving to autocast"):
        validate(to_container(compose(["optimizer.master_update=fused", "precision=bf16",
                                       "deepspeed.zero_stage=1"])), 1)


TINY = {"name": "vit_tiny", "image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 32,
        "mlp_dim": 64, "dropout": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _process_group(one_rank_group):
    yield


def bf16_master_engine(kind: str, update: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(typed("model", **TINY), num_classes=10)
    spec = OptimizerSpec.from_config(typed("optimizer", **{"name": "adamw", "lr": 2e-3, "weight_decay": 0.01, "master_update": update}), 16)
    trainer_cfg = {"grad_clip": 1.0, "compile": False}
    schedule = {"warmup_steps": 2, "total_steps": 50, "schedule": "cosine"}
    if kind == "deepspeed":
        ds_config = derive_deepspeed_config(batch=Batch(16, 1, 1), precision="bf16", zero_stage=0, grad_clip=1.0,
                                            wall_clock_breakdown=False, bf16_mode="master")
        return DeepSpeedEngine(model, ds_config, typed("trainer", **trainer_cfg), CPU, schedule, spec, master_weights=True)
    return DDPEngine(model, typed("trainer", **trainer_cfg), CPU, "bf16", schedule, grad_accum=1, optimizer=spec, master_weights=True)


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_engines_train_the_same_under_either_update(kind):
    gen = torch.Generator().manual_seed(3)
    images, labels = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    losses = {}
    for update in ("separate", "fused"):
        engine = bf16_master_engine(kind, update)
        stepper = engine.engine.basic_optimizer if kind == "deepspeed" else engine.optimizer
        assert stepper.update == update
        losses[update] = [float(engine.micro_step(images, labels, boundary=True)[0]) for _ in range(8)]
    assert losses["fused"][-1] < 0.9 * losses["fused"][0], losses
    np.testing.assert_allclose(losses["fused"], losses["separate"], rtol=2e-2)


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_engine_checkpoint_resumes_the_fused_update_exactly(kind):
    """What checkpoint/resume relies on: the engine's state_dict carries the fused update's moments, step counters
    and fp32 masters, so a resumed engine takes the very steps the uninterrupted one takes."""
    gen = torch.Generator().manual_seed(5)
    images, labels = torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    first = bf16_master_engine(kind, "fused")
    for _ in range(3):
        first.micro_step(images, labels, boundary=True)
    saved = copy.deepcopy(first.state_dict())
    expected = [float(first.micro_step(images, labels, boundary=True)[0]) for _ in range(2)]
    second = bf16_master_engine(kind, "fused", seed=123)
    second.load_state_dict(saved)
    assert [float(second.micro_step(images, labels, boundary=True)[0]) for _ in range(2)] == expected
    for a, b in zip(second.module.parameters(), first.module.parameters()):
        assert torch.equal(a.detach(), b.detach())
