"""`vit-dt sweep --resume SWEEP_DIR` (or the same sweep command again with hydra.sweep.dir=SWEEP_DIR): run again
only the points that did not complete.

A point is skipped when its run directory's result.json says `completed`, left alone while its latest job is
still pending or running, and otherwise (never submitted, failed, timed out, cancelled, vanished from
accounting) resubmitted with the config saved at its first submission (`<run_dir>/config.yaml`) into the same run
directory, where its checkpoints let it resume. Before resubmitting, the previous attempt's result.json and
error-rank*.txt move to `<run_dir>/attempts/<n>/`, so `vit-dt status` shows the new attempt, not the old failure.
Every submission is one more entry in the point's `attempts` in sweep.json, and each resume one entry in
`resumes`.

A sweep directory copied or moved elsewhere resumes where it is now: its sweep.json and each point's config.yaml
still name the directory it was made in, and every such path (run dirs, logs, the config's sweep_dir, where the
results store is) is rebased onto the directory given, so the resubmitted jobs write into the copy, never into the
original. The resume records `moved_from`.
"""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vit_dt.records.result import RESULT_NAME
from vit_dt.slurm.job_entry import DEFAULT_ENTRY
from vit_dt.slurm.manifest import read_manifest, write_manifest
from vit_dt.slurm.status import rebase_paths, same_dir, sweep_status
from vit_dt.slurm.submit import (
    SweepError,
    SweepPoint,
    _now,
    group_points,
    read_point_config,
    submit_groups,
    summary_lines,
    write_point_config,
)
from vit_dt.textable import index_ranges

ACTIVE = ("pending", "running")
STALE_OUTPUTS = (RESULT_NAME, "error-rank*.txt")


@dataclass
class ResumePlan:
    resubmit: dict[int, str] = field(default_factory=dict)   # point index -> why (its state)
    completed: list[int] = field(default_factory=list)
    active: dict[int, str] = field(default_factory=dict)     # point index -> "running as job 12_3"

    def describe(self) -> str:
        parts = [f"{len(self.completed)} completed (skipped)"]
        if self.active:
            parts.append(f"{len(self.active)} still queued or running (left alone: "
                         + ", ".join(f"point {i} {what}" for i, what in sorted(self.active.items())) + ")")
        if self.resubmit:
            parts.append(f"{len(self.resubmit)} to run again ("
                         + ", ".join(f"point {i}: {why}" for i, why in sorted(self.resubmit.items())) + ")")
        else:
            parts.append("nothing to run again")
        return ", ".join(parts)


def plan_resume(sweep_dir: str | Path) -> tuple[dict[str, Any], ResumePlan]:
    """Which points to run again, from Slurm's states and each run's result.json."""
    manifest, rows = sweep_status(sweep_dir)
    if manifest.get("dry_run"):
        raise SweepError(f"{sweep_dir} holds a dry run: nothing was submitted, so there is nothing to resume; "
                         f"run the sweep without --dry-run (into a new hydra.sweep.dir)")
    warning = manifest.pop("status_warning", None)
    plan = ResumePlan()
    schedulers = {p["index"]: p.get("scheduler") for p in manifest["points"]}
    for row in rows:
        if row.result == "completed":
            plan.completed.append(row.index)
        elif row.state in ACTIVE and row.job_id:
            plan.active[row.index] = f"{row.state} as job {row.job_id}"
        elif row.state == "completed":
            plan.resubmit[row.index] = f"job ended without a completed result.json (result: {row.result or 'none'})"
        elif row.state == "unknown" and row.job_id and warning and schedulers.get(row.index) == "slurm":
            raise SweepError(f"cannot tell whether point {row.index} (job {row.job_id}) still runs: {warning}. "
                             f"Nothing was resubmitted; is SLURM_CONF set for this cluster?")
        else:
            plan.resubmit[row.index] = row.state if row.result is None else f"{row.state}, result {row.result}"
    return manifest, plan


def resume_sweep(sweep_dir: str | Path, *, dry_run: bool = False, verify_data: bool = True,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Resubmit the points that need it; returns the updated manifest. `dry_run`: only say what would run."""
    started = time.perf_counter()
    sweep_dir = Path(sweep_dir).absolute()
    with _resume_lock(sweep_dir):
        manifest, plan = plan_resume(sweep_dir)
        moved_from = manifest.pop("moved_from", None)
        echo(f"vit-dt sweep --resume {sweep_dir}: {len(manifest['points'])} point(s): {plan.describe()}")
        if moved_from:
            echo(f"note: this sweep was made in {moved_from} and copied or moved here: points run again here, "
                 f"with their paths rebased onto {sweep_dir}"
                 + (f"; the job(s) of point(s) {index_ranges(plan.active)} still queued or running "
                    f"write into {moved_from}" if plan.active else ""))
        if not plan.resubmit or dry_run:
            if dry_run and plan.resubmit:
                echo("dry run: nothing submitted")
            return manifest
        loaded = [_point_from_disk(manifest, index) for index in sorted(plan.resubmit)]
        points = [point for point, _ in loaded]
        if verify_data:
            from vit_dt.data.verify import dataset_problems

            problems = dataset_problems(p.cfg["dataset"] for p in points)
            if problems:
                raise SweepError("nothing was resubmitted; the data these points read is not usable here:\n  "
                                 + "\n  ".join(problems)
                                 + "\n(if the root exists only on compute nodes, pass --no-verify-data)")
        for point, rebased in loaded:
            entry = next(p for p in manifest["points"] if p["index"] == point.index)
            _set_aside_previous_outputs(point.run_dir, len(entry.get("attempts") or []))
            if rebased:  # what `python -m vit_dt.run.rank <run_dir>` and the next resume read: this directory's paths
                write_point_config(point)
        groups = group_points(points)
        first_group = 1 + max((j.get("group", -1) for j in manifest["jobs"]), default=-1)
        for group in groups:
            group.index += first_group
        jobs_before = len(manifest["jobs"])
        resume = {"at": _now(), "resubmitted": dict(sorted(plan.resubmit.items())), "completed": plan.completed,
                  "active": dict(sorted(plan.active.items())), "jobs": []}
        if moved_from:
            resume["moved_from"] = moved_from
        manifest.setdefault("resumes", []).append(resume)
        submit_groups(sweep_dir, groups, manifest, entry=manifest.get("entry") or DEFAULT_ENTRY,
                      dry_run=False, max_num_timeout=int(manifest.get("max_num_timeout", 3)), echo=echo,
                      started=started, reasons={i: f"resume: was {why}" for i, why in plan.resubmit.items()})
        resume["jobs"] = [j["job_id"] for j in manifest["jobs"][jobs_before:]]
        resume["seconds"] = round(time.perf_counter() - started, 4)
        write_manifest(sweep_dir, manifest)
        for line in summary_lines(manifest, manifest["jobs"][jobs_before:]):
            echo(line)
        return manifest


def _point_from_disk(manifest: dict[str, Any], index: int) -> tuple[SweepPoint, bool]:
    """The point as saved at its first submission, and whether its config's paths were rebased: a config saved
    before the sweep was copied or moved names the old sweep directory (where the job would write its results)."""
    from vit_dt.slurm.profile import ClusterProfile
    from vit_dt.slurm.shape import JobShape, resolve_shape, validate_request

    entry = next(p for p in manifest["points"] if p["index"] == index)
    run_dir = Path(entry["run_dir"])
    cfg = read_point_config(run_dir)
    saved_in, here = cfg.get("sweep_dir"), manifest["sweep_dir"]
    rebased = bool(saved_in) and not same_dir(saved_in, here)
    if rebased:
        cfg = rebase_paths(cfg, str(saved_in), str(here))
    profile = ClusterProfile.from_config(cfg["cluster"])
    saved = entry.get("shape")
    # The shape it was first submitted with: the config alone may no longer say it the same way (before
    # resources.gpus meant the total under every layout, intra/inter points saved nodes: 1, gpus_per_node: 1)
    shape = JobShape.from_dict(saved) if saved else resolve_shape(cfg, profile)
    validate_request(profile, shape)
    return SweepPoint(index=index, overrides=list(entry.get("overrides") or []), cfg=cfg, run_dir=run_dir,
                      profile=profile, shape=shape), rebased


def _set_aside_previous_outputs(run_dir: Path, attempt: int) -> None:
    """Move the last attempt's verdict files to attempts/<n>/ (checkpoints stay: the next attempt resumes)."""
    stale = [p for pattern in STALE_OUTPUTS for p in run_dir.glob(pattern)]
    if not stale:
        return
    target = run_dir / "attempts" / str(max(1, attempt))
    target.mkdir(parents=True, exist_ok=True)
    for path in stale:
        shutil.move(str(path), target / path.name)


@contextlib.contextmanager
def _resume_lock(sweep_dir: Path) -> Iterator[None]:
    """Two resumes of one sweep at once would submit its points twice."""
    read_manifest(sweep_dir)  # a clear error for a directory that holds no sweep, before creating a lock file
    with open(sweep_dir / ".resume.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another `vit-dt sweep --resume` of {sweep_dir} is running; wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
