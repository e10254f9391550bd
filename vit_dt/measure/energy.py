"""Energy per rank, read at the training epoch's boundaries: the GPU's total-energy counter through NVML (Volta and
newer: nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver loaded), sampled power integrated over time
where the counter is missing (pre-Volta), and the CPU packages' RAPL counters (/sys/class/powercap) once per host.

No source, no number: a figure that cannot be read is None with the reason, never 0 (a 0 would average into
J/image as a free run). Torch-free; `pynvml` (the nvidia-ml-py package) is imported only if installed.
docs/metrics.md says what is counted and how accurate each source is.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^intel-rapl:\d+$")       # top-level zones: one per CPU package (AMD's too, kernel >= 5.8)
SAMPLE_S = 0.1                                   # power sampling period where NVML has no energy counter


class Source:
    """One counter: `read()` returns its cumulative joules (or raises), `name` says where they come from."""
    name = ""

    def read(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        return None


class NvmlCounter(Source):
    name = "nvml_energy_counter"

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle
        self.read()                                   # NotSupported before Volta: the caller falls back

    def read(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3   # mJ -> J


class NvmlPowerSampler(Source):
    """Integrates nvmlDeviceGetPowerUsage (mW) every SAMPLE_S in a daemon thread (trapezoids)."""
    name = "nvml_power_sampled"

    def __init__(self, nvml: Any, handle: Any, period_s: float = SAMPLE_S):
        self.nvml, self.handle, self.period_s = nvml, handle, period_s
        self.joules, self.lock, self.stop = 0.0, threading.Lock(), threading.Event()
        self.last = (time.monotonic(), self._watts())
        self.thread = threading.Thread(target=self._run, name="vit-dt-power", daemon=True)
        self.thread.start()

    def _watts(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3

    def _sample(self) -> None:
        now, watts = time.monotonic(), self._watts()
        with self.lock:
            self.joules += (now - self.last[0]) * (watts + self.last[1]) / 2
            self.last = (now, watts)

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            self._sample()

    def read(self) -> float:
        self._sample()
        with self.lock:
            return self.joules

    def close(self) -> None:
        self.stop.set()


class RaplCounter(Source):
    """The sum of the CPU packages' energy_uj, each unwrapped at its max_energy_range_uj."""
    name = "rapl"

    def __init__(self, root: Path = POWERCAP):
        if not Path(root).is_dir():
            raise FileNotFoundError(root)
        zones = sorted(p for p in Path(root).glob("intel-rapl:*") if _PACKAGE.match(p.name))
        if not zones:
            raise OSError(f"no RAPL package zone under {root}")
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.previous = [self._raw(z) for z in zones]       # PermissionError on kernels that restrict it to root
        self.total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read(self) -> float:
        for i, zone in enumerate(self.zones):
            now = self._raw(zone)
            delta = now - self.previous[i]
            self.total_uj += delta if delta >= 0 else delta + self.ranges[i] + 1     # the counter wrapped
            self.previous[i] = now
        return self.total_uj / 1e6


def open_gpu(uuid: str | None, index: int | None) -> tuple[Source | None, str | None]:
    """The GPU's counter (or power sampler), or None and why not."""
    if uuid is None and index is None:
        return None, "no GPU on this rank"
    try:
        import pynvml
    except ImportError:
        return None, "pynvml not importable (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        if uuid:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(index))
    except Exception as error:      # NVMLError and its many subclasses; no driver
        return None, f"NVML unavailable: {error}"
    try:
        return NvmlCounter(pynvml, handle), None
    except Exception:               # NVMLError_NotSupported before Volta: integrate sampled power instead
        try:
            return NvmlPowerSampler(pynvml, handle), None
        except Exception as error:
            return None, f"NVML has neither an energy counter nor a power reading for this GPU: {error}"


def open_cpu(read: bool, root: Path = POWERCAP) -> tuple[Source | None, str | None]:
    if not read:
        return None, "read by the host's first rank"
    try:
        return RaplCounter(root), None
    except FileNotFoundError:
        return None, f"no RAPL on this node ({root} absent)"
    except PermissionError:
        return None, f"RAPL not readable ({root}/intel-rapl:*/energy_uj is root-only on this kernel)"
    except (OSError, ValueError) as error:
        return None, f"RAPL unreadable: {error}"


@dataclass
class EnergyMeter:
    """This rank's sources; `mark()` at an epoch's start, `since(mark)` at its end."""
    gpu: Source | None
    cpu: Source | None
    reasons: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def open(cls, gpu_uuid: str | None = None, gpu_index: int | None = None, read_cpu: bool = True,
             powercap: Path = POWERCAP) -> EnergyMeter:
        gpu, gpu_reason = open_gpu(gpu_uuid, gpu_index)
        cpu, cpu_reason = open_cpu(read_cpu, powercap)
        return cls(gpu, cpu, {"gpu": gpu_reason, "cpu": cpu_reason})

    def mark(self) -> dict[str, float | None]:
        return {kind: self._read(kind) for kind in ("gpu", "cpu")}

    def _read(self, kind: str) -> float | None:
        source = getattr(self, kind)
        if source is None:
            return None
        try:
            return source.read()
        except Exception as error:        # a counter that fails mid-run: no number from now on, and why
            setattr(self, kind, None)
            self.reasons[kind] = f"{source.name} failed: {error}"
            return None

    def since(self, mark: Mapping[str, float | None]) -> dict:
        """Joules per kind since `mark`, with the source's name, or None with the reason."""
        now = self.mark()
        out: dict[str, Any] = {}
        for kind in ("gpu", "cpu"):
            source = getattr(self, kind)
            ok = now[kind] is not None and mark.get(kind) is not None
            out[f"{kind}_j"] = now[kind] - mark[kind] if ok else None
            out[f"{kind}_source"] = source.name if ok and source else None
            out[f"{kind}_reason"] = None if ok else self.reasons.get(kind) or "no reading at the epoch's start"
        return out

    def close(self) -> None:
        for source in (self.gpu, self.cpu):
            if source is not None:
                source.close()


def _total(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def epoch_energy(per_rank: Sequence[Mapping[str, Any]], seconds: float, images: int) -> dict:
    """An epoch record's `energy`: per rank, the totals (GPU: every rank's; CPU: each host's first rank), total
    joules, J/image and average watts; None with the reasons where no source gave a number."""
    gpu, cpu = _total([r.get("gpu_j") for r in per_rank]), _total([r.get("cpu_j") for r in per_rank])
    total = _total([gpu, cpu])
    reasons = sorted({f"{kind}: {r[f'{kind}_reason']}" for r in per_rank for kind in ("gpu", "cpu")
                      if r.get(f"{kind}_j") is None and r.get(f"{kind}_reason")
                      and r[f"{kind}_reason"] != "read by the host's first rank"})
    return {"gpu_j": gpu, "cpu_j": cpu, "total_j": total,
            "j_per_image": total / images if total is not None and images else None,
            "avg_watts": total / seconds if total is not None and seconds > 0 else None,
            "sources": sorted({r[f"{k}_source"] for r in per_rank for k in ("gpu", "cpu") if r.get(f"{k}_source")}),
            "reason": "; ".join(reasons) if total is None or reasons else None,
            "per_rank": [dict(r) for r in per_rank]}


def run_energy(epochs: Sequence[Mapping[str, Any]], steady: Sequence[Mapping[str, Any]]) -> dict:
    """result.json's `energy`: joules over every epoch of every attempt (requeued attempts add up: their epoch
    records are kept), and J/image and average watts over the steady-state epochs (as img/s); None with the reason
    when no epoch has a number."""
    total = _total([(e.get("energy") or {}).get("total_j") for e in epochs])
    steady_j = [(e.get("energy") or {}).get("total_j") for e in steady]
    usable = [(j, e) for j, e in zip(steady_j, steady) if j is not None]
    images = sum(e.get("train_samples_seen") or 0 for _, e in usable)
    seconds = sum(e.get("time_s") or 0 for _, e in usable)
    joules = sum(j for j, _ in usable)
    reason = next(((e.get("energy") or {}).get("reason") for e in epochs if (e.get("energy") or {}).get("reason")),
                  None) or (None if total is not None else "no energy reading in any epoch")
    return {"total_j": total, "j_per_image": joules / images if usable and images else None,
            "avg_watts": joules / seconds if usable and seconds > 0 else None,
            "sources": sorted({s for e in epochs for s in (e.get("energy") or {}).get("sources") or []}),
            "reason": reason}
