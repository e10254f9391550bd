"""typed_config: the composed config as schema instances, each option group typed by its option's own schema."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from vit_dt.config import compose, schema, to_container
from vit_dt.config.typed import ConfigTypeError, option_schemas, typed_config
from vit_dt.paths import conf_dir


@pytest.mark.parametrize("group", ["dataset", "optimizer", "scaling"])
def test_each_option_is_typed_by_the_schema_its_yaml_names(group):
    for path in sorted((conf_dir() / group).glob("*.yaml")):
        composed = compose([f"{group}={path.stem}"])
        typed = typed_config(to_container(composed))
        assert type(getattr(typed, group)) is OmegaConf.get_type(composed[group])   # what Hydra merged it onto
        assert typed == typed_config(composed)        # a DictConfig and the resolved dict give the same


def test_the_option_table_comes_from_the_yamls_and_names_only_known_schemas():
    for group in ("dataset", "optimizer", "scaling"):
        table = option_schemas(str(conf_dir()), group)
        assert set(table) == {path.stem for path in (conf_dir() / group).glob("*.yaml")}
        assert set(table.values()) <= set(schema.SCHEMAS[group].values()) | {schema.ScalingSchema}


def test_values_and_defaults_come_through():
    typed = typed_config(to_container(compose(["dataset=cifar10", "trainer.epochs=3", "debug=slow_rank"])))
    assert typed.trainer.epochs == 3 and typed.dataset.hflip is True and typed.model.fast_attention is True
    assert typed.cluster.partitions[typed.cluster.default_partition].nodes >= 1
    assert isinstance(typed.debug, schema.DebugSchema)
    cfg = to_container(compose())
    del cfg["cluster"]["signal_delay_s"]            # an optional profile key: the schema's default
    assert typed_config(cfg).cluster.signal_delay_s == 90 and typed_config(cfg).debug is None


@pytest.mark.parametrize("change,message", [
    (lambda c: c["trainer"].update(epochs="abc"), "Value 'abc' of type 'str' is not int (full_key: trainer.epochs)"),
    (lambda c: c["trainer"].update(micro_bach=1), "Key 'micro_bach' not in 'TrainerSchema' (full_key: trainer.micro_bach)"),
    (lambda c: c["trainer"].pop("epochs"), "Missing mandatory value (full_key: trainer.epochs)"),
    (lambda c: c["model"].update(fast_attention="yes"), "(full_key: model.fast_attention)"),
    (lambda c: c["dataset"].update(train_size=3), "Key 'train_size' not in 'DigitsDatasetSchema'"),
    (lambda c: c["cluster"]["partitions"]["local"].update(nodes=1.5), "full_key: cluster.partitions.local.nodes"),
    (lambda c: c["wandb"].update(tags="a"), "(full_key: wandb.tags)"),
])
def test_an_unknown_key_or_a_wrong_type_fails_naming_the_key(change, message):
    cfg = copy.deepcopy(to_container(compose()))
    change(cfg)
    with pytest.raises(ConfigTypeError) as err:
        typed_config(cfg)
    assert message in str(err.value)


def test_typing_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from vit_dt.config import compose, to_container\n"
            "from vit_dt.config.typed import typed_config\n"
            "typed_config(to_container(compose()))")
    subprocess.run([sys.executable, "-c", code], check=True)
