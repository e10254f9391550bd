"""A submitit SlurmExecutor that submits OUR sbatch script (slurm_templates/), one job array per shape.

submitit keeps doing what it does well: pickling the callable next to the job, running it in every task
with `python -u -m submitit.core._submit FOLDER`, tracking states through sacct, and checkpoint/requeue on
USR2. What changes is the script: partition/account/qos/GPUs/env/setup come from the cluster profile and the
job shape, and the launch line follows the profile's launcher (srun, srun --mpi=pmix, mpirun).

Parameters come from (profile, shape), not from `update_parameters`: one executor is one shape.
"""
from __future__ import annotations

import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

from submitit.core import core, utils
from submitit.slurm.slurm import SlurmExecutor, SlurmJob

from vit_dt.slurm.profile import ClusterProfile
from vit_dt.slurm.render import SbatchSpec, build_spec, render_sbatch
from vit_dt.slurm.shape import JobShape

SUBMITIT_TASK_MODULE = "submitit.core._submit"
MPIRUN_TASK_MODULE = "vit_dt.slurm.mpi_task"


def task_command(python: str, folder: str | Path, launcher: str) -> str:
    """What each task runs: submitit's runner, through vit-dt's MPI-rank wrapper under mpirun."""
    module = MPIRUN_TASK_MODULE if launcher == "mpirun" else SUBMITIT_TASK_MODULE
    return " ".join([python, "-u", "-m", module, shlex.quote(str(folder))])


def default_python(profile: ClusterProfile, partition: str | None = None) -> str:
    """How a rank starts Python: the container's interpreter, else the profile's, else the submitting one."""
    return profile.partition(partition).container.python or profile.python or shlex.quote(sys.executable)


def job_spec(profile: ClusterProfile, shape: JobShape, folder: str | Path, *, job_name: str,
             array_size: int | None, description: str = "", python: str | None = None,
             code_dir: str | Path | None = None, job_paths: tuple[str, ...] = ()) -> SbatchSpec:
    """The script spec for one job (array) of `shape`; `folder` is submitit's folder (with %j); `code_dir`: the
    sweep's code snapshot the job imports (None: the installed code); `job_paths`: what else the job reads and
    writes (bound into a container)."""
    python = python or default_python(profile, shape.partition)
    return build_spec(profile, shape, job_name=job_name, folder=folder, array_size=array_size,
                      command=task_command(python, folder, profile.launcher), description=description,
                      code_dir=code_dir, job_paths=job_paths)


class VitDtSlurmExecutor(SlurmExecutor):
    """Submits callables as jobs of one `shape` on `profile`; several at once (`batch()`) become one array."""

    def __init__(self, folder: str | Path, profile: ClusterProfile, shape: JobShape, *, job_name: str,
                 description: str = "", max_num_timeout: int = 3, code_dir: str | Path | None = None,
                 job_paths: tuple[str, ...] = ()) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, python=default_python(profile, shape.partition))
        self.profile = profile
        self.shape = shape
        self.job_name = job_name
        self.description = description
        self.code_dir = code_dir
        self.job_paths = job_paths
        # submitit reads the time limit from here to decide, on USR2, whether a job timed out or was preempted.
        self.parameters = {"time": shape.time_min}
        self._array_size: int | None = None
        self.last_submission_file: Path | None = None
        self._throttling = 0.0  # one sbatch per executor: submitit's 0.2 s pause between submissions is moot

    def update_parameters(self, **kwargs: Any) -> None:
        raise TypeError(
            "VitDtSlurmExecutor takes its parameters from the cluster profile and the job shape; "
            f"change conf/cluster/<name>.yaml or resources.* instead of passing {sorted(kwargs)}"
        )

    def spec(self, array_size: int | None = None) -> SbatchSpec:
        return job_spec(self.profile, self.shape, self.folder, job_name=self.job_name, array_size=array_size,
                        description=self.description, python=self.python, code_dir=self.code_dir,
                        job_paths=self.job_paths)

    def render(self, array_size: int | None = None) -> str:
        return render_sbatch(self.spec(array_size))

    # --- submitit hooks ---------------------------------------------------------------------------
    @property
    def _submitit_command_str(self) -> str:
        return task_command(self.python, self.folder, self.profile.launcher)

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        spec = self.spec(self._array_size)
        if command != spec.command:
            raise RuntimeError(f"unexpected task command {command!r} (expected {spec.command!r})")
        return render_sbatch(spec)

    def _num_tasks(self) -> int:
        return self.shape.world_size

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[Any]]:
        if len(delayed_submissions) == 1:
            return core.PicklingExecutor._internal_process_submissions(self, delayed_submissions)
        # An array. submitit's own version submits through a plain SlurmExecutor copy, which would lose our
        # script; this is the same sequence with this executor rendering it.
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickle_paths = []
        for delayed in delayed_submissions:
            pickle_path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(self.shape.time_min, self.max_num_timeout)
            delayed.dump(pickle_path)
            pickle_paths.append(pickle_path)
        self._array_size = len(delayed_submissions)
        try:
            first_job = self._submit_command(self._submitit_command_str)
        finally:
            self._array_size = None
        tasks = list(range(self._num_tasks()))
        jobs: list[core.Job[Any]] = [
            SlurmJob(folder=self.folder, job_id=f"{first_job.job_id}_{index}", tasks=tasks)
            for index in range(len(delayed_submissions))
        ]
        for job, pickle_path in zip(jobs, pickle_paths):
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
        self.last_submission_file = first_job.paths.submission_file
        return jobs

    def _submit_command(self, command: str) -> core.Job[Any]:
        job = super()._submit_command(command)
        self.last_submission_file = job.paths.submission_file
        return job
