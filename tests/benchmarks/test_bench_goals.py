"""benchmarks/goals.py: which goals a throughput report is checked against, and the arithmetic of each.

The report here is written by hand in bench_throughput's JSON shape, with the H100 figures of docs/performance.md
(a GPU run cannot happen in CI); the benchmark's own JSON is tested end to end in test_benchmarks.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # tests/benchmarks/ -> the repo

import goals  # noqa: E402


def row(batch: int, img_per_s: float, mfu_measured: float | None = None) -> dict:
    return {"batch": batch, "img_per_s": img_per_s, "mfu_vs_measured_matmul": mfu_measured}


def h100_report(**paths) -> dict:
    return {"gpu_model": "H100", "model": "vit_b_16", "image_size": 224, "precision": "bf16", "paths": paths}


def by_goal_and_path(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["goal"], r["path"]): r for r in rows}


def test_goals_apply_only_to_vit_b_16_at_224_in_bf16_on_an_h100():
    assert goals.applies(h100_report())
    for change in ({"gpu_model": "H200"}, {"gpu_model": None}, {"model": "vit_tiny"}, {"image_size": 384},
                   {"precision": "fp32"}):
        report = h100_report(**{"deepspeed-master": row(256, 9999.0, 0.9)}) | change
        assert not goals.applies(report) and goals.check(report) == []


def test_each_goal_is_checked_where_the_report_has_what_it_needs():
    rows = by_goal_and_path(goals.check(h100_report(**{
        "reference": row(256, 3117.8, 0.417),
        "deepspeed-master": row(256, 3512.7, 0.470),
        "ddp": row(256, 3390.0, 0.449),
        "deepspeed-master+b64": row(64, 3138.0, 0.42),
        "deepspeed-master+fused": row(256, 3530.0, 0.472),
        "ddp+b64": row(64, 3100.0),
    })))
    assert rows[("img/s at batch 256", "deepspeed-master")]["met"]
    assert not rows[("img/s at batch 256", "ddp")]["met"]                        # 3,390 < 3,400
    assert not rows[("MFU vs measured bf16 matmul", "ddp")]["met"]               # 44.9% < 45%
    ratio = rows[("x reference loop at batch 256", "deepspeed-master")]
    assert ratio["measured"] == pytest.approx(3512.7 / 3117.8) and ratio["met"]
    share = rows[("batch 64 / batch 256 img/s", "deepspeed-master+b64")]
    assert share["measured"] == pytest.approx(3138.0 / 3530.0)     # against the fastest batch-256 row of its path
    assert not share["met"] and share["target"] == 0.90
    assert rows[("batch 64 / batch 256 img/s", "ddp+b64")]["measured"] == pytest.approx(3100.0 / 3390.0)
    assert not any(path == "reference" for _, path in rows)                    # the reference is the yardstick
    assert "| batch 64 / batch 256 img/s | deepspeed-master+b64 | 0.889 | 0.90 | NO |" in goals.table(
        list(rows.values()))


def test_no_ratio_to_a_reference_of_another_batch_and_no_share_without_a_batch_256_row():
    rows = by_goal_and_path(goals.check(h100_report(**{
        "reference": row(64, 2500.0), "deepspeed-master": row(256, 3500.0), "ceiling": row(64, 3000.0)})))
    assert ("x reference loop at batch 256", "deepspeed-master") not in rows
    assert not any(goal == "batch 64 / batch 256 img/s" for goal, _ in rows)
    assert ("MFU vs measured bf16 matmul", "deepspeed-master") not in rows        # no measured matmul rate


def test_the_ceiling_and_rows_of_another_geometry_are_not_judged():
    report = h100_report(**{"deepspeed-master": row(256, 3500.0) | {"flops_per_image": 105.9e9},
                            "ceiling": row(256, 3500.0) | {"flops_per_image": 105.9e9},
                            "deepspeed-master+p8": row(256, 900.0) | {"flops_per_image": 450e9}})
    report["flops_per_image"] = 105.9e9
    assert {r["path"] for r in goals.check(report)} == {"deepspeed-master"}
