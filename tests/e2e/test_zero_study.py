"""The ZeRO study: one sweep of stages 0-3 on the local Slurm cluster (2 CPU ranks each, DeepSpeed on gloo), the
model states each rank holds as ZeRO says they should shrink, and the report's memory-vs-step-time plot.

The reduction bucket is made smaller than the model (`reduce_bucket_size`): with DeepSpeed's 5e8-element default
a model under 500 M parameters fits one bucket, all its gradients stay alive until the bucket is reduced at the
end of backward, and ZeRO-2 holds as many gradient bytes as ZeRO-1 (docs/studies/zero.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.plots import assert_real_png
from tests.helpers import DIGITS_FAST, read_result, run_cli, run_dir_from_output

BUCKET = 50_000          # elements: about a tenth of vit_tiny's 0.54 M parameters
STUDY = ["cluster=localslurm", "deepspeed.zero_stage=0,1,2,3", "resources.nodes=1", "resources.gpus_per_node=2",
         *DIGITS_FAST, "trainer.epochs=1", "trainer.max_steps_per_epoch=6", "trainer.timer_warmup_steps=1",
         "trainer.timer_sample_every=2", f"+deepspeed.overrides.zero_optimization.reduce_bucket_size={BUCKET}"]


@pytest.fixture(scope="module")
def zero_sweep(slurm_cluster, tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    from tests.fixtures.sweeps import run_sweep_cli, wait_until_done

    sweep = tmp_path_factory.mktemp("zero") / "sweep"
    submitted = run_sweep_cli(sweep, *STUDY)
    assert submitted.proc.returncode == 0, submitted.proc.stdout[-2000:] + submitted.proc.stderr[-3000:]
    rows = wait_until_done(sweep)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 4, \
        [(r.index, r.state, r.result, r.stderr) for r in rows]
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    return sweep, {r["zero_stage"]: r for r in records}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_stage_completes_with_memory_and_timings(zero_sweep):
    _, by_stage = zero_sweep
    assert sorted(by_stage) == [0, 1, 2, 3]
    for stage, r in by_stage.items():
        assert r["status"] == "completed" and (r["world_size"], r["device"]) == (2, "cpu")
        assert r["deepspeed_config"]["zero_optimization"]["stage"] == stage
        assert r["deepspeed_config"]["zero_optimization"]["reduce_bucket_size"] == BUCKET
        assert r["num_params"] == by_stage[0]["num_params"] > 500_000     # ZeRO-3's partitioned ones counted whole
        mean = r["breakdown_ms"]["mean"]
        assert mean["step_time"] > 0 and mean["bwd_allreduce"] > 0, (stage, mean)
        assert r["peak_mem_gb"] > 0.1                          # process RSS: torch alone is hundreds of MB
        memory = r["memory_model_gb"]
        assert memory["steps_probed"] == 3 and memory["model_states"] > 0
        assert len(memory["per_rank_model_states"]) == 2
        assert [(x["rank"], x["device"]) for x in r["ranks"]] == [(0, "cpu"), (1, "cpu")]
        assert len({x["node"] for x in r["ranks"]}) == 1 and r["ranks"][0]["node"].startswith("c")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_model_states_shrink_stage_by_stage_as_zero_predicts(zero_sweep):
    _, by_stage = zero_sweep
    mem = {stage: r["memory_model_gb"] for stage, r in by_stage.items()}
    full_params = mem[0]["params"]
    assert full_params == pytest.approx(by_stage[0]["num_params"] * 4 / 2**30, rel=1e-6)   # fp32, whole model
    # stage 0: every rank holds everything; AdamW's two moments are twice the parameters
    assert mem[0]["gradients"] == pytest.approx(full_params, rel=1e-6)
    assert mem[0]["optimizer_states"] == pytest.approx(2 * full_params, rel=1e-3)
    assert mem[0]["master_params"] == 0
    # stage 1: optimizer states (and DeepSpeed's fp32 master copy) partitioned over the 2 ranks
    assert mem[1]["optimizer_states"] == pytest.approx(mem[0]["optimizer_states"] / 2, rel=0.02)
    assert mem[1]["master_params"] == pytest.approx(full_params / 2, rel=0.02)
    assert mem[1]["gradients"] > 0.8 * full_params               # gradients still whole until reduced
    # stage 2: gradients partitioned too: its own half plus at most two buckets in flight (overlap_comm
    # double-buffers the reduction)
    bucket_gb = BUCKET * 4 / 2**30
    assert mem[2]["gradients"] < mem[1]["gradients"] - bucket_gb
    assert mem[2]["gradients"] <= full_params / 2 + 2.2 * bucket_gb
    # stage 3: parameters partitioned too
    assert mem[3]["params"] == pytest.approx(full_params / 2, rel=0.02)
    assert mem[2]["params"] == pytest.approx(full_params, rel=1e-6)
    totals = [mem[s]["model_states"] for s in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4, totals


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_report_has_the_zero_plot_and_table(zero_sweep, tmp_path):
    from vit_dt.commands import report as report_cmd

    sweep, by_stage = zero_sweep
    assert report_cmd.main([str(sweep), "--out", str(tmp_path / "report")]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "zero" in data["plots"], data["skipped_plots"]
    assert_real_png(tmp_path / "report" / data["plots"]["zero"])
    rows = {row["zero_stage"]: row for row in data["zero_study"]}
    assert sorted(rows) == [0, 1, 2, 3]
    for stage, row in rows.items():
        record = by_stage[stage]
        assert row["step_time_ms"] == pytest.approx(record["breakdown_ms"]["mean"]["step_time"])
        assert row["allreduce_ms"] == pytest.approx(record["breakdown_ms"]["mean"]["bwd_allreduce"])
        assert row["model_states_gb"] == pytest.approx(record["memory_model_gb"]["model_states"])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "### ZeRO stages (model states in MiB per rank)" in markdown
    assert all(f"| ZeRO-{stage} |" in markdown for stage in range(4))


@pytest.mark.slow
def test_optimizer_offload_to_cpu_runs_on_a_cpu_accelerator(tmp_path):
    """ZeRO-Offload with vit-dt's torch optimizer needs zero_force_ds_cpu_optimizer=false (else DeepSpeed insists
    on its own CPU Adam); on a CPU the offload moves nothing, so nothing is counted as offloaded."""
    proc = run_cli("train", *DIGITS_FAST, "trainer.nproc=2", "trainer.epochs=1", "trainer.max_steps_per_epoch=4",
                   "deepspeed.zero_stage=2", "+deepspeed.overrides.zero_optimization.offload_optimizer={device: cpu}",
                   "+deepspeed.overrides.zero_force_ds_cpu_optimizer=false", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = read_result(run_dir_from_output(proc.stdout))
    assert result["status"] == "completed"
    assert result["deepspeed_config"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert result["memory_model_gb"]["optimizer_states"] > 0 and result["memory_model_gb"]["offloaded"] == 0


def test_zero_section_appears_only_for_a_zero_study(tmp_path):
    """Sample records (no training): two stages make the section; one stage, as in a scaling sweep, does not."""
    from tests.fixtures.sample_records import make_record, write_store
    from vit_dt.analysis.report import build_report

    parts = {"fwd": 100.0, "bwd_inner": 200.0, "bwd_allreduce": 40.0, "step": 30.0}
    records = []
    for point, (stage, offload) in enumerate([(0, None), (1, None), (2, None), (3, None), (3, "cpu")]):
        r = make_record(world_size=4, epoch_time_s=50.0 + 10 * stage, micro_batch=64, step_parts_ms=parts,
                        point=point)
        r["zero_stage"] = stage
        r["deepspeed_config"] = {"zero_optimization": {"stage": stage, "reduce_bucket_size": 20_000_000,
                                                       **({"offload_optimizer": {"device": offload}} if offload
                                                          else {})}}
        r["memory_model_gb"] = {"params": 0.32 / (4 if stage == 3 else 1), "gradients": 0.32 / (4 if stage >= 2 else 1),
                                "optimizer_states": 0.64 / (4 if stage else 1), "master_params": 0.08 if stage else 0,
                                "live_tensors": 1.5, "offloaded": 0.7 if offload else 0.0}
        r["memory_model_gb"]["model_states"] = sum(r["memory_model_gb"][k] for k in
                                                   ("params", "gradients", "optimizer_states", "master_params"))
        records.append(r)
    write_store(tmp_path / "study", records)
    result = build_report([tmp_path / "study"])
    rows = result.data["zero_study"]
    assert [r["label"] for r in rows] == ["ZeRO-0", "ZeRO-1", "ZeRO-2", "ZeRO-3", "ZeRO-3 + opt→cpu"]
    assert "zero" in result.plots and "zero" not in result.skipped_plots
    assert_real_png(result.plots["zero"])
    assert "### ZeRO stages (model states in GiB per rank)" in result.markdown.read_text()

    write_store(tmp_path / "scaling", records[:1])
    plain = build_report([tmp_path / "scaling"])
    assert plain.data["zero_study"] == [] and "zero" not in plain.plots and "zero" not in plain.skipped_plots


def test_live_tensor_bytes_counts_real_storage_once_and_skips_fake_tensors():
    import warnings

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vit_dt.measure.memory import live_tensor_bytes

    before = live_tensor_bytes()
    real = torch.empty(2**20, dtype=torch.uint8)
    view = real[: 2**19]                      # a view shares the storage: counted once
    with FakeTensorMode():
        fake = torch.empty(2**28, dtype=torch.uint8)   # what torch.compile's tracing leaves behind: no memory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")       # reading a FakeTensor's data pointer warns (an error in later torch)
        grown = live_tensor_bytes() - before
    assert 2**20 <= grown < 2**20 + 2**16, grown
    assert not [w for w in caught if "FakeTensor" in str(w.message)], [str(w.message) for w in caught]
    del real, view, fake


@pytest.mark.slow
def test_zero3_checksums_fingerprint_the_gathered_weights(tmp_path):
    """At ZeRO-3 a rank's parameters are empty placeholders (persistence threshold 0: even the tiny model's
    smallest tensors are partitioned): the checksum gathers the whole weights, so both ranks report the same
    non-zero value, and replicas_in_sync means something."""
    proc = run_cli("train", *DIGITS_FAST, "trainer.nproc=2", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                   "deepspeed.zero_stage=3", "+deepspeed.overrides.zero_optimization.stage3_param_persistence_threshold=0",
                   f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = read_result(run_dir_from_output(proc.stdout))
    first, second = result["param_checksums"]
    assert result["zero_stage"] == 3 and result["status"] == "completed"
    assert first == second and first > 1.0 and result["replicas_in_sync"] is True, result["param_checksums"]
