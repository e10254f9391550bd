"""vit_dt.slurm.resume: a point is resubmitted with the shape it was first submitted with."""
from __future__ import annotations

import pytest
import yaml

from vit_dt.config import compose, to_container
from vit_dt.slurm.profile import ClusterProfile
from vit_dt.slurm.resume import _point_from_disk
from vit_dt.slurm.shape import JobShape, ShapeError, resolve_shape


def test_a_point_saved_before_gpus_meant_the_total_resumes_with_its_saved_shape(tmp_path):
    """Before resources.gpus was the total under every layout, an intra point saved nodes: 1, gpus_per_node: 1
    beside gpus: 2. Today's rules refuse that config; its saved shape (sweep.json) still says 1 x 2."""
    cfg = to_container(compose(["cluster=vaughan", "resources.layout=intra", "resources.gpus=2"]))
    cfg["resources"].update(nodes=1, gpus_per_node=1)          # the old defaults, as the old sweep saved them
    cfg["sweep_dir"] = str(tmp_path)
    with pytest.raises(ShapeError):
        resolve_shape(cfg, ClusterProfile.from_config(cfg["cluster"]))
    run_dir = tmp_path / "points" / "0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    saved = JobShape(nodes=1, tasks_per_node=2, gpus_per_node=2, partition=cfg["resources"]["partition"]
                     or cfg["cluster"]["default_partition"], time_min=30, cpus_per_task=None, mem_gb=None)
    manifest = {"sweep_dir": str(tmp_path), "points": [{"index": 0, "run_dir": str(run_dir), "overrides": [],
                                                        "shape": saved.to_dict()}]}
    point, rebased = _point_from_disk(manifest, 0)
    assert point.shape == saved and point.shape.world_size == 2 and not rebased
