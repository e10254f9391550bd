"""The resource shape of one run: what Slurm is asked for, and whether its partition can hold it. Points of a sweep
with equal shapes share a job array.

`resources.gpus` is the total number of ranks (one per GPU) under every layout; `resources.layout` turns it into
nodes x ranks-per-node:
    intra: 1 node x `gpus`      inter: `gpus` nodes x 1
    grid:  `nodes` x `gpus_per_node`; with `gpus`, any two of the three fix the third, and `gpus` alone fills each
           node up to what the partition holds (8 GPUs on 4-GPU nodes: 2 x 4); with none of them, 1 x 1.
A key the layout does not use is refused when it disagrees with the shape (never silently ignored).
The partition (default: the profile's) supplies cpus_per_task and mem_gb when the request leaves them null,
and decides whether ranks get GPUs (a CPU partition runs the same ranks on CPUs with gloo).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from vit_dt.config.choices import AUTO_TIME, LAYOUTS
from vit_dt.slurm.profile import ClusterProfile, Partition, ProfileError, RequestError


class ShapeError(ValueError):
    """`resources` cannot be turned into a job shape (bad layout, missing or non-positive count or memory)."""


@dataclass(frozen=True)
class JobShape:
    nodes: int
    tasks_per_node: int         # ranks per node: one per GPU (CPU ranks on a CPU partition)
    gpus_per_node: int          # GPUs requested per node: tasks_per_node on a GPU partition, else 0
    partition: str
    time_min: int
    cpus_per_task: int | None
    mem_gb: float | None

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        """Short label, e.g. `2x4 gpu(a40) 30min`."""
        kind = f"{self.gpus_per_node}gpu" if self.gpus_per_node else "cpu"
        return f"{self.nodes}x{self.tasks_per_node} {kind} {self.partition} {self.time_min}min"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"world_size": self.world_size}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "JobShape":
        """The shape `to_dict` saved (in sweep.json), its derived world_size left out."""
        return cls(**{f.name: saved[f.name] for f in fields(cls)})


def resolve_shape(cfg: Mapping[str, Any], profile: ClusterProfile | None = None) -> JobShape:
    """The JobShape for a composed config (`resources` + `cluster`). `profile` saves re-parsing `cluster`."""
    res = cfg["resources"]
    profile = profile or ClusterProfile.from_config(cfg["cluster"])
    layout = res["layout"]
    if layout not in LAYOUTS:
        raise ShapeError(f"resources.layout={layout!r} is not valid; choose one of: {', '.join(LAYOUTS)}")
    partition = profile.partition(res["partition"])
    cpus = res["cpus_per_task"]
    cpus_per_task = partition.cpus_per_task if cpus is None else _positive(cpus, "resources.cpus_per_task")
    nodes, per_node = _nodes_and_ranks(res, layout, partition, cpus_per_task)
    mem = res["mem_gb"]
    return JobShape(
        nodes=nodes,
        tasks_per_node=per_node,
        gpus_per_node=per_node if partition.has_gpus else 0,
        partition=partition.name,
        time_min=_time_min(res["time_min"], partition),
        cpus_per_task=cpus_per_task,
        mem_gb=partition.mem_gb if mem is None else _mem_gb(mem, "resources.mem_gb"),   # the profile checked its own
    )


def _nodes_and_ranks(res: Mapping[str, Any], layout: str, partition: Partition,
                     cpus_per_task: int | None) -> tuple[int, int]:
    """(nodes, ranks per node) of `resources` under `layout`; every key given must agree with the result."""
    gpus, nodes, per_node = (None if res[key] is None else _positive(res[key], f"resources.{key}")
                             for key in ("gpus", "nodes", "gpus_per_node"))
    if layout != "grid":
        if gpus is None:
            raise ShapeError(f"resources.layout={layout} needs resources.gpus (the total number of ranks), got null")
        shape = (1, gpus) if layout == "intra" else (gpus, 1)
        for key, given, wanted in (("nodes", nodes, shape[0]), ("gpus_per_node", per_node, shape[1])):
            if given is not None and given != wanted:
                what = "1 node x resources.gpus" if layout == "intra" else "resources.gpus nodes x 1"
                raise ShapeError(f"resources.{key}={given} is not used by resources.layout={layout} ({what} = "
                                 f"{shape[0]} x {shape[1]}); it is used by resources.layout=grid: drop it, or set "
                                 f"resources.layout=grid")
        return shape
    if gpus is None:
        return nodes or 1, per_node or 1
    if per_node is None and nodes is None:
        capacity = _ranks_per_node(partition, cpus_per_task)
        per_node = gpus if capacity is None else min(gpus, capacity)
        if gpus % per_node:
            raise ShapeError(f"resources.gpus={gpus} does not fill whole nodes of partition {partition.name!r} "
                             f"({capacity} rank(s) per node) under resources.layout=grid; give a multiple of "
                             f"{capacity} (or at most {capacity}), or set resources.gpus_per_node, or use "
                             f"resources.layout=intra|inter")
    nodes = nodes if nodes is not None else (gpus // per_node if gpus % per_node == 0 else None)
    per_node = per_node if per_node is not None else (gpus // nodes if nodes and gpus % nodes == 0 else None)
    if nodes is None or per_node is None or nodes * per_node != gpus:
        given = " x ".join(f"resources.{k}={res[k]}" for k in ("nodes", "gpus_per_node") if res[k] is not None)
        raise ShapeError(f"resources.gpus={gpus} does not match {given} under resources.layout=grid "
                         f"(nodes x gpus_per_node = gpus); set two of the three")
    return nodes, per_node


def _ranks_per_node(partition: Partition, cpus_per_task: int | None) -> int | None:
    """How many ranks one node of `partition` holds: its GPUs; on a CPU partition its CPUs / CPUs per task
    (None when the profile does not say: the ranks then share one node)."""
    if partition.has_gpus:
        return partition.gpus_per_node
    if partition.cpus_per_node and cpus_per_task:
        return max(1, partition.cpus_per_node // cpus_per_task)
    return None


def _mem_gb(value: Any, key: str) -> float | None:
    """GB of memory per node (`--mem`): a number > 0, or None to leave it to Slurm's default."""
    if value is None:
        return None
    number = value
    if isinstance(value, str):          # a quoted number ("12") still counts, as it did; "abc" does not
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)   # the schema makes a typed -5 into -5.0
        raise ShapeError(f"{key}={shown} is invalid: it must be a number > 0 (GB per node) or null")
    return float(number)


def _time_min(value: Any, partition: Partition) -> int:
    """Minutes; `auto` stands for the partition's max until the sweep sets it from the cost estimate
    (vit_dt/commands/sweep_cost.py), so every check of the request still runs."""
    if value == AUTO_TIME:
        return partition.max_time_min
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"resources.time_min must be a positive integer (minutes) or {AUTO_TIME} (from the "
                         f"sweep's cost estimate), got {value!r}")
    return value


def _positive(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"{key} must be a positive integer, got {value!r}")
    return value


def validate_request(profile: ClusterProfile, shape: JobShape, job_paths: tuple[str, ...] = ()) -> None:
    """Raise RequestError when `shape` cannot run on `profile`; every message names the limit it broke. Its container
    is checked here too, on the login node (a ProfileError): the image is there, and (charliecloud) can hold
    `job_paths` (the sweep directory, the data root: vit_dt.slurm.container.job_paths)."""
    from vit_dt.slurm.container import image_problem

    part = profile.partition(shape.partition)
    key = "cluster.container" if part.container is profile.container else f"cluster.partitions.{part.name}.container"
    problem = image_problem(part.container, key, job_paths)
    if problem:
        raise ProfileError(problem)
    where = f"partition {part.name!r} of cluster {profile.name!r}"
    if shape.nodes < 1 or shape.tasks_per_node < 1:
        raise RequestError(f"a job needs at least 1 node and 1 task per node, got {shape.nodes} x "
                           f"{shape.tasks_per_node}")
    if shape.gpus_per_node and not part.has_gpus:
        raise RequestError(f"{shape.gpus_per_node} GPU(s) per node requested, but {where} has no GPUs "
                           f"(ranks there run on CPUs)")
    if part.has_gpus and shape.gpus_per_node > part.gpus_per_node:
        raise RequestError(f"{shape.gpus_per_node} GPUs per node requested, but {where} has "
                           f"{part.gpus_per_node} GPUs per node ({part.gpu_model or 'GPU'}); "
                           f"use more nodes (resources.layout=grid, resources.nodes) instead")
    if shape.nodes > part.nodes:
        raise RequestError(f"{shape.nodes} nodes requested, but {where} has {part.nodes} node(s)")
    if shape.time_min > part.max_time_min:
        raise RequestError(f"time limit {shape.time_min} min requested, but {where} allows at most "
                           f"{part.max_time_min} min")
    if shape.time_min < 1:
        raise RequestError(f"time limit must be at least 1 min, got {shape.time_min}")
    if profile.requeue and profile.signal_delay_s >= shape.time_min * 60:
        # Slurm would send USR2 ("checkpoint and requeue") at once: the job would requeue itself until
        # max_num_timeout is spent, never training.
        raise RequestError(f"time limit {shape.time_min} min is not longer than cluster.signal_delay_s="
                           f"{profile.signal_delay_s} s (the warning USR2 sent before the limit); raise "
                           f"resources.time_min above {profile.signal_delay_s / 60:g} min or lower cluster.signal_delay_s")
    if part.cpus_per_node is not None and shape.cpus_per_task is not None:
        cpus = shape.tasks_per_node * shape.cpus_per_task
        if cpus > part.cpus_per_node:
            raise RequestError(f"{shape.tasks_per_node} tasks x {shape.cpus_per_task} CPUs = {cpus} CPUs per "
                               f"node requested, but {where} has {part.cpus_per_node} CPUs per node")
