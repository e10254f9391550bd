"""Ranks inside a container image: a profile's (or one partition's) `container:` block, its checks, and the words
the sbatch script puts around each rank's command (docs/clusters.md, "Containers").

    apptainer, singularity  srun ... apptainer exec [--nv] --bind SRC[,SRC...] [flags] IMAGE python -u -m ...
    pyxis                   srun ... --container-image=IMAGE --container-mounts=SRC:SRC[,...] --container-env=NAMES
                                 [flags] python -u -m ...
    charliecloud            srun ... ch-run -b DIR [-b DIR...] [flags] IMAGE -- python -u -m ...
    none                    the line of a job without a container, byte for byte

What a rank needs is bound in without being listed: the sweep directory (submitit's pickles and logs, the run
directories, the results store), the code snapshot and the data roots, at the same paths as on the host, since the
job's files name them. Charliecloud can bind only onto directories that exist in the image, and a sweep directory
is new every time, so for it each of those paths is bound by its top-level directory (/scratch for
/scratch/me/sweeps/...), which the image must hold (checked before queueing, where the image is a directory here).

Rank discovery works inside unchanged because every runtime here passes the task's environment (SLURM_PROCID, the
MPI launcher's variables, CUDA_VISIBLE_DEVICES, the W&B key) into the container; flags that would clear it are
refused. An image may set variables of its own (PYTHONPATH is common), and apptainer and pyxis let the image's value
win: the names vit-dt sets (the snapshot's PYTHONPATH, the profile's env) and `container.env` are passed so that the
job's value wins (APPTAINERENV_<NAME>, pyxis --container-env). Only names are written, never a value.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import PurePosixPath
from typing import Any

from vit_dt.config.choices import CONTAINER_RUNTIMES, MPI_LAUNCHERS
from vit_dt.config.schema import ContainerSchema

FIELDS = tuple(f.name for f in fields(ContainerSchema))
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FILE_IMAGE_RUNTIMES = ("apptainer", "singularity", "charliecloud")   # the image is a file or directory here
REFERENCE_PREFIXES = ("docker://", "docker-daemon://", "library://", "oras://", "shub://", "instance://")
# Arguments vit-dt writes itself: `flags` may not repeat them (two values would be ambiguous).
OWN_FLAGS = {
    "apptainer": ("--bind", "-B", "--nv"), "singularity": ("--bind", "-B", "--nv"),
    "pyxis": ("--container-image", "--container-mounts", "--container-env"), "charliecloud": ("-b", "--bind"),
}
# Flags that would empty the task's environment inside: rank discovery reads SLURM_PROCID etc. there.
CLEAN_ENV_FLAGS = {"apptainer": ("--cleanenv", "-e", "--containall", "-C"),
                   "singularity": ("--cleanenv", "-e", "--containall", "-C")}
RANK_VARIABLE = "SLURM_PROCID"       # what a charliecloud --unset-env glob must leave alone
CHARLIECLOUD_SYSTEM_DIRS = ("usr", "etc", "lib", "lib64", "bin", "sbin", "proc", "sys", "dev")


class ContainerError(ValueError):
    """A `container:` block that cannot run; nothing has been queued."""


@dataclass(frozen=True)
class Container:
    runtime: str = ContainerSchema.runtime
    image: str | None = ContainerSchema.image
    python: str | None = ContainerSchema.python
    binds: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.runtime != "none"


NO_CONTAINER = Container()


def parse_container(data: Any, key: str, base: Container | None = None) -> Container:
    """The container of `data` (a `container:` mapping or None) at config key `key`. With `base` (the profile's),
    `data` is a partition's block: its keys that are not null replace the profile's, and a `runtime` replaces the
    whole block."""
    if data is None:
        return base if base is not None else NO_CONTAINER
    if not isinstance(data, Mapping):
        raise ContainerError(f"{key} must be a mapping of {', '.join(FIELDS)}, got {data!r}")
    unknown = sorted(set(map(str, data)) - set(FIELDS))
    if unknown:
        raise ContainerError(f"unknown key(s) in {key}: {', '.join(f'{key}.{k}' for k in unknown)}; "
                             f"valid keys: {', '.join(FIELDS)}")
    given = {k: v for k, v in data.items() if v is not None}
    if base is not None and not given:
        return base
    start = NO_CONTAINER if base is None or "runtime" in given else base
    container = replace(start, **{k: _field(k, v, key) for k, v in given.items()})
    _check(container, key)
    return container


def _field(name: str, value: Any, key: str) -> Any:
    if name in ("binds", "env", "flags"):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ContainerError(f"{key}.{name} must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)
    return str(value)


def _check(c: Container, key: str) -> None:
    if c.runtime not in CONTAINER_RUNTIMES:
        raise ContainerError(f"{key}.runtime={c.runtime!r} is not valid; choose one of: "
                             f"{', '.join(CONTAINER_RUNTIMES)}")
    if not c.active:
        stray = [name for name in ("image", "python", "binds", "env", "flags") if getattr(c, name)]
        if stray:
            raise ContainerError(f"{key}.{stray[0]} is set but {key}.runtime=none (no container): set "
                                 f"{key}.runtime to one of {', '.join(CONTAINER_RUNTIMES[1:])}, or remove it")
        return
    if not c.image:
        raise ContainerError(f"{key}.image is missing: {key}.runtime={c.runtime} needs an image "
                             f"({_image_kinds(c.runtime)})")
    if is_local_image(c) and not c.image.startswith("/"):
        raise ContainerError(f"{key}.image={c.image!r} must be an absolute path (jobs start in another directory); "
                             f"e.g. ${{oc.env:HOME}}/{c.image.lstrip('~/')}")
    for bind in c.binds:
        parts = bind.split(":")
        if not parts[0].startswith("/") or (len(parts) > 1 and not parts[1].startswith("/")) or "," in bind \
                or len(parts) > 3 or any(ch in bind for ch in "\n\r\0"):
            raise ContainerError(f"{key}.binds: {bind!r} is not SRC[:DST[:OPTIONS]] with absolute paths and no commas")
    for name in c.env:
        if not ENV_NAME.match(name):
            raise ContainerError(f"{key}.env: {name!r} is not a variable name (it lists names only: the job's "
                                 f"values are passed, never written)")
    for flag in c.flags:
        word = flag.split("=", 1)[0]
        if word in OWN_FLAGS[c.runtime]:
            raise ContainerError(f"{key}.flags: {flag!r} is written by vit-dt itself "
                                 f"({', '.join(OWN_FLAGS[c.runtime])}); use {key}.image, {key}.binds or {key}.env")
        if word in CLEAN_ENV_FLAGS.get(c.runtime, ()):
            raise ContainerError(f"{key}.flags: {flag!r} would clear the task's environment inside the container, "
                                 f"and each rank finds its rank there ({RANK_VARIABLE}, ...); remove it (list the "
                                 f"variables the image must not override in {key}.env instead)")
        if c.runtime == "charliecloud" and word == "--unset-env" and "=" in flag \
                and fnmatch.fnmatchcase(RANK_VARIABLE, flag.split("=", 1)[1]):
            raise ContainerError(f"{key}.flags: {flag!r} unsets {RANK_VARIABLE}, which each rank needs inside the "
                                 f"container; narrow the pattern")


def _image_kinds(runtime: str) -> str:
    return {"apptainer": "a .sif file, a sandbox directory or a docker:// reference",
            "singularity": "a .sif file, a sandbox directory or a docker:// reference",
            "pyxis": "an enroot URI such as nvcr.io#nvidia/pytorch:24.05-py3, or a SquashFS file",
            "charliecloud": "a directory image (ch-convert) or a SquashFS file"}[runtime]


def is_local_image(c: Container) -> bool:
    """Whether the image is a file or directory on a shared file system (not a registry reference)."""
    image = c.image or ""
    if c.runtime in FILE_IMAGE_RUNTIMES:
        return not image.startswith(REFERENCE_PREFIXES)
    # pyxis: an enroot URI (registry#image:tag), or a path to a SquashFS file
    return image.startswith(("/", "./", "~")) or image.endswith((".sqsh", ".sqfs", ".squashfs"))


def launch_problem(c: Container, launcher: str, scheduler: str, key: str) -> str | None:
    """Why `launcher` cannot start ranks in `c`, or None. Pyxis is a plugin of srun: only srun starts its containers,
    so mpirun's daemons would start the ranks outside (use srun or srun_mpi, which PMIx wires up inside)."""
    if not c.active:
        return None
    if scheduler != "slurm":
        return (f"{key}.runtime={c.runtime} needs cluster.scheduler=slurm (the sbatch script puts each rank in "
                f"the container; cluster.scheduler={scheduler} starts ranks here without it); set {key}.runtime=none")
    if c.runtime == "pyxis" and launcher == "mpirun":
        return (f"cluster.launcher=mpirun cannot start ranks in a pyxis container ({key}.runtime=pyxis): pyxis is a "
                f"plugin of srun, mpirun's ranks would run outside it; valid launchers with pyxis: srun, "
                f"{', '.join(m for m in MPI_LAUNCHERS if m != 'mpirun')}")
    return None


def job_paths(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """What a point's job reads and writes besides submitit's folder and the snapshot: its sweep directory and its
    data root (as absolute paths: the job's working directory need not exist inside the image)."""
    import os

    root = (cfg.get("dataset") or {}).get("root")
    return tuple(os.path.abspath(str(p)) for p in (cfg.get("sweep_dir"), root) if p)


def image_problem(c: Container, key: str, paths: Iterable[str] = ()) -> str | None:
    """Checked on the login node before queueing: an image file or directory that is not there; for charliecloud,
    a job path under a system directory, or a directory image without a mount point a bind needs (`paths`: the
    job's own). None: fine, or nothing to check here (a registry reference)."""
    import os

    if not c.active:
        return None
    paths = list(paths)
    separators = ":" if c.runtime == "charliecloud" else ":,"   # what separates binds (and SRC from DST)
    odd = next((p for p in paths if any(ch in p for ch in separators)), None)
    if odd is not None:
        return (f"{odd} holds {' or '.join(repr(ch) for ch in separators)}, which {c.runtime} reads as a separator "
                f"of its binds; choose a sweep directory and data root without them")
    problem = system_dir_problem(c, paths)
    if problem or not is_local_image(c):
        return problem
    image = c.image or ""
    if not os.path.exists(image):
        return f"{key}.image={image!r} does not exist on this node; {c.runtime} needs {_image_kinds(c.runtime)} there"
    if c.runtime == "charliecloud" and os.path.isdir(image):
        wanted = [b.split(":")[1] if b.count(":") else b for b in binds(c, paths)]
        missing = [dst for dst in wanted if not os.path.isdir(image.rstrip("/") + dst)]
        if missing:
            return (f"{key}.image={image!r} has no director{'y' if len(missing) == 1 else 'ies'} "
                    f"{', '.join(missing)}: ch-run binds only onto directories the image holds (the job's paths by "
                    f"their top-level directory); create {' '.join(image.rstrip('/') + m for m in missing)} "
                    f"(empty mount points)")
    return None


# --- what the sbatch script says ----------------------------------------------------------------------------
def binds(c: Container, job_paths: Iterable[str]) -> tuple[str, ...]:
    """The job's own paths (nested ones dropped: their parent's bind holds them; charliecloud: their top-level
    directories), then the profile's binds."""
    paths = [str(PurePosixPath(p)) for p in job_paths if p]
    if c.runtime == "charliecloud":
        paths = ["/" + PurePosixPath(p).parts[1] for p in paths if len(PurePosixPath(p).parts) > 1]
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (len(PurePosixPath(p).parts), p)):
        if not any(PurePosixPath(path).is_relative_to(k) for k in kept):
            kept.append(path)
    own = [p for p in paths if p in kept]
    return tuple(dict.fromkeys(own)) + tuple(b for b in c.binds if b not in own)


def system_dir_problem(c: Container, job_paths: Iterable[str]) -> str | None:
    """Charliecloud binds a job path by its top-level directory: one under /usr, /etc, ... would hide the image's
    own."""
    if c.runtime != "charliecloud":
        return None
    for path in job_paths:
        parts = PurePosixPath(path).parts
        if len(parts) > 1 and parts[1] in CHARLIECLOUD_SYSTEM_DIRS:
            return (f"{path} lies under /{parts[1]}, which charliecloud would have to bind over the image's own "
                    f"(it binds a job's paths by their top-level directory); keep sweeps and data elsewhere")
    return None


def forced_env(c: Container, names: Iterable[str]) -> tuple[str, ...]:
    """The variables whose job value must win over the image's: vit-dt's own `names`, then container.env."""
    return tuple(dict.fromkeys([*names, *c.env]))
