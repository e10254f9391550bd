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


class VitDtSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None

    def sweep(self, arguments: list[str]) -> Any:
        from pathlib import Path

        from vit_dt.slurm import sweep_dir

        assert self.config is not None
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
