"""`vit-dt sweep --remote` from a "laptop" to a login node over SSH, on the real local Slurm cluster.

The login node is a real sshd on 127.0.0.1 (tests/fixtures/sshd.py) whose sessions see the local cluster; its
vit-dt Python is this machine's interpreter (cluster.remote.python). The laptop is a separate directory with no
Slurm in its environment (no SLURM_CONF) and a recognisable fake W&B key: a 2-point sweep is submitted through the
login node, followed with `status --remote`, pulled and reported here with `report --remote` and `results
--remote`, and the key is then looked for in every file on both sides (the sweep's snapshot, sbatch scripts,
logs, the pulled copy, and the environment the login node's sessions saw). Refused sweeps (a bad override; a
login node whose Python does not exist) exit non-zero with the login node's message and queue nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import DIGITS_FAST, REPO, fresh_user_env

pytestmark = [pytest.mark.slurm]
# made at run time: the literal must not be in this file, which the snapshot carries
FAKE_KEY = f"fake-wandb-key-{uuid.uuid4().hex}"
RUN_NAME = "it's a $(touch PWNED) test"          # quotes and $(...) must reach the login node as typed
TERMINAL = {"completed", "failed", "timeout", "cancelled"}
WAIT_S = 900


def _laptop_env(laptop: Path) -> dict[str, str]:
    """A laptop's environment: no Slurm here, a W&B key set."""
    env = fresh_user_env(laptop)
    env.pop("SLURM_CONF", None)
    env.update(WANDB_API_KEY=FAKE_KEY, OMP_NUM_THREADS="1")
    return env


def _vit_dt(laptop: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_dt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_laptop_env(laptop), cwd=laptop)


def _jobs() -> set[str]:
    """Every job the cluster knows: queued (squeue) or finished (sacct)."""
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    known = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-o", "JobID", "-S", "2020-01-01"], capture_output=True,
                           text=True, timeout=60).stdout
    return set(queued.split()) | set(known.split())


@pytest.fixture(scope="module")
def remote_sweep(login_node, tmp_path_factory):
    """One 2-point sweep submitted through the login node and followed until its points end (shared by the checks)."""
    root = tmp_path_factory.mktemp("remote")
    laptop, login_home = root / "laptop", root / "login-node"
    laptop.mkdir()
    login_home.mkdir()
    work = login_home / "vit-dt"
    remote = login_node.overrides(work, sys.executable, setup=[f"env > {login_home}/session.env"])
    tic = time.monotonic()
    proc = _vit_dt(laptop, "sweep", "--remote", login_node.destination, *remote, "cluster=localslurm",
                   "trainer.seed=0,1", *DIGITS_FAST, "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                   f"run_name=\"{RUN_NAME}\"")
    submitted_s = time.monotonic() - tic
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record_path,) = (laptop / "outputs" / "remote").glob("*.json")
    record = json.loads(record_path.read_text())
    seen, deadline = [], time.monotonic() + WAIT_S
    while True:                                   # `vit-dt status --remote` follows it, as a user would
        status = _vit_dt(laptop, "status", "--remote", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        states = [p["state"] for p in json.loads(status.stdout)["points"]]
        seen.append(states)
        if all(s in TERMINAL for s in states):
            break
        assert time.monotonic() < deadline, f"not done after {WAIT_S} s: {seen[-1]}"
        time.sleep(2)
    return {"proc": proc, "record": record, "laptop": laptop, "login_home": login_home, "work": work,
            "states": seen, "submitted_s": submitted_s}


@pytest.mark.slow
def test_a_sweep_submitted_through_the_login_node_runs_there_and_is_reported_here(remote_sweep):
    record, laptop, work = remote_sweep["record"], remote_sweep["laptop"], remote_sweep["work"]
    there = Path(record["sweep_dir"])
    assert there.parent == work / "sweeps" and (there / "sweep.json").is_file()
    assert f"follow:    vit-dt status --remote {record['name']}" in remote_sweep["proc"].stdout
    assert remote_sweep["states"][-1] == ["completed", "completed"], remote_sweep["states"]

    # the jobs ran the snapshot frozen here and shipped, with this checkout's commit
    manifest = json.loads((there / "sweep.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert manifest["code"]["shipped"] is True and manifest["code"]["snapshot"] == str(there / "code")
    assert manifest["provenance"]["code"]["commit"] == head
    assert manifest["provenance"]["request"]["command_line"].startswith("vit-dt sweep --remote ")
    for point in (0, 1):
        result = json.loads((there / "points" / str(point) / "result.json").read_text())
        assert result["status"] == "completed"
        assert result["provenance"]["code"]["imported_from"].startswith(str(there / "code"))
        assert result["config"]["run_name"] == RUN_NAME            # as typed: quotes and $(...) untouched
    assert not list(remote_sweep["login_home"].rglob("PWNED")) + list(laptop.rglob("PWNED"))

    # pulled here (a directory of its own, not the login node's), reported here
    report = _vit_dt(laptop, "report", "--remote")
    assert report.returncode == 0, report.stdout + report.stderr
    copy = Path(record["local_dir"])
    assert copy.parent == laptop / "outputs" / "remote" and not copy.is_relative_to(work)
    assert report.stdout.strip() == str(copy / "report" / "report.html") and Path(report.stdout.strip()).is_file()
    assert len((copy / "results.jsonl").read_text().splitlines()) == 2
    assert sorted(p.parent.name for p in copy.glob("points/*/result.json")) == ["0", "1"]
    assert not list(copy.glob("points/*/checkpoints")) and not list(copy.rglob("*.pkl"))
    results = _vit_dt(laptop, "results", "--remote")
    assert results.returncode == 0 and f"2 record(s) from {copy / 'results.jsonl'}" in results.stdout, results.stderr
    offline = _vit_dt(laptop, "report", str(copy), "--out", str(laptop / "offline-report"))
    assert offline.returncode == 0 and (laptop / "offline-report" / "report.html").is_file(), offline.stderr


@pytest.mark.slow
def test_the_key_set_here_is_in_no_file_on_either_side(remote_sweep):
    """Nor in the environment the login node's sessions saw (their setup line wrote it to session.env), although
    the server accepts WANDB_* and the client config sends it: vit-dt's ssh runs without it."""
    session = (remote_sweep["login_home"] / "session.env").read_text()
    assert "SLURM_CONF=" in session and "WANDB_API_KEY" not in session
    checked = 0
    for side in (remote_sweep["laptop"], remote_sweep["login_home"]):
        for path in side.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert FAKE_KEY.encode() not in path.read_bytes(), path
                checked += 1
    there = Path(remote_sweep["record"]["sweep_dir"])
    for must in (there / "code" / "vit_dt" / "cli.py", there / "sweep.json", there / "multirun.yaml"):
        assert must.is_file()
    assert list(there.glob("slurm/*_submission.sh")) and list(there.glob("slurm/*_log.out"))
    assert checked > 300, checked          # the snapshot, scripts, logs and records were all read


def test_a_refused_sweep_shows_the_login_nodes_message_and_queues_nothing(login_node, tmp_path):
    laptop, work = tmp_path / "laptop", tmp_path / "login-node" / "vit-dt"
    laptop.mkdir()
    before = _jobs()
    proc = _vit_dt(laptop, "sweep", "--remote", login_node.destination, *login_node.overrides(work, sys.executable),
                   "cluster=localslurm", "trainer.epochs=abc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "vit-dt sweep: error: Error merging override trainer.epochs=abc" in proc.stderr     # the login node's
    assert "could not be converted to Integer" in proc.stderr
    assert _jobs() == before
    assert list((work / "sweeps").iterdir()) == []                 # the directory made for it is gone there
    assert not (laptop / "outputs" / "remote").exists() or not list((laptop / "outputs" / "remote").iterdir())


def test_a_login_node_without_vit_dt_gets_the_install_command_and_nothing_is_queued(login_node, tmp_path):
    laptop, work = tmp_path / "laptop", tmp_path / "login-node" / "vit-dt"
    laptop.mkdir()
    before = _jobs()
    proc = _vit_dt(laptop, "sweep", "--remote", login_node.destination,
                   *login_node.overrides(work, "/nonexistent/venv/bin/python"), "cluster=localslurm")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "vit-dt cannot run on" in proc.stderr and "/nonexistent/venv/bin/python: not found" in proc.stderr
    assert "pip install" in proc.stderr and "cluster.remote.python" in proc.stderr
    assert _jobs() == before and not work.exists()
    assert os.listdir(laptop) == [] or not list((laptop / "outputs").rglob("*.json"))
