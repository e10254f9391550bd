"""The sweep directory (vit_dt/slurm/sweep_dir.py): claimed by one sweep alone, never a path that breaks a script,
and one-line errors where it cannot be written. Real `vit-dt sweep --dry-run` processes, started together."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli
from vit_dt.slurm import sweep_dir


def test_the_default_name_gets_a_suffix_when_taken_and_a_named_one_is_kept(tmp_path):
    first = sweep_dir.claim(tmp_path / "sweeps" / "20261203-101010", named_by_user=False)
    second = sweep_dir.claim(tmp_path / "sweeps" / "20261203-101010", named_by_user=False)
    assert first.name == "20261203-101010" and second.name == "20261203-101010-2"
    assert sweep_dir.claim(first, named_by_user=True) == first          # the same sweep again: --resume semantics


@pytest.mark.parametrize("bad", ["y\ntouch INJECTED\n#", "a\rb", "a\0b"])
def test_a_path_with_control_characters_is_refused_before_anything_is_made(tmp_path, bad):
    with pytest.raises(sweep_dir.SweepDirError, match="hydra.sweep.dir=.* holds a"):
        sweep_dir.claim(tmp_path / "sweeps" / bad, named_by_user=True)
    assert not (tmp_path / "sweeps").exists()


def test_a_newline_in_the_sweep_dir_or_data_root_is_refused_by_the_cli_and_nothing_is_written(tmp_path):
    target = tmp_path / "y\ntouch INJECTED\n#"
    proc = run_cli("sweep", "cluster=local", "--dry-run", f"hydra.sweep.dir='{target}'")
    assert proc.returncode == 2 and "holds a newline" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("sweep", "cluster=local", "--dry-run", "dataset=cifar10", f"dataset.root='{tmp_path}/d\nx'",
                   f"out_dir={tmp_path}/out")
    assert proc.returncode == 2 and "dataset.root=" in proc.stderr and "holds a newline" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_two_sweeps_started_together_get_two_directories(tmp_path):
    """The same command three times at once, as a user's shell loop would: three sweeps, nothing shared."""
    command = [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=local", "trainer.micro_batch=16,32",
               "--dry-run", f"out_dir={tmp_path}"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    dirs = sorted((tmp_path / "sweeps").glob("2*"))
    assert len(dirs) == 3
    for d in dirs:
        manifest = json.loads((d / "sweep.json").read_text())
        assert manifest["sweep_dir"] == str(d) and len(manifest["points"]) == 2
        assert all(Path(p["run_dir"]).parent.parent == d for p in manifest["points"])
    printed = sorted(line.split(": ", 1)[1].strip() for out, _ in outputs for line in out.splitlines()
                     if line.startswith("sweep dir:"))
    assert printed == [str(d) for d in dirs]


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only file system (a read-only bind mount): permissions alone do not stop root."""
    source, target = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    if subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount rights) to make a read-only file system")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True, capture_output=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_read_only_output_directory_is_one_line_and_exit_2(read_only_dir):
    proc = run_cli("sweep", "cluster=local", "--dry-run", f"out_dir={read_only_dir}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot create the sweep directory" in proc.stderr
    assert "Read-only file system" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_status_into_a_closed_pipe_exits_quietly(tmp_path):
    proc = run_cli("sweep", "cluster=local", "trainer.micro_batch=8,16,32", "--dry-run", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    sweep = next((tmp_path / "sweeps").glob("2*"))
    shell = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{sys.executable}" -m vit_dt.cli status "{sweep}" | head -n 1'],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ))
    assert shell.stdout.count("\n") == 1
    assert "Traceback" not in shell.stderr and "BrokenPipeError" not in shell.stderr
