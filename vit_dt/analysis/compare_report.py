"""`vit-dt compare`'s output: a plain-text table for the terminal, and the same as a section in the report's style
(HTML and Markdown, vit_dt/analysis/report_render.py) plus compare.json."""
from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

from vit_dt import atomic
from vit_dt.analysis.compare import Comparison, Row
from vit_dt.analysis.report_render import CSS, html_table, md_table
from vit_dt.analysis.report_tables import Table
from vit_dt.textable import format_columns

UNITS = {"img_per_s": "img/s", "epoch_time": "s", "efficiency": ""}


def _num(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if metric == "efficiency" else f"{value:.3g}"


def _ci(pair: tuple, metric: str = "") -> str:
    low, high = pair
    return "-" if low is None or high is None else f"[{_num(low, metric)}, {_num(high, metric)}]"


def _cells(row: Row, metric: str) -> list[str]:
    return [row.series, str(row.world_size), f"{row.base_runs}/{row.new_runs}", _num(row.base, metric),
            _ci(row.base_ci, metric), _num(row.new, metric), _ci(row.new_ci, metric), f"{row.ratio:.3f}",
            "-" if row.ratio_ci[0] is None else f"[{row.ratio_ci[0]:.3f}, {row.ratio_ci[1]:.3f}]", row.verdict,
            row.note]


def columns(metric: str) -> list[str]:
    unit = f" ({UNITS[metric]})" if UNITS[metric] else ""
    return ["series", "GPUs", "runs base/new", f"BASE {metric}{unit}", "95% CI", f"NEW {metric}{unit}", "95% CI",
            "NEW/BASE", "95% CI", "verdict", "note"]


def summary(comparison: Comparison) -> str:
    counts = {v: sum(r.verdict == v for r in comparison.rows) for v in ("faster", "slower", "same")}
    text = (f"{len(comparison.rows)} point(s) compared on {comparison.metric}, tolerance "
            f"{100 * comparison.tolerance:g}%: {counts['slower']} slower, {counts['faster']} faster, "
            f"{counts['same']} same")
    return text + (f"; REGRESSION beyond tolerance at {len(comparison.regressions)} point(s)"
                   if comparison.regressions else "")


def _left_out(comparison: Comparison) -> list[str]:
    out = []
    if comparison.only_base:
        out.append(f"only in BASE (not compared): {'; '.join(comparison.only_base)}")
    if comparison.only_new:
        out.append(f"only in NEW (not compared): {'; '.join(comparison.only_new)}")
    return out


def text(comparison: Comparison) -> str:
    cells = [columns(comparison.metric)] + [_cells(r, comparison.metric) for r in comparison.rows]
    lines = format_columns(cells, right=set(range(1, 9)), rule_after_first=True, strip=True, pad_last=False)
    return "\n".join([*lines, "", summary(comparison), *_left_out(comparison)])


def table(comparison: Comparison) -> Table:
    return Table(f"Compare: {comparison.metric}, NEW against BASE", columns(comparison.metric),
                 [_cells(r, comparison.metric) for r in comparison.rows],
                 "Points matched by their settings and GPU count. Verdict from the 95% interval of NEW/BASE: slower "
                 "when the whole interval is a loss beyond the tolerance, faster when a gain beyond it, else same "
                 "(docs/report.md).")


def write(comparison: Comparison, base: str, new: str, out_dir: Path) -> tuple[Path, Path, Path]:
    """compare.html (self-contained), compare.md and compare.json in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"vit-dt compare: {Path(new).name} against {Path(base).name}"
    header = [f"BASE: {base}", f"NEW: {new}", summary(comparison), *_left_out(comparison),
              f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} from the stores alone."]
    section = table(comparison)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}"
            f"</style></head><body><h1>{html.escape(title)}</h1>"
            + "".join(f"<p class='note'>{html.escape(line)}</p>" for line in header)
            + html_table(section) + "<p class='note'>How to read this: docs/report.md.</p></body></html>\n")
    markdown = "\n".join([f"# {title}", "", *(f"{line}  " for line in header), "", md_table(section),
                          "How to read this: docs/report.md.", ""])
    return (atomic.write_text(out_dir / "compare.html", page), atomic.write_text(out_dir / "compare.md", markdown),
            atomic.write_json(out_dir / "compare.json", {"base": base, "new": new, **comparison.to_dict()},
                              indent=2, allow_nan=False))
