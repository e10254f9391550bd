"""vit_dt.config.batch.steps_per_epoch: the one count of an epoch's steps that the loader, the training loop, its lr
schedule and the scaling model share, checked against the counts each of them made on its own before."""
from __future__ import annotations

import itertools
import math

from vit_dt.config.batch import micro_steps_per_epoch, optimizer_steps, steps_per_epoch


def test_the_one_count_matches_each_former_count():
    for samples, world, micro, accum, cap in itertools.product((0, 1, 7, 100, 1000, 50_000), (1, 2, 3, 8),
                                                               (1, 4, 64), (1, 2, 3), (None, 1, 5)):
        loader_len = (samples // world) // micro                     # the loader's per-rank batches (drop_last)
        assert micro_steps_per_epoch(samples, world, micro) == loader_len
        loop = loader_len // accum if not cap else min(loader_len // accum, cap)    # Trainer: len(loader) // accum
        assert optimizer_steps(loader_len, accum, max_steps=cap) == loop
        lr_schedule = samples // (micro * accum * world)             # the lr schedule: samples // global batch
        lr_schedule = min(lr_schedule, cap) if cap else lr_schedule
        assert steps_per_epoch(samples, world, micro, accum, max_steps=cap) == loop == lr_schedule


def test_without_drop_last_the_short_tail_counts():
    assert micro_steps_per_epoch(10, 3, 2, drop_last=False) == math.ceil(math.ceil(10 / 3) / 2) == 2
    assert steps_per_epoch(10, 3, 2, grad_accum=3, drop_last=False) == 1
    assert steps_per_epoch(10, 3, 2, grad_accum=3) == 0
