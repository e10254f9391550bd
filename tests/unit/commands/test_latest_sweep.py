"""`vit-dt status|results|report|predict` with no directory use the latest sweep, and say which one."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.sample_records import simulated_sweep, write_store
from tests.helpers import run_cli
from vit_dt.slurm.submit import point_latest_at


def _dry_sweep(out_dir: Path, name: str, *overrides: str) -> Path:
    sweep_dir = out_dir / "sweeps" / name
    proc = run_cli("sweep", "cluster=vaughan", *overrides, f"hydra.sweep.dir={sweep_dir}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    return sweep_dir


@pytest.fixture
def sweeps(tmp_path):
    """Two sweeps under $VIT_DT_OUT_DIR/sweeps, run from a directory that holds none (`outputs/` is relative)."""
    out = tmp_path / "out"
    first = _dry_sweep(out, "20260101-120000", "resources.gpus=1,2")
    second = _dry_sweep(out, "20260101-130000", "resources.gpus=4")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return out, first, second, {"VIT_DT_OUT_DIR": str(out)}, cwd


def _cli(cwd: Path, env: dict, *args: str):
    return run_cli(*args, env=env, cwd=cwd, timeout=300)


def test_status_without_a_directory_uses_the_latest_link(sweeps):
    out, first, second, env, cwd = sweeps
    point_latest_at(first)                       # what a submitted sweep does: latest -> it, not the newest dir
    proc = _cli(cwd, env, "status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"vit-dt status: using the latest sweep: {first.resolve()}"
    assert "2 point(s)" in proc.stdout and "resources.gpus=2" in proc.stdout


def test_without_the_link_the_newest_sweep_is_used(sweeps):
    out, first, second, env, cwd = sweeps
    proc = _cli(cwd, env, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"using the latest sweep: {second.resolve()}" in proc.stderr
    assert '"sweep_dir"' in proc.stdout            # stdout stays the JSON document alone


def test_results_report_and_predict_default_to_the_latest_sweep(sweeps, tmp_path):
    out, first, second, env, cwd = sweeps
    write_store(first, simulated_sweep(gpus=[1, 2, 4], sweep_dir=str(first)))
    point_latest_at(first)
    results = _cli(cwd, env, "results")
    assert results.returncode == 0, results.stderr
    assert f"using the latest sweep: {first.resolve()}" in results.stderr and "3 record(s)" in results.stdout
    report = _cli(cwd, env, "report", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert f"vit-dt report: using the latest sweep: {first.resolve()}" in report.stderr
    assert (tmp_path / "report" / "report.html").is_file()
    predict = _cli(cwd, env, "predict", "--gpus", "1,2,4,8")
    assert predict.returncode == 0, predict.stderr
    assert f"vit-dt predict: using the latest sweep: {first.resolve()}" in predict.stderr


@pytest.mark.parametrize("command", ["status", "results", "report", "predict"])
def test_no_sweep_at_all_is_one_line_and_exit_2(tmp_path, command):
    proc = _cli(tmp_path, {"VIT_DT_OUT_DIR": str(tmp_path / "none")}, command)
    assert proc.returncode == 2
    assert proc.stderr == (f"vit-dt {command}: no sweep under {tmp_path / 'none' / 'sweeps'} (run `vit-dt sweep "
                           f"...` first, or name a sweep directory)\n")
