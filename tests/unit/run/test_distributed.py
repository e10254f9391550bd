"""vit_dt.run.distributed's object collectives: gather_to_all_ranks and gather_to_rank0, alone and over a real gloo
group."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from vit_dt.run.distributed import free_port, gather_to_all_ranks, gather_to_rank0


def test_gathers_without_process_group_are_this_rank_only():
    summary = {"fwd": 1.0, "samples": 3}
    assert gather_to_rank0(summary) == [summary]
    assert gather_to_all_ranks(summary) == [summary]


GATHER_WORKER = textwrap.dedent('''
    import json, sys
    import torch.distributed as dist
    from vit_dt.run.distributed import gather_to_all_ranks, gather_to_rank0
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gathered = gather_to_rank0({"fwd": 10.0 * (rank + 1), "samples": rank})
    everywhere = gather_to_all_ranks(rank * 2)
    assert everywhere == [0, 2, 4], everywhere
    if rank == 0:
        json.dump(gathered, open(sys.argv[1], "w"))
    else:
        assert gathered is None, gathered
    dist.destroy_process_group()
''')


def test_gathers_over_a_real_gloo_group(tmp_path):
    script, out = tmp_path / "gather.py", tmp_path / "gathered.json"
    script.write_text(GATHER_WORKER)
    port = free_port()
    from tests.helpers import REPO as repo
    procs = [subprocess.Popen([sys.executable, str(script), str(out)],
                              env=os.environ | {"RANK": str(r), "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                                                "MASTER_PORT": str(port), "PYTHONPATH": str(repo)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(3)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert json.loads(out.read_text()) == [{"fwd": 10.0, "samples": 0}, {"fwd": 20.0, "samples": 1},
                                           {"fwd": 30.0, "samples": 2}]


SILENT_PEER_WORKER = textwrap.dedent('''
    import os, sys, time
    import torch, torch.distributed as dist
    from vit_dt.run import distributed
    env = distributed.discover()
    distributed.init_process_group(env, timeout_s=3)
    group = dist.new_group([0, 1])        # as DeepSpeed makes its groups: no timeout of its own
    if env.rank == 1:
        time.sleep(40)                    # a stopped rank: alive, never answering
        sys.exit(0)
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1), group=group)
    except Exception as exc:
        print(f"bounded after {time.monotonic() - started:.1f} s: {type(exc).__name__}", flush=True)
        os._exit(3)   # gloo's threads, left mid-collective, sometimes abort at interpreter teardown (SIGABRT)
''')


def test_a_group_made_later_without_a_timeout_is_bounded_by_the_run_s(tmp_path):
    """DeepSpeed's own groups took torch's 30-minute default: a stopped rank held a job for 22 minutes. Rank 0's
    all-reduce on such a group must give up after the run's bound (3 s here), not wait for the silent rank."""
    from tests.helpers import REPO

    script = tmp_path / "silent.py"
    script.write_text(SILENT_PEER_WORKER)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script)],
                              env=os.environ | {"RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                                "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        out, _ = procs[0].communicate(timeout=30)
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 3, out
    seconds = float(out.split("bounded after ")[1].split(" s")[0])
    assert 2.5 <= seconds < 15, out


def test_rendezvous_ports_differ_by_job_and_by_cluster():
    """Consecutive jobs of a cluster get consecutive ports; job 11 of two clusters on one machine does not share
    one (the test suite's local cluster beside another one collided on 20011)."""
    from vit_dt.run.distributed import PORT_BASE, PORT_SPAN, port_for_job

    suite = {"SLURM_CLUSTER_NAME": "vitdt", "SLURM_CONF": "/tmp/vit-dt-cluster/etc/slurm.conf"}
    other = {"SLURM_CLUSTER_NAME": "vitdt", "SLURM_CONF": "/tmp/vit-dt-cluster-2/etc/slurm.conf"}
    assert port_for_job("12", suite) - port_for_job("11", suite) in (1, 1 - PORT_SPAN)
    assert port_for_job("11", suite) != port_for_job("11", other)
    assert port_for_job("11_3", suite) == port_for_job("113", suite)       # an array task's id, digits only
    assert all(PORT_BASE <= port_for_job(str(j), suite) < PORT_BASE + PORT_SPAN for j in (0, 19999, 20000, 10**9))


# ---------------------------------------------------------------- OpenMP threads wait passively on CPU nodes

def test_quiet_openmp_sets_passive_waits_unless_the_user_chose_or_a_gpu_is_there() -> None:
    from vit_dt.run.distributed import QUIET_OPENMP, quiet_openmp

    env: dict = {}
    assert quiet_openmp(env, gpu=False) == QUIET_OPENMP and env == QUIET_OPENMP
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert quiet_openmp(env, gpu=False) == {"KMP_BLOCKTIME": "0"} and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    assert quiet_openmp(env, gpu=True) == {} and env == {}


def test_a_rank_process_sets_passive_waits_before_torch_is_loaded() -> None:
    """The Slurm task imports vit_dt.run.rank first: the setting must be in place before torch (and its OpenMP
    runtime, which reads it once) is loaded. Under load, 3000 small 2-thread steps took 42-68 s with spinning
    waits against 1.2 s with passive ones on this 2-core machine."""
    code = ("import os, sys; import vit_dt.run.rank; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    from vit_dt.run.distributed import gpu_device_files

    assert out.split() == ([str(None) if gpu_device_files() else "PASSIVE", "False"])
