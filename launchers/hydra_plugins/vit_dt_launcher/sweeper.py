"""`hydra/sweeper: vitdt`: Hydra's basic sweeper (comma lists, ranges, cartesian product) without its
up-front composition of every point, and with a sweep directory that belongs to one sweep.

The basic sweeper composes each point once to "validate the batch", and the launcher then composes it
again: at ~0.1-0.5 s per composition that alone would take a 48-point sweep far past its 5 s budget. The
vitdt launcher composes, validates and reports every point itself (all errors at once, nothing submitted
when any point is bad), so the sweeper's pass adds nothing but time.

Before Hydra writes anything into the sweep directory (its multirun.yaml), the directory is claimed for this
sweep (vit_dt.slurm.sweep_dir): refused if its path cannot go into a job script, suffixed if another sweep took
the default name in the same second, and locked while this sweep submits into it.
"""
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf, read_write

from hydra_plugins.vit_dt_launcher.launcher import HYDRA_DUMP  # Hydra's own file in the sweep directory

SWEEP_DIR_KEY = "hydra.sweep.dir"
REPEATS_KEY, SEED_KEY = "repeats", "trainer.seed"


def _key(override: str) -> str:
    return str(override).lstrip("+~").split("=", 1)[0]


def expand_repeats(arguments: list[str], repeats: int, seed: int) -> list[str]:
    """`repeats=N` as a sweep of N distinct seeds: trainer.seed=S,S+1,...,S+N-1 (S: the configured trainer.seed),
    so every point of the sweep is run N times and the runs differ only in their seed (the analysis pools them into
    one point: vit_dt/analysis/series.py). A sweep that also lists seeds itself is refused: two ways of saying one
    thing, and which would win is not obvious."""
    for argument in arguments:
        value = str(argument).split("=", 1)[-1]
        if _key(argument) == REPEATS_KEY and ("," in value or "(" in value):
            raise ValueError(f"{argument} is invalid: repeats takes one whole number >= 1, not a sweep")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} is invalid: it must be an integer >= 1")
    if repeats == 1:
        return list(arguments)
    swept = [a for a in arguments if _key(a) == SEED_KEY and "=" in a
             and ("," in a.split("=", 1)[1] or "(" in a.split("=", 1)[1])]
    if swept:
        raise ValueError(f"repeats={repeats} and {swept[0]} both sweep the seed; use one of them (repeats={repeats} "
                         f"runs seeds trainer.seed .. trainer.seed+{repeats - 1})")
    kept = [a for a in arguments if _key(a) != SEED_KEY]
    return kept + [f"{SEED_KEY}={','.join(str(seed + i) for i in range(repeats))}"]


class VitDtSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None

    def sweep(self, arguments: list[str]) -> Any:
        from pathlib import Path

        from vit_dt.slurm import sweep_dir

        assert self.config is not None
        # before the directory is claimed: a refused repeats= leaves nothing behind
        arguments = expand_repeats(list(arguments), self.config.get(REPEATS_KEY, 1), int(self.config.trainer.seed))
        hydra_overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra, resolve=False) or []
        named = any(str(o).lstrip("+~").split("=", 1)[0] == SWEEP_DIR_KEY for o in hydra_overrides)
        wanted = Path(str(self.config.hydra.sweep.dir)).absolute()
        created = sweep_dir.first_missing(wanted)
        claimed = sweep_dir.claim(wanted, named_by_user=named)
        with read_write(self.config.hydra.sweep):
            self.config.hydra.sweep.dir = str(claimed)
        try:
            with sweep_dir.submitting(claimed):
                return super().sweep(arguments)
        except BaseException:
            sweep_dir.remove_if_unused(claimed, ours=(HYDRA_DUMP,), created=created)
            raise
