"""Cluster profiles parse strictly, and requests beyond a partition are refused with the limit named."""
from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from vit_dt.paths import conf_dir
from vit_dt.slurm.profile import ClusterProfile, ProfileError, RequestError
from vit_dt.slurm.shape import JobShape, validate_request

PROFILES = sorted(p.stem for p in (conf_dir() / "cluster").glob("*.yaml"))


def raw_profile(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "cluster" / f"{name}.yaml"), resolve=True)


def vaughan() -> ClusterProfile:
    return ClusterProfile.from_config(raw_profile("vaughan"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_shipped_profile_parses(name):
    profile = ClusterProfile.from_config(raw_profile(name))
    assert profile.name == name
    assert profile.default_partition in profile.partitions


def test_paper_cluster_shapes():
    v = vaughan()
    assert (v.partitions["t4v2"].gpus_per_node, v.partitions["t4v2"].gpu_model) == (8, "T4")
    assert (v.partitions["a40"].gpus_per_node, v.partitions["a40"].gpu_model) == (4, "A40")
    n = ClusterProfile.from_config(raw_profile("nebula"))
    assert n.partitions["midcard"].gpus_per_node == 1 and n.partitions["dualcard"].gpus_per_node == 2


def test_misspelt_profile_key_lists_valid_names():
    data = raw_profile("vaughan")
    data["acount"] = data.pop("account")
    with pytest.raises(ProfileError) as err:
        ClusterProfile.from_config(data)
    assert "cluster.acount" in str(err.value) and "account" in str(err.value) and "partitions" in str(err.value)


def test_misspelt_partition_key_lists_valid_names():
    data = raw_profile("vaughan")
    data["partitions"]["t4v2"]["gpu_per_node"] = 8
    with pytest.raises(ProfileError, match=r"cluster.partitions.t4v2.gpu_per_node.*gpus_per_node"):
        ClusterProfile.from_config(data)


@pytest.mark.parametrize("key, value, message", [
    ("launcher", "torchrun", "cluster.launcher='torchrun'.*srun, srun_mpi, mpirun"),
    ("scheduler", "pbs", "cluster.scheduler='pbs'.*local, slurm"),
    ("default_partition", "v100", "default_partition 'v100'.*a40, t4v2"),
])
def test_bad_profile_values(key, value, message):
    data = raw_profile("vaughan")
    data[key] = value
    with pytest.raises(ProfileError, match=message):
        ClusterProfile.from_config(data)


def test_partition_counts_must_be_integers():
    data = copy.deepcopy(raw_profile("vaughan"))
    data["partitions"]["a40"]["nodes"] = "many"
    with pytest.raises(ProfileError, match="cluster.partitions.a40.nodes must be an integer"):
        ClusterProfile.from_config(data)


@pytest.mark.parametrize("value", ["abc", -1, 0, float("inf")])
def test_partition_memory_must_be_a_positive_number(value):
    data = copy.deepcopy(raw_profile("vaughan"))
    data["partitions"]["a40"]["mem_gb"] = value
    with pytest.raises(ProfileError, match=r"cluster.partitions.a40.mem_gb must be a number > 0"):
        ClusterProfile.from_config(data)


def shape(**kw) -> JobShape:
    base = dict(nodes=1, tasks_per_node=1, gpus_per_node=1, partition="t4v2", time_min=30, cpus_per_task=4,
                mem_gb=None)
    return JobShape(**(base | kw))


def test_a_fitting_request_passes():
    validate_request(vaughan(), shape(nodes=32, tasks_per_node=8, gpus_per_node=8, time_min=960))


@pytest.mark.parametrize("kw, message", [
    (dict(partition="v100"), r"unknown partition 'v100'.*valid partitions: a40, t4v2"),
    (dict(tasks_per_node=16, gpus_per_node=16), r"16 GPUs per node requested.*'t4v2'.*has 8 GPUs per node"),
    (dict(partition="a40", tasks_per_node=8, gpus_per_node=8, cpus_per_task=1), r"'a40'.*has 4 GPUs per node"),
    (dict(nodes=55), r"55 nodes requested.*'t4v2'.*has 54 node"),
    (dict(time_min=961), r"time limit 961 min.*at most 960 min"),
    (dict(tasks_per_node=8, gpus_per_node=8, cpus_per_task=8), r"64 CPUs per node.*has 32 CPUs per node"),
])
def test_oversized_requests_name_the_limit(kw, message):
    with pytest.raises(RequestError, match=message):
        validate_request(vaughan(), shape(**kw))


def test_gpus_on_a_cpu_partition_are_refused():
    profile = ClusterProfile.from_config(raw_profile("localslurm"))
    with pytest.raises(RequestError, match=r"2 GPU\(s\) per node requested.*'cpu'.*has no GPUs"):
        validate_request(profile, shape(partition="cpu", tasks_per_node=2, gpus_per_node=2, cpus_per_task=1))
