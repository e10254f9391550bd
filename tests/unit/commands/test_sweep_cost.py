"""`vit-dt sweep`'s cost step, as a user runs it (dry runs: nothing is queued): estimates in the summary and in
sweep.json, resources.time_min=auto from a calibration, the --max-gpu-hours refusal, the 500-point summary."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.fixtures.sample_records import make_record, write_store
from tests.helpers import run_cli
from vit_dt.analysis import estimate as est

PARTS = {"fwd": 700.0, "bwd_inner": 1400.0, "bwd_allreduce": 0.0, "step": 150.0, "data_wait": 50.0}


def _sweep(tmp_path: Path, name: str, *args: str):
    sweep_dir = tmp_path / name
    proc = run_cli("sweep", *args, f"hydra.sweep.dir={sweep_dir}", "--dry-run", "--no-verify-data", timeout=300)
    return proc, sweep_dir


def _calibration(tmp_path: Path) -> Path:
    """A finished 1-rank ViT-B/16 run: ~1,815 s an epoch, 3 epochs, 135 s of fixed costs."""
    record = make_record(world_size=1, epoch_time_s=1815.0, micro_batch=64, step_parts_ms=PARTS, epochs=3,
                         point=0, sweep_dir=str(tmp_path / "calib"))
    record.update(started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T01:33:00+00:00")
    write_store(tmp_path / "calib", [record])
    return tmp_path / "calib"


def test_a_dry_run_prints_guessed_gpu_hours_per_shape_and_keeps_each_estimate(tmp_path):
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=vaughan", "model=vit_b_16", "dataset=cifar10",
                             "resources.gpus=1,4", "trainer.epochs=5")
    assert proc.returncode == 0, proc.stderr
    assert "estimated cost (before queueing):" in proc.stdout
    assert re.search(r"1x4 4gpu t4v2 30min: points 1: [\d.]+ GPU-hours", proc.stdout)
    assert "source: guess: T4 8.1 TFLOP/s peak x 35% MFU: points 0-1" in proc.stdout
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    estimates = [p["estimate"] for p in points]
    assert [e["source"] for e in estimates] == ["guess", "guess"]
    total = sum(e["hours"] for e in estimates)
    assert f"total: {total:.2f} GPU-hours (2 of 2 point(s) a guess)" in proc.stdout
    assert estimates[1]["segments"] == 2 and "point 1: needs 2 requeued segments of 30 min" in proc.stdout


def test_time_min_auto_from_a_calibration_sets_each_points_limit(tmp_path):
    calib = _calibration(tmp_path)
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=vaughan", "model=vit_b_16", "dataset=cifar10",
                             "resources.gpus=1,2", "trainer.epochs=2", "trainer.micro_batch=64",
                             "resources.time_min=auto", "--calibrate-from", str(calib))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    first = manifest["points"][0]
    e = first["estimate"]
    assert e["source"] == "calibrated" and e["overhead_measured"] and e["overhead_s"] == pytest.approx(135.0)
    assert e["epoch_s"] == pytest.approx(1815.0, rel=0.01)     # the FLOPs count differs from the record's by <1%
    # 2 epochs x 1,815 s x 1.5 + 135 s measured + the launch + vaughan's signal delay (120 s) and Slurm's jitter
    wanted = math.ceil((2 * e["epoch_s"] * 1.5 + 135.0 + est.LAUNCH_S + 120 + est.SIGNAL_JITTER_S) / 60)
    assert e["time_auto"] and e["time_min"] == first["shape"]["time_min"] == wanted
    second = manifest["points"][1]
    assert second["shape"]["time_min"] < wanted                 # 2 ranks: about half the time
    saved = (Path(first["run_dir"]) / "config.yaml")
    assert not saved.exists()                                  # a dry run writes no configs
    script = (sweep_dir / "dry-run" / "job0.sbatch").read_text()
    assert f"--time={wanted // 60:d}:{wanted % 60:02d}:00" in script or f"--time={wanted}" in script
    assert f"calibrated from {calib}/points/0" in proc.stdout


def test_max_gpu_hours_too_small_refuses_and_writes_nothing(tmp_path):
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=vaughan", "model=vit_b_16", "dataset=cifar10",
                             "resources.gpus=1,4", "trainer.epochs=5", "--max-gpu-hours", "3")
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert "nothing was submitted" in message and "exceeds --max-gpu-hours 3" in message
    assert "the largest: point 1 (1x4 4gpu t4v2 30min" in message and "drop point(s) 1" in message
    assert not sweep_dir.exists()


@pytest.mark.parametrize("args, wanted", [
    (["--max-gpu-hours", "-1"], "--max-gpu-hours '-1' is invalid"),
    (["--max-gpu-hours", "lots"], "--max-gpu-hours 'lots' is invalid"),
    (["--calibrate-from", "/no/such/sweep"], "--calibrate-from /no/such/sweep: no such file"),
    (["resources.time_min=aut"], "resources.time_min must be a positive integer (minutes) or auto"),
])
def test_bad_cost_options_are_one_line_and_exit_2(tmp_path, args, wanted):
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=vaughan", *args)
    assert proc.returncode == 2 and wanted in proc.stderr, proc.stderr
    assert not (sweep_dir / "sweep.json").exists()


def test_a_partition_without_a_gpu_model_runs_unestimated_unless_the_estimate_is_needed(tmp_path):
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=localslurm", "resources.partition=gpu", "resources.gpus=1")
    assert proc.returncode == 0, proc.stderr
    assert "no estimate for point(s) 0: no peak TFLOP/s for GPU model None" in proc.stdout
    assert "estimate" not in json.loads((sweep_dir / "sweep.json").read_text())["points"][0]
    proc, _ = _sweep(tmp_path, "t", "cluster=localslurm", "resources.partition=gpu", "resources.gpus=1",
                     "resources.time_min=auto")
    assert proc.returncode == 2 and "point 0: no peak TFLOP/s for GPU model None" in proc.stderr


def test_a_500_point_dry_run_prints_total_gpu_hours_and_compressed_point_lists(tmp_path):
    proc, sweep_dir = _sweep(tmp_path, "s", "cluster=vaughan", "resources.gpus=1,2,4,8", "trainer.seed=range(125)")
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout[proc.stdout.index("vit-dt sweep: 500 point(s)"):]
    assert re.search(r"^  total: [\d.]+ GPU-hours \(500 of 500 point\(s\) a guess\)$", summary, re.M)
    for first in (0, 125, 250, 375):
        assert f"points {first}-{first + 124}" in summary
    assert not re.search(r"\d+,\d+,\d+", summary)        # no list of numbers anywhere in the summary
    assert len(summary.splitlines()) < 20
    assert est.PRIOR_MFU == 0.35
