"""The rendered sbatch scripts, pinned by golden files (VIT_DT_UPDATE_GOLDEN=1 rewrites them), and the
rules every script follows: secrets never written, one task per GPU, the launcher's own launch line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vit_dt.config.compose import compose, to_container
from vit_dt.slurm.executor import job_spec, task_command
from vit_dt.slurm.profile import ClusterProfile
from vit_dt.slurm.render import SbatchSpec, render_sbatch
from vit_dt.slurm.shape import JobShape, resolve_shape

GOLDEN = Path(__file__).parent / "golden"
FOLDER = "/scratch/me/sweeps/20250101-120000/slurm"
PYTHON = "/opt/vit-dt/.venv/bin/python"  # localslurm runs the submitting interpreter: pin it here
CODE_DIR = "/scratch/me/sweeps/20250101-120000/code"   # the sweep's code snapshot
NO_SNAPSHOT = {"nebula_dualcard_intra"}                 # a sweep submitted with --no-snapshot

CASES = {
    # name: (overrides, array size)
    "vaughan_t4v2_grid_array": (["cluster=vaughan", "resources.nodes=2", "resources.gpus_per_node=8"], 3),
    "vaughan_a40_intra_mpirun": (["cluster=vaughan", "cluster.launcher=mpirun", "resources.partition=a40",
                                  "resources.layout=intra", "resources.gpus=4", "resources.time_min=240"], None),
    "nebula_dualcard_intra": (["cluster=nebula", "resources.layout=intra", "resources.gpus=2"], None),
    "nebula_midcard_srun_mpi_array": (["cluster=nebula", "cluster.launcher=srun_mpi", "resources.partition=midcard",
                                       "resources.time_min=1440"], 2),
    "localslurm_cpu_inter_array": (["cluster=localslurm", "resources.layout=inter", "resources.gpus=2"], 4),
    "localslurm_gpu_intra": (["cluster=localslurm", "resources.partition=gpu", "resources.layout=intra",
                              "resources.gpus=2"], None),
    # containers (vit_dt/slurm/container.py): each rank inside the image
    "vaughan_t4v2_apptainer_array": (["cluster=vaughan", "resources.nodes=2", "resources.gpus_per_node=8",
                                      "cluster.container.runtime=apptainer",
                                      "cluster.container.image=/project/images/vit-dt.sif",
                                      "cluster.container.python=python3", "cluster.container.binds=[/project/cache]",
                                      "cluster.container.env=[WANDB_API_KEY,HF_HOME]"], 2),
    "vaughan_a40_singularity_mpirun": (["cluster=vaughan", "cluster.launcher=mpirun", "resources.partition=a40",
                                        "resources.layout=intra", "resources.gpus=4",
                                        "cluster.container.runtime=singularity",
                                        "cluster.container.image=/project/images/vit-dt.sif",
                                        "cluster.container.flags=[--writable-tmpfs]"], None),
    "nebula_dualcard_pyxis_srun_mpi": (["cluster=nebula", "cluster.launcher=srun_mpi", "resources.layout=grid",
                                        "resources.nodes=2", "resources.gpus_per_node=2",
                                        "cluster.container.runtime=pyxis",
                                        "cluster.container.image='nvcr.io#nvidia/pytorch:24.05-py3'",
                                        "cluster.container.python=python",
                                        "cluster.container.flags=[--container-writable]"], None),
    "localslurm_cpu_charliecloud_inter": (["cluster=localslurm", "resources.layout=inter", "resources.gpus=2",
                                           "cluster.container.runtime=charliecloud",
                                           "cluster.container.image=/images/vit-dt",
                                           "cluster.container.binds=[/opt/venv]"], None),
    # a partition's own block over the profile's: another runtime replaces it
    "vaughan_a40_partition_pyxis": (["cluster=vaughan", "resources.partition=a40", "resources.layout=intra",
                                     "resources.gpus=4", "cluster.container.runtime=apptainer",
                                     "cluster.container.image=/project/images/vit-dt.sif",
                                     "cluster.partitions.a40.container={runtime: pyxis, "
                                     "image: /project/images/vit-dt-a40.sqsh}"], None),
}
JOB_PATHS = ("/scratch/me/sweeps/20250101-120000", "/datasets/cifar10")   # the sweep directory, a data root


@pytest.fixture(autouse=True)
def _fixed_env(monkeypatch):
    monkeypatch.setenv("VIT_DT_SLURM_ACCOUNT", "deepscale")


def render_case(name: str) -> str:
    overrides, array = CASES[name]
    cfg = to_container(compose(overrides))
    profile = ClusterProfile.from_config(cfg["cluster"])
    shape = resolve_shape(cfg, profile)
    python = profile.python or PYTHON
    spec = job_spec(profile, shape, FOLDER, job_name=f"vitdt-{name}", array_size=array, python=python,
                    description=f"golden case {name}", code_dir=None if name in NO_SNAPSHOT else CODE_DIR,
                    job_paths=JOB_PATHS)
    return render_sbatch(spec)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = render_case(name)
    path = GOLDEN / f"{name}.sbatch"
    if os.environ.get("VIT_DT_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with VIT_DT_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name}: rendered script differs from {path} (VIT_DT_UPDATE_GOLDEN=1 updates)"


def test_snapshot_comes_first_on_the_python_path():
    """A job imports vit_dt from the sweep's snapshot: first on PYTHONPATH, and `python -m` may not put the job's
    working directory (often the checkout) before it."""
    text = render_case("localslurm_cpu_inter_array")
    assert f'export PYTHONPATH={CODE_DIR}:{CODE_DIR}/launchers"${{PYTHONPATH:+:$PYTHONPATH}}"' in text
    assert "export PYTHONSAFEPATH=1" in text
    assert text.index("PYTHONSAFEPATH") < text.index("srun --unbuffered")
    assert "PYTHONPATH" not in render_case("nebula_dualcard_intra")


def test_a_snapshot_path_of_shell_characters_stays_one_path(tmp_path):
    """The sweep directory may hold `$`, backquotes and quotes: the exported paths are the bytes, nothing runs."""
    import subprocess

    code = tmp_path / "s; $(touch PWNED1) `touch PWNED2` 'q' \"d\"" / "code"
    text = render_sbatch(spec(code_dir=str(code)))
    lines = [line for line in text.splitlines() if line.startswith("export ")]
    out = subprocess.run(["bash", "-c", "\n".join([*lines, 'echo "$PYTHONPATH"; echo "$VIT_DT_CODE_DIR"'])],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": "/x", "PATH": "/usr/bin:/bin"})
    assert out.stdout.splitlines() == [f"{code}:{code}/launchers:/x", str(code)]
    assert not list(tmp_path.glob("PWNED*"))


def test_rendering_is_pure():
    assert render_case("vaughan_t4v2_grid_array") == render_case("vaughan_t4v2_grid_array")


def spec(**kw) -> SbatchSpec:
    base = dict(job_name="j", nodes=2, ntasks_per_node=2, time_min=90, command="python -u -m x /f",
                stdout="/f/%j_%t_log.out", stderr="/f/%j_%t_log.err", partition="p")
    return SbatchSpec(**(base | kw))


def test_secrets_are_never_written():
    text = render_sbatch(spec(env=(("WANDB_API_KEY", "s3cr3t-value"), ("HF_TOKEN", "tok-123"),
                                   ("NCCL_DEBUG", "WARN"))))
    assert "s3cr3t-value" not in text and "tok-123" not in text
    assert "# WANDB_API_KEY: not written" in text and "# HF_TOKEN: not written" in text
    assert 'export NCCL_DEBUG="WARN"' in text


def test_env_values_expand_but_cannot_break_out():
    text = render_sbatch(spec(env=(("A", "$SLURM_CPUS_PER_TASK"), ("B", 'x"; rm -rf /; echo "`id`'))))
    assert 'export A="$SLURM_CPUS_PER_TASK"' in text
    assert 'export B="x\\"; rm -rf /; echo \\"\\`id\\`"' in text


def test_directives():
    text = render_sbatch(spec(time_min=1500, mem_gb=1.5, gpus_per_node=2, cpus_per_task=3, array_size=5,
                              array_parallelism=2, account="acc", qos="q", requeue=False, signal_delay_s=45,
                              stdout="/f/%A_%a_%t_log.out"))
    for line in ["--time=1-01:00:00", "--mem=1536M", "--gpus-per-node=2", "--cpus-per-task=3", "--array=0-4%2",
                 "--account=acc", "--qos=q", "--no-requeue", "--signal=USR2@45", "--output=/f/%A_%a_0_log.out",
                 "--nodes=2", "--ntasks-per-node=2"]:
        assert f"#SBATCH {line}\n" in text, line


def test_launch_lines():
    srun = render_sbatch(spec(gpus_per_node=2)).splitlines()[-1]
    assert srun.startswith("srun --unbuffered --output=/f/%j_%t_log.out") and "--gpus-per-task=1" in srun
    assert "--gpus-per-task" not in render_sbatch(spec()).splitlines()[-1]  # CPU ranks
    mpi = render_sbatch(spec(launcher="srun_mpi")).splitlines()[-1]
    assert mpi.startswith("srun --unbuffered --mpi=pmix ")
    mpirun = render_sbatch(spec(launcher="mpirun", mpirun="/usr/bin/mpirun", mpirun_args=("--bind-to", "none")))
    assert mpirun.splitlines()[-1] == ("/usr/bin/mpirun -np $SLURM_NTASKS --map-by ppr:2:node --bind-to none "
                                       "python -u -m x /f")
    assert "export SUBMITIT_EXECUTOR=slurm\n" in mpirun


def test_task_command_uses_submitit_runner_or_mpi_wrapper():
    assert task_command("py", "/f", "srun") == "py -u -m submitit.core._submit /f"
    assert task_command("py", "/f", "mpirun") == "py -u -m vit_dt.slurm.mpi_task /f"


def test_sbatch_args_cannot_repeat_own_directives():
    with pytest.raises(ValueError, match="sbatch_args.time is set from the profile"):
        spec(extra_directives=(("time", "5"),))
    text = render_sbatch(spec(extra_directives=(("constraint", "ib"), ("mail_type", "END"))))
    assert "#SBATCH --constraint=ib\n" in text and "#SBATCH --mail-type=END\n" in text


def test_bad_launcher_and_env_names_are_refused():
    with pytest.raises(ValueError, match="launcher 'local' cannot be rendered.*srun, srun_mpi, mpirun"):
        spec(launcher="local")
    with pytest.raises(ValueError, match="'BAD-NAME'"):
        spec(env=(("BAD-NAME", "1"),))


def test_executor_submits_the_same_script(tmp_path):
    """The executor's submission file is render_sbatch's text (with the array size of the batch)."""
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun") is None:
        pytest.skip("submitit's SlurmExecutor needs srun on PATH to be constructed")
    from vit_dt.slurm.executor import VitDtSlurmExecutor

    cfg = to_container(compose(["cluster=nebula"]))
    profile = ClusterProfile.from_config(cfg["cluster"])
    shape = resolve_shape(cfg, profile)
    executor = VitDtSlurmExecutor(tmp_path, profile, shape, job_name="x")
    executor._array_size = 4
    text = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    assert text == render_sbatch(job_spec(profile, shape, executor.folder, job_name="x", array_size=4))
    assert "#SBATCH --array=0-3\n" in text and f"-m submitit.core._submit {tmp_path}" in text
    with pytest.raises(TypeError, match="cluster profile"):
        executor.update_parameters(partition="x")


def test_shape_fields_reach_the_script():
    profile = ClusterProfile.from_config(to_container(compose(["cluster=vaughan"]))["cluster"])
    text = render_sbatch(job_spec(profile, JobShape(3, 4, 4, "a40", 45, 8, 100.0), FOLDER, job_name="x",
                                  array_size=None))
    for line in ["--partition=a40", "--nodes=3", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                 "--mem=100G", "--time=0:45:00", f"--output={FOLDER}/%j_0_log.out"]:
        assert f"#SBATCH {line}\n" in text, line


def test_dry_run_renders_every_shape_and_submits_nothing(tmp_path, capsys):
    """`vit-dt sweep ... --dry-run`: the Hydra launcher plugin is found, every shape's script is written."""
    from vit_dt.commands import sweep
    from vit_dt.slurm.manifest import read_manifest

    sweep_dir = tmp_path / "dry"
    code = sweep.main(["cluster=vaughan", "resources.gpus_per_node=1,2,4,8", "trainer.seed=0,1",
                       f"hydra.sweep.dir={sweep_dir}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = read_manifest(sweep_dir)
    assert manifest["dry_run"] is True and len(manifest["points"]) == 8 and len(manifest["jobs"]) == 4
    assert all(p["job_id"] is None for p in manifest["points"])
    scripts = sorted((sweep_dir / "dry-run").glob("*.sbatch"))
    assert len(scripts) == 4
    per_node = sorted(int(next(line for line in s.read_text().splitlines() if "--gpus-per-node=" in line)
                          .split("=")[1]) for s in scripts)
    assert per_node == [1, 2, 4, 8]
    assert all("#SBATCH --array=0-1\n" in s.read_text() for s in scripts)  # 2 seeds per shape
    assert all(str(s) in out for s in scripts)
    assert not (sweep_dir / "slurm").exists()


def test_sweep_refuses_unknown_options(capsys):
    from vit_dt.commands import sweep

    assert sweep.main(["--dryrun"]) == 2
    assert "--dry-run" in capsys.readouterr().err
