"""Where each point of a sweep stands: Slurm state (sacct through submitit's watcher, squeue as a fallback for
jobs accounting has not seen yet), the run's own result status, and its log files."""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vit_dt.slurm.manifest import read_manifest

# sacct/squeue states -> the few that matter to a sweep
STATE_MAP = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending", "CONFIGURING": "pending", "PREEMPTED": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "RESIZING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "OUT_OF_MEMORY": "failed",
    "DEADLINE": "failed", "SPECIAL_EXIT": "failed",
    "TIMEOUT": "timeout",
    "CANCELLED": "cancelled",
}
STATES = ("pending", "running", "completed", "failed", "timeout", "cancelled", "unknown")


@dataclass
class PointStatus:
    index: int
    overrides: list[str]
    job_id: str | None
    state: str                  # one of STATES, or "not submitted" for a dry run
    slurm_state: str | None     # as sacct/squeue wrote it ("CANCELLED by 0")
    result: str | None          # result.json's status, None while there is no result.json
    run_dir: str
    stdout: str | None
    stderr: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_state(raw: str | None) -> str:
    if not raw:
        return "unknown"
    return STATE_MAP.get(raw.split()[0].upper().rstrip("+"), "unknown")


def slurm_states(job_ids: list[str]) -> tuple[dict[str, str], str | None]:
    """Raw Slurm state per job id (array tasks as `123_4`) from one sacct call, squeue for jobs accounting has
    not recorded yet; and a warning when Slurm could not be asked (no sacct, no SLURM_CONF...)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    if not job_ids:
        return {}, None
    watcher = SlurmInfoWatcher(delay_s=600)  # only its sacct parser (arrays, ranges such as 12_[0-3])
    bases = sorted({j.split("_")[0] for j in job_ids})
    sacct = ["sacct", "-o", "JobID,State,NodeList", "--parsable2", *[a for b in bases for a in ("-j", b)]]
    out, warning = _run(sacct)
    info = watcher.read_info(out) if out else {}
    states = {j: info[j]["State"] for j in job_ids if j in info}
    missing = [j for j in job_ids if j not in states]
    if missing:
        out, squeue_warning = _run(["squeue", "-h", "-j", ",".join(bases), "-o", "%i|%T"])
        info = watcher.read_info("JobID|State\n" + out) if out else {}
        states.update({j: info[j]["State"] for j in missing if j in info})
        warning = warning or (squeue_warning if len(states) < len(job_ids) else None)
    return states, warning


def _run(command: list[str]) -> tuple[str, str | None]:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return "", f"{command[0]} could not run: {exc}"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return proc.stdout, f"{command[0]} failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return proc.stdout, None


def sweep_status(sweep_dir: str | Path) -> tuple[dict[str, Any], list[PointStatus]]:
    """The manifest (with `status_warning` set when Slurm could not be asked) and one row per point."""
    manifest = read_manifest(sweep_dir)
    points = manifest["points"]
    slurm_ids = [p["job_id"] for p in points if p.get("job_id") and p.get("scheduler") == "slurm"]
    raw_states, manifest["status_warning"] = slurm_states(slurm_ids)
    out = []
    for point in points:
        logs = point.get("logs") or {}
        result = _result_status(Path(point["run_dir"]))
        if point.get("scheduler") == "local":
            raw = point.get("local_state")
            state = raw or ("unknown" if point.get("job_id") else "not submitted")
        elif not point.get("job_id"):
            raw, state = None, "not submitted"
        else:
            raw = raw_states.get(point["job_id"])
            state = normalize_state(raw)
        out.append(PointStatus(index=point["index"], overrides=point.get("overrides", []), job_id=point.get("job_id"),
                               state=state, slurm_state=raw, result=result, run_dir=point["run_dir"],
                               stdout=logs.get("stdout"), stderr=logs.get("stderr")))
    return manifest, out


def _result_status(run_dir: Path) -> str | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, json.JSONDecodeError):
        return "unreadable"


def format_table(manifest: dict[str, Any], rows: list[PointStatus]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines = [f"sweep {manifest['sweep_dir']}: {len(rows)} point(s): {summary}"]
    if manifest.get("status_warning"):
        lines.append(f"warning: {manifest['status_warning']} (is SLURM_CONF set for this cluster?)")
    header = ("point", "job", "state", "result", "overrides")
    table = [header] + [(str(r.index), r.job_id or "-", r.state, r.result or "-", " ".join(r.overrides) or "-")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    lines.append("logs (task 0; task k: _k_log.*):")
    for r in rows:
        lines.append(f"  {r.index}: {r.stdout or '-'}" + (f"\n     {r.stderr}" if r.stderr else ""))
    return "\n".join(lines)
