"""A run's datasets from its `dataset` config: the train and val splits and what the model and report need to know
about them (DatasetInfo)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vit_dt.config.choices import DATASETS

from .augment import DeviceAugment
from .cifar import CIFAR10_STATS, CIFAR100_STATS, load_cifar10, load_cifar100
from .digits import DEFAULT_SPLIT_SEED, DIGITS_MEAN, DIGITS_STD, load_digits
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


def _plain(cfg: Any) -> dict[str, Any]:
    """A DictConfig (resolved) or a mapping as a plain dict."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()  # type: ignore[assignment]
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    raise TypeError(f"expected a DictConfig or a mapping, got {type(cfg).__name__}")


def _require(cfg: dict[str, Any], key: str) -> Any:
    value = cfg.get(key)
    if value is None:
        raise ValueError(f"dataset {cfg.get('name')!r} needs dataset.{key} (got {value!r})")
    return value


def _load_splits(cfg: dict[str, Any], seed: int) -> tuple[Dataset, Dataset, tuple[float, ...], tuple[float, ...]]:
    name = cfg["name"]
    if name == "cifar10":
        train, val = load_cifar10(Path(_require(cfg, "root")))
        return train, val, CIFAR10_STATS.mean, CIFAR10_STATS.std
    if name == "cifar100":
        train, val = load_cifar100(Path(_require(cfg, "root")), label_type=cfg.get("label_type") or "fine")
        return train, val, CIFAR100_STATS.mean, CIFAR100_STATS.std
    if name == "digits":
        train, val = load_digits(float(cfg.get("val_fraction", 0.2)),
                                 split_seed=int(cfg.get("split_seed", DEFAULT_SPLIT_SEED)))
        return train, val, DIGITS_MEAN, DIGITS_STD
    if name == "imagenet100":
        train, val = load_imagefolder(Path(_require(cfg, "root")), int(_require(cfg, "image_size")), name=name)
        return train, val, IMAGENET_MEAN, IMAGENET_STD
    if name == "synthetic":
        train, val = load_synthetic(int(_require(cfg, "train_size")), int(_require(cfg, "val_size")),
                                    int(_require(cfg, "image_size")), int(_require(cfg, "num_classes")), seed=seed)
        return train, val, SYNTHETIC_MEAN, SYNTHETIC_STD
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")


def build_datasets(
    dataset_cfg: Any, *, scaling_cfg: Any = None, world_size: int = 1, seed: int = 0
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """(train, val, info) for the composed `dataset` config; weak scaling subsets the train split only.

    Validation always uses the whole val split, so accuracies of different world sizes compare.
    """
    cfg = _plain(dataset_cfg)
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    full_train, val, mean, std = _load_splits(cfg, seed)
    classes = list(full_train.classes)  # type: ignore[attr-defined]
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != len(classes):
        hint = " (label_type=coarse has 20)" if name == "cifar100" else ""
        raise ValueError(
            f"dataset.num_classes={expected} but {name} has {len(classes)} classes{hint}; "
            f"set dataset.num_classes={len(classes)}"
        )
    train = apply_scaling(full_train, _plain(scaling_cfg), world_size=world_size, seed=seed)
    if isinstance(full_train, TensorImages):
        channels, native = full_train.channels, full_train.image_size
    else:
        channels, native = 3, int(cfg["image_size"])
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        channels=channels,
        mean=tuple(mean),
        std=tuple(std),
        native_image_size=native,
        image_size=int(cfg.get("image_size") or native),
        train_samples=len(train),
        val_samples=len(val),
        train_samples_full=len(full_train),
        in_memory=isinstance(full_train, TensorImages),
        classes=classes,
    )
    return train, val, info
