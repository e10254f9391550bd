"""Compose the config tree in conf/ outside of a Hydra app (tests, `vit-dt train`, the launcher)."""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from vit_dt.config import schema  # registers the schemas the YAMLs name in their defaults lists
from vit_dt.paths import conf_dir


def compose(overrides: Sequence[str] = (), config_name: str = "config", with_hydra: bool = False) -> DictConfig:
    """The composed config for `overrides`, with Hydra's own node removed unless `with_hydra` (`--cfg all`)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    check_declared(cfg)
    return cfg


def check_declared(cfg: DictConfig) -> None:
    """Refuse keys that `+key=...`/`++key=...` added to a typed node (see schema.undeclared_keys)."""
    unknown = schema.undeclared_keys(cfg)
    if unknown:
        raise ConfigCompositionException("; ".join(
            f"unknown key {key}{nearest(key.rpartition('.')[2], valid, key.rpartition('.')[0])}: its schema "
            f"(vit_dt/config/schema.py) declares {', '.join(valid)}"
            for key, valid in unknown.items()))


def nearest(name: str, valid: Sequence[str], parent: str = "") -> str:
    """` (did you mean trainer.epochs?)` for the declared key closest to a misspelt `name`, else ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""


# OmegaConf refusing an undeclared key: "Key 'micro_bach' not in 'TrainerSchema'", "full_key: trainer.micro_bach"
_NOT_IN_SCHEMA = re.compile(r"Key '([^']+)' not in '(\w+)'\s+full_key: ([\w.]+)")


def error_message(exc: BaseException) -> str:
    """A composition error with its causes: Hydra's "Error merging override trainer.epochs=abc" alone does not say
    why; OmegaConf's cause does ("could not be converted to Integer", full_key: trainer.epochs)."""
    from vit_dt.config.groups import unknown_option_message

    one_line = unknown_option_message(str(exc))   # instead of Hydra's 12 lines of search path
    if one_line:
        return one_line
    parts = [str(exc).strip()]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        text = str(cause).strip()
        if text and text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    message = "\n".join(parts)
    found = _NOT_IN_SCHEMA.search(message)
    schema_class = getattr(schema, found.group(2), None) if found else None
    if found and dataclasses.is_dataclass(schema_class):
        parent = found.group(3).rpartition(".")[0]
        hint = nearest(found.group(1), [f.name for f in dataclasses.fields(schema_class)], parent).strip(" ()")
        if hint and hint not in message:      # a sweep's error holds its points' messages, already hinted
            message += f"\n{hint}"
    return message


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """A plain, fully resolved dict (what result.json and W&B record)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return container
