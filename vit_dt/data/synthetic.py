"""Random uint8 images and labels: for throughput measurements only (accuracy means nothing here)."""
from __future__ import annotations

import torch

from .tensors import TensorImages

# Statistics of uniform bytes 0..255 scaled to [0, 1].
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.2898, 0.2898, 0.2898)


def random_images(n: int, image_size: int, num_classes: int, seed: int, channels: int = 3) -> TensorImages:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, image_size, image_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (n,), dtype=torch.int64, generator=generator)
    return TensorImages(images, labels, [f"class_{i}" for i in range(num_classes)])


def load_synthetic(
    train_size: int, val_size: int, image_size: int, num_classes: int, seed: int = 0
) -> tuple[TensorImages, TensorImages]:
    """(train, val) of the given sizes; the same seed gives the same bytes on every rank."""
    for key, value in (("train_size", train_size), ("val_size", val_size), ("image_size", image_size),
                       ("num_classes", num_classes)):
        if int(value) < 1:
            raise ValueError(f"synthetic dataset.{key} must be a positive integer, got {value!r}")
    # Two separate streams: changing train_size leaves the validation images as they were.
    return (
        random_images(train_size, image_size, num_classes, seed=2 * seed),
        random_images(val_size, image_size, num_classes, seed=2 * seed + 1),
    )
