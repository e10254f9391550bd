"""`vit-dt report`: built offline from a results store; its numbers match the store; its PNGs are real images.

Two kinds of store: realistic records made by tests/fixtures/sample_records.py (fast, every plot), and a store
written by real training runs (`real_sweep_dir`: DeepSpeed on CPU, several GPU counts and batch sizes).
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.plots import assert_real_png
from tests.fixtures.sample_records import make_record, simulated_sweep, write_store
from vit_dt.analysis.report import ReportError, build_report, load_records
from vit_dt.commands import report as report_cmd


def _strong_speedups(records: list[dict]) -> dict[tuple, dict[int, tuple[float, float]]]:
    """Independently: per (scaling, micro-batch, one-node?) the speed-up and efficiency of each world size."""
    latest = {}
    for r in records:
        latest[(r.get("sweep_dir"), r.get("point"))] = r
    groups: dict[tuple, dict[int, float]] = {}
    for r in latest.values():
        if r["status"] != "completed":
            continue
        times = [e["time_s"] for e in r["epochs"]]
        t = sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]
        groups.setdefault((r["scaling"], r["micro_batch"], r["nodes"] == 1), {})[r["world_size"]] = t
    for (mode, micro, one_node), by_n in groups.items():
        single = groups.get((mode, micro, True), {})
        if 1 not in by_n and 1 in single:               # a 1-GPU run is shared across layouts
            by_n[1] = single[1]
    out = {}
    for key, by_n in groups.items():
        n1 = min(by_n)
        weak = key[0] == "weak"
        out[key] = {n: ((n / n1 if weak else 1.0) * by_n[n1] / t, by_n[n1] / t if weak else by_n[n1] * n1 / (t * n))
                    for n, t in by_n.items()}
    return out


def _check_report_matches_store(result, records: list[dict]) -> None:
    data = json.loads(result.json.read_text())
    expected = _strong_speedups(records)
    seen = 0
    for series in data["series"]:
        key = (series["key"]["scaling"].split()[0], series["points"][-1]["micro_batch"], series["key"]["layout"] == "intra")
        for point in series["points"]:
            speedup, efficiency = expected[key][point["world_size"]]
            assert point["speedup"] == pytest.approx(speedup, rel=1e-9)
            assert point["efficiency"] == pytest.approx(efficiency, rel=1e-9)
            seen += 1
    assert seen == sum(len(v) for v in expected.values())   # every series point, borrowed baselines included


# ---------------------------------------------------------------- sample stores

@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    records = (simulated_sweep(gpus=[1, 2, 4, 8], micro_batches=[32, 64], seed=4)
               + simulated_sweep(gpus=[8, 16, 32], layout="inter", start_point=100, seed=5)
               + simulated_sweep(gpus=[1, 2, 4, 8], scaling="weak", start_point=200, seed=6))
    records.append(make_record(world_size=4, epoch_time_s=1.0, micro_batch=64, status="failed", point=300))
    write_store(sweep, records)
    return build_report([sweep]), records


def test_report_files_and_numbers_match_the_store(sample_report) -> None:
    result, records = sample_report
    assert result.out_dir.name == "report"
    for path in (result.html, result.markdown, result.json):
        assert path.exists() and path.stat().st_size > 1000
    data = json.loads(result.json.read_text())
    assert data["meta"]["completed"] == len(records) - 1 and data["meta"]["not_completed"] == 1
    assert [r["point"] for r in data["not_completed"]] == [300]
    _check_report_matches_store(result, records)
    assert {s["kind"] for s in data["series"]} == {"strong", "weak"}
    # every completed run is a row of the runs table, with its measured epoch time
    by_dir = {r["run_dir"]: r for r in records if r["status"] == "completed"}
    assert len(data["runs"]) == len(by_dir)
    for row in data["runs"]:
        assert row["epoch_time_s"] == pytest.approx(by_dir[row["run_dir"]]["epoch_time_s_mean"])
        assert row["comm_share"] == pytest.approx(by_dir[row["run_dir"]]["comm_share"])


def test_every_plot_is_made_and_is_a_real_image(sample_report) -> None:
    result, _ = sample_report
    assert set(result.plots) == {"epoch_time", "speedup_efficiency", "breakdown", "comm_share", "accuracy",
                                 "layouts", "epoch_curves", "predicted"}
    assert result.skipped_plots == {}
    for path in result.plots.values():
        assert_real_png(path)


def test_html_is_self_contained_and_markdown_links_the_plots(sample_report) -> None:
    result, _ = sample_report
    page = result.html.read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(result.plots)
    assert all(base64.b64decode(e)[:4] == b"\x89PNG" for e in embedded)
    assert "http://" not in page and "https://" not in page          # nothing to fetch: works offline
    assert "Runs left out of the numbers" in page and "failed" in page
    markdown = result.markdown.read_text()
    for name, path in result.plots.items():
        assert f"]({path.relative_to(result.out_dir).as_posix()})" in markdown
    assert "| GPUs |" in markdown and "efficiency" in markdown


def test_missing_data_skips_plots_and_says_why(tmp_path) -> None:
    one = make_record(world_size=1, epoch_time_s=100.0, micro_batch=64)    # no timers, one GPU count
    write_store(tmp_path, [one])
    result = build_report([tmp_path], out_dir=tmp_path / "out")
    assert {"epoch_time", "speedup_efficiency", "breakdown", "comm_share", "layouts", "predicted"} <= set(
        result.skipped_plots)
    assert set(result.plots) == {"accuracy", "epoch_curves"}
    page = result.html.read_text()
    assert "Plots skipped" in page and "two or more GPU counts" in page


def test_report_command(tmp_path, capsys) -> None:
    write_store(tmp_path / "a", simulated_sweep(gpus=[1, 2], sweep_dir="/sweeps/a"))
    write_store(tmp_path / "b", simulated_sweep(gpus=[4, 8], layout="inter", sweep_dir="/sweeps/b"))
    assert report_cmd.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.html")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(data["runs"]) == 4
    inter = next(s for s in data["series"] if s["key"]["layout"] == "inter")
    assert [p["world_size"] for p in inter["points"]] == [1, 4, 8] and inter["points"][0]["borrowed"]
    assert report_cmd.main([str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_report_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys) -> None:
    write_store(tmp_path / "a", simulated_sweep(gpus=[1, 2], sweep_dir="/sweeps/a"))
    (tmp_path / "notes.txt").write_text("mine")
    assert report_cmd.main([str(tmp_path / "a"), "--out", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert f"output directory {tmp_path / 'notes.txt'} is an existing file, not a directory" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert report_cmd.main([str(tmp_path / "a"), "--out", str(tmp_path / "notes.txt" / "report")]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err
    assert not (tmp_path / "a" / "report").exists()


def test_a_result_json_that_is_not_one_is_named(tmp_path) -> None:
    (tmp_path / "result.json").write_text("{truncated")
    with pytest.raises(ReportError, match="result.json is not a result.json: not valid JSON"):
        load_records([tmp_path / "result.json"])
    with pytest.raises(ReportError, match="result.json is not a result.json: not valid JSON"):
        load_records([tmp_path])                                        # the run directory holding it
    with pytest.raises(ReportError, match="no results store at .*nowhere"):
        load_records([tmp_path / "nowhere"])


def test_report_logs_a_wandb_summary_run_offline(tmp_path, monkeypatch) -> None:
    from vit_dt.records.wandb_files import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_store(tmp_path, simulated_sweep(gpus=[1, 2, 4]))
    result = build_report([tmp_path], wandb=True)
    assert result.wandb_dir is not None and result.wandb_dir.exists()
    run = read_offline_run(result.wandb_dir)
    assert run["job_type"] == "report"
    assert run["summary"]["completed"] == 3
    [row] = run["history"]                         # W&B's reader flattens the media references with dots
    assert row["tables/runs._type"] == "table-file" and row["tables/runs.nrows"] == 3
    table_file = next(result.wandb_dir.rglob(Path(row["tables/runs.path"]).name))
    table = json.loads(table_file.read_text())
    assert "epoch time (s)" in table["columns"] and len(table["data"]) == 3
    report_rows = json.loads(result.json.read_text())["tables"][0]["rows"]
    assert sorted(map(tuple, table["data"])) == sorted(map(tuple, report_rows))   # the report's own table
    for name in result.plots:
        assert row[f"plots/{name}._type"] == "image-file"
        assert next(result.wandb_dir.rglob(Path(row[f"plots/{name}.path"]).name)).stat().st_size > 1000


# ---------------------------------------------------------------- a store written by real runs

@pytest.fixture(scope="module")
def real_sweep_dir(slurm_cluster, tmp_path_factory) -> Path:
    """A results store written by a real sweep on the local Slurm cluster: 1 and 2 nodes x micro-batch 16 and 32
    on the digits dataset, DeepSpeed on CPU, whole epochs (strong scaling must compare the same work at every N).
    $VIT_DT_REAL_SWEEP_DIR names an existing one instead."""
    from tests.fixtures.sweeps import run_sweep_cli, wait_until_done

    given = os.environ.get("VIT_DT_REAL_SWEEP_DIR")
    if given:
        return Path(given)
    sweep = tmp_path_factory.mktemp("real-sweep") / "sweep"
    submitted = run_sweep_cli(sweep, "cluster=localslurm", "scaling=strong", "resources.nodes=1,2",
                              "trainer.micro_batch=16,32", "trainer.epochs=2", "trainer.timer_sample_every=4",
                              "trainer.timer_warmup_steps=2", "wandb.mode=disabled")
    assert submitted.proc.returncode == 0, submitted.proc.stderr[-3000:]
    rows = wait_until_done(sweep)
    assert {r.state for r in rows} == {"completed"}, [(r.index, r.state) for r in rows]
    return sweep


@pytest.mark.slow
@pytest.mark.slurm
def test_report_from_a_real_sweep(real_sweep_dir: Path, tmp_path) -> None:
    records = load_records([real_sweep_dir])
    completed = [r for r in records if r["status"] == "completed"]
    assert len({r["world_size"] for r in completed}) >= 2, "the store needs several GPU counts"
    assert len({r["micro_batch"] for r in completed}) >= 2, "the store needs several batch sizes"
    result = build_report([real_sweep_dir], out_dir=tmp_path / "report")
    _check_report_matches_store(result, records)
    for name in ("epoch_time", "speedup_efficiency", "breakdown", "comm_share", "accuracy", "epoch_curves",
                 "predicted"):
        assert name in result.plots, f"{name} skipped: {result.skipped_plots.get(name)}"
    for path in result.plots.values():
        assert_real_png(path)
    data = json.loads(result.json.read_text())
    assert not any("max_steps_per_epoch" in note for note in data["notes"]), "capped epochs: unequal work"
    by_dir = {r["run_dir"]: r for r in completed}
    for row in data["runs"]:
        assert row["epoch_time_s"] == pytest.approx(by_dir[row["run_dir"]]["epoch_time_s_mean"])
        assert row["final_val_acc"] == pytest.approx(by_dir[row["run_dir"]]["final_val_acc"])


def test_a_swept_knob_gets_its_own_series_rows_and_plot_labels(tmp_path) -> None:
    """A sweep over optimizer.master_update x GPUs: one series per value in the tables, the value in the per-run
    tables and plots, and every plot still made."""
    parts = {"fwd": 700.0, "bwd_inner": 1400.0, "bwd_allreduce": 150.0, "step": 60.0, "data_wait": 50.0}
    records = []
    for point, (update, n, t) in enumerate([("separate", 1, 100.0), ("separate", 2, 60.0), ("separate", 4, 35.0),
                                            ("fused", 1, 90.0), ("fused", 2, 50.0), ("fused", 4, 30.0)]):
        record = make_record(world_size=n, epoch_time_s=t, micro_batch=32, point=point, step_parts_ms=parts)
        record["config"]["optimizer"] = {"name": "adamw", "master_update": update}
        records.append(record)
    write_store(tmp_path, records)
    result = build_report([tmp_path], out_dir=tmp_path / "out")
    assert {"epoch_time", "speedup_efficiency", "breakdown", "comm_share", "accuracy"} <= set(result.plots)
    for name in result.plots:
        Image.open(result.plots[name]).verify()
    markdown = result.markdown.read_text()
    for update in ("separate", "fused"):
        assert f"### Series: strong, intra, micro-batch 32, vit_b_16/cifar10, fp32, deepspeed, " \
               f"optimizer.master_update={update}" in markdown
    data = json.loads(result.json.read_text())
    assert {row["knobs"] for row in data["comm_share_by_batch"]} == {"separate", "fused"}
    assert "| GPUs | layout | optimizer.master_update | micro-batch |" in markdown


def test_wandb_keeps_every_series_table_when_their_titles_differ_only_past_the_key_length(tmp_path, monkeypatch):
    from vit_dt.records.wandb_files import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = []
    for point, (update, n, t) in enumerate([("separate", 1, 100.0), ("separate", 2, 60.0), ("fused", 1, 90.0),
                                            ("fused", 2, 50.0)]):
        record = make_record(world_size=n, epoch_time_s=t, micro_batch=32, point=point)
        record["config"]["optimizer"] = {"name": "adamw", "master_update": update}
        records.append(record)
    write_store(tmp_path, records)
    result = build_report([tmp_path], wandb=True)
    [row] = read_offline_run(result.wandb_dir)["history"]
    series_tables = {key.rsplit(".", 1)[0] for key in row if key.startswith("tables/series_")}
    assert len(series_tables) == 2, sorted(series_tables)     # the cut title is the same: numbered, not overwritten


def test_slurms_consumed_energy_stands_beside_vit_dts_own(tmp_path) -> None:
    """Where the cluster records ConsumedEnergy, the report shows it per point (by run directory), and — where it
    does not; the stored records are left as they were."""
    records = [make_record(world_size=n, epoch_time_s=t, micro_batch=64) for n, t in ((1, 10.0), (2, 5.5))]
    write_store(tmp_path, records)
    before = (tmp_path / "results.jsonl").read_text()
    result = build_report([tmp_path], out_dir=tmp_path / "out", slurm_energy={records[1]["run_dir"]: 1234.5})
    table = next(t for t in result.data["tables"] if "Slurm energy/job (J)" in t["columns"])
    column = table["columns"].index("Slurm energy/job (J)")
    by_n = {row[table["columns"].index("GPUs")]: row[column] for row in table["rows"]}
    assert by_n == {"1": "—", "2": "1.23e+03"}, by_n
    assert (tmp_path / "results.jsonl").read_text() == before
