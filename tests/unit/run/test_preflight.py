"""`vit-dt preflight`: real short jobs on the local Slurm cluster (and locally for cluster=local) that report
hosts, devices, rendezvous, all-reduce bus bandwidth, dataset and W&B mode as a verdict table."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vit_dt.data.verify import verify_dataset
from vit_dt.run.preflight import FAIL, PASS, SKIP, bandwidth_check, device_check


def run_preflight(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "preflight", *args, "--json"], capture_output=True,
                          text=True, timeout=timeout)
    try:
        return proc, json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc, None


def verdicts(shape: dict) -> dict[str, str]:
    return {row["check"]: row["verdict"] for row in shape["checks"]}


def detail(shape: dict, check: str) -> str:
    return next(row["detail"] for row in shape["checks"] if row["check"] == check)


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_two_node_shape_passes_with_a_bandwidth_figure(slurm_cluster, tmp_path):
    proc, report = run_preflight("cluster=localslurm", "resources.nodes=2", "--dir", str(tmp_path / "pf"))
    assert proc.returncode == 0 and report, proc.stdout + proc.stderr
    assert report["verdict"] == PASS
    (shape,) = report["shapes"]
    assert shape["shape"]["nodes"] == 2 and shape["job_id"]
    assert verdicts(shape) == {"job": PASS, "tasks": PASS, "network": PASS, "rendezvous": PASS, "device": PASS,
                               "allreduce": PASS, "dataset": PASS, "wandb": PASS}, shape["checks"]
    assert " via lo (127.0.0.1)" in detail(shape, "network")       # the local cluster's nodes share loopback
    assert "2 node(s)" in detail(shape, "tasks")
    # nccl-tests' definitions: algbw = bytes / time, busbw = algbw * 2(n-1)/n
    rows = shape["allreduce"]
    assert len(rows) >= 3 and all(r["busbw_GBps"] > 0 for r in rows)
    for row in rows:
        assert row["algbw_GBps"] == pytest.approx(row["bytes"] / (row["time_us"] * 1e-6) / 1e9, rel=1e-6)
        assert row["busbw_GBps"] == pytest.approx(row["algbw_GBps"] * 2 * (2 - 1) / 2, rel=1e-9)
    best = max(r["busbw_GBps"] for r in rows)
    assert f"busbw {best:.3g} GB/s" in detail(shape, "allreduce")
    # every task reported from its own node, through the same launch path a sweep uses
    ranks = [json.loads(p.read_text())["identity"] for p in sorted((tmp_path / "pf" / "shape-0").glob("rank*.json"))]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and len({r["node"] for r in ranks}) == 2
    assert (tmp_path / "pf" / "slurm" / f"{shape['job_id']}_submission.sh").is_file()


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_bad_dataset_root_fails_naming_the_path(slurm_cluster, tmp_path):
    proc, report = run_preflight("cluster=localslurm", "resources.nodes=2", "dataset=cifar10",
                                 "dataset.root=/nonexistent", "--dir", str(tmp_path / "pf"))
    assert proc.returncode == 1 and report, proc.stdout + proc.stderr
    assert report["verdict"] == FAIL
    (shape,) = report["shapes"]
    checks = verdicts(shape)
    assert checks["dataset"] == FAIL and "/nonexistent/cifar-10-batches-py" in detail(shape, "dataset")
    assert "ranks 0, 1" in detail(shape, "dataset")  # checked on each node, reported once
    assert {checks[c] for c in ("job", "tasks", "rendezvous", "allreduce")} == {PASS}


@pytest.mark.timeout(600)
def test_runs_locally_for_cluster_local_and_prints_the_table(tmp_path):
    from tests.fixtures.datasets import write_cifar10

    write_cifar10(tmp_path / "data")
    proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "preflight", "cluster=local",
                           "resources.gpus_per_node=2", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
                           "wandb.mode=offline", "--dir", str(tmp_path / "pf")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for check in ("job", "tasks", "network", "rendezvous", "device", "allreduce", "dataset", "wandb"):
        assert any(line.split()[:2] == [check, PASS] for line in lines), (check, proc.stdout)
    assert "verdict: PASS" in proc.stdout and "cifar10: " in proc.stdout and "busbw" in proc.stdout
    assert (tmp_path / "pf" / "local").is_dir() and not (tmp_path / "pf" / "slurm").exists()


def test_bad_request_submits_nothing(tmp_path, capsys):
    from vit_dt.commands import preflight

    code = preflight.main(["cluster=localslurm", "resources.nodes=1,9", "--dir", str(tmp_path / "pf")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was submitted" in err and "9 nodes requested" in err
    assert "resources.nodes=1]" not in err  # the valid combination is not blamed
    assert not (tmp_path / "pf").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_time_min_below_one_is_refused_as_such(tmp_path, capsys, value):
    from vit_dt.commands import preflight

    assert preflight.main(["cluster=vaughan", "--time-min", value, "--dir", str(tmp_path / "pf")]) == 2
    err = capsys.readouterr().err
    assert f"--time-min {value} is invalid: it must be an integer >= 1" in err and "resources.time_min" not in err
    assert not (tmp_path / "pf").exists()


def test_a_time_min_within_the_requeue_warning_names_the_option(tmp_path, capsys):
    """--time-min caps the job's limit: when that cap is too short, the message blames --time-min, not
    resources.time_min (which the user did not set); options may come before or after the overrides."""
    from vit_dt.commands import preflight

    assert preflight.main(["--time-min", "1", "cluster=vaughan", "--dir", str(tmp_path / "pf")]) == 2
    err = capsys.readouterr().err
    assert "--time-min 1 is not longer than cluster.signal_delay_s=120 s" in err and "--time-min 3 or more" in err
    assert "resources.time_min" not in err and not (tmp_path / "pf").exists()
    # resources.time_min shorter than --time-min is the request's own: that one is named.
    assert preflight.main(["cluster=vaughan", "resources.time_min=1", "--dir", str(tmp_path / "pf")]) == 2
    assert "raise resources.time_min above 2 min" in capsys.readouterr().err


def test_comma_lists_expand_to_combinations():
    from vit_dt.commands.preflight import expand_overrides

    combos = expand_overrides(["cluster=localslurm", "resources.nodes=1,2", "dataset=digits,synthetic"])
    assert len(combos) == 4 and ["cluster=localslurm", "resources.nodes=2", "dataset=synthetic"] in combos


def test_device_check_needs_a_gpu_of_its_own_per_task():
    def ident(rank, node, visible, seen=1, device="cuda:0", uuid=None):
        return {"rank": rank, "node": node, "cuda_visible_devices": visible, "cuda_devices_seen": seen,
                "device": device, "device_name": "GPU", "device_uuid": uuid, "cpus": 4}

    good = [ident(0, "g1", "0", uuid="GPU-a"), ident(1, "g1", "1", uuid="GPU-b"), ident(2, "g2", "0", uuid="GPU-c")]
    assert device_check(good, gpus_per_node=2).verdict == PASS
    shared = [ident(0, "g1", "0", uuid="GPU-a"), ident(1, "g1", "0", uuid="GPU-a")]
    check = device_check(shared, gpus_per_node=2)
    assert check.verdict == FAIL and "ranks 0 and 1 on g1 share one GPU" in check.detail
    no_runtime = device_check([ident(0, "g1", "0", seen=0, device="cpu")], gpus_per_node=1)
    assert no_runtime.verdict == FAIL and "torch sees no CUDA device" in no_runtime.detail
    assert device_check([ident(0, "g1", None, seen=0, device="cpu")], 1).verdict == FAIL
    assert device_check([{"rank": 0, "node": "c1", "device": "cpu", "cpus": 2}], gpus_per_node=0).verdict == PASS


def test_one_rank_has_nothing_to_all_reduce():
    assert bandwidth_check([], world_size=1, backend="gloo").verdict == SKIP
    assert bandwidth_check([], world_size=2, backend="gloo").verdict == FAIL


def test_dataset_verification_names_the_bad_file(tmp_path):
    from tests.fixtures.datasets import write_cifar10, write_imagefolder
    from vit_dt.data.errors import DatasetError

    assert "no files" in verify_dataset({"name": "digits"})
    write_cifar10(tmp_path / "c")
    assert verify_dataset({"name": "cifar10", "root": str(tmp_path / "c")}).startswith("cifar10: ")
    batch = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DatasetError, match="test_batch"):
        verify_dataset({"name": "cifar10", "root": str(tmp_path / "c")})

    write_imagefolder(tmp_path / "i")
    cfg = {"name": "imagenet100", "root": str(tmp_path / "i"), "num_classes": 3}
    assert "3 classes" in verify_dataset(cfg)
    broken = tmp_path / "i" / "train" / "dog" / "dog_0.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="dog_0.JPEG"):
        verify_dataset(cfg)
    with pytest.raises(ValueError, match="needs dataset.root"):
        verify_dataset({"name": "cifar100", "root": None})


def test_interface_settings_follow_nccl_and_gloo_matching_rules():
    from vit_dt.run.netcheck import ifname_problems, nccl_matches

    names = ["docker0", "eth0", "ib0", "lo"]
    assert nccl_matches("eth", names) == ["eth0"]                     # a prefix
    assert nccl_matches("=eth", names) == []                          # `=`: exact names only
    assert nccl_matches("^docker,lo", names) == ["eth0", "ib0"]       # `^`: all but these prefixes
    assert nccl_matches("ib,eth", names) == ["eth0", "ib0"]
    assert ifname_problems({"NCCL_SOCKET_IFNAME": "ib", "GLOO_SOCKET_IFNAME": "eth0"}, names) == []
    [nccl] = ifname_problems({"NCCL_SOCKET_IFNAME": "enp"}, names)
    assert "NCCL_SOCKET_IFNAME=enp matches no interface here (have: docker0, eth0, ib0, lo)" == nccl
    [gloo] = ifname_problems({"GLOO_SOCKET_IFNAME": "eth0,eth1"}, names)
    assert "no interface eth1 here" in gloo


def test_network_report_names_the_interface_that_reaches_the_master():
    """Real sockets on this machine: loopback reaches 127.0.0.1; a name that cannot resolve, or an interface
    setting this node cannot meet, fails before any rendezvous could hang on it."""
    from vit_dt.run.netcheck import network_report

    ok, detail = network_report("127.0.0.1", 29500, {})
    assert ok and detail == "127.0.0.1 (127.0.0.1) via lo (127.0.0.1)"
    ok, detail = network_report("no-such-host.invalid", 29500, {})
    assert not ok and "MASTER_ADDR no-such-host.invalid does not resolve here" in detail
    ok, detail = network_report("127.0.0.1", 29500, {"NCCL_SOCKET_IFNAME": "=nosuchif0"})
    assert not ok and detail.startswith("NCCL_SOCKET_IFNAME==nosuchif0 matches no interface") and "via lo" in detail
