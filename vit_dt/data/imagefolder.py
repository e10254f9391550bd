"""ImageNet-100 (or any class-per-folder tree), decoded lazily with PIL in DataLoader workers.

Layout:

    <root>/train/<class>/*.JPEG|*.jpg|*.png
    <root>/val/<class>/...

Labels are the sorted class-folder names' positions, so train and val must hold the same class folders.
Items are (uint8 tensor [3, image_size, image_size], int): the float conversion and normalization
happen later, batched, on the training device (see augment.DeviceAugment).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DatasetError, prepare_hint

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
# Validation images are resized so the center crop keeps the usual 224/256 of the short side.
CENTER_CROP_RATIO = 224 / 256


def _listing_preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def scan_split(split_dir: Path, name: str, root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class names, [(image path, label)]) of one split directory."""
    fix = prepare_hint(name, root)
    if not split_dir.is_dir():
        raise DatasetError(split_dir, "missing directory (expected one sub-folder of images per class)", fix)
    # os.scandir's is_dir() follows symlinks, so a tree of links into a full ILSVRC copy works.
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(split_dir, "no class folders (expected <class>/<image files>)", fix)
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        class_dir = split_dir / cls
        files = sorted(
            e.path
            for e in os.scandir(class_dir)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise DatasetError(
                class_dir, f"no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)}, any case)", fix
            )
        samples.extend((path, label) for path in files)
    return classes, samples


def check_same_classes(train_classes: list[str], val_classes: list[str], val_dir: Path, name: str, root: Path) -> None:
    if train_classes == val_classes:
        return
    missing = sorted(set(train_classes) - set(val_classes))
    extra = sorted(set(val_classes) - set(train_classes))
    parts = []
    if missing:
        parts.append(f"missing in val: {_listing_preview(missing)}")
    if extra:
        parts.append(f"only in val: {_listing_preview(extra)}")
    raise DatasetError(
        val_dir,
        f"class folders differ from train/ ({len(train_classes)} vs {len(val_classes)}; {'; '.join(parts)}); "
        "labels would not mean the same class in both splits",
        prepare_hint(name, root),
    )


# torchvision is imported where it is used: it costs seconds at start-up, and CIFAR runs never need it here.
def train_transform(image_size: int):
    # The crop and flip draw from torch's global RNG, which loader.SeededItems seeds per (seed, epoch, sample):
    # keep any new random transform on torch's RNG (not `random` or numpy) so resumed runs stay exact.
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),
    ])


def val_transform(image_size: int):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(round(image_size / CENTER_CROP_RATIO), antialias=True),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
    ])


class ImageFolderImages(Dataset):
    """Lazily decoded images; item i is (uint8 [3, S, S], label)."""

    def __init__(
        self, samples: list[tuple[str, int]], classes: list[str], image_size: int, train: bool, name: str = "imagenet100"
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.image_size = image_size
        self.train = train
        self.name = name
        self.transform = train_transform(image_size) if train else val_transform(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")  # grayscale and CMYK JPEGs exist in ImageNet
        except (OSError, UnidentifiedImageError) as exc:
            root = Path(path).parents[2]  # <root>/<split>/<class>/<file>
            raise DatasetError(
                path, f"cannot decode image ({exc})",
                f"replace or delete the file, then check the tree: vit-dt data verify {self.name} --root {shlex.quote(str(root))}",
            ) from exc
        return self.transform(rgb), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return f"ImageFolderImages(n={len(self)}, classes={len(self.classes)}, image_size={self.image_size}, train={self.train})"


def load_imagefolder(
    root: str | Path, image_size: int, name: str = "imagenet100"
) -> tuple[ImageFolderImages, ImageFolderImages]:
    """(train, val) datasets from <root>/train and <root>/val."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "missing directory (expected train/ and val/ class-folder trees)", prepare_hint(name, root))
    train_classes, train_samples = scan_split(root / "train", name, root)
    val_classes, val_samples = scan_split(root / "val", name, root)
    check_same_classes(train_classes, val_classes, root / "val", name, root)
    return (
        ImageFolderImages(train_samples, train_classes, image_size, train=True, name=name),
        ImageFolderImages(val_samples, val_classes, image_size, train=False, name=name),
    )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
