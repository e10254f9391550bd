"""Compose the config tree in conf/ outside of a Hydra app (tests, `vit-dt train`, the launcher)."""
from __future__ import annotations

from typing import Any, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from vit_dt.paths import conf_dir


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config for `overrides`, with Hydra's own node removed."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """A plain, fully resolved dict (what result.json and W&B record)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container
