"""Batched augmentation on whatever device the batch lives on.

The loaders hand out uint8 batches; turning them into normalized float images here, batched, means that on a
GPU the whole input pipeline (index -> flip -> resize -> normalize) runs on the GPU and the host only ever
moves bytes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MODEL_CHANNELS = 3  # torchvision's ViTs take RGB


class DeviceAugment:
    """uint8 [B, C, H, W] (C = 1 or 3) -> float [B, 3, image_size, image_size], normalized.

    train=True adds a random horizontal flip per image unless hflip=False (digits: a mirrored digit is not a digit). mean/std have one value per channel of the
    incoming images (1 for grayscale, repeated to 3 with the channels) or three.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        dtype: torch.dtype = torch.float32,
        hflip: bool = True,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        if len(mean) not in (1, MODEL_CHANNELS) or len(std) != len(mean):
            raise ValueError(f"mean and std need 1 or 3 values each, got mean={tuple(mean)}, std={tuple(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
        self.image_size = int(image_size)
        self.train = train
        self.hflip = hflip
        self.dtype = dtype
        self._mean = torch.tensor([float(m) for m in mean]).expand(MODEL_CHANNELS).clone().view(1, -1, 1, 1)
        self._std = torch.tensor([float(s) for s in std]).expand(MODEL_CHANNELS).clone().view(1, -1, 1, 1)
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._per_device:
            self._per_device[device] = (
                self._mean.to(device=device, dtype=self.dtype),
                self._std.to(device=device, dtype=self.dtype),
            )
        return self._per_device[device]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, MODEL_CHANNELS):
            raise ValueError(
                f"DeviceAugment expects uint8 [B, 1|3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(self.dtype).div_(255.0)
        if self.train and self.hflip and x.shape[0]:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        if x.shape[1] == 1:
            x = x.expand(-1, MODEL_CHANNELS, -1, -1)
        mean, std = self._stats(x.device)
        return (x - mean) / std

    def __repr__(self) -> str:
        return (f"DeviceAugment(image_size={self.image_size}, mean={self._mean.flatten().tolist()}, "
                f"std={self._std.flatten().tolist()}, train={self.train})")
