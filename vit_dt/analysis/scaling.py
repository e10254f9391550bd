"""Scaling analysis of a sweep's records: series, speed-up, efficiency, ideal lines, shares. Pure functions.

The formulas and what a series is: formulas.py. docs/report.md explains each number and plot.

The parts, by job: formulas.py (the formulas), series.py (selecting records, series and their points),
swept_knobs.py (settings that split series), run_views.py (per-run tables and plots' rows); this module puts them
together (`analyse`) and notes what a reader should know about the numbers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from vit_dt.analysis.run_views import (
    RunRow,
    accuracy_by_batch,
    breakdown_rows,
    comm_share_by_batch,
    epoch_curves,
    layout_pairs,
    run_rows,
)
from vit_dt.analysis.series import (
    Selection,
    Series,
    build_series,
    select,
)
from vit_dt.analysis.stats import NOISY_SHARE
from vit_dt.analysis.swept_knobs import swept_knobs
from vit_dt.records import result


@dataclass
class SweepAnalysis:
    selection: Selection
    series: list[Series]
    runs: list[RunRow]
    comm_share: list[dict]
    accuracy: list[dict]
    layout_pairs: list[dict]
    breakdown: list[dict]
    epoch_curves: list[dict]
    notes: list[str] = field(default_factory=list)
    knobs: tuple[str, ...] = ()     # the swept settings that split series (swept_knobs)

    def to_dict(self) -> dict:
        return {"series": [s.to_dict() for s in self.series], "runs": [asdict(r) for r in self.runs],
                "comm_share_by_batch": self.comm_share, "accuracy_by_batch": self.accuracy,
                "intra_vs_inter": self.layout_pairs, "breakdown_ms": self.breakdown,
                "not_completed": [_brief(r) for r in self.selection.not_completed],
                "superseded": [_brief(r) for r in self.selection.superseded], "notes": self.notes}


def _brief(record: Mapping[str, Any]) -> dict:
    return {k: record.get(k) for k in ("point", "status", "world_size", "nodes", "layout", "scaling",
                                       "micro_batch", "error", "run_dir", "finished_at")}


def _capped(record: Mapping[str, Any]) -> bool:
    cap = result.config_value(record, "trainer", "max_steps_per_epoch")
    steps = [e.get("steps") for e in record.get("epochs") or []]
    return bool(cap) and bool(steps) and steps[-1] == int(cap)


def analyse(records: Iterable[Mapping[str, Any]], noisy_share: float = NOISY_SHARE) -> SweepAnalysis:
    """`noisy_share`: a point whose 95% interval (epoch time, or speed-up) is wider than this share of its value
    either side is flagged noisy (vit_dt/analysis/stats.py)."""
    selection = select(records)
    used = selection.used
    knobs = swept_knobs(used)      # once: each view below splits or labels its rows by the same settings
    series = build_series(used, knobs, noisy_share)
    notes = []
    capped = [r for r in used if _capped(r)]
    if capped:
        notes.append(f"{len(capped)} run(s) stopped their epochs at trainer.max_steps_per_epoch (world sizes "
                     f"{sorted({int(r['world_size']) for r in capped})}): such an epoch is steps x global batch "
                     "images, not the dataset, so strong-scaling numbers compare unequal work")
    for s in series:
        if len(s.points) < 2:
            notes.append(f"series '{s.key.short_label()}' has one world size only ({s.baseline_world_size}): "
                         "no speed-up to compute")
    return SweepAnalysis(selection=selection, series=series, runs=run_rows(used, series, knobs),
                         comm_share=comm_share_by_batch(used, knobs), accuracy=accuracy_by_batch(used, knobs),
                         layout_pairs=layout_pairs(series), breakdown=breakdown_rows(used, knobs),
                         epoch_curves=epoch_curves(used, knobs), notes=notes, knobs=knobs)
