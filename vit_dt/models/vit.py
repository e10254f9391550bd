"""torchvision Vision Transformers by name, built from the `model` config group.

Attention already runs through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on a GPU):
torchvision's EncoderBlock calls nn.MultiheadAttention with need_weights=False, which takes that path.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from torchvision.models import VisionTransformer, vit_b_16
from torchvision.models.vision_transformer import EncoderBlock

from vit_dt.config.choices import MODEL_NAMES
from vit_dt.config.schema import ModelSchema
from vit_dt.models.attention import enable_fast_attention
from vit_dt.models.catalog import geometry_errors


class ModelConfigError(ValueError):
    pass


def build_model(model: ModelSchema, num_classes: int) -> torch.nn.Module:
    """The ViT the typed `model` config describes (every key present: vit_dt.config.typed)."""
    name = model.name
    if name not in MODEL_NAMES:
        raise ModelConfigError(f"model.name={name!r} is unknown; valid: {', '.join(MODEL_NAMES)}")
    errors = geometry_errors(model)
    if errors:
        raise ModelConfigError(errors[0])
    image_size, patch_size, dropout = model.image_size, model.patch_size, model.dropout
    if name == "vit_b_16" and patch_size == 16:
        # torchvision's own constructor (weights=None: trained from scratch, as in the paper).
        vit = vit_b_16(weights=None, num_classes=num_classes, image_size=image_size, dropout=dropout)
    else:
        # vit_tiny, or ViT-B with another patch size (model=vit_b_16 model.patch_size=8: ViT-B/8; torchvision's
        # vit_b_16() fixes the patch at 16, and this is the constructor it calls, with the same dimensions).
        vit = VisionTransformer(
            image_size=image_size, patch_size=patch_size, num_layers=model.num_layers, num_heads=model.num_heads,
            hidden_dim=model.hidden_dim, mlp_dim=model.mlp_dim, dropout=dropout, num_classes=num_classes)
    if model.activation_checkpointing:
        enable_activation_checkpointing(vit)
    if model.fast_attention:
        enable_fast_attention(vit)
    return vit


class CheckpointedEncoderBlock(EncoderBlock):
    """An EncoderBlock that keeps only its input for backward and recomputes the rest (less memory, ~1/3 more
    compute). Non-reentrant checkpointing restores the RNG state, so dropout masks match the first pass."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.training:
            return checkpoint(super().forward, input, use_reentrant=False)
        return super().forward(input)


def enable_activation_checkpointing(model: VisionTransformer) -> int:
    """Recompute each encoder block's activations in backward; returns the number of blocks changed.

    The blocks change class in place rather than being wrapped, so parameter names, state_dict keys and the
    optimizer's parameter list stay exactly as without checkpointing (checkpoints load either way).
    """
    blocks = [m for m in model.modules() if isinstance(m, EncoderBlock)]
    if not blocks:
        raise ModelConfigError(f"{type(model).__name__} has no torchvision EncoderBlock to checkpoint")
    for block in blocks:
        block.__class__ = CheckpointedEncoderBlock
    return len(blocks)
