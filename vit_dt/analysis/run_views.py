"""Per-run views of a sweep's completed records, for the report's tables and plots: each run with its series'
speed-up and efficiency, the time breakdown per step, the all-reduce share and accuracy vs batch, intra- vs
inter-node pairs, learning curves. Pure functions."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vit_dt.analysis.formulas import efficiency, kind_of, speedup
from vit_dt.analysis.series import (
    LAYOUT_ORDER,
    Series,
    SeriesKey,
    layout_label,
    scaling_label,
    series_key,
    sibling_key,
)
from vit_dt.analysis.swept_knobs import knob_values_text, swept_knobs
from vit_dt.records import result
from vit_dt.records.result import epoch_time, final_train_acc, global_batch, ranks_per_node

# ---------------------------------------------------------------- per-run views

BREAKDOWN_PARTS = ("compute", "allreduce", "optimizer", "data_wait", "other")


def time_breakdown(record: Mapping[str, Any]) -> dict[str, float] | None:
    """Mean ms per optimizer step, split: compute = fwd + bwd_inner, allreduce = bwd_allreduce, optimizer = step,
    data_wait, other = step_time minus those four (launch gaps, timer sync; never below 0). None without timers."""
    mean = ((record.get("breakdown_ms") or {}).get("mean")) or None
    if not mean:
        return None
    parts = {"compute": float(mean.get("fwd", 0.0)) + float(mean.get("bwd_inner", 0.0)),
             "allreduce": float(mean.get("bwd_allreduce", 0.0)),
             "optimizer": float(mean.get("step", 0.0)),
             "data_wait": float(mean.get("data_wait", 0.0))}
    total = float(mean.get("step_time", 0.0))
    parts["other"] = max(0.0, total - sum(parts.values()))
    parts["step_time"] = max(total, sum(parts.values()))
    return parts


@dataclass(frozen=True)
class RunRow:
    """One completed run as the report's table shows it; speed-up/efficiency from its own series."""
    series: str
    kind: str
    layout: str
    world_size: int
    nodes: int
    ranks_per_node: int
    micro_batch: int | None
    global_batch: int | None
    train_samples: int | None
    epoch_time_s: float
    img_per_s: float | None
    speedup: float | None
    efficiency: float | None
    comm_share: float | None
    data_wait_share: float | None
    final_val_acc: float | None
    final_train_acc: float | None
    mfu: float | None
    peak_mem_gb: float | None
    straggler: bool
    point: Any
    run_dir: str


def run_rows(records: Sequence[Mapping[str, Any]], series: Sequence[Series],
             knobs: Sequence[str] | None = None) -> list[RunRow]:
    own: dict[int, tuple[Series, float, float]] = {}
    knobs = swept_knobs(records) if knobs is None else knobs
    keys = {id(record): series_key(record, knobs) for record in records}
    for s in series:
        for record in records:
            if keys[id(record)] == s.key:
                t, n = epoch_time(record), int(record["world_size"])
                own[id(record)] = (s, speedup(s.kind, s.baseline_epoch_time_s, s.baseline_world_size, t, n),
                                   efficiency(s.kind, s.baseline_epoch_time_s, s.baseline_world_size, t, n))
    rows = []
    for record in records:
        s, sp, eff = own.get(id(record), (None, None, None))
        rows.append(RunRow(
            series=(s.key if s else keys[id(record)]).short_label(),
            kind=kind_of(result.value(record, "scaling")), layout=layout_label(record),
            world_size=int(record["world_size"]), nodes=int(record.get("nodes") or 1),
            ranks_per_node=ranks_per_node(record), micro_batch=result.micro_batch(record),
            global_batch=global_batch(record), train_samples=record.get("train_samples"),
            epoch_time_s=float(epoch_time(record)), img_per_s=result.img_per_s(record), speedup=sp, efficiency=eff,
            comm_share=record.get("comm_share"), data_wait_share=record.get("data_wait_share"),
            final_val_acc=record.get("final_val_acc"), final_train_acc=final_train_acc(record),
            mfu=record.get("mfu"), peak_mem_gb=record.get("peak_mem_gb"),
            straggler=bool((record.get("straggler") or {}).get("flagged")), point=record.get("point"),
            run_dir=str(record.get("run_dir") or "")))
    return sorted(rows, key=lambda r: (r.kind, LAYOUT_ORDER.get(r.layout, 2), r.layout, r.series.split(",")[0],
                                       r.micro_batch or 0, r.series, r.world_size))


def comm_share_by_batch(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Multi-rank runs: all-reduce share of the step vs the per-rank (micro) and global batch.

    The all-reduce moves the same gradient bytes whatever the batch while compute grows with it, so the share
    should fall as the micro-batch grows; that is what this table shows."""
    rows = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for record in records:
        parts = time_breakdown(record)
        if int(record.get("world_size") or 1) < 2 or parts is None:
            continue
        rows.append({"world_size": int(record["world_size"]), "nodes": int(record.get("nodes") or 1),
                     "layout": layout_label(record), "micro_batch": result.micro_batch(record),
                     "knobs": knob_values_text(record, knobs),
                     "global_batch": global_batch(record), "allreduce_ms": parts["allreduce"],
                     "step_time_ms": parts["step_time"],
                     "comm_share": record.get("comm_share") if record.get("comm_share") is not None
                     else (parts["allreduce"] / parts["step_time"] if parts["step_time"] else None)})
    return sorted(rows, key=lambda r: (r["layout"], r["world_size"], r["micro_batch"] or 0, r["knobs"]))


def accuracy_by_batch(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Final validation and train accuracy vs global batch (same epochs, so fewer steps at larger batches)."""
    knobs = swept_knobs(records) if knobs is None else knobs
    rows = [{"global_batch": global_batch(r), "world_size": int(r["world_size"]), "scaling": scaling_label(r),
             "layout": layout_label(r), "micro_batch": result.micro_batch(r), "knobs": knob_values_text(r, knobs),
             "final_val_acc": r.get("final_val_acc"),
             "final_train_acc": final_train_acc(r), "epochs": len(r.get("epochs") or []),
             "steps_per_epoch": result.steps_per_epoch(r)}
            for r in records if r.get("final_val_acc") is not None or final_train_acc(r) is not None]
    return sorted(rows, key=lambda r: (r["scaling"], r["knobs"], r["global_batch"] or 0, r["world_size"]))


def layout_pairs(series: Sequence[Series]) -> list[dict]:
    """intra-node vs inter-node runs at equal world size (N > 1), for series alike in everything but layout."""
    by_family: dict[SeriesKey, dict[str, Series]] = defaultdict(dict)
    for s in series:
        if s.key.layout in ("intra", "inter"):
            by_family[sibling_key(s.key)][s.key.layout] = s
    pairs = []
    for family, layouts in by_family.items():
        if len(layouts) < 2:
            continue
        intra = {p.world_size: p for p in layouts["intra"].points}
        inter = {p.world_size: p for p in layouts["inter"].points}
        for n in sorted(set(intra) & set(inter)):
            if n < 2:
                continue
            a, b = intra[n], inter[n]
            pairs.append({"family": replace(family, layout="intra vs inter").short_label(), "kind": family.kind,
                          "world_size": n,
                          "intra_epoch_time_s": a.epoch_time_s, "inter_epoch_time_s": b.epoch_time_s,
                          "intra_efficiency": a.efficiency, "inter_efficiency": b.efficiency,
                          "intra_comm_share": a.comm_share, "inter_comm_share": b.comm_share,
                          "inter_over_intra": b.epoch_time_s / a.epoch_time_s})
    return pairs


def epoch_curves(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Per run, its per-epoch train loss/accuracy and validation loss/accuracy (for the learning-curve plot)."""
    curves = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for r in records:
        epochs = r.get("epochs") or []
        if not epochs:
            continue
        swept = knob_values_text(r, knobs)
        curves.append({"label": f"N={r['world_size']} {layout_label(r)} {scaling_label(r)} gb={global_batch(r)}"
                                + (f" {swept}" if swept else ""),
                       "world_size": int(r["world_size"]), "global_batch": global_batch(r),
                       "scaling": scaling_label(r),
                       **{k: [e.get(k) for e in epochs] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}})
    return sorted(curves, key=lambda c: (c["scaling"], c["global_batch"] or 0, c["world_size"]))


def breakdown_rows(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Per run with timers: the step split into compute, all-reduce, optimizer, data wait, other (ms)."""
    rows = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for r in records:
        parts = time_breakdown(r)
        if parts is None:
            continue
        rows.append({"world_size": int(r["world_size"]), "nodes": int(r.get("nodes") or 1),
                     "layout": layout_label(r), "scaling": scaling_label(r), "micro_batch": result.micro_batch(r),
                     "knobs": knob_values_text(r, knobs),
                     "global_batch": global_batch(r), **parts})
    return sorted(rows, key=lambda x: (x["micro_batch"] or 0, x["scaling"], LAYOUT_ORDER.get(x["layout"], 2),
                                       x["layout"], x["world_size"], x["knobs"]))
