"""The composed config as typed objects: `typed_config(cfg)` -> RootSchema, built once where a run starts (each rank,
and `validate` for each sweep point), so that every component reads attributes of its own schema and never a raw
dict with a `.get(key, default)` that repeats the YAML.

Why not `OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootSchema), cfg))`: it costs ~30 ms per config
(the cluster profile alone ~15 ms), which `validate` would pay at every point of a sweep (+1.4 s for 48 points,
doubling a dry run). The input has already been through that merge at composition (every value converted to its
field's type), so here each value is only checked against its field's type and copied, in well under 1 ms.
Conversions are therefore strict: an `int` field takes an int (not a bool, not "12"), a `float` field an int or a
float, a `str` field a str; an absent key takes its schema default, or fails when it has none (MISSING).

dataset, optimizer and scaling are typed by the option's own schema (the one its YAML names first in its defaults
list, conf/<group>/*.yaml), found by dataset.name, optimizer.name and scaling.mode. An unknown name gets the keys
all options share (RootSchema's field type) and fails on any other key: vit_dt.config.validate checks names first.

Torch-free, and nothing of vit-dt but the schemas and the conf/ location.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf

from vit_dt.config.schema import SCHEMAS, RootSchema
from vit_dt.paths import conf_dir

# the key that names the option of each group whose options have their own schemas
OPTION_KEY = {"dataset": "name", "optimizer": "name", "scaling": "mode"}


class ConfigTypeError(ValueError):
    """A key a schema does not declare, a value of the wrong type, or a missing mandatory value; names the key."""


def typed_config(cfg: Mapping[str, Any] | DictConfig) -> RootSchema:
    """`cfg` (a composed DictConfig, or the resolved plain dict a job receives) as a RootSchema of schema instances,
    dataset/optimizer/scaling each an instance of its option's own schema. Raises ConfigTypeError naming the key."""
    if isinstance(cfg, RootSchema):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}   # Hydra's own node, when a caller kept it
    root_types = _field_types(RootSchema)
    for group in OPTION_KEY:
        root_types[group] = _group_schema(group, cfg.get(group))
    return _dataclass(RootSchema, cfg, "", root_types)


def typed_group(group: str, node: Mapping[str, Any]) -> Any:
    """One group's node (`cfg[group]`, a plain mapping) as its schema instance, as typed_config types it."""
    return _dataclass(_group_schema(group, node), node, group)


def _group_schema(group: str, node: Any) -> type:
    base = _hints(RootSchema)[group]
    if group in OPTION_KEY and isinstance(node, Mapping):
        return option_schemas(str(conf_dir()), group).get(node.get(OPTION_KEY[group]), base)
    return base


@functools.lru_cache(maxsize=None)
def option_schemas(conf: str, group: str) -> dict[Any, type]:
    """{dataset.name (optimizer.name, scaling.mode) -> its schema class}, read from conf/<group>/*.yaml: each option
    names its schema first in its defaults list (a name of SCHEMAS[group]); an option naming none (scaling: none)
    has only the keys the group's RootSchema type declares."""
    table, found = SCHEMAS[group], {}
    for path in sorted(Path(conf, group).glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        named = [entry for entry in data.get("defaults") or [] if isinstance(entry, str) and entry in table]
        if OPTION_KEY[group] in data:
            found[data[OPTION_KEY[group]]] = table[named[0]] if named else _field_types(RootSchema)[group]
    return found


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_types(cls: type) -> dict[str, Any]:
    return dict(_hints(cls))


def _dataclass(cls: type, value: Any, key: str, types: dict[str, Any] | None = None) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigTypeError(f"Value {value!r} of type '{type(value).__name__}' is not a mapping for "
                              f"'{cls.__name__}' (full_key: {key or '<root>'})")
    types = types or _hints(cls)
    prefix = f"{key}." if key else ""
    unknown = [k for k in value if k not in types]
    if unknown:
        raise ConfigTypeError(f"Key '{unknown[0]}' not in '{cls.__name__}' (full_key: {prefix}{unknown[0]})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value and value[f.name] != "???":
            kwargs[f.name] = _convert(types[f.name], value[f.name], prefix + f.name)
        elif f.default is MISSING or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise ConfigTypeError(f"Missing mandatory value (full_key: {prefix}{f.name})")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:                       # Optional[T]
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, key)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise _wrong(value, "list", key)
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, Mapping):
            raise _wrong(value, "dict", key)
        return {k: _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # a type the schemas do not use: a schema change needs a case here
        raise TypeError(f"no conversion to {tp!r} (full_key: {key})")
    raise _wrong(value, tp.__name__, key)


def _wrong(value: Any, expected: str, key: str) -> ConfigTypeError:
    return ConfigTypeError(f"Value {value!r} of type '{type(value).__name__}' is not {expected} (full_key: {key})")
