"""Repeat statistics against hand-computed values: Student's t, the interval of a mean, the propagated interval of a
speed-up and efficiency, the noisy flag; and a series built from repeated records carries them."""
from __future__ import annotations

import math

import pytest

from tests.fixtures.sample_records import make_record
from vit_dt.analysis import stats
from vit_dt.analysis.series import build_series


# Two-sided 95% t values (printed tables; the fractional ones from a statistics package, to 1e-9).
@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                                          (10, 2.228138852), (30, 2.042272456), (2.5, 3.574654842),
                                          (7.3, 2.345066737)])
def test_t_quantile_matches_the_tables(df, expected) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-8)


def test_t_cdf_and_quantile_are_inverse_and_bad_input_is_named() -> None:
    assert stats.t_cdf(1.5, 3.0) == pytest.approx(0.8847080674, abs=1e-9)
    assert stats.t_cdf(-1.5, 3.0) == pytest.approx(1 - 0.8847080674, abs=1e-9)
    assert stats.t_cdf(stats.t_quantile(0.9, 5), 5) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        stats.t_quantile(0.3, 4)


def test_interval_of_a_mean() -> None:
    # 10, 12, 14: mean 12, s = 2, half-width t(0.975, 2) * 2 / sqrt(3) = 4.302652730 * 1.154700538 = 4.968275424
    s = stats.spread([10.0, 12.0, 14.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 12.0, 2.0, 10.0, 14.0)
    assert s.ci_low == pytest.approx(12 - 4.968275424, abs=1e-8)
    assert s.ci_high == pytest.approx(12 + 4.968275424, abs=1e-8)
    assert s.rel_half_width == pytest.approx(4.968275424 / 12, abs=1e-9)


def test_one_run_has_no_interval_and_none_values_are_skipped() -> None:
    s = stats.spread([None, 7.0])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high, s.rel_half_width) == (1, 7.0, None, None, None, None)
    assert stats.spread([None]) is None


def test_propagated_speedup_interval() -> None:
    # T1 = 10, 12, 14 (mean 12, s 2); TN = 5, 6, 7 (mean 6, s 1). S = 12 / 6 = 2.
    # relative variances of the means: (2/12)^2 / 3 = (1/6)^2 / 3 = 0.009259259 each; sum 0.018518519
    # Welch-Satterthwaite df = 0.018518519^2 / (2 * 0.009259259^2 / 2) = 4; t(0.975, 4) = 2.776445105
    # half-width = 2 * 2.776445105 * sqrt(0.018518519) = 0.755652645
    base, point = stats.spread([10.0, 12.0, 14.0]), stats.spread([5.0, 6.0, 7.0])
    speedup = stats.ratio(base, point)
    assert speedup.value == 2.0
    assert speedup.df == pytest.approx(4.0)
    assert speedup.ci_low == pytest.approx(2 - 0.755652645, abs=1e-8)
    assert speedup.ci_high == pytest.approx(2 + 0.755652645, abs=1e-8)
    # strong efficiency at N=2 against N1=1: the same ratio times N1/N = 1/2
    efficiency = stats.ratio(base, point, 0.5)
    assert (efficiency.value, efficiency.ci_low, efficiency.ci_high) == pytest.approx(
        (1.0, (2 - 0.755652645) / 2, (2 + 0.755652645) / 2), abs=1e-8)


def test_a_single_baseline_run_still_carries_the_points_spread() -> None:
    # T1 = 12 (one run: no spread); TN = 5, 6, 7: relative se^2 = (1/6)^2 / 3, df = 2
    speedup = stats.ratio(stats.spread([12.0]), stats.spread([5.0, 6.0, 7.0]))
    half = 2 * 4.302652730 * math.sqrt((1 / 6) ** 2 / 3)       # = 2.868435153 * ... = 0.9562...
    assert speedup.df == pytest.approx(2.0)
    assert (speedup.ci_low, speedup.ci_high) == pytest.approx((2 - half, 2 + half), abs=1e-8)
    assert stats.ratio(stats.spread([12.0]), stats.spread([6.0])).ci_low is None


def test_noisy_flag_against_the_threshold() -> None:
    wide = stats.spread([10.0, 12.0, 14.0])               # +-41% of the mean
    tight = stats.spread([10.0, 10.1, 9.9])                # +-4.302652730 * 0.1 / sqrt(3) / 10 = +-2.48%
    assert tight.rel_half_width == pytest.approx(4.302652730 * 0.1 / math.sqrt(3) / 10, abs=1e-9)
    assert stats.is_noisy(wide.rel_half_width) and not stats.is_noisy(tight.rel_half_width)
    assert stats.is_noisy(tight.rel_half_width, threshold=0.02)
    assert not stats.is_noisy(None)                        # one run: no interval, not flagged


@pytest.mark.parametrize("text, expected", [("5%", 0.05), ("0.1", 0.1), (" 12.5% ", 0.125)])
def test_parse_share(text, expected) -> None:
    assert stats.parse_share(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["five", "150%", "-1%"])
def test_parse_share_refuses_bad_values_by_name(text) -> None:
    with pytest.raises(ValueError, match=text.strip().replace("%", "%")):
        stats.parse_share(text)


def _repeats(world_size: int, times: list[float], start: int) -> list[dict]:
    return [make_record(world_size=world_size, epoch_time_s=t, micro_batch=32, point=start + i, train_samples=6400)
            for i, t in enumerate(times)]


def test_a_series_of_repeats_carries_means_intervals_and_the_noisy_flag() -> None:
    records = _repeats(1, [10.0, 12.0, 14.0], 0) + _repeats(2, [5.0, 6.0, 7.0], 10)
    (series,) = build_series(records)
    base, two = series.points
    assert base.repeats == 3 and two.repeats == 3
    assert base.epoch_time["mean"] == 12.0 and base.epoch_time["std"] == 2.0
    assert base.epoch_time["ci_low"] == pytest.approx(12 - 4.968275424, abs=1e-8)
    assert base.speedup_ci == (1.0, 1.0)                   # the baseline against itself
    assert two.speedup == pytest.approx(2.0)
    assert two.speedup_ci == pytest.approx((2 - 0.755652645, 2 + 0.755652645), abs=1e-8)
    assert two.efficiency_ci == pytest.approx(((2 - 0.755652645) / 2, (2 + 0.755652645) / 2), abs=1e-8)
    assert two.img_per_s_stats["n"] == 3
    assert base.noisy and two.noisy                        # +-41% and +-38% against the default 10%
    (quiet,) = build_series(_repeats(1, [10.0, 10.1, 9.9], 0) + _repeats(2, [5.0, 5.05, 4.95], 10))
    assert not any(p.noisy for p in quiet.points)
    (strict,) = build_series(_repeats(1, [10.0, 10.1, 9.9], 0) + _repeats(2, [5.0, 5.05, 4.95], 10),
                             noisy_share=0.01)
    assert all(p.noisy for p in strict.points)


def test_energy_per_image_and_energy_efficiency_per_point() -> None:
    records = _repeats(1, [10.0, 10.0], 0) + _repeats(2, [5.5], 10) + _repeats(4, [3.0], 20)
    joules = {0: 0.20, 1: 0.22, 10: 0.24, 20: None}          # J/image; N=4 had no source
    for r in records:
        jpi = joules[r["point"]]
        r["energy"] = {"total_j": None if jpi is None else jpi * 6400, "j_per_image": jpi,
                       "reason": None if jpi is not None else "no RAPL on this node"}
        for e in r["epochs"]:
            e["energy"] = {"total_j": None if jpi is None else jpi * 6400}
    (series,) = build_series(records)
    one, two, four = series.points
    assert one.j_per_image == pytest.approx(0.21) and one.energy_efficiency == pytest.approx(1.0)
    assert two.j_per_image == pytest.approx(0.24) and two.energy_efficiency == pytest.approx(0.21 / 0.24)
    assert two.energy_per_epoch_j == pytest.approx(0.24 * 6400)
    assert four.j_per_image is None and four.energy_efficiency is None and four.energy_per_epoch_j is None
