"""resolve_shape: layouts, partition defaults, and grouping of sweep points by shape."""
from __future__ import annotations

from pathlib import Path

import pytest

from vit_dt.config.compose import compose, to_container
from vit_dt.slurm.profile import ClusterProfile, RequestError
from vit_dt.slurm.shape import JobShape, ShapeError, resolve_shape
from vit_dt.slurm.submit import SweepPoint, group_points


def cfg_for(*overrides: str) -> dict:
    return to_container(compose(list(overrides)))


@pytest.mark.parametrize(
    "overrides, nodes, per_node",
    [
        (["resources.layout=intra", "resources.gpus=4"], 1, 4),
        (["resources.layout=inter", "resources.gpus=4"], 4, 1),
        (["resources.layout=grid", "resources.nodes=2", "resources.gpus_per_node=2"], 2, 2),
        ([], 1, 1),
    ],
)
def test_layouts(overrides, nodes, per_node):
    shape = resolve_shape(cfg_for("cluster=vaughan", *overrides))
    assert (shape.nodes, shape.tasks_per_node, shape.gpus_per_node) == (nodes, per_node, per_node)
    assert shape.world_size == nodes * per_node


@pytest.mark.parametrize(
    "overrides, nodes, per_node",
    [
        # resources.gpus is the total under grid too: it fills nodes up to the partition's GPUs per node
        (["resources.gpus=1"], 1, 1),
        (["resources.gpus=4"], 1, 4),
        (["resources.gpus=8"], 1, 8),
        (["resources.gpus=16"], 2, 8),
        (["resources.partition=a40", "resources.gpus=8"], 2, 4),     # 8 GPUs on 4-GPU nodes
        (["resources.gpus=8", "resources.gpus_per_node=2"], 4, 2),  # any two of the three fix the third
        (["resources.gpus=8", "resources.nodes=4"], 4, 2),
        (["resources.gpus=8", "resources.nodes=2", "resources.gpus_per_node=4"], 2, 4),
        (["resources.nodes=3"], 3, 1),                                # no gpus: nodes x gpus_per_node as given
    ],
)
def test_grid_takes_resources_gpus_as_the_total(overrides, nodes, per_node):
    shape = resolve_shape(cfg_for("cluster=vaughan", *overrides))
    assert (shape.nodes, shape.tasks_per_node, shape.gpus_per_node) == (nodes, per_node, per_node)


def test_grid_fills_cpu_nodes_up_to_their_cpus():
    # localslurm's cpu partition: 4 CPUs per node, 1 per task -> 4 ranks per node
    shape = resolve_shape(cfg_for("cluster=localslurm", "resources.gpus=8"))
    assert (shape.nodes, shape.tasks_per_node, shape.gpus_per_node) == (2, 4, 0)
    shape = resolve_shape(cfg_for("cluster=localslurm", "resources.gpus=4", "resources.cpus_per_task=2"))
    assert (shape.nodes, shape.tasks_per_node) == (2, 2)


@pytest.mark.parametrize("overrides, message", [
    (["resources.gpus=12"], r"resources.gpus=12 does not fill whole nodes of partition 't4v2' \(8 rank\(s\) per "
                            r"node\).*multiple of 8"),
    (["resources.gpus=8", "resources.nodes=3"], r"resources.gpus=8 does not match resources.nodes=3 under "
                                                r"resources.layout=grid.*set two of the three"),
    (["resources.gpus=8", "resources.nodes=2", "resources.gpus_per_node=2"],
     r"resources.gpus=8 does not match resources.nodes=2 x resources.gpus_per_node=2"),
    (["resources.layout=intra", "resources.gpus=4", "resources.nodes=2"],
     r"resources.nodes=2 is not used by resources.layout=intra .*used by resources.layout=grid"),
    (["resources.layout=inter", "resources.gpus=4", "resources.gpus_per_node=4"],
     r"resources.gpus_per_node=4 is not used by resources.layout=inter .*used by resources.layout=grid"),
])
def test_a_resource_key_the_shape_cannot_honour_is_refused(overrides, message):
    with pytest.raises(ShapeError, match=message):
        resolve_shape(cfg_for("cluster=vaughan", *overrides))


def test_keys_that_agree_with_intra_or_inter_are_accepted():
    shape = resolve_shape(cfg_for("cluster=vaughan", "resources.layout=intra", "resources.gpus=4", "resources.nodes=1"))
    assert (shape.nodes, shape.tasks_per_node) == (1, 4)
    shape = resolve_shape(cfg_for("cluster=vaughan", "resources.layout=inter", "resources.gpus=4",
                                  "resources.gpus_per_node=1"))
    assert (shape.nodes, shape.tasks_per_node) == (4, 1)


def test_the_quickstart_study_renders_four_shapes(tmp_path, capsys):
    """docs/quickstart.md step 4 under the default layout=grid: 1, 2, 4, 8 GPUs, not four 1-GPU jobs."""
    from vit_dt.commands import sweep

    code = sweep.main(["cluster=vaughan", "dataset=synthetic", "model=vit_b_16", "resources.gpus=1,2,4,8",
                       f"hydra.sweep.dir={tmp_path / 's'}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    for per_node in (1, 2, 4, 8):
        assert f"1 node(s) x {per_node} rank(s)" in out, out


def test_partition_defaults_fill_nulls_and_explicit_values_win():
    shape = resolve_shape(cfg_for("cluster=vaughan", "resources.partition=a40"))
    assert (shape.partition, shape.cpus_per_task, shape.mem_gb) == ("a40", 8, 160.0)
    shape = resolve_shape(cfg_for("cluster=vaughan", "resources.cpus_per_task=2", "resources.mem_gb=12"))
    assert (shape.partition, shape.cpus_per_task, shape.mem_gb) == ("t4v2", 2, 12.0)


def test_cpu_partition_asks_for_no_gpus():
    shape = resolve_shape(cfg_for("cluster=localslurm", "resources.layout=intra", "resources.gpus=2"))
    assert (shape.partition, shape.tasks_per_node, shape.gpus_per_node) == ("cpu", 2, 0)
    gpu = resolve_shape(cfg_for("cluster=localslurm", "resources.partition=gpu", "resources.gpus_per_node=2"))
    assert gpu.gpus_per_node == 2


def test_bad_layout_lists_the_valid_ones():
    with pytest.raises(ShapeError, match="resources.layout='ring'.*intra, inter, grid"):
        resolve_shape(cfg_for("resources.layout=ring"))


def test_intra_without_gpus_is_refused():
    with pytest.raises(ShapeError, match="resources.gpus"):
        resolve_shape(cfg_for("resources.layout=intra"))


@pytest.mark.parametrize("override", ["resources.nodes=0", "resources.gpus_per_node=-1", "resources.time_min=0"])
def test_non_positive_counts_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ShapeError, match=key):
        resolve_shape(cfg_for(override))


@pytest.mark.parametrize("value", ["-5", "0", "nan"])   # "abc" is refused at composition (test_config_schema.py)
def test_mem_gb_must_be_a_positive_number_or_null(value):
    with pytest.raises(ShapeError, match=r"resources.mem_gb=.* is invalid: it must be a number > 0 .*or null"):
        resolve_shape(cfg_for("cluster=vaughan", f"resources.mem_gb={value}"))
    assert resolve_shape(cfg_for("cluster=vaughan", "resources.mem_gb=0.5")).mem_gb == 0.5
    assert resolve_shape(cfg_for("cluster=local")).mem_gb is None     # null: Slurm's (or no) default


def test_sweep_with_a_bad_mem_gb_renders_no_script(tmp_path, capsys):
    from vit_dt.commands import sweep

    code = sweep.main(["cluster=vaughan", "resources.mem_gb=-5", f"hydra.sweep.dir={tmp_path / 's'}", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2 and "resources.mem_gb=-5 is invalid" in captured.err
    assert "--mem=" not in captured.out and not (tmp_path / "s").exists()


def test_unknown_partition_names_the_valid_ones():
    with pytest.raises(RequestError, match="unknown partition 'v100'.*a40, t4v2"):
        resolve_shape(cfg_for("cluster=vaughan", "resources.partition=v100"))


def test_equal_shapes_hash_equal_and_group_together():
    cfgs = [cfg_for("cluster=localslurm", f"resources.nodes={n}", f"trainer.seed={s}")
            for n, s in [(1, 0), (2, 0), (1, 1), (2, 1)]]
    profile = ClusterProfile.from_config(cfgs[0]["cluster"])
    points = [SweepPoint(i, [], c, Path(f"/tmp/p{i}"), profile, resolve_shape(c, profile)) for i, c in enumerate(cfgs)]
    assert points[0].shape == points[2].shape and hash(points[0].shape) == hash(points[2].shape)
    groups = group_points(points)
    assert [[p.index for p in g.points] for g in groups] == [[0, 2], [1, 3]]
    assert [g.shape.nodes for g in groups] == [1, 2]


def test_shape_describe_and_dict():
    shape = JobShape(2, 4, 4, "a40", 30, 8, None)
    assert shape.describe() == "2x4 4gpu a40 30min"
    assert shape.to_dict()["world_size"] == 8


def test_time_min_auto_stands_for_the_partition_max_until_the_sweep_estimates_it():
    cfg = cfg_for("cluster=localslurm", "resources.time_min=auto")
    assert resolve_shape(cfg).time_min == 240          # the cpu partition's max_time_min
    with pytest.raises(ShapeError, match=r"resources.time_min must be a positive integer \(minutes\) or auto"):
        resolve_shape(cfg_for("cluster=localslurm", "resources.time_min=aut"))
