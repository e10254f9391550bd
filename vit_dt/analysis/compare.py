"""Two sweeps of the same points, compared: `vit-dt compare BASE NEW`. Pure functions.

Points are matched by their settings (the series key, vit_dt/analysis/series.py, and the world size), never by their
index in the sweep. Per point the chosen metric's ratio NEW/BASE gets a 95% interval from the repeats of both sides
(vit_dt/analysis/stats.py), and the verdict is read from that interval against the tolerance:

    speed ratio g (> 1: NEW is faster), its interval [g_low, g_high], tolerance tol
    slower   g_high < 1 - tol      the whole interval is a regression beyond the tolerance
    faster   g_low  > 1 + tol      the whole interval is an improvement beyond it
    same     otherwise             not shown to differ by more than the tolerance

A point of single runs on both sides has no interval: its value alone decides, and it says so. docs/report.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vit_dt.analysis import stats
from vit_dt.analysis.series import Point, Series, SeriesKey, build_series, select
from vit_dt.analysis.swept_knobs import swept_knobs
from vit_dt.records.result import epoch_time, img_per_s

METRICS = ("img_per_s", "epoch_time", "efficiency")
DEFAULT_TOLERANCE = 0.05
VERDICTS = ("faster", "slower", "same")


class CompareError(ValueError):
    """Nothing to compare: no completed run, or no point both sweeps ran."""


@dataclass(frozen=True)
class Row:
    series: str
    world_size: int
    base_runs: int
    new_runs: int
    base: float
    base_ci: tuple[float | None, float | None]
    new: float
    new_ci: tuple[float | None, float | None]
    ratio: float                                   # NEW / BASE of the metric
    ratio_ci: tuple[float | None, float | None]
    speed: float                                   # > 1: NEW is faster (or more efficient)
    verdict: str                                   # one of VERDICTS
    note: str = ""


def _runs(records: Sequence[Mapping[str, Any]], point: Point) -> list[Mapping[str, Any]]:
    wanted = set(point.run_dirs)
    return [r for r in records if str(r.get("run_dir") or "") in wanted and int(r["world_size"]) == point.world_size]


def _metric_ratio(metric: str, base: Point, new: Point, base_records: Sequence[Mapping[str, Any]],
                  new_records: Sequence[Mapping[str, Any]]) -> tuple[float, float, tuple, float, tuple, stats.Ratio]:
    """(base value, its CI, new value, its CI, NEW/BASE with its interval)."""
    if metric == "efficiency":
        # Each side's efficiency already carries its own baseline's spread: the quotient of the two intervals
        # (low/high, high/low) is a conservative interval for their ratio.
        value = new.efficiency / base.efficiency
        (bl, bh), (nl, nh) = base.efficiency_ci, new.efficiency_ci
        if None in (bl, bh, nl, nh) or bl <= 0 or bh <= 0 or (bl == bh and nl == nh):
            ratio = stats.Ratio(value, None, None)
        else:
            ratio = stats.Ratio(value, nl / bh, nh / bl)
        return base.efficiency, base.efficiency_ci, new.efficiency, new.efficiency_ci, ratio
    read = epoch_time if metric == "epoch_time" else img_per_s
    b = stats.spread(read(r) for r in _runs(base_records, base))
    n = stats.spread(read(r) for r in _runs(new_records, new))
    if b is None or n is None:
        raise CompareError(f"no {metric} in the runs of N={base.world_size}")
    return b.mean, (b.ci_low, b.ci_high), n.mean, (n.ci_low, n.ci_high), stats.ratio(n, b)


def verdict(speed_low: float, speed_high: float, tolerance: float) -> str:
    if speed_high < 1 - tolerance:
        return "slower"
    if speed_low > 1 + tolerance:
        return "faster"
    return "same"


def _row(metric: str, key: SeriesKey, base: Point, new: Point, base_records, new_records, tolerance: float) -> Row:
    b, b_ci, n, n_ci, ratio = _metric_ratio(metric, base, new, base_records, new_records)
    low, high = (ratio.ci_low, ratio.ci_high) if ratio.ci_low is not None else (ratio.value, ratio.value)
    invert = metric == "epoch_time"                 # a longer epoch is slower
    speed = 1 / ratio.value if invert else ratio.value
    s_low, s_high = (1 / high, 1 / low) if invert else (low, high)
    note = "" if ratio.ci_low is not None else "single runs: no interval, the value alone decides"
    if metric == "efficiency" and base.efficiency_ci == (1.0, 1.0) and new.efficiency_ci == (1.0, 1.0):
        note = "the series' baseline: efficiency 1 by definition"
    if ratio.ci_low is not None and (s_high - s_low) / 2 > tolerance and verdict(s_low, s_high, tolerance) == "same":
        note = "interval wider than the tolerance: add repeats to decide"
    return Row(series=key.short_label(), world_size=base.world_size, base_runs=base.repeats, new_runs=new.repeats,
               base=b, base_ci=b_ci, new=n, new_ci=n_ci, ratio=ratio.value, ratio_ci=(ratio.ci_low, ratio.ci_high),
               speed=speed, verdict=verdict(s_low, s_high, tolerance), note=note)


@dataclass
class Comparison:
    metric: str
    tolerance: float
    rows: list[Row]
    only_base: list[str]
    only_new: list[str]

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "slower"]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "tolerance": self.tolerance, "rows": [asdict(r) for r in self.rows],
                "only_base": self.only_base, "only_new": self.only_new,
                "regressions": len(self.regressions)}


def _points(series: Sequence[Series]) -> dict[tuple[SeriesKey, int], Point]:
    return {(s.key, p.world_size): p for s in series for p in s.points}


def compare(base_records: Sequence[Mapping[str, Any]], new_records: Sequence[Mapping[str, Any]],
            metric: str = "img_per_s", tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Match the two stores' points by their settings and compare `metric` per point."""
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    base_used, new_used = select(base_records).used, select(new_records).used
    for name, used in (("BASE", base_used), ("NEW", new_used)):
        if not used:
            raise CompareError(f"{name} has no completed run to compare")
    knobs = swept_knobs([*base_used, *new_used])     # one set of keys for both sides, so the same point matches
    base_points = _points(build_series(base_used, knobs))
    new_points = _points(build_series(new_used, knobs))
    common = [k for k in base_points if k in new_points]
    if not common:
        raise CompareError("BASE and NEW share no point (same settings and GPU count); compare sweeps of the same "
                           "points")
    rows = [_row(metric, key, base_points[(key, n)], new_points[(key, n)], base_used, new_used, tolerance)
            for key, n in sorted(common, key=lambda k: (k[0].label(), k[1]))]

    def names(keys):
        return [f"{k.short_label()}, N={n}" for k, n in keys]

    return Comparison(metric, tolerance, rows, names(k for k in base_points if k not in new_points),
                      names(k for k in new_points if k not in base_points))
