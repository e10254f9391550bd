"""Which part of the training split a run uses under each scaling mode.

strong / none: the whole split, whatever the world size.
weak:          a seeded RANDOM subset of fraction_per_gpu x world_size x len(split) samples, so the data per rank
               stays constant as ranks are added. (The paper took the first p% of indices instead, which with
               class-sorted data would skew the label mix; a random subset avoids that.) The subset is the
               prefix of one seeded permutation, so the subset for N ranks contains the one for N-1.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from vit_dt.config.choices import SCALING_MODES

from .tensors import TensorImages


def weak_subset_size(dataset_size: int, fraction_per_gpu: float, world_size: int) -> int:
    """floor(fraction_per_gpu x world_size x dataset_size), at least world_size, at most dataset_size."""
    if not 0.0 < fraction_per_gpu <= 1.0:
        raise ValueError(f"scaling.fraction_per_gpu must lie in (0, 1], got {fraction_per_gpu!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    # The epsilon keeps 0.1 x 3 x 50000 = 14999.999... from losing a sample to float rounding.
    wanted = math.floor(fraction_per_gpu * world_size * dataset_size + 1e-6)
    return min(dataset_size, max(world_size, wanted))


def random_subset_indices(dataset_size: int, size: int, seed: int) -> torch.Tensor:
    """`size` distinct indices of a seeded permutation, sorted (sequential reads for file-backed data)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=generator)[:size].sort().values


def take(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """A subset that keeps an in-memory dataset in memory (TensorImages) and wraps any other in Subset."""
    if isinstance(dataset, TensorImages):
        return dataset.subset(indices)
    return Subset(dataset, indices.tolist())


def apply_scaling(dataset: Dataset, scaling_cfg: Any, *, world_size: int, seed: int) -> Dataset:
    """The training split a run uses; `scaling_cfg` is the typed scaling config (None: no scaling)."""
    mode = scaling_cfg.mode if scaling_cfg is not None else "none"
    if mode not in SCALING_MODES:
        raise ValueError(f"unknown scaling.mode {mode!r}; valid: {', '.join(SCALING_MODES)}")
    if mode != "weak":
        return dataset
    fraction = getattr(scaling_cfg, "fraction_per_gpu", None)   # only WeakScalingSchema declares it
    if fraction is None:
        raise ValueError("scaling.mode=weak needs scaling.fraction_per_gpu (e.g. 0.1)")
    n = len(dataset)
    size = weak_subset_size(n, float(fraction), world_size)
    return take(dataset, random_subset_indices(n, size, seed))
