"""The report as HTML (self-contained: the plots embedded as base64) and as Markdown (plots referenced from plots/):
the header, notes, plots and tables (vit_dt/analysis/report_tables.py)."""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from vit_dt.analysis.report_tables import Table

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


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.5em 0 1.5em}.warn{border:2px solid #c0392b;background:#fdecea;padding:0 1em;
margin:1em 0}.note{color:#555;font-size:13px}code{background:#f5f5f5;padding:0 3px}"""


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<h3>{html.escape(table.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
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
            f"Generated {meta['generated_at']} from the results store alone (offline).",
            *meta.get("provenance", [])]


def render_html(meta: dict, tables_: Sequence[Table], made: Mapping[str, Path], skipped: Mapping[str, str],
                notes: Sequence[str], warnings: Sequence[str] = ()) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(meta['title'])}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(meta['title'])}</h1>"]
    if warnings:       # first, before any number: these say which numbers not to trust
        parts.append("<div class='warn'><h2>Warnings: implausible or noisy numbers</h2><ul>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
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
    parts += [html_table(t) for t in tables_]
    parts.append("<p class='note'>How to read this report: docs/report.md.</p></body></html>")
    return "\n".join(parts)


def render_markdown(meta: dict, tables_: Sequence[Table], made: Mapping[str, Path], skipped: Mapping[str, str],
                    notes: Sequence[str], out_dir: Path, warnings: Sequence[str] = ()) -> str:
    lines = [f"# {meta['title']}", ""]
    if warnings:
        lines += ["## Warnings: implausible or noisy numbers", ""] + [f"- **{w}**" for w in warnings] + [""]
    lines += [f"{line}  " for line in _header_lines(meta)] + [""]
    lines += [f"> Note: {n}" for n in notes]
    lines += ["", "## Plots", ""]
    for name, path in made.items():
        lines += [f"### {PLOT_TITLES[name]}", "", f"![{name}]({Path(path).relative_to(out_dir).as_posix()})", ""]
    if skipped:
        lines += ["### Plots skipped", ""] + [f"- {PLOT_TITLES[n]}: {r}" for n, r in skipped.items()] + [""]
    lines += ["## Tables", ""] + [md_table(t) for t in tables_]
    lines.append("How to read this report: docs/report.md.")
    return "\n".join(lines) + "\n"
