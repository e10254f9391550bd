"""Mixed-GPU partitions: the Tesla profile's node -> GPU map, each rank's GPU in result.json, and the report naming
the slow rank of a real run with one rank slowed on purpose (as a weaker GPU would be)."""
from __future__ import annotations

import json
import re
import socket

import pytest
from omegaconf import OmegaConf

from tests.fixtures.plots import assert_real_png
from tests.helpers import DIGITS_FAST, read_result, run_cli, run_dir_from_output
from vit_dt.measure.hardware import (
    HardwareError,
    NodeGpuMap,
    describe_rank,
    expand_hostlist,
    node_gpu_map,
    parse_node_gpus,
    rank_table,
)
from vit_dt.paths import conf_dir

SLOW_RANK_DELAY_S = 0.3


def tesla() -> dict:
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "cluster" / "tesla.yaml"), resolve=True)


# ---------------------------------------------------------------- the profile

def test_tesla_profile_maps_each_node_to_the_papers_gpu():
    gpus = node_gpu_map(tesla())                          # the default partition
    assert gpus.mixed and gpus.models == ["GTX1070", "P4", "RTX3070"]
    assert dict(gpus.by_node) == {"ecetesla0": "GTX1070", "ecetesla1": "RTX3070", "ecetesla2": "RTX3070",
                                  "ecetesla3": "P4", "ecetesla4": "RTX3070"}
    assert gpus.lookup("ecetesla3.uwaterloo.ca") == ("P4", "profile:node")      # a fully qualified hostname
    assert gpus.lookup(None, "ecetesla0") == ("GTX1070", "profile:node")        # node unknown, host known
    assert gpus.lookup("somewhere-else") == (None, "none")


def test_group_list_form_and_single_model_partitions():
    groups = parse_node_gpus([{"nodes": "g[01-02]", "gpu_model": "A40"}, {"nodes": "g03", "gpu_model": "T4"}])
    assert dict(groups.by_node) == {"g01": "A40", "g02": "A40", "g03": "T4"}
    vaughan = OmegaConf.to_container(OmegaConf.load(conf_dir() / "cluster" / "vaughan.yaml"), resolve=True)
    t4 = node_gpu_map(vaughan, "t4v2")                     # no node_gpus: the partition's one model
    assert not t4.mixed and t4.lookup("any-node") == ("T4", "profile:partition")


@pytest.mark.parametrize("expression, hosts", [
    ("ecetesla[0-2,4]", ["ecetesla0", "ecetesla1", "ecetesla2", "ecetesla4"]),
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("a,b[1-2]", ["a", "b1", "b2"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
])
def test_slurm_hostlists_expand(expression, hosts):
    assert expand_hostlist(expression) == hosts


@pytest.mark.parametrize("spec, message", [
    ({"n[3-1]": "T4"}, "runs backwards"),
    ({"n[1-2": "T4"}, "unbalanced '['"),
    ({"n[a-b]": "T4"}, "not a number or a range"),
    ({"n[1-2]": "T4", "n2": "A40"}, "host 'n2' is given two GPU models, 'T4' and 'A40'"),
    ({"n1": ""}, "must be a non-empty string"),
    ([{"nodes": "n1"}], "exactly the keys nodes, gpu_model"),
    ("n1: T4", "must map host lists to GPU models"),
])
def test_bad_node_gpus_name_the_bad_entry(spec, message):
    with pytest.raises(HardwareError, match=re.escape(message)):
        parse_node_gpus(spec)


def test_more_hosts_than_the_partition_has_is_an_error():
    profile = tesla()
    profile["partitions"]["tesla"]["nodes"] = 3
    with pytest.raises(HardwareError, match="lists 5 hosts but the partition has nodes=3"):
        node_gpu_map(profile)
    with pytest.raises(HardwareError, match="unknown partition 'gpu'.*valid partitions: tesla"):
        node_gpu_map(profile, "gpu")


def test_rank_table_prefers_the_device_then_the_node_then_the_partition():
    gpus = NodeGpuMap({"ecetesla0": "GTX1070"}, default="RTX3070")
    seen = [{"host": "ecetesla0", "node": "ecetesla0", "device": "cuda", "gpu_name": "NVIDIA A40"},
            {"host": "ecetesla0", "node": "ecetesla0", "device": "cuda", "gpu_name": "NVIDIA GeForce GTX 1070"},
            {"host": "ecetesla4", "node": "ecetesla4", "device": "cuda", "gpu_name": None}]
    rows = rank_table(seen, gpus)
    assert [(r["rank"], r["gpu_model"], r["gpu_model_source"]) for r in rows] == [
        (0, "A40", "device"),                  # a GPU vit-dt knows by name wins over any declaration
        (1, "GTX1070", "profile:node"),        # one it does not know: the profile's word for that node
        (2, "RTX3070", "profile:partition")]
    assert describe_rank(rows[1]) == "rank 1 on ecetesla0, GTX1070"


# ---------------------------------------------------------------- a real run, one rank slowed

@pytest.fixture(scope="module")
def slowed_run(tmp_path_factory):
    """2 local ranks; rank 1 sleeps in every forward (a slower GPU); this host declared a GTX 1070."""
    out = tmp_path_factory.mktemp("out")
    host = socket.gethostname()
    proc = run_cli("train", *DIGITS_FAST, "trainer.nproc=2", "trainer.epochs=1", "trainer.max_steps_per_epoch=8",
                   "trainer.timer_warmup_steps=1", "trainer.timer_sample_every=2",
                   "debug=slow_rank", f"debug.delay_s={{1: {SLOW_RANK_DELAY_S}}}",
                   f'++cluster.partitions.local.node_gpus=[{{nodes: "{host}", gpu_model: GTX1070}}]',
                   f"out_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return out, run_dir, read_result(run_dir), host


@pytest.mark.slow
def test_result_records_each_ranks_host_and_gpu(slowed_run):
    _, _, result, host = slowed_run
    assert [(r["rank"], r["host"], r["device"], r["gpu_model"], r["gpu_model_source"]) for r in result["ranks"]] == [
        (0, host, "cpu", "GTX1070", "profile:node"), (1, host, "cpu", "GTX1070", "profile:node")]
    assert result["straggler"]["flagged"] and result["straggler"]["slow_rank"] == 1, result["straggler"]


@pytest.mark.slow
def test_report_names_the_slowed_rank_its_host_and_gpu(slowed_run, tmp_path):
    from vit_dt.commands import report as report_cmd

    out, _, result, host = slowed_run
    assert report_cmd.main([str(out / "results.jsonl"), "--out", str(tmp_path / "report")]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    [run] = data["per_rank"]
    assert (run["slowest_rank"], run["slowest_host"], run["slowest_gpu"], run["flagged"]) == (1, host, "GTX1070", True)
    slow, fast = run["ranks"][1], run["ranks"][0]
    # the slow rank computes ~delay longer; the fast one waits that long in the all-reduce
    assert slow["compute_ms"] - fast["compute_ms"] > 0.6 * SLOW_RANK_DELAY_S * 1e3
    assert fast["allreduce_ms"] - slow["allreduce_ms"] > 0.6 * SLOW_RANK_DELAY_S * 1e3
    sentence = f"rank 1 on {host}, GTX1070 computes"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert sentence in markdown and sentence in (tmp_path / "report" / "report.html").read_text()
    assert "Per-rank step time" in markdown and "per_rank" in data["plots"]
    assert_real_png(tmp_path / "report" / data["plots"]["per_rank"])


# ---------------------------------------------------------------- on the local Slurm cluster: two nodes, two GPUs

LOCAL_NODE_GPUS = "++cluster.partitions.cpu.node_gpus={c1: RTX3070, c2: GTX1070, c3: RTX3070, c4: GTX1070}"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_node_job_records_each_nodes_gpu_and_the_report_names_the_slow_one(slurm_cluster, tmp_path):
    from tests.fixtures.sweeps import run_sweep_cli, wait_until_done
    from vit_dt.analysis.report import build_report

    sweep = tmp_path / "sweep"
    submitted = run_sweep_cli(sweep, "cluster=localslurm", "resources.nodes=2", "resources.gpus_per_node=1",
                              *DIGITS_FAST, "trainer.epochs=1", "trainer.max_steps_per_epoch=8",
                              "trainer.timer_warmup_steps=1", "trainer.timer_sample_every=2",
                              "debug=slow_rank", f"debug.delay_s={{1: {SLOW_RANK_DELAY_S}}}",
                              LOCAL_NODE_GPUS)
    assert submitted.proc.returncode == 0, submitted.proc.stderr[-3000:]
    [row] = wait_until_done(sweep)
    assert (row.state, row.result) == ("completed", "completed"), row
    result = read_result(sweep / "points" / "0")
    ranks = result["ranks"]
    declared = {"c1": "RTX3070", "c2": "GTX1070", "c3": "RTX3070", "c4": "GTX1070"}
    assert len({r["node"] for r in ranks}) == 2                       # one rank per Slurm node
    assert all(r["gpu_model"] == declared[r["node"]] and r["gpu_model_source"] == "profile:node" for r in ranks)
    report = build_report([sweep], out_dir=tmp_path / "report")
    [run] = report.data["per_rank"]
    assert (run["slowest_rank"], run["slowest_host"], run["slowest_gpu"]) == (1, ranks[1]["node"],
                                                                                ranks[1]["gpu_model"])
    assert f"rank 1 on {ranks[1]['node']} ({ranks[1]['host']}), {ranks[1]['gpu_model']}" in report.markdown.read_text()


def test_report_names_the_slow_gpu_from_records(tmp_path):
    """Sample records (no training): a 4-rank run on the Tesla nodes where the GTX 1070 rank computes longest."""
    from tests.fixtures.sample_records import make_record, write_store
    from vit_dt.analysis.report import build_report

    parts = {"fwd": 300.0, "bwd_inner": 600.0, "bwd_allreduce": 50.0, "step": 40.0}
    record = make_record(world_size=4, nodes=4, layout="inter", epoch_time_s=100.0, micro_batch=16,
                         step_parts_ms=parts, point=0)
    nodes = ["ecetesla1", "ecetesla0", "ecetesla2", "ecetesla4"]
    gpus = node_gpu_map(tesla())
    record["ranks"] = rank_table([{"host": n, "node": n, "device": "cuda", "gpu_name": None} for n in nodes], gpus)
    slow = record["breakdown_ms"]["per_rank"][1]
    slow.update(fwd=900.0, bwd_inner=1800.0, bwd_allreduce=5.0)
    slow["compute"] = slow["fwd"] + slow["bwd_inner"] + slow["step"]
    for rank, row in enumerate(record["breakdown_ms"]["per_rank"]):
        if rank != 1:
            row["bwd_allreduce"] = 1850.0              # waiting for rank 1
    record["straggler"] = {"flagged": True, "slow_rank": 1, "skew": 1.7, "threshold": 0.2}
    write_store(tmp_path, [record])
    result = build_report([tmp_path])
    [run] = result.data["per_rank"]
    assert (run["slowest_rank"], run["slowest_host"], run["slowest_gpu"]) == (1, "ecetesla0", "GTX1070")
    assert run["gpu_mix"] == {"GTX1070": 1, "RTX3070": 3} and run["mixed_gpus"]
    page = result.html.read_text()
    assert "rank 1 on ecetesla0, GTX1070 computes" in page and "Mixed GPUs in point 0" in page
    assert_real_png(result.plots["per_rank"])
