"""Implausible numbers, called out instead of plotted as findings: each check reads a sweep's analysis (and the
scaling model's comparison) and returns warnings with their likely causes and what to rerun. Pure functions.

The report shows them at its top and `vit-dt results` under its table; docs/report.md lists the checks and their
bounds. A warning does not change a number: it says which ones not to trust.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vit_dt.analysis.scaling import SweepAnalysis
from vit_dt.measure.hardware import parse_cpu_list

SUPERLINEAR = 1.05          # efficiency above this is super-linear: data-parallel training cannot beat N x one rank
BASELINE_SPREAD = 1.5       # a baseline repeat this many times slower than another of the same point
PER_RANK_RATE = 1.5         # a baseline whose img/s per rank is this many times below a multi-rank run's
MODEL_ERROR = 0.5           # |model - measured| / measured beyond this: the model or the measurement is off

CHECKS = ("super-linear", "baseline", "model", "oversubscribed", "noisy")

_SLOW_BASELINE_CAUSES = ("the baseline run shared its cores with other processes while OpenMP threads spun "
                         "(a loaded login or CI machine, another job on the node)", "more threads than CPUs",
                         "a cold file-system cache or a slow node for that one job")


@dataclass(frozen=True)
class Finding:
    check: str                  # one of CHECKS
    message: str
    causes: tuple[str, ...]
    rerun: str

    def text(self) -> str:
        return (f"WARNING [{self.check}] {self.message}. Likely causes: {'; '.join(self.causes)}. "
                f"Rerun: {self.rerun}")

    def to_dict(self) -> dict:
        return asdict(self) | {"text": self.text()}


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _dirs(run_dirs: Iterable[str]) -> str:
    dirs = [d for d in run_dirs if d]
    return ", ".join(dirs[:4]) + (f" (+{len(dirs) - 4} more)" if len(dirs) > 4 else "") if dirs else "its runs"


def superlinear(analysis: SweepAnalysis) -> list[Finding]:
    out = []
    for s in analysis.series:
        base = s.points[0]
        for p in s.points[1:]:
            if p.efficiency > SUPERLINEAR:
                low = p.efficiency_ci[0]
                interval = f" (95% interval from {_pct(low)})" if low is not None else ""
                out.append(Finding(
                    "super-linear",
                    f"series '{s.key.short_label()}': efficiency {_pct(p.efficiency)}{interval} and speed-up "
                    f"{p.speedup:.2f} at N={p.world_size} against N1={s.baseline_world_size}, above the "
                    f"{_pct(SUPERLINEAR)} data-parallel training can reach",
                    (*_SLOW_BASELINE_CAUSES, "the runs did unequal work (capped epochs, a different dataset size)"),
                    f"the baseline point (N={s.baseline_world_size}: {_dirs(base.run_dirs)}) on an idle node, "
                    "with repeats=3 so its spread shows"))
    return out


def baseline(analysis: SweepAnalysis) -> list[Finding]:
    """A baseline far off its own repeats, or slower per rank than the multi-rank runs of its series."""
    out = []
    for s in analysis.series:
        base = s.points[0]
        times = base.epoch_time or {}
        if times.get("n", 1) >= 2 and times["min"] > 0 and times["max"] / times["min"] > BASELINE_SPREAD:
            out.append(Finding(
                "baseline",
                f"series '{s.key.short_label()}': the baseline's repeats (N={base.world_size}) range from "
                f"{times['min']:.3g} s to {times['max']:.3g} s per epoch ({times['max'] / times['min']:.1f}x), "
                "so every speed-up of the series inherits that spread", _SLOW_BASELINE_CAUSES,
                f"the baseline point (N={base.world_size}) on an idle node; drop the slow repeat's store line only "
                "if you know why it was slow"))
        if base.img_per_s is None:
            continue
        base_rate = base.img_per_s / base.world_size
        others = [(p.img_per_s / p.world_size, p) for p in s.points[1:] if p.img_per_s]
        if others:
            rate, fastest = max(others, key=lambda pair: pair[0])
            if rate > PER_RANK_RATE * base_rate:
                out.append(Finding(
                    "baseline",
                    f"series '{s.key.short_label()}': each rank of the N={fastest.world_size} run processed "
                    f"{rate:.3g} img/s, {rate / base_rate:.1f}x the baseline's {base_rate:.3g} img/s per rank "
                    f"(N={base.world_size}); the same per-image compute plus communication cannot be faster",
                    _SLOW_BASELINE_CAUSES,
                    f"the baseline point (N={base.world_size}: {_dirs(base.run_dirs)}) on an idle node"))
    return out


def model_error(model: Mapping[str, Any] | None) -> list[Finding]:
    out = []
    for comparison in (model or {}).get("comparisons") or []:
        worst = max(comparison["points"], key=lambda p: abs(p["error"]), default=None)
        if worst is not None and abs(worst["error"]) > MODEL_ERROR:
            out.append(Finding(
                "model",
                f"scaling model vs measured, '{comparison['label']}': error {_pct(worst['error'])} at "
                f"N={worst['world_size']} (bound ±{_pct(MODEL_ERROR)})",
                ("the baseline run it is built from was slow or fast for a reason of its own (see the baseline "
                 "warnings)", "the interconnect profile does not describe this cluster (cluster.interconnect)",
                 "CPU runs: the model describes GPU compute and links, not shared cores"),
                "the baseline point on an idle node, or `vit-dt preflight` to measure the interconnect"))
    return out


def oversubscribed(records: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Ranks whose threads together exceed the CPUs they may run on, per host (result.json's `ranks`)."""
    out = []
    for record in records:
        hosts: dict[str, list[Mapping[str, Any]]] = {}
        for row in record.get("ranks") or []:
            if row.get("threads") and row.get("cpus"):
                hosts.setdefault(str(row.get("host")), []).append(row)
        for host, rows in hosts.items():
            threads = sum(int(r["threads"]) for r in rows)
            cpus = set().union(*(parse_cpu_list(r["cpus"]) for r in rows))
            if threads > len(cpus):
                out.append(Finding(
                    "oversubscribed",
                    f"run {record.get('run_dir')} (N={record.get('world_size')}): {len(rows)} rank(s) on {host} ran "
                    f"{threads} threads on {len(cpus)} CPU(s)",
                    ("OMP_NUM_THREADS or SLURM_CPUS_PER_TASK set higher than the task's CPUs",
                     "several tasks placed on the same cores (cpus_per_task in the cluster profile)"),
                    "the point with cluster.cpus_per_task matching the cores per rank, or OMP_NUM_THREADS unset"))
    return out


def noisy(analysis: SweepAnalysis) -> list[Finding]:
    out = []
    for s in analysis.series:
        for p in s.points:
            if p.noisy:
                times = p.epoch_time or {}
                out.append(Finding(
                    "noisy",
                    f"series '{s.key.short_label()}', N={p.world_size}: the 95% interval is wider than "
                    f"±{_pct(s.noisy_share)} (epoch time ±{_pct(times.get('rel_half_width') or 0)} over {p.repeats} "
                    "runs, or the speed-up with the baseline's spread): noisy: add repeats or check the cluster",
                    ("too few repeats for the cluster's run-to-run variation", "other jobs on the network or the "
                     "file system", "one slow repeat (see min/max)"),
                    "the point with more repeats (repeats=N), or at a quieter time"))
    return out


def findings(analysis: SweepAnalysis, model: Mapping[str, Any] | None = None) -> list[Finding]:
    """Every check's warnings, in CHECKS order."""
    return (superlinear(analysis) + baseline(analysis) + model_error(model)
            + oversubscribed(analysis.selection.used) + noisy(analysis))
