"""Which GPU each rank ran on: mixed-GPU partitions (the paper's Tesla cluster) described in the cluster profile,
and each rank's host mapped to its GPU model.

A partition whose nodes carry different GPUs lists them under `node_gpus` (conf/cluster/tesla.yaml):

    partitions:
      tesla:
        gpus_per_node: 1
        gpu_model: null             # no single model: see node_gpus
        nodes: 5
        node_gpus:                  # Slurm node name (or hostname) -> GPU model; Slurm hostlist syntax allowed
          ecetesla[1-2,4]: RTX3070
          ecetesla0: GTX1070
          ecetesla3: P4

or as a list of groups: `node_gpus: [{nodes: "ecetesla[1-2,4]", gpu_model: RTX3070}, ...]`.

A rank's GPU model comes from the device itself when it has one whose name vit-dt knows (`torch.cuda`), else
from the profile's declaration for its node (`SLURMD_NODENAME`, else the hostname, else the short hostname), else
from the partition's single `gpu_model`. `gpu_model_source` in result.json says which.
"""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GPU_MODEL_SOURCES = ("device", "profile:node", "profile:partition", "none")


class HardwareError(ValueError):
    """A malformed `node_gpus` description in a cluster profile."""


# ---------------------------------------------------------------- Slurm hostlists

_BRACKET = re.compile(r"\[([^\[\]]+)\]")


def expand_hostlist(expression: str) -> list[str]:
    """"ecetesla[0-2,4]" -> ecetesla0, ecetesla1, ecetesla2, ecetesla4; "n[01-03]" keeps the zero padding;
    "a,b" lists hosts; several bracket groups multiply ("r[1-2]n[1-2]" -> 4 hosts), as Slurm's hostlist does."""
    if not isinstance(expression, str) or not expression.strip():
        raise HardwareError(f"a host list must be a non-empty string, got {expression!r}")
    hosts: list[str] = []
    for item in _split_top_level(expression.strip()):
        hosts += _expand_item(item, expression)
    return hosts


def _split_top_level(expression: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in expression:
        depth += (char == "[") - (char == "]")
        if depth < 0:
            raise HardwareError(f"unbalanced ']' in host list {expression!r}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise HardwareError(f"unbalanced '[' in host list {expression!r}")
    items.append(current)
    if any(not item.strip() for item in items):
        raise HardwareError(f"empty host name in host list {expression!r}")
    return [item.strip() for item in items]


def _expand_item(item: str, whole: str) -> list[str]:
    match = _BRACKET.search(item)
    if not match:
        if "[" in item or "]" in item:
            raise HardwareError(f"malformed brackets in host list {whole!r}")
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    out = []
    for part in match.group(1).split(","):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            numbers = [part]
        elif m := re.fullmatch(r"(\d+)-(\d+)", part):
            low, high = m.groups()
            if int(low) > int(high):
                raise HardwareError(f"range {part!r} runs backwards in host list {whole!r}")
            width = len(low) if low.startswith("0") else 0
            numbers = [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
        else:
            raise HardwareError(f"{part!r} in host list {whole!r} is not a number or a range like 0-3")
        for number in numbers:
            out += _expand_item(head + number + tail, whole)
    return out


# ---------------------------------------------------------------- the profile's description

@dataclass(frozen=True)
class NodeGpuMap:
    """Host -> GPU model of one partition; `default` is the partition's single `gpu_model` (None if mixed)."""
    by_node: Mapping[str, str]
    default: str | None = None

    @property
    def mixed(self) -> bool:
        return len(set(self.by_node.values()) | ({self.default} if self.default else set())) > 1

    @property
    def models(self) -> list[str]:
        return sorted(set(self.by_node.values()) | ({self.default} if self.default else set()))

    def lookup(self, *names: str | None) -> tuple[str | None, str]:
        """(GPU model, source) for the first of `names` the map knows (a name, then its short form before '.'),
        else the partition's default."""
        for name in names:
            if not name:
                continue
            for candidate in (name, name.split(".", 1)[0]):
                if candidate in self.by_node:
                    return self.by_node[candidate], "profile:node"
        return (self.default, "profile:partition") if self.default else (None, "none")


def parse_node_gpus(spec: Any, where: str = "node_gpus", default: str | None = None,
                    max_nodes: int | None = None) -> NodeGpuMap:
    """Validate a `node_gpus` mapping ({hostlist: model}) or list of groups ([{nodes, gpu_model}]).

    Errors name the bad entry: a model that is not a non-empty string, a malformed host list, a host given two
    different models, more hosts than the partition's `nodes`."""
    if spec is None:
        return NodeGpuMap({}, default)
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        pairs = []
        for i, group in enumerate(spec):
            if not isinstance(group, Mapping) or set(group) != {"nodes", "gpu_model"}:
                raise HardwareError(f"{where}[{i}] must be a mapping with exactly the keys nodes, gpu_model; "
                                    f"got {group!r}")
            pairs.append((group["nodes"], group["gpu_model"]))
    else:
        raise HardwareError(f"{where} must map host lists to GPU models (or list {{nodes, gpu_model}} groups), "
                            f"got {type(spec).__name__}")
    by_node: dict[str, str] = {}
    for hostlist, model in pairs:
        if not isinstance(model, str) or not model.strip():
            raise HardwareError(f"{where}.{hostlist}: the GPU model must be a non-empty string, got {model!r}")
        for host in expand_hostlist(str(hostlist)):
            if host in by_node and by_node[host] != model:
                raise HardwareError(f"{where}: host {host!r} is given two GPU models, {by_node[host]!r} and "
                                    f"{model!r}")
            by_node[host] = model.strip()
    if max_nodes is not None and len(by_node) > max_nodes:
        raise HardwareError(f"{where} lists {len(by_node)} hosts but the partition has nodes={max_nodes}: "
                            f"{', '.join(sorted(by_node))}")
    return NodeGpuMap(by_node, default)


def partition_name(cfg: Mapping[str, Any]) -> str | None:
    """The partition a run asked for: resources.partition, else the cluster's default."""
    resources = cfg.get("resources") or {}
    return resources.get("partition") or (cfg.get("cluster") or {}).get("default_partition")


def node_gpu_map(cluster: Mapping[str, Any], partition: str | None = None) -> NodeGpuMap:
    """The host -> GPU map of `partition` (None: the default) in a composed `cluster` node."""
    partitions = cluster.get("partitions") or {}
    name = partition or cluster.get("default_partition")
    if name not in partitions:
        raise HardwareError(f"unknown partition {name!r} in cluster {cluster.get('name')!r}; valid partitions: "
                            f"{', '.join(sorted(partitions)) or '(none)'}")
    spec = partitions[name] or {}
    return parse_node_gpus(spec.get("node_gpus"), where=f"cluster.partitions.{name}.node_gpus",
                           default=spec.get("gpu_model"), max_nodes=spec.get("nodes"))


# ---------------------------------------------------------------- this rank, every rank

def cpu_list(cpus: Sequence[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5": a rank's CPU affinity, short (a 128-core node's list as text stays one line)."""
    out, ids = [], sorted(set(int(c) for c in cpus))
    for cpu in ids:
        if out and cpu == out[-1][1] + 1:
            out[-1][1] = cpu
        else:
            out.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)


def parse_cpu_list(text: str | None) -> set[int]:
    """"0-2,5" -> {0, 1, 2, 5} (cpu_list's inverse; empty for None or "")."""
    cpus: set[int] = set()
    for part in (text or "").split(","):
        if part.strip():
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def local_hardware(device: Any) -> dict[str, Any]:
    """What this rank can see of itself: its host, its Slurm node name and its device's name; the CPUs it may run
    on (affinity), the threads torch uses and the host's 1-minute load when it started (the oversubscription check
    in vit_dt/analysis/checks.py reads them)."""
    import torch

    device = torch.device(device)
    host = socket.gethostname()
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    return {"host": host, "node": os.environ.get("SLURMD_NODENAME") or host, "device": device.type,
            "gpu_name": gpu_name, "cpus": cpu_list(affinity), "threads": torch.get_num_threads(),
            "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def rank_table(gathered: Sequence[Mapping[str, Any]], node_map: NodeGpuMap) -> list[dict[str, Any]]:
    """Every rank's hardware, in rank order, with its GPU model and where that came from (GPU_MODEL_SOURCES)."""
    from vit_dt.measure.metrics import gpu_model_from_name

    rows = []
    for rank, seen in enumerate(gathered):
        detected = gpu_model_from_name(seen["gpu_name"]) if seen.get("gpu_name") else None
        if detected:
            model, source = detected, "device"
        else:
            model, source = node_map.lookup(seen.get("node"), seen.get("host"))
        rows.append({"rank": rank, "host": seen.get("host"), "node": seen.get("node"), "device": seen.get("device"),
                     "gpu_name": seen.get("gpu_name"), "gpu_model": model, "gpu_model_source": source,
                     "cpus": seen.get("cpus"), "threads": seen.get("threads"), "load_1m": seen.get("load_1m")})
    return rows


def ranks_for_run(cfg: Mapping[str, Any], gathered: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """result.json's `ranks`: rank_table with the run's partition map; a malformed map is reported, not fatal
    (the run already trained: losing its record over a profile typo would be worse)."""
    try:
        node_map = node_gpu_map(cfg.get("cluster") or {}, partition_name(cfg))
    except HardwareError as error:
        rows = rank_table(gathered, NodeGpuMap({}))
        for row in rows:
            row["gpu_model_error"] = str(error)
        return rows
    return rank_table(gathered, node_map)


def describe_rank(row: Mapping[str, Any] | None) -> str:
    """"rank 1 on ecetesla0 (GTX1070)": how the report names a rank."""
    if not row:
        return "rank ?"
    where = row.get("node") or row.get("host") or "?"
    if row.get("host") and row.get("node") and row["host"] != row["node"]:
        where = f"{row['node']} ({row['host']})"
    gpu = row.get("gpu_model") or row.get("gpu_name") or ("cpu" if row.get("device") == "cpu" else "unknown GPU")
    return f"rank {row.get('rank')} on {where}, {gpu}"
