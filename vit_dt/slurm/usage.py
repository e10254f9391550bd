"""GPU-hours a sweep has used, from Slurm's accounting, against the estimate sweep.json keeps per point.

Used = each job attempt's elapsed time x the GPUs it held (sacct ElapsedRaw x AllocTRES gres/gpu), requeued
attempts included (`sacct --duplicates`); a job on a CPU partition counts elapsed x its ranks (CPU rank-hours,
as the estimate does). One sacct call for the whole sweep; never stored (accounting is the record).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

_GPUS = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")
HOW = "(sacct elapsed x GPUs, or ranks on a CPU partition)"


@dataclass(frozen=True)
class Usage:
    used_hours: dict[int, float]        # point index -> hours used so far (GPU-hours or CPU rank-hours)
    estimated_hours: dict[int, float]   # point index -> the estimate's hours
    units: tuple[str, ...]
    warning: str | None = None

    def line(self) -> str | None:
        """`vit-dt status`'s one line; None when there is neither usage nor an estimate."""
        if not self.used_hours and not self.estimated_hours:
            return None
        unit = "/".join(self.units) or "GPU-hours"
        used = sum(self.used_hours.values())
        if not self.estimated_hours:
            return f"used: {used:.2f} {unit} {HOW}; no estimate in sweep.json"
        estimate = sum(self.estimated_hours.values())
        share = f", {100 * used / estimate:.0f}%" if estimate > 0 else ""
        return f"used: {used:.2f} of an estimated {estimate:.2f} {unit}{share} {HOW}"

    def to_dict(self) -> dict[str, Any]:
        indexes = sorted(set(self.used_hours) | set(self.estimated_hours))
        per_point = {str(i): {"used": self.used_hours.get(i), "estimated": self.estimated_hours.get(i)}
                     for i in indexes}
        return {"used_hours": sum(self.used_hours.values()), "estimated_hours": sum(self.estimated_hours.values()),
                "units": list(self.units), "per_point": per_point, "warning": self.warning}


def parse_sacct(text: str) -> dict[str, list[tuple[int, int | None]]]:
    """`sacct -X -D -o JobID,ElapsedRaw,AllocTRES --parsable2` -> job id -> [(elapsed s, GPUs or None)] per attempt."""
    out: dict[str, list[tuple[int, int | None]]] = {}
    for line in text.splitlines()[1:]:
        parts = line.split("|")
        if len(parts) < 3 or not parts[1].strip().isdigit():
            continue
        gpus = _GPUS.search(parts[2])
        out.setdefault(parts[0], []).append((int(parts[1]), int(gpus.group(1)) if gpus else None))
    return out


def sweep_usage(manifest: dict[str, Any]) -> Usage:
    points = manifest["points"]
    estimated = {p["index"]: float(p["estimate"]["hours"]) for p in points if p.get("estimate")}
    units = tuple(sorted({p["estimate"]["unit"] for p in points if p.get("estimate")}))
    ids = {p["index"]: [a["job_id"] for a in p.get("attempts") or [] if a.get("job_id")]
           for p in points if p.get("scheduler") == "slurm"}
    bases = sorted({j.split("_")[0] for jobs in ids.values() for j in jobs})
    if not bases:
        return Usage({}, estimated, units)
    command = ["sacct", "-X", "-D", "-o", "JobID,ElapsedRaw,AllocTRES", "--parsable2",
               *[a for b in bases for a in ("-j", b)]]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return Usage({}, estimated, units, f"sacct could not run: {exc}")
    if proc.returncode != 0:
        return Usage({}, estimated, units, f"sacct failed: {proc.stderr.strip().splitlines()[-1:]}")
    attempts = parse_sacct(proc.stdout)
    used = {}
    for point in points:
        shape = point.get("shape") or {}
        ranks = int(shape.get("world_size") or 1)
        seconds = [(elapsed, gpus if gpus is not None else ranks)    # no GPUs in AllocTRES: one per rank
                   for job in ids.get(point["index"], []) for elapsed, gpus in attempts.get(job, [])]
        if seconds:
            used[point["index"]] = sum(e * n for e, n in seconds) / 3600.0
    return Usage(used, estimated, units or ("GPU-hours",))
