"""TensorImages: a whole split held as two tensors, the form every in-memory dataset takes.

Keeping a split as one uint8 tensor lets the loader move it to the GPU once and index batches there,
so small datasets (CIFAR, digits, synthetic) never touch a DataLoader worker or host memory per step.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """images: uint8 [N, C, H, W]; labels: int64 [N]; classes: one name per label value."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be a 1-d tensor with one label per image ({images.shape[0]}), "
                f"got shape {tuple(labels.shape)}"
            )
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.classes = list(classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: torch.Tensor) -> "TensorImages":
        """A TensorImages of the given rows (stays in-memory, so the fast loader still applies)."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImages(self.images[indices], self.labels[indices], self.classes)

    def __repr__(self) -> str:
        return (
            f"TensorImages(n={len(self)}, shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)}, device={self.images.device})"
        )
