"""Scaling analysis (vit_dt/analysis/scaling.py) on stores written in the results-store format.

Speed-up and efficiency are recomputed here from the raw per-epoch times of the records, not from the values
the module derives, so a wrong formula, a wrong baseline or a wrong epoch average fails these tests.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from tests.fixtures.sample_records import make_record, simulated_sweep, write_store
from vit_dt.analysis import scaling
from vit_dt.analysis.formulas import efficiency, ideal_epoch_time, kind_of, speedup
from vit_dt.analysis.report import load_records
from vit_dt.analysis.run_views import BREAKDOWN_PARTS, time_breakdown
from vit_dt.analysis.series import build_series, series_key
from vit_dt.analysis.swept_knobs import swept_knobs

PARTS = {"fwd": 700.0, "bwd_inner": 1400.0, "bwd_allreduce": 0.0, "step": 60.0, "data_wait": 50.0}


def _steady_epoch_time(record: dict) -> float:
    times = [e["time_s"] for e in record["epochs"]]
    return statistics.fmean(times[1:] if len(times) > 1 else times)


@pytest.fixture()
def mixed_store(tmp_path: Path) -> Path:
    """A strong intra sweep at two micro-batches, an inter sweep without its own 1-GPU run, a weak sweep,
    a series starting at 2 GPUs, a failed point and a resubmitted point."""
    records = (simulated_sweep(gpus=[1, 2, 4, 8], micro_batches=[32, 64], seed=1)
               + simulated_sweep(gpus=[8, 16, 32], layout="inter", start_point=100, seed=2)
               + simulated_sweep(gpus=[1, 2, 4, 8], scaling="weak", start_point=200, seed=3)
               + simulated_sweep(gpus=[2, 4, 8], micro_batches=[128], start_point=400, seed=4))  # baseline N1=2
    records.append(make_record(world_size=16, layout="inter", epoch_time_s=1.0, micro_batch=64, status="failed",
                               point=300))
    # point 1 (2 GPUs, micro-batch 32) resubmitted: the later record must win
    first = next(r for r in records if r["point"] == 1)
    rerun = make_record(world_size=2, epoch_time_s=first["epoch_time_s_mean"] * 0.8, micro_batch=32, point=1,
                        step_parts_ms=dict(PARTS, bwd_allreduce=80.0), finished_at="2026-01-02T00:00:00+00:00")
    records.append(rerun)
    write_store(tmp_path, records)
    return tmp_path


def test_speedup_and_efficiency_match_an_independent_recomputation(mixed_store: Path) -> None:
    records = load_records([mixed_store])
    latest = {}
    for r in records:                                   # append order: a rerun replaces its point
        latest[r["point"]] = r
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in latest.values():
        if r["status"] == "completed":
            layout = "intra" if r["nodes"] == 1 else "inter"
            groups[(r["scaling"], r["micro_batch"], layout)][r["world_size"]] = _steady_epoch_time(r)
    for (mode, micro, layout), by_n in groups.items():
        single = groups.get((mode, micro, "intra"), {})
        if 1 not in by_n and 1 in single:               # the 1-GPU run is shared across layouts
            by_n[1] = single[1]

    analysis = scaling.analyse(records)
    assert len(analysis.series) == len(groups) == 5
    checked = 0
    for series in analysis.series:
        by_n = groups[(series.key.scaling.split()[0], series.points[-1].micro_batch, series.key.layout)]
        assert sorted(by_n) == [p.world_size for p in series.points]
        n1 = min(by_n)
        t1 = by_n[n1]
        for p in series.points:
            tn, n = by_n[p.world_size], p.world_size
            if series.kind == "strong":
                assert p.speedup == pytest.approx(t1 / tn, rel=1e-9)
                assert p.efficiency == pytest.approx(t1 * n1 / (tn * n), rel=1e-9)
                assert p.ideal_epoch_time_s == pytest.approx(t1 * n1 / n, rel=1e-9)
            else:
                assert p.speedup == pytest.approx(n / n1 * t1 / tn, rel=1e-9)
                assert p.efficiency == pytest.approx(t1 / tn, rel=1e-9)
                assert p.ideal_epoch_time_s == pytest.approx(t1, rel=1e-9)
            checked += 1
    assert checked == 4 + 4 + 4 + 4 + 3   # 1,2,4,8 x 2 micro-batches; 1 (borrowed),8,16,32 inter; weak; 2,4,8
    assert {s.baseline_world_size for s in analysis.series} == {1, 2}


def test_weak_and_strong_are_separate_series_with_their_own_ideal_lines(mixed_store: Path) -> None:
    analysis = scaling.analyse(load_records([mixed_store]))
    kinds = {s.key.short_label(): s.kind for s in analysis.series}
    assert kinds["weak 0.1/GPU intra, micro-batch 64"] == "weak"
    assert kinds["strong intra, micro-batch 64"] == "strong"
    weak = next(s for s in analysis.series if s.kind == "weak")
    strong = next(s for s in analysis.series if s.key.short_label() == "strong intra, micro-batch 64")
    assert len({round(p.ideal_epoch_time_s, 9) for p in weak.points}) == 1          # flat
    ideal = [p.ideal_epoch_time_s for p in strong.points]
    assert all(a > b for a, b in zip(ideal, ideal[1:]))                              # falls as 1/N
    assert ideal[0] / ideal[-1] == pytest.approx(8.0)
    # the weak runs' much shorter epochs never leak into a strong baseline
    assert strong.baseline_epoch_time_s > 5 * weak.baseline_epoch_time_s


def test_latest_record_per_point_wins_and_failed_runs_are_listed_not_used(mixed_store: Path) -> None:
    analysis = scaling.analyse(load_records([mixed_store]))
    assert [r["point"] for r in analysis.selection.not_completed] == [300]
    assert [r["point"] for r in analysis.selection.superseded] == [1]
    series = next(s for s in analysis.series if s.key.short_label() == "strong intra, micro-batch 32")
    two = next(p for p in series.points if p.world_size == 2)
    rerun = next(r for r in load_records([mixed_store]) if r["point"] == 1 and r["finished_at"].startswith("2026-01-02"))
    assert two.epoch_time_s == pytest.approx(rerun["epoch_time_s_mean"])
    assert two.repeats == 1
    assert all(r.world_size != 16 or r.layout == "inter" for r in analysis.runs)
    assert len(analysis.runs) == 4 * 2 + 3 + 4 + 3


def test_an_inter_node_series_without_one_gpu_borrows_the_intra_one(mixed_store: Path) -> None:
    analysis = scaling.analyse(load_records([mixed_store]))
    inter = next(s for s in analysis.series if s.key.layout == "inter")
    assert [p.world_size for p in inter.points] == [1, 8, 16, 32]
    assert inter.points[0].borrowed and not any(p.borrowed for p in inter.points[1:])
    intra64 = next(s for s in analysis.series if s.key.short_label() == "strong intra, micro-batch 64")
    assert inter.baseline_epoch_time_s == intra64.baseline_epoch_time_s


def test_layout_comes_from_the_shape_and_pairs_compare_equal_gpu_counts(mixed_store: Path) -> None:
    analysis = scaling.analyse(load_records([mixed_store]))
    assert [p["world_size"] for p in analysis.layout_pairs] == [8]
    pair = analysis.layout_pairs[0]
    assert pair["inter_over_intra"] == pytest.approx(pair["inter_epoch_time_s"] / pair["intra_epoch_time_s"])
    grid = make_record(world_size=8, nodes=2, layout="grid", epoch_time_s=100.0, micro_batch=64)
    one = make_record(world_size=1, layout="inter", epoch_time_s=700.0, micro_batch=64)
    assert series_key(grid).layout == "grid 4/node"
    assert series_key(one).layout == "intra"


def test_fixed_global_batch_is_its_own_series_and_breakdown_splits_the_step() -> None:
    fixed = [make_record(world_size=n, epoch_time_s=800.0 / n, micro_batch=256 // n, fixed="global", point=n,
                         step_parts_ms=dict(PARTS, bwd_allreduce=50.0 * (n > 1))) for n in (1, 2, 4)]
    micro = [make_record(world_size=n, epoch_time_s=800.0 / n, micro_batch=64, point=10 + n) for n in (1, 2)]
    series = build_series(fixed + micro)
    labels = sorted(s.key.batch for s in series)
    assert labels == ["global batch 256", "micro-batch 64"]
    parts = time_breakdown(fixed[1])
    assert parts["compute"] == pytest.approx(PARTS["fwd"] + PARTS["bwd_inner"])
    assert parts["allreduce"] == pytest.approx(50.0)
    assert parts["optimizer"] == pytest.approx(PARTS["step"])
    total = fixed[1]["breakdown_ms"]["mean"]["step_time"]
    assert sum(parts[k] for k in BREAKDOWN_PARTS) == pytest.approx(max(total, parts["step_time"]))
    assert time_breakdown(micro[0]) is None


def test_comm_share_falls_with_the_micro_batch_and_accuracy_rows_follow_the_global_batch(mixed_store: Path) -> None:
    analysis = scaling.analyse(load_records([mixed_store]))
    intra8 = {r["micro_batch"]: r["comm_share"] for r in analysis.comm_share
              if r["world_size"] == 8 and r["layout"] == "intra"}
    assert sorted(intra8) == [32, 64, 128]
    assert intra8[128] < intra8[64] < intra8[32]
    assert all(r["world_size"] > 1 for r in analysis.comm_share)
    batches = [r["global_batch"] for r in analysis.accuracy if r["scaling"] == "strong"]
    assert batches == sorted(batches) and max(batches) == 64 * 32


def test_formulas_and_bad_kinds() -> None:
    assert speedup("strong", 100.0, 1, 25.0, 4) == 4.0
    assert efficiency("strong", 100.0, 2, 25.0, 8) == 1.0
    assert speedup("weak", 10.0, 1, 12.5, 8) == pytest.approx(6.4)
    assert efficiency("weak", 10.0, 1, 12.5, 8) == pytest.approx(0.8)
    assert ideal_epoch_time("weak", 10.0, 1, 8) == 10.0
    with pytest.raises(ValueError, match="valid: strong, weak"):
        speedup("linear", 1.0, 1, 1.0, 1)
    assert kind_of("none") == "strong"


def test_zero_stages_and_geometries_are_separate_series():


    base = {"scaling": "strong", "nodes": 1, "micro_batch": 32, "precision": "bf16", "engine": "deepspeed",
            "model": "vit_b_16", "dataset": "cifar10", "image_size": 224, "patch_size": 16}
    keys = {series_key(base | {"zero_stage": 0}), series_key(base | {"zero_stage": 2}),
            series_key(base | {"zero_stage": 0, "patch_size": 8}), series_key(base | {"engine": "ddp"})}
    assert len(keys) == 4
    assert series_key(base | {"zero_stage": 2}).engine == "deepspeed ZeRO-2"
    assert series_key(base | {"zero_stage": 0}).engine == "deepspeed"          # the default stays unlabelled
    assert series_key(base | {"patch_size": 8}).model == "vit_b_16 (patch 8, 224 px)"
    assert series_key(base | {"zero_stage": 0}).short_label() == "strong intra, micro-batch 32"
    assert series_key(base | {"engine": "ddp"}).short_label() == "strong intra, micro-batch 32, ddp"
    assert series_key(base | {"zero_stage": 2, "patch_size": 8}).short_label() == \
        "strong intra, micro-batch 32, deepspeed ZeRO-2, vit_b_16 (patch 8, 224 px)"


def test_a_swept_knob_splits_series_and_a_seed_does_not():
    """A sweep over optimizer.master_update x GPUs gives one series per update, each with its own baseline;
    repeats that differ only in their seed stay one point (their mean)."""
    records = []
    for point, (update, n, seed, t) in enumerate([("separate", 1, 0, 100.0), ("separate", 2, 0, 60.0),
                                                  ("fused", 1, 0, 90.0), ("fused", 2, 0, 50.0),
                                                  ("fused", 2, 1, 54.0)]):
        record = make_record(world_size=n, epoch_time_s=t, micro_batch=32, point=point, first_epoch_factor=1.0)
        record["config"]["optimizer"] = {"name": "adamw", "lr": 1e-3, "master_update": update}
        record["config"]["trainer"]["seed"] = seed
        records.append(record)
    assert swept_knobs(records) == ("optimizer.master_update",)
    analysis = scaling.analyse(records)
    by_label = {s.key.short_label(): s for s in analysis.series}
    assert set(by_label) == {"strong intra, micro-batch 32, optimizer.master_update=separate",
                             "strong intra, micro-batch 32, optimizer.master_update=fused"}
    fused = by_label["strong intra, micro-batch 32, optimizer.master_update=fused"]
    separate = by_label["strong intra, micro-batch 32, optimizer.master_update=separate"]
    assert separate.baseline_epoch_time_s == pytest.approx(100.0)
    assert fused.baseline_epoch_time_s == pytest.approx(90.0)          # its own 1-GPU run, not the other's
    two = next(p for p in fused.points if p.world_size == 2)
    assert two.epoch_time_s == pytest.approx(52.0) and two.speedup == pytest.approx(90.0 / 52.0)
    assert {row.series for row in analysis.runs} == set(by_label)
    # Nothing swept: no knob in any label.
    plain = [make_record(world_size=n, epoch_time_s=t, micro_batch=32, point=n) for n, t in ((1, 10.0), (2, 6.0))]
    assert swept_knobs(plain) == ()
    assert [s.key.short_label() for s in build_series(plain)] == ["strong intra, micro-batch 32"]


def test_a_geometry_sweep_of_a_model_without_a_fixed_geometry_splits_series():
    """vit_tiny has no geometry of its own (no patch in its label): patch sizes x GPUs must not average together."""
    records = []
    for point, (patch, n, t) in enumerate([(4, 1, 10.0), (4, 2, 6.0), (2, 1, 40.0), (2, 2, 22.0)]):
        record = make_record(world_size=n, epoch_time_s=t, micro_batch=32, point=point, model="vit_tiny",
                             first_epoch_factor=1.0)
        record["config"]["model"] |= {"patch_size": patch, "image_size": 32}
        records.append(record)
    assert swept_knobs(records) == ("model.patch_size",)
    baselines = {s.key.knobs: s.baseline_epoch_time_s for s in scaling.analyse(records).series}
    assert baselines == {"model.patch_size=4": pytest.approx(10.0), "model.patch_size=2": pytest.approx(40.0)}


def test_swept_knobs_are_the_fewest_that_tell_runs_apart_and_ignore_settings_older_records_lack():
    def rec(point, optimizer, **config):
        record = make_record(world_size=1 + point % 2, epoch_time_s=10.0, micro_batch=32, point=point)
        record["config"]["optimizer"] = optimizer
        record["config"].update(config)
        return record

    adamw = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "master_update": "separate"}
    sgd = {"name": "sgd", "lr": 0.03, "momentum": 0.9}
    lamb = {"name": "lamb", "lr": 2e-3, "betas": [0.9, 0.999], "eps": 1e-6}
    # A group swap: its name tells the runs apart, the keys that follow from it add nothing.
    swap = [rec(i, opt) for i, opt in enumerate([adamw, adamw, sgd, sgd, lamb, lamb])]
    assert swept_knobs(swap) == ("optimizer.name",)
    assert {s.key.knobs for s in build_series(swap)} == {
        "optimizer.name=adamw", "optimizer.name=sgd", "optimizer.name=lamb"}
    # A setting vit-dt added later (absent from an older store) does not split a merged report ...
    older = [rec(i, {k: v for k, v in adamw.items() if k != "master_update"}) for i in range(2)]
    newer = [rec(10 + i, adamw) for i in range(2)]
    assert swept_knobs(older + newer) == ()
    # ... nor does a record without any config; two settings swept together both show.
    bare = make_record(world_size=4, epoch_time_s=10.0, micro_batch=32, point=20)
    bare.pop("config")
    both = [rec(30 + i, adamw | {"master_update": u}, model={"name": "vit_b_16", "fast_attention": fa})
            for i, (u, fa) in enumerate([("separate", True), ("fused", False)])]
    assert swept_knobs(newer + [bare]) == ()
    assert swept_knobs(both) == ("model.fast_attention", "optimizer.master_update")   # both, though together
    lrs = [rec(40 + i, opt) for i, opt in enumerate([adamw, adamw | {"lr": 1e-2}, sgd, sgd | {"lr": 1e-2}])]
    assert swept_knobs(lrs) == ("optimizer.lr", "optimizer.name")   # lr splits runs of one optimizer
