"""The scaling report of a sweep, built offline from its results store alone.

Writes into one directory: report.html (self-contained: the PNGs are embedded as base64), report.md (the same
tables, PNGs referenced from plots/), report.json (every number the report shows) and plots/*.png.
`--wandb` also logs a summary run with the same tables and images. docs/report.md explains every part.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vit_dt import atomic
from vit_dt.analysis import plots, scaling, studies
from vit_dt.analysis import scaling_model as sm

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


# ---------------------------------------------------------------- the model next to the measurements

def _baseline_record(records: Sequence[dict], series: scaling.Series) -> dict | None:
    """The latest completed run at the series' baseline world size (a borrowed 1-rank run included)."""
    wanted = set(series.points[0].run_dirs)
    matches = [r for r in records if str(r.get("run_dir") or "") in wanted
               and int(r["world_size"]) == series.baseline_world_size]
    return matches[-1] if matches else None


def _gpus_per_node(series: scaling.Series) -> int | None:
    return max(p.ranks_per_node for p in series.points) if series.key.layout.startswith("grid") else None


def model_section(records: Sequence[dict], series: Sequence[scaling.Series]) -> dict:
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


# ---------------------------------------------------------------- tables

def _fmt(value: Any, how: str = "") -> str:
    if value is None:
        return "—"
    if how == "pct":
        return f"{100 * value:.1f}%"
    if how == "s":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if how == "x":
        return f"{value:.2f}"
    if how == "int":
        return f"{int(value)}"
    if how == "gbps":
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


Column = tuple[str, Callable[[Any], Any], str]


def _table(title: str, items: Sequence[Any], columns: Sequence[Column], note: str = "") -> Table:
    return Table(title, [c[0] for c in columns], [[_fmt(get(item), how) for _, get, how in columns] for item in items],
                 note)


def _swept_column(analysis: scaling.SweepAnalysis) -> list[Column]:
    """A column of the swept settings' values (scaling.swept_knobs), headed by their names; none if none."""
    return [(", ".join(analysis.knobs), lambda r: r["knobs"], "")] if analysis.knobs else []


def _shape(row: Any) -> str:
    return f"{row.nodes}×{row.ranks_per_node}"


def _mem(value: float | None, unit: str) -> float | None:
    return None if value is None else value * (1024.0 if unit == "MiB" else 1.0)


def study_tables(study: Mapping[str, Any]) -> list[Table]:
    """ZeRO stages side by side; the slowest rank of every multi-rank run; each rank of the notable runs."""
    out = []
    zero = study.get("zero") or []
    if zero:
        unit, _ = plots._memory_unit([r.get("model_states_gb") for r in zero])
        out.append(_table(f"ZeRO stages (model states in {unit} per rank)", zero, [
            ("ZeRO", lambda r: r["label"], ""), ("model", lambda r: r["model"], ""),
            ("GPUs", lambda r: r["world_size"], "int"), ("micro-batch", lambda r: r["micro_batch"], "int"),
            ("reduce bucket", lambda r: r["reduce_bucket_size"], ""),
            ("step (ms)", lambda r: r["step_time_ms"], ""), ("all-reduce (ms)", lambda r: r["allreduce_ms"], ""),
            ("comm share", lambda r: r["comm_share"], "pct"), ("img/s", lambda r: r["img_per_s"], ""),
            ("params", lambda r: _mem(r["params_gb"], unit), ""),
            ("gradients", lambda r: _mem(r["gradients_gb"], unit), ""),
            ("optimizer states", lambda r: _mem(r["optimizer_states_gb"], unit), ""),
            ("fp32 master", lambda r: _mem(r["master_params_gb"], unit), ""),
            ("model states", lambda r: _mem(r["model_states_gb"], unit), ""),
            ("live tensors (GiB)", lambda r: r["live_tensors_gb"], ""),
            ("peak mem (GiB)", lambda r: r["peak_mem_gb"], ""), ("val acc", lambda r: r["final_val_acc"], "pct")],
            "Model states: measured from the engine's tensors over the first optimizer steps (the largest rank; "
            "gradients at their peak in backward). Live tensors: every tensor storage alive in backward or after "
            f"the step, DeepSpeed's buckets included. Peak mem: {study.get('peak_memory_meaning')}. All-reduce: "
            "DeepSpeed's bwd_allreduce timer (docs/studies/zero.md says what it covers per stage)."))
    runs = study.get("per_rank") or []
    if runs:
        out.append(_table("Slowest rank per multi-rank run", runs, [
            ("run", lambda r: r["label"], ""), ("slowest rank", lambda r: r["slowest_rank"], "int"),
            ("host", lambda r: r["slowest_host"], ""), ("GPU", lambda r: r["slowest_gpu"], ""),
            ("its compute (ms)", lambda r: r["slowest_compute_ms"], ""),
            ("others, median (ms)", lambda r: r["others_median_compute_ms"], ""),
            ("skew", lambda r: r["skew"], "pct"), ("straggler", lambda r: r["flagged"], ""),
            ("GPU mix", lambda r: ", ".join(f"{k}×{v}" for k, v in sorted(r["gpu_mix"].items())), "")],
            "Slowest: the rank with the longest compute (fwd + bwd + optimizer step); skew: how much longer than the "
            "median of the others; straggler: skew above the run's threshold."))
    for run in study.get("notable") or []:
        out.append(_table(f"Per-rank step time: {run['label']}", run["ranks"], [
            ("rank", lambda x: x["rank"], "int"), ("host", lambda x: x.get("host"), ""),
            ("Slurm node", lambda x: x.get("node"), ""),
            ("GPU", lambda x: x.get("gpu_model") or x.get("gpu_name") or x.get("device"), ""),
            ("GPU from", lambda x: x.get("gpu_model_source"), ""),
            ("compute (ms)", lambda x: x["compute_ms"], ""), ("all-reduce (ms)", lambda x: x["allreduce_ms"], ""),
            ("step (ms)", lambda x: x["step_time_ms"], ""),
            ("slowest", lambda x: x["rank"] == run["slowest_rank"], "")],
            f"Slowest: {run['slowest']}."))
    return out


def tables(analysis: scaling.SweepAnalysis, model: dict, study: Mapping[str, Any] | None = None) -> list[Table]:
    out = [_table("Runs", analysis.runs, [
        ("series", lambda r: r.series, ""), ("GPUs", lambda r: r.world_size, "int"),
        ("nodes×GPUs", _shape, ""), ("micro-batch", lambda r: r.micro_batch, "int"),
        ("global batch", lambda r: r.global_batch, "int"), ("train samples", lambda r: r.train_samples, "int"),
        ("epoch time (s)", lambda r: r.epoch_time_s, "s"), ("img/s", lambda r: r.img_per_s, ""),
        ("speed-up", lambda r: r.speedup, "x"), ("efficiency", lambda r: r.efficiency, "pct"),
        ("all-reduce share", lambda r: r.comm_share, "pct"), ("data wait", lambda r: r.data_wait_share, "pct"),
        ("val acc", lambda r: r.final_val_acc, "pct"), ("MFU", lambda r: r.mfu, "pct"),
        ("straggler", lambda r: r.straggler, "")],
        "Completed runs, latest per sweep point. Epoch time: mean over epochs after the first. Speed-up and "
        "efficiency relative to the run's series baseline (its smallest GPU count).")]
    for s in analysis.series:
        out.append(_table(f"Series: {s.label}", s.points, [
            ("GPUs", lambda p: p.world_size, "int"), ("nodes×GPUs", _shape, ""),
            ("global batch", lambda p: p.global_batch, "int"), ("epoch time (s)", lambda p: p.epoch_time_s, "s"),
            ("ideal (s)", lambda p: p.ideal_epoch_time_s, "s"), ("speed-up", lambda p: p.speedup, "x"),
            ("efficiency", lambda p: p.efficiency, "pct"), ("all-reduce share", lambda p: p.comm_share, "pct"),
            ("val acc", lambda p: p.final_val_acc, "pct"), ("runs", lambda p: p.repeats, "int"),
            ("borrowed", lambda p: p.borrowed, "")],
            f"{s.kind} scaling; baseline N1={s.baseline_world_size}, T1={s.baseline_epoch_time_s:.2f} s. "
            + ("speed-up T1/TN, efficiency T1·N1/(TN·N), ideal T1·N1/N." if s.kind == "strong" else
               "scaled speed-up (N/N1)·T1/TN, efficiency T1/TN, ideal T1 (flat).")))
    if analysis.comm_share:
        out.append(_table("All-reduce share vs batch size", analysis.comm_share, [
            ("GPUs", lambda r: r["world_size"], "int"), ("layout", lambda r: r["layout"], ""),
            *_swept_column(analysis), ("micro-batch", lambda r: r["micro_batch"], "int"), ("global batch", lambda r: r["global_batch"], "int"),
            ("all-reduce (ms/step)", lambda r: r["allreduce_ms"], ""),
            ("step (ms)", lambda r: r["step_time_ms"], ""), ("share", lambda r: r["comm_share"], "pct")]))
    if analysis.layout_pairs:
        out.append(_table("Intra-node vs inter-node at equal GPU count", analysis.layout_pairs, [
            ("series", lambda r: r["family"], ""), ("GPUs", lambda r: r["world_size"], "int"),
            ("intra epoch (s)", lambda r: r["intra_epoch_time_s"], "s"),
            ("inter epoch (s)", lambda r: r["inter_epoch_time_s"], "s"),
            ("intra eff.", lambda r: r["intra_efficiency"], "pct"), ("inter eff.", lambda r: r["inter_efficiency"], "pct"),
            ("inter / intra", lambda r: r["inter_over_intra"], "x")]))
    if analysis.accuracy:
        out.append(_table("Accuracy vs global batch", analysis.accuracy, [
            ("scaling", lambda r: r["scaling"], ""), *_swept_column(analysis),
            ("global batch", lambda r: r["global_batch"], "int"), ("GPUs", lambda r: r["world_size"], "int"), ("epochs", lambda r: r["epochs"], "int"),
            ("steps/epoch", lambda r: r["steps_per_epoch"], "int"), ("val acc", lambda r: r["final_val_acc"], "pct"),
            ("train acc", lambda r: r["final_train_acc"], "pct")]))
    calibration = model["calibration"]
    ic = calibration["interconnect"]
    out.append(Table("Scaling model: interconnect", ["", "intra-node Gb/s", "inter-node Gb/s", "latency (us)", "fitted"],
                     [["prior (cluster profile)", _fmt(model["prior_interconnect"]["intra_node_gbps"], "gbps"),
                       _fmt(model["prior_interconnect"]["inter_node_gbps"], "gbps"),
                       _fmt(model["prior_interconnect"]["latency_us"], "gbps"), ""],
                      ["calibrated", _fmt(ic["intra_node_gbps"], "gbps"), _fmt(ic["inter_node_gbps"], "gbps"),
                       _fmt(ic["latency_us"], "gbps"), ", ".join(calibration["fitted"]) or "nothing (no data)"]],
                     f"Calibrated on {len(calibration['points'])} multi-rank run(s). " + " ".join(model["notes"])))
    for c in model["comparisons"]:
        out.append(_table(f"Scaling model vs measured: {c['label']}", c["points"], [
            ("GPUs", lambda r: r["world_size"], "int"), ("measured (s)", lambda r: r["measured_epoch_s"], "s"),
            ("model (s)", lambda r: r["predicted_epoch_s"], "s"),
            ("model, overlap (s)", lambda r: r["predicted_overlap_epoch_s"], "s"),
            ("error", lambda r: r["error"], "pct"), ("measured eff.", lambda r: r["measured_efficiency"], "pct"),
            ("model eff.", lambda r: r["predicted_efficiency"], "pct"),
            ("measured all-reduce", lambda r: r["measured_comm_share"], "pct"),
            ("model all-reduce", lambda r: r["predicted_allreduce_share"], "pct")],
            f"profile from {c['profile_from'] or 'the baseline run'}; error = (model - measured) / measured"))
    out += study_tables(study or {})
    left_out = analysis.selection.not_completed
    if left_out:
        out.append(_table("Runs left out of the numbers (not completed)", left_out, [
            ("point", lambda r: r.get("point"), ""), ("status", lambda r: r.get("status"), ""),
            ("GPUs", lambda r: r.get("world_size"), ""), ("nodes", lambda r: r.get("nodes"), ""),
            ("layout", lambda r: r.get("layout"), ""), ("error", lambda r: (r.get("error") or "")[:120], ""),
            ("run dir", lambda r: r.get("run_dir"), "")]))
    return out


# ---------------------------------------------------------------- rendering

PLOT_TITLES = {
    "epoch_time": "Epoch time vs GPUs, with each series' ideal line",
    "speedup_efficiency": "Speed-up and efficiency",
    "breakdown": "Time breakdown per step, per batch size and GPU count",
    "comm_share": "Communication share vs batch size",
    "accuracy": "Accuracy vs global batch",
    "layouts": "Intra-node vs inter-node at equal GPU count",
    "epoch_curves": "Loss and accuracy per epoch",
    "predicted": "Scaling model next to the measurements",
    "zero": "ZeRO stages: memory per rank against step time",
    "per_rank": "Per-rank step time: the slowest rank, its host and GPU",
}
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
        makers["zero"] = lambda p: plots.plot_zero_study(study["zero"], p, study["peak_memory_meaning"])
    if study and study["notable"]:
        makers["per_rank"] = lambda p: plots.plot_per_rank(study["notable"], p)
    made, skipped = {}, {}
    for name, make in makers.items():
        path = make(plot_dir / f"{name}.png")
        if path is None:
            skipped[name] = SKIP_REASONS[name]
        else:
            made[name] = path
    return made, skipped


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.5em 0 1.5em}.note{color:#555;font-size:13px}code{background:#f5f5f5;padding:0 3px}"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<h3>{html.escape(table.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(map(_md_cell, table.columns)) + " |")
    lines.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _header_lines(meta: dict) -> list[str]:
    return [f"Sources: {', '.join(meta['sources'])}",
            f"Records: {meta['records']} read, {meta['completed']} completed and used, "
            f"{meta['not_completed']} not completed, {meta['superseded']} superseded by a rerun of the same point.",
            f"Generated {meta['generated_at']} from the results store alone (offline)."]


def render_html(meta: dict, tables_: Sequence[Table], made: Mapping[str, Path], skipped: Mapping[str, str],
                notes: Sequence[str]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(meta['title'])}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(meta['title'])}</h1>"]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in _header_lines(meta)]
    parts += [f"<p class='note'>Note: {html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Plots</h2>")
    for name, path in made.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(PLOT_TITLES[name])}</h3><img alt='{name}' src='data:image/png;base64,{data}'>")
    if skipped:
        parts.append("<h3>Plots skipped</h3><ul>" + "".join(
            f"<li>{html.escape(PLOT_TITLES[n])}: {html.escape(r)}</li>" for n, r in skipped.items()) + "</ul>")
    parts.append("<h2>Tables</h2>")
    parts += [_html_table(t) for t in tables_]
    parts.append("<p class='note'>How to read this report: docs/report.md.</p></body></html>")
    return "\n".join(parts)


def render_markdown(meta: dict, tables_: Sequence[Table], made: Mapping[str, Path], skipped: Mapping[str, str],
                    notes: Sequence[str], out_dir: Path) -> str:
    lines = [f"# {meta['title']}", ""] + [f"{line}  " for line in _header_lines(meta)] + [""]
    lines += [f"> Note: {n}" for n in notes]
    lines += ["", "## Plots", ""]
    for name, path in made.items():
        lines += [f"### {PLOT_TITLES[name]}", "", f"![{name}]({Path(path).relative_to(out_dir).as_posix()})", ""]
    if skipped:
        lines += ["### Plots skipped", ""] + [f"- {PLOT_TITLES[n]}: {r}" for n, r in skipped.items()] + [""]
    lines += ["## Tables", ""] + [_md_table(t) for t in tables_]
    lines.append("How to read this report: docs/report.md.")
    return "\n".join(lines) + "\n"


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


def build_report(sources: Sequence[Path | str], out_dir: Path | str | None = None, wandb: bool = False) -> ReportOutput:
    """Read the store(s), analyse, plot, render HTML + Markdown + JSON into out_dir (default SOURCE/report)."""
    sources = [Path(s) for s in sources]
    records = load_records(sources)
    if not records:
        raise ReportError(f"no records in {', '.join(map(str, sources))}: has any run of the sweep finished?")
    analysis = scaling.analyse(records)
    first = sources[0]
    out = Path(out_dir) if out_dir else (first if first.is_dir() else first.parent) / REPORT_DIR
    _make_out_dir(out)
    model = model_section(analysis.selection.used, analysis.series)
    study = study_section(analysis.selection.used)
    made, skipped = make_plots(analysis, model, out / "plots", study)
    meta = {"title": f"vit-dt scaling report: {', '.join(s.resolve().name for s in sources)}",
            "sources": [str(s.resolve()) for s in sources], "records": len(records),
            "completed": len(analysis.selection.used), "not_completed": len(analysis.selection.not_completed),
            "superseded": len(analysis.selection.superseded),
            "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    notes = analysis.notes + ([] if analysis.selection.used else ["no completed run: nothing to analyse"])
    notes += study["notes"]
    tables_ = tables(analysis, model, study)
    html_path = atomic.write_text(out / "report.html", render_html(meta, tables_, made, skipped, notes))
    md_path = atomic.write_text(out / "report.md", render_markdown(meta, tables_, made, skipped, notes, out))
    data = {"meta": meta, **analysis.to_dict(), "model": model,
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

    from vit_dt.records.wandb_run import WandbRun

    wandb_cfg = next(((r.get("config") or {}).get("wandb") for r in records if (r.get("config") or {}).get("wandb")),
                     None) or {}
    mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode") or "offline"
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
