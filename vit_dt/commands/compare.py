"""`vit-dt compare BASE NEW [--tolerance 5%] [--metric img_per_s|epoch_time|efficiency] [--out DIR]`: two sweeps of
the same points, point by point, with a verdict read from the intervals; exit status 1 on a regression beyond the
tolerance (for a cluster admin or CI after an upgrade: a new NCCL, driver or DeepSpeed)."""
from __future__ import annotations

import argparse
import sys

EPILOG = """BASE and NEW: a sweep directory (its results.jsonl), a .jsonl store or a result.json. Points are matched
by their settings and GPU count, not their index. Per point: the metric on each side (mean and 95% interval over its
repeats), NEW/BASE with its interval, and the verdict: slower when the whole interval is a loss beyond the tolerance,
faster when a gain beyond it, same otherwise. Exit status: 0 no regression, 1 a point slower beyond the tolerance,
2 bad input. --out DIR also writes compare.html, compare.md and compare.json. How to read it: docs/report.md."""


def parser() -> argparse.ArgumentParser:
    from vit_dt.analysis.compare import DEFAULT_TOLERANCE, METRICS

    p = argparse.ArgumentParser(prog="vit-dt compare", description="Compare two sweeps of the same points.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="the reference sweep")
    p.add_argument("new", metavar="NEW", help="the sweep to judge against it")
    p.add_argument("--tolerance", default=f"{100 * DEFAULT_TOLERANCE:g}%", metavar="SHARE",
                   help="change that still counts as the same, e.g. 5%% or 0.05 (default %(default)s)")
    p.add_argument("--metric", default="img_per_s", metavar="|".join(METRICS),
                   help="what to compare (default img_per_s)")
    p.add_argument("--out", metavar="DIR", help="also write compare.html, compare.md and compare.json into DIR")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from vit_dt.analysis import compare_report
    from vit_dt.analysis.compare import METRICS, CompareError, compare
    from vit_dt.analysis.report import ReportError, load_records
    from vit_dt.analysis.stats import parse_share

    if args.metric not in METRICS:
        print(f"vit-dt compare: --metric {args.metric!r} is unknown; valid: {', '.join(METRICS)}", file=sys.stderr)
        return 2
    try:
        tolerance = parse_share(args.tolerance)
    except ValueError as error:
        print(f"vit-dt compare: --tolerance {error}", file=sys.stderr)
        return 2
    try:
        comparison = compare(load_records([args.base]), load_records([args.new]), args.metric, tolerance)
    except (ReportError, CompareError) as error:
        print(f"vit-dt compare: {error}", file=sys.stderr)
        return 2
    print(compare_report.text(comparison))
    if args.out:
        try:
            paths = compare_report.write(comparison, args.base, args.new, args.out)
        except OSError as error:
            print(f"vit-dt compare: cannot write --out {args.out}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"written: {', '.join(map(str, paths))}", file=sys.stderr)
    return 1 if comparison.regressions else 0
