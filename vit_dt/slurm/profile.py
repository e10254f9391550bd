"""Cluster profiles (conf/cluster/<name>.yaml) as typed objects.

A profile is parsed strictly: a misspelt key is an error that lists the valid names, because a silently
ignored `acount:` would only surface as a rejected job hours later. Defaults of the optional keys come from the
config schema (vit_dt.config.schema), where they are stated once.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vit_dt.config.choices import LAUNCHERS, SCHEDULERS
from vit_dt.config.interconnect import Interconnect
from vit_dt.config.schema import ClusterSchema, PartitionSchema
from vit_dt.slurm.container import NO_CONTAINER, Container, ContainerError, launch_problem, parse_container


class ProfileError(ValueError):
    """The cluster profile itself is malformed (unknown key, wrong type, missing partition)."""


class RequestError(ValueError):
    """A job asks for more than its partition offers; nothing has been submitted."""


@dataclass(frozen=True)
class Partition:
    name: str
    gpus_per_node: int          # 0: a CPU partition, ranks use gloo
    nodes: int                  # how many nodes the partition has
    max_time_min: int
    gpu_model: str | None = PartitionSchema.gpu_model
    cpus_per_task: int | None = PartitionSchema.cpus_per_task
    mem_gb: float | None = PartitionSchema.mem_gb
    cpus_per_node: int | None = PartitionSchema.cpus_per_node
    # node (Slurm hostlist) -> GPU model for partitions whose nodes carry different GPUs; parsed and checked by
    # vit_dt.measure.hardware (kept as given here: scheduling does not depend on it)
    node_gpus: Any = PartitionSchema.node_gpus
    container: Container = NO_CONTAINER   # what its ranks run in: the profile's, with this partition's block over it

    @property
    def has_gpus(self) -> bool:
        return self.gpus_per_node > 0


@dataclass(frozen=True)
class ClusterProfile:
    name: str
    scheduler: str
    launcher: str
    default_partition: str
    partitions: Mapping[str, Partition]
    account: str | None = ClusterSchema.account
    qos: str | None = ClusterSchema.qos
    setup: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    interconnect: Interconnect = Interconnect()
    signal_delay_s: int = ClusterSchema.signal_delay_s
    requeue: bool = ClusterSchema.requeue
    python: str | None = ClusterSchema.python
    srun_args: tuple[str, ...] = ()     # appended to the srun launch line
    mpirun: str = ClusterSchema.mpirun
    mpirun_args: tuple[str, ...] = ()   # appended to the mpirun launch line
    sbatch_args: Mapping[str, Any] = field(default_factory=dict)  # extra #SBATCH --key=value lines
    container: Container = NO_CONTAINER  # the profile's own block; each partition holds the one its ranks use

    def partition(self, name: str | None) -> Partition:
        """The partition called `name` (None: the default one), or a RequestError listing the valid names."""
        key = self.default_partition if name is None else name
        if key not in self.partitions:
            raise RequestError(
                f"unknown partition {key!r} in cluster profile {self.name!r}; "
                f"valid partitions: {', '.join(sorted(self.partitions))}"
            )
        return self.partitions[key]

    @classmethod
    def from_config(cls, cluster: Mapping[str, Any]) -> ClusterProfile:
        """Build from the composed `cluster` node (a DictConfig or a plain dict)."""
        data = _plain(cluster)
        _reject_unknown(data, _PROFILE_FIELDS, "cluster profile", "cluster")
        for required in ("name", "scheduler", "launcher", "default_partition", "partitions"):
            if data.get(required) is None:
                raise ProfileError(f"cluster profile is missing `cluster.{required}`")
        name = str(data["name"])
        _one_of(data["scheduler"], SCHEDULERS, "cluster.scheduler")
        _one_of(data["launcher"], LAUNCHERS, "cluster.launcher")
        if not isinstance(data["partitions"], Mapping) or not data["partitions"]:
            raise ProfileError(f"cluster profile {name!r}: `cluster.partitions` must map names to partitions")
        try:
            container = parse_container(data.get("container"), "cluster.container")
            partitions = {str(p): _partition(str(p), spec, container) for p, spec in data["partitions"].items()}
        except ContainerError as exc:
            raise ProfileError(str(exc)) from None
        for part in partitions.values():
            key = "cluster.container" if part.container is container else f"cluster.partitions.{part.name}.container"
            problem = launch_problem(part.container, data["launcher"], data["scheduler"], key)
            if problem:
                raise ProfileError(problem)
        if data["default_partition"] not in partitions:
            raise ProfileError(
                f"cluster profile {name!r}: default_partition {data['default_partition']!r} is not one of its "
                f"partitions: {', '.join(sorted(partitions))}"
            )
        interconnect = data.get("interconnect") or {}
        _reject_unknown(interconnect, _INTERCONNECT_FIELDS, f"cluster profile {name!r} interconnect",
                        "cluster.interconnect")
        env = data.get("env") or {}
        return cls(
            name=name,
            scheduler=data["scheduler"],
            launcher=data["launcher"],
            default_partition=str(data["default_partition"]),
            partitions=partitions,
            account=_opt_str(data.get("account")),
            qos=_opt_str(data.get("qos")),
            setup=tuple(str(line) for line in data.get("setup") or ()),
            env={str(k): str(v) for k, v in env.items()},
            interconnect=Interconnect(**{k: float(v) for k, v in interconnect.items()}),
            signal_delay_s=_int(data.get("signal_delay_s", ClusterSchema.signal_delay_s), "cluster.signal_delay_s",
                                minimum=0),
            requeue=bool(data.get("requeue", ClusterSchema.requeue)),
            python=_opt_str(data.get("python")),
            srun_args=tuple(str(a) for a in data.get("srun_args") or ()),
            mpirun=str(data.get("mpirun") or "mpirun"),
            mpirun_args=tuple(str(a) for a in data.get("mpirun_args") or ()),
            sbatch_args=dict(data.get("sbatch_args") or {}),
            container=container,
        )


_PROFILE_FIELDS = (
    "name", "scheduler", "launcher", "account", "qos", "default_partition", "partitions", "setup", "env",
    "interconnect", "signal_delay_s", "requeue", "python", "srun_args", "mpirun", "mpirun_args", "sbatch_args",
    "remote",   # where `vit-dt sweep --remote` submits from: vit_dt/slurm/remote.py reads it, jobs never do
    "container",   # the image each rank runs in: vit_dt/slurm/container.py
)
_PARTITION_FIELDS = ("gpus_per_node", "gpu_model", "nodes", "max_time_min", "cpus_per_task", "mem_gb",
                     "cpus_per_node", "node_gpus", "container")
_INTERCONNECT_FIELDS = Interconnect.FIELDS


def _partition(name: str, spec: Any, container: Container = NO_CONTAINER) -> Partition:
    if not isinstance(spec, Mapping):
        raise ProfileError(f"partition {name!r} must be a mapping of {', '.join(_PARTITION_FIELDS)}")
    _reject_unknown(spec, _PARTITION_FIELDS, f"partition {name!r}", f"cluster.partitions.{name}")
    for required in ("gpus_per_node", "nodes", "max_time_min"):
        if spec.get(required) is None:
            raise ProfileError(f"partition {name!r} is missing `{required}`")
    key = f"cluster.partitions.{name}"
    return Partition(
        name=name,
        gpus_per_node=_gpus_per_node(spec["gpus_per_node"], f"{key}.gpus_per_node"),
        nodes=_int(spec["nodes"], f"{key}.nodes", minimum=1),
        max_time_min=_int(spec["max_time_min"], f"{key}.max_time_min", minimum=1),
        gpu_model=_opt_str(spec.get("gpu_model")),
        cpus_per_task=None if spec.get("cpus_per_task") is None
        else _int(spec["cpus_per_task"], f"{key}.cpus_per_task", minimum=1),
        mem_gb=None if spec.get("mem_gb") is None else _memory_gb(spec["mem_gb"], f"{key}.mem_gb"),
        cpus_per_node=None if spec.get("cpus_per_node") is None
        else _int(spec["cpus_per_node"], f"{key}.cpus_per_node", minimum=1),
        node_gpus=spec.get("node_gpus"),
        container=parse_container(spec.get("container"), f"{key}.container", base=container),
    )


def _plain(node: Any) -> dict[str, Any]:
    """A DictConfig becomes a resolved dict; a dict passes through."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()  # type: ignore[assignment]
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    if not isinstance(node, Mapping):
        raise ProfileError(f"`cluster` must be a mapping, got {type(node).__name__}")
    return dict(node)


def _reject_unknown(data: Mapping[str, Any], valid: tuple[str, ...], what: str, prefix: str) -> None:
    unknown = sorted(set(map(str, data)) - set(valid))
    if unknown:
        raise ProfileError(
            f"unknown key(s) in {what}: {', '.join(f'{prefix}.{k}' for k in unknown)}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )


def _one_of(value: Any, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ProfileError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _gpus_per_node(value: Any, key: str) -> int:
    if value == "auto":
        return visible_gpu_count()
    if isinstance(value, str):
        raise ProfileError(f"{key} must be an integer >= 0 or 'auto' (the GPUs this machine shows), got {value!r}")
    return _int(value, key, minimum=0)


def visible_gpu_count() -> int:
    """GPUs this machine shows, without importing torch: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    import os
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines()) if listing.returncode == 0 else 0


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _memory_gb(value: Any, key: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ProfileError(f"{key} must be a number > 0 (GB per node) or null, got {value!r}")
    return float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
