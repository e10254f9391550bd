"""Sweeps on the real local Slurm cluster: one command, one job array per shape, returns at once; real training.

All sweeps of this module are submitted together (module fixture) so their jobs share the cluster's time;
each test then waits for its own. Overrides are the CLI's: `python -m vit_dt.cli sweep ...`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
from vit_dt.run.distributed import port_for_job
from vit_dt.slurm.manifest import read_manifest
from vit_dt.slurm.status import sweep_status

OPENMPI_LIB = "/usr/lib/x86_64-linux-gnu/libmpi.so.40"  # Debian's Open MPI: speaks PMIx with Slurm's srun
TRAIN = ["dataset=digits", "model=vit_tiny", "trainer.epochs=1"]
QUICK = TRAIN + ["trainer.max_steps_per_epoch=3"]
OPEN_MPI = [f"++cluster.env.MPI4PY_LIBMPI={OPENMPI_LIB}", '++cluster.env.OMPI_MCA_btl="self,tcp"',
            "++cluster.env.OMPI_ALLOW_RUN_AS_ROOT=1", "++cluster.env.OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"]


def launch_records(run_dir: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("launch/rank*.json"))]


def job_end_times(job_ids: list[str]) -> list[float]:
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,End", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    ends = [line.split("|")[1] for line in out.splitlines() if "|" in line]
    return [dt.datetime.fromisoformat(e).timestamp() for e in ends if e and e[0].isdigit()]


def our_queued_jobs(sweep_dir: Path) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%o"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(sweep_dir) in line]


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("sweeps")
    submitted = {
        "shapes": run_sweep_cli(base / "shapes", "cluster=localslurm", "resources.nodes=1,2", "trainer.seed=0,1",
                                *TRAIN),
        "gpu": run_sweep_cli(base / "gpu", "cluster=localslurm", "resources.partition=gpu", "resources.layout=intra",
                             "resources.gpus=2", *QUICK),
        "srun_mpi": run_sweep_cli(base / "srun_mpi", "cluster=localslurm", "cluster.launcher=srun_mpi",
                                  "resources.nodes=2", *QUICK, *OPEN_MPI),
        "mpirun": run_sweep_cli(base / "mpirun", "cluster=localslurm", "cluster.launcher=mpirun",
                                "++cluster.mpirun=/usr/bin/mpirun", "resources.nodes=2", "resources.gpus_per_node=2",
                                *QUICK, *OPEN_MPI),
    }
    for name, sub in submitted.items():
        assert sub.proc.returncode == 0, f"sweep {name} failed:\n{sub.proc.stdout}\n{sub.proc.stderr}"
    return submitted


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_shapes_one_command_returns_before_jobs_end(sweeps):
    sub = sweeps["shapes"]
    manifest = read_manifest(sub.sweep_dir)
    # one job array per shape, points grouped by shape
    assert len(manifest["points"]) == 4 and len(manifest["jobs"]) == 2
    shapes = {(j["shape"]["nodes"], j["shape"]["tasks_per_node"]): j for j in manifest["jobs"]}
    assert set(shapes) == {(1, 1), (2, 1)} and all(j["array"] and len(j["points"]) == 2 for j in shapes.values())
    for job in manifest["jobs"]:
        assert job["job_id"] in sub.proc.stdout and Path(job["script"]).is_file()
    assert str(sub.sweep_dir) in sub.proc.stdout
    assert all(p["job_id"] and p["submitted_at"] for p in manifest["points"])

    rows = wait_until_done(sub.sweep_dir)
    assert [r.state for r in rows] == ["completed"] * 4, [(r.index, r.state, r.stderr) for r in rows]
    assert [r.result for r in rows] == ["completed"] * 4
    # fire-and-forget: the command was back before any job of the sweep had ended
    assert sub.results_at_return == []
    ends = job_end_times([p["job_id"] for p in manifest["points"]])
    assert len(ends) == 4 and sub.returned_at < min(ends) + 1.0, (sub.returned_at, ends)

    ports = set()
    for point in manifest["points"]:
        result = json.loads((Path(point["run_dir"]) / "result.json").read_text())
        assert result["world_size"] == point["shape"]["world_size"]
        assert result["nodes"] == point["shape"]["nodes"]
        records = launch_records(point["run_dir"])
        assert len(records) == point["shape"]["world_size"]
        if point["shape"]["nodes"] == 2:
            env = [r["env"] for r in records]
            assert sorted(e["RANK"] for e in env) == ["0", "1"]
            assert len({e["SLURMD_NODENAME"] for e in env}) == 2
            job_env = {**os.environ, "SLURM_CLUSTER_NAME": env[0]["SLURM_CLUSTER_NAME"]}   # SLURM_CONF: this one
            assert {e["MASTER_PORT"] for e in env} == {str(port_for_job(env[0]["SLURM_JOB_ID"], job_env))}
            ports.add(env[0]["MASTER_PORT"])
    assert len(ports) == 2  # two 2-node jobs, two rendezvous ports


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fake_gpu_partition_gives_each_task_its_own_device(sweeps):
    sub = sweeps["gpu"]
    rows = wait_until_done(sub.sweep_dir)
    assert rows[0].state == "completed", rows[0]
    records = launch_records(rows[0].run_dir)
    devices = sorted(r["env"].get("CUDA_VISIBLE_DEVICES") for r in records)
    assert devices == ["0", "1"], devices


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_each_task_log_holds_each_submitit_line_once(sweeps):
    """submitit's own stdout handler and the rank's root handler both printed its lines ("Job completed
    successfully" twice, in two formats) until the rank stopped submitit's logger propagating."""
    sub = sweeps["gpu"]
    rows = wait_until_done(sub.sweep_dir)
    assert rows[0].state == "completed", rows[0]
    logs = sorted((sub.sweep_dir / "slurm").glob(f"{rows[0].job_id}_*_log.out"))
    assert len(logs) == 2, logs
    for log in logs:
        text = log.read_text()
        for line in ("Loading pickle", "Job completed successfully", "Exiting after successful completion"):
            assert text.count(line) == 1, (log.name, text)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_srun_mpi_job_gets_distinct_mpi_ranks_and_trains(sweeps):
    sub = sweeps["srun_mpi"]
    rows = wait_until_done(sub.sweep_dir)
    assert (rows[0].state, rows[0].result) == ("completed", "completed"), rows[0]
    env = [r["env"] for r in launch_records(rows[0].run_dir)]
    assert sorted(e["PMIX_RANK"] for e in env) == ["0", "1"]
    assert len({e["SLURMD_NODENAME"] for e in env}) == 2
    result = json.loads((Path(rows[0].run_dir) / "result.json").read_text())
    assert (result["launch"], result["world_size"], result["nodes"]) == ("mpi", 2, 2)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mpirun_job_maps_mpi_ranks_to_tasks_and_trains(sweeps):
    sub = sweeps["mpirun"]
    rows = wait_until_done(sub.sweep_dir)
    assert (rows[0].state, rows[0].result) == ("completed", "completed"), rows[0]
    env = [r["env"] for r in launch_records(rows[0].run_dir)]
    assert sorted(e["OMPI_COMM_WORLD_RANK"] for e in env) == ["0", "1", "2", "3"]
    # the wrapper turned MPI ranks into submitit tasks: one result pickle and log per rank
    assert sorted(e["SLURM_PROCID"] for e in env) == ["0", "1", "2", "3"]
    job_id = rows[0].job_id
    for task in range(4):
        assert (sub.sweep_dir / "slurm" / f"{job_id}_{task}_log.out").is_file()
    result = json.loads((Path(rows[0].run_dir) / "result.json").read_text())
    assert (result["launch"], result["world_size"], result["nodes"]) == ("mpi", 4, 2)


# A cancelled point in `vit-dt status`, and resuming it: tests/e2e/test_reliability_slurm.py


@pytest.mark.slurm
@pytest.mark.parametrize("overrides, message", [
    (["resources.nodes=1,8"], "8 nodes requested, but partition 'cpu' of cluster 'localslurm' has 4 node(s)"),
    (["resources.partition=gpu", "resources.gpus_per_node=1,3"], "has 2 GPUs per node"),
    (["resources.time_min=30,500"], "at most 240 min"),
])
def test_oversized_request_exits_nonzero_and_queues_nothing(slurm_cluster, tmp_path, overrides, message):
    sweep_dir = tmp_path / "too-big"
    sub = run_sweep_cli(sweep_dir, "cluster=localslurm", *overrides, *QUICK)
    assert sub.proc.returncode == 2, sub.proc.stdout + sub.proc.stderr
    assert message in sub.proc.stderr and "nothing was submitted" in sub.proc.stderr
    assert "point 1" in sub.proc.stderr and "point 0" not in sub.proc.stderr  # the valid point is not blamed
    assert not (sweep_dir / "sweep.json").exists() and not (sweep_dir / "slurm").exists()
    assert our_queued_jobs(sweep_dir) == []


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_local_scheduler_runs_points_here_and_waits(tmp_path):
    """cluster=local: no queue, so the points run on this machine (one process per rank) before sweep returns."""
    sweep_dir = tmp_path / "local"
    sub = run_sweep_cli(sweep_dir, "cluster=local", "resources.gpus_per_node=1,2", *QUICK)
    assert sub.proc.returncode == 0, sub.proc.stdout + sub.proc.stderr
    assert len(sub.results_at_return) == 2  # it waited
    _, rows = sweep_status(sweep_dir)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 2
    sizes = [json.loads((Path(r.run_dir) / "result.json").read_text())["world_size"] for r in rows]
    assert sizes == [1, 2]


# --- pieces of the orchestration that need no cluster ------------------------------------------------------
@pytest.mark.parametrize("raw, state", [
    ("CANCELLED by 0", "cancelled"), ("COMPLETED", "completed"), ("TIMEOUT", "timeout"), ("NODE_FAIL", "failed"),
    ("OUT_OF_MEMORY", "failed"), ("PENDING", "pending"), ("REQUEUED", "pending"), ("RUNNING", "running"),
    ("COMPLETING", "running"), (None, "unknown"), ("", "unknown"), ("WEIRD", "unknown"),
])
def test_slurm_states_are_normalized(raw, state):
    from vit_dt.slurm.status import normalize_state

    assert normalize_state(raw) == state


def test_mpi_ranks_become_slurm_tasks():
    from vit_dt.slurm.mpi_task import map_mpi_to_slurm

    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
           "CUDA_VISIBLE_DEVICES": "0,1"}
    map_mpi_to_slurm(env)
    assert (env["SLURM_PROCID"], env["SLURM_LOCALID"], env["SLURM_NODEID"], env["SLURM_NTASKS"]) == ("3", "1", "1", "4")
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    untouched = {"SLURM_PROCID": "0"}
    map_mpi_to_slurm(untouched)
    assert untouched == {"SLURM_PROCID": "0"}


def test_manifest_is_written_atomically_and_checked(tmp_path):
    from vit_dt.slurm.manifest import ManifestError, write_manifest

    write_manifest(tmp_path, {"schema_version": 1, "points": []})
    assert read_manifest(tmp_path)["points"] == [] and [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
    (tmp_path / "sweep.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="made by `vit-dt sweep`"):
        read_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "it holds a JSON array, not an object"),
    ('{"schema_version": 1}', "`points` is missing"),
    ('{"schema_version": 1, "points": [3]}', "`points` entries must be objects; entry 0 is a number"),
    ('{"schema_version": 1, "points": [{"index": 0}]}', "points[0] has no run_dir"),
])
def test_status_of_a_manifest_that_is_not_one_names_the_file(tmp_path, capsys, content, problem):
    from vit_dt.commands import status

    (tmp_path / "sweep.json").write_text(content)
    assert status.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"vit-dt status: error: {tmp_path / 'sweep.json'} is not a" in err and problem in err


def test_a_sweep_dir_holds_one_sweep(tmp_path, capsys):
    """The same command again resumes (tests/e2e/test_reliability_slurm.py); a dry run's directory or other overrides
    are refused, naming the difference."""
    from vit_dt.commands import sweep

    args = ["cluster=nebula", f"hydra.sweep.dir={tmp_path}", "--dry-run"]
    assert sweep.main(args) == 0
    capsys.readouterr()
    assert sweep.main(args) == 2
    assert "already holds a dry run" in capsys.readouterr().err
    manifest = read_manifest(tmp_path)
    manifest["dry_run"] = False  # as if it had been submitted
    from vit_dt.slurm.manifest import write_manifest

    write_manifest(tmp_path, manifest)
    assert sweep.main(["cluster=nebula", "trainer.seed=3", f"hydra.sweep.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "made with other overrides" in err and "trainer.seed=3" in err and f"--resume {tmp_path}" in err


def test_a_refused_sweep_leaves_no_directory_and_a_split_one_is_refused_before_its_first_batch(tmp_path, capsys):
    """Hydra makes the sweep directory for its multirun.yaml before the launcher validates: a refused sweep must
    not leave one behind per attempt. hydra.sweeper.max_batch_size would queue the first batch and fail on the
    second, so it is refused at the first."""
    from vit_dt.commands import sweep

    bad = tmp_path / "bad"
    assert sweep.main(["cluster=nebula", "resources.layout=foo", f"hydra.sweep.dir={bad}", "--dry-run"]) == 2
    assert "resources.layout" in capsys.readouterr().err and not bad.exists()
    split = tmp_path / "split"
    assert sweep.main(["cluster=nebula", "hydra.sweeper.max_batch_size=1", "trainer.seed=0,1",
                       f"hydra.sweep.dir={split}", "--dry-run"]) == 2
    assert "max_batch_size" in capsys.readouterr().err and not split.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert sweep.main(["cluster=nebula", "resources.layout=foo", f"hydra.sweep.dir={kept}", "--dry-run"]) == 2
    assert (kept / "notes.txt").read_text() == "mine"                  # a directory with other files stays


def _fake_sbatch(tmp_path: Path, monkeypatch, accepted: int) -> None:
    """An `sbatch` on PATH that queues `accepted` jobs and then fails as a real one does when Slurm refuses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counter = tmp_path / "sbatch-calls"
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/bin/sh
n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}
if [ $n -le {accepted} ]; then echo "Submitted batch job $((1000 + n))"; exit 0; fi
echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination" >&2; exit 1
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("accepted", [0, 1])
def test_sbatch_failing_part_way_keeps_the_queued_jobs_tracked(tmp_path, monkeypatch, capsys, accepted):
    """No cluster needed: a stand-in sbatch on PATH takes `accepted` job arrays, then refuses. What was queued is
    in sweep.json (exit 3, resumable); when nothing was queued, nothing is recorded (exit 2)."""
    from vit_dt.commands import sweep
    from vit_dt.slurm.manifest import manifest_path

    _fake_sbatch(tmp_path, monkeypatch, accepted)
    sweep_dir = tmp_path / "sweeps" / "s"
    rc = sweep.main(["cluster=localslurm", "resources.nodes=1,2", f"hydra.sweep.dir={sweep_dir}"])
    err = capsys.readouterr().err
    assert "Invalid account" in err and "Traceback" not in err
    if accepted == 0:
        assert rc == 2 and "nothing was submitted" in err and not manifest_path(sweep_dir).exists()
        return
    assert rc == 3 and f"vit-dt sweep --resume {sweep_dir}" in err
    manifest = read_manifest(sweep_dir)
    assert [p["job_id"] for p in manifest["points"]] == ["1001", None]
    assert (sweep_dir.parent / "latest").resolve() == sweep_dir.resolve()


def test_a_file_named_latest_is_never_replaced(tmp_path, monkeypatch, capsys):
    from vit_dt.commands import sweep

    _fake_sbatch(tmp_path, monkeypatch, accepted=5)
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "latest").write_text("my notes")
    assert sweep.main(["cluster=localslurm", f"hydra.sweep.dir={sweeps / 's'}"]) == 0
    assert (sweeps / "latest").read_text() == "my notes"
    assert "not a link vit-dt made" in capsys.readouterr().out


def test_a_dry_run_verifies_the_data_as_the_real_sweep_would(tmp_path, capsys):
    from vit_dt.commands import sweep

    args = ["cluster=nebula", "dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}", "--dry-run"]
    assert sweep.main([*args, f"hydra.sweep.dir={tmp_path / 'a'}"]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert sweep.main([*args, "--no-verify-data", f"hydra.sweep.dir={tmp_path / 'b'}"]) == 0


def test_a_local_dry_run_says_what_would_run(tmp_path, capsys):
    from vit_dt.commands import sweep

    assert sweep.main(["cluster=local", "trainer.micro_batch=16,32", f"hydra.sweep.dir={tmp_path}", "--dry-run"]) == 0
    assert "would run here, one after another: point(s) 0-1" in capsys.readouterr().out
