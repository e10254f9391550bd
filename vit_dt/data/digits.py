"""scikit-learn's handwritten digits: 1,797 real 8x8 grayscale images that ship with the package (no download)."""
from __future__ import annotations

import numpy as np
import torch

from .tensors import TensorImages

DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_MAX_VALUE = 16  # sklearn's pixel values are 0..16
# Per-channel statistics of the 0..255-scaled images (computed over all 1,797 images).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3759,)
# The split does not follow trainer.seed, so runs with different seeds are scored on the same hold-out.
DEFAULT_SPLIT_SEED = 0


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All images as uint8 [1797, 1, 8, 8] (0..16 scaled to 0..255) and int64 labels."""
    from sklearn.datasets import load_digits as sklearn_load_digits  # imported here: slow, digits-only

    bunch = sklearn_load_digits()
    scaled = np.rint(bunch.images * (255.0 / DIGITS_MAX_VALUE)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(scaled[:, None]), torch.from_numpy(bunch.target.astype(np.int64))


def load_digits(val_fraction: float = 0.2, split_seed: int = DEFAULT_SPLIT_SEED) -> tuple[TensorImages, TensorImages]:
    """(train, val): a seeded split stratified by label, val holding `val_fraction` of the images."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"digits val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    from sklearn.model_selection import train_test_split

    images, labels = digits_tensors()
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=split_seed, stratify=labels.numpy()
    )
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return (
        TensorImages(images[train_idx], labels[train_idx], DIGITS_CLASSES),
        TensorImages(images[val_idx], labels[val_idx], DIGITS_CLASSES),
    )
