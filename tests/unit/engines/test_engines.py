"""The engines and their options on CPU: real DeepSpeed (DS_ACCELERATOR=cpu) and real DDP over a one-rank gloo group.

Covers the optimizers (each trains through both engines), the LR scaling rules, LAMB against its update formula,
DeepSpeed's two bf16 modes, activation checkpointing (same gradients, blocks really recomputed) and the engine
state_dict round trip that checkpoint/resume relies on.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed: this test runs on the CPU

import numpy as np
import pytest
import torch

from tests.helpers import typed
from vit_dt.config.batch import Batch
from vit_dt.config.ds_config import DeepSpeedConfigError, derive_deepspeed_config, resolve_bf16_mode
from vit_dt.engines import DDPEngine, DeepSpeedEngine, compile_options
from vit_dt.models.attention import SelfAttention, enable_fast_attention
from vit_dt.models.vit import CheckpointedEncoderBlock, build_model, enable_activation_checkpointing
from vit_dt.optim.lamb import Lamb
from vit_dt.optim.master_weights import MasterWeightsOptimizer
from vit_dt.optim.optimizers import (
    LR_RULES,
    OPTIMIZERS,
    OptimizerConfigError,
    OptimizerSpec,
    build_optimizer,
    lr_record,
    scale_lr,
)

CPU = torch.device("cpu")
TINY = {"name": "vit_tiny", "image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 32,
        "mlp_dim": 64, "dropout": 0.0}
MICRO = 16
# Per-optimizer learning rates at which a tiny ViT visibly fits one batch in a few steps.
TEST_LR = {"adamw": 2e-3, "sgd": 0.1, "lamb": 2e-2}


@pytest.fixture(scope="module", autouse=True)
def _process_group(one_rank_group):
    """Every test here builds engines in this process (the group is conftest's, shared by the session)."""
    yield


def batch_of(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(MICRO, 3, 16, 16, generator=gen), torch.randint(0, 10, (MICRO,), generator=gen)


def spec_for(name: str, **extra) -> OptimizerSpec:
    return OptimizerSpec.from_config(typed("optimizer", **{"name": name, "lr": TEST_LR[name], "weight_decay": 0.01,
                                                      "lr_scaling": "none", **extra}), MICRO)


SCHEDULE = {"warmup_steps": 2, "total_steps": 50, "schedule": "cosine"}


def make_engine(kind: str, optimizer: str = "adamw", precision: str = "fp32", bf16_mode: str = "native",
                seed: int = 0, model_cfg: dict | None = None, zero_stage: int = 0, grad_clip: float = 1.0,
                weight_decay: float = 0.01):
    torch.manual_seed(seed)
    model = build_model(typed("model", **(model_cfg or TINY)), num_classes=10)
    spec = spec_for(optimizer, weight_decay=weight_decay)
    trainer_cfg = {"grad_clip": grad_clip, "compile": False}
    if kind == "deepspeed":
        ds_config = derive_deepspeed_config(batch=Batch(MICRO, 1, 1), precision=precision, zero_stage=zero_stage,
                                            grad_clip=grad_clip, wall_clock_breakdown=False, bf16_mode=bf16_mode)
        return DeepSpeedEngine(model, ds_config, typed("trainer", **trainer_cfg), CPU, dict(SCHEDULE), spec,
                               master_weights=precision == "bf16" and bf16_mode == "master")
    return DDPEngine(model, typed("trainer", **trainer_cfg), CPU, precision, dict(SCHEDULE), grad_accum=1, optimizer=spec,
                     master_weights=precision == "bf16" and bf16_mode == "master")


def train_losses(engine, steps: int) -> list[float]:
    images, labels = batch_of()
    return [float(engine.micro_step(images, labels, boundary=True)[0]) for _ in range(steps)]


# --- LR scaling ---------------------------------------------------------------------------------------------------

def test_linear_rule_scales_with_the_batch_ratio():
    assert scale_lr(1e-3, 1024, "linear", 256) == pytest.approx(4e-3)
    assert scale_lr(1e-3, 64, "linear", 256) == pytest.approx(2.5e-4)
    assert scale_lr(1e-3, 256, "linear", 256) == pytest.approx(1e-3)


def test_sqrt_rule_scales_with_the_root_of_the_batch_ratio():
    assert scale_lr(1e-3, 1024, "sqrt", 256) == pytest.approx(2e-3)
    assert scale_lr(1e-3, 64, "sqrt", 256) == pytest.approx(5e-4)
    assert scale_lr(0.1, 512, "sqrt", 128) == pytest.approx(0.2)


def test_none_rule_keeps_the_lr_and_needs_no_base_batch():
    assert scale_lr(3e-4, 4096, "none", None) == 3e-4


def test_bad_rule_or_base_batch_is_named_with_the_valid_values():
    with pytest.raises(OptimizerConfigError, match=r"lr_scaling='cubic' is invalid; valid: none, linear, sqrt"):
        scale_lr(1e-3, 256, "cubic", 256)
    for bad in (None, 0, -4, 2.5):
        with pytest.raises(OptimizerConfigError, match=r"base_batch=.* is invalid"):
            scale_lr(1e-3, 256, "linear", bad)


def test_spec_and_result_fields_carry_the_effective_lr():
    cfg = {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "lr_scaling": "linear", "base_batch": 256}
    spec = OptimizerSpec.from_config(typed("optimizer", **cfg), global_batch=2048)
    assert spec.lr_effective == pytest.approx(0.8) and spec.lr_base == 0.1
    assert lr_record(typed("optimizer", **cfg), 2048) == {"optimizer": "sgd", "lr_rule": "linear", "lr_base": 0.1, "lr_base_batch": 256,
                                    "lr_effective": pytest.approx(0.8)}
    # The optimizer really starts from the scaled lr.
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), spec, CPU)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.8)


def test_composed_config_gives_every_optimizer_a_valid_spec():
    from vit_dt.config.compose import compose, to_container

    for name in OPTIMIZERS:
        for rule in LR_RULES:
            cfg = to_container(compose([f"optimizer={name}", f"optimizer.lr_scaling={rule}"]))
            spec = OptimizerSpec.from_config(typed("optimizer", **cfg["optimizer"]), global_batch=1024)
            expected = {"none": 1.0, "linear": 1024 / 256, "sqrt": math.sqrt(1024 / 256)}[rule]
            assert spec.name == name and spec.lr_effective == pytest.approx(cfg["optimizer"]["lr"] * expected)


def test_unknown_optimizer_or_key_lists_the_valid_ones():
    with pytest.raises(OptimizerConfigError, match=r"optimizer='adam' is unknown; valid: adamw, sgd, lamb"):
        OptimizerSpec.from_config(typed("optimizer", **{"name": "adam", "lr": 1e-3, "weight_decay": 0.0}), 32)
    with pytest.raises(OptimizerConfigError, match=r"optimizer.momentum is not a setting of optimizer adamw; "
                                                   r"valid: base_batch, betas, eps, fused, lr"):
        # SGD's keys under the name adamw: composition cannot produce it (AdamW's schema refuses momentum)
        OptimizerSpec.from_config(dataclasses.replace(typed("optimizer", name="sgd", lr=1e-3, weight_decay=0.0,
                                                            momentum=0.9), name="adamw"), 32)
    with pytest.raises(OptimizerConfigError, match=r"optimizer.lr=-1 is invalid"):
        OptimizerSpec.from_config(dataclasses.replace(typed("optimizer", name="sgd", weight_decay=0.0), lr=-1), 32)


def test_config_validation_rejects_a_bad_optimizer_before_the_run():
    from vit_dt.config.compose import compose, to_container
    from vit_dt.config.validate import ConfigError, validate

    cfg = to_container(compose(["optimizer.name=adagrad"]))
    with pytest.raises(ConfigError, match="valid: adamw, sgd, lamb"):
        validate(cfg, 1)
    cfg = to_container(compose(["optimizer.lr_scaling=linear", "optimizer.base_batch=null"]))
    with pytest.raises(ConfigError, match="base_batch=None is invalid"):
        validate(cfg, 1)


# --- LAMB ---------------------------------------------------------------------------------------------------------

def lamb_reference(p, grads, lr, b1, b2, eps, wd, max_trust=10.0, min_trust=0.01):
    """The LAMB update formula (You et al. 2020, Algorithm 2) in float64 numpy, one tensor, one step per grad."""
    p, m, v = p.astype(np.float64), np.zeros_like(p, np.float64), np.zeros_like(p, np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p
        w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
        trust = np.clip(w_norm / u_norm, min_trust, max_trust) if w_norm > 0 and u_norm > 0 else 1.0
        p = p - lr * trust * update
    return p


@pytest.mark.parametrize("init", ["random", "zeros", "tiny"])
def test_lamb_matches_the_update_formula(init):
    rng = np.random.default_rng(1)
    start = {"random": rng.normal(size=(7, 5)), "zeros": np.zeros((7, 5)),
             "tiny": 1e-4 * rng.normal(size=(7, 5))}[init]   # zeros: trust 1; tiny: the min_trust clamp bites
    grads = [rng.normal(size=(7, 5)) for _ in range(4)]
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.99, 1e-6, 0.1
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = Lamb([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for g in grads:
        param.grad = torch.tensor(g)
        optimizer.step()
    expected = lamb_reference(start, grads, lr, b1, b2, eps, wd)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    assert not np.allclose(expected, start)  # the test moved the weights: it can fail


def test_lamb_trust_ratio_is_per_tensor():
    """Two tensors with the same gradient but weights 100x apart move by amounts 100x apart (per-layer ratio)."""
    small, large = torch.nn.Parameter(torch.full((4,), 0.01)), torch.nn.Parameter(torch.full((4,), 1.0))
    optimizer = Lamb([small, large], lr=0.01, weight_decay=0.0)
    small.grad, large.grad = torch.ones(4), torch.ones(4)
    optimizer.step()
    moved_small, moved_large = (0.01 - small.detach()).abs().mean(), (1.0 - large.detach()).abs().mean()
    assert float(moved_large / moved_small) == pytest.approx(100.0, rel=1e-3)


# --- every optimizer through both engines -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_lowers_the_loss_through_the_engine(kind, optimizer):
    engine = make_engine(kind, optimizer)
    expected_type = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "lamb": Lamb}[optimizer]
    inner = getattr(engine, "engine", None)
    stepper = inner.basic_optimizer if inner else engine.optimizer
    assert isinstance(getattr(stepper, "inner", stepper), expected_type)   # behind MasterWeightsOptimizer at ZeRO-0
    losses = train_losses(engine, 8)
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < 0.9 * losses[0], losses


def test_lamb_with_zero_partitions_is_refused():
    with pytest.raises(ValueError, match=r"lamb with deepspeed.zero_stage=2 .* valid: deepspeed.zero_stage=0"):
        make_engine("deepspeed", "lamb", zero_stage=2)


# --- DeepSpeed bf16 modes -----------------------------------------------------------------------------------------

def test_bf16_mode_autocast_derives_torch_autocast_instead_of_bf16():
    autocast = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=0, grad_clip=None,
                                       wall_clock_breakdown=False, bf16_mode="autocast")
    assert autocast["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not autocast["bf16"]["enabled"]
    native = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=0, grad_clip=None,
                                     wall_clock_breakdown=False, bf16_mode="native")
    assert native["bf16"]["enabled"] and "torch_autocast" not in native
    fp32 = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="fp32", zero_stage=0, grad_clip=None,
                                   wall_clock_breakdown=False, bf16_mode="autocast")
    assert not fp32["bf16"]["enabled"] and "torch_autocast" not in fp32   # the mode only matters for bf16
    with pytest.raises(DeepSpeedConfigError, match=r"bf16_mode='amp' is invalid; valid: auto, master, autocast, native"):
        derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=0, grad_clip=None,
                                wall_clock_breakdown=False, bf16_mode="amp")
    with pytest.raises(DeepSpeedConfigError, match="derived by vit-dt"):
        derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=0, grad_clip=None,
                                wall_clock_breakdown=False, overrides={"torch_autocast": {"enabled": True}})


@pytest.mark.parametrize("mode, weight_dtype", [("native", torch.bfloat16), ("autocast", torch.float32),
                                               ("master", torch.bfloat16)])
def test_deepspeed_bf16_modes_train(mode, weight_dtype):
    engine = make_engine("deepspeed", "adamw", precision="bf16", bf16_mode=mode)
    assert next(engine.module.parameters()).dtype == weight_dtype
    assert engine.input_dtype == (torch.float32 if mode == "autocast" else torch.bfloat16)
    images, labels = batch_of()
    _, logits = engine.micro_step(images, labels, boundary=True)
    assert logits.dtype == torch.bfloat16                  # the matmuls really ran in bf16 in both modes
    losses = train_losses(engine, 7)
    assert losses[-1] < 0.9 * losses[0], losses


def test_bf16_mode_auto_resolves_per_stage_and_engine_and_refuses_impossible_pairs():
    assert resolve_bf16_mode("auto", 0) == "master"
    assert resolve_bf16_mode("auto", 2) == "autocast"
    assert resolve_bf16_mode("auto", 3, "ddp") == "master"
    assert resolve_bf16_mode("native", 1) == "native"
    with pytest.raises(DeepSpeedConfigError, match=r"zero_stage=2 partitions them itself; valid with ZeRO 1-3: "
                                                   r"auto, autocast, native"):
        resolve_bf16_mode("master", 2)
    with pytest.raises(DeepSpeedConfigError, match="with engine=ddp valid: auto, master, autocast"):
        resolve_bf16_mode("native", 0, "ddp")
    # Gradient accumulation sums micro-batch gradients in .grad: in fp32 (autocast), not in the bf16 module.
    assert resolve_bf16_mode("auto", 0, grad_accum=4) == "autocast"
    assert resolve_bf16_mode("auto", 0, "ddp", grad_accum=2) == "autocast"
    with pytest.raises(DeepSpeedConfigError, match=r"grad_accum=4 micro-batch gradients in bf16; valid with "
                                                   r"grad_accum > 1: auto, autocast, native"):
        resolve_bf16_mode("master", 0, grad_accum=4)


def test_master_mode_runs_deepspeed_fp32_path_and_leaves_clipping_to_vit_dt_at_zero_0():
    master = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=0, grad_clip=1.0,
                                     wall_clock_breakdown=False, bf16_mode="master")
    assert not master["bf16"]["enabled"] and "torch_autocast" not in master
    # Explicitly off: DeepSpeed's default (1.0) would clip a second time.
    assert master["communication_data_type"] == "bf16" and master["gradient_clipping"] == 0.0
    zero1 = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="bf16", zero_stage=1, grad_clip=1.0,
                                    wall_clock_breakdown=False)
    assert zero1["torch_autocast"]["enabled"] and zero1["gradient_clipping"] == 1.0   # auto -> autocast at ZeRO-1
    fp16 = derive_deepspeed_config(batch=Batch(8, 1, 1), precision="fp16", zero_stage=0, grad_clip=1.0,
                                   wall_clock_breakdown=False)
    assert fp16["gradient_clipping"] == 1.0                  # loss scaling: DeepSpeed unscales, then clips


@pytest.mark.parametrize("precision, bf16_mode", [("bf16", "master"), ("fp32", "native")])
def test_only_vit_dt_clips_at_zero_0(monkeypatch, precision, bf16_mode):
    """fp16 (DeepSpeed clips, after unscaling) is covered by the derived-config test: DeepSpeed has no CPU fp16."""
    import deepspeed.runtime.engine as ds_engine

    calls = []
    real = ds_engine.clip_grad_norm_
    monkeypatch.setattr(ds_engine, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    engine = make_engine("deepspeed", precision=precision, bf16_mode=bf16_mode)
    vit_dt_clip = getattr(engine.engine.basic_optimizer, "clip", 0.0)
    assert (engine.engine.gradient_clipping(), vit_dt_clip) == (0.0, 1.0)
    train_losses(engine, 2)
    assert calls == []   # DeepSpeed's per-parameter clipping loop never ran


@pytest.mark.parametrize("kind, precision, bf16_mode", [
    ("deepspeed", "fp32", "native"), ("deepspeed", "bf16", "native"), ("deepspeed", "bf16", "master"),
    ("deepspeed", "bf16", "autocast"), ("ddp", "fp32", "native"), ("ddp", "bf16", "master")])
def test_grad_clip_bounds_the_step_in_every_precision_mode(kind, precision, bf16_mode):
    """Whoever clips (vit-dt's optimizer at ZeRO-0, DeepSpeed under its own bf16 optimizer), the clip holds: one
    SGD step with a tiny clip moves the weights far less than an unclipped one. Under bf16 "native" vit-dt's
    clipping once scaled gradients that DeepSpeed's optimizer wrapper never read."""
    def moved(grad_clip: float) -> float:
        engine = make_engine(kind, "sgd", precision=precision, bf16_mode=bf16_mode, grad_clip=grad_clip,
                             weight_decay=0.0)
        before = [p.detach().float().clone() for p in engine.module.parameters()]
        train_losses(engine, 1)
        return sum(float((p.detach().float() - b).norm()) for p, b in zip(engine.module.parameters(), before))

    unclipped, clipped = moved(0.0), moved(1e-4)
    assert unclipped > 0 and clipped < 0.05 * unclipped, (unclipped, clipped)


@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_master_weights_keep_fp32_copies_that_the_bf16_module_mirrors(kind):
    engine = make_engine(kind, "adamw", precision="bf16", bf16_mode="master")
    stepper = engine.engine.basic_optimizer if kind == "deepspeed" else engine.optimizer
    assert isinstance(stepper, MasterWeightsOptimizer) and stepper.copies
    assert all(m.dtype == torch.float32 for m in stepper.masters)
    assert all(p.dtype == torch.bfloat16 for p in engine.module.parameters())
    losses = train_losses(engine, 8)
    assert losses[-1] < 0.9 * losses[0], losses
    for master, param in zip(stepper.masters, engine.module.parameters()):
        assert torch.equal(master.to(torch.bfloat16), param.detach())
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in stepper.masters)  # the low bits live on


def test_master_weights_accumulate_updates_too_small_for_bf16():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    plain_param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    wrapped = MasterWeightsOptimizer([param], lambda ps: torch.optim.SGD(ps, lr=1e-3))
    plain = torch.optim.SGD([plain_param], lr=1e-3)
    for _ in range(20):   # each update (1e-3) is below bf16's spacing at 1.0 (2^-7 = 7.8e-3)
        param.grad = torch.ones(4, dtype=torch.bfloat16)
        plain_param.grad = torch.ones(4, dtype=torch.bfloat16)
        wrapped.step()
        plain.step()
    assert torch.equal(plain_param.detach(), torch.ones(4, dtype=torch.bfloat16))   # rounded away every time
    assert wrapped.masters[0][0].item() == pytest.approx(0.98, abs=1e-6)
    assert param.detach()[0].item() == pytest.approx(0.98, abs=4e-3)


def test_master_weights_clip_like_torch():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3) * 10, torch.randn(7) * 10]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    reference = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    wrapped = MasterWeightsOptimizer(params, lambda ps: torch.optim.SGD(ps, lr=1.0), clip=1.0)
    for p, r, g in zip(params, reference, grads):
        p.grad, r.grad = g.clone(), g.clone()
    torch.nn.utils.clip_grad_norm_(reference, 1.0)
    torch.optim.SGD(reference, lr=1.0).step()
    wrapped.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.detach(), r.detach())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch's CUDA fused AdamW kernel)"))])
@pytest.mark.parametrize("norm_scale", [10.0, 0.01])     # clipped, and left alone (norm below the limit)
def test_master_weights_clip_through_a_fused_optimizers_grad_scale_like_torch(norm_scale, device):
    """A fused AdamW gets the clipping as its grad_scale; the steps match torch's clip_grad_norm_ + AdamW. A large
    eps makes the update depend on the gradients' scale (Adam is otherwise nearly blind to it)."""
    torch.manual_seed(0)
    grads = [(torch.randn(64, 48) * norm_scale).to(device), (torch.randn(96) * norm_scale).to(device)]
    params = [torch.nn.Parameter(torch.randn_like(g)) for g in grads]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    wrapped = MasterWeightsOptimizer(params, lambda ps: torch.optim.AdamW(ps, lr=0.1, eps=1.0, fused=True),
                                     clip=1.0)
    assert wrapped._fused_inner
    torch_adamw = torch.optim.AdamW(reference, lr=0.1, eps=1.0)
    for _ in range(3):
        for p, r, g in zip(params, reference, grads):
            p.grad, r.grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(reference, 1.0)
        torch_adamw.step()
        wrapped.step()
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-6)


# --- the lean self-attention forward ------------------------------------------------------------------------------

def test_fast_attention_is_torchvisions_function_with_the_same_parameters():
    torch.manual_seed(5)
    stock = build_model(typed("model", **(TINY | {"fast_attention": False})), 10)
    torch.nn.init.normal_(stock.heads.head.weight, std=0.2)   # torchvision's zero head would zero every gradient
    fast = build_model(typed("model", **TINY), 10)
    assert sum(isinstance(m, SelfAttention) for m in fast.modules()) == TINY["num_layers"]
    assert not any(isinstance(m, SelfAttention) for m in stock.modules())
    assert list(stock.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(stock.state_dict())
    images, labels = batch_of(6)
    expected, got = gradients(stock, images, labels), gradients(fast, images, labels)
    assert all(grad.abs().sum() > 0 for grad in expected.values())
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # With dropout the masks differ (torchvision's output is a transposed view, so the same random stream lands on
    # other elements); the function itself is the same: compare it in eval mode.
    stock_drop = build_model(typed("model", **(TINY | {"fast_attention": False, "dropout": 0.3})), 10).eval()
    fast_drop = build_model(typed("model", **(TINY | {"dropout": 0.3})), 10).eval()
    fast_drop.load_state_dict(stock.state_dict()), stock_drop.load_state_dict(stock.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast_drop(images), stock_drop(images), rtol=1e-5, atol=1e-6)


def test_fast_attention_falls_back_for_calls_it_does_not_cover():
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    reference = copy.deepcopy(attention)
    assert enable_fast_attention(attention) == 1
    x, y = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    out, weights = attention(x, x, x, need_weights=True)                 # weights asked for
    ref_out, ref_weights = reference(x, x, x, need_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(attention(y, x, x, need_weights=False)[0], reference(y, x, x, need_weights=False)[0])


# --- activation checkpointing -------------------------------------------------------------------------------------

def gradients(model: torch.nn.Module, images, labels) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_gradients(dropout):
    cfg = TINY | {"dropout": dropout}
    torch.manual_seed(3)
    plain = build_model(typed("model", **cfg), 10)
    torch.manual_seed(3)
    checkpointed = build_model(typed("model", **(cfg | {"activation_checkpointing": True})), 10)
    blocks = [m for m in checkpointed.modules() if isinstance(m, CheckpointedEncoderBlock)]
    assert len(blocks) == TINY["num_layers"]
    assert list(plain.state_dict()) == list(checkpointed.state_dict())   # same names: checkpoints load either way

    # Count MLP forwards: a checkpointed block runs its MLP again during backward. A pre-hook, because the
    # recomputation stops as soon as the last saved tensor is rebuilt, before the MLP's forward returns.
    calls = {"n": 0}
    blocks[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    images, labels = batch_of(5)
    torch.manual_seed(11)   # same dropout masks in both forward passes
    expected = gradients(plain, images, labels)
    torch.manual_seed(11)
    got = gradients(checkpointed, images, labels)
    assert calls["n"] == 2, "the checkpointed block was not recomputed in backward"
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)


def test_activation_checkpointing_is_off_in_eval_and_needs_encoder_blocks():
    torch.manual_seed(0)
    model = build_model(typed("model", **(TINY | {"activation_checkpointing": True})), 10).eval()
    calls = {"n": 0}
    next(m for m in model.modules() if isinstance(m, CheckpointedEncoderBlock)).mlp.register_forward_pre_hook(
        lambda *_: calls.__setitem__("n", calls["n"] + 1))
    with torch.no_grad():
        model(batch_of()[0])
    assert calls["n"] == 1
    with pytest.raises(ValueError, match="no torchvision EncoderBlock"):
        enable_activation_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_activation_checkpointing_trains_through_deepspeed():
    engine = make_engine("deepspeed", "adamw", model_cfg=TINY | {"activation_checkpointing": True})
    losses = train_losses(engine, 6)
    assert losses[-1] < 0.9 * losses[0], losses


# --- state_dict round trip (checkpoint/resume) --------------------------------------------------------------------

@pytest.mark.parametrize("kind, optimizer, precision, bf16_mode", [
    ("deepspeed", "adamw", "fp32", "native"), ("deepspeed", "lamb", "fp32", "native"),
    ("deepspeed", "adamw", "bf16", "native"), ("deepspeed", "sgd", "bf16", "autocast"),
    ("ddp", "adamw", "fp32", "native"), ("ddp", "sgd", "fp32", "native"), ("ddp", "lamb", "bf16", "native"),
    ("deepspeed", "adamw", "bf16", "master"), ("ddp", "adamw", "bf16", "master"),
])
def test_state_dict_round_trip_gives_identical_next_steps(kind, optimizer, precision, bf16_mode):
    images, labels = batch_of(7)
    first = make_engine(kind, optimizer, precision=precision, bf16_mode=bf16_mode, seed=0)
    for _ in range(3):   # past the warm-up: scheduler and optimizer moments both carry state
        first.micro_step(images, labels, boundary=True)
    saved = copy.deepcopy(first.state_dict())
    expected = [float(first.micro_step(images, labels, boundary=True)[0]) for _ in range(2)]
    expected_params = [p.detach().clone() for p in first.module.parameters()]
    expected_lr = first.lr

    # Different initial weights: only load_state_dict can make the next steps match.
    second = make_engine(kind, optimizer, precision=precision, bf16_mode=bf16_mode, seed=123)
    assert not torch.equal(next(second.module.parameters()), next(first.module.parameters()))
    second.load_state_dict(saved)
    got = [float(second.micro_step(images, labels, boundary=True)[0]) for _ in range(2)]
    assert got == expected
    assert second.lr == expected_lr
    for a, b in zip(second.module.parameters(), expected_params):
        assert torch.equal(a.detach(), b)


# --- compile (slow on a CPU: inductor builds C++ kernels) ---------------------------------------------------------

def test_compile_mode_becomes_torch_compile_options_and_a_bad_one_lists_the_valid_ones():
    assert compile_options(typed("trainer", **{})) == {} and compile_options(typed("trainer", **{"compile_mode": "default"})) == {}
    assert compile_options(typed("trainer", **{"compile_mode": "reduce-overhead"})) == {"mode": "reduce-overhead"}
    with pytest.raises(ValueError, match=r"trainer.compile_mode='graphs' is invalid; valid: default, "
                                         r"reduce-overhead, max-autotune, max-autotune-no-cudagraphs"):
        compile_options(typed("trainer", **{"compile_mode": "graphs"}))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deepspeed", "ddp"])
def test_compiled_engine_matches_eager(kind):
    eager = make_engine(kind, "adamw")
    expected = train_losses(eager, 3)
    torch.manual_seed(0)
    model = build_model(typed("model", **TINY), num_classes=10)
    spec, trainer_cfg = spec_for("adamw"), {"grad_clip": 1.0, "compile": True}
    if kind == "deepspeed":
        ds_config = derive_deepspeed_config(batch=Batch(MICRO, 1, 1), precision="fp32", zero_stage=0, grad_clip=1.0,
                                            wall_clock_breakdown=False)
        compiled = DeepSpeedEngine(model, ds_config, typed("trainer", **trainer_cfg), CPU, dict(SCHEDULE), spec)
        assert compiled.engine.is_compiled
    else:
        compiled = DDPEngine(model, typed("trainer", **trainer_cfg), CPU, "fp32", dict(SCHEDULE), grad_accum=1, optimizer=spec)
    assert compiled.compiled
    got = train_losses(compiled, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert list(compiled.module.state_dict()) == list(eager.module.state_dict())   # in place: same checkpoint keys


# --- the scaled lr reaches result.json ----------------------------------------------------------------------------

@pytest.mark.slow
def test_scaled_lr_is_trained_with_and_recorded_in_result_json(tmp_path, monkeypatch):
    from tests.helpers import DIGITS_FAST, read_result, run_cli, run_dir_from_output

    monkeypatch.delenv("LOCAL_RANK", raising=False)   # the one-rank group's: this run starts its own

    proc = run_cli("train", *DIGITS_FAST, "optimizer=sgd", "optimizer.lr=0.01", "optimizer.lr_scaling=sqrt",
                   "optimizer.base_batch=4", "trainer.epochs=1", "trainer.max_steps_per_epoch=3",
                   "trainer.warmup_epochs=0", "trainer.lr_schedule=constant", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = read_result(run_dir_from_output(proc.stdout))
    assert result["global_batch"] == 16
    assert (result["optimizer"], result["lr_rule"], result["lr_base"], result["lr_base_batch"]) == \
        ("sgd", "sqrt", 0.01, 4)
    assert result["lr_effective"] == pytest.approx(0.02)           # 0.01 x sqrt(16 / 4)
    assert result["epochs"][0]["lr"] == pytest.approx(0.02)        # the optimizer really ran at it
