"""vit_dt/config/choices.py is the one list of valid names: the config tree's options and the names its comments
offer must agree with it, so a name added or dropped there cannot leave conf/ saying something else."""
from __future__ import annotations

import re

import pytest

from vit_dt.config import choices
from vit_dt.paths import conf_dir


def options(group: str) -> set[str]:
    return {p.stem for p in (conf_dir() / group).glob("*.yaml")}


@pytest.mark.parametrize("group, names", [
    ("dataset", choices.DATASETS), ("model", choices.MODEL_NAMES), ("optimizer", choices.OPTIMIZERS),
    ("scaling", choices.SCALING_MODES),
])
def test_every_group_option_is_a_valid_name_and_back(group, names):
    assert options(group) == set(names)


def offered(yaml_file: str, key: str) -> set[str]:
    """The names a YAML comment offers for `key`: `key: value   # a | b (why) | c: more` -> {a, b, c}."""
    text = (conf_dir() / yaml_file).read_text()
    line = next(line for line in text.splitlines() if re.match(rf"\s*-?\s*{re.escape(key)}:", line))
    comment = line.split("#", 1)[1]
    return {alternative.strip().split()[0].rstrip(":;,") for alternative in comment.split("|")}


@pytest.mark.parametrize("yaml_file, key, names", [
    ("config.yaml", "precision", choices.PRECISIONS),
    ("config.yaml", "engine", choices.ENGINES),
    ("config.yaml", "optimizer", choices.OPTIMIZERS),
    ("trainer/default.yaml", "lr_schedule", choices.LR_SCHEDULES),
    ("trainer/default.yaml", "compile_mode", choices.COMPILE_MODES),
    ("trainer/default.yaml", "balance", choices.BALANCE_MODES),
    ("optimizer/adamw.yaml", "master_update", choices.MASTER_UPDATES),
    ("optimizer/adamw.yaml", "lr_scaling", choices.LR_RULES),
    ("optimizer/sgd.yaml", "lr_scaling", choices.LR_RULES),
    ("resources/default.yaml", "layout", choices.LAYOUTS),
    ("wandb/default.yaml", "mode", choices.WANDB_MODES),
])
def test_the_names_a_yaml_comment_offers_are_the_valid_names(yaml_file, key, names):
    assert offered(yaml_file, key) == set(names)


def test_derived_lists_are_built_from_their_parts():
    assert set(choices.FILE_DATASETS) < set(choices.DATASETS)
    assert set(choices.MPI_LAUNCHERS) < set(choices.SLURM_LAUNCHERS) < set(choices.LAUNCHERS)
