"""vit_dt.records.result: one set of readers for the result record, one fallback rule for older records, so that
`vit-dt results` (the table) and `vit-dt report` (the analysis) read the same values from the same record."""
from __future__ import annotations

import math

import pytest

from tests.fixtures.sample_records import make_record
from vit_dt.analysis import scaling
from vit_dt.records import result
from vit_dt.records.table import results_table

# Fields vit_dt/run/record.py writes today that records of older versions lack, or that other writers leave out:
# the steady-state means (derivable from the epochs), the global batch (from micro x accum x world) and the shape.
NEWER_FIELDS = ("global_batch", "epoch_time_s_mean", "epoch_time_s_all_mean", "img_per_s", "img_per_s_per_gpu",
                "ranks_per_node", "scaling", "precision", "engine", "model", "dataset", "image_size", "patch_size",
                "tokens_per_image", "bf16_mode", "fast_attention", "activation_checkpointing", "hardware_tflops",
                "hfu", "ranks", "balance", "memory_model_gb")


def older(record: dict) -> dict:
    """`record` as an older vit-dt wrote it: without NEWER_FIELDS, and epochs without the `warmup` mark."""
    old = {k: v for k, v in record.items() if k not in NEWER_FIELDS}
    old["epochs"] = [{k: v for k, v in e.items() if k != "warmup"} for e in record["epochs"]]
    return old


def older_sweep() -> list[dict]:
    return [older(make_record(world_size=n, nodes=1, epoch_time_s=100.0 / n ** 0.9, micro_batch=32, grad_accum=2,
                              point=i, epochs=3, first_epoch_factor=1.5))
            for i, n in enumerate((1, 2, 4))]


def test_an_older_record_reads_through_the_fallback_rule():
    record = older(make_record(world_size=4, nodes=2, epoch_time_s=10.0, micro_batch=32, grad_accum=2, epochs=3,
                               first_epoch_factor=1.5, precision="bf16", scaling="weak"))
    assert "global_batch" not in record and "epoch_time_s_mean" not in record and "img_per_s" not in record
    assert result.global_batch(record) == 32 * 2 * 4                       # rule 2: micro x accum x world
    assert result.epoch_time(record) == pytest.approx(10.0)                # rule 2: steady epochs, first left out
    steady = [e["img_per_s"] for e in record["epochs"][1:]]
    assert result.img_per_s(record) == pytest.approx(sum(steady) / len(steady))
    assert result.ranks_per_node(record) == 2                              # world / nodes
    assert result.value(record, "precision") == "bf16"                     # rule 3: the config it was copied from
    assert result.value(record, "scaling") == "weak" and result.value(record, "model") == "vit_b_16"
    assert result.value(record, "image_size") is None                      # rule 4: neither has it
    assert result.micro_batch(record) == 32 and result.grad_accum(record) == 2
    assert result.point_of({"run_dir": "/s/points/7"}) == 7


def test_a_failed_record_reads_its_batch_from_its_config():
    failed = make_record(world_size=2, epoch_time_s=1.0, micro_batch=16, status="failed")
    assert "micro_batch" not in failed and "global_batch" not in failed
    assert result.global_batch(failed) == 16 * 2 and result.micro_batch(failed) == 16
    assert result.epoch_time(failed) is None and result.img_per_s(failed) is None
    fixed = make_record(world_size=2, epoch_time_s=1.0, micro_batch=16, fixed="global", status="failed")
    assert result.global_batch(fixed) == 32 and result.micro_batch(fixed) is None   # a fixed global batch


def test_results_table_and_report_analysis_read_the_same_values_from_older_records():
    records = older_sweep()
    table = {row["point"]: row for row in results_table(records)}
    analysis = scaling.analyse(records)
    assert len(analysis.runs) == len(records) == len(table)
    (series,) = analysis.series
    points = {p.world_size: p for p in series.points}
    for run in analysis.runs:
        row = table[run.point]
        assert row["world_size"] == run.world_size and row["nodes"] == run.nodes
        assert row["global_batch"] == run.global_batch == points[run.world_size].global_batch == 64 * run.world_size
        assert row["epoch_time_s"] == run.epoch_time_s == points[run.world_size].epoch_time_s
        assert row["img_per_s"] is not None and not math.isnan(row["img_per_s"])
        assert row["img_per_s"] == run.img_per_s == points[run.world_size].img_per_s
        assert row["status"] == "completed"
    # and the steady-state rule both use leaves out each older record's first (unmarked) epoch
    assert table[0]["epoch_time_s"] == pytest.approx(100.0)


def test_the_steady_state_rule_reads_older_epochs_without_the_warmup_mark():
    assert result.warmup_flags([{}, {}, {}]) == [True, False, False]
    assert result.steady_mask([{"warmup": True}, {"warmup": False}, {"warmup": True}]) == [False, True, False]
    assert result.steady_epochs([{"warmup": True}]) == [{"warmup": True}]       # nothing else: all of them
