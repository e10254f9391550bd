"""Implausible numbers are called out: a store with a super-linear baseline (as `make demo` produced on a loaded
2-core machine: 815% efficiency) gets a warning at the top of the report and in `vit-dt results`; so do a baseline
far off its repeats, a model error beyond its bound, oversubscribed CPUs and a noisy point."""
from __future__ import annotations

import json

from tests.fixtures.sample_records import make_record, write_store
from vit_dt.analysis import checks
from vit_dt.analysis.report import build_report
from vit_dt.analysis.scaling import analyse
from vit_dt.commands import results as results_cmd


def _superlinear_store(tmp_path):
    # The demo's shape: the 1-rank baseline 8x slower per step than each rank of the 2-rank run.
    records = [make_record(world_size=1, epoch_time_s=16.3, micro_batch=32, point=0, train_samples=6400),
               make_record(world_size=2, epoch_time_s=1.0, micro_batch=32, point=1, train_samples=6400)]
    write_store(tmp_path, records)
    return records


def test_a_superlinear_baseline_is_warned_about_at_the_top_of_the_report(tmp_path) -> None:
    _superlinear_store(tmp_path)
    report = build_report([tmp_path], out_dir=tmp_path / "report")
    data = json.loads(report.json.read_text())
    superlinear = [w for w in data["warnings"] if w.startswith("WARNING [super-linear]")]
    assert len(superlinear) == 1
    assert "efficiency 815%" in superlinear[0] and "speed-up 16.30 at N=2" in superlinear[0]
    assert "Likely causes:" in superlinear[0] and "Rerun: the baseline point (N=1" in superlinear[0]
    assert any(w.startswith("WARNING [baseline]") and "8.2x the baseline" in w for w in data["warnings"])
    markdown = report.markdown.read_text()
    assert markdown.index("## Warnings") < markdown.index("Sources:") < markdown.index("## Plots")
    assert "WARNING [super-linear]" in markdown
    html = report.html.read_text()
    assert html.index("class='warn'") < html.index("<h2>Plots</h2>")


def test_results_prints_the_same_warning(tmp_path, capsys) -> None:
    _superlinear_store(tmp_path)
    assert results_cmd.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING [super-linear]" in out and "efficiency 815%" in out
    assert "Per point over its repeats" not in out          # one run per point: no repeat table


def test_a_plausible_store_has_no_warning(tmp_path, capsys) -> None:
    records = [make_record(world_size=n, epoch_time_s=10.0 / n / 0.9 ** (n > 1), micro_batch=32, point=i,
                           train_samples=6400) for i, n in enumerate((1, 2, 4))]
    assert checks.superlinear(analyse(records)) == [] and checks.baseline(analyse(records)) == []
    assert checks.noisy(analyse(records)) == []
    write_store(tmp_path, records)
    assert results_cmd.main([str(tmp_path)]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_a_baseline_far_off_its_repeats_and_a_noisy_point(tmp_path, capsys) -> None:
    records = [make_record(world_size=1, epoch_time_s=t, micro_batch=32, point=i, train_samples=6400)
               for i, t in enumerate((10.0, 10.2, 19.0))]
    records += [make_record(world_size=2, epoch_time_s=t, micro_batch=32, point=10 + i, train_samples=6400)
                for i, t in enumerate((5.5, 5.6, 5.4))]
    found = checks.findings(analyse(records))
    baseline = [f for f in found if f.check == "baseline"]
    assert len(baseline) == 1 and "range from 10 s to 19 s per epoch (1.9x)" in baseline[0].message
    noisy = [f for f in found if f.check == "noisy"]
    assert [("N=1" in f.message, "add repeats or check the cluster" in f.message) for f in noisy][0] == (True, True)
    write_store(tmp_path, records)
    assert results_cmd.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Per point over its repeats" in out and "noisy" in out
    assert results_cmd.main([str(tmp_path), "--noisy-share", "many"]) == 2
    assert "--noisy-share 'many' is not a share" in capsys.readouterr().err


def test_model_error_beyond_its_bound() -> None:
    model = {"comparisons": [{"label": "strong intra", "points": [
        {"world_size": 1, "error": 0.0}, {"world_size": 2, "error": 7.26}]}]}
    (finding,) = checks.model_error(model)
    assert "error 726% at N=2 (bound ±50%)" in finding.message
    model["comparisons"][0]["points"][1]["error"] = 0.3
    assert checks.model_error(model) == []


def test_ranks_that_oversubscribe_their_cpus() -> None:
    record = make_record(world_size=2, epoch_time_s=1.0, micro_batch=32, point=0)
    record["ranks"] = [{"rank": r, "host": "n1", "cpus": "0-1", "threads": 2} for r in range(2)]
    (finding,) = checks.oversubscribed([record])
    assert "2 rank(s) on n1 ran 4 threads on 2 CPU(s)" in finding.message
    record["ranks"] = [{"rank": r, "host": "n1", "cpus": str(r), "threads": 1} for r in range(2)]
    assert checks.oversubscribed([record]) == []
