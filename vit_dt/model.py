"""torchvision Vision Transformers by name, built from the `model` config group."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torchvision.models import VisionTransformer, vit_b_16

MODEL_NAMES = ("vit_tiny", "vit_b_16")


class ModelConfigError(ValueError):
    pass


def build_model(model_cfg: Mapping[str, Any], num_classes: int) -> torch.nn.Module:
    name = model_cfg["name"]
    image_size, patch_size = int(model_cfg["image_size"]), int(model_cfg["patch_size"])
    if name not in MODEL_NAMES:
        raise ModelConfigError(f"model.name={name!r} is unknown; valid: {', '.join(MODEL_NAMES)}")
    if image_size % patch_size:
        raise ModelConfigError(
            f"model.image_size={image_size} is not a multiple of model.patch_size={patch_size}")
    if name == "vit_b_16":
        # torchvision's own constructor (weights=None: trained from scratch, as in the paper).
        return vit_b_16(weights=None, num_classes=num_classes, image_size=image_size,
                        dropout=float(model_cfg.get("dropout", 0.0)))
    return VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=int(model_cfg["num_layers"]),
        num_heads=int(model_cfg["num_heads"]), hidden_dim=int(model_cfg["hidden_dim"]),
        mlp_dim=int(model_cfg["mlp_dim"]), dropout=float(model_cfg.get("dropout", 0.0)), num_classes=num_classes)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
