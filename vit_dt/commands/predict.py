"""`vit-dt predict [--from SWEEP_DIR|RESULT_JSON] ...`: the scaling model's epoch time, speed-up and efficiency."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from vit_dt.analysis import scaling_model as sm
from vit_dt.analysis.series import select
from vit_dt.analysis.swept_knobs import swept_knobs
from vit_dt.textable import format_columns

EPILOG = """The compute profile comes from the completed run with the fewest ranks in --from (best: a 1-GPU run);
when several such runs differ in their settings (a sweep over batch sizes, optimizers, ...), --where picks one,
and --micro-batch prefers the runs of that micro-batch. Repeats of one setting give the latest. The interconnect is --cluster's (conf/cluster/<PROFILE>.yaml), else the runs' own cluster profile; it is
calibrated on the multi-rank runs of that same cluster unless --no-calibrate. Examples:
  vit-dt predict --from outputs/sweeps/20260101-120000 --gpus 1,2,4,8,16
  vit-dt predict --from run/result.json --cluster vaughan --layout inter --gpus 8,16,32 --json
  vit-dt predict --from outputs/sweeps/latest --where optimizer.master_update=fused --micro-batch 64
The model and its assumptions: docs/scaling-model.md."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vit-dt predict", description="Predict scaling from a measured profile.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", metavar="SWEEP_DIR|RESULT_JSON",
                   help="a sweep directory (results.jsonl), a results.jsonl or one result.json; default: the latest "
                        "sweep (<out_dir>/sweeps/latest)")
    p.add_argument("--cluster", metavar="PROFILE", help="cluster profile whose interconnect to predict for")
    p.add_argument("--gpus", default="1,2,4,8,16", help="world sizes, comma-separated (default 1,2,4,8,16)")
    p.add_argument("--layout", default="intra", choices=sm.LAYOUTS, help="intra: 1 node x N, inter: N nodes x 1, "
                   "grid: N/G nodes x G (--gpus-per-node)")
    p.add_argument("--gpus-per-node", type=int, help="ranks per node for --layout grid")
    p.add_argument("--micro-batch", type=int, help="micro-batch per rank (default: the profile run's); the profile "
                   "comes from a run of this micro-batch where there is one")
    p.add_argument("--global-batch", type=int, help="fixed global batch (strong scaling, micro = global / N)")
    p.add_argument("--scaling", choices=sm.SCALINGS, help="strong or weak (default: the profile run's)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="use only runs whose config has KEY=VALUE (dotted, as `vit-dt results` shows); repeatable")
    p.add_argument("--no-calibrate", action="store_true", help="use the cluster profile's interconnect as is")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _gpus(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise sm.ModelError(f"--gpus {text!r} is not a comma-separated list of integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise sm.ModelError(f"--gpus {text!r}: world sizes must be integers >= 1")
    return values


def cluster_interconnect(name: str) -> sm.Interconnect:
    """The interconnect of conf/cluster/<name>.yaml (composed, so interpolations resolve)."""
    from vit_dt.paths import conf_dir

    available = sorted(p.stem for p in (conf_dir() / "cluster").glob("*.yaml"))
    if name not in available:
        raise sm.ModelError(f"unknown cluster profile {name!r}; valid: {', '.join(available)}")
    from vit_dt.config import compose, to_container

    cluster = to_container(compose([f"cluster={name}"]))["cluster"]
    return sm.interconnect_from_config(cluster.get("interconnect"))


# Record fields that shape the compute profile besides the swept config knobs (swept_knobs.SERIES_KNOBS).
PROFILE_FIELDS = ("cluster", "gpu_model", "model", "dataset", "precision", "engine", "zero_stage", "micro_batch",
                  "grad_accum")


def _setting(record: dict, key: str) -> str | None:
    from vit_dt.analysis.swept_knobs import knob_values
    from vit_dt.records.result import flat_config

    value = flat_config(record).get(key)
    if value is None:       # the code version and package set knobs (vit_dt/analysis/provenance_check.py)
        value = knob_values(record).get(key)
    if value is None and record.get(key) is not None:
        value = str(record[key])
    return value


def _choices(values) -> str:
    return ", ".join(sorted({str(v) for v in values}))


def filter_where(records: list[dict], clauses: list[str]) -> list[dict]:
    """The records whose config (or record field) has every KEY=VALUE of `clauses`."""
    for clause in clauses:
        key, sep, value = clause.partition("=")
        if not sep or not key.strip():
            raise sm.ModelError(f"--where {clause!r} is not KEY=VALUE, e.g. --where trainer.micro_batch=64")
        key, value = key.strip(), value.strip()
        present = [v for v in (_setting(r, key) for r in records) if v is not None]
        if not present:
            raise sm.ModelError(f"--where {clause!r}: no run has a setting {key!r}; the runs differ in: "
                                f"{', '.join(_differences(records)) or 'nothing'}")
        matching = [r for r in records if _setting(r, key) == value]
        if not matching:
            raise sm.ModelError(f"--where {clause!r}: no run has {key}={value}; valid: {_choices(present)}")
        records = matching
    return records


def _differences(records: list[dict]) -> dict[str, list[str]]:
    """The profile-shaping settings the records differ in, with their values."""
    keys = [*(k for k in PROFILE_FIELDS if len({str(r.get(k)) for r in records}) > 1), *swept_knobs(records)]
    return {k: sorted({str(_setting(r, k)) for r in records}) for k in keys}


def pick_profile_record(records: list[dict], micro_batch: int | None = None) -> dict:
    """The completed run with the fewest ranks; refused when those runs differ in what shapes the profile."""
    if not records:
        raise sm.ModelError("no completed run to take a profile from")
    smallest = min(int(r["world_size"]) for r in records)
    candidates = [r for r in records if int(r["world_size"]) == smallest]
    if micro_batch is not None and any(r.get("micro_batch") == micro_batch for r in candidates):
        candidates = [r for r in candidates if r.get("micro_batch") == micro_batch]
    differences = _differences(candidates)
    if differences:
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in differences.items())
        key, values = next(iter(differences.items()))
        by_batch = (f" (or --micro-batch {differences['micro_batch'][0]})" if list(differences) == ["micro_batch"]
                    else "")
        raise sm.ModelError(f"{len(candidates)} completed {smallest}-rank runs could give the profile and they differ "
                            f"({listed}); pick one with --where KEY=VALUE, e.g. --where {key}={values[0]}{by_batch}")
    return candidates[-1]


def _alike(record: dict, base: dict, knobs: tuple[str, ...]) -> bool:
    """Whether `record` has `base`'s values of the swept `knobs`: a calibration run timed under other settings
    (another optimizer, no compile, ...) would fit its all-reduce against the wrong compute step."""
    return all(_setting(record, k) == _setting(base, k) for k in knobs)


def check_counts(args: argparse.Namespace) -> None:
    """--micro-batch, --global-batch and --gpus-per-node, when given, are integers >= 1 (0 is not "unset")."""
    for option, value, default in (("--micro-batch", args.micro_batch, "the profile run's"),
                                   ("--global-batch", args.global_batch, "none: the micro-batch is kept"),
                                   ("--gpus-per-node", args.gpus_per_node, "none; needed by --layout grid")):
        if value is not None and value < 1:
            raise sm.ModelError(f"{option} {value} is invalid: it must be an integer >= 1 (default: {default})")


def run(args: argparse.Namespace) -> dict:
    from vit_dt.analysis.report import load_records

    check_counts(args)
    records = filter_where(select(load_records([Path(args.source)])).used, args.where)
    base = pick_profile_record(records, args.micro_batch)
    profile, capped = sm.full_epochs(sm.profile_from_record(base))
    target = args.cluster or base.get("cluster")
    if args.cluster:
        prior = cluster_interconnect(args.cluster)
    else:
        prior = sm.interconnect_of(base) or sm.Interconnect()
    knobs = swept_knobs(records)
    same_cluster = [r for r in records if r.get("cluster") == target and _alike(r, base, knobs)]
    calibration = (sm.Calibration(prior, (), (), notes=("--no-calibrate",)) if args.no_calibrate
                   else sm.calibrate(same_cluster, prior=prior, profile=profile))
    kwargs = dict(layout=args.layout, gpus_per_node=args.gpus_per_node, micro_batch=args.micro_batch,
                  global_batch=args.global_batch, scaling=args.scaling)
    gpus = _gpus(args.gpus)
    plain = sm.predict(profile, calibration.interconnect, gpus, overlap=False, **kwargs)
    overlapped = sm.predict(profile, calibration.interconnect, gpus, overlap=True, **kwargs)
    return {"profile": asdict(profile), "profile_run": base.get("run_dir"), "cluster": target,
            "calibration": calibration.to_dict(), "predictions": [asdict(p) for p in plain],
            "predictions_overlap": [asdict(p) for p in overlapped], "notes": [capped] if capped else []}


def format_table(result: dict) -> str:
    ic = result["calibration"]["interconnect"]
    fitted = ", ".join(result["calibration"]["fitted"]) or "none (prior as is)"
    lines = [f"profile: {result['profile_run']} ({result['profile']['world_size']} rank(s), "
             f"micro-batch {result['profile']['micro_batch']}, gradients {result['profile']['grad_bytes'] / 1e6:.0f} MB)",
             f"interconnect ({result['cluster']}): intra {ic['intra_node_gbps']:.3g} Gb/s, inter "
             f"{ic['inter_node_gbps']:.3g} Gb/s, latency {ic['latency_us']:.3g} us; calibrated: {fitted} "
             f"from {len(result['calibration']['points'])} run(s)", ""]
    header = ("GPUs", "nodes×GPUs", "link", "global batch", "steps/epoch", "all-reduce ms", "step ms", "epoch s",
              "speed-up", "efficiency", "all-reduce %", "overlap: epoch s", "overlap: eff.")
    rows = [header]
    for a, b in zip(result["predictions"], result["predictions_overlap"]):
        rows.append((str(a["world_size"]), f"{a['nodes']}×{a['ranks_per_node']}", a["link"], str(a["global_batch"]),
                     str(a["steps_per_epoch"]), f"{a['allreduce_ms']:.1f}", f"{a['step_ms']:.1f}",
                     f"{a['epoch_s']:.1f}", f"{a['speedup']:.2f}", f"{100 * a['efficiency']:.1f}%",
                     f"{100 * a['allreduce_share']:.1f}%", f"{b['epoch_s']:.1f}", f"{100 * b['efficiency']:.1f}%"))
    lines += format_columns(rows, right=range(len(header)))
    lines += [f"note: {note}" for note in result.get("notes") or []]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.source is None:
        from vit_dt.commands.options import latest_sweep_or_report

        args.source = latest_sweep_or_report("predict")
        if args.source is None:
            return 2
    from vit_dt.analysis.report import ReportError

    try:
        result = run(args)
    except (sm.ModelError, ReportError) as error:
        print(f"vit-dt predict: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
