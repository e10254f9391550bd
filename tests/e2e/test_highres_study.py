"""The higher-resolution study (docs/studies/high-resolution.md): more tokens per image through larger images or
smaller patches, with activation checkpointing as the memory lever, recorded in result.json's schema.

FLOPs and memory are measured for real on small models: FLOPs with torch.utils.flop_counter.FlopCounterMode,
memory with the PyTorch profiler's record of every CPU allocation and free.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import run_cli, typed
from vit_dt.config import compose, to_container
from vit_dt.config.validate import ConfigError, validate
from vit_dt.measure import metrics
from vit_dt.models.vit import CheckpointedEncoderBlock, ModelConfigError, build_model

# Small enough for a 2-core CPU at 257 tokens per image (32 x 32 images, patch 2).
SMALL = {"name": "vit_tiny", "image_size": 32, "patch_size": 4, "num_layers": 2, "num_heads": 4, "hidden_dim": 64,
         "mlp_dim": 128, "dropout": 0.0}


def counted(model_cfg: dict, batch: int = 2) -> tuple[float, float]:
    """(training FLOPs per image, of them in bmm: attention) as FlopCounterMode counts one forward + backward."""
    torch.manual_seed(0)
    model = build_model(typed("model", **model_cfg), num_classes=10).train()
    images = torch.randn(batch, 3, model_cfg["image_size"], model_cfg["image_size"])
    # The math backend runs attention as bmm calls, which FlopCounterMode counts (the CPU's fused kernel: 0).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / batch, by_op.get("aten.bmm", 0) / batch


# --- FLOPs follow the token count --------------------------------------------------------------------------
@pytest.mark.parametrize("patch, tokens", [(8, 17), (4, 65), (2, 257)])
def test_flops_per_image_match_the_flop_counter_at_each_patch_size(patch, tokens):
    cfg = SMALL | {"patch_size": patch}
    assert metrics.tokens_per_image(cfg) == tokens == build_model(typed("model", **cfg), 10).seq_length
    total, _ = counted(cfg)
    assert metrics.vit_flops_per_image(cfg, 10) == pytest.approx(total, rel=1e-9)   # exact
    assert metrics.hardware_flops_per_image(cfg, 10) == metrics.vit_flops_per_image(cfg, 10)   # no recompute


def test_flops_grow_linearly_with_tokens_and_attention_quadratically():
    total_4, attention_4 = counted(SMALL | {"patch_size": 4})
    total_2, attention_2 = counted(SMALL | {"patch_size": 2})
    seq_4, seq_2 = 65, 257
    # attention (QK^T and attention x V, forward and backward) scales with the square of the sequence length ...
    assert attention_2 / attention_4 == pytest.approx((seq_2 / seq_4) ** 2, rel=1e-6)
    # ... the rest (projections, MLP) linearly: the total grows faster than the tokens, slower than their square
    assert seq_2 / seq_4 < total_2 / total_4 < (seq_2 / seq_4) ** 2
    analytic = metrics.vit_flops_per_image(SMALL | {"patch_size": 2}, 10) / metrics.vit_flops_per_image(SMALL, 10)
    assert analytic == pytest.approx(total_2 / total_4, rel=1e-9)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_hardware_flops_count_the_recompute_of_activation_checkpointing(dropout):
    """Model FLOPs (MFU's) stay the same; hardware FLOPs add the blocks' second forward, as measured."""
    cfg = SMALL | {"dropout": dropout}
    plain, _ = counted(cfg)
    checkpointed, _ = counted(cfg | {"activation_checkpointing": True})
    ckpt_cfg = cfg | {"activation_checkpointing": True}
    assert metrics.vit_flops_per_image(ckpt_cfg, 10) == metrics.vit_flops_per_image(cfg, 10)
    hardware = metrics.hardware_flops_per_image(ckpt_cfg, 10)
    assert hardware == pytest.approx(checkpointed, rel=1e-9)
    assert hardware - metrics.vit_flops_per_image(cfg, 10) == pytest.approx(checkpointed - plain, rel=1e-6)
    assert 1.2 < hardware / metrics.vit_flops_per_image(cfg, 10) < 4 / 3 + 1e-9    # at most a 4th forward


# --- configs: ViT-B with another patch, vit_tiny at more tokens, bad values --------------------------------
def _validated(overrides: list[str]) -> dict:
    cfg = to_container(compose(overrides))
    validate(cfg, world_size=1)
    return cfg


def test_vit_b_with_patch_8_composes_and_builds_785_tokens():
    cfg = _validated(["model=vit_b_16", "model.patch_size=8", "dataset=imagenet100"])
    assert (cfg["model"]["image_size"], cfg["model"]["patch_size"]) == (224, 8)
    assert metrics.tokens_per_image(cfg["model"]) == 28 * 28 + 1
    torch.manual_seed(0)
    model = build_model(typed("model", **cfg["model"]), num_classes=100)
    assert model.seq_length == 785 and model.patch_size == 8 and model.conv_proj.kernel_size == (8, 8)
    assert (len(model.encoder.layers), model.hidden_dim, model.encoder.layers[0].mlp[0].out_features) == (12, 768, 3072)
    assert model.encoder.pos_embedding.shape == (1, 785, 768)
    # the FLOPs recorded follow: ~4x the tokens, a bit more than 4x the FLOPs (attention)
    b16 = metrics.vit_flops_per_image(_validated(["model=vit_b_16"])["model"], 100)
    assert 4.0 < metrics.vit_flops_per_image(cfg["model"], 100) / b16 < 5.0


def test_vit_b_16_at_patch_16_is_still_torchvisions_vit_b_16():
    cfg = _validated(["model=vit_b_16"])["model"]
    assert (cfg["image_size"], cfg["patch_size"]) == (224, 16)
    torch.manual_seed(5)
    ours = build_model(typed("model", **cfg), num_classes=10)
    torch.manual_seed(5)
    theirs = torchvision.models.vit_b_16(weights=None, num_classes=10)
    assert type(ours) is type(theirs) and ours.seq_length == 197
    for (name, a), (name_b, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b), name


def test_vit_b_at_384_composes_with_the_dataset_at_384():
    cfg = _validated(["model=vit_b_16", "dataset=imagenet100", "dataset.image_size=384", "model.image_size=384"])
    assert metrics.tokens_per_image(cfg["model"]) == 24 * 24 + 1


def test_vit_tiny_patch_override_builds_more_tokens():
    cfg = _validated(["model=vit_tiny", "dataset=synthetic", "dataset.image_size=32", "model.patch_size=2"])
    assert cfg["model"]["image_size"] == 32        # vit_tiny follows dataset.image_size
    assert build_model(typed("model", **cfg["model"]), 10).seq_length == 257 == metrics.tokens_per_image(cfg["model"])


@pytest.mark.parametrize("overrides, message", [
    (["model=vit_b_16", "model.patch_size=15"], "model.image_size=224 is not a multiple of model.patch_size=15"),
    (["model=vit_b_16", "model.patch_size=0"], "model.patch_size=0 is invalid: it must be an integer >= 1"),
    (["model=vit_b_16", "model.image_size=-224"], "model.image_size=-224 is invalid"),
    (["model=vit_b_16", "model.num_layers=24"], "model.num_layers=24 is invalid for model.name=vit_b_16: it is "
                                                 "fixed at 12"),
    # model.activation_checkpointing is a bool in the schema: `yes` means true, `maybe` fails at composition
    # (tests/test_config_schema.py)
])
def test_bad_geometry_is_refused_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError) as err:
        _validated(overrides)
    assert message in str(err.value)


def test_bad_patch_message_lists_the_patch_sizes_that_fit():
    with pytest.raises(ConfigError) as err:
        _validated(["model=vit_b_16", "model.patch_size=12"])
    assert "patch sizes that divide 224: 2, 4, 7, 8, 14, 16, 28, 32, 56" in str(err.value)
    with pytest.raises(ModelConfigError, match="not a multiple of model.patch_size=12"):
        build_model(typed("model", **(SMALL | {"patch_size": 12})), 10)


# --- activation checkpointing at many tokens: same gradients, less memory -----------------------------------
def _peak_allocated_mib(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Peak bytes of CPU tensors alive during one forward + backward, beyond those alive before it: the profiler
    records every allocation and free of the CPU allocator; their running sum in time order is the live memory."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(images).sum().backward()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    assert events, "the profiler recorded no allocations"
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def test_checkpointing_at_257_tokens_same_gradients_recomputed_blocks_and_lower_peak_memory():
    cfg = SMALL | {"patch_size": 2, "num_layers": 4}
    torch.manual_seed(1)
    plain = build_model(typed("model", **cfg), 10).train()
    torch.manual_seed(1)
    checkpointed = build_model(typed("model", **(cfg | {"activation_checkpointing": True})), 10).train()
    blocks = [m for m in checkpointed.modules() if isinstance(m, CheckpointedEncoderBlock)]
    assert len(blocks) == 4
    calls = {"n": 0}
    for block in blocks:
        block.ln_1.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(8) % 10

    def grads(model):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    expected, got = grads(plain), grads(checkpointed)
    assert calls["n"] == 2 * len(blocks), "each checkpointed block must run its forward again in backward"
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)

    plain.zero_grad(set_to_none=True)
    checkpointed.zero_grad(set_to_none=True)
    peak_plain = _peak_allocated_mib(plain, images)
    peak_checkpointed = _peak_allocated_mib(checkpointed, images)
    # 4 blocks x 8 images x 257 tokens: each block's attention matrices and MLP activations are freed after its
    # forward and rebuilt one block at a time in backward (measured: ~26 MiB against ~9 MiB)
    assert peak_checkpointed < 0.6 * peak_plain, (peak_plain, peak_checkpointed)


# --- end to end: a local sweep over patch sizes and checkpointing, recorded in the schema --------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_sweep_records_tokens_patch_and_checkpointing(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("sweep", "cluster=local", "dataset=synthetic", "dataset.image_size=32", "dataset.train_size=96",
                   "dataset.val_size=32", "model=vit_tiny", "model.patch_size=4,8",
                   "model.activation_checkpointing=false,true", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                   "trainer.micro_batch=16", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "completed" for r in records), records
    by_key = {(r["patch_size"], r["activation_checkpointing"]): r for r in records}
    assert sorted(by_key) == [(4, False), (4, True), (8, False), (8, True)]
    for (patch, checkpointing), r in by_key.items():
        assert r == json.loads((Path(r["run_dir"]) / "result.json").read_text())   # the store and result.json agree
        assert (r["image_size"], r["tokens_per_image"]) == (32, (32 // patch) ** 2 + 1)
        assert r["config"]["model"]["patch_size"] == patch
        assert r["config"]["model"]["activation_checkpointing"] is checkpointing
        assert r["flops_per_image"] == metrics.vit_flops_per_image(r["config"]["model"], 10)
        assert r["hardware_flops_per_image"] == metrics.hardware_flops_per_image(r["config"]["model"], 10)
        assert r["tflops"] > 0 and r["hardware_tflops"] >= r["tflops"]
        assert r["mfu"] is None and r["hfu"] is None                   # CPU: no peak
    # the model FLOPs follow the tokens and ignore checkpointing; the hardware FLOPs count its recompute
    assert by_key[(4, True)]["flops_per_image"] == by_key[(4, False)]["flops_per_image"] \
        > 3.8 * by_key[(8, False)]["flops_per_image"]
    assert by_key[(4, False)]["hardware_flops_per_image"] == by_key[(4, False)]["flops_per_image"]
    assert by_key[(4, True)]["hardware_flops_per_image"] > 1.2 * by_key[(4, True)]["flops_per_image"]
