"""`vit-dt preflight [hydra overrides] [--json] [--wait-s S] [--time-min M] [--dir DIR]`: before a big sweep, one
short job per requested resource shape, through the same sbatch script, launcher and submitit runner a sweep uses.

    vit-dt preflight cluster=localslurm resources.nodes=2
    vit-dt preflight cluster=vaughan resources.gpus_per_node=1,4 dataset=cifar10 dataset.root=/scratch/data

Comma lists expand as in `vit-dt sweep`; points with the same shape share one job. Each task reports its host,
rank and device, the rendezvous is tried with a short timeout, all-reduce bus bandwidth is measured (gloo on CPU,
NCCL on GPU), the dataset root is verified where the job runs, and W&B's mode is reported. It prints a verdict
table and exits 0 (all PASS/WARN), 1 (a FAIL) or 2 (bad input: nothing was submitted). With cluster=local the
checks run on this machine (one process per rank).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_dt.commands.options import expand_overrides  # noqa: F401 (also this module's: tests import it here)
from vit_dt.data.verify import dataset_key
from vit_dt.run.preflight import FAIL, PASS, SEVERITY, SKIP
from vit_dt.textable import format_columns

ENTRY = "vit_dt.run.preflight:run_rank"
DEFAULT_TIME_MIN = 5
DEFAULT_WAIT_S = 600.0
CHECK_ORDER = ("job", "tasks", "network", "rendezvous", "device", "allreduce", "dataset", "wandb")
TERMINAL = ("completed", "failed", "timeout", "cancelled")


@dataclass
class ShapeJob:
    """One preflight job: a shape, the config it runs with, where it reports."""

    index: int
    profile: Any
    shape: Any
    cfg: dict[str, Any]
    run_dir: Path
    job: Any = None
    job_id: str | None = None
    state: str = "not submitted"
    slurm_state: str | None = None
    rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.shape.describe()} on {self.profile.name}"


class PreflightError(ValueError):
    """Bad input: nothing was submitted."""


def plan_jobs(args: list[str], time_min: int, out_dir: Path | None) -> tuple[Path, list[ShapeJob]]:
    """Compose every combination, validate, and group by (profile, shape): one job each."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vit_dt.config import compose, to_container
    from vit_dt.slurm.profile import ClusterProfile
    from vit_dt.slurm.shape import resolve_shape, validate_request
    from vit_dt.slurm.submit import profile_fingerprint

    jobs: dict[tuple, ShapeJob] = {}
    errors = []
    base_dir = out_dir
    for combo in expand_overrides(args):
        try:
            cfg = to_container(compose(combo))
            profile = ClusterProfile.from_config(cfg["cluster"])
            shape = resolve_shape(cfg, profile)
            if time_min < shape.time_min:      # --time-min shortens the job: its limit is the one to name
                _check_time_min(profile, time_min)
                shape = dataclasses.replace(shape, time_min=time_min)
            validate_request(profile, shape)
        except (ValueError, HydraException, OmegaConfBaseException) as exc:
            from vit_dt.config.compose import error_message

            errors.append(f"  [{' '.join(combo) or '(no overrides)'}]: {error_message(exc)}")
            continue
        if base_dir is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            base_dir = Path(cfg["out_dir"]) / "preflight" / stamp
        key = (profile_fingerprint(profile), shape)
        if key not in jobs:
            jobs[key] = ShapeJob(len(jobs), profile, shape, cfg, Path())
        job = jobs[key]
        settings = job.cfg.setdefault("preflight", {"gpus_per_node": shape.gpus_per_node, "datasets": [],
                                                    "wandb_modes": []})
        if dataset_key(cfg["dataset"]) not in {dataset_key(d) for d in settings["datasets"]}:
            settings["datasets"].append(cfg["dataset"])
        mode = _wandb_mode(cfg)
        if mode not in settings["wandb_modes"]:
            settings["wandb_modes"].append(mode)
    if errors:
        raise PreflightError("nothing was submitted; fix these first:\n" + "\n".join(errors))
    assert base_dir is not None
    base_dir = base_dir.absolute()
    for job in jobs.values():
        job.run_dir = base_dir / f"shape-{job.index}"
    return base_dir, list(jobs.values())


def _check_time_min(profile: Any, time_min: int) -> None:
    """--time-min against the profile's USR2 warning (validate_request's check, which would blame
    resources.time_min for a limit --time-min set)."""
    if profile.requeue and profile.signal_delay_s >= time_min * 60:
        shortest = int(profile.signal_delay_s // 60) + 1
        raise PreflightError(f"--time-min {time_min} is not longer than cluster.signal_delay_s={profile.signal_delay_s} s "
                             f"(the warning USR2 sent before the limit); valid on cluster {profile.name!r}: "
                             f"--time-min {shortest} or more (default {DEFAULT_TIME_MIN})")


def _wandb_mode(cfg: dict[str, Any]) -> str:
    from vit_dt.records.wandb_run import resolve_mode

    try:
        return resolve_mode(cfg)
    except ValueError:
        return str((cfg.get("wandb") or {}).get("mode"))  # the job's check reports it as a FAIL


def submit(base_dir: Path, jobs: list[ShapeJob]) -> None:
    from vit_dt.slurm.job_entry import PointTask

    for job in jobs:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        task = PointTask(job.cfg, str(job.run_dir), ENTRY)
        if job.profile.scheduler == "slurm":
            from vit_dt.slurm.executor import VitDtSlurmExecutor

            shape = job.shape
            executor = VitDtSlurmExecutor(base_dir / "slurm", job.profile, shape,
                                          job_name=f"vitdt-preflight-{shape.nodes}x{shape.tasks_per_node}",
                                          description=f"preflight of {job.label}", max_num_timeout=0,
                                          job_paths=(str(job.run_dir),))
        else:
            import submitit

            executor = submitit.LocalExecutor(folder=base_dir / "local")
            executor.update_parameters(tasks_per_node=job.shape.world_size, nodes=1, timeout_min=job.shape.time_min,
                                       setup=list(job.profile.setup))
        job.job = executor.submit(task)
        job.job_id = str(job.job.job_id)
        job.state = "pending"


def wait(jobs: list[ShapeJob], wait_s: float, echo=print) -> None:
    """Until every job ended, or `wait_s` passed (then the rest are cancelled and reported as such)."""
    from vit_dt.slurm.status import normalize_state, slurm_states

    deadline = time.monotonic() + wait_s
    while True:
        slurm = [j for j in jobs if j.profile.scheduler == "slurm" and j.state not in TERMINAL]
        if slurm:
            raw, _ = slurm_states([j.job_id for j in slurm])
            for job in slurm:
                job.slurm_state = raw.get(job.job_id, job.slurm_state)
                job.state = normalize_state(job.slurm_state) if job.slurm_state else "pending"
        for job in jobs:
            if job.profile.scheduler == "local" and job.state not in TERMINAL and job.job.done():
                try:
                    job.job.results()
                    job.state, job.slurm_state = "completed", "local: all ranks returned"
                except Exception as exc:  # a rank raised or died: the rank files say more
                    job.state, job.slurm_state = "failed", f"local: {str(exc).strip().splitlines()[-1][:300]}"
        if all(j.state in TERMINAL for j in jobs):
            return
        if time.monotonic() > deadline:
            for job in jobs:
                if job.state not in TERMINAL:
                    echo(f"preflight: job {job.job_id} ({job.label}) still {job.state} after {wait_s:g} s: cancelling")
                    _cancel(job)
                    job.slurm_state = f"{job.state.upper()} after {wait_s:g} s (cancelled by preflight)"
                    job.state = "cancelled"
            return
        time.sleep(1.0)


def _cancel(job: ShapeJob) -> None:
    if job.profile.scheduler == "slurm":
        subprocess.run(["scancel", job.job_id], capture_output=True, timeout=60)
    else:
        job.job.cancel(check=False)


def collect(job: ShapeJob) -> list[dict[str, str]]:
    """The verdict rows of one job: its end state, whether every rank reported, then each check merged over ranks
    (the worst verdict wins; a FAIL names the ranks that failed)."""
    reports = {}
    for path in sorted(job.run_dir.glob("rank*.json")):
        try:
            reports[path.stem[4:]] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    rows = [_job_row(job)]
    world = job.shape.world_size
    ranks = {str(r.get("identity", {}).get("rank", label)) for label, r in reports.items()}
    missing = [str(r) for r in range(world) if str(r) not in ranks]
    hosts = sorted({str(r["identity"].get("node")) for r in reports.values() if r.get("identity")})
    if missing:
        rows.append(_row("tasks", FAIL, f"{len(ranks)} of {world} rank(s) reported; missing rank(s) "
                                        f"{', '.join(missing)}"))
    else:
        rows.append(_row("tasks", PASS, f"{world} rank(s) on {len(hosts)} node(s): {', '.join(hosts)}"))
    by_name: dict[str, list[tuple[str, dict]]] = {}
    for label, report in sorted(reports.items(), key=lambda kv: _int(kv[0])):
        for check in report.get("checks", []):
            by_name.setdefault(check["name"], []).append((label, check))
    for name in CHECK_ORDER[2:]:
        entries = by_name.get(name)
        if not entries:
            verdict = FAIL if name in ("rendezvous", "device", "allreduce") and world > 1 else SKIP
            if name == "device" and world == 1:
                verdict = SKIP
            rows.append(_row(name, verdict, "no rank got this far" if verdict == FAIL else "not run"))
            continue
        worst = max((c["verdict"] for _, c in entries), key=lambda v: SEVERITY.get(v, 3))
        if worst == FAIL:
            failing: dict[str, list[str]] = {}  # the same message from several ranks is shown once
            for label, check in entries:
                if check["verdict"] == FAIL:
                    failing.setdefault(check["detail"], []).append(label)
            detail = "; ".join(f"rank{'s' if len(labels) > 1 else ''} {', '.join(labels)}: {text}"
                               for text, labels in failing.items())
        else:
            detail = next(c["detail"] for _, c in entries if c["verdict"] == worst)
        rows.append(_row(name, worst, detail))
    return rows


def _job_row(job: ShapeJob) -> dict[str, str]:
    where = f"job {job.job_id}" if job.job_id else "no job"
    if job.state == "completed":
        return _row("job", PASS, f"{where} completed")
    reason = ""
    if job.profile.scheduler == "slurm" and job.job is not None:
        from vit_dt.slurm.status import failure_reason

        stderr = str(job.job.paths.stderr)
        reason = failure_reason({"run_dir": str(job.run_dir), "logs": {"stderr": stderr}}, None).replace("\n", "; ")
    return _row("job", FAIL, f"{where} {job.state} ({job.slurm_state}){': ' + reason if reason else ''}")


def _row(check: str, verdict: str, detail: str) -> dict[str, str]:
    one_line = " ".join(part.strip() for part in detail.splitlines() if part.strip())  # DatasetError's "fix:" line
    return {"check": check, "verdict": verdict, "detail": one_line}


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 10**6


def verdict_of(jobs: list[ShapeJob]) -> str:
    return FAIL if any(r["verdict"] == FAIL for j in jobs for r in j.rows) else PASS


def format_table(base_dir: Path, jobs: list[ShapeJob]) -> str:
    lines = [f"vit-dt preflight: {len(jobs)} shape(s), reports in {base_dir}"]
    for job in jobs:
        lines.append(f"shape {job.index}: {job.label} (job {job.job_id or '-'})")
        cells = [(str(r["check"]), str(r["verdict"]), str(r["detail"])) for r in job.rows]
        lines += format_columns(cells, pad_last=False, min_widths=(0, 4), indent="  ")
    overall = verdict_of(jobs)
    failed = sorted({f"{r['check']} (shape {j.index})" for j in jobs for r in j.rows if r["verdict"] == FAIL})
    lines.append(f"verdict: {overall}" + (f": {', '.join(failed)} failed" if failed else ""))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vit-dt preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value; a,b lists give several shapes)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S,
                        help=f"how long to wait for the jobs (queue time included); default {DEFAULT_WAIT_S:g}")
    parser.add_argument("--time-min", type=int, default=DEFAULT_TIME_MIN,
                        help=f"time limit of each preflight job in minutes; default {DEFAULT_TIME_MIN}")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the reports go; default <out_dir>/preflight/<timestamp>")
    try:
        args = parser.parse_intermixed_args(argv)   # options before or after the overrides
    except SystemExit as exit_:
        return int(exit_.code or 0)
    bad = [a for a in args.overrides if "=" not in a]
    if bad:
        print(f"vit-dt preflight: {bad} are not overrides (key=value)", file=sys.stderr)
        return 2
    if args.time_min < 1:
        print(f"vit-dt preflight: --time-min {args.time_min} is invalid: it must be an integer >= 1 (minutes; "
              f"default {DEFAULT_TIME_MIN})", file=sys.stderr)
        return 2
    if not args.wait_s > 0 or args.wait_s == float("inf"):
        print(f"vit-dt preflight: --wait-s {args.wait_s:g} is invalid: it must be a number of seconds > 0 "
              f"(default {DEFAULT_WAIT_S:g})", file=sys.stderr)
        return 2
    try:
        base_dir, jobs = plan_jobs(args.overrides, args.time_min, args.dir)
        submit(base_dir, jobs)
    except (PreflightError, ValueError, OSError, subprocess.SubprocessError) as exc:
        print(f"vit-dt preflight: error: {exc}", file=sys.stderr)
        return 2
    for job in jobs:
        if not args.json:
            print(f"shape {job.index}: {job.label}: job {job.job_id} submitted, waiting...", flush=True)
    wait(jobs, args.wait_s, echo=(lambda m: None) if args.json else print)
    for job in jobs:
        job.rows = collect(job)
    if args.json:
        print(json.dumps({"dir": str(base_dir), "verdict": verdict_of(jobs),
                          "shapes": [{"index": j.index, "shape": j.shape.to_dict(), "cluster": j.profile.name,
                                      "job_id": j.job_id, "state": j.state, "checks": j.rows,
                                      "allreduce": _allreduce_rows(j)} for j in jobs]}, indent=1))
    else:
        print(format_table(base_dir, jobs))
    return 1 if verdict_of(jobs) == FAIL else 0


def _allreduce_rows(job: ShapeJob) -> list[dict[str, float]]:
    try:
        return json.loads((job.run_dir / "rank0.json").read_text()).get("allreduce") or []
    except (OSError, ValueError):
        return []


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
