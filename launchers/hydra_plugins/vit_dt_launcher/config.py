"""Registers `hydra/launcher: vitdt` and vit-dt's config schemas in Hydra's ConfigStore (Hydra imports every module
under hydra_plugins).

No `from __future__ import annotations` here: Hydra's plugin scan executes this module without registering it
in sys.modules, and dataclasses then cannot resolve string annotations (every Hydra start would fail).
"""

from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore

# conf/ names vit-dt's config schemas in its defaults lists: they must be in the ConfigStore before `vit-dt sweep`
# (a Hydra app, which imports this module when it starts) loads conf/config.yaml. Torch-free, like this module.
import vit_dt.config.schema  # noqa: F401
from vit_dt.slurm.job_entry import DEFAULT_ENTRY


@dataclass
class VitDtLauncherConf:
    _target_: str = "hydra_plugins.vit_dt_launcher.launcher.VitDtLauncher"
    # Render every sbatch script into <sweep_dir>/dry-run/ and print it; submit nothing.
    dry_run: bool = False
    # What every rank runs: module:function taking (cfg: dict, run_dir: str).
    entry: str = DEFAULT_ENTRY
    # How many times a checkpointable point may be requeued after hitting its time limit.
    max_num_timeout: int = 3
    # Verify file datasets (cifar10/100, imagenet100) on this node before queueing; false for roots that only
    # compute nodes see (`vit-dt sweep --no-verify-data`).
    verify_data: bool = True
    # `vit-dt sweep --calibrate-from SWEEP_OR_RESULT`: estimate each point from these runs (else the stated prior).
    calibrate_from: Optional[str] = None
    # `vit-dt sweep --max-gpu-hours H`: refuse the sweep when its estimate exceeds H.
    max_gpu_hours: Optional[float] = None
    # Freeze the code into <sweep_dir>/code/ and have every job import it (`vit-dt sweep --no-snapshot`: false).
    snapshot: bool = True
    # <sweep_dir>/code/ was frozen on another machine and shipped here by `vit-dt sweep --remote`: keep it.
    shipped_snapshot: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="vitdt", node=VitDtLauncherConf, provider="vit_dt")


@dataclass
class VitDtSweeperConf:
    _target_: str = "hydra_plugins.vit_dt_launcher.sweeper.VitDtSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="vitdt", node=VitDtSweeperConf, provider="vit_dt")
