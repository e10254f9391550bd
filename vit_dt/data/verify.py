"""Is a dataset usable from here? The same check on a login node before a sweep is queued (`vit-dt sweep`,
`vit-dt train`) and in every task of a preflight job. Torch-free until a file dataset is actually read."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vit_dt.config.choices import FILE_DATASETS


def verify_dataset(dataset_cfg: Mapping[str, Any]) -> str:
    """One line saying the dataset is usable, or DatasetError/ValueError naming the bad path and the fix.

    File datasets are read the way training reads them (CIFAR: every pickle is loaded, so a truncated or
    corrupt file is caught; ImageFolder: the class tree is scanned and one image per class decoded)."""
    from vit_dt.data.prepare import verify_cifar, verify_imagefolder

    name = dataset_cfg.get("name")
    if name not in FILE_DATASETS:
        return f"{name}: generated in memory (no files to check)"
    root = dataset_cfg.get("root")
    if not root:
        raise ValueError(f"dataset {name!r} needs dataset.root (the directory holding its files), got {root!r}")
    if name in ("cifar10", "cifar100"):
        report = verify_cifar(name, root, checksums=False)
    else:
        report = verify_imagefolder(root, num_classes=int(dataset_cfg.get("num_classes") or 100), name=name)
        _decode_one_per_class(Path(root) / "train")
    return f"{name}: {report.path}: {report.train_samples} train, {report.val_samples} val images, " \
           f"{report.num_classes} classes"


def _decode_one_per_class(split: Path) -> None:
    """Decode the first image of each class folder: a cheap sample that catches a copy of broken files."""
    from PIL import Image

    from vit_dt.data.errors import DatasetError
    from vit_dt.data.imagefolder import IMAGE_EXTENSIONS

    for class_dir in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = next((p for p in sorted(class_dir.iterdir())
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), None)
        if first is None:
            continue
        try:
            with Image.open(first) as image:
                image.verify()
        except Exception as exc:  # PIL raises many types for a bad file
            raise DatasetError(first, f"cannot decode image ({exc})", "replace or delete the file") from exc


def dataset_key(dataset_cfg: Mapping[str, Any]) -> tuple:
    return (dataset_cfg.get("name"), str(dataset_cfg.get("root")), dataset_cfg.get("num_classes"),
            dataset_cfg.get("label_type"))


def dataset_problems(dataset_cfgs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Verify each distinct file dataset once; one message per bad one (empty: all usable)."""
    problems, seen = [], set()
    for cfg in dataset_cfgs:
        key = dataset_key(cfg)
        if key in seen or cfg.get("name") not in FILE_DATASETS:
            continue
        seen.add(key)
        try:
            verify_dataset(cfg)
        except (ValueError, OSError) as exc:  # DatasetError is a ValueError
            problems.append(f"dataset {cfg.get('name')} (dataset.root={cfg.get('root')}): {exc}")
    return problems
