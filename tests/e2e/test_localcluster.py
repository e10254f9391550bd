"""The local Slurm cluster: rendered configuration (pure) and real jobs on real daemons (marked slurm)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from vit_dt import localcluster
from vit_dt.commands import cluster as cluster_cmd
from vit_dt.localcluster import ClusterSpec
from vit_dt.localcluster.config import render_gres_conf, render_slurm_conf, render_slurmdbd_conf, render_task_prolog


# ============================ pure: rendered configuration, no daemons ============================
def _conf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _settings(text: str) -> dict[str, str]:
    """Global KEY=VALUE settings of a Slurm conf (node and partition lines left out)."""
    out = {}
    for line in _conf_lines(text):
        if line.startswith(("NodeName=", "PartitionName=")):
            continue
        key, _, value = line.partition("=")
        out[key] = value
    return out


def _line_fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split())


@pytest.fixture
def spec(tmp_path: Path) -> ClusterSpec:
    return ClusterSpec(state_dir=tmp_path / "cl")


def test_slurm_conf_nodes_and_partitions(spec: ClusterSpec) -> None:
    text = render_slurm_conf(spec)
    nodes = {f["NodeName"]: f for f in (_line_fields(l) for l in _conf_lines(text) if l.startswith("NodeName="))}
    parts = {
        f["PartitionName"]: f for f in (_line_fields(l) for l in _conf_lines(text) if l.startswith("PartitionName="))
    }
    assert sorted(nodes) == ["c1", "c2", "c3", "c4", "g1", "g2"]
    assert all(n["CPUs"] == "4" and n["NodeAddr"] == "127.0.0.1" for n in nodes.values())
    assert [n.get("Gres") for n in nodes.values()] == [None] * 4 + ["gpu:2"] * 2
    ports = [int(n["Port"]) for n in nodes.values()]
    assert len(set(ports)) == len(ports), "every slurmd needs its own port"
    assert spec.slurmctld_port not in ports and spec.slurmdbd_port not in ports
    assert parts["cpu"]["Nodes"] == "c[1-4]" and parts["cpu"]["Default"] == "YES"
    assert parts["gpu"]["Nodes"] == "g[1-2]" and parts["gpu"]["Default"] == "NO"
    assert {p["MaxTime"] for p in parts.values()} == {str(spec.max_time_min)}


def test_slurm_conf_settings_the_tests_rely_on(spec: ClusterSpec) -> None:
    s = _settings(render_slurm_conf(spec))
    assert s["JobRequeue"] == "1"
    assert int(s["KillWait"]) <= 5
    assert s["MpiDefault"] == "pmix"
    assert "cred_expire=5" in s["AuthInfo"].split(",")
    assert s["SlurmdParameters"] == "config_overrides"
    assert s["TmpFS"].endswith("/%n") and s["SlurmdSpoolDir"].endswith("/%n")
    assert "batch_sched_delay=0" in s["SchedulerParameters"]
    assert s["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert s["TaskProlog"] == str(spec.task_prolog)
    assert s["GresTypes"] == "gpu"


def test_every_address_is_loopback(spec: ClusterSpec) -> None:
    texts = [render_slurm_conf(spec), render_slurmdbd_conf(spec, "pw")]
    hosts = []
    for text in texts:
        hosts += re.findall(r"(?:Addr|Host)=(\S+)", text)
    assert hosts, "expected host/address settings"
    for host in hosts:
        assert re.fullmatch(r"(127\.0\.0\.1|localhost(\(127\.0\.0\.1\))?)", host), host


def test_gres_conf_points_at_character_devices(spec: ClusterSpec) -> None:
    line = _conf_lines(render_gres_conf(spec))[-1]
    assert _line_fields(line) == {"NodeName": "g[1-2]", "Name": "gpu", "File": f"{spec.gpu_dev_dir}/nvidia[0-1]"}


def test_slurmdbd_conf(spec: ClusterSpec) -> None:
    s = _settings(render_slurmdbd_conf(spec, "secret123"))
    assert s["StoragePass"] == "secret123"
    assert s["StoragePort"] == str(spec.db_port) and s["DbdPort"] == str(spec.slurmdbd_port)
    assert s["StorageLoc"] == spec.accounting_db


def test_task_prolog_exports_tcp_btl_and_per_node_vader_dir(spec: ClusterSpec) -> None:
    node = f"testnode{os.getpid()}"
    prolog = render_task_prolog(spec)
    try:
        out = subprocess.run(
            ["sh", "-c", prolog], env={**os.environ, "SLURMD_NODENAME": node}, capture_output=True, text=True, check=True
        ).stdout
        assert "export OMPI_MCA_btl=self,tcp" in out.splitlines()
        assert f"export OMPI_MCA_btl_vader_backing_directory={spec.vader_dir(node)}" in out.splitlines()
        assert Path(spec.vader_dir(node)).is_dir()
    finally:
        Path(spec.vader_dir(node)).rmdir()


def test_spec_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cpu_nodes must be >= 1, got 0"):
        ClusterSpec(state_dir=tmp_path, cpu_nodes=0)
    with pytest.raises(ValueError, match="base_port=70000"):
        ClusterSpec(state_dir=tmp_path, base_port=70000)
    with pytest.raises(ValueError, match="too long"):
        ClusterSpec(state_dir=tmp_path / ("x" * 120))
    with pytest.raises(ValueError, match=r"unknown ClusterSpec keys \['nodez'\]"):
        ClusterSpec.from_json(json.dumps({"nodez": 3}))


def test_spec_json_round_trip(spec: ClusterSpec) -> None:
    other = ClusterSpec(state_dir=spec.state_dir, cpu_nodes=2, base_port=20000)
    assert ClusterSpec.from_json(other.to_json()) == other


def test_state_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIT_DT_CLUSTER_DIR", str(tmp_path / "elsewhere"))
    assert ClusterSpec().state_dir == tmp_path / "elsewhere"


def test_cli_env_without_a_cluster_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eval "$(vit-dt cluster env)"` must not point Slurm clients at a slurm.conf that does not exist."""
    assert cluster_cmd.main(["--state-dir", str(tmp_path), "env"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "vit-dt cluster up" in captured.err


def test_profile_matches_the_cluster() -> None:
    """conf/cluster/localslurm.yaml must describe what slurm.conf declares."""
    profile = yaml.safe_load((REPO / "conf/cluster/localslurm.yaml").read_text())
    spec = ClusterSpec(state_dir=Path("/tmp/unused"))
    assert profile["scheduler"] == "slurm" and profile["default_partition"] == "cpu"
    assert set(profile["partitions"]) == set(spec.partitions)
    for name, nodes in spec.partitions.items():
        part = profile["partitions"][name]
        assert part["nodes"] == len(nodes)
        assert part["max_time_min"] == spec.max_time_min
        assert part["gpus_per_node"] == (spec.gpus_per_node if name == "gpu" else 0)
        assert part["cpus_per_node"] == spec.cpus_per_node


# ============================ real daemons, real jobs ============================
def _slurm(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _poll(what: str, check, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _sacct_state(job_id: str) -> str:
    out = _slurm("sacct", "--noheader", "--allocations", "--parsable2", f"--jobs={job_id}", "--format=State").stdout
    return out.strip().split(" ")[0] if out.strip() else ""


def _sbatch_wait(script: Path, *args: str) -> str:
    """Submit, block until the job ends, return its id."""
    out = _slurm("sbatch", "--parsable", "--wait", *args, str(script), timeout=120).stdout
    return out.strip().split(";")[0]


@pytest.mark.slurm
def test_all_nodes_idle_after_up(slurm_cluster) -> None:
    state = localcluster.status()
    assert state["up"] is True
    assert all(pid for pid in state["daemons"].values()), state["daemons"]
    assert sorted(state["nodes"]) == ["c1", "c2", "c3", "c4", "g1", "g2"]
    # A cluster this session started is idle; a shared one that was already up may be running jobs.
    healthy = {"idle"} if slurm_cluster.started else {"idle", "mixed", "allocated", "completing"}
    assert set(state["nodes"].values()) <= healthy, state["nodes"]
    assert localcluster.env() == {"SLURM_CONF": str(slurm_cluster.slurm_conf)}


@pytest.mark.slurm
def test_two_node_batch_job_runs_on_two_nodes(slurm_cluster, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun sh -c 'echo $SLURMD_NODENAME $SLURM_PROCID'\n")
    out = tmp_path / "out.txt"
    _sbatch_wait(script, "--nodes=2", "--ntasks-per-node=1", "--time=1", f"--output={out}")
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    nodes = {line.split()[0] for line in lines}
    assert len(lines) == 2 and len(nodes) == 2 and nodes <= {"c1", "c2", "c3", "c4"}, out.read_text()
    # A MASTER_ADDR taken from the first node's name must resolve.
    assert socket.gethostbyname(sorted(nodes)[0]) == "127.0.0.1"


@pytest.mark.slurm
def test_sacct_lists_a_finished_job(slurm_cluster) -> None:
    job_id = _slurm("srun", "--nodes=1", "--time=1", "sh", "-c", "echo $SLURM_JOB_ID").stdout.strip()
    assert job_id.isdigit(), job_id
    assert _poll(f"job {job_id} COMPLETED in sacct", lambda: _sacct_state(job_id) == "COMPLETED", timeout=20)


@pytest.mark.slurm
def test_gpu_partition_hands_out_fake_gpus(slurm_cluster) -> None:
    per_task = _slurm(
        "srun", "--partition=gpu", "--nodes=1", "--ntasks=2", "--gpus-per-node=2", "--gpus-per-task=1", "--time=1",
        "sh", "-c", "echo $SLURM_PROCID $CUDA_VISIBLE_DEVICES",
    ).stdout.split("\n")
    devices = sorted(line.split()[1] for line in per_task if line.strip())
    assert devices == ["0", "1"], per_task
    per_node = _slurm(
        "srun", "--partition=gpu", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=2", "--time=1",
        "sh", "-c", "echo $SLURMD_NODENAME $CUDA_VISIBLE_DEVICES",
    ).stdout.split()
    assert sorted(per_node) == sorted(["g1", "0,1", "g2", "0,1"])
    # GPUs on the CPU partition: refused at once, not queued forever.
    refused = _slurm("srun", "--partition=cpu", "--gpus-per-node=1", "--time=1", "true", check=False)
    assert refused.returncode != 0 and "not available" in refused.stderr


# Open MPI through ctypes: a real MPI_Init/Allreduce without needing a C compiler.
MPI_PROBE = r"""
import ctypes, json, os
lib = ctypes.CDLL("libmpi.so.40", mode=ctypes.RTLD_GLOBAL)
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
def handle(symbol):  # MPI_COMM_WORLD etc. are addresses of globals in Open MPI
    return ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, symbol)))
def getenv(key):  # MPI_Init may set variables after Python copied the environment
    return (libc.getenv(key.encode()) or b"").decode()
assert lib.MPI_Init(None, None) == 0
world = handle("ompi_mpi_comm_world")
rank, size, total = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
lib.MPI_Comm_rank(world, ctypes.byref(rank))
lib.MPI_Comm_size(world, ctypes.byref(size))
mine = ctypes.c_int(rank.value + 1)
assert lib.MPI_Allreduce(ctypes.byref(mine), ctypes.byref(total), 1, handle("ompi_mpi_int"),
                         handle("ompi_mpi_op_sum"), world) == 0
row = json.dumps({"node": os.environ["SLURMD_NODENAME"], "rank": rank.value, "size": size.value,
                  "sum": total.value, "pmix_rank": getenv("PMIX_RANK"),
                  "ompi_rank": getenv("OMPI_COMM_WORLD_RANK")})
# One write per line: print() writes the text and its newline separately, and mpirun's output forwarding
# interleaved two ranks' lines between those writes (CI saw '{...rank 0...}{...rank 1...}').
os.write(1, (row + "\n").encode())
lib.MPI_Finalize()
"""


def _check_mpi_output(text: str) -> list[dict]:
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(rows) == 4, text
    assert sorted(r["rank"] for r in rows) == [0, 1, 2, 3]
    assert {r["size"] for r in rows} == {4}
    assert {r["sum"] for r in rows} == {1 + 2 + 3 + 4}, "allreduce across fake nodes"
    assert len({r["node"] for r in rows}) == 2
    return rows


@pytest.mark.slurm
def test_srun_pmix_runs_real_mpi_across_two_nodes(slurm_cluster, tmp_path: Path) -> None:
    probe = tmp_path / "mpi_probe.py"
    probe.write_text(MPI_PROBE)
    out = _slurm(
        "srun", "--mpi=pmix", "--nodes=2", "--ntasks-per-node=2", "--time=1", sys.executable, str(probe), timeout=90
    ).stdout
    rows = _check_mpi_output(out)
    # srun's pmix plugin sets PMIX_RANK; OMPI_COMM_WORLD_RANK exists only under mpirun (next test).
    assert sorted(r["pmix_rank"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["pmix_rank"] == str(r["rank"]) for r in rows)


@pytest.mark.slurm
def test_mpirun_inside_a_batch_job(slurm_cluster, tmp_path: Path) -> None:
    probe = tmp_path / "mpi_probe.py"
    probe.write_text(MPI_PROBE)
    script = tmp_path / "mpirun.sh"
    script.write_text(f"#!/bin/sh\nmpirun --allow-run-as-root {sys.executable} {probe}\n")
    out = tmp_path / "out.txt"
    _sbatch_wait(script, "--nodes=2", "--ntasks-per-node=2", "--time=1", f"--output={out}")
    rows = _check_mpi_output(out.read_text())
    assert sorted(r["ompi_rank"] for r in rows) == ["0", "1", "2", "3"]


@pytest.mark.slurm
def test_signal_reaches_the_batch_script(slurm_cluster, tmp_path: Path) -> None:
    script = tmp_path / "trap.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"trap 'echo USR1 > {tmp_path}/signal.txt; exit 0' USR1\n"
        f"touch {tmp_path}/started\n"
        "for i in $(seq 600); do sleep 0.1; done\n"
    )
    job_id = _slurm("sbatch", "--parsable", "--time=2", f"--output={tmp_path}/out.txt", str(script)).stdout.strip()
    _poll("the job to start", (tmp_path / "started").exists)
    _slurm("scancel", "--signal=USR1", "--batch", job_id)
    _poll("the trap to run", (tmp_path / "signal.txt").exists, timeout=15)
    assert _poll("COMPLETED in sacct", lambda: _sacct_state(job_id) == "COMPLETED", timeout=20)


@pytest.mark.slurm
def test_requeued_job_runs_again_within_seconds(slurm_cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "${{SLURM_RESTART_COUNT:-0}}" >> {runs}\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi\n'
    )
    job_id = _slurm(
        "sbatch", "--parsable", "--requeue", "--time=3", f"--output={tmp_path}/out.txt", str(script)
    ).stdout.strip()
    _poll("the first run", lambda: runs.exists() and runs.read_text().split() == ["0"])
    t0 = time.monotonic()
    _slurm("scontrol", "requeue", job_id)
    # cred_expire=5 keeps the requeue hold short (121 s with Slurm's default).
    _poll("the second run", lambda: runs.read_text().split() == ["0", "1"], timeout=45)
    assert time.monotonic() - t0 < 45
    assert _poll("COMPLETED in sacct", lambda: _sacct_state(job_id) == "COMPLETED", timeout=20)


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_in_minutes_ends_the_job(slurm_cluster, tmp_path: Path) -> None:
    script = tmp_path / "forever.sh"
    script.write_text("#!/bin/sh\nsleep 600\n")
    t0 = time.monotonic()
    job_id = _slurm("sbatch", "--parsable", "--time=1", f"--output={tmp_path}/out.txt", str(script)).stdout.strip()
    assert _poll("TIMEOUT in sacct", lambda: _sacct_state(job_id) == "TIMEOUT", timeout=150, every=1)
    assert 55 < time.monotonic() - t0 < 150


@pytest.mark.slurm
def test_up_twice_is_idempotent(slurm_cluster) -> None:
    before = localcluster.status()["daemons"]
    t0 = time.monotonic()
    info = localcluster.up()
    assert not info.started
    assert time.monotonic() - t0 < 5
    assert localcluster.status()["daemons"] == before


@pytest.mark.slurm
def test_cli_status_and_up(slurm_cluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster_cmd.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "cluster: up" in out and re.search(r"^c1\s+1\s+cpu\*\s+\w+", out, re.M), out
    assert cluster_cmd.main(["up"]) == 0
    assert capsys.readouterr().out.strip() == f"export SLURM_CONF={slurm_cluster.slurm_conf}"
