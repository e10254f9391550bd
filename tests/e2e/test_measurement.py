"""A real 2-rank training run, measured end to end: straggler flagged, W&B offline run read back, no key on disk."""
from __future__ import annotations

import json
import secrets

import pytest

from tests.helpers import DIGITS_FAST, read_result, run_cli, run_dir_from_output
from vit_dt.records.wandb_files import find_offline_runs, read_offline_run

pytestmark = pytest.mark.slow
SLOW_RANK_DELAY_S = 0.4


@pytest.fixture(scope="module")
def offline_run_with_straggler(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    api_key = secrets.token_hex(20)
    overrides = [o for o in DIGITS_FAST if not o.startswith("wandb.mode")]
    proc = run_cli("train", *overrides, "trainer.nproc=2", "trainer.epochs=2", "trainer.max_steps_per_epoch=15",
                   "wandb.mode=offline", "wandb.group=e2e-group", "scaling=weak", "scaling.fraction_per_gpu=0.5",
                   "debug=slow_rank", f"debug.delay_s={{1: {SLOW_RANK_DELAY_S}}}", f"out_dir={out}",
                   env={"WANDB_API_KEY": api_key, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return out, run_dir, read_result(run_dir), api_key


def test_slowed_rank_is_named_as_straggler(offline_run_with_straggler):
    _, _, result, _ = offline_run_with_straggler
    straggler = result["straggler"]
    assert straggler["flagged"] is True and straggler["slow_rank"] == 1, straggler
    fast, slow = result["breakdown_ms"]["per_rank"]
    # The fast rank waits for the slow one inside the gradient all-reduce.
    assert fast["bwd_allreduce"] - slow["bwd_allreduce"] > 0.5 * SLOW_RANK_DELAY_S * 1e3


def test_offline_wandb_run_reads_back(offline_run_with_straggler):
    _, run_dir, result, _ = offline_run_with_straggler
    runs = find_offline_runs(run_dir)
    assert len(runs) == 1, "one W&B run per job, from rank 0 only"
    run = read_offline_run(runs[0])
    assert run["group"] == "e2e-group" and run["job_type"] == "weak"
    assert run["config"]["trainer.nproc"] == 2 and run["config"]["dataset.name"] == "digits"
    assert {"cluster:local", "engine:deepspeed", "world:2"} <= set(run["tags"])
    keys = set().union(*(row.keys() for row in run["history"]))
    for timer in ("fwd", "bwd", "bwd_inner", "bwd_allreduce", "step"):
        assert f"step/time/{timer}_ms" in keys and f"epoch/breakdown_ms/{timer}" in keys
    summary = run["summary"]
    assert summary["world_size"] == 2
    assert summary["final_val_acc"] == pytest.approx(result["final_val_acc"])
    assert summary["comm_share"] == pytest.approx(result["comm_share"])


def test_api_key_is_nowhere_on_disk(offline_run_with_straggler):
    out, _, _, api_key = offline_run_with_straggler
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaks = [p for p in files if api_key.encode() in p.read_bytes()]
    assert leaks == []


def test_disabled_wandb_writes_no_files_but_store_keeps_the_run(tmp_path):
    proc = run_cli("train", *DIGITS_FAST, "trainer.epochs=1", "trainer.max_steps_per_epoch=5", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = run_dir_from_output(proc.stdout)
    assert find_offline_runs(tmp_path) == [] and not (run_dir / "wandb").exists()
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["run_dir"] for r in records] == [str(run_dir)] and records[0]["status"] == "completed"
