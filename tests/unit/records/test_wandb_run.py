"""vit_dt.records.wandb_run, vit_dt.records.wandb_files and `vit-dt sync`: real offline W&B runs written, read back, and checked for secrets."""
from __future__ import annotations

import secrets as pysecrets
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import isolate_wandb
from vit_dt.commands import sync as sync_cmd
from vit_dt.records.secrets import REDACTED, scrub_secrets
from vit_dt.records.wandb_files import (
    RUN_ID_FILE,
    find_offline_runs,
    read_offline_run,
    read_offline_segments,
    read_run_id,
    run_id_for,
    run_id_of,
    segment_sort_key,
)
from vit_dt.records.wandb_run import WandbRun, flat_config, flatten, resolve_mode

BREAKDOWN_KEYS = ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step")


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """Keep W&B's own settings and caches out of $HOME, and start each test without a W&B mode in the env."""
    isolate_wandb(tmp_path, monkeypatch)


def make_cfg(mode: str | None = "offline", **wandb_extra) -> dict:
    return {
        "cluster": {"name": "local", "setup": ["module load cuda"], "env": {"NCCL_DEBUG": "WARN"}},
        "model": {"name": "vit_tiny", "hidden_dim": 128},
        "trainer": {"lr": 0.001, "micro_batch": 32},
        "scaling": {"mode": "strong"},
        "wandb": {"mode": mode, "project": "vit-dt-test", "entity": None, "group": None, "tags": []} | wandb_extra,
    }


def test_mode_comes_from_config_then_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(make_cfg("offline")) == "offline"        # config wins
    assert resolve_mode(make_cfg(None)) == "disabled"            # unset in config: the environment
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(make_cfg(None)) == "offline"             # neither: offline, safe on compute nodes
    assert resolve_mode({}) == "offline"
    with pytest.raises(ValueError, match="'dryrun'.*offline, online, disabled"):
        resolve_mode(make_cfg("dryrun"))


def test_flatten_and_scrub():
    api_key = "k" * 40
    cfg = {"a": {"b": {"c": 1}, "empty": {}}, "wandb": {"api_key": api_key},
           "cluster": {"setup": [f"export WANDB_API_KEY={api_key}", "module load x"], "env": {"HF_TOKEN": "hf_abc"}},
           "db": {"password": "hunter2", "Secret_Thing": {"nested": 1}}, "n": None}
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}
    scrubbed = scrub_secrets(cfg, secrets=[api_key])
    assert scrubbed["wandb"]["api_key"] == REDACTED
    assert scrubbed["cluster"]["setup"] == [f"export WANDB_API_KEY={REDACTED}", "module load x"]
    assert scrubbed["cluster"]["env"]["HF_TOKEN"] == REDACTED
    assert scrubbed["db"] == {"password": REDACTED, "Secret_Thing": REDACTED}
    assert scrubbed["a"] == {"b": {"c": 1}, "empty": {}}
    assert cfg["wandb"]["api_key"] == api_key                   # a copy: the input is untouched


def test_flat_config_redacts_the_environment_api_key(monkeypatch):
    value = pysecrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", value)
    flat = flat_config({"cluster": {"setup": [f"echo {value}"]}, "trainer": {"lr": 0.1}})
    assert flat == {"cluster.setup": [f"echo {REDACTED}"], "trainer.lr": 0.1}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_offline_run_is_read_back_and_holds_no_secret(tmp_path, monkeypatch):
    api_key = pysecrets.token_hex(20)                           # random, so a hit cannot be a coincidence
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    cfg = make_cfg("offline", tags=["from-config"])
    cfg["cluster"]["setup"].append(f"export WANDB_API_KEY={api_key}")   # a careless profile
    cfg["cluster"]["env"]["SOME_TOKEN"] = "tok-123456"
    run_dir = tmp_path / "sweep" / "points" / "0"

    run = WandbRun.start(cfg, run_dir, rank=0, group="sweep-20260101", job_type="strong",
                         tags=["cluster:local", "gpu:cpu", "layout:intra", "cluster:local"], name="vit_tiny-n1x2")
    assert run.active and run.mode == "offline"
    for step in range(1, 4):
        run.log({"step/loss": 2.0 / step, "step/lr": 1e-3, "step/skipped": None}
                | {f"step/time/{k}_ms": 10.0 * step for k in BREAKDOWN_KEYS}, step=step)
    run.log({"epoch/img_per_s": 123.0, "epoch/comm_share": 0.25}, step=10**6)
    run.summary({"epoch_time_s_mean": 4.5, "img_per_s": 123.0, "comm_share": 0.25, "final_val_acc": 0.875,
                 "mfu": None, "status": "completed"})
    wandb_dir = run.dir
    run.finish()
    run.finish()                                                # idempotent

    assert find_offline_runs(tmp_path / "sweep") == [wandb_dir]
    assert wandb_dir.is_relative_to(run_dir)
    leet, proto = read_offline_run(run_dir, reader="leet"), read_offline_run(run_dir, reader="proto")
    for back in (leet, proto):
        assert back["group"] == "sweep-20260101"
        assert back["job_type"] == "strong"
        assert back["tags"] == ["cluster:local", "gpu:cpu", "layout:intra"]
        assert back["name"] == "vit_tiny-n1x2"
        assert back["exit_code"] == 0
        config = back["config"]
        assert config["trainer.lr"] == 0.001 and config["model.name"] == "vit_tiny"
        assert config["scaling.mode"] == "strong" and config["wandb.tags"] == ["from-config"]
        assert config["cluster.env.SOME_TOKEN"] == REDACTED
        assert config["cluster.setup"][-1] == f"export WANDB_API_KEY={REDACTED}"
        step_rows = [row for row in back["history"] if "step/loss" in row]
        assert [row["_step"] for row in step_rows] == [1, 2, 3]
        assert all(f"step/time/{k}_ms" in row for row in step_rows for k in BREAKDOWN_KEYS)
        assert "step/skipped" not in step_rows[0]
        assert step_rows[2]["step/time/bwd_allreduce_ms"] == 30.0
        assert back["history"][-1]["epoch/comm_share"] == 0.25
        summary = back["summary"]
        assert summary["epoch_time_s_mean"] == 4.5 and summary["final_val_acc"] == 0.875
        assert summary["status"] == "completed" and "mfu" not in summary
    assert {k: v for k, v in leet.items() if k != "file"} == {k: v for k, v in proto.items() if k != "file"}

    files = files_under(run_dir)
    assert any(p.suffix == ".wandb" for p in files)
    # The config travels in plain bytes inside these files, so an unscrubbed key would be found by this scan.
    assert any(f"WANDB_API_KEY={REDACTED}".encode() in p.read_bytes() for p in files)
    leaks = [p for p in files if api_key.encode() in p.read_bytes()]
    assert leaks == [], f"WANDB_API_KEY found in {leaks}"


def test_disabled_mode_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    for cfg, rank in ((make_cfg("disabled"), 0), (make_cfg("offline"), 1)):
        run_dir = tmp_path / f"rank{rank}"
        run = WandbRun.start(cfg, run_dir, rank=rank, group="g", job_type="none", tags=["t"], name=None,
                             resumable=True)              # not even the run id file
        assert not run.active and run.dir is None
        run.log({"step/loss": 1.0}, step=1)
        run.summary({"final_val_acc": 0.5})
        run.finish(1)
        assert not run_dir.exists()
    monkeypatch.setenv("WANDB_MODE", "disabled")               # mode unset in config: the environment decides
    run = WandbRun.start(make_cfg(None), tmp_path / "env", rank=0, group=None, job_type="none", tags=[], name=None)
    assert not run.active and not (tmp_path / "env").exists()
    with pytest.raises(ValueError, match="valid: offline, online, disabled"):
        WandbRun.start(make_cfg("sometimes"), tmp_path, rank=1, group=None, job_type="x", tags=[], name=None)


def test_read_offline_run_reports_missing_logs_and_bad_reader(tmp_path):
    with pytest.raises(FileNotFoundError, match="run-\\*.wandb"):
        read_offline_run(tmp_path)
    with pytest.raises(ValueError, match="auto, leet, proto"):
        read_offline_run(tmp_path, reader="json")


def test_sync_lists_offline_runs_and_reports_a_failed_upload(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    for point in (0, 1):
        run = WandbRun.start(make_cfg("offline"), sweep / "points" / str(point), rank=0, group="s", job_type="weak",
                             tags=[], name=f"p{point}")
        run.log({"step/loss": 1.0}, step=1)
        run.finish()
    runs = find_offline_runs(sweep)
    assert len(runs) == 2
    (runs[1] / f"{next(runs[1].glob('run-*.wandb')).name}.synced").touch()   # what wandb sync leaves behind

    assert sync_cmd.main([str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"to sync  {runs[0]}" in out and f"synced   {runs[1]}" in out and "1 to sync" in out
    assert sync_cmd.main([str(sweep), "--dry-run", "--include-synced"]) == 0
    assert "2 to sync" in capsys.readouterr().out

    # No W&B server here: point wandb at a closed port and check the failure is reported, not swallowed.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    api_key = "local-" + pysecrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    assert sync_cmd.main([str(sweep), "--timeout-s", "20"]) == 1   # 5 s was too short on a loaded 2-core CI machine
    assert str(runs[0]) in capsys.readouterr().err
    sync_logs = list((sweep / "wandb" / "logs").glob("debug-sync.*.log"))   # kept with the sweep, not in the cwd
    assert sync_logs
    assert [p for p in files_under(sweep) if api_key.encode() in p.read_bytes()] == []
    assert sync_cmd.main([str(tmp_path / "nothing-here")]) == 2


def test_a_step_that_goes_back_is_warned_about(tmp_path, caplog):
    run = WandbRun.start(make_cfg("offline"), tmp_path, rank=0, group=None, job_type="none", tags=[], name=None)
    run.log({"step/loss": 1.0}, step=5)
    run.log({"epoch/acc": 0.5}, step=5)                          # same step: merged into one row
    with caplog.at_level("WARNING", logger="vit_dt.wandb"):
        run.log({"step/loss": 0.5}, step=3)
    run.finish()
    assert "step goes back" in caplog.text
    history = read_offline_run(tmp_path)["history"]
    assert history == [{"step/loss": 1.0, "epoch/acc": 0.5, "_step": 5}]   # W&B dropped the step-3 row


# ---------------------------------------------------------------- one W&B run per training run, across restarts

def test_the_run_id_is_created_once_in_the_run_dir_and_reused(tmp_path, caplog):
    run_dir = tmp_path / "run"
    first = run_id_for(run_dir)
    assert (run_dir / RUN_ID_FILE).read_text() == f"{first}\n"
    assert run_id_for(run_dir) == first == read_run_id(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_ID_FILE]        # no temporary file left behind
    assert run_id_for(tmp_path / "other") != first                          # a fresh run dir: a new W&B run

    racing = tmp_path / "race"                                              # many first starts at once: one id
    barrier, seen = threading.Barrier(8), []

    def start() -> None:
        barrier.wait()
        seen.append(run_id_for(racing))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and set(seen) == {read_run_id(racing)}
    assert sorted(p.name for p in racing.iterdir()) == [RUN_ID_FILE]

    chosen = tmp_path / "chosen"                                            # an id written there by hand is used
    chosen.mkdir()
    (chosen / RUN_ID_FILE).write_text("study-b16_run-1\n")
    assert run_id_for(chosen) == "study-b16_run-1"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RUN_ID_FILE).write_text("not/an id")
    with caplog.at_level("WARNING", logger="vit_dt.wandb"):
        replaced = run_id_for(broken)
    assert "does not hold a valid W&B run id" in caplog.text
    assert read_run_id(broken) == replaced and replaced != "not/an id"


def test_segments_are_ordered_by_start_even_within_one_second(tmp_path):
    wandb_dir = tmp_path / "wandb"
    names = ["offline-run-20260101_120001-abc", "offline-run-20260101_120000-abc-2",
             "offline-run-20260101_120000-abc", "offline-run-20260101_120000-abc-10",
             "offline-run-20260101_120000-abc-1"]
    for name in names:                            # W&B adds -1, -2, ... when a segment starts in the same second
        (wandb_dir / name).mkdir(parents=True)
        (wandb_dir / name / "run-abc.wandb").write_bytes(b"")
    assert [p.name for p in find_offline_runs(tmp_path)] == [
        "offline-run-20260101_120000-abc", "offline-run-20260101_120000-abc-1", "offline-run-20260101_120000-abc-2",
        "offline-run-20260101_120000-abc-10", "offline-run-20260101_120001-abc"]
    assert segment_sort_key(wandb_dir / names[1])[1:4] == ("abc", "20260101_120000", 2)


def _start(run_dir: Path, mode: str = "offline") -> WandbRun:
    return WandbRun.start(make_cfg(mode), run_dir, rank=0, group="sweep-1", job_type="strong", tags=["world:1"],
                          name="p0", resumable=True)


def _finish(run: WandbRun) -> None:
    """finish(), then wait for W&B's helper to finish the segment's file: it writes the last records a few ms after
    finish() returns. (A restarted attempt is a new process, started long after the previous one ended.)"""
    segment = run.dir
    run.finish()
    deadline = time.monotonic() + 30
    while read_offline_run(segment, reader="proto")["exit_code"] is None:
        assert time.monotonic() < deadline, f"{segment} was not completed"
        time.sleep(0.02)


def test_a_restarted_run_continues_the_same_wandb_run(tmp_path, caplog):
    run_dir = tmp_path / "sweep" / "points" / "0"
    first = _start(run_dir)                      # attempt 1: epoch 0 (steps 1-4), then 2 steps of epoch 1, then
    run_id = read_run_id(run_dir)                # the time limit (the epoch-1 checkpoint holds global step 4)
    assert first.run_id == run_id and first.segment == 1 and first.logged_through is None
    for step in range(1, 7):
        first.log({"step/loss": 1.0 / step}, step=step)
        if step == 4:
            first.log({"epoch/val_acc": 0.5}, step=4)
    _finish(first)

    second = _start(run_dir)                     # attempt 2: same run dir, resumes from the checkpoint at step 4
    assert second.run_id == run_id and second.segment == 2
    assert second.logged_through == 6            # what attempt 1 logged, read back from its segment
    second.resumed_from(4)                       # the checkpoint's global step: lower, so it changes nothing
    assert second.logged_through == 6
    with caplog.at_level("INFO", logger="vit_dt.wandb"):
        for step in range(5, 9):                 # epoch 1 again from its start: steps 5 and 6 are in W&B already
            second.log({"step/loss": 0.1 * step}, step=step)
        second.log({"epoch/val_acc": 0.75}, step=8)
    assert "not logging steps up to 6 again" in caplog.text
    second.summary({"status": "completed"})
    _finish(second)

    segments = find_offline_runs(tmp_path / "sweep")
    assert [run_id_of(p) for p in segments] == [run_id, run_id]         # oldest first (checked below)
    back = read_offline_segments(run_dir)
    assert [b["file"] for b in back] == [str(next(p.glob("run-*.wandb"))) for p in segments]
    for segment in back:
        assert segment["run_id"] == run_id and segment["resume"]        # written to continue the run when synced
        assert segment["group"] == "sweep-1" and segment["name"] == "p0" and segment["exit_code"] == 0
    steps = [[row["_step"] for row in segment["history"]] for segment in back]
    assert steps == [[1, 2, 3, 4, 5, 6], [7, 8]]                        # the step axis goes on, never back
    assert back[0]["history"][3]["epoch/val_acc"] == 0.5 and back[1]["history"][1]["epoch/val_acc"] == 0.75
    assert back[1]["summary"]["status"] == "completed"
    assert read_offline_run(run_dir)["file"] == back[1]["file"]           # the run dir alone: the newest segment

    third = _start(run_dir)                      # a third attempt that logs nothing still continues the id
    assert third.segment == 3 and third.logged_through == 8
    _finish(third)
    assert read_run_id(run_dir) == run_id

    other = _start(tmp_path / "sweep" / "points" / "1")
    assert other.run_id != run_id and other.segment == 1 and other.logged_through is None
    _finish(other)
    report = WandbRun.start(make_cfg(), tmp_path / "report", rank=0, group=None, job_type="report", tags=[],
                            name=None)           # not a training run: a W&B run of its own, no id file
    report.finish()
    assert not (tmp_path / "report" / RUN_ID_FILE).exists()
    assert read_offline_run(tmp_path / "report")["resume"] is False


def test_sync_uploads_the_segments_of_a_resumed_run_in_order(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "points" / "0"
    for attempt in range(2):
        run = _start(run_dir)
        run.log({"step/loss": 1.0}, step=attempt + 1)
        _finish(run)
    single = _start(sweep / "points" / "1")
    single.log({"step/loss": 1.0}, step=1)
    _finish(single)
    segments = [p for p in find_offline_runs(sweep) if p.is_relative_to(run_dir)]
    run_id = read_run_id(run_dir)

    assert sync_cmd.main([str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"to sync  {segments[0]}  (W&B run {run_id}: segment 1 of 2)" in out
    assert f"to sync  {segments[1]}  (W&B run {run_id}: segment 2 of 2)" in out
    assert out.index(str(segments[0])) < out.index(str(segments[1]))
    assert "3 offline run(s), 3 to sync" in out

    # No server: the first segment fails, so its later segment must not go up before it (steps out of order).
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "local-" + pysecrets.token_hex(20))
    only_this_run = ["--timeout-s", "5"]
    assert sync_cmd.main([str(run_dir), *only_this_run]) == 1
    captured = capsys.readouterr()
    assert f"wandb sync {segments[0]}" in captured.out
    assert f"wandb sync {segments[1]}" not in captured.out and f"held back {segments[1]}" in captured.out
    assert "1 later segment(s) of those runs held back" in captured.err

    # Segment 2 already uploaded but segment 1 not (synced by hand, out of order): said, not hidden.
    (segments[1] / f"run-{run_id}.wandb.synced").touch()
    assert sync_cmd.main([str(run_dir), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert f"synced   {segments[1]}" in captured.out and "older than the already synced" in captured.err


def test_epoch_rows_an_attempt_left_off_disk_are_logged_again_from_the_checkpoint(tmp_path):
    """W&B buffers the offline log (15 s): a job killed soon after an epoch end may leave that epoch's row (and the
    step rows before it) off disk. The resumed attempt logs the epoch rows again from the checkpoint's records."""
    from types import SimpleNamespace

    from vit_dt.run.record import RunRecorder, epoch_row, epoch_rows

    records = [{"epoch": 0, "steps": 6, "val_acc": 0.5, "breakdown_ms": {"fwd": 2.0}, "straggler": None},
               {"epoch": 1, "steps": 6, "val_acc": 0.625}]
    assert epoch_row(records[0]) == {"epoch/epoch": 0, "epoch/steps": 6, "epoch/val_acc": 0.5,
                                     "epoch/breakdown_ms/fwd": 2.0}
    assert [step for step, _ in epoch_rows(records)] == [6, 12]

    run_dir = tmp_path / "run"
    first = _start(run_dir)
    for step in range(1, 5):                     # all that reached disk before the kill: steps 1-4
        first.log({"step/loss": 1.0}, step=step)
    _finish(first)
    second = _start(run_dir)
    assert second.logged_through == 4
    RunRecorder.resumed_from(SimpleNamespace(wandb=second), SimpleNamespace(epochs=records))   # checkpoint: 2 epochs
    assert second.logged_through == 12
    second.log({"step/loss": 0.5}, step=12)      # already there: not logged again
    second.log({"step/loss": 0.25}, step=13)
    _finish(second)
    _, back = read_offline_segments(run_dir)
    assert [(row["_step"], row.get("epoch/val_acc")) for row in back["history"]] == [(6, 0.5), (12, 0.625), (13, None)]
    assert back["history"][0]["epoch/breakdown_ms/fwd"] == 2.0


def test_a_sweeps_points_share_one_group_named_after_the_sweep():
    from vit_dt.run.record import wandb_group

    assert wandb_group({"wandb": {"group": None}, "sweep_dir": "/o/sweeps/20260101-120000"}) == "20260101-120000"
    assert wandb_group({"wandb": {"group": "mine"}, "sweep_dir": "/o/sweeps/x"}) == "mine"
    assert wandb_group({"wandb": {"group": None}}) is None               # a lone `vit-dt train` run


def test_the_record_side_defaults_are_the_config_trees(monkeypatch):
    """DEFAULT_MODE/DEFAULT_PROJECT stand in for conf/wandb/default.yaml where a record carries no wandb node."""
    from vit_dt.config import compose
    from vit_dt.records.wandb_run import DEFAULT_MODE, DEFAULT_PROJECT

    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb_cfg = compose([])["wandb"]
    assert (wandb_cfg["mode"], wandb_cfg["project"]) == (DEFAULT_MODE, DEFAULT_PROJECT)
