"""vit_dt.measure.metrics: FLOPs against PyTorch's own counter, the peak table, throughput/TFLOP/s/MFU, peak memory."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_dt.measure import metrics

VIT_TINY = dict(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)
VIT_B_16 = dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)


def counted_flops(model_cfg: dict, num_classes: int, batch: int, training: bool) -> float:
    """FLOPs per image as torch.utils.flop_counter counts them on a real torchvision ViT."""
    model = torchvision.models.VisionTransformer(num_classes=num_classes, **model_cfg)
    model.train(training)
    images = torch.randn(batch, 3, model_cfg["image_size"], model_cfg["image_size"])
    # The CPU's fused attention kernel has no FLOP formula in FlopCounterMode (it would count attention as 0);
    # the math backend runs attention as plain bmm calls, which it counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if training:
            model(images).sum().backward()
        else:
            # Forward only, but outside no_grad: under no_grad an eval-mode MultiheadAttention takes PyTorch's fused
            # fast path, which FlopCounterMode cannot see into either.
            model(images)
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_vit_tiny_flops_match_flop_counter(training):
    analytic = metrics.vit_flops_per_image(VIT_TINY, num_classes=10, training=training)
    counted = counted_flops(VIT_TINY, 10, batch=2, training=training)
    assert analytic == pytest.approx(counted, rel=0.05)


def test_vit_b_16_flops_match_flop_counter_and_baseline():
    analytic = metrics.vit_flops_per_image(VIT_B_16, num_classes=10, training=True)
    counted = counted_flops(VIT_B_16, 10, batch=1, training=True)
    assert analytic == pytest.approx(counted, rel=0.05)
    # h100-baseline.md: 105.9 GFLOP per training image (FlopCounterMode on an H100, flash attention).
    assert analytic / 1e9 == pytest.approx(105.9, rel=0.05)


def test_flops_grow_with_image_size_and_reject_bad_config():
    small = metrics.vit_flops_per_image(VIT_TINY, 10)
    large = metrics.vit_flops_per_image(VIT_TINY | {"image_size": 64}, 10)
    assert large > 4 * small                       # 4x the tokens, plus quadratic attention
    with pytest.raises(ValueError, match="mlp_dim"):
        metrics.vit_flops_per_image({k: v for k, v in VIT_TINY.items() if k != "mlp_dim"}, 10)
    with pytest.raises(ValueError, match="not a multiple"):
        metrics.vit_flops_per_image(VIT_TINY | {"image_size": 30}, 10)


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100-PCIe"),
    ("NVIDIA H100 NVL", "H100-NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A40", "A40"),
    ("NVIDIA L40S", "L40S"),
    ("Tesla V100-SXM2-32GB", "V100"),
    ("Tesla V100-PCIE-16GB", "V100-PCIe"),
    ("Tesla T4", "T4"),
    ("NVIDIA RTX A4000", None),          # not an A40
    ("NVIDIA GeForce RTX 4090", None),
    ("NVIDIA L40", None),                # the L40 is not the L40S
])
def test_gpu_model_from_name(name, model):
    assert metrics.gpu_model_from_name(name) == model


def test_every_table_model_has_every_precision():
    for required in ("T4", "V100", "A40", "A100", "L40S", "H100", "H200"):
        assert required in metrics.PEAK_TFLOPS
    for model, row in metrics.PEAK_TFLOPS.items():
        assert set(row) == set(metrics.PRECISIONS), model
        assert row["fp32"] > 0
        assert row["fp16"] > row["fp32"], model   # tensor cores beat CUDA cores everywhere in the table


def test_peak_tflops_lookup():
    assert metrics.peak_tflops("H100", "bf16") == 989.4
    assert metrics.peak_tflops("h100", "tf32") == 494.7          # case does not matter
    assert metrics.peak_tflops("NVIDIA A100-SXM4-40GB", "bf16") == 312.0   # a full device name works too
    assert metrics.peak_tflops("V100", "bf16") is None            # no bf16 on Volta
    assert metrics.peak_tflops(None, "fp32") is None              # CPU
    assert metrics.peak_tflops("MI300X", "bf16") is None          # unknown GPU
    with pytest.raises(ValueError, match="fp64.*fp32, tf32, bf16, fp16"):
        metrics.peak_tflops("H100", "fp64")


def test_matmul_precision_follows_torch_tf32_switch():
    before = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        assert metrics.matmul_precision("fp32") == "fp32"
        torch.set_float32_matmul_precision("high")
        assert metrics.matmul_precision("fp32") == "tf32"
        assert metrics.matmul_precision("bf16") == "bf16"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_throughput_tflops_and_mfu_for_a_known_run():
    # 8 H100s process 80,000 images in 10 s of ViT-B/16 bf16 training.
    rates = metrics.throughput(images=80_000, seconds=10.0, world_size=8)
    assert rates == {"img_per_s": 8000.0, "img_per_s_per_gpu": 1000.0}
    flops = metrics.vit_flops_per_image(VIT_B_16, 10)
    tflops = metrics.achieved_tflops(rates["img_per_s_per_gpu"], flops)
    assert tflops == pytest.approx(1000 * flops / 1e12)
    assert tflops == pytest.approx(105.4, rel=0.01)
    utilisation = metrics.mfu(tflops, metrics.peak_tflops("H100", "bf16"))
    assert utilisation == pytest.approx(tflops / 989.4)
    assert 0.10 < utilisation < 0.11
    assert metrics.mfu(tflops, None) is None


def test_h100_baseline_row_reproduces_its_mfu():
    # h100-baseline.md: eager bf16 at batch 256 gave 2,095 img/s = 28% of the measured 792 TFLOP/s.
    tflops = metrics.achieved_tflops(2095, 105.9e9)
    assert metrics.mfu(tflops, 792.0) == pytest.approx(0.28, abs=0.005)


def test_throughput_rejects_bad_input():
    with pytest.raises(ValueError, match="seconds"):
        metrics.throughput(10, 0.0, 1)
    with pytest.raises(ValueError, match="world_size"):
        metrics.throughput(10, 1.0, 0)


def test_peak_memory_on_cpu_is_this_process_max_rss():
    before = metrics.peak_memory_gb("cpu")
    block = bytearray(300 * 2**20)         # touch 300 MiB so the peak must rise past it
    block[::4096] = b"x" * len(block[::4096])
    after = metrics.peak_memory_gb(torch.device("cpu"))
    del block
    assert before is not None and after is not None
    assert after >= 0.29 and after >= before
    with open("/proc/self/status") as status:      # the kernel's own high-water mark agrees
        vm_hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    assert after == pytest.approx(vm_hwm_kib / 2**20, rel=0.05)
    assert metrics.peak_memory_gb("meta") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_peak_memory_on_gpu():
    torch.cuda.reset_peak_memory_stats()
    tensor = torch.empty(2**28, dtype=torch.uint8, device="cuda")   # 256 MiB
    assert metrics.peak_memory_gb("cuda") >= 0.25
    del tensor
    assert not math.isnan(metrics.peak_memory_gb("cuda"))
