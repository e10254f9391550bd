"""vit_dt.data on real on-disk formats: CIFAR python pickles, an ImageFolder tree of PNG/JPEG, sklearn digits."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.fixtures.datasets import NotInMemory, dump_like_original, write_cifar10, write_cifar100, write_imagefolder
from tests.helpers import typed
from vit_dt.commands import data as data_cmd
from vit_dt.data.augment import DeviceAugment
from vit_dt.data.build import build_datasets
from vit_dt.data.cifar import load_cifar10, load_cifar100
from vit_dt.data.digits import load_digits
from vit_dt.data.errors import DatasetError
from vit_dt.data.imagefolder import load_imagefolder
from vit_dt.data.loader import make_loader, shard_plan
from vit_dt.data.prepare import link_imagenet100, prepare_cifar, verify_cifar, verify_imagefolder
from vit_dt.data.subsets import apply_scaling, random_subset_indices, weak_subset_size
from vit_dt.data.tensors import TensorImages

# --------------------------------------------------------------------------------------------------------------
# Writers of the real layouts


# --------------------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_reads_the_pickle_layout(tmp_path):
    written = write_cifar10(tmp_path)
    train, test = load_cifar10(tmp_path)
    assert isinstance(train, TensorImages)
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (5, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == written["train_labels"]
    assert test.labels.tolist() == written["test_labels"]
    assert np.array_equal(train.images.reshape(30, -1).numpy(), np.concatenate(written["train_data"]))
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    img = test.images[0]
    assert img[1, 5, 5] == 20 and img[2, 31, 31] == 30 and img[0, 0, 1] == 77 and img[0, 1, 0] == 10


def test_cifar100_fine_and_coarse_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train, test = load_cifar100(tmp_path, "fine")
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.labels.tolist() == written["train"][0] and len(train.classes) == 100
    ctrain, ctest = load_cifar100(tmp_path, "coarse")
    assert ctrain.labels.tolist() == written["train"][1] and ctest.labels.tolist() == written["test"][1]
    assert len(ctrain.classes) == 20 and ctrain.classes[3] == "coarse3"
    with pytest.raises(ValueError, match="fine, coarse"):
        load_cifar100(tmp_path, "medium")


def test_cifar_missing_batch_names_file_and_fix(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    assert "data_batch_3" in msg and "missing file" in msg and f"vit-dt data prepare cifar10 --root {tmp_path}" in msg


def test_cifar_missing_root_folder(tmp_path):
    with pytest.raises(DatasetError, match="cifar-100-python.*\n.*vit-dt data prepare cifar100"):
        load_cifar100(tmp_path)


def test_cifar_truncated_pickle(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="test_batch: truncated or corrupt pickle"):
        load_cifar10(tmp_path)


def test_cifar_wrong_shape(tmp_path):
    write_cifar100(tmp_path)
    dump_like_original({b"fine_labels": [1, 2], b"coarse_labels": [0, 0],
                         b"data": np.zeros((2, 3000), np.uint8)}, tmp_path / "cifar-100-python" / "test")
    with pytest.raises(DatasetError, match=r"test: 'data' must be a uint8 array of shape \[N, 3072\]"):
        load_cifar100(tmp_path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": []}, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load global"):
        load_cifar10(tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_items_and_classes(tmp_path):
    write_imagefolder(tmp_path)
    train, val = load_imagefolder(tmp_path, image_size=24)
    assert train.classes == ["cat", "dog", "eel"] and len(train) == 9 and len(val) == 6
    for ds in (train, val):
        for i in range(len(ds)):
            image, label = ds[i]
            assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
            assert isinstance(label, int) and 0 <= label < 3
    assert sorted(val.labels) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_class_mismatch_and_empty(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "val" / "eel").rename(tmp_path / "val" / "emu")
    with pytest.raises(DatasetError, match="missing in val: eel; only in val: emu"):
        load_imagefolder(tmp_path, image_size=16)

    empty = tmp_path / "other"
    write_imagefolder(empty)
    for f in (empty / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"train/dog: no images"):
        load_imagefolder(empty, image_size=16)
    with pytest.raises(DatasetError, match="missing directory.*\n.*vit-dt data prepare imagenet100"):
        load_imagefolder(tmp_path / "nowhere", image_size=16)


def test_imagefolder_corrupt_image_names_file(tmp_path):
    write_imagefolder(tmp_path, classes=("a",), per_class=1, val_per_class=1)
    bad = tmp_path / "train" / "a" / "a_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    train, _ = load_imagefolder(tmp_path, image_size=16)
    with pytest.raises(DatasetError, match="a_0.JPEG: cannot decode image"):
        train[0]


def test_imagefolder_through_build_and_dataloader(tmp_path):
    write_imagefolder(tmp_path)
    cfg = {"name": "imagenet100", "root": str(tmp_path), "image_size": 24, "num_classes": 3}
    train, val, info = build_datasets(typed("dataset", **cfg), scaling_cfg=typed("scaling", mode="strong"),
                                      world_size=2, seed=0)
    assert not info.in_memory and info.channels == 3 and info.native_image_size == 24 and info.num_classes == 3
    seen = []
    for rank in range(2):
        loader = make_loader(val, rank=rank, world_size=2, batch_size=2, seed=0, train=False, device="cpu",
                             num_workers=1)
        assert loader.loader.persistent_workers and len(loader) == 2
        loader.set_epoch(0)
        batches = list(loader)
        assert len(batches) == 2
        for images, labels in batches:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 24, 24) and labels.dtype == torch.int64
            seen.extend(labels.tolist())
    assert sorted(seen) == sorted(val.labels)  # each val image exactly once over the two ranks
    with pytest.raises(ValueError, match="dataset.num_classes=100 but imagenet100 has 3 classes"):
        build_datasets(typed("dataset", **{**cfg, "num_classes": 100}), world_size=1, seed=0)


# --------------------------------------------------------------------------------------------------------------
# digits, synthetic, build_datasets


def test_digits_split_is_stratified_and_reproducible():
    train, val = load_digits(val_fraction=0.2)
    assert len(train) + len(val) == 1797 and train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    all_counts = torch.bincount(torch.cat([train.labels, val.labels]), minlength=10)
    val_counts = torch.bincount(val.labels, minlength=10)
    assert torch.all((val_counts.float() - 0.2 * all_counts.float()).abs() <= 1.0)
    again_train, again_val = load_digits(val_fraction=0.2)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.labels, train.labels)
    _, other_val = load_digits(val_fraction=0.2, split_seed=1)
    assert not torch.equal(other_val.images, val.images)
    # train and val are disjoint: no val image appears in train
    train_rows = {bytes(r) for r in train.images.reshape(len(train), -1).numpy()}
    val_rows = [bytes(r) for r in val.images.reshape(len(val), -1).numpy()]
    assert sum(r in train_rows for r in val_rows) < 0.05 * len(val_rows)  # digits has a few exact duplicates


def test_build_datasets_synthetic_and_errors():
    cfg = typed("dataset", name="synthetic", root=None, image_size=12, num_classes=5, train_size=40, val_size=8)
    train, val, info = build_datasets(cfg, scaling_cfg=None, world_size=1, seed=3)
    assert train.images.shape == (40, 3, 12, 12) and len(val) == 8 and info.num_classes == 5
    assert int(train.labels.max()) < 5
    again, _, _ = build_datasets(cfg, world_size=1, seed=3)
    assert torch.equal(again.images, train.images)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, digits, imagenet100"):
        build_datasets(typed("dataset", name="mnist"), world_size=1, seed=0)
    with pytest.raises(ValueError, match="unknown scaling.mode 'huge'; valid: none, strong, weak"):
        build_datasets(cfg, scaling_cfg=typed("scaling", mode="huge"), world_size=1, seed=0)


def test_build_datasets_cifar100_coarse(tmp_path):
    write_cifar100(tmp_path)
    cfg = typed("dataset", name="cifar100", root=str(tmp_path), image_size=32, num_classes=20, label_type="coarse")
    scaling = typed("scaling", mode="weak", fraction_per_gpu=0.25)
    train, val, info = build_datasets(cfg, scaling_cfg=scaling, world_size=2, seed=0)
    assert isinstance(train, TensorImages) and len(train) == 6 and info.train_samples_full == 12
    assert info.num_classes == 20 and info.val_samples == 6 and info.mean[0] == pytest.approx(0.5071)


# --------------------------------------------------------------------------------------------------------------
# Weak-scaling subsets


def _indexed(n: int, channels: int = 1) -> TensorImages:
    """A dataset whose label is the sample's index, so batches show exactly which samples they hold."""
    return TensorImages(torch.zeros(n, channels, 2, 2, dtype=torch.uint8), torch.arange(n), [str(i) for i in range(n)])


WEAK_10 = typed("scaling", mode="weak", fraction_per_gpu=0.1)


def test_weak_subset_is_random_seeded_and_proportional():
    n = 1000
    ds = _indexed(n)
    subsets = {ws: apply_scaling(ds, WEAK_10, world_size=ws, seed=7).labels
               for ws in (1, 2, 4)}
    assert {ws: len(s) for ws, s in subsets.items()} == {1: 100, 2: 200, 4: 400}
    assert not torch.equal(subsets[1], torch.arange(100))  # not the first 10%
    assert int(subsets[1].max()) > 500  # spread over the whole range
    assert set(subsets[1].tolist()) <= set(subsets[2].tolist()) <= set(subsets[4].tolist())
    again = apply_scaling(ds, WEAK_10, world_size=2, seed=7).labels
    assert torch.equal(again, subsets[2])  # every rank builds the same subset
    other = apply_scaling(ds, WEAK_10, world_size=2, seed=8).labels
    assert not torch.equal(other, subsets[2])
    assert len(apply_scaling(ds, typed("scaling", mode="strong"), world_size=4, seed=0)) == n
    assert weak_subset_size(50_000, 0.1, 3) == 15_000
    assert weak_subset_size(10, 0.5, 4) == 10  # capped at the dataset
    assert weak_subset_size(10, 0.01, 4) == 4  # at least one sample per rank
    assert len(set(random_subset_indices(n, n, seed=0).tolist())) == n


# --------------------------------------------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_train_loader_gives_disjoint_equal_shards(world_size):
    n, batch = 103, 8
    ds = _indexed(n)
    shards = []
    for rank in range(world_size):
        loader = make_loader(ds, rank=rank, world_size=world_size, batch_size=batch, seed=5, train=True,
                             device="cpu")
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == len(loader) == (n // world_size) // batch
        assert all(len(labels) == batch for _, labels in batches)
        shard = torch.cat([labels for _, labels in batches])
        # The same indices DistributedSampler(drop_last=True) + a drop_last batch sampler would give.
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=5,
                                     drop_last=True)
        sampler.set_epoch(2)
        assert shard.tolist() == list(sampler)[: len(shard)]
        shards.append(shard)
    union = torch.cat(shards)
    assert len(set(union.tolist())) == len(union) == world_size * len(loader) * batch  # disjoint


def test_sharded_loader_epochs_reshuffle_identically_on_all_ranks():
    ds = _indexed(40)
    loader = make_loader(ds, rank=0, world_size=2, batch_size=4, seed=0, train=True, device="cpu")
    loader.set_epoch(0)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert torch.equal(first, again) and not torch.equal(first, second)


@pytest.mark.parametrize("n,world_size,batch", [(9, 2, 4), (10, 3, 2), (64, 4, 16), (7, 3, 1), (2, 3, 4)])
def test_eval_loader_sees_every_sample_once_with_equal_steps(n, world_size, batch):
    ds = _indexed(n)
    loaders = [make_loader(ds, rank=r, world_size=world_size, batch_size=batch, seed=0, train=False,
                           device="cpu") for r in range(world_size)]
    per_rank = [list(loader) for loader in loaders]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(loaders[0])
    seen = [int(y) for batches in per_rank for _, labels in batches for y in labels]
    assert sorted(seen) == list(range(n))
    assert sum(loader.num_samples for loader in loaders) == loaders[0].total_samples == n
    assert all(len(labels) <= batch for batches in per_rank for _, labels in batches)
    if n >= world_size * len(loaders[0]):  # empty batches only when a rank has fewer samples than steps
        assert all(len(labels) > 0 for batches in per_rank for _, labels in batches)


def test_dataloader_path_matches_tensor_path():
    ds = _indexed(50, channels=3)
    for train in (True, False):
        a = make_loader(ds, rank=1, world_size=2, batch_size=6, seed=1, train=train, device="cpu")
        b = make_loader(NotInMemory(ds), rank=1, world_size=2, batch_size=6, seed=1, train=train, device="cpu",
                        num_workers=0)
        a.set_epoch(3)
        b.set_epoch(3)
        ya, yb = [y.tolist() for _, y in a], [y.tolist() for _, y in b]
        assert ya == yb and len(ya) == len(a) == len(b)
    (xb, yb_), *_ = list(b)
    assert xb.dtype == torch.uint8 and xb.shape[1:] == (3, 2, 2) and yb_.dtype == torch.int64


def test_train_loader_rejects_too_little_data():
    with pytest.raises(ValueError, match="fewer than world_size x batch_size = 4 x 8"):
        make_loader(_indexed(20), rank=0, world_size=4, batch_size=8, seed=0, train=True, device="cpu")
    assert shard_plan(20, rank=0, world_size=4, batch_size=8, seed=0, epoch=0, shuffle=True, drop_last=True) == []


# --------------------------------------------------------------------------------------------------------------
# DeviceAugment


def _augment_checks(device: str) -> None:
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8, device=device)
    images[:, :, :, :4] = 255  # left half white: a flip is visible
    aug = DeviceAugment(16, mean=(0.5,), std=(0.25,), train=False)
    out = aug(images)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32 and out.device == images.device
    assert torch.allclose(out[:, :, :, 0], torch.tensor(2.0, device=device))   # (1 - 0.5) / 0.25
    assert torch.allclose(out[:, :, :, -1], torch.tensor(-2.0, device=device))
    assert torch.equal(out[:, 0], out[:, 2])  # grayscale repeated to 3 channels
    train_aug = DeviceAugment(16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=True)
    gen = torch.Generator(device=device).manual_seed(0)
    flipped = train_aug(images.expand(-1, 3, -1, -1).contiguous().repeat(10, 1, 1, 1), generator=gen)
    left = flipped[:, 0, 0, 0]
    assert set(left.tolist()) == {2.0, -2.0}  # some images flipped, some not
    assert float(flipped.min()) >= -2.0 and float(flipped.max()) <= 2.0
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, device=device)
    same_size = DeviceAugment(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False)(rgb)
    assert torch.allclose(same_size, rgb.float() / 255)


def test_device_augment_cpu():
    _augment_checks("cpu")
    with pytest.raises(ValueError, match="uint8"):
        DeviceAugment(8, (0.5,), (0.2,), train=False)(torch.zeros(1, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (checks the GPU-resident pipeline)")
def test_device_augment_and_loader_cuda():
    _augment_checks("cuda")
    loader = make_loader(_indexed(64, channels=3), rank=0, world_size=2, batch_size=8, seed=0, train=True,
                         device="cuda")
    assert loader.images.is_cuda
    images, labels = next(iter(loader))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.uint8


# --------------------------------------------------------------------------------------------------------------
# prepare / verify


def _cifar10_tarball(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "src"
    write_cifar10(src)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tar_path.as_uri(), hashlib.md5(tar_path.read_bytes()).hexdigest()


def test_prepare_cifar10_from_file_url(tmp_path):
    url, md5 = _cifar10_tarball(tmp_path)
    root = tmp_path / "data"
    logs: list[str] = []
    target = prepare_cifar("cifar10", root, url=url, md5=md5, log=logs.append)
    assert target == root / "cifar-10-batches-py"
    train, test = load_cifar10(root)
    assert len(train) == 30 and len(test) == 5
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temporary leftovers
    # A second run finds it and downloads nothing (the URL would fail).
    prepare_cifar("cifar10", root, url="file:///nonexistent.tar.gz", md5=md5, log=logs.append)
    assert "already prepared" in logs[-1]
    report = verify_cifar("cifar10", root)
    assert report.train_samples == 30 and any("not the official sizes" in n for n in report.notes)
    assert any("differ from the official release" in n for n in report.notes)


def test_prepare_md5_mismatch_leaves_nothing(tmp_path, capsys):
    url, md5 = _cifar10_tarball(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="does not match the published 0{32}"):
        prepare_cifar("cifar10", root, url=url, md5="0" * 32, log=lambda _: None)
    assert list(root.iterdir()) == []
    # The CLI checks the official md5, which this home-made tarball cannot match.
    assert data_cmd.main(["prepare", "cifar10", "--root", str(root), "--url", url]) == 1
    assert "does not match the published c58f30108f718f92721af3b95e74349a" in capsys.readouterr().err
    assert list(root.iterdir()) == []


def test_cli_verify_and_imagenet100(tmp_path, capsys):
    write_cifar100(tmp_path / "c")
    assert data_cmd.main(["verify", "cifar100", "--root", str(tmp_path / "c")]) == 0
    assert "cifar100: OK" in capsys.readouterr().out
    (tmp_path / "c" / "cifar-100-python" / "train").write_bytes(b"\x80\x02}q")
    assert data_cmd.main(["verify", "cifar100", "--root", str(tmp_path / "c")]) == 1
    assert "train: truncated or corrupt pickle" in capsys.readouterr().err

    root = tmp_path / "in100"
    assert data_cmd.main(["prepare", "imagenet100", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert "image-net.org" in captured.out and "not prepared yet" in captured.err
    assert data_cmd.main(["verify", "bogus"]) == 2

    # Linking from an ILSVRC-style tree, then verifying (3 classes stand in for the 100).
    src = tmp_path / "ilsvrc"
    write_imagefolder(src, classes=("n01", "n02", "n03", "n99"))
    link_imagenet100(src, root, classes=("n01", "n02", "n03"), log=lambda _: None)
    assert (root / "train" / "n01").is_symlink() and not (root / "train" / "n99").exists()
    report = verify_imagefolder(root, num_classes=3, check_images=True)
    assert (report.train_samples, report.val_samples, report.num_classes) == (9, 6, 3)
    with pytest.raises(DatasetError, match="3 class folders, expected 100"):
        verify_imagefolder(root)


# --------------------------------------------------------------------------------------------------------------
# Worker augmentation is a function of (seed, epoch, sample): exact on resume, whatever the worker count


def _per_sample_draws(loader, epoch: int) -> dict[int, torch.Tensor]:
    """{dataset index: augmented image} of one epoch, matched through the loader's own plan."""
    loader.set_epoch(epoch)
    images = torch.cat([x for x, _ in loader])
    return dict(zip(torch.cat(loader.plan()).tolist(), images))


def _folder_train_loader(root: Path, num_workers: int):
    train, _ = load_imagefolder(root, image_size=8)   # 9 images of 20-28 px: RandomResizedCrop + flip really vary
    return make_loader(train, rank=0, world_size=1, batch_size=3, seed=7, train=True, device="cpu",
                       num_workers=num_workers)


def test_folder_augmentation_of_a_resumed_epoch_equals_the_uninterrupted_one(tmp_path):
    write_imagefolder(tmp_path)
    uninterrupted = _folder_train_loader(tmp_path, num_workers=2)
    assert uninterrupted.loader.persistent_workers
    for epoch in range(2):
        _per_sample_draws(uninterrupted, epoch)   # the persistent workers live through epochs 0 and 1
    resumed = _folder_train_loader(tmp_path, num_workers=2)   # fresh workers, straight into epoch 2
    expected, got = _per_sample_draws(uninterrupted, 2), _per_sample_draws(resumed, 2)
    assert expected.keys() == got.keys() == set(range(9))
    assert all(torch.equal(expected[i], got[i]) for i in expected)


def test_folder_augmentation_differs_between_epochs(tmp_path):
    write_imagefolder(tmp_path)
    loader = _folder_train_loader(tmp_path, num_workers=2)
    epoch0, epoch1 = _per_sample_draws(loader, 0), _per_sample_draws(loader, 1)
    assert sum(not torch.equal(epoch0[i], epoch1[i]) for i in range(9)) >= 5   # a new crop for (nearly) every image


def test_folder_augmentation_does_not_depend_on_the_worker_count(tmp_path):
    write_imagefolder(tmp_path)
    two, none = _folder_train_loader(tmp_path, num_workers=2), _folder_train_loader(tmp_path, num_workers=0)
    with_workers = _per_sample_draws(two, 1)
    state = torch.get_rng_state()
    in_process = _per_sample_draws(none, 1)
    assert all(torch.equal(with_workers[i], in_process[i]) for i in range(9))
    assert torch.equal(torch.get_rng_state(), state)   # in-process augmentation leaves the main process's RNG alone
