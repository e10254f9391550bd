"""The scaling report of a sweep, built offline from its results store alone.

Writes into one directory: report.html (self-contained: the PNGs are embedded as base64), report.md (the same
tables, PNGs referenced from plots/), report.json (every number the report shows) and plots/*.png.
`--wandb` also logs a summary run with the same tables and images. docs/report.md explains every part.
"""
from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vit_dt import atomic
from vit_dt.analysis import checks, plots, plots_studies, scaling, studies
from vit_dt.analysis.model_view import model_section
from vit_dt.analysis.provenance_check import header_lines
from vit_dt.analysis.report_render import PLOT_TITLES, render_html, render_markdown
from vit_dt.analysis.report_tables import Table, tables
from vit_dt.analysis.stats import NOISY_SHARE
from vit_dt.records.result import RUN_DIR, SLURM_ENERGY

REPORT_DIR = "report"


class ReportError(ValueError):
    """A source that is not a results store or result.json, or a store with nothing to report."""


# ---------------------------------------------------------------- reading

def load_records(sources: Sequence[Path | str]) -> list[dict]:
    """Records of every source, in order: a sweep directory (its results.jsonl), a .jsonl store, a result.json
    or a run directory holding one (vit_dt.records.store.read_source)."""
    from vit_dt.records.store import SourceError, read_source

    if not sources:
        raise ReportError("no source given: pass a sweep directory, a results.jsonl or a result.json")
    records: list[dict] = []
    for source in sources:
        try:
            records += read_source(source)[0]
        except SourceError as error:
            raise ReportError(str(error)) from None
    return records


# ---------------------------------------------------------------- plots

SKIP_REASONS = {
    "epoch_time": "no series with two or more GPU counts",
    "speedup_efficiency": "no series with two or more GPU counts",
    "breakdown": "no run recorded the wall-clock breakdown (deepspeed.wall_clock_breakdown off, or DDP)",
    "comm_share": "no multi-rank run with a breakdown",
    "accuracy": "no run recorded an accuracy",
    "layouts": "no intra-node and inter-node runs of the same series at an equal GPU count (N > 1)",
    "epoch_curves": "no per-epoch records",
    "predicted": "no series with two or more GPU counts and a readable baseline run",
    "zero": "no ZeRO configuration with a step time (breakdown or epochs)",
    "per_rank": "no per-rank breakdown in the runs",
}


def study_section(records: Sequence[dict]) -> dict:
    """The ZeRO study and per-rank views of the completed records (vit_dt/analysis/studies.py)."""
    zero = studies.zero_rows(records)
    ranks = studies.per_rank_runs(records)
    return {"zero": zero if studies.is_zero_study(zero) else [],
            "peak_memory_meaning": studies.peak_memory_meaning(zero), "per_rank": ranks, "notable": studies.notable_runs(ranks), "notes": studies.straggler_notes(ranks)}


def make_plots(analysis: scaling.SweepAnalysis, model: dict, plot_dir: Path,
               study: dict | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    makers = {
        "epoch_time": lambda p: plots.plot_epoch_time(analysis.series, p),
        "speedup_efficiency": lambda p: plots.plot_speedup_efficiency(analysis.series, p),
        "breakdown": lambda p: plots.plot_breakdown(analysis.breakdown, p),
        "comm_share": lambda p: plots.plot_comm_share(analysis.comm_share, p),
        "accuracy": lambda p: plots.plot_accuracy(analysis.accuracy, p),
        "layouts": lambda p: plots.plot_layouts(analysis.layout_pairs, p),
        "epoch_curves": lambda p: plots.plot_epoch_curves(analysis.epoch_curves, p),
        "predicted": lambda p: plots.plot_predicted(model["comparisons"], p),
    }
    # The studies' plots (docs/studies/) only when the store holds such a study: a scaling sweep neither makes
    # nor skips them.
    if study and study["zero"]:
        makers["zero"] = lambda p: plots_studies.plot_zero_study(study["zero"], p, study["peak_memory_meaning"])
    if study and study["notable"]:
        makers["per_rank"] = lambda p: plots_studies.plot_per_rank(study["notable"], p)
    made, skipped = {}, {}
    for name, make in makers.items():
        path = make(plot_dir / f"{name}.png")
        if path is None:
            skipped[name] = SKIP_REASONS[name]
        else:
            made[name] = path
    return made, skipped


# ---------------------------------------------------------------- the whole report

@dataclass
class ReportOutput:
    out_dir: Path
    html: Path
    markdown: Path
    json: Path
    plots: dict[str, Path]
    skipped_plots: dict[str, str]
    wandb_dir: Path | None = None
    data: dict = field(default_factory=dict)


def build_report(sources: Sequence[Path | str], out_dir: Path | str | None = None, wandb: bool = False,
                 noisy_share: float = NOISY_SHARE, slurm_energy: Mapping[str, float] | None = None) -> ReportOutput:
    """Read the store(s), analyse, plot, render HTML + Markdown + JSON into out_dir (default SOURCE/report).
    `noisy_share`: the interval half-width, as a share of the value, above which a point is flagged noisy.
    `slurm_energy`: Slurm's ConsumedEnergy (J) by run directory, shown beside vit-dt's own energy figures."""
    sources = [Path(s) for s in sources]
    records = load_records(sources)
    for record in records if slurm_energy else ():
        joules = slurm_energy.get(str(record.get(RUN_DIR)))
        if joules is not None:
            record[SLURM_ENERGY] = joules
    if not records:
        raise ReportError(f"no records in {', '.join(map(str, sources))}: has any run of the sweep finished?")
    analysis = scaling.analyse(records, noisy_share)
    first = sources[0]
    out = Path(out_dir) if out_dir else (first if first.is_dir() else first.parent) / REPORT_DIR
    _make_out_dir(out)
    model = model_section(analysis.selection.used, analysis.series)
    study = study_section(analysis.selection.used)
    warnings = [f.text() for f in checks.findings(analysis, model)]
    made, skipped = make_plots(analysis, model, out / "plots", study)
    meta = {"title": f"vit-dt scaling report: {', '.join(s.resolve().name for s in sources)}",
            "sources": [str(s.resolve()) for s in sources], "records": len(records),
            "completed": len(analysis.selection.used), "not_completed": len(analysis.selection.not_completed),
            "superseded": len(analysis.selection.superseded),
            "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "provenance": header_lines(analysis.selection.used, analysis.knobs)}   # code, environment, mixes
    notes = analysis.notes + ([] if analysis.selection.used else ["no completed run: nothing to analyse"])
    notes += study["notes"]
    tables_ = tables(analysis, model, study)
    html_path = atomic.write_text(out / "report.html", render_html(meta, tables_, made, skipped, notes, warnings))
    md_path = atomic.write_text(out / "report.md", render_markdown(meta, tables_, made, skipped, notes, out,
                                                                        warnings))
    data = {"meta": meta, "warnings": warnings, **analysis.to_dict(), "model": model,
            "zero_study": study["zero"], "per_rank": study["per_rank"], "study_notes": study["notes"],
            "plots": {k: str(v.relative_to(out)) for k, v in made.items()}, "skipped_plots": skipped,
            "tables": [asdict(t) for t in tables_]}
    json_path = atomic.write_json(out / "report.json", data, indent=2, default=str, allow_nan=False)
    result = ReportOutput(out_dir=out, html=html_path, markdown=md_path, json=json_path, plots=made,
                          skipped_plots=skipped, data=data)
    if wandb:
        result.wandb_dir = log_to_wandb(records, tables_, made, meta, out)
    return result


def _make_out_dir(out: Path) -> None:
    """Create the output directory, or refuse (before anything is written) a path that cannot be one."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"output directory {out} is an existing file, not a directory; pass --out a directory "
                          "(an existing one, or a new path: it is created)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:     # a file where a parent directory should be, no permission, ...
        raise ReportError(f"cannot create the output directory {out}: {error.strerror or error}; "
                          "pass --out a directory you can write") from None


def log_to_wandb(records: Sequence[dict], tables_: Sequence[Table], made: Mapping[str, Path], meta: dict,
                 out_dir: Path) -> Path | None:
    """One W&B run (job_type "report") holding the report's tables as wandb.Table and its plots as images.

    Offline unless $WANDB_MODE (or the sweep's wandb.mode) says online; upload later with `vit-dt sync`.
    """
    import wandb as wb

    from vit_dt.records.wandb_run import DEFAULT_MODE, WandbRun

    wandb_cfg = next(((r.get("config") or {}).get("wandb") for r in records if (r.get("config") or {}).get("wandb")),
                     None) or {}
    mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode") or DEFAULT_MODE
    cfg = {"wandb": {"mode": mode, "project": wandb_cfg.get("project"), "entity": wandb_cfg.get("entity")},
           "report": {"sources": meta["sources"], "records": meta["records"]}}
    group = wandb_cfg.get("group") or Path(meta["sources"][0]).name
    run = WandbRun.start(cfg, out_dir, rank=0, group=group, job_type="report", tags=["report"],
                         name=f"report-{group}")
    if not run.active:
        return None
    payload: dict[str, Any] = {}
    for table in tables_:
        key = "tables/" + "".join(c if c.isalnum() else "_" for c in table.title.lower()).strip("_")[:80]
        # Series titles end in their swept settings, which the cut may drop: number a repeat, never overwrite.
        key = next(k for k in (key, *(f"{key}_{n}" for n in range(2, len(tables_) + 2))) if k not in payload)
        payload[key] = wb.Table(columns=table.columns, data=table.rows)
    for name, path in made.items():
        payload[f"plots/{name}"] = wb.Image(str(path), caption=PLOT_TITLES[name])
    run.log(payload, step=0)
    run.summary({"records": meta["records"], "completed": meta["completed"],
                 "not_completed": meta["not_completed"]})
    directory = run.dir
    run.finish(0)
    return directory
