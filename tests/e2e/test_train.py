"""Real DeepSpeed data-parallel training on CPU (gloo), started the way a user starts it: `vit-dt train`."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import DIGITS_FAST, fresh_user_env, read_result, run_cli, run_dir_from_output, write_run_config

pytestmark = pytest.mark.slow


# The default run, exactly as a newcomer types it (no override; outputs through VIT_DT_OUT_DIR): issue 17's
# acceptance is that it learns the default dataset to >= 90%.
DEFAULT_RUN = ("train", "trainer.nproc=2")
STEP_LINE = re.compile(r"epoch \d+ step \d+/\d+ loss [\d.]+ [\d.]+ img/s lr [\d.e+-]+$", re.M)
CUDA_HOME_WARNING = "No CUDA runtime is found, using CUDA_HOME="


@pytest.fixture(scope="module")
def two_rank_digits(tmp_path_factory):
    env = fresh_user_env(tmp_path_factory.mktemp("first-run"))
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", *DEFAULT_RUN], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, read_result(run_dir), proc


def test_the_default_run_learns_the_default_dataset_to_90_percent(two_rank_digits):
    _, result, _ = two_rank_digits
    assert result["status"] == "completed"
    assert (result["world_size"], result["nodes"], result["engine"]) == (2, 1, "deepspeed")
    assert result["config"]["dataset"]["name"] == "digits"
    assert result["final_val_acc"] >= 0.90, [e["val_acc"] for e in result["epochs"]]
    assert len(result["epochs"]) == result["config"]["trainer"]["epochs"]
    assert result["val_samples"] == sum(1 for _ in range(result["val_samples"]))  # int, not None
    assert all(e["val_samples_seen"] == result["val_samples"] for e in result["epochs"])


def test_step_lines_carry_loss_throughput_and_lr(two_rank_digits):
    _, _, proc = two_rank_digits
    assert len(STEP_LINE.findall(proc.stdout)) >= 2, proc.stdout[-3000:]


def test_irrelevant_warnings_stay_in_the_run_log_not_the_terminal(two_rank_digits):
    run_dir, _, proc = two_rank_digits
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert STEP_LINE.search(log) and "epoch 0:" in log           # the run log holds rank 0's whole output
    assert CUDA_HOME_WARNING not in proc.stdout + proc.stderr
    import torch

    if not torch.cuda.is_available():                               # where torch warns about CUDA_HOME at all
        assert CUDA_HOME_WARNING in log
    # DeepSpeed's import-time compiler probes (gcc ... test.c) and its "op built successfully": the log keeps them
    terminal = proc.stdout + proc.stderr
    assert "compilers.C." not in terminal and "built successfully" not in terminal, terminal[-3000:]
    assert "compilers.C." in log and "built successfully" in log


def test_both_ranks_end_with_identical_parameters(two_rank_digits):
    _, result, _ = two_rank_digits
    first, second = result["param_checksums"]
    assert first == second and result["replicas_in_sync"] is True


def test_global_batch_identity_in_recorded_deepspeed_config(two_rank_digits):
    _, result, _ = two_rank_digits
    ds = result["deepspeed_config"]
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert result["global_batch"] == 2 * result["config"]["trainer"]["micro_batch"]


def test_each_rank_records_a_breakdown_that_adds_up(two_rank_digits):
    _, result, _ = two_rank_digits
    per_rank = result["breakdown_ms"]["per_rank"]
    assert [row["rank"] for row in per_rank] == [0, 1]
    for row in per_rank:
        for key in ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step", "step_time"):
            assert row[key] > 0, (key, row)
        parts = row["fwd"] + row["bwd"] + row["step"]
        assert abs(parts - row["step_time"]) <= 0.15 * row["step_time"], row
    assert 0 < result["comm_share"] < 1
    assert result["straggler"]["flagged"] is False, result["straggler"]


def test_only_rank_zero_talks(two_rank_digits):
    run_dir, _, proc = two_rank_digits
    assert "[rank 0]" in proc.stdout and "[rank 1]" not in proc.stdout
    assert "epoch" not in (run_dir / "logs" / "rank1.log").read_text()


def test_run_lands_in_the_results_store(two_rank_digits):
    import json

    run_dir, result, _ = two_rank_digits
    store = run_dir.parent.parent / "results.jsonl"
    records = [json.loads(line) for line in store.read_text().splitlines()]
    assert [r["run_dir"] for r in records] == [result["run_dir"]]


def test_ddp_engine_trains_and_records_same_schema(tmp_path):
    proc = run_cli("train", *DIGITS_FAST, "engine=ddp", "trainer.nproc=2", "trainer.epochs=2", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(run_dir_from_output(proc.stdout))
    assert result["engine"] == "ddp" and result["deepspeed_config"] is None
    assert result["replicas_in_sync"] and result["epochs"][1]["train_loss"] < result["epochs"][0]["train_loss"]
    assert result["breakdown_ms"]["per_rank"][1]["fwd"] > 0


def test_a_failing_run_writes_a_failed_result(tmp_path):
    """A rank whose data is missing (`vit-dt train` refuses that up front; a rank started on its run directory,
    as a sweep point with --no-verify-data is, finds out itself) records why in result.json."""
    run_dir = tmp_path / "run"
    write_run_config(run_dir, [*DIGITS_FAST, "dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}",
                               f"out_dir={tmp_path}"])
    proc = subprocess.run([sys.executable, "-m", "vit_dt.run.rank", str(run_dir)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    result = read_result(run_dir)
    assert result["status"] == "failed"
    assert "cifar-10-batches-py" in result["error"] and "vit-dt data prepare cifar10" in result["error"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_missing_data_is_refused_in_one_line_before_a_run_dir_or_rank_exists(tmp_path, nproc):
    """`vit-dt sweep`'s data check: no run directory, no ranks each printing a traceback of the same error."""
    root = tmp_path / "nowhere"
    proc = run_cli("train", *DIGITS_FAST, "dataset=cifar10", f"dataset.root={root}", f"trainer.nproc={nproc}",
                   f"out_dir={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{root}/cifar-10-batches-py" in proc.stderr and "vit-dt data prepare cifar10" in proc.stderr
    assert "run directory" not in proc.stdout and not (tmp_path / "out").exists()


def test_cpus_per_task_sizes_the_rank_threads_and_its_loader_workers(monkeypatch):
    """The profile's cpus_per_task becomes sbatch's --cpus-per-task (the golden scripts pin that), Slurm hands it
    to each task as SLURM_CPUS_PER_TASK, and the rank sizes its torch threads and DataLoader workers from it."""
    import os

    from vit_dt.run.distributed import DistEnv
    from vit_dt.run.rank import _threads_per_rank, loader_workers

    assert loader_workers(None, {"SLURM_CPUS_PER_TASK": "8"}) == 7       # one CPU for the training loop
    assert loader_workers(None, {}) == 0                                  # no Slurm: load in the main process
    assert loader_workers(3, {"SLURM_CPUS_PER_TASK": "8"}) == 3           # trainer.num_workers wins
    env = DistEnv(rank=0, world_size=4, local_rank=0, node_rank=0, nodes=1, master_addr="127.0.0.1",
                  master_port=29500, source="slurm")
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        assert _threads_per_rank(env) == 3 and torch.get_num_threads() == 3
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert _threads_per_rank(env) == max(1, len(os.sched_getaffinity(0)) // 4)   # the cores shared by 4 ranks
    finally:
        torch.set_num_threads(before)


def test_energy_is_null_with_its_reason_on_a_cpu_machine(two_rank_digits):
    """No NVML GPU and (here) no RAPL: every energy figure is null and says why, never 0; nothing fails. Where the
    node has RAPL, the host's first rank reads it and the figures are numbers."""
    from vit_dt.measure.energy import POWERCAP

    _, result, _ = two_rank_digits
    epochs = [e["energy"] for e in result["epochs"]]
    assert len(epochs) == len(result["epochs"]) and all(len(e["per_rank"]) == 2 for e in epochs)
    assert all(r["gpu_j"] is None and r["gpu_reason"] == "no GPU on this rank" for e in epochs for r in e["per_rank"])
    if POWERCAP.exists():
        return
    assert all(e["total_j"] is None and e["j_per_image"] is None and "no RAPL" in e["reason"] for e in epochs)
    assert result["energy"]["total_j"] is None and result["energy"]["j_per_image"] is None
    assert "no RAPL" in result["energy"]["reason"]
