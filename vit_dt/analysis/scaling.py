"""Scaling analysis of a sweep's records: series, speed-up, efficiency, ideal lines, shares. Pure functions.

A *series* is a set of completed runs that differ only in their world size (N ranks): same scaling mode,
layout, batch setting, precision, engine, model and dataset. Every number is relative to the series' baseline,
its SMALLEST world size N1 with mean epoch time T1 (TN: mean epoch time at N ranks, first epoch left out):

strong scaling (same data for every N; also scaling mode `none`, where every run sees the whole dataset):
    speed-up    S(N) = T1 / TN
    efficiency  E(N) = T1 * N1 / (TN * N)          = S(N) / (N / N1)
    ideal time       = T1 * N1 / N
weak scaling (data grows with N, the same amount per rank):
    speed-up    S(N) = (N / N1) * T1 / TN           (scaled speed-up: N/N1 times the work in TN)
    efficiency  E(N) = T1 / TN
    ideal time       = T1                           (flat)

docs/report.md explains each number and plot.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vit_dt.records import result
from vit_dt.records.result import epoch_time, final_train_acc, global_batch, ranks_per_node

KINDS = ("strong", "weak")
LAYOUT_ORDER = {"intra": 0, "inter": 1}


# ---------------------------------------------------------------- formulas

def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown scaling kind {kind!r}; valid: {', '.join(KINDS)}")


def speedup(kind: str, t_base: float, n_base: int, t: float, n: int) -> float:
    """Strong: T1/TN. Weak: (N/N1) * T1/TN (the work per epoch grows N/N1-fold)."""
    _check_kind(kind)
    return t_base / t if kind == "strong" else (n / n_base) * t_base / t


def efficiency(kind: str, t_base: float, n_base: int, t: float, n: int) -> float:
    """Strong: T1*N1 / (TN*N). Weak: T1/TN. 1.0 is perfect scaling."""
    _check_kind(kind)
    return t_base * n_base / (t * n) if kind == "strong" else t_base / t


def ideal_epoch_time(kind: str, t_base: float, n_base: int, n: int) -> float:
    """Strong: T1*N1/N (time falls as 1/N). Weak: T1 (flat)."""
    _check_kind(kind)
    return t_base * n_base / n if kind == "strong" else t_base


def kind_of(scaling_mode: str | None) -> str:
    """The formulas a scaling mode uses: weak for `weak`, strong for `strong` and `none` (whole dataset each run)."""
    return "weak" if scaling_mode == "weak" else "strong"


# ---------------------------------------------------------------- reading records

def record_identity(record: Mapping[str, Any]) -> tuple:
    """Which sweep point a record belongs to: (sweep_dir, point); a record without a point is its own run_dir."""
    return (str(record.get("sweep_dir") or ""), result.point_of(record))


@dataclass
class Selection:
    """The records a report uses, and the ones it lists but leaves out of the numbers."""
    used: list[dict]                    # completed, latest per point
    not_completed: list[dict]           # latest per point, status != completed (failed, timeout, ...)
    superseded: list[dict]              # earlier records of a point that was run again


def select(records: Iterable[Mapping[str, Any]]) -> Selection:
    """Latest record per point (append order: a resubmitted point's later record wins), split by status."""
    latest: dict[tuple, dict] = {}
    superseded: list[dict] = []
    for record in records:
        key = record_identity(record)
        if key in latest:
            superseded.append(latest.pop(key))   # re-insert so the order follows the latest append
        latest[key] = dict(record)
    used = [r for r in latest.values() if result.is_completed(r) and epoch_time(r) is not None]
    rest = [r for r in latest.values() if not (result.is_completed(r) and epoch_time(r) is not None)]
    return Selection(used=used, not_completed=rest, superseded=superseded)


# ---------------------------------------------------------------- series

@dataclass(frozen=True, order=True)
class SeriesKey:
    scaling: str        # strong | weak | none (weak carries its fraction: "weak 0.1/GPU")
    layout: str         # intra | inter | grid k/node
    batch: str          # "micro-batch 64" (global batch grows with N) | "global batch 256" (fixed)
    precision: str
    engine: str
    model: str
    dataset: str
    knobs: str = ""     # the swept knobs' values, e.g. "optimizer.master_update=fused" (see swept_knobs)

    @property
    def kind(self) -> str:
        return kind_of(self.scaling.split()[0])

    def label(self) -> str:
        return ", ".join(part for part in (self.scaling, self.layout, self.batch, f"{self.model}/{self.dataset}",
                                           self.precision, self.engine, self.knobs) if part)

    def short_label(self) -> str:
        """Scaling, layout and batch; the engine and the model geometry only where they are not the defaults
        (DeepSpeed ZeRO-0, the model's own geometry), so series that differ only there stay apart in legends."""
        extra = [part for part in (self.engine if self.engine != "deepspeed" else "",
                                   self.model if "(" in self.model else "", self.knobs) if part]
        return ", ".join([f"{self.scaling} {self.layout}, {self.batch}", *extra])


def _scaling_label(record: Mapping[str, Any]) -> str:
    mode = result.value(record, "scaling", default="none")
    if mode == "weak":
        fraction = result.config_value(record, "scaling", "fraction_per_gpu")
        return f"weak {fraction:g}/GPU" if isinstance(fraction, (int, float)) else "weak"
    return str(mode)


def _layout_label(record: Mapping[str, Any]) -> str:
    """From the shape the run had, not the layout asked for: one node is intra-node (a 1-rank run too), one
    rank per node on several nodes is inter-node, anything else a grid of k ranks per node."""
    nodes = int(record.get("nodes") or 1)
    if nodes == 1:
        return "intra"
    per_node = ranks_per_node(record)
    return "inter" if per_node == 1 else f"grid {per_node}/node"


def _fixed_global(record: Mapping[str, Any]) -> bool:
    return (result.config_value(record, "scaling", "fixed") == "global"
            or result.config_value(record, "trainer", "global_batch") is not None)


def _batch_label(record: Mapping[str, Any]) -> str:
    accum = result.grad_accum(record)
    accum_text = f" (accum {accum})" if accum > 1 else ""
    if _fixed_global(record):
        return f"global batch {global_batch(record)}{accum_text}"
    return f"micro-batch {result.micro_batch(record)}{accum_text}"


def _engine_label(record: Mapping[str, Any]) -> str:
    """ZeRO stages are separate series: a stage-0 and a stage-2 point must not average into one speed-up."""
    engine = str(result.value(record, "engine", default="?"))
    stage = record.get("zero_stage")
    return f"{engine} ZeRO-{stage}" if engine == "deepspeed" and stage not in (None, 0) else engine


def _model_label(record: Mapping[str, Any]) -> str:
    """The model name, plus its geometry where it is not the name's own (ViT-B at patch 8 is another workload)."""
    name = str(result.value(record, "model", default="?"))
    patch, image = record.get("patch_size"), record.get("image_size")
    own = {"vit_b_16": (16, 224)}.get(name)
    if own and patch is not None and image is not None and (patch, image) != own:
        return f"{name} (patch {patch}, {image} px)"
    return name


# Config settings that change a run's speed or what it learns and do not follow from its world size. When the
# records of a report differ in one, runs that differ in it are separate series (labelled with its value) instead of
# averaging into one point. Not among them: a seed (runs that differ only in it are repeats of one point) and the
# epoch count (the mean epoch time after the first does not depend on it; accuracy is shown per run).
SERIES_KNOBS = ("optimizer.", "deepspeed.bf16_mode", "deepspeed.overrides", "deepspeed.wall_clock_breakdown",
                "trainer.compile", "trainer.grad_clip", "trainer.lr_schedule", "trainer.warmup_epochs",
                "trainer.max_steps_per_epoch", "trainer.timer_sample_every", "trainer.balance",
                "model.fast_attention", "model.activation_checkpointing", "model.dropout", "model.patch_size",
                "model.image_size", "dataset.hflip",
                "dataset.val_fraction")


def _knob_values(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's SERIES_KNOBS settings as flat `key: value` text (nested groups joined with dots)."""
    return {k: v for k, v in result.flat_config(record).items() if k.startswith(SERIES_KNOBS)}


def swept_knobs(records: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The SERIES_KNOBS the records differ in, with a swapped config group named once: `optimizer.name` stands for
    the lr, betas, ... that came with the other optimizer, unless one of them also splits runs of the same name.

    Only keys every record with a config has count: a setting added to vit-dt later is absent from older records,
    and merging their store with a newer one must not split every series by it.
    """
    per_record = [_knob_values(r) for r in records if r.get("config")]
    if len(per_record) < 2:
        return ()
    common = set.intersection(*(set(values) for values in per_record))
    varying = sorted(k for k in common if len({values[k] for values in per_record}) > 1)
    chosen = [k for k in varying if k.endswith(".name")]

    def groups(keys: Sequence[str]) -> int:
        return len({tuple(values[k] for k in keys) for values in per_record})

    for key in varying:
        swapped_group = f"{key.split('.')[0]}.name" in chosen
        if key not in chosen and (not swapped_group or groups([*chosen, key]) > groups(chosen)):
            chosen.append(key)
    return tuple(sorted(chosen))


def knob_values_text(record: Mapping[str, Any], knobs: Sequence[str]) -> str:
    """The record's values of the swept knobs, short (for per-run labels): "fused" or "fused, true"."""
    values = _knob_values(record) if knobs else {}
    return ", ".join(values.get(k, "unset") for k in knobs)


def series_key(record: Mapping[str, Any], knobs: Sequence[str] = ()) -> SeriesKey:
    """The record's series; `knobs` (swept_knobs of the records analysed together) split it further."""
    values = _knob_values(record) if knobs else {}
    return SeriesKey(scaling=_scaling_label(record), layout=_layout_label(record), batch=_batch_label(record),
                     precision=str(result.value(record, "precision", default="?")),
                     engine=_engine_label(record), model=_model_label(record),
                     dataset=str(result.value(record, "dataset", default="?")),
                     knobs=", ".join(f"{k}={values.get(k, 'unset')}" for k in knobs))


@dataclass(frozen=True)
class Point:
    """One world size of a series: the mean over its runs (`repeats` > 1 when a point was run several times)."""
    world_size: int
    nodes: int
    ranks_per_node: int
    micro_batch: int | None
    global_batch: int | None
    epoch_time_s: float
    ideal_epoch_time_s: float
    speedup: float
    efficiency: float
    img_per_s: float | None
    comm_share: float | None
    data_wait_share: float | None
    final_val_acc: float | None
    mfu: float | None
    repeats: int
    borrowed: bool            # a 1-rank run taken from a sibling series of another layout (see build_series)
    run_dirs: tuple[str, ...]


@dataclass(frozen=True)
class Series:
    key: SeriesKey
    kind: str                 # strong | weak: the formulas used
    baseline_world_size: int
    baseline_epoch_time_s: float
    points: tuple[Point, ...]

    @property
    def label(self) -> str:
        return self.key.label()

    def to_dict(self) -> dict:
        return {"key": asdict(self.key), "label": self.label, "kind": self.kind,
                "baseline_world_size": self.baseline_world_size,
                "baseline_epoch_time_s": self.baseline_epoch_time_s,
                "points": [asdict(p) for p in self.points]}


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _sibling_key(key: SeriesKey) -> SeriesKey:
    return replace(key, layout="*")


def build_series(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[Series]:
    """Group completed records into series and compute each point's speed-up and efficiency.

    A 1-rank run is the same job whatever the layout (its label is "intra": one node), so a series with no
    1-rank run of its own borrows the latest one of a sibling series (same key but layout); the borrowed point is
    marked `borrowed`. The baseline is then still the series' smallest world size, as everywhere else.
    """
    groups: dict[SeriesKey, list[Mapping[str, Any]]] = defaultdict(list)
    knobs = swept_knobs(records) if knobs is None else knobs
    for record in records:
        if epoch_time(record) is None or not record.get("world_size"):
            continue
        groups[series_key(record, knobs)].append(record)
    singles: dict[SeriesKey, Mapping[str, Any]] = {}
    for key, members in groups.items():
        for record in members:
            if int(record["world_size"]) == 1:
                singles[_sibling_key(key)] = record           # the latest 1-rank run per sibling family
    series = []
    for key in sorted(groups, key=_series_order):
        members = list(groups[key])
        borrowed_run = None
        if all(int(r["world_size"]) != 1 for r in members) and _sibling_key(key) in singles:
            borrowed_run = singles[_sibling_key(key)]
            members.append(borrowed_run)
        series.append(_series(key, members, borrowed_run))
    return series


def _batch_number(label: str) -> int:
    """"micro-batch 64 (accum 2)" -> 64: batch labels sort by size, not as text ("8" after "16")."""
    digits = "".join(c if c.isdigit() else " " for c in label).split()
    return int(digits[0]) if digits else 0


def _series_order(key: SeriesKey) -> tuple:
    return (key.kind, key.scaling, LAYOUT_ORDER.get(key.layout, 2), key.layout, key.batch.split()[0],
            _batch_number(key.batch), key.batch, key.model, key.dataset, key.precision, key.engine, key.knobs)


def _series(key: SeriesKey, members: list[Mapping[str, Any]], borrowed_run: Mapping[str, Any] | None) -> Series:
    by_n: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in members:
        by_n[int(record["world_size"])].append(record)
    kind = key.kind
    n_base = min(by_n)
    t_base = statistics.fmean(epoch_time(r) for r in by_n[n_base])
    points = []
    for n in sorted(by_n):
        runs = by_n[n]
        t = statistics.fmean(epoch_time(r) for r in runs)
        first = runs[-1]
        points.append(Point(
            world_size=n, nodes=int(first.get("nodes") or 1), ranks_per_node=ranks_per_node(first),
            micro_batch=result.micro_batch(first), global_batch=global_batch(first),
            epoch_time_s=t, ideal_epoch_time_s=ideal_epoch_time(kind, t_base, n_base, n),
            speedup=speedup(kind, t_base, n_base, t, n), efficiency=efficiency(kind, t_base, n_base, t, n),
            img_per_s=_mean_or_none(result.img_per_s(r) for r in runs),
            comm_share=_mean_or_none(r.get("comm_share") for r in runs),
            data_wait_share=_mean_or_none(r.get("data_wait_share") for r in runs),
            final_val_acc=_mean_or_none(r.get("final_val_acc") for r in runs),
            mfu=_mean_or_none(r.get("mfu") for r in runs),
            repeats=len(runs), borrowed=borrowed_run is not None and any(r is borrowed_run for r in runs),
            run_dirs=tuple(str(r.get("run_dir") or "") for r in runs)))
    return Series(key=key, kind=kind, baseline_world_size=n_base, baseline_epoch_time_s=t_base, points=tuple(points))


# ---------------------------------------------------------------- per-run views

BREAKDOWN_PARTS = ("compute", "allreduce", "optimizer", "data_wait", "other")


def time_breakdown(record: Mapping[str, Any]) -> dict[str, float] | None:
    """Mean ms per optimizer step, split: compute = fwd + bwd_inner, allreduce = bwd_allreduce, optimizer = step,
    data_wait, other = step_time minus those four (launch gaps, timer sync; never below 0). None without timers."""
    mean = ((record.get("breakdown_ms") or {}).get("mean")) or None
    if not mean:
        return None
    parts = {"compute": float(mean.get("fwd", 0.0)) + float(mean.get("bwd_inner", 0.0)),
             "allreduce": float(mean.get("bwd_allreduce", 0.0)),
             "optimizer": float(mean.get("step", 0.0)),
             "data_wait": float(mean.get("data_wait", 0.0))}
    total = float(mean.get("step_time", 0.0))
    parts["other"] = max(0.0, total - sum(parts.values()))
    parts["step_time"] = max(total, sum(parts.values()))
    return parts


@dataclass(frozen=True)
class RunRow:
    """One completed run as the report's table shows it; speed-up/efficiency from its own series."""
    series: str
    kind: str
    layout: str
    world_size: int
    nodes: int
    ranks_per_node: int
    micro_batch: int | None
    global_batch: int | None
    train_samples: int | None
    epoch_time_s: float
    img_per_s: float | None
    speedup: float | None
    efficiency: float | None
    comm_share: float | None
    data_wait_share: float | None
    final_val_acc: float | None
    final_train_acc: float | None
    mfu: float | None
    peak_mem_gb: float | None
    straggler: bool
    point: Any
    run_dir: str


def run_rows(records: Sequence[Mapping[str, Any]], series: Sequence[Series],
             knobs: Sequence[str] | None = None) -> list[RunRow]:
    own: dict[int, tuple[Series, float, float]] = {}
    knobs = swept_knobs(records) if knobs is None else knobs
    keys = {id(record): series_key(record, knobs) for record in records}
    for s in series:
        for record in records:
            if keys[id(record)] == s.key:
                t, n = epoch_time(record), int(record["world_size"])
                own[id(record)] = (s, speedup(s.kind, s.baseline_epoch_time_s, s.baseline_world_size, t, n),
                                   efficiency(s.kind, s.baseline_epoch_time_s, s.baseline_world_size, t, n))
    rows = []
    for record in records:
        s, sp, eff = own.get(id(record), (None, None, None))
        rows.append(RunRow(
            series=(s.key if s else keys[id(record)]).short_label(),
            kind=kind_of(result.value(record, "scaling")), layout=_layout_label(record),
            world_size=int(record["world_size"]), nodes=int(record.get("nodes") or 1),
            ranks_per_node=ranks_per_node(record), micro_batch=result.micro_batch(record),
            global_batch=global_batch(record), train_samples=record.get("train_samples"),
            epoch_time_s=float(epoch_time(record)), img_per_s=result.img_per_s(record), speedup=sp, efficiency=eff,
            comm_share=record.get("comm_share"), data_wait_share=record.get("data_wait_share"),
            final_val_acc=record.get("final_val_acc"), final_train_acc=final_train_acc(record),
            mfu=record.get("mfu"), peak_mem_gb=record.get("peak_mem_gb"),
            straggler=bool((record.get("straggler") or {}).get("flagged")), point=record.get("point"),
            run_dir=str(record.get("run_dir") or "")))
    return sorted(rows, key=lambda r: (r.kind, LAYOUT_ORDER.get(r.layout, 2), r.layout, r.series.split(",")[0],
                                       r.micro_batch or 0, r.series, r.world_size))


def comm_share_by_batch(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Multi-rank runs: all-reduce share of the step vs the per-rank (micro) and global batch.

    The all-reduce moves the same gradient bytes whatever the batch while compute grows with it, so the share
    should fall as the micro-batch grows; that is what this table shows."""
    rows = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for record in records:
        parts = time_breakdown(record)
        if int(record.get("world_size") or 1) < 2 or parts is None:
            continue
        rows.append({"world_size": int(record["world_size"]), "nodes": int(record.get("nodes") or 1),
                     "layout": _layout_label(record), "micro_batch": result.micro_batch(record),
                     "knobs": knob_values_text(record, knobs),
                     "global_batch": global_batch(record), "allreduce_ms": parts["allreduce"],
                     "step_time_ms": parts["step_time"],
                     "comm_share": record.get("comm_share") if record.get("comm_share") is not None
                     else (parts["allreduce"] / parts["step_time"] if parts["step_time"] else None)})
    return sorted(rows, key=lambda r: (r["layout"], r["world_size"], r["micro_batch"] or 0, r["knobs"]))


def accuracy_by_batch(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Final validation and train accuracy vs global batch (same epochs, so fewer steps at larger batches)."""
    knobs = swept_knobs(records) if knobs is None else knobs
    rows = [{"global_batch": global_batch(r), "world_size": int(r["world_size"]), "scaling": _scaling_label(r),
             "layout": _layout_label(r), "micro_batch": result.micro_batch(r), "knobs": knob_values_text(r, knobs),
             "final_val_acc": r.get("final_val_acc"),
             "final_train_acc": final_train_acc(r), "epochs": len(r.get("epochs") or []),
             "steps_per_epoch": result.steps_per_epoch(r)}
            for r in records if r.get("final_val_acc") is not None or final_train_acc(r) is not None]
    return sorted(rows, key=lambda r: (r["scaling"], r["knobs"], r["global_batch"] or 0, r["world_size"]))


def layout_pairs(series: Sequence[Series]) -> list[dict]:
    """intra-node vs inter-node runs at equal world size (N > 1), for series alike in everything but layout."""
    by_family: dict[SeriesKey, dict[str, Series]] = defaultdict(dict)
    for s in series:
        if s.key.layout in ("intra", "inter"):
            by_family[_sibling_key(s.key)][s.key.layout] = s
    pairs = []
    for family, layouts in by_family.items():
        if len(layouts) < 2:
            continue
        intra = {p.world_size: p for p in layouts["intra"].points}
        inter = {p.world_size: p for p in layouts["inter"].points}
        for n in sorted(set(intra) & set(inter)):
            if n < 2:
                continue
            a, b = intra[n], inter[n]
            pairs.append({"family": replace(family, layout="intra vs inter").short_label(), "kind": family.kind,
                          "world_size": n,
                          "intra_epoch_time_s": a.epoch_time_s, "inter_epoch_time_s": b.epoch_time_s,
                          "intra_efficiency": a.efficiency, "inter_efficiency": b.efficiency,
                          "intra_comm_share": a.comm_share, "inter_comm_share": b.comm_share,
                          "inter_over_intra": b.epoch_time_s / a.epoch_time_s})
    return pairs


def epoch_curves(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Per run, its per-epoch train loss/accuracy and validation loss/accuracy (for the learning-curve plot)."""
    curves = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for r in records:
        epochs = r.get("epochs") or []
        if not epochs:
            continue
        swept = knob_values_text(r, knobs)
        curves.append({"label": f"N={r['world_size']} {_layout_label(r)} {_scaling_label(r)} gb={global_batch(r)}"
                                + (f" {swept}" if swept else ""),
                       "world_size": int(r["world_size"]), "global_batch": global_batch(r),
                       "scaling": _scaling_label(r),
                       **{k: [e.get(k) for e in epochs] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}})
    return sorted(curves, key=lambda c: (c["scaling"], c["global_batch"] or 0, c["world_size"]))


def breakdown_rows(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None) -> list[dict]:
    """Per run with timers: the step split into compute, all-reduce, optimizer, data wait, other (ms)."""
    rows = []
    knobs = swept_knobs(records) if knobs is None else knobs
    for r in records:
        parts = time_breakdown(r)
        if parts is None:
            continue
        rows.append({"world_size": int(r["world_size"]), "nodes": int(r.get("nodes") or 1),
                     "layout": _layout_label(r), "scaling": _scaling_label(r), "micro_batch": result.micro_batch(r),
                     "knobs": knob_values_text(r, knobs),
                     "global_batch": global_batch(r), **parts})
    return sorted(rows, key=lambda x: (x["micro_batch"] or 0, x["scaling"], LAYOUT_ORDER.get(x["layout"], 2),
                                       x["layout"], x["world_size"], x["knobs"]))


# ---------------------------------------------------------------- everything at once

@dataclass
class SweepAnalysis:
    selection: Selection
    series: list[Series]
    runs: list[RunRow]
    comm_share: list[dict]
    accuracy: list[dict]
    layout_pairs: list[dict]
    breakdown: list[dict]
    epoch_curves: list[dict]
    notes: list[str] = field(default_factory=list)
    knobs: tuple[str, ...] = ()     # the swept settings that split series (swept_knobs)

    def to_dict(self) -> dict:
        return {"series": [s.to_dict() for s in self.series], "runs": [asdict(r) for r in self.runs],
                "comm_share_by_batch": self.comm_share, "accuracy_by_batch": self.accuracy,
                "intra_vs_inter": self.layout_pairs, "breakdown_ms": self.breakdown,
                "not_completed": [_brief(r) for r in self.selection.not_completed],
                "superseded": [_brief(r) for r in self.selection.superseded], "notes": self.notes}


def _brief(record: Mapping[str, Any]) -> dict:
    return {k: record.get(k) for k in ("point", "status", "world_size", "nodes", "layout", "scaling",
                                       "micro_batch", "error", "run_dir", "finished_at")}


def _capped(record: Mapping[str, Any]) -> bool:
    cap = result.config_value(record, "trainer", "max_steps_per_epoch")
    steps = [e.get("steps") for e in record.get("epochs") or []]
    return bool(cap) and bool(steps) and steps[-1] == int(cap)


def analyse(records: Iterable[Mapping[str, Any]]) -> SweepAnalysis:
    selection = select(records)
    used = selection.used
    knobs = swept_knobs(used)      # once: each view below splits or labels its rows by the same settings
    series = build_series(used, knobs)
    notes = []
    capped = [r for r in used if _capped(r)]
    if capped:
        notes.append(f"{len(capped)} run(s) stopped their epochs at trainer.max_steps_per_epoch (world sizes "
                     f"{sorted({int(r['world_size']) for r in capped})}): such an epoch is steps x global batch "
                     "images, not the dataset, so strong-scaling numbers compare unequal work")
    for s in series:
        if len(s.points) < 2:
            notes.append(f"series '{s.key.short_label()}' has one world size only ({s.baseline_world_size}): "
                         "no speed-up to compute")
    return SweepAnalysis(selection=selection, series=series, runs=run_rows(used, series, knobs),
                         comm_share=comm_share_by_batch(used, knobs), accuracy=accuracy_by_batch(used, knobs),
                         layout_pairs=layout_pairs(series), breakdown=breakdown_rows(used, knobs),
                         epoch_curves=epoch_curves(used, knobs), notes=notes, knobs=knobs)
