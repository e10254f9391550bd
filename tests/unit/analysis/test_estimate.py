"""The cost estimate: the scaling model's epoch time x epochs + measured fixed costs; the stated prior; time_min=auto
limits, clamped to the partition and split into requeued segments."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.sample_records import make_record
from vit_dt.analysis import estimate as est
from vit_dt.analysis import scaling_model as sm
from vit_dt.config.compose import compose, to_container
from vit_dt.measure.metrics import hardware_flops_per_image

DOCS = Path(__file__).resolve().parents[3] / "docs" / "sweeps.md"
PARTS = {"fwd": 700.0, "bwd_inner": 1400.0, "bwd_allreduce": 0.0, "step": 150.0, "data_wait": 50.0}  # ~2,324 ms


def cfg_for(*overrides: str) -> dict:
    return to_container(compose(["model=vit_b_16", "dataset=cifar10", *overrides]))


def calibration_record(**kw) -> dict:
    record = make_record(world_size=1, epoch_time_s=1815.0, micro_batch=64, step_parts_ms=PARTS, epochs=3, **kw)
    record["started_at"] = "2026-01-01T00:00:00+00:00"
    record["finished_at"] = "2026-01-01T01:33:00+00:00"   # 5,580 s: 3 x 1,815 s of epochs + 135 s fixed costs
    record["flops_per_image"] = hardware_flops_per_image(cfg_for()["model"], 10)
    return record


def test_calibrated_estimate_is_the_models_epoch_time_times_epochs_plus_measured_overheads():
    record = calibration_record()
    model = est.cost_model(record, sm.Interconnect(intra_node_gbps=100.0, inter_node_gbps=10.0, latency_us=20.0))
    cfg = cfg_for("trainer.epochs=5", "trainer.micro_batch=64")
    estimate = est.estimate_point(3, cfg, nodes=2, ranks_per_node=2, on_gpus=True, gpu_model="T4", model=model)
    [row] = sm.predict(replace(model.profile, train_samples=50_000), model.interconnect, [4], layout="grid",
                       gpus_per_node=2, micro_batch=64, grad_accum=1)
    assert model.overhead_s == pytest.approx(5580 - 3 * 1815.0)
    assert estimate.source == est.CALIBRATED and estimate.overhead_measured
    assert estimate.epoch_s == pytest.approx(row.epoch_s)
    assert estimate.wall_s == pytest.approx(5 * row.epoch_s + 135.0 + est.LAUNCH_S)
    assert estimate.hours == pytest.approx(4 * (5 * row.epoch_s + 135.0 + est.LAUNCH_S) / 3600)
    assert estimate.to_dict()["unit"] == "GPU-hours"
    # the measured run itself: its own epoch time back (1 rank, the same batch and data)
    same = est.estimate_point(0, cfg, nodes=1, ranks_per_node=1, on_gpus=True, gpu_model="T4", model=model)
    assert same.epoch_s == pytest.approx(1815.0, rel=1e-3)


def test_another_model_scales_the_per_image_times_by_the_flops_ratio():
    model = est.cost_model(calibration_record(), sm.Interconnect())
    tiny = cfg_for("model=vit_tiny", "trainer.micro_batch=64")
    estimate = est.estimate_point(0, tiny, nodes=1, ranks_per_node=1, on_gpus=True, gpu_model="T4", model=model)
    ratio = est.flops_per_image(tiny) / model.flops_per_image
    p = model.profile
    step_ms = 64 * ((p.fwd_ms_per_image + p.bwd_ms_per_image) * ratio + p.data_wait_ms_per_image) \
        + p.optimizer_ms + p.overhead_ms
    assert ratio < 0.01 and "FLOPs ratio" in estimate.basis
    assert estimate.epoch_s == pytest.approx(50_000 // 64 * step_ms / 1e3)


def test_without_timestamps_the_fixed_costs_are_the_stated_default():
    record = calibration_record()
    del record["started_at"]
    model = est.cost_model(record, sm.Interconnect())
    estimate = est.estimate_point(0, cfg_for(), nodes=1, ranks_per_node=1, on_gpus=True, gpu_model="T4", model=model)
    assert model.overhead_s is None and not estimate.overhead_measured
    assert estimate.overhead_s == est.DEFAULT_OVERHEAD_S


def test_the_prior_is_peak_flops_at_the_stated_mfu_and_marked_a_guess():
    cfg = cfg_for("trainer.epochs=5", "trainer.micro_batch=64", "precision=fp16")
    estimate = est.estimate_point(0, cfg, nodes=1, ranks_per_node=4, on_gpus=True, gpu_model="A40")
    images_per_rank = (50_000 // 4 // 64) * 64
    expected = images_per_rank * est.flops_per_image(cfg) / (149.7e12 * est.PRIOR_MFU)
    assert estimate.source == est.GUESS and estimate.basis.startswith("guess:")
    assert f"{est.PRIOR_MFU:.0%} MFU" in estimate.basis
    assert estimate.epoch_s == pytest.approx(expected)
    assert estimate.overhead_s == est.DEFAULT_OVERHEAD_S
    # fp32 is the CUDA-core rate (TF32 tensor cores are precision=tf32)
    fp32 = est.estimate_point(0, cfg_for("trainer.micro_batch=64"), nodes=1, ranks_per_node=1, on_gpus=True,
                              gpu_model="A40")
    assert "A40 37.4 TFLOP/s" in fp32.basis


def test_the_prior_is_documented_in_docs_sweeps():
    text = DOCS.read_text()
    assert f"{est.PRIOR_MFU:.0%}" in text and "guess" in text
    assert f"{est.CPU_RANK_GFLOPS:g} GFLOP/s" in text and f"{est.DEFAULT_OVERHEAD_S:g} s" in text


def test_a_cpu_partition_counts_rank_hours():
    cfg = cfg_for("model=vit_tiny", "dataset=digits", "trainer.micro_batch=16")
    estimate = est.estimate_point(0, cfg, nodes=2, ranks_per_node=1, on_gpus=False, gpu_model=None)
    assert estimate.unit == "CPU rank-hours" and "per CPU rank" in estimate.basis
    assert estimate.hours == pytest.approx(2 * estimate.wall_s / 3600)


def test_an_unknown_gpu_model_asks_for_a_calibration():
    with pytest.raises(est.EstimateError, match="--calibrate-from"):
        est.estimate_point(0, cfg_for(), nodes=1, ranks_per_node=1, on_gpus=True, gpu_model=None)


def _estimate(epochs: int, epoch_s: float, overhead_s: float = 120.0) -> est.PointEstimate:
    return est.PointEstimate(index=7, epochs=epochs, epoch_s=epoch_s, overhead_s=overhead_s, overhead_measured=True,
                             ranks=1, on_gpus=True, source=est.CALIBRATED, basis="calibrated from x")


def test_auto_limit_is_estimate_times_margin_plus_fixed_costs_when_it_fits():
    limit = est.time_limit(_estimate(4, 300.0), margin=1.5, max_time_min=240, signal_delay_s=30)
    fixed = 120 + est.LAUNCH_S + 30 + est.SIGNAL_JITTER_S
    assert limit == est.TimeLimit(time_min=math.ceil((4 * 300 * 1.5 + fixed) / 60), segments=1, clamped=False)
    # no requeue (signal_delay_s 0): no warning to leave room for
    assert est.time_limit(_estimate(4, 300.0), margin=1.5, max_time_min=240).time_min == math.ceil(
        (4 * 300 * 1.5 + 120 + est.LAUNCH_S) / 60)


def test_auto_limit_is_clamped_to_the_partition_and_segmented_by_whole_epochs():
    # the paper's 1 x T4 ViT-B/16: ~1,815 s an epoch, 5 epochs, on a 60-minute partition
    estimate = _estimate(5, 1815.0)
    limit = est.time_limit(estimate, margin=1.5, max_time_min=60, signal_delay_s=30)
    # one attempt: 3,600 - 120 - 30 - 30 - 30 = 3,390 s usable; an epoch with the margin 2,722.5 s: 1 per segment
    assert limit == est.TimeLimit(time_min=60, segments=5, clamped=True)
    wider = est.time_limit(estimate, margin=1.0, max_time_min=120, signal_delay_s=30)
    assert wider == est.TimeLimit(time_min=120, segments=math.ceil(5 / 3), clamped=True)   # 6,990 s: 3 epochs
    assert replace(estimate, segments=5).wall_s == pytest.approx(5 * 1815 + 5 * (120 + est.LAUNCH_S))


def test_a_point_whose_one_epoch_cannot_fit_is_refused():
    with pytest.raises(est.EstimateError, match="point 7: one epoch"):
        est.time_limit(_estimate(2, 4000.0), margin=1.5, max_time_min=60)


def test_a_margin_below_one_is_refused():
    with pytest.raises(est.EstimateError, match="time_margin=0.5"):
        est.time_limit(_estimate(2, 10.0), margin=0.5, max_time_min=60)


def test_summary_gives_per_shape_and_total_hours_and_each_source():
    a = replace(_estimate(2, 1800.0, 0.0), index=0, ranks=4).to_dict()
    b = replace(_estimate(2, 1800.0, 0.0), index=1, ranks=1, source=est.GUESS, basis="guess: T4",
                segments=3, time_min=30, overhead_measured=False).to_dict()
    lines = est.summary_lines([a, b], {0: "1x4 4gpu t4 90min", 1: "1x1 1gpu t4 30min"},
                              lambda ix: ",".join(map(str, ix)), max_requeues=1)
    text = "\n".join(lines)
    assert "1x4 4gpu t4 90min: points 0: 4.03 GPU-hours" in text     # 4 x (2 x 1,800 s + the 30 s launch)
    assert "total: " in text and "(1 of 2 point(s) a guess)" in text
    assert "source: guess: T4: points 1" in text and "source: calibrated from x: points 0" in text
    assert "point 1: needs 3 requeued segments of 30 min" in text and "more than the 1 requeue(s)" in text
