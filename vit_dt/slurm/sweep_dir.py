"""A sweep's directory: a path that can go into a script, claimed by one sweep alone.

Two `vit-dt sweep` commands started in the same second would both name `<out_dir>/sweeps/<that second>`: each
would write its manifest over the other's and train its points into the other's run directories. A sweep
therefore creates its directory itself, exclusively (mkdir fails if it exists): the default, timestamped name
gets a `-2`, `-3`, ... suffix when that second is taken. A directory the user named is the same sweep again
(`--resume` semantics), so it is kept; concurrent submissions into it are serialised by a lock instead, and the
second one then finds the first one's manifest.

A path is written into `#SBATCH` lines, which no quoting can protect: a newline there ends the directive and the
rest of the path runs as a shell command. Such paths are refused, naming the key (vit_dt.config.validate).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vit_dt.config.validate import unsafe_path_problem

LOCK_NAME = ".submit.lock"
MAX_SUFFIX = 1000


class SweepDirError(ValueError):
    """The sweep directory cannot be used; nothing has been written."""


def claim(sweep_dir: Path, named_by_user: bool) -> Path:
    """Create the sweep directory for this sweep alone and return it (the default name may get a suffix)."""
    problem = unsafe_path_problem("hydra.sweep.dir", sweep_dir)
    if problem:
        raise SweepDirError(problem)
    try:
        sweep_dir.parent.mkdir(parents=True, exist_ok=True)
        if named_by_user:
            sweep_dir.mkdir(exist_ok=True)
            return sweep_dir
        for n in range(1, MAX_SUFFIX + 1):
            candidate = sweep_dir if n == 1 else sweep_dir.with_name(f"{sweep_dir.name}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        raise SweepDirError(f"cannot create the sweep directory {sweep_dir}: {exc.strerror or exc}; choose a "
                            f"writable out_dir=... or hydra.sweep.dir=...") from None
    raise SweepDirError(f"{MAX_SUFFIX} sweeps already use the name {sweep_dir}: pass hydra.sweep.dir=<new dir>")


@contextlib.contextmanager
def submitting(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep directory's submission lock: one `vit-dt sweep` at a time writes into it."""
    fd = os.open(sweep_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)     # closing releases the lock


def first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (what claiming it would create), or None."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def remove_if_unused(sweep_dir: Path, ours: tuple[str, ...] = (), created: Path | None = None) -> None:
    """A sweep refused before submission leaves nothing behind: remove its directory when it holds nothing but the
    lock and the files named in `ours` (Hydra's multirun.yaml), then the empty parents it made, up to `created`.
    A directory with anything else in it is left alone."""
    try:
        names = {p.name for p in sweep_dir.iterdir()}
        if not names <= {LOCK_NAME, *ours}:
            return
        for name in names:
            (sweep_dir / name).unlink()
        sweep_dir.rmdir()
        if created is not None and created != sweep_dir and created in sweep_dir.parents:
            for parent in sweep_dir.parents:
                parent.rmdir()          # fails (and stops) at the first one that is not empty
                if parent == created:
                    break
    except OSError:
        pass


LATEST = "latest"   # <sweeps>/latest -> the newest submitted sweep (kept by vit_dt.slurm.submit.point_latest_at)


def sweeps_root() -> Path:
    """Where `vit-dt sweep` puts a sweep by default: the parent of conf/'s `hydra.sweep.dir` (so `out_dir` and
    $VIT_DT_OUT_DIR count, as they do for the sweep itself)."""
    from omegaconf import OmegaConf

    from vit_dt.config import compose

    return Path(str(OmegaConf.select(compose(with_hydra=True), "hydra.sweep.dir"))).parent


def latest_sweep(root: Path | None = None) -> Path | None:
    """The sweep `<sweeps>/latest` names; without that link, the sweep whose manifest was written last; None when
    there is no sweep at all."""
    from vit_dt.slurm.manifest import manifest_path

    root = sweeps_root() if root is None else root
    link = root / LATEST
    if manifest_path(link).is_file():
        return link.resolve()
    manifests = [m for m in root.glob(f"*/{manifest_path('').name}") if not m.parent.is_symlink()]
    return max(manifests, key=lambda m: m.stat().st_mtime).parent.resolve() if manifests else None
