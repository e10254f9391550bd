"""Where a contender's step time goes: a torch.profiler capture of a few steps, reduced to the numbers that tell a
device-bound step from a host-bound one (device busy time per step against wall time per step) and to the kernels
that cost the most. bench_throughput.py --profile DIR writes one trace per contender (open it in Perfetto) and
puts this summary into its JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def _device_events(prof) -> list:
    """Kernels, copies and memsets that ran on the device (not the host-side launch calls)."""
    from torch.autograd import DeviceType

    # GPU-side copies of user annotations (Optimizer.step#...) span kernels already counted: leave them out.
    return [event for event in prof.events()
            if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)]


def summarise(prof, steps: int, wall_s: float, top: int = 12) -> dict:
    """Per-step device busy time, its share of wall time, device launches per step and the costliest kernels."""
    events = _device_events(prof)
    busy_us = sum(event.device_time_total for event in events)
    per_kernel: dict[str, list[float]] = {}
    for event in events:
        entry = per_kernel.setdefault(event.name, [0.0, 0])
        entry[0] += event.device_time_total
        entry[1] += 1
    costliest = sorted(per_kernel.items(), key=lambda item: -item[1][0])[:top]
    wall_ms = wall_s * 1e3 / steps
    busy_ms = busy_us / 1e3 / steps
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms,
        "device_busy_ms_per_step": busy_ms,
        # Wall time the device spent on nothing: launch gaps, host work it waited for, synchronisations.
        "device_idle_share": max(0.0, 1.0 - busy_ms / wall_ms) if wall_ms > 0 else None,
        "device_launches_per_step": len(events) / steps,
        "costliest": [{"name": name[:120], "ms_per_step": total / 1e3 / steps, "calls_per_step": count / steps}
                      for name, (total, count) in costliest],
    }


def profile_step(step: Callable[[], object], steps: int, device: torch.device, trace: Path | None) -> dict:
    """Profiles `steps` calls of an already warmed-up step; writes a Chrome trace to `trace` when given."""
    import time

    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        raise ValueError(f"profiling a step needs a CUDA device (device busy time), got {device.type}")
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return summarise(prof, steps, wall)


def table(profiles: dict[str, dict]) -> str:
    rows = ["| path | wall ms/step | device busy ms/step | device idle | launches/step | costliest kernel (ms/step) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, entry in profiles.items():
        top = entry["costliest"][0] if entry["costliest"] else {"name": "-", "ms_per_step": 0.0}
        rows.append(f"| {name} | {entry['wall_ms_per_step']:.2f} | {entry['device_busy_ms_per_step']:.2f} | "
                    f"{100 * entry['device_idle_share']:.1f}% | {entry['device_launches_per_step']:.0f} | "
                    f"{top['name'][:60]} ({top['ms_per_step']:.2f}) |")
    return "\n".join(rows)
