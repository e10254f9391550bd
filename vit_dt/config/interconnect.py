"""A cluster's interconnect (`cluster.interconnect` of conf/cluster/<name>.yaml): bandwidths between the ranks of one
node and between nodes, in Gb/s (gigabits per second, as the `*_gbps` keys say), and the latency per hop.

One class for the cluster profile (vit_dt/slurm/profile.py) and the scaling model (vit_dt/analysis/scaling_model.py);
it lives in config because both wings may import config, and its defaults are the config schema's."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vit_dt.config.schema import InterconnectSchema


class InterconnectError(ValueError):
    """An interconnect that cannot be: an unknown key, a bandwidth <= 0 or a latency < 0."""


@dataclass(frozen=True)
class Interconnect:
    intra_node_gbps: float = InterconnectSchema.intra_node_gbps   # between ranks of one node (NVLink, PCIe, shm)
    inter_node_gbps: float = InterconnectSchema.inter_node_gbps   # between nodes (InfiniBand, Ethernet)
    latency_us: float = InterconnectSchema.latency_us             # per ring hop

    FIELDS = ("intra_node_gbps", "inter_node_gbps", "latency_us")

    @classmethod
    def from_config(cls, interconnect: Mapping[str, Any] | None,
                    error: type[ValueError] = InterconnectError) -> Interconnect:
        """From a `cluster.interconnect` mapping (missing keys: the defaults), checked: unknown keys, bandwidths
        <= 0 and a negative latency raise `error` (callers pass their own error type)."""
        data = dict(interconnect or {})
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise error(f"unknown interconnect keys {unknown}; valid: {', '.join(cls.FIELDS)}")
        made = cls(**{k: float(v) for k, v in data.items() if v is not None})
        for name, value in asdict(made).items():
            if value < 0 or (name != "latency_us" and value == 0):
                raise error(f"interconnect {name}={value} is invalid: bandwidths must be > 0, latency >= 0")
        return made

    def bandwidth_gbps(self, nodes: int) -> float:
        """The bandwidth that bounds a ring over `nodes` nodes: its slowest link."""
        return self.inter_node_gbps if nodes > 1 else self.intra_node_gbps
