"""Plots draw each point's 95% interval as an error bar: the pixels of the series' colour reach above and below its
markers by the interval, and a point of one run draws none."""
from __future__ import annotations

from tests.fixtures.plots import assert_real_png, colour_runs
from tests.fixtures.sample_records import make_record
from vit_dt.analysis import plots
from vit_dt.analysis.series import build_series


def _records(spread: float) -> list[dict]:
    """N=1 and N=2, three repeats each, epoch times mean -+ spread."""
    out = []
    for n, mean in ((1, 10.0), (2, 5.5)):
        for i, delta in enumerate((-spread, 0.0, spread)):
            out.append(make_record(world_size=n, epoch_time_s=mean + delta * mean, micro_batch=32,
                                   point=10 * n + i, train_samples=6400))
    return out


def test_epoch_time_and_speedup_plots_draw_the_intervals(tmp_path) -> None:
    for name, plot in (("epoch_time", plots.plot_epoch_time), ("speedup_efficiency", plots.plot_speedup_efficiency)):
        wide = plot(build_series(_records(0.25)), tmp_path / f"{name}-wide.png")
        none = plot(build_series(_records(0.0)), tmp_path / f"{name}-none.png")
        assert_real_png(wide) and assert_real_png(none)
        (wide_ink, wide_rows), (none_ink, none_rows) = colour_runs(wide), colour_runs(none)
        assert wide_ink > none_ink + 150, (name, wide_ink, none_ink)     # the bars and their caps
        assert none_rows < 30 < 100 < wide_rows, (name, wide_rows, none_rows)   # a marker vs a tall bar


def test_single_runs_draw_no_bars(tmp_path) -> None:
    one = [r for r in _records(0.25) if r["point"] % 10 == 1]           # the middle repeat of each N only
    twice = plots.plot_epoch_time(build_series(one), tmp_path / "one.png")
    same = plots.plot_epoch_time(build_series(_records(0.0)), tmp_path / "same.png")
    assert abs(colour_runs(twice)[0] - colour_runs(same)[0]) < 40    # the same line and markers, no bars
