"""`hydra/sweeper: vitdt`: Hydra's basic sweeper (comma lists, ranges, cartesian product) without its
up-front composition of every point.

The basic sweeper composes each point once to "validate the batch", and the launcher then composes it
again: at ~0.1-0.5 s per composition that alone would take a 48-point sweep far past its 5 s budget. The
vitdt launcher composes, validates and reports every point itself (all errors at once, nothing submitted
when any point is bad), so the sweeper's pass adds nothing but time.
"""
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class VitDtSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None
