"""Throughput, achieved TFLOP/s, MFU and peak memory: pure functions over numbers the trainer measured.

FLOPs are counted analytically for torchvision's VisionTransformer (matrix multiplies only, the convention of
MFU papers and of `torch.utils.flop_counter.FlopCounterMode`, which they match exactly). A training image costs
about three forward passes (forward + backward for activations + backward for weights); activation checkpointing
adds most of a fourth for the encoder blocks: hardware FLOPs, not model FLOPs (MFU counts model FLOPs).
See docs/metrics.md for the definitions.
"""
from __future__ import annotations

import re
import resource
import sys
from collections.abc import Mapping
from typing import Any

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Dense (no 2:4 sparsity) peak TFLOP/s from NVIDIA's datasheets. fp32 is the CUDA-core rate; tf32/bf16/fp16 are
# tensor-core rates. None: the GPU has no such mode (T4 and V100 have no bf16 or tf32 tensor cores).
# The bare model names are the SXM/board parts that clusters mostly have; PCIe/NVL variants are slower.
PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "T4":        {"fp32": 8.1,  "tf32": None,  "bf16": None,   "fp16": 65.0},
    "V100":      {"fp32": 15.7, "tf32": None,  "bf16": None,   "fp16": 125.0},   # SXM2
    "V100-PCIe": {"fp32": 14.0, "tf32": None,  "bf16": None,   "fp16": 112.0},
    "A40":       {"fp32": 37.4, "tf32": 74.8,  "bf16": 149.7,  "fp16": 149.7},
    "A100":      {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0,  "fp16": 312.0},   # SXM and PCIe alike
    "L40S":      {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
    "H100":      {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4,  "fp16": 989.4},   # SXM5
    "H100-PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0,  "fp16": 756.0},
    "H100-NVL":  {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5,  "fp16": 835.5},
    "H200":      {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4,  "fp16": 989.4},   # SXM, same chip as H100 SXM
    "H200-NVL":  {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5,  "fp16": 835.5},
}

# (pattern on torch.cuda.get_device_name(), model). First match wins, so variants come before the bare name.
# Word boundaries keep "RTX A4000" from reading as A40 and "T400" from reading as T4.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bH200\b.*\bNVL\b", "H200-NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bPCIe\b", "H100-PCIe"),
    (r"\bH100\b.*\bNVL\b", "H100-NVL"),
    (r"\bH100\b", "H100"),
    (r"\bA100\b", "A100"),
    (r"\bA40\b", "A40"),
    (r"\bL40S\b", "L40S"),
    (r"\bV100\b.*\bPCIE\b", "V100-PCIe"),
    (r"\bV100\b", "V100"),
    (r"\bT4\b", "T4"),
)


def gpu_model_from_name(torch_device_name: str) -> str | None:
    """"NVIDIA H100 80GB HBM3" -> "H100"; None for a GPU that is not in PEAK_TFLOPS."""
    for pattern, model in _NAME_PATTERNS:
        if re.search(pattern, torch_device_name, flags=re.IGNORECASE):
            return model
    return None


def _canonical_model(gpu_model: str) -> str | None:
    by_lower = {name.lower(): name for name in PEAK_TFLOPS}
    return by_lower.get(gpu_model.strip().lower()) or gpu_model_from_name(gpu_model)


def peak_tflops(gpu_model: str | None, precision: str) -> float | None:
    """Dense peak TFLOP/s of one GPU at `precision`; None on CPU (gpu_model None) or for an unknown model.

    `gpu_model` is a key of PEAK_TFLOPS (any case) or a full device name. For fp32 training where PyTorch lets
    matmuls use TF32, pass `matmul_precision("fp32")` so the peak is the TF32 one.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if gpu_model is None:
        return None
    model = _canonical_model(gpu_model)
    if model is None:
        return None
    return PEAK_TFLOPS[model][precision]


def matmul_precision(precision: str) -> str:
    """The precision fp32 matmuls really run at: "tf32" when PyTorch allows TF32 tensor cores, else unchanged."""
    if precision != "fp32":
        return precision
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "fp32"


_MODEL_KEYS = ("image_size", "patch_size", "num_layers", "hidden_dim", "mlp_dim")


def _vit_forward_flops(model_cfg: Mapping[str, Any], num_classes: int) -> dict[str, float]:
    """One image's forward FLOPs: `total`, and of it `embed` (the patch embedding), `blocks` (the encoder blocks)
    and `mlp_out` (the blocks' MLPs' second matmuls)."""
    missing = [k for k in _MODEL_KEYS if model_cfg.get(k) is None]
    if missing:
        raise ValueError(f"model config lacks {', '.join(missing)}; needs {', '.join(_MODEL_KEYS)}")
    image, patch = int(model_cfg["image_size"]), int(model_cfg["patch_size"])
    layers, dim, mlp = int(model_cfg["num_layers"]), int(model_cfg["hidden_dim"]), int(model_cfg["mlp_dim"])
    if patch < 1 or image % patch:
        raise ValueError(f"image_size {image} is not a multiple of patch_size {patch}")
    patches = (image // patch) ** 2
    seq = tokens_per_image(model_cfg)                   # patches + class token
    embed = 2 * patches * (3 * patch * patch) * dim
    projections = 2 * seq * (4 * dim * dim)             # QKV (3 d x d) + output (d x d)
    attention = 2 * 2 * seq * seq * dim                 # QK^T and attention x V, summed over heads
    mlp_flops = 2 * 2 * seq * dim * mlp                 # two matmuls, d -> mlp -> d
    head = 2 * dim * num_classes
    blocks = layers * (projections + attention + mlp_flops)
    return {"total": float(embed + blocks + head), "embed": float(embed), "blocks": float(blocks),
            "mlp_out": float(layers * mlp_flops / 2)}


def _training_flops(parts: dict[str, float]) -> float:
    """Forward + backward: twice the forward for backward (gradients of inputs and of weights), except the patch
    embedding, whose input (the images) needs no gradient: its backward is the weight gradient only."""
    return 3 * parts["total"] - parts["embed"]


def tokens_per_image(model_cfg: Mapping[str, Any]) -> int:
    """Sequence length through the encoder: (image_size / patch_size)^2 patches + the class token."""
    from vit_dt.models.catalog import tokens_per_image as tokens

    return tokens(model_cfg["image_size"], model_cfg["patch_size"])


def vit_flops_per_image(model_cfg: Mapping[str, Any], num_classes: int, training: bool = True) -> float:
    """Model FLOPs of one image through torchvision's VisionTransformer; ~x3 for a training step (fwd + bwd).

    Counts the multiply-adds of every matmul as 2 FLOPs: the patch-embedding convolution, per encoder layer the
    QKV and output projections, QK^T and attention x V, the two MLP layers, and the classification head (class
    token only). LayerNorm, GELU, softmax and residual adds are left out (<1% for ViT-B/16), like FlopCounterMode.
    Training: forward x 3, less the patch embedding's input gradient (images need none). The sequence length is
    tokens_per_image: projections and MLPs grow linearly with it, attention quadratically.

    These are the model's FLOPs, whatever the implementation: activation checkpointing's recomputation is not
    counted (MFU's convention); hardware_flops_per_image counts it.
    """
    parts = _vit_forward_flops(model_cfg, num_classes)
    return float(_training_flops(parts) if training else parts["total"])


def hardware_flops_per_image(model_cfg: Mapping[str, Any], num_classes: int) -> float:
    """Training FLOPs one image really costs, activation checkpointing's recomputation included.

    With `activation_checkpointing` each encoder block runs its forward again in backward (vit_dt.models.vit's
    CheckpointedEncoderBlock, non-reentrant), up to the last tensor backward needs: with dropout 0 that is the
    input of the MLP's second matmul, so that matmul is not rerun; with dropout its output feeds a dropout mask,
    so the whole block is. The patch embedding and the head are not checkpointed. Measured against
    FlopCounterMode in tests/e2e/test_highres_study.py. Without checkpointing this equals vit_flops_per_image.
    """
    parts = _vit_forward_flops(model_cfg, num_classes)
    recompute = 0.0
    if model_cfg.get("activation_checkpointing"):
        recompute = parts["blocks"] - (parts["mlp_out"] if not float(model_cfg.get("dropout") or 0.0) else 0.0)
    return float(_training_flops(parts) + recompute)


def throughput(images: int, seconds: float, world_size: int) -> dict[str, float]:
    """Images per second over all ranks (`images` is the global count) and per GPU (rank)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    rate = images / seconds
    return {"img_per_s": rate, "img_per_s_per_gpu": rate / world_size}


def achieved_tflops(img_per_s_per_gpu: float, flops_per_image: float) -> float:
    """Model TFLOP/s one GPU sustained: useful FLOPs only (recomputation or padding would not count)."""
    return img_per_s_per_gpu * flops_per_image / 1e12


def mfu(achieved: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation, a fraction of the peak (0.41 = 41%); None without a peak (CPU, unknown GPU).

    Given hardware TFLOP/s (recomputation included) instead, the same ratio is the hardware FLOPs utilisation.
    """
    if not peak:
        return None
    return achieved / peak


def peak_memory_gb(device: Any) -> float | None:
    """Peak memory in GiB (2^30 bytes).

    On a GPU: `torch.cuda.max_memory_allocated` (tensors only, not the caching allocator's reserve).
    On a CPU: the process's maximum resident set size from `resource.getrusage` (the whole process, model and
    Python and libraries, since start; ru_maxrss is KiB on Linux, bytes on macOS). None for other devices.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "cpu":
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        return maxrss * scale / 2**30
    return None
