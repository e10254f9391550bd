"""Reliability on the real local Slurm cluster: a time limit requeues and resumes exactly, a cancelled point is
resumed alone, a killed rank fails its job fast with the reason in `vit-dt status`, bad input stops a sweep
before anything is queued. Real training (CPU, vit_tiny, digits), real sbatch/srun/scancel/sacct."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from vit_dt.records.store import ResultsStore
from vit_dt.slurm.manifest import read_manifest
from vit_dt.slurm.status import sweep_status

FAST = ["dataset=digits", "model=vit_tiny", "trainer.micro_batch=16", "wandb.mode=disabled"]
QUICK = FAST + ["trainer.epochs=1", "trainer.max_steps_per_epoch=3"]
EPOCH_LINE = re.compile(r"\[rank 0\] vit_dt\.run\.loop: epoch (\d+): ([0-9.]+) s,")
# 14 epochs x (5 train + 4 validation forwards) x 0.36 s of sleep = 45 s, + ~7 s of compute: more than a first
# attempt's 25-55 s window (minus ~10 s of start-up) can hold, less than that plus one requeued attempt (~38 s)
EPOCHS, STEPS, FORWARD_SLEEP_S = 14, 5, 0.36
TIMED = FAST + ["dataset.val_fraction=0.03", f"trainer.epochs={EPOCHS}", f"trainer.max_steps_per_epoch={STEPS}",
                "debug=slow_rank", f"debug.delay_s={{0:{FORWARD_SLEEP_S}}}"]
RESUMED_LINE = re.compile(r"resumed from \S+/epoch-(\d+) \((\d+) epochs done\)")


def store_records(sweep_dir: Path) -> list[dict]:
    return ResultsStore(sweep_dir / "results.jsonl").records()


def task_processes(job_id: str, rank: int) -> list[int]:
    """PIDs of the Python task processes of `rank` in Slurm job `job_id` (srun's own process excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text(errors="replace").split("\0")
                       if "=" in item)
            cmdline = (entry / "cmdline").read_text(errors="replace")
        except OSError:
            continue
        if (env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(rank) and "SLURM_STEP_ID" in env
                and "submitit.core._submit" in cmdline and not cmdline.startswith("srun")):
            pids.append(int(entry.name))
    return pids


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


# --- time limit: USR2, checkpoint, requeue, exact resume --------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_time_limit_requeues_each_array_task_and_resumes_exactly(slurm_cluster, tmp_path):
    """Points 0-1 (seeds 0, 1) have a 1-minute limit and ~52 s of training after ~10 s of start-up: each gets USR2,
    submitit requeues it, the next attempt resumes from the epoch checkpoint and finishes. Points 2-3 are the same
    runs with 5 minutes, uninterrupted. One shape, one job array: each task is requeued as `<array>_<task>`, not
    the whole array (Lightning 15022: requeue breaks for job arrays), and records one result.

    slurmctld checks time limits every 30 s and sends --signal=USR2@D at the first check where the job has less
    than D + 30 s left: with D = 5 s a 1-minute job gets USR2 25-55 s after it starts (a requeued one, which starts
    ~10 s after the check that requeued it, ~50 s after). (The profile's 30 s would send it at the first check.)
    A sleep in every forward pass (the test-only debug.delay_s) makes the run outlast any first
    window whatever the CPU's speed, so the test cannot pass without a requeue."""
    sweep_dir = tmp_path / "timelimit"
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "resources.time_min=1,5", "trainer.seed=0,1",
                        "cluster.signal_delay_s=5", "hydra.launcher.max_num_timeout=6", *TIMED)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    manifest = read_manifest(sweep_dir)
    limited_job = next(job for job in manifest["jobs"] if job["points"] == [0, 1])
    assert limited_job["array"], manifest["jobs"]
    rows = wait_until_done(sweep_dir, timeout_s=480)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 4, [(r.state, r.reason) for r in rows]

    for task, (limited_row, reference_row) in enumerate(zip(rows[:2], rows[2:])):
        limited, reference = (json.loads((Path(r.run_dir) / "result.json").read_text())
                              for r in (limited_row, reference_row))
        env = json.loads((Path(limited_row.run_dir) / "launch" / "rank0.json").read_text())["env"]
        assert int(env.get("SLURM_RESTART_COUNT", 0)) >= 1, f"point {task} was never requeued"
        assert (env["SLURM_ARRAY_JOB_ID"], env["SLURM_ARRAY_TASK_ID"]) == (limited_job["job_id"], str(task))
        # the same parameters as the uninterrupted run: exact resume (model, optimizer, scheduler, RNG)
        assert limited["param_checksums"] == reference["param_checksums"]
        assert [e["val_acc"] for e in limited["epochs"]] == [e["val_acc"] for e in reference["epochs"]]
        assert len(limited["epochs"]) == EPOCHS
        _assert_no_epoch_trained_twice(Path(limited_row.stdout).read_text(), limited)
        assert not list(Path(limited_row.run_dir).glob("error-rank*.txt"))

    # a requeue is not a failure: exactly one record per point in the store, all completed
    records = store_records(sweep_dir)
    assert sorted((r["point"], r["status"]) for r in records) == [(p, "completed") for p in range(4)], records


def _assert_no_epoch_trained_twice(log: str, limited: dict) -> None:
    """Epochs done before a requeue are not redone: after each resume from epoch-K, no epoch < K is trained again,
    and result.json keeps the times each epoch had when it was first trained."""
    attempts = re.split(r"submitit INFO \([^)]*\) - Starting with JobEnvironment", log)[1:]
    assert len(attempts) >= 2, "expected a first attempt and at least one requeued attempt"
    first_epochs = [(int(e), float(t)) for e, t in EPOCH_LINE.findall(attempts[0])]
    assert first_epochs, "the first attempt finished no epoch before its USR2 (machine too slow?)"
    logged: dict[int, float] = {}
    for attempt in attempts:
        resumed = RESUMED_LINE.search(attempt)
        start = int(resumed.group(1)) if resumed else 0
        for epoch, seconds in ((int(e), float(t)) for e, t in EPOCH_LINE.findall(attempt)):
            assert epoch >= start, f"epoch {epoch} trained again after resuming from epoch-{start}"
            logged.setdefault(epoch, seconds)
    assert "resumed from" in attempts[1]
    for epoch, seconds in first_epochs + list(logged.items()):
        assert round(limited["epochs"][epoch]["time_s"], 1) == pytest.approx(seconds, abs=0.051), epoch


# --- idempotent sweeps -------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_cancelled_point_is_shown_and_resume_runs_only_it(slurm_cluster, tmp_path, capsys):
    from vit_dt.commands import status

    sweep_dir = tmp_path / "cancel"
    args = ("cluster=localslurm", "trainer.seed=0,1", *QUICK)
    sub = run_sweep_cli(sweep_dir, *args)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    first = read_manifest(sweep_dir)
    subprocess.run(["scancel", first["points"][1]["job_id"]], check=True)
    rows = wait_until_done(sweep_dir, timeout_s=300)
    assert [r.state for r in rows] == ["completed", "cancelled"]
    assert status.main([str(sweep_dir)]) == 0
    table = capsys.readouterr().out
    assert "cancelled" in table and "CANCELLED" in table and f"vit-dt sweep --resume {sweep_dir}" in table

    # the same command again: only the cancelled point runs, in its own run directory
    again = run_sweep_cli(sweep_dir, *args)
    assert again.proc.returncode == 0, again.proc.stdout + again.proc.stderr
    assert "1 completed (skipped)" in again.proc.stdout and "point 1: cancelled" in again.proc.stdout
    manifest = read_manifest(sweep_dir)
    new_jobs = manifest["jobs"][len(first["jobs"]):]
    assert [j["points"] for j in new_jobs] == [[1]]
    assert [len(p["attempts"]) for p in manifest["points"]] == [1, 2]
    assert manifest["points"][1]["attempts"][1]["reason"] == "resume: was cancelled"
    assert manifest["points"][1]["run_dir"] == first["points"][1]["run_dir"]
    rows = wait_until_done(sweep_dir, timeout_s=300)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 2
    assert sorted(r["point"] for r in store_records(sweep_dir) if r["status"] == "completed") == [0, 1]

    # nothing left to do: --resume submits nothing
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "sweep", "--resume", str(sweep_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nothing to run again" in proc.stdout, proc.stdout + proc.stderr
    assert len(read_manifest(sweep_dir)["jobs"]) == len(manifest["jobs"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_copied_sweep_resumes_into_the_copy_and_leaves_the_original_as_it_was(tmp_path):
    """sweep.json and each point's config.yaml name the directory the sweep was made in: `--resume COPY` must run
    the point again in the copy (its results store included), not in the original. cluster=local: no Slurm."""
    from tests.fixtures.datasets import write_cifar10

    root = tmp_path / "data"
    original = tmp_path / "sweeps" / "s"
    sub = run_sweep_cli(original, "cluster=local", "dataset=cifar10", f"dataset.root={root}", "--no-verify-data",
                        "model=vit_tiny", "trainer.micro_batch=16", "wandb.mode=disabled", "trainer.epochs=1",
                        "trainer.max_steps_per_epoch=2")
    assert sub.proc.returncode == 1 and "local point(s) failed: [0]" in sub.proc.stderr, sub.proc.stderr
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    write_cifar10(root)  # the data is there now: the point can complete

    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "sweep", "--resume", str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"made in {original}" in proc.stdout and f"sweep dir: {copy}" in proc.stdout
    run_dir = copy / "points" / "0"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "attempts" / "1" / "result.json").read_text())["status"] == "failed"
    completed = [r for r in store_records(copy) if r["status"] == "completed"]
    assert [(r["sweep_dir"], r["run_dir"]) for r in completed] == [(str(copy), str(run_dir))]
    manifest = read_manifest(copy)
    assert manifest["sweep_dir"] == str(copy) and manifest["resumes"][-1]["moved_from"] == str(original)
    assert manifest["points"][0]["run_dir"] == str(run_dir) and str(copy) in manifest["points"][0]["logs"]["stdout"]
    assert f"sweep_dir: {copy}\n" in (run_dir / "config.yaml").read_text()
    # the original: not one file added, changed or moved
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before


def test_status_of_a_copied_or_moved_sweep_reads_the_directory_given(tmp_path, capsys):
    """`vit-dt status` only reads: a copy's (or a moved sweep's) points are its own <sweep>/points/<i>, whatever
    directory its sweep.json was written in; the same sweep through a link (<sweeps>/latest) is not a copy."""
    from vit_dt.commands import status
    from vit_dt.slurm.manifest import write_manifest

    original = tmp_path / "sweeps" / "s"
    points = []
    for i in range(2):
        run_dir = original / "points" / str(i)
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps({"status": "failed"}))
        logs = {"stdout": str(original / "local" / f"{10 + i}_0_log.out"),
                "stderr": str(original / "local" / f"{10 + i}_0_log.err")}
        points.append({"index": i, "overrides": [f"trainer.seed={i}"], "run_dir": str(run_dir), "scheduler": "local",
                       "job_id": str(10 + i), "local_state": "failed", "logs": logs,
                       "attempts": [{"attempt": 1, "job_id": str(10 + i), "reason": "submitted"}]})
    write_manifest(original, {"schema_version": 1, "sweep_dir": str(original), "dry_run": False, "jobs": [],
                              "points": points})
    link = tmp_path / "sweeps" / "latest"
    link.symlink_to("s")
    manifest, rows = sweep_status(link)
    assert "moved_from" not in manifest and rows[0].run_dir == str(original / "points" / "0")

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (copy / "points" / "1" / "result.json").write_text(json.dumps({"status": "completed"}))  # the copy's own
    manifest, rows = sweep_status(copy)
    assert [r.result for r in rows] == ["failed", "completed"]
    assert [r.run_dir for r in rows] == [str(copy / "points" / "0"), str(copy / "points" / "1")]
    assert rows[0].stderr == str(copy / "local" / "10_0_log.err")
    assert (manifest["sweep_dir"], manifest["moved_from"]) == (str(copy), str(original))
    assert status.main([str(copy)]) == 0
    table = capsys.readouterr().out
    assert f"sweep {copy}:" in table and f"copied or moved from {original}" in table
    assert f"vit-dt sweep --resume {copy}" in table
    assert read_manifest(copy)["sweep_dir"] == str(original)  # status writes nothing

    moved = tmp_path / "moved"
    original.rename(moved)
    _, rows = sweep_status(moved)
    assert [(r.result, r.run_dir) for r in rows] == [("failed", str(moved / "points" / str(i))) for i in range(2)]


# --- fail fast -----------------------------------------------------------------------------------------------
def two_node_point_mid_training(sweep_dir: Path, *overrides: str) -> tuple[str, Path, int]:
    """A long 2-node point, once it has trained an epoch: (job id, run dir, rank 1's PID)."""
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "resources.nodes=2", "trainer.epochs=200",
                        "trainer.max_steps_per_epoch=20", *FAST, *overrides)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    point = read_manifest(sweep_dir)["points"][0]
    job_id, run_dir = point["job_id"], Path(point["run_dir"])
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("epoch-*")):  # mid-training: an epoch is done
        assert time.monotonic() < deadline, f"job {job_id} did not start training: {sacct_state(job_id)}"
        time.sleep(0.5)
    pids = task_processes(job_id, rank=1)
    assert len(pids) == 1, pids
    return job_id, run_dir, pids[0]


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_killed_rank_fails_its_job_fast_and_status_says_why(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "kill"
    job_id, run_dir, rank1 = two_node_point_mid_training(sweep_dir)
    trained = len(list((run_dir / "checkpoints").glob("epoch-*")))
    os.kill(rank1, signal.SIGKILL)
    killed_at = time.monotonic()
    while sacct_state(job_id) in ("RUNNING", "COMPLETING", "PENDING", ""):
        assert time.monotonic() - killed_at < 120, "the job outlived its dead rank by 2 minutes"
        time.sleep(0.5)
    assert sacct_state(job_id) == "FAILED"

    _, rows = sweep_status(sweep_dir)
    assert rows[0].state == "failed" and rows[0].reason
    assert "task 1: Killed" in rows[0].reason, rows[0].reason
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "status", str(sweep_dir)], capture_output=True,
                          text=True, timeout=120)
    assert "why (not completed)" in proc.stdout and "task 1: Killed" in proc.stdout, proc.stdout
    # the failed record keeps what was measured before the kill, and says why in one line
    failed = [r for r in store_records(sweep_dir) if r["status"] == "failed"]
    assert len(failed) == 1 and len(failed[0]["epochs"]) >= trained >= 1, failed
    assert failed[0]["failure_cause"] == "collective" and "\n" not in failed[0]["error"], failed[0]["error"]
    assert "a peer rank stopped answering after" in proc.stdout, proc.stdout


def _ends_within_the_bound(job_id: str, stopped_at: float, bound_s: float) -> None:
    try:
        while sacct_state(job_id) in ("RUNNING", "COMPLETING", "PENDING", ""):
            assert time.monotonic() - stopped_at < bound_s + 60, f"the job outlived its stopped rank by {bound_s + 60}s"
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    assert time.monotonic() - stopped_at < bound_s + 30 + 10       # the bound, the 30 s, sacct's lag
    assert sacct_state(job_id) == "FAILED"


def _the_stopped_rank_is_named(sweep_dir: Path, phase_word: str) -> dict:
    """The failed record and `vit-dt status` name rank 1, its host and its last phase (its heartbeat went stale
    while rank 0's kept beating inside the timed-out collective)."""
    failed = [r for r in store_records(sweep_dir) if r["status"] == "failed"]
    assert failed, store_records(sweep_dir)
    record = failed[-1]
    assert [s["rank"] for s in record["silent_ranks"]] == [1], record["silent_ranks"]
    silent = record["silent_ranks"][0]
    assert silent["host"] and phase_word in silent["phase"], silent
    assert record["error"].startswith(f"rank 1 on {silent['host']} went silent"), record["error"]
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "status", str(sweep_dir)], capture_output=True,
                          text=True, timeout=120)
    assert f"rank 1 on {silent['host']} went silent" in proc.stdout and silent["phase"] in proc.stdout, proc.stdout
    return record


@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ["deepspeed", "ddp"])
def test_a_stopped_rank_ends_its_job_within_the_collective_bound(slurm_cluster, tmp_path, engine):
    """SIGSTOP: the rank stays alive and never answers. Every group, DeepSpeed's own included, is bounded by
    trainer.dist_timeout_s, so rank 0 gives up and the job ends; before, a DeepSpeed job waited 22 minutes."""
    bound_s = 30
    sweep_dir = tmp_path / f"stop-{engine}"
    job_id, _, rank1 = two_node_point_mid_training(sweep_dir, f"trainer.dist_timeout_s={bound_s}", f"engine={engine}")
    os.kill(rank1, signal.SIGSTOP)
    _ends_within_the_bound(job_id, time.monotonic(), bound_s)
    record = _the_stopped_rank_is_named(sweep_dir, "epoch")
    assert record["failure_cause"] == "collective" and record["epochs"], record


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_a_rank_stopped_during_start_up_ends_its_job_within_the_bound(slurm_cluster, tmp_path):
    """Rank 1 is stopped before it trains (its heartbeat says a start-up phase): rank 0 waits in the rendezvous,
    on DeepSpeed's op lock or in the engine's first broadcast, each bounded, and names rank 1 and its phase."""
    bound_s = 30
    sweep_dir = tmp_path / "stop-start-up"
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "resources.nodes=2", "trainer.epochs=2",
                        f"trainer.dist_timeout_s={bound_s}", *FAST)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    point = read_manifest(sweep_dir)["points"][0]
    job_id, beat = point["job_id"], Path(point["run_dir"]) / "heartbeats" / "rank-1.json"
    deadline = time.monotonic() + 300
    while True:     # the first beat comes before the rendezvous: the rank is starting up
        assert time.monotonic() < deadline, f"rank 1 of job {job_id} never beat: {sacct_state(job_id)}"
        try:
            first = json.loads(beat.read_text())
            break
        except (OSError, ValueError):
            time.sleep(0.1)
    os.kill(first["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    assert first["phase"].startswith("start-up"), first
    _ends_within_the_bound(job_id, stopped_at, bound_s)
    record = _the_stopped_rank_is_named(sweep_dir, "start-up")
    assert record["epochs"] == [] and record["failure_cause"] in ("collective", "hang"), record


# --- bad input before queueing -----------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_root_only_on_compute_nodes_skips_the_login_check_and_the_job_says_why(slurm_cluster, tmp_path):
    """--no-verify-data queues a point whose root the login node cannot check; the job then fails on the compute
    node and `vit-dt status` names the path."""
    sweep_dir = tmp_path / "noverify"
    root = tmp_path / "no-such-root"
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", "dataset=cifar10", f"dataset.root={root}",
                        "model=vit_tiny", "wandb.mode=disabled", "--no-verify-data")
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    rows = wait_until_done(sweep_dir, timeout_s=300)
    assert (rows[0].state, rows[0].result) == ("failed", "failed")
    assert f"{root}/cifar-10-batches-py" in rows[0].reason, rows[0].reason


def _sweep(capsys, *args: str) -> tuple[int, str]:
    from vit_dt.commands import sweep

    code = sweep.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("problem", ["missing", "truncated"])
def test_bad_dataset_root_stops_the_sweep_before_queueing(tmp_path, capsys, problem):
    """Checked on this (login) node: a missing root or a corrupt file names the path; nothing is queued."""
    from tests.fixtures.datasets import write_cifar10

    root = tmp_path / "data"
    if problem == "truncated":
        write_cifar10(root)
        bad = root / "cifar-10-batches-py" / "data_batch_2"
        bad.write_bytes(bad.read_bytes()[:1000])
        expected = str(bad)
    else:
        expected = str(root / "cifar-10-batches-py")
    sweep_dir = tmp_path / "sweep"
    code, out = _sweep(capsys, "cluster=localslurm", "dataset=cifar10", f"dataset.root={root}", "trainer.seed=0,1",
                       f"hydra.sweep.dir={sweep_dir}")
    assert code == 2, out
    assert "nothing was submitted" in out and expected in out and "--no-verify-data" in out
    assert out.count(expected) == 1  # one check per distinct root, not one per point
    assert not (sweep_dir / "sweep.json").exists() and not (sweep_dir / "slurm").exists()


@pytest.mark.parametrize("overrides, message", [
    (["cluster=localslurm", "cluster.launcher=bogus"], "cluster.launcher='bogus' is not valid; choose one of"),
    (["cluster=localslurm", "++cluster.acount=x"], "acount"),
    (["cluster=nosuchcluster"], "nosuchcluster"),
    (["cluster=localslurm", "resources.partition=nosuch"], "valid partitions: cpu, gpu"),
    (["cluster=vaughan", "resources.time_min=1"], "not longer than cluster.signal_delay_s=120 s"),
])
def test_invalid_profile_or_request_is_refused_before_queueing(tmp_path, capsys, overrides, message):
    code, out = _sweep(capsys, *overrides, *QUICK, f"hydra.sweep.dir={tmp_path / 's'}")
    assert code == 2 and message in out, out
    assert not (tmp_path / "s" / "sweep.json").exists()


def test_resume_refuses_what_it_cannot_resume(tmp_path, capsys):
    from vit_dt.commands import sweep

    assert sweep.main(["cluster=nebula", f"hydra.sweep.dir={tmp_path}", "--dry-run"]) == 0
    capsys.readouterr()
    assert sweep.main(["--resume", str(tmp_path)]) == 2
    assert "holds a dry run" in capsys.readouterr().err
    assert sweep.main(["--resume", str(tmp_path), "trainer.seed=1"]) == 2
    assert "drop the overrides" in capsys.readouterr().err
    assert sweep.main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "made by `vit-dt sweep`" in capsys.readouterr().err
    assert sweep.main(["--resume"]) == 2
    assert "needs the sweep directory" in capsys.readouterr().err


def test_failure_reason_reads_the_trainer_error_and_srun_verdicts(tmp_path):
    """`vit-dt status`'s why-column from files as the trainer and srun write them (multi-line exceptions, the
    lines of an earlier requeued attempt left out)."""
    from vit_dt.slurm.status import failure_reason

    run_dir = tmp_path / "points" / "0"
    run_dir.mkdir(parents=True)
    (run_dir / "error-rank1.txt").write_text(
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    load()\n'
        "vit_dt.data.errors.DatasetError: /data/cifar-10-batches-py: missing directory\n  fix: vit-dt data prepare\n")
    logs = tmp_path / "slurm"
    logs.mkdir()
    (logs / "7_0_log.err").write_text(
        "slurmstepd-c1: error: *** JOB 7 ON c1 CANCELLED AT 2026-01-01T00:00:00 DUE TO JOB REQUEUE ***\n"
        "srun: error: c1: task 0: Exited with exit code 255\n"
        "srun: error: c2: task 1: Exited with exit code 1\n")
    (logs / "7_1_log.err").write_text("[rank1]: something\n")
    reason = failure_reason({"run_dir": str(run_dir), "logs": {"stderr": str(logs / "7_0_log.err")}}, "FAILED")
    lines = reason.splitlines()
    assert lines[0] == "slurm: FAILED"
    assert lines[1] == ("rank 1: vit_dt.data.errors.DatasetError: /data/cifar-10-batches-py: missing directory "
                        "fix: vit-dt data prepare")
    assert lines[2:] == ["srun: error: c2: task 1: Exited with exit code 1"]  # not the requeue's lines


def test_an_array_task_cancelled_while_pending_counts_as_cancelled():
    """scancel 39_1 right after sbatch removes the task from its array's pending record: sacct then lists only
    39_0 (raw id 39) and squeue nothing. That task is cancelled, not unknown; a job accounting never saw is."""
    from vit_dt.slurm.status import _vanished_array_tasks, normalize_state

    sacct = "JobID|State|NodeList\n39_0|COMPLETED|c1\n39_0.batch|COMPLETED|c1\n"
    found = _vanished_array_tasks(["39_1", "40_1", "41"], sacct)
    assert list(found) == ["39_1"] and normalize_state(found["39_1"]) == "cancelled"
