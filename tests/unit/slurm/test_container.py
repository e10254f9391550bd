"""A profile's `container:` block (vit_dt/slurm/container.py): parsed strictly, refused before queueing with the field
and the valid values named, and rendered into each runtime's launch (the scripts themselves are golden files in
test_render_golden.py)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from vit_dt.config.choices import CONTAINER_RUNTIMES
from vit_dt.config.compose import compose, to_container
from vit_dt.paths import conf_dir
from vit_dt.slurm.container import NO_CONTAINER, Container, binds
from vit_dt.slurm.executor import job_spec
from vit_dt.slurm.profile import ClusterProfile, ProfileError
from vit_dt.slurm.render import render_sbatch
from vit_dt.slurm.shape import resolve_shape, validate_request


def profile_with(container: dict | None = None, partition: dict | None = None, **top) -> ClusterProfile:
    data = OmegaConf.to_container(OmegaConf.load(conf_dir() / "cluster" / "vaughan.yaml"), resolve=True)
    data.update(top)
    if container is not None:
        data["container"] = container
    if partition is not None:
        data["partitions"]["a40"]["container"] = partition
    return ClusterProfile.from_config(data)


def composed(*overrides: str):
    cfg = to_container(compose(["cluster=localslurm", *overrides]))
    profile = ClusterProfile.from_config(cfg["cluster"])
    return cfg, profile, resolve_shape(cfg, profile)


def test_no_container_block_is_no_container():
    assert profile_with().partitions["t4v2"].container == NO_CONTAINER
    _, profile, _ = composed()
    assert profile.container == NO_CONTAINER and not profile.container.active


def test_a_misspelt_runtime_names_the_field_and_the_valid_ones():
    with pytest.raises(ProfileError) as err:
        profile_with({"runtime": "apptainr", "image": "/i.sif"})
    assert "cluster.container.runtime='apptainr'" in str(err.value)
    assert ", ".join(CONTAINER_RUNTIMES) in str(err.value)


def test_a_misspelt_key_names_the_valid_keys():
    with pytest.raises(ProfileError, match=r"cluster\.container\.mounts.*valid keys: runtime, image, python, binds"):
        profile_with({"runtime": "apptainer", "image": "/i.sif", "mounts": ["/d"]})
    with pytest.raises(Exception, match="mounts"):    # on the command line the schema refuses it first
        compose(["cluster=localslurm", "cluster.container.mounts=[/d]"])


@pytest.mark.parametrize("container, message", [
    ({"runtime": "pyxis"}, r"cluster\.container\.image is missing: cluster\.container\.runtime=pyxis needs an image"),
    ({"image": "/i.sif"}, r"cluster\.container\.image is set but cluster\.container\.runtime=none"),
    ({"runtime": "apptainer", "image": "images/i.sif"}, r"container\.image='images/i\.sif' must be an absolute"),
    ({"runtime": "apptainer", "image": "/i.sif", "binds": ["data"]}, r"cluster\.container\.binds: 'data' is not SRC"),
    ({"runtime": "apptainer", "image": "/i.sif", "env": ["WANDB-KEY"]}, r"cluster\.container\.env: 'WANDB-KEY'"),
    ({"runtime": "apptainer", "image": "/i.sif", "flags": ["--cleanenv"]}, r"would clear the task's environment"),
    ({"runtime": "singularity", "image": "/i.sif", "flags": ["--bind=/x"]}, r"'--bind=/x' is written by vit-dt"),
    ({"runtime": "pyxis", "image": "nvcr.io#x", "flags": ["--container-image=y"]}, r"is written by vit-dt itself"),
    ({"runtime": "charliecloud", "image": "/img", "flags": ["--unset-env=SLURM_*"]}, r"unsets SLURM_PROCID"),
])
def test_bad_container_blocks_are_refused(container, message):
    with pytest.raises(ProfileError, match=message):
        profile_with(container)


def test_mpirun_cannot_start_ranks_in_pyxis():
    with pytest.raises(ProfileError, match=r"cluster\.launcher=mpirun cannot start ranks in a pyxis container.*"
                                           r"valid launchers with pyxis: srun, srun_mpi"):
        profile_with({"runtime": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3"}, launcher="mpirun")
    with pytest.raises(ProfileError, match=r"cluster\.partitions\.a40\.container\.runtime=pyxis"):
        profile_with(partition={"runtime": "pyxis", "image": "nvcr.io#x"}, launcher="mpirun")
    for runtime, image in (("apptainer", "/i.sif"), ("singularity", "/i.sif"), ("charliecloud", "/img")):
        profile_with({"runtime": runtime, "image": image}, launcher="mpirun")   # mpirun starts the runtime per rank


def test_a_container_needs_slurm():
    with pytest.raises(ProfileError, match=r"needs cluster\.scheduler=slurm"):
        ClusterProfile.from_config(to_container(compose(
            ["cluster=local", "cluster.container.runtime=apptainer", "cluster.container.image=/i.sif"]))["cluster"])


def test_a_partition_block_overrides_the_profile_one():
    base = {"runtime": "apptainer", "image": "/i.sif", "binds": ["/cache"], "flags": ["--writable-tmpfs"]}
    same = profile_with(base, partition={"image": "/a40.sif"})
    assert same.partitions["a40"].container == Container("apptainer", "/a40.sif", None, ("/cache",), (),
                                                         ("--writable-tmpfs",))
    assert same.partitions["t4v2"].container is same.container
    other = profile_with(base, partition={"runtime": "pyxis", "image": "nvcr.io#x"})
    assert other.partitions["a40"].container == Container("pyxis", "nvcr.io#x")   # another runtime inherits nothing
    off = profile_with(base, partition={"runtime": "none"})
    assert off.partitions["a40"].container == NO_CONTAINER


def test_the_image_must_exist_on_the_login_node(tmp_path):
    cfg, profile, shape = composed("cluster.container.runtime=apptainer",
                                   f"cluster.container.image={tmp_path}/gone.sif")
    with pytest.raises(ProfileError, match=r"cluster\.container\.image='.*gone\.sif' does not exist on this node"):
        validate_request(profile, shape)
    (tmp_path / "gone.sif").write_bytes(b"SIF")
    validate_request(profile, shape)
    # a registry reference is pulled on the node: nothing to check here
    _, profile, shape = composed("cluster.container.runtime=pyxis", "cluster.container.image='nvcr.io#nvidia/x:1'")
    validate_request(profile, shape)


def test_a_charliecloud_image_needs_its_mount_points(tmp_path):
    image = tmp_path / "img"
    (image / "scratch").mkdir(parents=True)
    _, profile, shape = composed("cluster.container.runtime=charliecloud", f"cluster.container.image={image}",
                                 "cluster.container.binds=[/opt/venv]")
    with pytest.raises(ProfileError, match=r"has no directories /data, /opt/venv: ch-run binds only onto"):
        validate_request(profile, shape, ("/scratch/me/sweeps/1", "/data/cifar10"))
    (image / "data").mkdir()
    (image / "opt" / "venv").mkdir(parents=True)
    validate_request(profile, shape, ("/scratch/me/sweeps/1", "/data/cifar10"))
    with pytest.raises(ProfileError, match=r"/usr/share/data lies under /usr"):
        validate_request(profile, shape, ("/scratch/me/sweeps/1", "/usr/share/data"))
    with pytest.raises(ProfileError, match=r"/scratch/a:b holds ':', which charliecloud reads as a separator"):
        validate_request(profile, shape, ("/scratch/a:b",))


def test_job_paths_are_bound_once():
    apptainer = Container("apptainer", "/i.sif", binds=("/cache", "/scratch/x"))
    assert binds(apptainer, ["/scratch/s", "/scratch/s/slurm", "/scratch/s/code", "/data/c10"]) == \
        ("/scratch/s", "/data/c10", "/cache", "/scratch/x")
    charliecloud = Container("charliecloud", "/img", binds=("/opt/venv",))
    assert binds(charliecloud, ["/scratch/s", "/scratch/s/code", "/data/c10"]) == ("/scratch", "/data", "/opt/venv")


def test_nv_only_where_the_partition_has_gpus():
    for partition, gpus in (("gpu", True), ("cpu", False)):
        _, profile, shape = composed("cluster.container.runtime=apptainer", "cluster.container.image=/i.sif",
                                     f"resources.partition={partition}")
        line = render_sbatch(job_spec(profile, shape, "/s/slurm", job_name="j", array_size=None)).splitlines()[-1]
        assert ("apptainer exec --nv --bind /s/slurm /i.sif " in line) is gpus, line
        assert ("apptainer exec --bind /s/slurm /i.sif " in line) is not gpus, line


def test_the_container_python_runs_inside(monkeypatch):
    _, profile, shape = composed("cluster.container.runtime=charliecloud", "cluster.container.image=/img",
                                 "cluster.container.python=/usr/bin/python3")
    line = render_sbatch(job_spec(profile, shape, "/s/slurm", job_name="j", array_size=None)).splitlines()[-1]
    assert line.endswith("ch-run -b /s /img -- /usr/bin/python3 -u -m submitit.core._submit /s/slurm")


def test_secret_values_never_reach_the_script(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-key-value")
    for runtime, image in (("apptainer", "/i.sif"), ("pyxis", "nvcr.io#x"), ("charliecloud", "/img")):
        _, profile, shape = composed(f"cluster.container.runtime={runtime}", f"cluster.container.image='{image}'",
                                     "cluster.container.env=[WANDB_API_KEY]", "++cluster.env.WANDB_API_KEY=s3cr3t")
        text = render_sbatch(job_spec(profile, shape, "/s/slurm", job_name="j", array_size=None, code_dir="/s/code"))
        assert "s3cr3t" not in text
        if runtime != "charliecloud":     # charliecloud passes the whole environment: nothing to name
            assert "WANDB_API_KEY" in text.split("# --- launch")[1]


def test_a_sweep_with_a_missing_image_queues_nothing(tmp_path, capsys):
    from vit_dt.commands import sweep

    code = sweep.main(["cluster=localslurm", "cluster.container.runtime=apptainer",
                       f"cluster.container.image={tmp_path}/vit-dt.sif", f"hydra.sweep.dir={tmp_path / 's'}",
                       "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nothing was submitted" in err and "cluster.container.image=" in err and "does not exist" in err
    assert not (tmp_path / "s" / "sweep.json").exists()
