"""Per-rank batches for data-parallel training and evaluation.

Both loaders follow one plan (`shard_plan`):

* the order of an epoch is torch.randperm(n) seeded with seed + epoch (train) or 0..n-1 (eval), the same on
  every rank: exactly DistributedSampler's permutation;
* rank r takes every world_size-th index starting at r (DistributedSampler's interleaved shard);
* drop_last=True (training): the tail that does not fill world_size x batch_size is dropped, every batch is full;
* drop_last=False (evaluation): nothing is padded or repeated, so every sample is seen exactly once across the
  ranks and counts are exact. Shards then differ by at most one sample; to keep every rank at the same number
  of steps (collectives inside a forward, e.g. ZeRO-3's parameter gathers, would otherwise hang), a rank that
  comes up one step short splits its largest batch in two. Only when a rank has fewer samples than steps
  (world_size > n, or batch_size = 1 with n not divisible by world_size) does it get empty batches.
* per-rank shares (training only, `trainer.balance=speed`, vit_dt/run/balance.py): rank r takes `shares[r]` samples per
  step instead of batch_size; the shares sum to world_size x batch_size. Step s still uses exactly the samples
  order[s x B : (s + 1) x B] (B = world_size x batch_size), as with equal shares, only split into contiguous
  slices of the share sizes instead of interleaved: the same steps per epoch on every rank, every sample at most
  once per epoch, and the same global batches whatever the shares. Equal shares give the interleaved plan above.

In-memory datasets (TensorImages) go through ShardedTensorLoader: the split is copied to the device once and
batches are gathered there, no worker processes. Other datasets go through a torch DataLoader with
`ShardBatchSampler`, worker processes, pinned memory when the device is CUDA. Their per-sample augmentation
(random crops and flips drawn in the workers) is a pure function of (seed, epoch, sample index), see `SeededItems`:
a resumed epoch k draws what an uninterrupted epoch k draws, whatever num_workers, rank or world size.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vit_dt.config.batch import micro_steps_per_epoch

from .tensors import TensorImages

Batch = tuple[torch.Tensor, torch.Tensor]


def steps_per_epoch(n: int, *, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches every rank takes in one epoch (the same on all ranks): vit_dt.config.batch.micro_steps_per_epoch."""
    return micro_steps_per_epoch(n, world_size, batch_size, drop_last)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed + epoch)  # what DistributedSampler does
    return torch.randperm(n, generator=generator)


def check_shares(shares, *, world_size: int, batch_size: int, drop_last: bool) -> list[int] | None:
    """Per-rank batch sizes as a list, or None when they are all equal (the plain plan); ValueError when invalid."""
    if shares is None:
        return None
    shares = [int(b) for b in shares]
    if len(shares) != world_size or min(shares) < 1 or sum(shares) != world_size * batch_size:
        raise ValueError(f"per-rank shares {shares} are invalid: they need one entry >= 1 per rank ({world_size}) "
                         f"and must sum to world_size x batch_size = {world_size} x {batch_size}")
    if len(set(shares)) == 1:
        return None
    if not drop_last:
        raise ValueError("per-rank shares need drop_last=True (training): evaluation splits every sample evenly")
    return shares


def shard_plan(
    n: int, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool,
    shares=None,
) -> list[torch.Tensor]:
    """This rank's batches of dataset indices for one epoch (CPU int64 tensors).

    `shares`: per-rank batch sizes summing to world_size x batch_size (drop_last only); None = batch_size each.
    """
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    steps = steps_per_epoch(n, world_size=world_size, batch_size=batch_size, drop_last=drop_last)
    shares = check_shares(shares, world_size=world_size, batch_size=batch_size, drop_last=drop_last)
    if shares is not None:
        total, start = sum(shares), sum(shares[:rank])
        return [order[s * total + start: s * total + start + shares[rank]] for s in range(steps)]
    if drop_last:
        per_rank = n // world_size
        shard = order[: per_rank * world_size][rank::world_size]
        return list(shard[: steps * batch_size].split(batch_size)) if steps else []
    batches = [b for b in order[rank::world_size].split(batch_size) if len(b)]
    while len(batches) < steps:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]), default=None)
        if largest is None or len(batches[largest]) < 2:
            batches.append(order[:0])
            continue
        half = math.ceil(len(batches[largest]) / 2)
        big = batches.pop(largest)
        batches[largest:largest] = [big[:half], big[half:]]
    return batches


def _check_args(rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size): rank={rank!r}, world_size={world_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class ShardBatchSampler(Sampler[list[int]]):
    """shard_plan as a DataLoader batch_sampler (with set_epoch, like DistributedSampler)."""

    def __init__(self, n: int, *, rank: int, world_size: int, batch_size: int, seed: int, shuffle: bool,
                 drop_last: bool) -> None:
        _check_args(rank, world_size, batch_size)
        self.n, self.rank, self.world_size, self.batch_size = n, rank, world_size, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.shares: list[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_shares(self, shares) -> None:
        """Per-rank batch sizes from the next epoch on (None or equal: batch_size each); the step count is kept."""
        self.shares = check_shares(shares, world_size=self.world_size, batch_size=self.batch_size,
                                   drop_last=self.drop_last)

    def plan(self) -> list[torch.Tensor]:
        return shard_plan(self.n, rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                          seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, drop_last=self.drop_last,
                          shares=self.shares)

    def __iter__(self) -> Iterator[list[int]]:
        # Empty batches cannot go through a DataLoader; the loader tops the step count up itself.
        return iter([b.tolist() for b in self.plan() if len(b)])

    def __len__(self) -> int:
        return steps_per_epoch(self.n, world_size=self.world_size, batch_size=self.batch_size,
                               drop_last=self.drop_last)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index`'s augmentation in `epoch`: a hash, so nearby triples give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeededItems(Dataset):
    """Item (epoch, i) is dataset[i] drawn with torch's CPU RNG seeded by sample_seed(seed, epoch, i).

    Seeding workers once per run (DataLoader's default) ties the draws to how many items each worker has done
    so far: a resumed run's fresh workers would repeat epoch 0's draws, and another num_workers would deal
    different ones. Per-item seeding needs nothing saved in checkpoints and keeps persistent workers. The rank is
    not part of the seed: each index falls to one rank per epoch, so ranks draw differently anyway. Only torch's
    RNG is seeded (what torchvision's transforms draw from), and it is restored afterwards so that with
    num_workers=0 the main process's stream (dropout, DeviceAugment, the checkpointed RNG state) is unchanged.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        state = torch.get_rng_state()
        # default_generator, not torch.manual_seed, which would also reseed every CUDA device's generator.
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class _EpochTagged(Sampler[list[tuple[int, int]]]):
    """A ShardBatchSampler's batches as [(epoch, index)]. The batch sampler runs in the main process each epoch,
    so this is how set_epoch reaches persistent workers (their copy of the dataset never sees it)."""

    def __init__(self, sampler: ShardBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        return iter([[(epoch, i) for i in batch] for batch in self.sampler])

    def __len__(self) -> int:
        return len(self.sampler)


class _ShardedLoaderBase:
    """What the trainer relies on: set_epoch, len (steps, equal on all ranks), iteration, sample counts.
    The plan itself is the ShardBatchSampler's, so both loader paths shard identically."""

    def __init__(self, n: int, *, rank: int, world_size: int, batch_size: int, seed: int, shuffle: bool,
                 drop_last: bool, device: torch.device) -> None:
        self.sampler = ShardBatchSampler(n, rank=rank, world_size=world_size, batch_size=batch_size, seed=seed,
                                         shuffle=shuffle, drop_last=drop_last)
        self.n, self.rank, self.world_size, self.batch_size = n, rank, world_size, batch_size
        self.seed, self.drop_last = seed, drop_last
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_shares(self, shares) -> None:
        """Per-rank batch sizes (summing to world_size x batch_size) from the next iteration on."""
        self.sampler.set_shares(shares)

    def plan(self) -> list[torch.Tensor]:
        return self.sampler.plan()

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees in the current epoch."""
        return sum(len(b) for b in self.plan())

    @property
    def total_samples(self) -> int:
        """Samples all ranks together see per epoch (= len(dataset) when drop_last=False)."""
        if self.drop_last:
            return len(self) * self.batch_size * self.world_size
        return self.n


class ShardedTensorLoader(_ShardedLoaderBase):
    """Batches gathered from a TensorImages that was copied to `device` once."""

    def __init__(self, dataset: TensorImages, *, device: torch.device, **kwargs) -> None:
        super().__init__(len(dataset), device=device, **kwargs)
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)

    def __iter__(self) -> Iterator[Batch]:
        batches = self.plan()
        sizes = [len(b) for b in batches]
        # One host->device copy of the epoch's indices instead of one per step.
        indices = torch.cat(batches).to(self.device, non_blocking=True) if batches else None
        start = 0
        for size in sizes:
            idx = indices[start:start + size]
            start += size
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


class ShardedDataLoader(_ShardedLoaderBase):
    """A torch DataLoader over a file-backed dataset, with workers, moving each batch to `device`."""

    def __init__(self, dataset: Dataset, *, device: torch.device, num_workers: int, **kwargs) -> None:
        super().__init__(len(dataset), device=device, **kwargs)
        self.dataset = dataset
        # The draws are seeded per item (SeededItems); this private generator only keeps the DataLoader from
        # taking its workers' base seed out of the main process's RNG, whose stream the checkpoint restores.
        worker_seeds = torch.Generator().manual_seed(self.seed * 65_536 + self.rank)
        self.loader = DataLoader(
            SeededItems(dataset, self.seed),
            batch_sampler=_EpochTagged(self.sampler),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=worker_seeds,
        )
        self._empty: Batch | None = None

    def _empty_batch(self) -> Batch:
        if self._empty is None:
            image, _ = self.loader.dataset[(0, 0)]   # through SeededItems: the main process's RNG stays untouched
            self._empty = (torch.empty((0, *image.shape), dtype=image.dtype, device=self.device),
                           torch.empty((0,), dtype=torch.int64, device=self.device))
        return self._empty

    def __iter__(self) -> Iterator[Batch]:
        yielded = 0
        for images, labels in self.loader:
            yielded += 1
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        for _ in range(len(self) - yielded):
            yield self._empty_batch()


def make_loader(
    dataset: Dataset,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    train: bool,
    device: torch.device | str = "cpu",
    num_workers: int | None = 0,
    drop_last: bool | None = None,
) -> ShardedTensorLoader | ShardedDataLoader:
    """This rank's loader: shuffled and drop_last for train, in order and complete for eval (by default).

    Yields (uint8 images [B, C, H, W], int64 labels [B]) on `device`; call set_epoch(e) before each epoch.
    """
    device = torch.device(device)
    drop_last = train if drop_last is None else drop_last
    common = dict(rank=rank, world_size=world_size, batch_size=batch_size, seed=seed, shuffle=train,
                  drop_last=drop_last)
    if isinstance(dataset, TensorImages):
        loader: ShardedTensorLoader | ShardedDataLoader = ShardedTensorLoader(dataset, device=device, **common)
    else:
        loader = ShardedDataLoader(dataset, device=device, num_workers=int(num_workers or 0), **common)
    if train and len(loader) == 0:
        raise ValueError(
            f"the training split has {len(dataset)} samples: fewer than world_size x batch_size = "
            f"{world_size} x {batch_size}, so no full step fits; lower trainer.micro_batch or use more data"
        )
    return loader
