"""Where each point of a sweep stands: Slurm state (sacct through submitit's watcher, squeue as a fallback for
jobs accounting has not seen yet), the run's own result status, its log files, and for a point that did not
complete, why (`reason`: the ranks' error-rank*.txt, srun/slurmstepd lines of the task logs, else their tail)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vit_dt.records.result import ENERGY, EPOCHS, FAILURE_CAUSE, RESULT_NAME, STATUS
from vit_dt.slurm.manifest import read_manifest
from vit_dt.textable import format_columns

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
REQUEUED_BY_SLURM = ("NODE_FAIL",)      # with --requeue, Slurm itself queues the job again
STATES = ("pending", "running", "completed", "failed", "timeout", "cancelled", "unknown")
ENDED_BADLY = ("failed", "timeout", "cancelled")
# Lines of a job's stderr that say why it ended: srun's verdict per task, slurmstepd's cancel/time-limit notice,
# submitit's refusal to requeue again.
_WHY_LINE = re.compile(r"(srun: error: .*task \d+: .*|slurmstepd.*\*\*\* .* \*\*\*|.*Job not requeued because.*"
                       r"|srun: error: .*(Timed out|terminated|Terminating|Force Terminated).*)")
_REQUEUE_MARK = "DUE TO JOB REQUEUE"
VANISHED = "CANCELLED (while pending in its array; Slurm keeps no record of such a task)"


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
    attempts: int = 0           # submissions of this point (1 + resumes); requeues of one job do not count
    reason: str | None = None   # why it did not complete (only for failed/timeout/cancelled or a failed result)
    energy_j: float | None = None         # vit-dt's own: result.json energy.total_j (docs/metrics.md)
    slurm_energy_j: float | None = None   # sacct's ConsumedEnergyRaw of the job, where the cluster records it
    code: str | None = None     # the code version it runs: short commit, "+dirty" (vit_dt.records.provenance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_state(raw: str | None) -> str:
    if not raw:
        return "unknown"
    return STATE_MAP.get(raw.split()[0].upper().rstrip("+"), "unknown")


def slurm_states(job_ids: list[str]) -> tuple[dict[str, str], str | None]:
    """Raw Slurm state per job id (array tasks as `123_4`) from one sacct call, squeue for jobs accounting has
    not recorded yet; and a warning when Slurm could not be asked (no sacct, no SLURM_CONF...)."""
    states, _, warning = slurm_accounting(job_ids)
    return states, warning


def _joules(raw: Any) -> float | None:
    """sacct's ConsumedEnergyRaw (joules); empty or 0 where the cluster gathers no energy (AcctGatherEnergyType
    none reports 0): not recorded, not free."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def slurm_accounting(job_ids: list[str]) -> tuple[dict[str, str], dict[str, float], str | None]:
    """slurm_states plus each job's ConsumedEnergy (joules) where accounting recorded one."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    if not job_ids:
        return {}, {}, None
    watcher = SlurmInfoWatcher(delay_s=600)  # only its sacct parser (arrays, ranges such as 12_[0-3])
    bases = sorted({j.split("_")[0] for j in job_ids})
    sacct = ["sacct", "-o", "JobID,State,NodeList,ConsumedEnergyRaw", "--parsable2",
             *[a for b in bases for a in ("-j", b)]]
    sacct_out, warning = _run(sacct)
    info = watcher.read_info(sacct_out) if sacct_out else {}
    states = {j: info[j]["State"] for j in job_ids if j in info}
    # A job whose node failed is requeued by Slurm (--requeue): accounting says NODE_FAIL until the new attempt is
    # recorded, while the queue already holds it again. The queue's word wins for those.
    requeueable = [j for j, state in states.items() if state.split()[0].upper().rstrip("+") in REQUEUED_BY_SLURM]
    energies = {j: e for j in job_ids if j in info and (e := _joules(info[j].get("ConsumedEnergyRaw"))) is not None}
    missing = [j for j in job_ids if j not in states]
    if missing or requeueable:
        out, squeue_warning = _run(["squeue", "-h", "-j", ",".join(bases), "-o", "%i|%T"])
        if squeue_warning and "Invalid job id" in squeue_warning:
            squeue_warning = None  # every job named has left the queue: an answer, not a failure
        info = watcher.read_info("JobID|State\n" + out) if out else {}
        states.update({j: info[j]["State"] for j in missing + requeueable if j in info})
        if not squeue_warning:
            states.update(_vanished_array_tasks([j for j in missing if j not in states], sacct_out))
        warning = warning or (squeue_warning if len(states) < len(job_ids) else None)
    return states, energies, warning


def _vanished_array_tasks(job_ids: list[str], sacct_out: str) -> dict[str, str]:
    """Array tasks neither accounting nor the queue knows, of arrays accounting does know: a task cancelled while
    it still sat in its array's pending record never gets a record of its own (scancel 12_3 right after sbatch)."""
    accounted = {line.split("|", 1)[0].split("_")[0].split(".")[0] for line in sacct_out.splitlines()[1:] if line}
    return {j: VANISHED for j in job_ids if "_" in j and j.split("_")[0] in accounted}


def _run(command: list[str]) -> tuple[str, str | None]:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return "", f"{command[0]} could not run: {exc}"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return proc.stdout, f"{command[0]} failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return proc.stdout, None


def same_dir(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one directory (a link such as <sweeps>/latest included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def rebase_paths(value: Any, old: str, new: str) -> Any:
    """`value` (a manifest, a point's config) with every string that is `old` or a path under it moved under
    `new`; anything else unchanged."""
    if isinstance(value, dict):
        return {k: rebase_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    return value


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """The manifest of the sweep in `sweep_dir`, its paths under `sweep_dir`. A copied or moved sweep's sweep.json
    still names the directory it was made in (run dirs, logs, scripts); they are rebased onto the directory given,
    where the copy's points live (<sweep>/points/<i>), and `moved_from` says where it was made. Never writes."""
    manifest = read_manifest(sweep_dir)
    recorded = manifest.get("sweep_dir")
    if recorded and not same_dir(recorded, sweep_dir):
        here = str(Path(sweep_dir).absolute())
        manifest = rebase_paths(manifest, str(recorded), here)
        manifest["sweep_dir"] = here
        manifest["moved_from"] = str(recorded)
    return manifest


def sweep_status(sweep_dir: str | Path) -> tuple[dict[str, Any], list[PointStatus]]:
    """The manifest (with `status_warning` set when Slurm could not be asked, `moved_from` when the sweep was copied
    or moved from where it was made: its paths are then rebased onto `sweep_dir`) and one row per point."""
    manifest = read_sweep(sweep_dir)
    points = manifest["points"]
    slurm_ids = [p["job_id"] for p in points if p.get("job_id") and p.get("scheduler") == "slurm"]
    raw_states, energies, manifest["status_warning"] = slurm_accounting(slurm_ids)
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
        reason = None
        if state in ENDED_BADLY or (result == "failed" and state not in ("pending", "running")):
            reason = failure_reason(point, raw)
        out.append(PointStatus(index=point["index"], overrides=point.get("overrides", []), job_id=point.get("job_id"),
                               state=state, slurm_state=raw, result=result, run_dir=point["run_dir"],
                               stdout=logs.get("stdout"), stderr=logs.get("stderr"),
                               attempts=len(point.get("attempts") or []), reason=reason,
                               energy_j=_result_energy(Path(point["run_dir"])),
                               slurm_energy_j=energies.get(point.get("job_id") or ""),
                               code=_code_version(Path(point["run_dir"]))))
    return manifest, out


def _code_version(run_dir: Path) -> str | None:
    """The code version the point was submitted with (<run_dir>/provenance.json), else its result's."""
    from vit_dt.records import provenance

    block = provenance.read_point(run_dir)
    if block is None:
        try:
            block = json.loads((run_dir / RESULT_NAME).read_text()).get(provenance.PROVENANCE)
        except (OSError, ValueError, AttributeError):
            return None
    return provenance.code_version({provenance.PROVENANCE: block}) if isinstance(block, dict) else None


def failure_reason(point: dict[str, Any], slurm_state: str | None, max_lines: int = 4) -> str:
    """Why a point ended without completing, in a few lines: Slurm's state, each rank's exception (error-rank*.txt
    written by the trainer since this attempt was submitted), srun/slurmstepd's verdict lines from the task logs
    of the latest attempt; when none of those say anything, the last lines of task 0's stderr."""
    parts = [f"{point.get('scheduler') or 'slurm'}: {slurm_state}"] if slurm_state else []
    since = _timestamp(point.get("submitted_at"))
    recorded = _failure_record(Path(point["run_dir"]), since)
    if recorded:
        parts.append(recorded)
    for path in sorted(Path(point["run_dir"]).glob("error-rank*.txt"), key=_rank_of):
        if since is not None and path.stat().st_mtime < since - 1:
            continue  # left by an earlier attempt
        message = _exception_message(path)
        if message:
            parts.append(f"rank {_rank_of(path)}: {message}")
    stderr = (point.get("logs") or {}).get("stderr")
    task_logs = _task_logs(stderr)
    verdicts = []
    for log in task_logs:
        verdicts += [line for line in _since_last_requeue(log) if _WHY_LINE.fullmatch(line)]
    parts += list(dict.fromkeys(verdicts))[-max_lines:]
    if len(parts) <= 1 and task_logs:
        parts += [f"stderr: {line}" for line in _last_lines(task_logs[0], 3)]
    return "\n".join(parts) if parts else "no error output found"


def _rank_of(path: Path) -> int:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return int(digits) if digits else -1


def _task_logs(stderr: str | None) -> list[Path]:
    """Every task's stderr of the job whose task-0 stderr is `stderr` (<prefix>_<task>_log.err)."""
    if not stderr or not stderr.endswith("_0_log.err"):
        return [Path(stderr)] if stderr and Path(stderr).is_file() else []
    first = Path(stderr)
    prefix = first.name[: -len("_0_log.err")]
    pattern = re.compile(re.escape(prefix) + r"_(\d+)_log\.err")
    found = [(int(m.group(1)), p) for p in first.parent.glob(f"{prefix}_*_log.err")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _read_lines(path: Path, tail_bytes: int = 64_000) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - tail_bytes))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _since_last_requeue(path: Path) -> list[str]:
    """The log lines after the last requeue notice: what the earlier attempts of this job said is not the reason."""
    lines = _read_lines(path)
    marks = [i for i, line in enumerate(lines) if _REQUEUE_MARK in line]
    if not marks:
        return lines
    rest = lines[marks[-1] + 1:]
    # srun's "exit code 255" of the task that requeued the job follows the notice; skip it too
    return [line for line in rest if not ("srun: error:" in line and "exit code 255" in line)]


def _exception_message(path: Path) -> str:
    """The exception at the end of a traceback: from its last unindented line (messages may span lines)."""
    try:
        lines = [line.rstrip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if not line[0].isspace() and not line.startswith("Traceback")
              and not line.startswith("During handling") and not line.startswith("The above exception")]
    if not starts:
        return lines[-1].strip()[:300] if lines else ""
    return " ".join(line.strip() for line in lines[starts[-1]:starts[-1] + 3])[:500]


def _last_lines(path: Path, n: int) -> list[str]:
    return [line[:300] for line in _read_lines(path, tail_bytes=16_000)[-n:]]


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return _dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _failure_record(run_dir: Path, since: float | None) -> str | None:
    """The run's own account of its failure (result.json of this attempt): its cause and what it had measured."""
    path = run_dir / RESULT_NAME
    try:
        if since is not None and path.stat().st_mtime < since - 1:
            return None    # an earlier attempt's
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get(STATUS) != "failed":
        return None
    cause = record.get(FAILURE_CAUSE) or "error"
    kind = {"io": "I/O error (full, read-only or over-quota file system?)",
            "collective": "a peer rank stopped answering",
            "hang": "a rank or a lock holder stopped making progress"}.get(cause, "error")
    return f"record: {kind} after {len(record.get(EPOCHS) or [])} epoch(s): {record.get('error')}"


def _result_status(run_dir: Path) -> str | None:
    path = run_dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, json.JSONDecodeError):
        return "unreadable"


def _result_energy(run_dir: Path) -> float | None:
    """vit-dt's own joules of the run (result.json energy.total_j), None without a reading."""
    try:
        value = (json.loads((run_dir / RESULT_NAME).read_text()).get(ENERGY) or {}).get("total_j")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def format_table(manifest: dict[str, Any], rows: list[PointStatus]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines = [f"sweep {manifest['sweep_dir']}: {len(rows)} point(s): {summary}"]
    if manifest.get("moved_from"):
        lines.append(f"note: copied or moved from {manifest['moved_from']}; the paths below are this directory's")
    if manifest.get("status_warning"):
        lines.append(f"warning: {manifest['status_warning']} (is SLURM_CONF set for this cluster?)")
    header = ("point", "job", "state", "result", "tries", "code", "overrides")
    table = [header] + [(str(r.index), r.job_id or "-", r.state, r.result or "-", str(r.attempts or "-"),
                         r.code or "-", " ".join(r.overrides) or "-") for r in rows]
    if any(r.energy_j is not None or r.slurm_energy_j is not None for r in rows):
        # vit-dt's training epochs beside Slurm's whole job (start-up, validation, the host: docs/metrics.md)
        header = (*header[:6], "energy J (vit-dt)", "energy J (Slurm)", header[6])
        table = [header] + [(*row[:6], "-" if r.energy_j is None else f"{r.energy_j:.0f}",
                             "-" if r.slurm_energy_j is None else f"{r.slurm_energy_j:.0f}", row[6])
                            for r, row in zip(rows, table[1:])]
    lines += format_columns(table, pad_last=False)        # overrides: free text, last
    failed = [r for r in rows if r.reason]
    if failed:
        lines.append("why (not completed):")
        for r in failed:
            lines += [f"  {r.index}: {line}" if i == 0 else f"     {line}"
                      for i, line in enumerate(r.reason.splitlines())]
        lines.append(f"  resume: vit-dt sweep --resume {shlex.quote(str(manifest['sweep_dir']))}")
    lines.append("logs (task 0; task k: _k_log.*):")
    for r in rows:
        lines.append(f"  {r.index}: {r.stdout or '-'}" + (f"\n     {r.stderr}" if r.stderr else ""))
    return "\n".join(lines)
