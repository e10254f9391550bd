"""`vit-dt results [SWEEP_DIR|RESULT_JSON] [--csv FILE] [--all] [--noisy-share 10%]`: a sweep's results store (or one
run's result.json; default: the latest sweep) as a table, optionally as CSV; where points were repeated, each point's mean, spread and 95%
interval; and the warnings of implausible or noisy numbers (vit_dt/analysis/checks.py), as the report shows them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vit_dt.records.store import SOURCES, SourceError, latest_by_point, read_source
from vit_dt.records.table import TABLE_COLUMNS, settings_text, sorted_records, table_row, to_csv, varying_settings
from vit_dt.textable import format_columns

HEADERS = {"point": "point", "status": "status", "world_size": "world", "nodes": "nodes",
           "global_batch": "global batch", "epoch_time_s": "epoch s", "img_per_s": "img/s",
           "comm_share": "comm share", "final_val_acc": "val acc", "code": "code",
           "settings": "settings"}


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "comm_share":
        return f"{100 * value:.1f}%"
    if column == "final_val_acc":
        return f"{value:.4f}"
    if column == "epoch_time_s":
        return f"{value:.2f}"
    if column == "img_per_s":
        return f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Aligned columns; a `settings` column (what the points differ in) where the rows carry one."""
    columns = [*TABLE_COLUMNS, *(["settings"] if any(row.get("settings") for row in rows) else [])]
    cells = [[HEADERS[c] for c in columns]] + [[_cell(c, row.get(c)) for c in columns] for row in rows]
    numbers = {i for i, c in enumerate(columns) if c not in ("status", "code", "settings")}
    return "\n".join(format_columns(cells, right=numbers, rule_after_first=True, strip=True))


def csv_path_problem(path: Path) -> str | None:
    """Why `--csv path` cannot be written as a file (checked before anything is printed), or None."""
    if path.is_dir():
        return f"--csv {path} is a directory; pass a file path, e.g. --csv {path / 'results.csv'}"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"--csv {path}: {parent} is a file, not a directory"
    return None


def _interval(low, high, digits: str) -> str:
    return "-" if low is None or high is None else f"[{low:{digits}}, {high:{digits}}]"


def format_points(series) -> str:
    """Per point of each series (repeats pooled): runs, epoch time mean / std / min-max / 95% interval, img/s,
    speed-up and efficiency with their intervals (the baseline's spread included), noisy."""
    cells = [["series", "world", "runs", "epoch s", "std", "min-max", "95% CI", "img/s", "speed-up", "95% CI",
              "efficiency", "95% CI", "noisy"]]
    for s in series:
        for p in s.points:
            t = p.epoch_time or {}
            std = t.get("std")
            cells.append([s.key.short_label(), str(p.world_size), str(p.repeats), f"{p.epoch_time_s:.2f}",
                          "-" if std is None else f"{std:.2f}", f"{t.get('min', 0):.2f}-{t.get('max', 0):.2f}",
                          _interval(t.get("ci_low"), t.get("ci_high"), ".2f"),
                          "-" if p.img_per_s is None else f"{p.img_per_s:.1f}", f"{p.speedup:.2f}",
                          _interval(*p.speedup_ci, ".2f"), f"{100 * p.efficiency:.1f}%",
                          _interval(*(None if v is None else 100 * v for v in p.efficiency_ci), ".1f"),
                          "noisy" if p.noisy else ""])
    numbers = set(range(1, 12))
    return "\n".join(format_columns(cells, right=numbers, rule_after_first=True, strip=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vit-dt results", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, nargs="?", metavar="SWEEP_DIR",
                        help=f"{SOURCES}; default: the latest sweep (<out_dir>/sweeps/latest)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")
    parser.add_argument("--all", action="store_true",
                        help="every record, also those a requeued or re-run point superseded")
    parser.add_argument("--noisy-share", default="10%", metavar="SHARE",
                        help="flag a point noisy when its 95%% interval is wider than SHARE of its value either "
                             "side (default 10%%)")
    from vit_dt.commands import remote

    remote.add_option(parser, "pulled here first: the results")
    args = parser.parse_args(argv)
    if args.remote is not None:
        if args.sweep_dir is not None:
            print("vit-dt results: --remote NAME names the sweep; drop SWEEP_DIR", file=sys.stderr)
            return 2
        copy = remote.pulled("results", args.remote)
        if copy is None:
            return 2
        args.sweep_dir = Path(copy)
    from vit_dt.analysis.stats import parse_share

    try:
        noisy_share = parse_share(args.noisy_share)
    except ValueError as error:
        print(f"vit-dt results: --noisy-share {error}", file=sys.stderr)
        return 2

    problem = csv_path_problem(args.csv) if args.csv is not None else None
    if problem:
        print(f"vit-dt results: {problem}", file=sys.stderr)
        return 2
    if args.sweep_dir is None:
        from vit_dt.commands.options import latest_sweep_or_report

        found = latest_sweep_or_report("results")
        if found is None:
            return 2
        args.sweep_dir = Path(found)
    try:
        records, path = read_source(args.sweep_dir)
    except SourceError as error:
        print(f"vit-dt results: {error}", file=sys.stderr)
        return 1
    records = records if args.all else list(latest_by_point(records).values())
    varying = varying_settings(records)
    rows = [table_row(r) | {"settings": settings_text(r, varying)} for r in sorted_records(records)]
    print(format_table(rows))
    print(f"\n{len(rows)} record(s) from {path}")
    _print_points_and_warnings(records, noisy_share)
    if args.csv:
        try:
            print(f"CSV written to {to_csv(records, args.csv)}")
        except OSError as error:     # a file where its directory should be, no permission, ...
            print(f"vit-dt results: cannot write --csv {args.csv}: {error.strerror or error}", file=sys.stderr)
            return 2
    return 0


def _print_points_and_warnings(records: list, noisy_share: float) -> None:
    """The per-point table where a point has repeats, then the warnings (none: nothing printed)."""
    from vit_dt.analysis.checks import findings
    from vit_dt.analysis.model_view import model_section
    from vit_dt.analysis.scaling import analyse

    analysis = analyse(records, noisy_share)
    if any(p.repeats > 1 for s in analysis.series for p in s.points):
        print("\nPer point over its repeats (mean, sample std, min-max, 95% Student-t interval; speed-up and "
              "efficiency with the baseline's spread):")
        print(format_points(analysis.series))
    warnings = findings(analysis, model_section(analysis.selection.used, analysis.series))
    for finding in warnings:
        print(f"\n{finding.text()}")


if __name__ == "__main__":
    raise SystemExit(main())
