"""The report's tables: each a title, column names and formatted cells, from the sweep's analysis, the scaling
model's comparison and the studies' views. Rendered as HTML and Markdown by vit_dt/analysis/report_render.py."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vit_dt.analysis import scaling
from vit_dt.analysis.plots_studies import memory_unit


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


def _interval(pair: Any, how: str = "") -> str | None:
    """"[low, high]" of a 95% interval (None: one run, no interval)."""
    low, high = pair if pair else (None, None)
    return None if low is None or high is None else f"[{_fmt(low, how)}, {_fmt(high, how)}]"


def _time_spread(p: Any) -> dict:
    return p.epoch_time or {}


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
    """A column of the swept settings' values (swept_knobs), headed by their names; none if none."""
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
        unit, _ = memory_unit([r.get("model_states_gb") for r in zero])
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
            ("global batch", lambda p: p.global_batch, "int"), ("runs", lambda p: p.repeats, "int"),
            ("epoch time (s)", lambda p: p.epoch_time_s, "s"),
            ("95% CI (s)", lambda p: _interval((_time_spread(p).get("ci_low"), _time_spread(p).get("ci_high")), "s"),
             ""),
            ("std (s)", lambda p: _time_spread(p).get("std"), "s"),
            ("min–max (s)", lambda p: f"{_fmt(_time_spread(p).get('min'), 's')}–{_fmt(_time_spread(p).get('max'), 's')}",
             ""),
            ("img/s", lambda p: p.img_per_s, ""),
            ("img/s 95% CI", lambda p: _interval(((p.img_per_s_stats or {}).get("ci_low"),
                                                  (p.img_per_s_stats or {}).get("ci_high"))), ""),
            ("ideal (s)", lambda p: p.ideal_epoch_time_s, "s"), ("speed-up", lambda p: p.speedup, "x"),
            ("speed-up 95% CI", lambda p: _interval(p.speedup_ci, "x"), ""),
            ("efficiency", lambda p: p.efficiency, "pct"),
            ("efficiency 95% CI", lambda p: _interval(p.efficiency_ci, "pct"), ""),
            ("noisy", lambda p: p.noisy, ""),
            ("energy/epoch (J)", lambda p: p.energy_per_epoch_j, ""), ("J/image", lambda p: p.j_per_image, ""),
            ("energy eff.", lambda p: p.energy_efficiency, "pct"),
            ("Slurm energy/job (J)", lambda p: p.slurm_energy_j, ""),
            ("all-reduce share", lambda p: p.comm_share, "pct"),
            ("val acc", lambda p: p.final_val_acc, "pct"), ("borrowed", lambda p: p.borrowed, "")],
            f"{s.kind} scaling; baseline N1={s.baseline_world_size}, T1={s.baseline_epoch_time_s:.2f} s. "
            + ("speed-up T1/TN, efficiency T1·N1/(TN·N), ideal T1·N1/N." if s.kind == "strong" else
               "scaled speed-up (N/N1)·T1/TN, efficiency T1/TN, ideal T1 (flat).")
            + " Over a point's runs (repeats: same settings, other seeds): mean, sample std, min–max and the 95% "
            "Student-t interval of the mean; the speed-up and efficiency intervals carry the baseline's spread too "
            f"(delta method, docs/report.md). Noisy: an interval wider than ±{100 * s.noisy_share:.0f}% of its value. "
            "Energy: GPU counters + CPU packages over the training epochs (docs/metrics.md; — where no source was "
            "readable); energy eff. = J/image at N1 over J/image at N; Slurm energy/job: sacct's ConsumedEnergy of the whole "
            "job (start-up included), where the cluster gathers energy."))
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
