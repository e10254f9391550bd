"""vit_dt.records.store, .result and .table, and `vit-dt results`: atomic result.json, the JSON-lines store under concurrent writers, the table."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import REPO
from vit_dt.commands import results as results_cmd
from vit_dt.records.result import point_of, read_result, write_result
from vit_dt.records.store import ResultsStore
from vit_dt.records.table import results_table


def test_write_result_is_atomic_and_strict_json(tmp_path):
    run_dir = tmp_path / "points" / "3"
    path = write_result(run_dir, {"status": "completed", "loss": float("nan"), "dir": run_dir, "acc": 0.5})
    assert path == run_dir / "result.json"
    text = path.read_text()
    assert "NaN" not in text                                   # strict JSON: jq and browsers can read it
    assert json.loads(text) == {"status": "completed", "loss": None, "dir": str(run_dir), "acc": 0.5}
    write_result(run_dir, {"status": "failed"})                # replaces, leaves no temporary file behind
    assert read_result(run_dir) == {"status": "failed"}
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]


def test_write_result_keeps_the_old_file_when_serialising_fails(tmp_path):
    write_result(tmp_path, {"status": "completed"})
    with pytest.raises(TypeError, match="object"):
        write_result(tmp_path, {"status": "completed", "bad": object()})
    assert read_result(tmp_path) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_store_path_from_directory_or_file(tmp_path):
    assert ResultsStore(tmp_path).path == tmp_path / "results.jsonl"
    assert ResultsStore(tmp_path / "x.jsonl").path == tmp_path / "x.jsonl"
    assert ResultsStore(tmp_path / "new-sweep").path == tmp_path / "new-sweep" / "results.jsonl"
    assert ResultsStore(tmp_path).records() == []


WRITER = textwrap.dedent('''
    import sys, time
    from vit_dt.records.store import ResultsStore
    store, writer, count, start_at = ResultsStore(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start_at:          # all writers start together
        time.sleep(0.001)
    for i in range(count):
        # Sizes from a few bytes to 96 KiB: far beyond PIPE_BUF, so a torn or interleaved write would show.
        store.append({"writer": writer, "i": i, "pad": "x" * ((writer * 7919 + i * 104729) % 98304)})
''')


def test_concurrent_appends_from_several_processes_lose_nothing(tmp_path):
    writers, count = 6, 40
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start_at = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(w), str(count), str(start_at)],
                              env=os.environ | {"PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * writers, errors

    raw = (tmp_path / "results.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == writers * count + 1      # one line per record, newline-terminated
    for line in lines[:-1]:
        record = json.loads(line)                                      # every line whole
        assert len(record["pad"]) == (record["writer"] * 7919 + record["i"] * 104729) % 98304
    records = ResultsStore(tmp_path).records()
    assert sorted((r["writer"], r["i"]) for r in records) == [(w, i) for w in range(writers) for i in range(count)]
    for w in range(writers):                                           # each writer's records in its own order
        assert [r["i"] for r in records if r["writer"] == w] == list(range(count))


def test_torn_last_line_is_skipped_with_a_warning_and_the_next_append_is_whole(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"point": 0, "status": "completed"})
    with open(store.path, "ab") as handle:                             # a writer killed mid-line
        handle.write(b'{"point": 1, "status": "compl')
    with pytest.warns(RuntimeWarning, match="last line"):
        assert store.records() == [{"point": 0, "status": "completed"}]
    store.append({"point": 2, "status": "completed"})
    with pytest.warns(RuntimeWarning, match="line 2"):                 # the fragment now sits alone on line 2
        assert [r["point"] for r in store.records()] == [0, 2]


def test_an_empty_object_line_is_skipped_like_a_corrupt_one(tmp_path, capsys):
    store = ResultsStore(tmp_path)
    store.append({"point": 0, "status": "completed"})
    with open(store.path, "ab") as handle:
        handle.write(b"{}\n")
    store.append({"point": 1, "status": "completed"})
    with pytest.warns(RuntimeWarning, match="skipping unreadable line 2: an empty JSON object"):
        assert [r["point"] for r in store.records()] == [0, 1]
    with pytest.warns(RuntimeWarning, match="line 2"):
        assert results_cmd.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "2 record(s)" in printed and not any(set(line.split()) == {"-"} for line in printed.splitlines())


def test_latest_by_point_keeps_the_last_record_of_a_rerun(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"point": 0, "status": "failed"})
    store.append({"point": 1, "status": "completed"})
    store.append({"point": 0, "status": "completed"})                  # requeued and finished
    store.append({"run_dir": "/x/sweeps/s/points/7", "status": "completed"})   # older record without "point"
    latest = store.latest_by_point()
    assert list(latest) == [0, 1, 7]
    assert latest[0]["status"] == "completed"
    assert point_of({"run_dir": "/x/runs/20260101-1"}) == "/x/runs/20260101-1"


def record(point, world_size, nodes, epochs, **extra):
    return {"point": point, "status": "completed", "world_size": world_size, "nodes": nodes,
            "config": {"trainer": {"micro_batch": 16, "grad_accum": 2, "global_batch": None}},
            "epochs": epochs, "final_val_acc": epochs[-1]["val_acc"] if epochs else None, **extra}


def test_results_table_derives_missing_columns_from_epochs():
    epochs = [{"time_s": 30.0, "img_per_s": 50.0, "val_acc": 0.5}, {"time_s": 10.0, "img_per_s": 150.0, "val_acc": 0.7},
              {"time_s": 12.0, "img_per_s": 130.0, "val_acc": 0.8}]
    rows = results_table([
        record(1, 4, 2, epochs, comm_share=0.25),
        record(0, 2, 1, epochs, global_batch=64, epoch_time_s_mean=9.5, img_per_s=160.0),
        {"point": 2, "status": "failed", "world_size": 2, "epochs": []},
    ])
    assert [r["point"] for r in rows] == [0, 1, 2]
    assert rows[0] == {"point": 0, "status": "completed", "world_size": 2, "nodes": 1, "global_batch": 64,
                       "epoch_time_s": 9.5, "img_per_s": 160.0, "comm_share": None, "final_val_acc": 0.8,
                       "code": None}     # a record from before provenance
    assert rows[1]["global_batch"] == 16 * 2 * 4                       # derived: micro x accum x world
    assert rows[1]["epoch_time_s"] == 11.0 and rows[1]["img_per_s"] == 140.0   # first epoch left out
    assert rows[1]["comm_share"] == 0.25
    assert rows[2]["epoch_time_s"] is None and rows[2]["final_val_acc"] is None


def test_to_csv_and_the_results_command(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    store = ResultsStore(sweep)
    epochs = [{"time_s": 20.0, "img_per_s": 100.0, "val_acc": 0.6}, {"time_s": 10.0, "img_per_s": 200.0, "val_acc": 0.9}]
    store.append(record(0, 1, 1, epochs, comm_share=0.0))
    store.append(record(1, 2, 2, epochs, comm_share=0.125))
    store.append({"point": 1, "status": "failed", "world_size": 2, "nodes": 2, "epochs": []} | {"superseded": True})
    store.append(record(1, 2, 2, epochs, comm_share=0.125))            # the re-run wins

    csv_path = tmp_path / "out" / "table.csv"
    assert results_cmd.main([str(sweep), "--csv", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    header, rule, *body = printed.splitlines()
    assert header.split()[:3] == ["point", "status", "world"]
    assert "12.5%" in body[1] and "0.9000" in body[1] and "completed" in body[1]
    assert "2 record(s)" in printed

    rows = list(csv.DictReader(csv_path.open()))
    assert [r["point"] for r in rows] == ["0", "1"]
    assert rows[1]["global_batch"] == str(16 * 2 * 2) and float(rows[1]["epoch_time_s"]) == 10.0
    assert math.isclose(float(rows[1]["comm_share"]), 0.125)

    assert results_cmd.main([str(sweep), "--all"]) == 0
    assert "4 record(s)" in capsys.readouterr().out

    assert results_cmd.main([str(tmp_path / "nowhere")]) == 1
    assert "no results store" in capsys.readouterr().err


def test_results_command_reads_a_result_json_or_its_run_directory(tmp_path, capsys):
    """Like `vit-dt report` and `vit-dt predict`: one run's result.json is a source too."""
    epochs = [{"time_s": 20.0, "img_per_s": 100.0, "val_acc": 0.6}, {"time_s": 10.0, "img_per_s": 200.0, "val_acc": 0.9}]
    write_result(tmp_path / "run", record(None, 1, 1, epochs, run_dir=str(tmp_path / "run")))
    for source in (tmp_path / "run" / "result.json", tmp_path / "run"):
        assert results_cmd.main([str(source)]) == 0
        printed = capsys.readouterr().out
        assert "completed" in printed and "0.9000" in printed
        assert f"1 record(s) from {tmp_path / 'run' / 'result.json'}" in printed
    (tmp_path / "bad.json").write_text("{not json")
    assert results_cmd.main([str(tmp_path / "bad.json")]) == 1
    assert "bad.json is not a result.json: not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("[1, 2]")
    assert results_cmd.main([str(tmp_path / "other.json")]) == 1
    assert "other.json is not a result.json (no `status` key)" in capsys.readouterr().err


def test_results_csv_that_cannot_be_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    store = ResultsStore(tmp_path / "sweep")
    store.append(record(0, 1, 1, [{"time_s": 1.0, "img_per_s": 1.0, "val_acc": 0.5}]))
    (tmp_path / "out").mkdir()
    assert results_cmd.main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert f"--csv {tmp_path / 'out'} is a directory; pass a file path" in captured.err and captured.out == ""
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "notes.txt").write_text("mine")
    assert results_cmd.main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "notes.txt" / "t.csv")]) == 2
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_table_and_csv_say_what_each_point_of_a_sweep_was(tmp_path, capsys):
    """The settings the points differ in (the sweep's axes) become a column of the table and CSV columns;
    bookkeeping (run names, output dirs, W&B) never does."""
    epochs = [{"time_s": 20.0, "img_per_s": 100.0, "val_acc": 0.6}, {"time_s": 10.0, "img_per_s": 200.0, "val_acc": 0.9}]
    store = ResultsStore(tmp_path / "sweep")
    for point, (gpus, micro) in enumerate([(1, 16), (1, 32), (2, 16), (2, 32)]):
        rec = record(point, gpus, 1, epochs)
        rec["config"] = {"resources": {"gpus_per_node": gpus}, "trainer": {"micro_batch": micro, "grad_accum": 1},
                         "optimizer": {"name": "adamw", "betas": [0.9, 0.999]}, "run_name": f"run{point}",
                         "out_dir": f"/o/{point}", "wandb": {"group": f"g{point}"}}
        store.append(rec)
    assert results_cmd.main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "settings"
    assert lines[2].endswith("resources.gpus_per_node=1, trainer.micro_batch=16")
    assert lines[5].endswith("resources.gpus_per_node=2, trainer.micro_batch=32")
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert list(rows[0])[-2:] == ["resources.gpus_per_node", "trainer.micro_batch"]
    assert [(r["resources.gpus_per_node"], r["trainer.micro_batch"]) for r in rows] == [
        ("1", "16"), ("1", "32"), ("2", "16"), ("2", "32")]
    # One point only: nothing differs, no settings column.
    single = ResultsStore(tmp_path / "one")
    single.append(record(0, 1, 1, epochs))
    assert results_cmd.main([str(tmp_path / "one")]) == 0
    assert "settings" not in capsys.readouterr().out
