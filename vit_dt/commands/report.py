"""`vit-dt report [SWEEP_DIR ...] [--out DIR] [--wandb]`: the scaling report, offline, from the store."""
from __future__ import annotations

import argparse
import sys

HELP_EPILOG = """Reads SWEEP_DIR/results.jsonl (no network), and Slurm's ConsumedEnergy of the sweep's jobs where sacct
answers and the cluster gathers energy. Writes report.html (self-contained),
report.md, report.json and plots/*.png into --out (default: the first SWEEP_DIR/report) and prints the
HTML report's path. Several sweep directories are merged (e.g. an intra-node and an inter-node sweep).
--wandb also logs a summary run (offline unless WANDB_MODE=online). How to read it: docs/report.md."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vit-dt report", description="Scaling report of a sweep.", epilog=HELP_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dirs", nargs="*", metavar="SWEEP_DIR",
                   help="sweep directory (holding results.jsonl), a results.jsonl file or a result.json; "
                        "default: the latest sweep (<out_dir>/sweeps/latest)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--wandb", action="store_true", help="also log the report as a W&B run (offline by default)")
    p.add_argument("--noisy-share", default="10%", metavar="SHARE",
                   help="flag a point noisy when its 95%% interval is wider than SHARE of its value either side "
                        "(default 10%%)")
    from vit_dt.commands import remote

    remote.add_option(p, "pulled here first, then reported here: the results")
    return p


def slurm_energy_by_run(sources: list[str]) -> dict[str, float]:
    """Slurm's ConsumedEnergy (J) of each point's job, by run directory, for the sources that are sweep
    directories; empty where Slurm does not answer or gathers no energy (the report then shows —)."""
    from pathlib import Path

    from vit_dt.slurm.manifest import manifest_path
    from vit_dt.slurm.status import sweep_status

    energy: dict[str, float] = {}
    for source in map(Path, sources):
        if not manifest_path(source).is_file():
            continue
        try:
            _, rows = sweep_status(source)
        except Exception:    # a report must not fail for want of accounting: it is an extra column
            continue
        energy.update({row.run_dir: row.slurm_energy_j for row in rows if row.slurm_energy_j is not None})
    return energy


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.remote is not None:
        from vit_dt.commands import remote

        if args.sweep_dirs:
            print("vit-dt report: --remote NAME names the sweep; drop SWEEP_DIR", file=sys.stderr)
            return 2
        copy = remote.pulled("report", args.remote)
        if copy is None:
            return 2
        args.sweep_dirs = [copy]
    if not args.sweep_dirs:
        from vit_dt.commands.options import latest_sweep_or_report

        found = latest_sweep_or_report("report")
        if found is None:
            return 2
        args.sweep_dirs = [found]
    from vit_dt.analysis.report import ReportError, build_report
    from vit_dt.analysis.stats import parse_share

    try:
        noisy_share = parse_share(args.noisy_share)
    except ValueError as error:
        print(f"vit-dt report: --noisy-share {error}", file=sys.stderr)
        return 2
    try:
        result = build_report(args.sweep_dirs, out_dir=args.out, wandb=args.wandb, noisy_share=noisy_share,
                              slurm_energy=slurm_energy_by_run(args.sweep_dirs))
    except ReportError as error:
        print(f"vit-dt report: {error}", file=sys.stderr)
        return 2
    for name, reason in result.skipped_plots.items():
        print(f"skipped plot {name}: {reason}", file=sys.stderr)
    print(f"markdown: {result.markdown}", file=sys.stderr)
    if args.wandb:
        print(f"W&B run: {result.wandb_dir or 'not written (W&B disabled or failed; see the warning above)'}",
              file=sys.stderr)
    for warning in result.data.get("warnings") or []:
        print(warning, file=sys.stderr)
    print(result.html)
    return 0
