"""sbatch scripts from slurm_templates/job.sbatch.tmpl: `render_sbatch(spec)` is a pure function of its spec.

`build_spec` turns (profile, shape, paths) into a spec; keeping the two apart lets golden-file tests pin the
script text without Slurm, and lets `vit-dt sweep --dry-run` show exactly what would be submitted.

Launch lines (one task per rank; ranks read RANK etc. from Slurm or MPI):
    srun      srun --unbuffered ... --kill-on-bad-exit=1 [--gpus-per-task=1] CMD   (own GPU per task; one dead
                                                                     rank ends the step at once)
    srun_mpi  srun --unbuffered --mpi=pmix ... CMD                    (PMIx wires up MPI; mpi4py discovery)
    mpirun    mpirun -np $SLURM_NTASKS --map-by ppr:N:node ... CMD    (Open MPI syntax; see vit_dt.slurm.mpi_task)
With a container (vit_dt/slurm/container.py), CMD runs inside it: `apptainer exec ... IMAGE CMD`, `ch-run ... IMAGE --
CMD`, or pyxis's --container-* options on the srun line.
"""
from __future__ import annotations

import functools
import re
import shlex
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit_dt.config.choices import SLURM_LAUNCHERS
from vit_dt.paths import templates_dir
from vit_dt.slurm import container as ct

TEMPLATE_NAME = "job.sbatch.tmpl"
# Environment names that look like credentials are never written into a script (they reach the job
# through sbatch's default --export=ALL from the submitting shell instead).
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|AUTH)", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Directives render_sbatch writes itself; sbatch_args may not repeat them (two values would be ambiguous).
OWN_DIRECTIVES = ("job-name", "partition", "account", "qos", "nodes", "ntasks-per-node", "gpus-per-node",
                  "cpus-per-task", "mem", "time", "signal", "requeue", "no-requeue", "array", "output",
                  "error", "open-mode")


class _Template(string.Template):
    # `$` belongs to bash; the template's own placeholders are @@{name}.
    delimiter = "@@"


@dataclass(frozen=True)
class SbatchSpec:
    """Everything one sbatch script says. Paths are final strings (with Slurm's %A/%a/%j/%t patterns)."""

    job_name: str
    nodes: int
    ntasks_per_node: int
    time_min: int
    command: str                 # what every task runs (submitit's `python -u -m submitit.core._submit DIR`)
    stdout: str                  # per-task log pattern, with %t for the task id
    stderr: str
    partition: str | None = None
    launcher: str = "srun"
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    signal_delay_s: int = 90
    signal: str = "USR2"
    requeue: bool = True
    array_size: int | None = None        # a job array of this many tasks (0..n-1), one per sweep point
    array_parallelism: int | None = None
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str | None], ...] = ()   # a None value holds a secret: named, never written
    srun_args: tuple[str, ...] = ()
    mpirun: str = "mpirun"
    mpirun_args: tuple[str, ...] = ()
    extra_directives: tuple[tuple[str, str], ...] = ()
    description: str = ""
    code_dir: str | None = None          # the sweep's code snapshot (vit_dt/slurm/snapshot.py); None: the installed code
    container: ct.Container = ct.NO_CONTAINER   # the image every rank runs in (runtime none: none)
    job_paths: tuple[str, ...] = ()      # host paths the job reads and writes: bound into the container

    def __post_init__(self) -> None:
        if self.launcher not in SLURM_LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} cannot be rendered into an sbatch script; "
                             f"choose one of: {', '.join(SLURM_LAUNCHERS)}")
        for name, _ in self.env:
            if not ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not a valid shell name")
        for key, _ in self.extra_directives:
            if key.replace("_", "-") in OWN_DIRECTIVES:
                raise ValueError(f"sbatch_args.{key} is set from the profile/resources already; "
                                 f"remove it from sbatch_args (vit-dt writes: {', '.join(OWN_DIRECTIVES)})")


def build_spec(
    profile: Any,
    shape: Any,
    *,
    job_name: str,
    folder: str | Path,
    command: str,
    array_size: int | None = None,
    description: str = "",
    code_dir: str | Path | None = None,
    job_paths: tuple[str, ...] = (),
) -> SbatchSpec:
    """The spec for `shape` on `profile` (a ClusterProfile) with submitit's log layout under `folder`; `job_paths`:
    what the job reads and writes besides `folder` and `code_dir` (the sweep directory, data roots)."""
    from vit_dt.records.secrets import holds_secret

    folder = str(folder)
    job_part = "%A_%a" if array_size is not None else "%j"
    log = f"{folder.replace('%j', job_part)}/{job_part}_%t_log"
    return SbatchSpec(
        job_name=job_name,
        partition=shape.partition,
        nodes=shape.nodes,
        ntasks_per_node=shape.tasks_per_node,
        gpus_per_node=shape.gpus_per_node,
        cpus_per_task=shape.cpus_per_task,
        mem_gb=shape.mem_gb,
        time_min=shape.time_min,
        launcher=profile.launcher,
        account=profile.account,
        qos=profile.qos,
        signal_delay_s=profile.signal_delay_s,
        requeue=profile.requeue,
        array_size=array_size,
        setup=tuple(profile.setup),
        env=tuple(sorted((name, None if holds_secret(value) else value) for name, value in profile.env.items())),
        srun_args=tuple(profile.srun_args),
        mpirun=profile.mpirun,
        mpirun_args=tuple(profile.mpirun_args),
        extra_directives=tuple(sorted((str(k), str(v)) for k, v in profile.sbatch_args.items())),
        command=command,
        stdout=f"{log}.out",
        stderr=f"{log}.err",
        description=description,
        code_dir=None if code_dir is None else str(code_dir),
        container=profile.partition(shape.partition).container,
        job_paths=tuple(p for p in (_without_patterns(folder), *map(str, job_paths),
                                    None if code_dir is None else str(code_dir)) if p),
    )


def render_sbatch(spec: SbatchSpec, template: str | None = None) -> str:
    """The sbatch script text for `spec` (`template`: the template text; default slurm_templates/)."""
    text = _Template(template if template is not None else _default_template()).substitute(
        description=spec.description or spec.job_name,
        directives="\n".join(f"#SBATCH {d}" for d in _directives(spec)),
        setup="\n".join(spec.setup) if spec.setup else "# (none)",
        env="\n".join(_env_lines(spec.env)) or "# (none)",
        code="\n".join(_code_lines(spec.code_dir)),
        launch_summary=_launch_summary(spec),
        launch="\n".join([*_container_lines(spec), _launch_line(spec)]),
    )
    return text if text.endswith("\n") else text + "\n"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


@functools.lru_cache(maxsize=None)
def _template_text(path: str) -> str:
    return Path(path).read_text()


def _default_template() -> str:
    return _template_text(str(templates_dir() / TEMPLATE_NAME))


def _directives(spec: SbatchSpec) -> list[str]:
    out = [f"--job-name={_q(spec.job_name)}"]
    if spec.partition:
        out.append(f"--partition={_q(spec.partition)}")
    if spec.account:
        out.append(f"--account={_q(spec.account)}")
    if spec.qos:
        out.append(f"--qos={_q(spec.qos)}")
    out += [f"--nodes={spec.nodes}", f"--ntasks-per-node={spec.ntasks_per_node}"]
    if spec.gpus_per_node:
        out.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        out.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.mem_gb:
        out.append(f"--mem={_mem(spec.mem_gb)}")
    out.append(f"--time={_time(spec.time_min)}")
    # USR2 to every task signal_delay_s before the limit: submitit checkpoints rank 0 and requeues.
    out.append(f"--signal={spec.signal}@{spec.signal_delay_s}")
    out.append("--requeue" if spec.requeue else "--no-requeue")
    if spec.array_size is not None:
        if spec.array_size < 1:
            raise ValueError(f"array_size must be >= 1, got {spec.array_size}")
        limit = f"%{spec.array_parallelism}" if spec.array_parallelism else ""
        out.append(f"--array=0-{spec.array_size - 1}{limit}")
    out += [f"--output={_q(_first_task(spec.stdout))}", f"--error={_q(_first_task(spec.stderr))}",
            "--open-mode=append"]
    out += [f"--{key.replace('_', '-')}={_q(value)}" for key, value in spec.extra_directives]
    return out


def _env_lines(env: tuple[tuple[str, str | None], ...]) -> list[str]:
    lines = []
    for name, value in env:
        if is_secret_name(name):
            lines.append(f"# {name}: not written (looks like a secret); inherited from the submitting shell")
        elif value is None:
            lines.append(f"# {name}: not written (its value holds a secret)")
        else:
            lines.append(f'export {name}="{_dq(value)}"')
    return lines


def _code_lines(code_dir: str | None) -> list[str]:
    if code_dir is None:
        return ["# (no snapshot: the job imports the installed code as it is when the job starts)"]
    from vit_dt.slurm.snapshot import python_path

    # PYTHONSAFEPATH: `python -m` must not put the job's working directory (often the checkout) before the snapshot.
    # Single-quoted: a path is data, and a sweep directory may hold `$`, backquotes or quotes.
    return [f'export PYTHONPATH={_q(python_path(code_dir))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
            "export PYTHONSAFEPATH=1", f"export VIT_DT_CODE_DIR={_q(code_dir)}"]


def _launch_summary(spec: SbatchSpec) -> str:
    ranks = f"{spec.nodes} node(s) x {spec.ntasks_per_node} rank(s)"
    device = "one GPU per rank" if spec.gpus_per_node else "CPU ranks"
    inside = f", inside {spec.container.runtime} image {spec.container.image}" if spec.container.active else ""
    return f"{spec.launcher}, {ranks}, {device}{inside}"


def _forced_env(spec: SbatchSpec) -> tuple[str, ...]:
    """Names whose job value must win over the image's: the snapshot's, the profile's env, container.env."""
    code = ("PYTHONPATH", "PYTHONSAFEPATH", "VIT_DT_CODE_DIR") if spec.code_dir is not None else ()
    return ct.forced_env(spec.container, [*code, *(name for name, _ in spec.env)])


def _container_lines(spec: SbatchSpec) -> list[str]:
    """Script lines before the launch line that the container needs (none without one)."""
    c = spec.container
    if c.runtime in ("apptainer", "singularity"):
        prefix = c.runtime.upper() + "ENV_"
        return [f"# {c.runtime} lets an image's variables win over the job's; these keep the job's "
                f"(names only, values come from this environment)",
                f"for name in {' '.join(_forced_env(spec))}; do",
                f'  if [ -n "${{!name+x}}" ]; then export "{prefix}$name=${{!name}}"; fi',
                "done"]
    if c.runtime == "charliecloud":
        return ['export USER="${USER:-$(id -un)}"   # ch-run refuses to start without $USER']
    return []


def _container_words(spec: SbatchSpec) -> tuple[list[str], list[str]]:
    """(srun options, words before the command) that put the command inside the container."""
    c = spec.container
    binds = ct.binds(c, spec.job_paths)
    if c.runtime in ("apptainer", "singularity"):
        nv = ["--nv"] if spec.gpus_per_node else []   # the host's NVIDIA driver inside; only where there are GPUs
        return [], [c.runtime, "exec", *nv, "--bind", _q(",".join(binds)), *map(_q, c.flags), _q(c.image)]
    if c.runtime == "pyxis":
        mounts = ",".join(b if ":" in b else f"{b}:{b}" for b in binds)
        return [f"--container-image={_q(c.image)}", f"--container-mounts={_q(mounts)}",
                f"--container-env={','.join(_forced_env(spec))}", *map(_q, c.flags)], []
    if c.runtime == "charliecloud":
        return [], ["ch-run", *(f"-b {_q(b)}" for b in binds), *map(_q, c.flags), _q(c.image), "--"]
    return [], []


def _launch_line(spec: SbatchSpec) -> str:
    srun_words, before = _container_words(spec)
    command = " ".join([*before, spec.command])
    if spec.launcher == "mpirun":
        # Per-rank logs are written by the rank itself (vit_dt.slurm.mpi_task): mpirun has no --output pattern.
        args = [_q(spec.mpirun), "-np", "$SLURM_NTASKS", "--map-by", f"ppr:{spec.ntasks_per_node}:node",
                *map(_q, spec.mpirun_args)]
        return " ".join(args + [command])
    args = ["srun", "--unbuffered"]
    if spec.launcher == "srun_mpi":
        args.append("--mpi=pmix")
    args += [f"--output={_q(spec.stdout)}", f"--error={_q(spec.stderr)}"]
    # Fail fast: a rank that dies (non-zero exit, signal) makes srun end the whole step at once, instead of the
    # survivors waiting in a collective until the process-group timeout (NCCL can wait far longer than gloo).
    args.append("--kill-on-bad-exit=1")
    if spec.gpus_per_node:
        args.append("--gpus-per-task=1")  # each task sees only its own device (CUDA_VISIBLE_DEVICES)
    args += [_q(a) for a in spec.srun_args]
    return " ".join(args + srun_words + [command])


def _without_patterns(folder: str) -> str:
    """`folder` up to its first component holding a Slurm pattern (%j): the directory that exists at submission."""
    parts = str(folder).split("/")
    keep = next((i for i, part in enumerate(parts) if "%" in part), len(parts))
    return "/".join(parts[:keep])


def _first_task(pattern: str) -> str:
    # The batch step is task 0 of the job: its own output joins task 0's log.
    return pattern.replace("%t", "0")


def _time(minutes: int) -> str:
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours}:{mins:02d}:00"


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if float(gb).is_integer() else f"{int(round(gb * 1024))}M"


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _dq(value: str) -> str:
    """Escape for a double-quoted bash string: `$VAR` still expands, nothing else is special."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


