"""Real DeepSpeed data-parallel training on CPU (gloo), started the way a user starts it: `vit-dt train`."""
from __future__ import annotations

import pytest

from tests.helpers import DIGITS_FAST, read_result, run_cli, run_dir_from_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_rank_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = run_cli("train", *DIGITS_FAST, "trainer.nproc=2", "trainer.epochs=10", f"out_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, read_result(run_dir), proc


def test_two_ranks_learn_digits_to_90_percent(two_rank_digits):
    _, result, _ = two_rank_digits
    assert result["status"] == "completed"
    assert (result["world_size"], result["nodes"], result["engine"]) == (2, 1, "deepspeed")
    assert result["final_val_acc"] >= 0.90, [e["val_acc"] for e in result["epochs"]]
    assert len(result["epochs"]) == 10
    assert result["val_samples"] == sum(1 for _ in range(result["val_samples"]))  # int, not None
    assert all(e["val_samples_seen"] == result["val_samples"] for e in result["epochs"])


def test_both_ranks_end_with_identical_parameters(two_rank_digits):
    _, result, _ = two_rank_digits
    first, second = result["param_checksums"]
    assert first == second and result["replicas_in_sync"] is True


def test_global_batch_identity_in_recorded_deepspeed_config(two_rank_digits):
    _, result, _ = two_rank_digits
    ds = result["deepspeed_config"]
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert result["global_batch"] == 32


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
    proc = run_cli("train", *DIGITS_FAST, "dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}",
                   f"out_dir={tmp_path}")
    assert proc.returncode != 0
    result = read_result(run_dir_from_output(proc.stdout))
    assert result["status"] == "failed"
    assert "cifar-10-batches-py" in result["error"] and "vit-dt data prepare cifar10" in result["error"]
