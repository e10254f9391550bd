"""Series of a sweep's records: which records a report uses (latest per point, completed), which series each
belongs to (same everything but the world size), and each series' points with their speed-up and efficiency
(vit_dt/analysis/formulas.py). Pure functions."""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from vit_dt.analysis import stats
from vit_dt.analysis.formulas import efficiency, ideal_epoch_time, kind_of, speedup
from vit_dt.analysis.swept_knobs import knob_values, swept_knobs
from vit_dt.records import result
from vit_dt.records.result import epoch_time, global_batch, ranks_per_node

LAYOUT_ORDER = {"intra": 0, "inter": 1}


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


def scaling_label(record: Mapping[str, Any]) -> str:
    mode = result.value(record, "scaling", default="none")
    if mode == "weak":
        fraction = result.config_value(record, "scaling", "fraction_per_gpu")
        return f"weak {fraction:g}/GPU" if isinstance(fraction, (int, float)) else "weak"
    return str(mode)


def layout_label(record: Mapping[str, Any]) -> str:
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
def series_key(record: Mapping[str, Any], knobs: Sequence[str] = ()) -> SeriesKey:
    """The record's series; `knobs` (swept_knobs of the records analysed together) split it further."""
    values = knob_values(record) if knobs else {}
    return SeriesKey(scaling=scaling_label(record), layout=layout_label(record), batch=_batch_label(record),
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
    # Over the point's runs (vit_dt/analysis/stats.py): mean, std, min/max, 95% t interval; None where absent.
    epoch_time: dict | None = None
    img_per_s_stats: dict | None = None
    speedup_ci: tuple[float | None, float | None] = (None, None)      # the baseline's spread propagated
    efficiency_ci: tuple[float | None, float | None] = (None, None)
    noisy: bool = False       # an interval's half-width above the report's noisy share of its value
    # Energy (docs/metrics.md): None where no run of the point had a source
    energy_per_epoch_j: float | None = None
    j_per_image: float | None = None
    energy_efficiency: float | None = None     # the baseline's J/image over this point's: 1.0 costs no more per image
    slurm_energy_j: float | None = None        # Slurm's ConsumedEnergy of a job of the point (mean), where recorded


@dataclass(frozen=True)
class Series:
    key: SeriesKey
    kind: str                 # strong | weak: the formulas used
    baseline_world_size: int
    baseline_epoch_time_s: float
    points: tuple[Point, ...]
    noisy_share: float = stats.NOISY_SHARE      # the threshold the points' `noisy` flags used

    @property
    def label(self) -> str:
        return self.key.label()

    def to_dict(self) -> dict:
        return {"key": asdict(self.key), "label": self.label, "kind": self.kind,
                "baseline_world_size": self.baseline_world_size,
                "baseline_epoch_time_s": self.baseline_epoch_time_s, "noisy_share": self.noisy_share,
                "points": [asdict(p) for p in self.points]}


def mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def sibling_key(key: SeriesKey) -> SeriesKey:
    return replace(key, layout="*")


def build_series(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] | None = None,
                 noisy_share: float = stats.NOISY_SHARE) -> list[Series]:
    """Group completed records into series and compute each point's speed-up and efficiency.

    A 1-rank run is the same job whatever the layout (its label is "intra": one node), so a series with no
    1-rank run of its own borrows those of a sibling series (same key but layout; all of them, so that its repeats
    keep their spread); the borrowed point is marked `borrowed`. The baseline is then still the series' smallest
    world size, as everywhere else.
    """
    groups: dict[SeriesKey, list[Mapping[str, Any]]] = defaultdict(list)
    knobs = swept_knobs(records) if knobs is None else knobs
    for record in records:
        if epoch_time(record) is None or not record.get("world_size"):
            continue
        groups[series_key(record, knobs)].append(record)
    singles: dict[SeriesKey, list[Mapping[str, Any]]] = defaultdict(list)
    for key, members in groups.items():
        for record in members:
            if int(record["world_size"]) == 1:
                singles[sibling_key(key)].append(record)     # every 1-rank run per sibling family: its repeats too
    series = []
    for key in sorted(groups, key=_series_order):
        members = list(groups[key])
        borrowed_runs: list[Mapping[str, Any]] = []
        if all(int(r["world_size"]) != 1 for r in members) and singles.get(sibling_key(key)):
            borrowed_runs = singles[sibling_key(key)]
            members += borrowed_runs
        series.append(_series(key, members, borrowed_runs, noisy_share))
    return series


def _batch_number(label: str) -> int:
    """"micro-batch 64 (accum 2)" -> 64: batch labels sort by size, not as text ("8" after "16")."""
    digits = "".join(c if c.isdigit() else " " for c in label).split()
    return int(digits[0]) if digits else 0


def _series_order(key: SeriesKey) -> tuple:
    return (key.kind, key.scaling, LAYOUT_ORDER.get(key.layout, 2), key.layout, key.batch.split()[0],
            _batch_number(key.batch), key.batch, key.model, key.dataset, key.precision, key.engine, key.knobs)


def _series(key: SeriesKey, members: list[Mapping[str, Any]], borrowed_runs: Sequence[Mapping[str, Any]],
            noisy_share: float = stats.NOISY_SHARE) -> Series:
    by_n: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in members:
        by_n[int(record["world_size"])].append(record)
    kind = key.kind
    n_base = min(by_n)
    base = stats.spread(epoch_time(r) for r in by_n[n_base])
    t_base = base.mean
    base_jpi = mean_or_none(result.j_per_image(r) for r in by_n[n_base])
    points = []
    for n in sorted(by_n):
        runs = by_n[n]
        times = stats.spread(epoch_time(r) for r in runs)
        t = times.mean
        rates = stats.spread(result.img_per_s(r) for r in runs)
        if n == n_base:      # against itself: exactly 1 (and N1/N = 1), whatever its spread
            s_ratio, e_ratio = stats.exact(1.0), stats.exact(1.0)
        else:
            s_ratio = stats.ratio(base, times, speedup(kind, 1.0, n_base, 1.0, n))
            e_ratio = stats.ratio(base, times, efficiency(kind, 1.0, n_base, 1.0, n))
        noisy = any(stats.is_noisy(share, noisy_share) for share in (times.rel_half_width, s_ratio.rel_half_width))
        first = runs[-1]
        points.append(Point(
            world_size=n, nodes=int(first.get("nodes") or 1), ranks_per_node=ranks_per_node(first),
            micro_batch=result.micro_batch(first), global_batch=global_batch(first),
            epoch_time_s=t, ideal_epoch_time_s=ideal_epoch_time(kind, t_base, n_base, n),
            speedup=speedup(kind, t_base, n_base, t, n), efficiency=efficiency(kind, t_base, n_base, t, n),
            img_per_s=mean_or_none(result.img_per_s(r) for r in runs),
            comm_share=mean_or_none(r.get("comm_share") for r in runs),
            data_wait_share=mean_or_none(r.get("data_wait_share") for r in runs),
            final_val_acc=mean_or_none(r.get("final_val_acc") for r in runs),
            mfu=mean_or_none(r.get("mfu") for r in runs),
            repeats=len(runs), borrowed=any(r is b for r in runs for b in borrowed_runs),
            run_dirs=tuple(str(r.get("run_dir") or "") for r in runs),
            epoch_time=times.to_dict(), img_per_s_stats=rates.to_dict() if rates else None,
            speedup_ci=(s_ratio.ci_low, s_ratio.ci_high), efficiency_ci=(e_ratio.ci_low, e_ratio.ci_high),
            noisy=noisy, energy_per_epoch_j=mean_or_none(result.epoch_energy_j(r) for r in runs),
            j_per_image=(jpi := mean_or_none(result.j_per_image(r) for r in runs)),
            energy_efficiency=base_jpi / jpi if base_jpi is not None and jpi else None,
            slurm_energy_j=mean_or_none(result.slurm_energy_j(r) for r in runs)))
    return Series(key=key, kind=kind, baseline_world_size=n_base, baseline_epoch_time_s=t_base, points=tuple(points),
                  noisy_share=noisy_share)
