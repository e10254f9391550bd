"""A run's datasets from its `dataset` config: the train and val splits and what the model and report need to know
about them (DatasetInfo)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vit_dt.config.choices import DATASETS
from vit_dt.config.schema import DatasetSchema, ScalingSchema

from .augment import DeviceAugment
from .cifar import CIFAR10_STATS, CIFAR100_STATS, load_cifar10, load_cifar100
from .digits import DIGITS_MEAN, DIGITS_STD, load_digits
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, load_imagefolder
from .subsets import apply_scaling
from .synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD, load_synthetic
from .tensors import TensorImages


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the report need to know about the data of a run."""

    name: str
    num_classes: int
    channels: int                # channels of the stored images (1 for digits); the model always gets 3
    mean: tuple[float, ...]      # per stored channel, for DeviceAugment
    std: tuple[float, ...]
    native_image_size: int       # side of the uint8 images the dataset yields
    image_size: int              # dataset.image_size: what folder workers crop to, synthetic generates
    train_samples: int           # after the weak-scaling subset
    val_samples: int
    train_samples_full: int      # the whole training split
    in_memory: bool              # TensorImages (kept whole on the device) or lazily decoded files
    classes: list[str] = field(repr=False)

    def device_augment(self, model_image_size: int, train: bool) -> DeviceAugment:
        """The batched augmentation that resizes to the side the model sees (model.image_size: vit_b_16 is fixed
        at 224 whatever the dataset; vit_tiny follows dataset.image_size)."""
        return DeviceAugment(model_image_size, self.mean, self.std, train=train)


def _require(dataset: DatasetSchema, key: str) -> Any:
    """A key that is optional in the schema (dataset.root: null for datasets without files) but this dataset needs."""
    value = getattr(dataset, key)
    if value is None:
        raise ValueError(f"dataset {dataset.name!r} needs dataset.{key} (got {value!r})")
    return value


def _load_splits(cfg: Any, seed: int) -> tuple[Dataset, Dataset, tuple[float, ...], tuple[float, ...]]:
    """`cfg`: the typed dataset config, an instance of the schema of dataset `cfg.name` (vit_dt.config.typed)."""
    name = cfg.name
    if name == "cifar10":
        train, val = load_cifar10(Path(_require(cfg, "root")))
        return train, val, CIFAR10_STATS.mean, CIFAR10_STATS.std
    if name == "cifar100":
        train, val = load_cifar100(Path(_require(cfg, "root")), label_type=cfg.label_type)
        return train, val, CIFAR100_STATS.mean, CIFAR100_STATS.std
    if name == "digits":
        train, val = load_digits(cfg.val_fraction, split_seed=cfg.split_seed)
        return train, val, DIGITS_MEAN, DIGITS_STD
    if name == "imagenet100":
        train, val = load_imagefolder(Path(_require(cfg, "root")), cfg.image_size, name=name)
        return train, val, IMAGENET_MEAN, IMAGENET_STD
    if name == "synthetic":
        train, val = load_synthetic(cfg.train_size, cfg.val_size, cfg.image_size, cfg.num_classes, seed=seed)
        return train, val, SYNTHETIC_MEAN, SYNTHETIC_STD
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")


def build_datasets(
    dataset: DatasetSchema, *, scaling_cfg: ScalingSchema | None = None, world_size: int = 1, seed: int = 0
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """(train, val, info) for the typed `dataset` config (vit_dt.config.typed); weak scaling subsets the train
    split only. Validation always uses the whole val split, so accuracies of different world sizes compare.
    """
    cfg = dataset
    name = cfg.name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    full_train, val, mean, std = _load_splits(cfg, seed)
    classes = list(full_train.classes)  # type: ignore[attr-defined]
    expected = cfg.num_classes
    if expected != len(classes):
        hint = " (label_type=coarse has 20)" if name == "cifar100" else ""
        raise ValueError(
            f"dataset.num_classes={expected} but {name} has {len(classes)} classes{hint}; "
            f"set dataset.num_classes={len(classes)}"
        )
    train = apply_scaling(full_train, scaling_cfg, world_size=world_size, seed=seed)
    if isinstance(full_train, TensorImages):
        channels, native = full_train.channels, full_train.image_size
    else:
        channels, native = 3, cfg.image_size
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        channels=channels,
        mean=tuple(mean),
        std=tuple(std),
        native_image_size=native,
        image_size=cfg.image_size,
        train_samples=len(train),
        val_samples=len(val),
        train_samples_full=len(full_train),
        in_memory=isinstance(full_train, TensorImages),
        classes=classes,
    )
    return train, val, info
