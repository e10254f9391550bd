"""`vit-dt sweep`'s cost step, between validating the points and queueing them: estimate each point
(vit_dt/analysis/estimate.py), set `resources.time_min=auto` limits, and refuse a sweep over `--max-gpu-hours`.

The launcher plugin (launchers/hydra_plugins/vit_dt_launcher/launcher.py) calls `plan_costs` on its SweepPoints;
the estimate lands in each point's sweep.json entry, so `vit-dt status` can set the hours used against it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from vit_dt.analysis import estimate as est
from vit_dt.config.choices import AUTO_TIME
from vit_dt.textable import index_ranges


class BudgetError(ValueError):
    """The sweep's estimate exceeds --max-gpu-hours; nothing was queued."""


def load_cost_model(source: str | Path) -> est.CostModel:
    """The calibration `--calibrate-from` names: a sweep directory, a results.jsonl or a result.json. The profile
    is its completed run with the fewest ranks (as `vit-dt predict` picks it); the interconnect is fitted on its
    multi-rank runs of the same cluster."""
    from vit_dt.analysis import scaling_model as sm
    from vit_dt.analysis.report import ReportError, load_records
    from vit_dt.analysis.series import select
    from vit_dt.commands.predict import pick_profile_record

    try:
        records = [r for r in select(load_records([Path(source)])).used if r.get("status") == "completed"]
        base = pick_profile_record(records)
        profile, _ = sm.full_epochs(sm.profile_from_record(base))
    except (sm.ModelError, ReportError) as exc:
        raise est.EstimateError(f"--calibrate-from {source}: {exc}") from None
    prior = sm.interconnect_of(base) or sm.Interconnect()
    same = [r for r in records if r.get("cluster") == base.get("cluster")]
    calibration = sm.calibrate(same, prior=prior, profile=profile)
    return est.cost_model(base, calibration.interconnect)


def plan_costs(points: Sequence[Any], *, calibrate_from: str | None = None,
               max_gpu_hours: float | None = None) -> list[str]:
    """Estimate every point (SweepPoints, changed in place: `estimate`, and for time_min=auto the shape's and the
    config's time_min), then check the budget. Returns the notes to print; raises EstimateError or BudgetError
    (ValueErrors: the sweep exits 2 before anything is written)."""
    from vit_dt.slurm.shape import validate_request

    model = load_cost_model(calibrate_from) if calibrate_from else None
    notes: list[str] = []
    unestimated: dict[str, list[int]] = {}
    for point in points:
        part = point.profile.partition(point.shape.partition)
        resources = point.cfg["resources"]
        try:
            estimate = est.estimate_point(point.index, point.cfg, nodes=point.shape.nodes,
                                          ranks_per_node=point.shape.tasks_per_node, on_gpus=part.has_gpus,
                                          gpu_model=part.gpu_model, model=model)
        except est.EstimateError as exc:
            if resources["time_min"] == AUTO_TIME or max_gpu_hours is not None:   # they need the estimate
                raise est.EstimateError(f"point {point.index}: {exc}") from None
            unestimated.setdefault(str(exc), []).append(point.index)   # a plain sweep still runs, unestimated
            continue
        signal = point.profile.signal_delay_s if point.profile.requeue else 0.0
        if resources["time_min"] == AUTO_TIME:
            limit = est.time_limit(estimate, margin=float(resources["time_margin"]), max_time_min=part.max_time_min,
                                   signal_delay_s=signal)
            point.shape = replace(point.shape, time_min=limit.time_min)
            resources["time_min"] = limit.time_min   # the saved config.yaml (and so --resume) keeps the number
            validate_request(point.profile, point.shape)
            estimate = replace(estimate, time_min=limit.time_min, time_auto=True, segments=limit.segments)
        else:
            try:
                count = est.segments(estimate, point.shape.time_min, 1.0, signal)
            except est.EstimateError as exc:
                notes.append(f"warning: {exc}" + (" (estimate is a guess)" if estimate.source == est.GUESS else ""))
                count = 1
            estimate = replace(estimate, time_min=point.shape.time_min, segments=count)
        point.estimate = estimate.to_dict()
    notes += [f"no estimate for point(s) {index_ranges(ix)}: {why}" for why, ix in unestimated.items()]
    if max_gpu_hours is not None:
        check_budget([p.estimate for p in points], max_gpu_hours, {p.index: p.shape.describe() for p in points})
    return notes


def check_budget(estimates: Sequence[dict[str, Any]], max_gpu_hours: float, shapes: dict[int, str]) -> None:
    """BudgetError when the estimates' total hours (GPU-hours; a CPU partition's rank-hours count alike) exceed
    `max_gpu_hours`, naming the largest points and what to cut."""
    total = sum(e["hours"] for e in estimates)
    if total <= max_gpu_hours:
        return
    largest = sorted(estimates, key=lambda e: -e["hours"])[:3]
    named = ", ".join(f"point {e['index']} ({shapes[e['index']]}, {e['hours']:.2f} {e['unit']})" for e in largest)
    over = total - max_gpu_hours
    # the fewest largest points whose removal brings the sweep under the cap
    cut, saved = [], 0.0
    for e in sorted(estimates, key=lambda e: -e["hours"]):
        if saved >= over:
            break
        cut.append(e["index"])
        saved += e["hours"]
    raise BudgetError(f"nothing was submitted: the estimate {est.total_line(estimates)} exceeds --max-gpu-hours "
                      f"{max_gpu_hours:g}; the largest: {named}; to fit, drop point(s) {index_ranges(cut)} "
                      f"(saves {saved:.2f} h), or lower trainer.epochs (x{max_gpu_hours / total:.2f} fits), or "
                      f"raise --max-gpu-hours")


def cost_lines(manifest: dict[str, Any], max_requeues: int | None = None) -> list[str]:
    """The estimate's lines of `vit-dt sweep`'s summary, from the manifest's points."""
    from vit_dt.slurm.shape import JobShape

    points = [p for p in manifest["points"] if p.get("estimate")]
    shapes = {p["index"]: JobShape.from_dict(p["shape"]).describe() for p in points}
    return est.summary_lines([p["estimate"] for p in points], shapes, index_ranges, max_requeues)
