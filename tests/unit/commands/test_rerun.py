"""`vit-dt rerun` says, before it starts, when the recorded snapshot is gone or the packages differ (the rerun
itself, reproducing a point's weights and accuracy, is tested on the real cluster: tests/e2e/test_frozen_code_slurm.py)."""
from __future__ import annotations

import json

from tests.helpers import run_cli
from vit_dt.records import provenance


def _run_dir(tmp_path, snapshot: str | None, packages: str) -> str:
    run_dir = tmp_path / "points" / "0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("sweep_dir: null\nout_dir: /tmp\ntrainer:\n  nproc: 1\n")
    block = {"code": {"commit": "0123456789", "dirty": False, "snapshot": snapshot},
             "environment": {"packages_sha256": packages}, "machine": {}, "request": {}}
    (run_dir / "result.json").write_text(json.dumps({"status": "completed", "world_size": 1, "provenance": block}))
    return str(run_dir)


def test_a_gone_snapshot_and_other_packages_are_said_before_anything_runs(tmp_path):
    run_dir = _run_dir(tmp_path, str(tmp_path / "sweep" / "code"), "ff" * 32)
    proc = run_cli("rerun", run_dir, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"the code snapshot {tmp_path / 'sweep' / 'code'} is gone" in lines[0] and "0123456" in lines[0]
    assert "the installed packages differ from the run's" in lines[1] and "ffffffff recorded" in lines[1]
    assert "would run" in lines[2] and "the installed code" in lines[2]
    assert not (tmp_path / "points" / "0" / "reruns").exists()


def test_a_present_snapshot_and_the_same_packages_need_no_note(tmp_path):
    (tmp_path / "sweep" / "code").mkdir(parents=True)
    here = provenance.packages_digest(provenance.package_list())
    run_dir = _run_dir(tmp_path, str(tmp_path / "sweep" / "code"), here)
    proc = run_cli("rerun", f"{run_dir}/result.json", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "note" not in proc.stdout and f"with the snapshot {tmp_path / 'sweep' / 'code'}" in proc.stdout


def test_a_directory_without_a_run_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("rerun", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nothing to rerun" in proc.stderr
