"""vit_dt.measure.breakdown: the per-rank analysis and straggler verdict (pure). Real DeepSpeed ranks feeding it:
tests/unit/engines/test_deepspeed_timers.py."""
from __future__ import annotations

import pytest

from vit_dt.measure.breakdown import TIMER_KEYS, analyse


def rank_summary(fwd, bwd_inner, allreduce, step=5.0, data_wait=1.0):
    return {"fwd": fwd, "bwd": bwd_inner + allreduce, "bwd_inner": bwd_inner, "bwd_allreduce": allreduce,
            "step": step, "data_wait": data_wait, "step_time": fwd + bwd_inner + allreduce + step + data_wait,
            "samples": 10}


def test_analyse_flags_a_slow_rank_that_others_wait_for():
    # Rank 2 computes 60% longer; ranks 0, 1, 3 wait for it inside the all-reduce.
    per_rank = [rank_summary(20, 40, 40), rank_summary(21, 41, 39), rank_summary(32, 64, 4),
                rank_summary(20, 40, 41)]
    result = analyse(per_rank)
    straggler = result["straggler"]
    assert straggler["flagged"] is True
    assert straggler["slow_rank"] == 2
    assert straggler["skew"] == pytest.approx((32 + 64 + 5) / (20 + 40 + 5) - 1)   # vs the others' median (65)
    assert straggler["others_allreduce_wait_ms"] > 30
    assert [r["rank"] for r in result["per_rank"]] == [0, 1, 2, 3]
    assert result["per_rank"][2]["compute"] == 32 + 64 + 5


def test_analyse_does_not_flag_a_balanced_run():
    per_rank = [rank_summary(20, 40, 10), rank_summary(21, 42, 9), rank_summary(19, 41, 11), rank_summary(20, 40, 10)]
    straggler = analyse(per_rank)["straggler"]
    assert straggler["flagged"] is False and straggler["slow_rank"] is None
    assert 0 <= straggler["skew"] < 0.1


def test_analyse_threshold_and_single_rank():
    per_rank = [rank_summary(20, 40, 10), rank_summary(26, 52, 1)]     # 28% slower
    assert analyse(per_rank, straggler_threshold=0.2)["straggler"]["flagged"] is True
    assert analyse(per_rank, straggler_threshold=0.3)["straggler"]["flagged"] is False
    alone = analyse([rank_summary(20, 40, 0)])["straggler"]
    assert alone["flagged"] is False and alone["skew"] == 0.0
    with pytest.raises(ValueError):
        analyse([])


def test_analyse_shares_are_means_over_ranks():
    per_rank = [rank_summary(10, 20, 30, step=10, data_wait=30), rank_summary(10, 20, 10, step=10, data_wait=10)]
    result = analyse(per_rank)
    step_time = (100 + 60) / 2
    assert result["mean"]["step_time"] == step_time
    assert result["comm_share"] == pytest.approx(20 / step_time)
    assert result["data_wait_share"] == pytest.approx(20 / step_time)
    assert result["per_rank"][0]["comm_share"] == pytest.approx(30 / 100)
    assert result["mean"]["samples"] == 10
    assert analyse([dict.fromkeys(TIMER_KEYS, 0.0) | {"step_time": 0.0, "data_wait": 0.0}])["comm_share"] is None
