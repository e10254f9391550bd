"""The scaling model next to the measurements: calibrate the interconnect on a store's multi-rank runs, then predict
every series from its baseline run (vit_dt/analysis/scaling_model.py). Used by the report and by the checks of
implausible numbers (vit_dt/analysis/checks.py). Pure functions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from vit_dt.analysis import scaling_model as sm
from vit_dt.analysis.series import Series


def _baseline_record(records: Sequence[dict], series: Series) -> dict | None:
    """The latest completed run at the series' baseline world size (a borrowed 1-rank run included)."""
    wanted = set(series.points[0].run_dirs)
    matches = [r for r in records if str(r.get("run_dir") or "") in wanted
               and int(r["world_size"]) == series.baseline_world_size]
    return matches[-1] if matches else None


def _gpus_per_node(series: Series) -> int | None:
    return max(p.ranks_per_node for p in series.points) if series.key.layout.startswith("grid") else None


def model_section(records: Sequence[dict], series: Sequence[Series]) -> dict:
    """Calibrate the interconnect on the store's multi-rank runs, then predict every series from its baseline."""
    prior = sm.Interconnect()
    for record in records:
        try:
            found = sm.interconnect_of(record)
        except sm.ModelError:
            continue
        if found is not None:
            prior = found
            break
    one_rank = [r for r in records if int(r.get("world_size") or 0) == 1]
    profile_for_excess = None
    if one_rank:
        try:
            profile_for_excess = sm.profile_from_record(one_rank[-1])
        except sm.ModelError:
            profile_for_excess = None
    try:
        calibration = sm.calibrate(records, prior=prior, profile=profile_for_excess)
    except sm.ModelError as error:
        calibration = sm.Calibration(interconnect=prior, fitted=(), points=(), notes=(str(error),))
    comparisons, notes = [], list(calibration.notes)
    for s in series:
        if len(s.points) < 2:
            continue
        base = _baseline_record(records, s)
        if base is None:
            continue
        layout = s.key.layout if s.key.layout in ("intra", "inter") else "grid"
        try:
            profile = sm.profile_from_record(base)
            ns = [p.world_size for p in s.points]
            fixed_global = s.key.batch.startswith("global batch")
            kwargs = dict(layout=layout, gpus_per_node=_gpus_per_node(s), micro_batch=s.points[-1].micro_batch,
                          global_batch=s.points[-1].global_batch if fixed_global else None, scaling=s.kind)
            plain = sm.predict(profile, calibration.interconnect, ns, overlap=False, **kwargs)
            overlapped = sm.predict(profile, calibration.interconnect, ns, overlap=True, **kwargs)
        except sm.ModelError as error:
            notes.append(f"No prediction for '{s.key.short_label()}': {error}")
            continue
        points = []
        for p, a, b in zip(s.points, plain, overlapped):
            points.append({"world_size": p.world_size, "measured_epoch_s": p.epoch_time_s,
                           "predicted_epoch_s": a.epoch_s, "predicted_overlap_epoch_s": b.epoch_s,
                           "error": (a.epoch_s - p.epoch_time_s) / p.epoch_time_s,
                           "measured_efficiency": p.efficiency, "predicted_efficiency": a.efficiency,
                           "measured_comm_share": p.comm_share, "predicted_allreduce_share": a.allreduce_share})
        comparisons.append({"label": s.key.short_label(), "kind": s.kind, "layout": layout,
                            "profile_from": profile.source, "points": points})
    return {"calibration": calibration.to_dict(), "prior_interconnect": asdict(prior), "comparisons": comparisons,
            "notes": notes}
