"""From sweep points to jobs: validate every point, group by (profile, shape), submit one job array per group.

Hydra-free, so the launcher plugin stays a thin adapter and this can be driven from plain dicts.
On Slurm it returns as soon as the arrays are queued; with `cluster.scheduler=local` there is no queue, so
the points run here, one after another, through submitit's LocalExecutor (one process per rank) and it waits.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vit_dt import atomic
from vit_dt.slurm.job_entry import DEFAULT_ENTRY, PointTask
from vit_dt.slurm.manifest import SCHEMA_VERSION, manifest_path, write_manifest
from vit_dt.slurm.profile import ClusterProfile
from vit_dt.slurm.render import render_sbatch
from vit_dt.slurm.shape import JobShape
from vit_dt.slurm.snapshot import CODE_SUBDIR, code_dir_of, code_lines, freeze, importing, shipped_code
from vit_dt.slurm.sweep_dir import LATEST
from vit_dt.textable import index_ranges

# submitit's files (scripts, pickles, per-task logs), named <job id>_<task>_...: one flat folder, so nothing
# depends on a per-job directory existing before Slurm opens a job's log files.
SLURM_SUBDIR = "slurm"
POINT_CONFIG = "config.yaml"
LOCAL_SUBDIR = "local"
DRY_RUN_SUBDIR = "dry-run"


class SweepError(ValueError):
    """The sweep cannot be submitted as asked; nothing was queued."""


class PartialSubmissionError(RuntimeError):
    """sbatch failed after some job (array)s of the sweep were queued: those are recorded in sweep.json, so
    `vit-dt status` follows them and `vit-dt sweep --resume` submits the rest."""


@dataclass
class SweepPoint:
    index: int
    overrides: list[str]
    cfg: dict[str, Any]           # the resolved config the job receives
    run_dir: Path
    profile: ClusterProfile
    shape: JobShape
    estimate: dict[str, Any] | None = None   # its cost estimate (vit_dt/analysis/estimate.py), kept in sweep.json


@dataclass
class JobGroup:
    """Points sharing a profile and a shape: one job array."""

    index: int
    profile: ClusterProfile
    shape: JobShape
    points: list[SweepPoint] = field(default_factory=list)

    @property
    def job_name(self) -> str:
        s = self.shape
        return f"vitdt-{s.nodes}x{s.tasks_per_node}-{s.partition}"

    def description(self, sweep_dir: Path) -> str:
        indexes = index_ranges(p.index for p in self.points)
        return (f"sweep {sweep_dir.name}, job group {self.index}: shape {self.shape.describe()} on cluster "
                f"{self.profile.name}, point(s) {indexes}")


def group_points(points: list[SweepPoint]) -> list[JobGroup]:
    """Group in first-seen order; points with equal (profile, shape) share a group."""
    groups: dict[tuple[str, JobShape], JobGroup] = {}
    for point in points:
        key = (profile_fingerprint(point.profile), point.shape)
        if key not in groups:
            groups[key] = JobGroup(len(groups), point.profile, point.shape)
        groups[key].points.append(point)
    return list(groups.values())


def submit_sweep(sweep_dir: Path, points: list[SweepPoint], *, entry: str = DEFAULT_ENTRY,
                 dry_run: bool = False, max_num_timeout: int = 3, argv: list[str] | None = None,
                 prepare_seconds: float | None = None, echo: Callable[[str], None] = print,
                 snapshot: bool = True, reuse_code: tuple[str | None, dict] | None = None,
                 shipped: bool = False) -> dict[str, Any]:
    """Submit (or, with dry_run, only render) every point; returns the manifest written to sweep.json.
    `prepare_seconds`: how long composing and validating the points took (recorded in the manifest).
    `snapshot`: freeze the code into <sweep_dir>/code/ and have every job import it (vit_dt/slurm/snapshot.py);
    `reuse_code`: (snapshot, provenance block) of a recorded run to use instead (`vit-dt rerun --slurm`);
    `shipped`: <sweep_dir>/code/ was shipped from another machine (`vit-dt sweep --remote`): keep it."""
    started = time.perf_counter()
    sweep_dir = Path(sweep_dir).absolute()
    if manifest_path(sweep_dir).exists():
        raise SweepError(f"{manifest_path(sweep_dir)} exists: {sweep_dir} already holds a sweep; "
                         f"pass hydra.sweep.dir=<new dir> (or wait a second for a new timestamp)")
    if not points:
        raise SweepError("the sweep has no points")
    groups = group_points(points)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "sweep_dir": str(sweep_dir),
        "created_at": _now(),
        "argv": argv,
        "dry_run": dry_run,
        "entry": entry,
        "max_num_timeout": max_num_timeout,
        "jobs": [],
        "points": [_point_record(p) for p in points],
    }
    if not dry_run:
        for point in points:
            write_point_config(point)
        freeze(sweep_dir, manifest, points, snapshot=snapshot, reuse=reuse_code, shipped=shipped)
    elif shipped:     # a dry run of `vit-dt sweep --remote`: the snapshot is there already
        manifest["code"] = shipped_code(sweep_dir)[0]
    else:
        manifest["code"] = {"snapshot": str(sweep_dir / CODE_SUBDIR) if snapshot else None, "frozen": False,
                            "no_snapshot": not snapshot}
    manifest["prepare_seconds"] = None if prepare_seconds is None else round(prepare_seconds, 4)
    submit_groups(sweep_dir, groups, manifest, entry=entry, dry_run=dry_run, max_num_timeout=max_num_timeout,
                  echo=echo, started=started)
    return manifest


def submit_groups(sweep_dir: Path, groups: list[JobGroup], manifest: dict[str, Any], *, entry: str, dry_run: bool,
                  max_num_timeout: int, echo: Callable[[str], None], started: float,
                  reasons: Mapping[int, str] | None = None) -> None:
    """Queue (or render) Slurm groups, write the manifest, then run local groups here. Shared by a new sweep and
    `--resume`, which passes the existing manifest and `reasons` (point index -> why it runs again)."""
    reason: str | Mapping[int, str] = "submitted" if reasons is None else reasons
    code_dir = code_dir_of(sweep_dir, manifest) if not dry_run else (manifest.get("code") or {}).get("snapshot")
    slurm_groups = [g for g in groups if g.profile.scheduler == "slurm"]
    local_groups = [g for g in groups if g.profile.scheduler == "local"]
    for queued, group in enumerate(slurm_groups):
        try:
            record = (_render_group(sweep_dir, group, echo, code_dir) if dry_run
                      else _submit_group(sweep_dir, group, entry, max_num_timeout, code_dir))
        except Exception as exc:    # sbatch refused, or Slurm cannot be reached
            _refuse_after_submission_failure(sweep_dir, manifest, group, queued, exc, resumed=reasons is not None)
        _attach(manifest, group, record, reason)
    if reasons is None:  # a resume records its own timing
        manifest["submit_seconds"] = round(time.perf_counter() - started, 4)
        manifest["sbatch_seconds"] = round(sum(j.get("sbatch_seconds", 0.0) for j in manifest["jobs"]), 4)
    write_manifest(sweep_dir, manifest)  # before local runs: `vit-dt status` can watch them
    if not dry_run and reasons is None:
        point_latest_at(sweep_dir, echo)
    if local_groups:
        for group in local_groups:
            if dry_run:
                _attach(manifest, group, {"job_id": None, "scheduler": "local", "submitted_at": None}, reason)
            else:
                with importing(code_dir):    # a local sweep's later points run the snapshot too
                    _run_local_group(sweep_dir, group, entry, manifest, echo, reason)
        write_manifest(sweep_dir, manifest)


def _refuse_after_submission_failure(sweep_dir: Path, manifest: dict[str, Any], group: JobGroup, queued: int,
                                     exc: Exception, *, resumed: bool) -> None:
    """Raise the error for a job group sbatch did not take. Groups queued before it stay tracked: the manifest is
    written with them (a new sweep's with none is not, so the same command can simply run again)."""
    points = index_ranges([p.index for p in group.points])
    what = f"sbatch failed for point(s) {points} ({group.shape.describe()}): {_error_line(exc)}"
    if queued == 0 and not resumed:
        raise SweepError(f"nothing was submitted; {what}") from None
    write_manifest(sweep_dir, manifest)
    if not resumed:
        point_latest_at(sweep_dir)
    raise PartialSubmissionError(f"{what}\nthe job(s) queued before it are recorded in {manifest_path(sweep_dir)}; "
                                 f"once sbatch works again, `vit-dt sweep --resume {shlex.quote(str(sweep_dir))}` submits the rest") from None


def write_point_config(point: SweepPoint) -> Path:
    """<run_dir>/config.yaml: the exact config the point's job receives. `vit-dt sweep --resume` resubmits from it
    (so a resumed point runs the same config even if conf/ or the environment changed since), and
    `python -m vit_dt.run.rank <run_dir>` reruns the point by hand."""
    import yaml

    from vit_dt.records.secrets import scrub_secrets

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the C dumper: 48 points must not cost seconds
    # Secrets never reach disk; a job takes them from the environment sbatch exports, as the first attempt did.
    text = yaml.dump(scrub_secrets(point.cfg), Dumper=dumper, sort_keys=False, default_flow_style=False)
    return atomic.write_text(point.run_dir / POINT_CONFIG, text)


def read_point_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = Path(run_dir) / POINT_CONFIG
    if not path.is_file():
        raise SweepError(f"{path} is missing: this point's config was not saved at submission "
                         f"(a sweep made by an older vit-dt?); submit the sweep again into a new directory")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    cfg = yaml.load(path.read_text(), Loader=loader)
    if not isinstance(cfg, dict):
        raise SweepError(f"{path} does not hold a config mapping")
    return cfg


def point_latest_at(sweep_dir: Path, echo: Callable[[str], None] = print) -> None:
    """<sweeps>/latest -> this sweep, replaced atomically, so `vit-dt report outputs/sweeps/latest` just works.
    Only a link is replaced: a file or directory of that name is someone's own and stays as it is."""
    link = sweep_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        echo(f"note: {link} is not a link vit-dt made; left as it is (it does not point at this sweep)")
        return
    tmp = sweep_dir.parent / f".latest-{sweep_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(sweep_dir.name)
    tmp.replace(link)


# --- Slurm ------------------------------------------------------------------------------------------
def _submit_group(sweep_dir: Path, group: JobGroup, entry: str, max_num_timeout: int,
                  code_dir: str | None) -> dict[str, Any]:
    from vit_dt.slurm.executor import VitDtSlurmExecutor

    folder = sweep_dir / SLURM_SUBDIR
    executor = VitDtSlurmExecutor(folder, group.profile, group.shape, job_name=group.job_name,
                                  description=group.description(sweep_dir), max_num_timeout=max_num_timeout,
                                  code_dir=code_dir, job_paths=_job_paths(sweep_dir, group))
    tasks = [PointTask(p.cfg, str(p.run_dir), entry) for p in group.points]
    tic = time.perf_counter()
    submitted_at = _now()
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    seconds = time.perf_counter() - tic
    job_ids = [job.job_id for job in jobs]
    return {
        "job_id": job_ids[0].split("_")[0],
        "scheduler": "slurm",
        "array": len(jobs) > 1,
        "task_job_ids": job_ids,
        "script": str(executor.last_submission_file),
        "submitit_folder": str(folder),
        "submitted_at": submitted_at,
        "sbatch_seconds": round(seconds, 4),
        "log_paths": [_log_paths(job) for job in jobs],
    }


def _render_group(sweep_dir: Path, group: JobGroup, echo: Callable[[str], None],
                  code_dir: str | None) -> dict[str, Any]:
    from vit_dt.slurm.executor import job_spec

    folder = sweep_dir / SLURM_SUBDIR
    array = len(group.points) if len(group.points) > 1 else None
    spec = job_spec(group.profile, group.shape, folder, job_name=group.job_name, array_size=array,
                    description=group.description(sweep_dir), code_dir=code_dir, job_paths=_job_paths(sweep_dir, group))
    text = render_sbatch(spec)
    script = sweep_dir / DRY_RUN_SUBDIR / f"job{group.index}.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    echo(f"# ---- {script} ----\n{text}")
    return {"job_id": None, "scheduler": "slurm", "array": array is not None, "script": str(script),
            "submitit_folder": str(folder), "submitted_at": None}


def _job_paths(sweep_dir: Path, group: JobGroup) -> tuple[str, ...]:
    """What the group's jobs read and write (bound into a container): the sweep directory, every point's data root."""
    from vit_dt.slurm.container import job_paths

    return tuple(dict.fromkeys([str(sweep_dir), *(p for point in group.points for p in job_paths(point.cfg))]))


def _log_paths(job: Any) -> dict[str, str]:
    paths = job.paths  # task 0's logs; task k's differ only in the _<k>_ before log.out
    return {"stdout": str(paths.stdout), "stderr": str(paths.stderr)}


# --- local ------------------------------------------------------------------------------------------
def _run_local_group(sweep_dir: Path, group: JobGroup, entry: str, manifest: dict[str, Any],
                     echo: Callable[[str], None], reason: str | Mapping[int, str] = "submitted") -> None:
    """No queue here: each point runs now, its ranks as local processes, and we wait for it."""
    import submitit

    folder = sweep_dir / LOCAL_SUBDIR
    executor = submitit.LocalExecutor(folder=folder)
    # submitit hides every GPU from a local job that asks for none (CUDA_VISIBLE_DEVICES=""): ask for one per rank.
    executor.update_parameters(tasks_per_node=group.shape.world_size, nodes=1,
                               gpus_per_node=group.shape.gpus_per_node,
                               timeout_min=group.shape.time_min, setup=list(group.profile.setup))
    for point in group.points:
        tic = time.perf_counter()
        job = executor.submit(PointTask(point.cfg, str(point.run_dir), entry))
        record = {"job_id": job.job_id, "scheduler": "local", "array": False, "task_job_ids": [job.job_id],
                  "submitit_folder": str(folder), "submitted_at": _now(), "log_paths": [_log_paths(job)]}
        _attach(manifest, JobGroup(group.index, group.profile, group.shape, [point]), record, reason)
        manifest["points"][_position(manifest, point.index)].pop("local_state", None)  # a resumed point's old one
        write_manifest(sweep_dir, manifest)
        echo(f"point {point.index}: running locally ({group.shape.world_size} rank(s)), logs {job.paths.stdout}")
        try:
            job.results()
            state = "completed"
        except Exception as exc:  # one failed point does not stop the sweep; status shows it
            state = "failed"
            echo(f"point {point.index}: failed: {_error_line(exc)} (log: {job.paths.stderr})")
        manifest["points"][_position(manifest, point.index)]["local_state"] = state
        manifest["points"][_position(manifest, point.index)]["seconds"] = round(time.perf_counter() - tic, 2)
        echo(f"point {point.index}: {state} in {time.perf_counter() - tic:.1f} s")


def summary_lines(manifest: dict[str, Any], jobs: list[dict[str, Any]] | None = None) -> list[str]:
    """What `vit-dt sweep` prints: one line per Slurm job (array) of `jobs` (default: all), then where to look."""
    sweep_dir = manifest["sweep_dir"]
    jobs = manifest["jobs"] if jobs is None else jobs
    slurm_jobs = [j for j in jobs if j["scheduler"] == "slurm"]
    verb = "rendered (dry run, nothing submitted)" if manifest["dry_run"] else "submitted"
    lines = []
    if slurm_jobs:
        points = sorted({p for j in slurm_jobs for p in j["points"]})
        seconds = manifest.get("submit_seconds") if jobs is manifest["jobs"] else None
        took = f" in {seconds:.2f} s" if seconds is not None else ""
        lines.append(f"vit-dt sweep: {len(points)} point(s) -> {len(slurm_jobs)} Slurm job(s) {verb}{took}")
    for job in slurm_jobs:
        kind = f"array of {len(job['points'])}" if job["array"] else "single job"
        ident = f"job {job['job_id']}" if job["job_id"] else f"job group {job['group']}"
        shape = job["shape"]
        lines.append(f"  {ident} ({kind}): {shape['nodes']} node(s) x {shape['tasks_per_node']} rank(s), "
                     f"partition {shape['partition']}, {shape['time_min']} min, points "
                     f"{index_ranges(job['points'])}  script {job['script']}")
    local_jobs = [j for j in jobs if j["scheduler"] == "local"]
    if local_jobs and manifest["dry_run"]:    # a real local sweep prints each point as it runs
        for job in local_jobs:
            shape = job["shape"]
            lines.append(f"  would run here, one after another: point(s) {index_ranges(job['points'])} "
                         f"({shape['nodes']} node(s) x {shape['tasks_per_node']} rank(s))")
    lines.append(f"sweep dir: {sweep_dir}")
    lines += code_lines(manifest)
    lines.append(f"status:    vit-dt status {shlex.quote(str(sweep_dir))}")
    return lines


def _error_line(exc: BaseException) -> str:
    """The exception line of a failed job's trace (submitit wraps it between dashed lines)."""
    text = str(exc)
    if "----" in text:
        text = text.split("-" * 22)[1] if text.count("-" * 22) >= 2 else text
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    return lines[-1] if lines else type(exc).__name__


# --- manifest records --------------------------------------------------------------------------------
def _point_record(point: SweepPoint) -> dict[str, Any]:
    from vit_dt.records.secrets import scrub_override

    return {"index": point.index, "overrides": [scrub_override(o) for o in point.overrides],
            "run_dir": str(point.run_dir),
            "cluster": point.profile.name, "scheduler": point.profile.scheduler,
            "launcher": point.profile.launcher, "shape": point.shape.to_dict(), "job": None, "job_id": None,
            "attempts": [], **({"estimate": point.estimate} if point.estimate else {})}


def _attach(manifest: dict[str, Any], group: JobGroup, record: dict[str, Any],
            reason: str | Mapping[int, str] = "submitted") -> None:
    """Record a job (array) and point its points at it; each submission is one more entry in a point's `attempts`
    (job_id/job/logs always describe the latest). `reason`: why this attempt (submitted, or per point index why
    a resume runs it again)."""
    job_index = len(manifest["jobs"])
    record = {"index": job_index, "group": group.index, "cluster": group.profile.name,
              "launcher": group.profile.launcher, "shape": group.shape.to_dict(),
              "points": [p.index for p in group.points], **record}
    manifest["jobs"].append(record)
    task_ids = record.get("task_job_ids") or [None] * len(group.points)
    logs = record.get("log_paths") or [None] * len(group.points)
    for point, job_id, log in zip(group.points, task_ids, logs):
        entry = manifest["points"][_position(manifest, point.index)]
        entry.update(job=job_index, job_id=job_id, submitted_at=record.get("submitted_at"))
        if log:
            entry["logs"] = log
        if job_id is not None:
            attempts = entry.setdefault("attempts", [])
            why = reason if isinstance(reason, str) else reason.get(point.index, "resume")
            attempts.append({"attempt": len(attempts) + 1, "job": job_index, "job_id": job_id,
                             "submitted_at": record.get("submitted_at"), "reason": why})


def _position(manifest: dict[str, Any], index: int) -> int:
    return next(i for i, p in enumerate(manifest["points"]) if p["index"] == index)


def profile_fingerprint(profile: ClusterProfile) -> str:
    return json.dumps(dataclasses.asdict(profile), sort_keys=True, default=str)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
