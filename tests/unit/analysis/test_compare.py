"""`vit-dt compare BASE NEW`: points matched by settings, the ratio's interval, the verdict from the interval against
the tolerance, the exit status, and the report-style section."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.sample_records import make_record, write_store
from vit_dt.analysis import stats
from vit_dt.analysis.compare import compare
from vit_dt.commands import compare as compare_cmd

BASE_TIMES = {1: (10.0, 10.2, 9.8), 2: (5.4, 5.5, 5.6)}


def _store(times: dict[int, tuple[float, ...]], start: int = 0, micro: int = 32) -> list[dict]:
    out, point = [], start
    for n, repeats in times.items():
        for t in repeats:
            out.append(make_record(world_size=n, epoch_time_s=t, micro_batch=micro, point=point, train_samples=6400))
            point += 1
    return out


def test_same_points_give_same_and_exit_0(tmp_path, capsys) -> None:
    write_store(tmp_path / "base", _store(BASE_TIMES))
    write_store(tmp_path / "new", _store({1: (10.1, 9.9, 10.0), 2: (5.5, 5.45, 5.55)}))
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "2 point(s) compared on img_per_s, tolerance 5%: 0 slower, 0 faster, 2 same" in out


def test_a_slower_sweep_is_a_regression_with_its_interval(tmp_path, capsys) -> None:
    slow = {n: tuple(1.3 * t for t in ts) for n, ts in BASE_TIMES.items()}
    base, new = _store(BASE_TIMES), _store(slow)
    result = compare(base, new, "epoch_time", 0.05)
    one = result.rows[0]
    assert (one.world_size, one.verdict) == (1, "slower")
    # NEW/BASE of the epoch time: 13/10 = 1.3; both sides' relative se^2 = (0.2/10)^2 / 3, df = 4 (stats.ratio)
    expected = stats.ratio(stats.spread(slow[1]), stats.spread(BASE_TIMES[1]))
    assert one.ratio == pytest.approx(1.3) and one.ratio_ci == pytest.approx((expected.ci_low, expected.ci_high))
    half = 1.3 * 2.776445105 * ((0.2 / 10) ** 2 / 3 * 2) ** 0.5
    assert one.ratio_ci == pytest.approx((1.3 - half, 1.3 + half), abs=1e-9)
    write_store(tmp_path / "base", base)
    write_store(tmp_path / "new", new)
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "new"), "--tolerance", "5%"]) == 1
    assert "REGRESSION beyond tolerance at 2 point(s)" in capsys.readouterr().out
    # the other way round it is faster, and no regression
    assert compare_cmd.main([str(tmp_path / "new"), str(tmp_path / "base")]) == 0
    assert "0 slower, 2 faster" in capsys.readouterr().out


def test_a_change_within_the_tolerance_or_an_interval_across_it_is_same() -> None:
    within = compare(_store(BASE_TIMES), _store({n: tuple(1.03 * t for t in ts) for n, ts in BASE_TIMES.items()}))
    assert [r.verdict for r in within.rows] == ["same", "same"]
    wide = compare(_store({1: (8.0, 10.0, 12.0)}), _store({1: (9.0, 11.5, 14.0)}))
    assert wide.rows[0].verdict == "same" and "add repeats" in wide.rows[0].note
    single = compare(_store({1: (10.0,)}), _store({1: (12.0,)}), "epoch_time")
    assert single.rows[0].verdict == "slower" and "single runs" in single.rows[0].note


def test_points_are_matched_by_settings_not_by_index(tmp_path) -> None:
    base = _store(BASE_TIMES)
    # NEW: other point indices, in another order, with a point BASE lacks (another micro-batch)
    new = _store({2: (5.5, 5.5, 5.5), 1: (10.0, 10.0, 10.0)}, start=50) + _store({2: (3.0,)}, start=90, micro=64)
    result = compare(base, new)
    assert [(r.world_size, r.base_runs, r.new_runs) for r in result.rows] == [(1, 3, 3), (2, 3, 3)]
    assert result.rows[1].new == pytest.approx(6400 / 5.5)
    assert result.only_new == ["strong intra, micro-batch 64, N=2"] and result.only_base == []


def test_efficiency_metric_and_the_report_style_section(tmp_path, capsys) -> None:
    write_store(tmp_path / "base", _store(BASE_TIMES))
    write_store(tmp_path / "new", _store({1: BASE_TIMES[1], 2: (8.0, 8.1, 7.9)}))
    out_dir = tmp_path / "cmp"
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "new"), "--metric", "efficiency",
                             "--out", str(out_dir)]) == 1
    data = json.loads((out_dir / "compare.json").read_text())
    two = next(r for r in data["rows"] if r["world_size"] == 2)
    assert two["verdict"] == "slower" and two["ratio"] == pytest.approx(5.5 / 8.0)
    assert two["ratio_ci"][0] < two["ratio"] < two["ratio_ci"][1]
    assert "baseline" in next(r for r in data["rows"] if r["world_size"] == 1)["note"]
    html = (out_dir / "compare.html").read_text()
    assert "<table>" in html and "slower" in html and "<style>" in html
    assert "| series | GPUs |" in (out_dir / "compare.md").read_text()


def test_bad_input_is_named(tmp_path, capsys) -> None:
    write_store(tmp_path / "base", _store(BASE_TIMES))
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "base"), "--metric", "speed"]) == 2
    assert "--metric 'speed' is unknown; valid: img_per_s, epoch_time, efficiency" in capsys.readouterr().err
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "base"), "--tolerance", "lots"]) == 2
    assert "--tolerance 'lots' is not a share" in capsys.readouterr().err
    write_store(tmp_path / "other", _store({4: (3.0,)}))
    assert compare_cmd.main([str(tmp_path / "base"), str(tmp_path / "other")]) == 2
    assert "share no point" in capsys.readouterr().err
