"""vit-dt's own reader of the CIFAR-10 / CIFAR-100 "python version" pickles.

Layout (exactly what the official tarballs extract to):

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Each batch is a pickled dict (written by Python 2, so its keys load as bytes) holding
b'data': uint8 [N, 3072] (1024 red, 1024 green, 1024 blue values, row-major 32x32) and
b'labels' (CIFAR-10) or b'fine_labels' + b'coarse_labels' (CIFAR-100).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DatasetError, prepare_hint
from .tensors import TensorImages

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR100_TRAIN_FILE = "train"
CIFAR100_TEST_FILE = "test"
CIFAR100_META_FILE = "meta"
LABEL_TYPES = ("fine", "coarse")

# The official names, used when batches.meta is absent (the images and labels are all that training needs).
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_NUM_CLASSES = {"fine": 100, "coarse": 20}

IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32

# numpy 2 moved numpy.core to numpy._core; the original pickles name numpy.core, new ones numpy._core.
try:
    import numpy._core.multiarray  # noqa: F401

    _NUMPY_CORE = "numpy._core"
except ImportError:  # numpy 1.x
    _NUMPY_CORE = "numpy.core"

# The only globals a CIFAR pickle needs (core.* meaning numpy's core package under either name). Anything else
# (os.system, ...) is refused: a pickle on a shared file system must not be able to run code in a training job.
_ALLOWED_GLOBALS = {
    ("core.multiarray", "_reconstruct"),
    ("core.multiarray", "scalar"),
    ("core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        canonical = module
        for prefix in ("numpy.core.", "numpy._core."):
            if module.startswith(prefix):
                canonical = "core." + module[len(prefix):]
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if canonical.startswith("core."):
            module = _NUMPY_CORE + canonical[len("core"):]
        return super().find_class(module, name)


def _load_pickle(path: Path, name: str, root: Path) -> dict[str, Any]:
    """Load one CIFAR pickle; keys come back as str whichever encoding wrote them."""
    fix = prepare_hint(name, root)
    if not path.is_file():
        raise DatasetError(path, f"missing file (expected the {name} python-pickle layout)", fix)
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # EOFError, UnpicklingError, ValueError...: all mean "not a usable pickle"
        raise DatasetError(
            path, f"truncated or corrupt pickle ({type(exc).__name__}: {exc})", f"download it again: {fix} --force"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(path, f"expected a pickled dict, found {type(obj).__name__}", fix)
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_images(batch: dict[str, Any], path: Path, name: str, root: Path) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        found = (
            f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise DatasetError(
            path, f"'data' must be a uint8 array of shape [N, {ROW_LENGTH}], found {found}", prepare_hint(name, root)
        )
    return data


def _batch_labels(
    batch: dict[str, Any], key: str, n: int, num_classes: int, path: Path, name: str, root: Path
) -> np.ndarray:
    if key not in batch:
        raise DatasetError(
            path, f"no '{key}' entry (keys present: {sorted(batch)})", prepare_hint(name, root)
        )
    labels = np.asarray(batch[key])
    if labels.ndim != 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            path, f"'{key}' must be {n} integers (one per image), found {labels.dtype} of shape {labels.shape}",
            prepare_hint(name, root),
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            path, f"'{key}' values must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]",
            prepare_hint(name, root),
        )
    return labels.astype(np.int64)


def _to_dataset(images: list[np.ndarray], labels: list[np.ndarray], classes: list[str]) -> TensorImages:
    data = np.concatenate(images) if len(images) > 1 else images[0]
    targets = np.concatenate(labels) if len(labels) > 1 else labels[0]
    return TensorImages(
        torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, *IMAGE_SHAPE),
        torch.from_numpy(targets),
        classes,
    )


def _names(meta: dict[str, Any], key: str, expected: int, path: Path, name: str, root: Path) -> list[str]:
    raw = meta.get(key)
    if not isinstance(raw, (list, tuple)) or len(raw) != expected:
        raise DatasetError(path, f"'{key}' must list {expected} class names", prepare_hint(name, root))
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]


def load_cifar10(root: str | Path) -> tuple[TensorImages, TensorImages]:
    """(train 5 batches, test_batch) from <root>/cifar-10-batches-py."""
    root = Path(root)
    folder = root / CIFAR10_DIR
    if not folder.is_dir():
        raise DatasetError(folder, "missing directory (expected the CIFAR-10 python batches)", prepare_hint("cifar10", root))

    meta_path = folder / CIFAR10_META_FILE
    classes = list(CIFAR10_CLASSES)
    if meta_path.exists():
        classes = _names(_load_pickle(meta_path, "cifar10", root), "label_names", 10, meta_path, "cifar10", root)

    def read(files: tuple[str, ...]) -> TensorImages:
        images, labels = [], []
        for file in files:
            path = folder / file
            batch = _load_pickle(path, "cifar10", root)
            data = _batch_images(batch, path, "cifar10", root)
            images.append(data)
            labels.append(_batch_labels(batch, "labels", data.shape[0], 10, path, "cifar10", root))
        return _to_dataset(images, labels, classes)

    return read(CIFAR10_TRAIN_FILES), read((CIFAR10_TEST_FILE,))


def load_cifar100(root: str | Path, label_type: str = "fine") -> tuple[TensorImages, TensorImages]:
    """(train, test) from <root>/cifar-100-python; label_type picks the 100 fine or 20 coarse labels."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"unknown CIFAR-100 label_type {label_type!r}; valid: {', '.join(LABEL_TYPES)}")
    root = Path(root)
    folder = root / CIFAR100_DIR
    if not folder.is_dir():
        raise DatasetError(folder, "missing directory (expected the CIFAR-100 python files)", prepare_hint("cifar100", root))
    num_classes = CIFAR100_NUM_CLASSES[label_type]

    meta_path = folder / CIFAR100_META_FILE
    classes = [f"{label_type}_{i:02d}" for i in range(num_classes)]
    if meta_path.exists():
        meta = _load_pickle(meta_path, "cifar100", root)
        classes = _names(meta, f"{label_type}_label_names", num_classes, meta_path, "cifar100", root)

    def read(file: str) -> TensorImages:
        path = folder / file
        batch = _load_pickle(path, "cifar100", root)
        data = _batch_images(batch, path, "cifar100", root)
        labels = _batch_labels(batch, f"{label_type}_labels", data.shape[0], num_classes, path, "cifar100", root)
        return _to_dataset([data], [labels], classes)

    return read(CIFAR100_TRAIN_FILE), read(CIFAR100_TEST_FILE)


@dataclass(frozen=True)
class CifarStats:
    """Per-channel mean/std of the training images (the usual published values)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10_STATS = CifarStats(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
CIFAR100_STATS = CifarStats(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
