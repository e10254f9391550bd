"""The code a sweep runs, frozen at submission into `<sweep_dir>/code/`.

vit-dt is installed editable: without a snapshot, a job queued for two days would import whatever the working tree
holds when it starts, and a sweep whose author went on editing would mix code versions. Every job of a sweep
(requeues, `--resume` resubmissions) therefore imports vit_dt and the launcher plugin from the snapshot: the sbatch
script puts it first on PYTHONPATH (render.py, `code_dir`) and sets PYTHONSAFEPATH, so that neither the job's
working directory (`python -m` would put it first on sys.path) nor the editable install's import hook (a finder
consulted after sys.path) can win.

What the snapshot holds:
- in a git checkout (the one vit_dt is imported from): every file git tracks or would track (`git ls-files -co
  --exclude-standard`), as the working tree holds it now, so uncommitted changes are in it; no .venv, outputs or
  data (ignored files are never copied);
- otherwise: the installed package's files (vit_dt/, the launcher plugin, conf/ and slurm_templates/ when they sit
  next to the package).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CODE_SUBDIR = "code"                # <sweep_dir>/code: the snapshot
SNAPSHOT_INFO = "SNAPSHOT.json"     # inside it: what was copied, from where
LAUNCHERS_SUBDIR = "launchers"      # the plugin package sits under <root>/launchers (hydra_plugins/...)
# An installed package's folders never copied. A checkout needs no such list: git already leaves out what it ignores
# (.venv, outputs/, data/), and a name like `data` is also a package of vit_dt (vit_dt/data/).
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
MAX_FILE_BYTES = 5 * 1024 * 1024    # a tracked file this large is data, not code: left out (and listed)


class SnapshotError(ValueError):
    """The code could not be copied, or a sweep's snapshot is gone; nothing was queued."""


@dataclass
class Snapshot:
    path: str
    kind: str                  # "git": tracked + uncommitted files of a checkout; "package": installed files
    source: str                # where they were copied from
    files: int
    bytes: int
    seconds: float
    skipped: list[str]         # files left out for their size

    def to_dict(self) -> dict:
        return asdict(self)


def package_root() -> Path:
    """The directory holding the vit_dt package that runs now (a checkout's root when installed editable)."""
    import vit_dt

    return Path(vit_dt.__file__).resolve().parent.parent


def git_root(root: Path) -> Path | None:
    """`root` when it is the top of a git checkout (vit_dt imported from a clone); else None (an installed package,
    even one that sits inside some other checkout, such as a .venv in a repository)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    top = Path(out.stdout.strip())
    return top if top.resolve() == root.resolve() and (top / "vit_dt" / "__init__.py").is_file() else None


def python_path(code_dir: str | Path) -> str:
    """The PYTHONPATH entries that make a job import from the snapshot: vit_dt, then the launcher plugin."""
    code_dir = str(code_dir)
    return f"{code_dir}:{code_dir}/{LAUNCHERS_SUBDIR}"


@contextlib.contextmanager
def importing(code_dir: str | None) -> Iterator[None]:
    """While inside, processes started from here (submitit's local jobs copy os.environ) import the snapshot first,
    as the sbatch script makes a Slurm job do."""
    if code_dir is None:
        yield
        return
    names = ("PYTHONPATH", "PYTHONSAFEPATH", "VIT_DT_CODE_DIR")
    saved = {name: os.environ.get(name) for name in names}
    old = saved["PYTHONPATH"]
    os.environ.update(PYTHONPATH=python_path(code_dir) + (f":{old}" if old else ""), PYTHONSAFEPATH="1",
                      VIT_DT_CODE_DIR=str(code_dir))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_snapshot(sweep_dir: Path, root: Path | None = None) -> Snapshot:
    """Copy the code into `<sweep_dir>/code/` (replacing a partial copy from a failed attempt); returns what it did."""
    tic = time.perf_counter()
    root = package_root() if root is None else Path(root)
    target = Path(sweep_dir) / CODE_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    checkout = git_root(root)
    try:
        if checkout is not None:
            kind, source, files = "git", checkout, _git_files(checkout)
        else:
            kind, source, files = "package", root, _package_files(root)
        copied, size, skipped = _copy(files, target)
    except OSError as exc:
        raise SnapshotError(f"cannot snapshot the code into {target}: {exc}; pass --no-snapshot to run the working "
                            f"tree's code instead") from None
    snap = Snapshot(path=str(target), kind=kind, source=str(source), files=copied, bytes=size,
                    seconds=round(time.perf_counter() - tic, 4), skipped=skipped)
    (target / SNAPSHOT_INFO).write_text(json.dumps(snap.to_dict(), indent=1) + "\n")
    return snap


def _git_files(checkout: Path) -> list[tuple[Path, str]]:
    out = subprocess.run(["git", "-C", str(checkout), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, timeout=60)
    if out.returncode != 0:
        raise OSError(f"git ls-files failed: {out.stderr.decode(errors='replace').strip()}")
    names = sorted({n for n in out.stdout.decode().split("\0") if n})
    return [(checkout / n, n) for n in names]


def _package_files(root: Path) -> list[tuple[Path, str]]:
    """vit_dt/, conf/ and slurm_templates/ under `root`, and the launcher plugin wherever Hydra finds it (copied
    to launchers/hydra_plugins/..., a checkout's layout): (source file, name in the snapshot) pairs."""
    files: list[tuple[Path, str]] = []
    for top in ("vit_dt", "conf", "slurm_templates"):
        files += _walk(root, root / top, "")
    try:
        import hydra_plugins.vit_dt_launcher as plugin

        plugin_dir = Path(plugin.__file__).resolve().parent
        files += _walk(plugin_dir.parent.parent, plugin_dir, f"{LAUNCHERS_SUBDIR}/")
    except ImportError:
        pass
    return files


def _walk(base: Path, top: Path, prefix: str) -> list[tuple[Path, str]]:
    if not top.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        out += [(Path(dirpath) / f, prefix + str((Path(dirpath) / f).relative_to(base)))
                for f in filenames if not f.endswith((".pyc", ".pyo"))]
    return out


def _copy(files: list[tuple[Path, str]], target: Path) -> tuple[int, int, list[str]]:
    copied, size, skipped = 0, 0, []
    made: set[Path] = set()
    for src, name in files:
        try:
            st = src.lstat()
        except FileNotFoundError:       # tracked, but deleted in the working tree: the snapshot lacks it too
            continue
        if st.st_size > MAX_FILE_BYTES:
            skipped.append(name)
            continue
        dest = target / name
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest)
        elif src.is_file():
            shutil.copyfile(src, dest)
            shutil.copymode(src, dest)
        else:
            continue
        copied += 1
        size += st.st_size
    return copied, size, skipped


def read_snapshot_info(code_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(code_dir) / SNAPSHOT_INFO).read_text())
    except (OSError, ValueError):
        return None


def provenance_here(argv: list[str] | None = None) -> dict:
    """The login-side provenance block (code, environment, request) of the code running in this process, for a
    run no sweep submitted (`vit-dt train`, a rank started by hand)."""
    from vit_dt.records import provenance

    root = package_root()
    checkout = git_root(root)
    block, _, _ = provenance.gather(checkout or root, is_checkout=checkout is not None, argv=argv,
                                    snapshot=os.environ.get("VIT_DT_CODE_DIR"))
    return block


# --- what a sweep does with it -------------------------------------------------------------------------
def freeze(sweep_dir: Path, manifest: dict[str, Any], points: list[Any], *, snapshot: bool,
           reuse: tuple[str | None, dict] | None = None, shipped: bool = False) -> None:
    """The code snapshot (unless `snapshot` is false: --no-snapshot) and the provenance block of every point:
    manifest["code"] says where the snapshot is (or that there is none), manifest["provenance"] what was
    submitted; each point's block goes next to its config (the rank puts it into result.json).
    `reuse`: (an existing snapshot or None, the provenance block recorded with it): `vit-dt rerun --slurm` runs
    a recorded point again with its own code, copied nowhere and gathered from nothing here.
    `shipped`: `<sweep_dir>/code/` was frozen on another machine and shipped here (`vit-dt sweep --remote`): it is
    kept as it is, and the code's provenance is the one gathered there (`shipped_code`)."""
    from vit_dt.records import provenance

    tic = time.perf_counter()
    if shipped:
        manifest["code"], shipped_block, diff = shipped_code(sweep_dir)
        tic = time.perf_counter()
        block, _, packages = provenance.gather(package_root(), is_checkout=False, snapshot=manifest["code"]["snapshot"])
        block = provenance.save_sweep_files(sweep_dir, provenance.with_shipped(block, shipped_block), diff, packages)
    elif reuse is not None:
        path, block = reuse
        manifest["code"] = {"snapshot": path, "frozen": path is not None, "no_snapshot": path is None,
                            "reused": True, "kind": "reused", "source": path, "files": 0, "bytes": 0, "seconds": 0.0}
    else:
        root = package_root()
        checkout = git_root(root)
        if snapshot:
            snap = make_snapshot(sweep_dir, root)
            manifest["code"] = {"snapshot": snap.path, "frozen": True, "no_snapshot": False, **snap.to_dict()}
            del manifest["code"]["path"]
        else:
            manifest["code"] = {"snapshot": None, "frozen": False, "no_snapshot": True, "source": str(root),
                                "note": "--no-snapshot: jobs import the installed code as it is when each starts"}
        tic = time.perf_counter()
        block, diff, packages = provenance.gather(checkout or root, is_checkout=checkout is not None,
                                                  snapshot=manifest["code"]["snapshot"])
        block = provenance.save_sweep_files(sweep_dir, block, diff, packages)
    manifest["provenance"] = block
    for point in points:
        container = point.profile.partition(point.shape.partition).container
        provenance.write_point(point.run_dir, block, point.overrides,
                               provenance.container_fields(container.runtime, container.image))
    manifest["provenance_seconds"] = round(time.perf_counter() - tic, 4)


def shipped_code(sweep_dir: Path) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(manifest["code"], the provenance gathered where the snapshot was frozen, its uncommitted diff) of a snapshot
    shipped into `<sweep_dir>/code/` with `<sweep_dir>/provenance/` (vit_dt/slurm/remote_sweep.py)."""
    from vit_dt.records import provenance

    target = Path(sweep_dir) / CODE_SUBDIR
    info = read_snapshot_info(target)
    shipped = provenance.read_shipped(sweep_dir)
    if info is None or shipped is None:
        raise SnapshotError(f"hydra.launcher.shipped_snapshot=true, but {target} holds no shipped snapshot "
                            f"({SNAPSHOT_INFO} and {provenance.PROVENANCE}/{provenance.SHIPPED_FILE} are written by "
                            f"`vit-dt sweep --remote`); submit without it to freeze the code here")
    code = {"snapshot": str(target), "frozen": True, "no_snapshot": False, "shipped": True,
            "host": shipped.get("host"), **{k: v for k, v in info.items() if k != "path"}}
    return code, shipped, provenance.read_shipped_diff(sweep_dir)


def code_dir_of(sweep_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    """The snapshot this sweep's jobs import, or None (--no-snapshot, or a sweep made before snapshots); a sweep
    copied or moved elsewhere uses the copy's own snapshot. Refuses when the snapshot is gone."""
    code = manifest.get("code") or {}
    if not code.get("snapshot"):
        return None
    if code.get("reused"):      # a rerun's: the recorded sweep's snapshot, where it is
        if not Path(code["snapshot"]).is_dir():
            raise SnapshotError(f"the code snapshot {code['snapshot']} is gone")
        return str(code["snapshot"])
    here = Path(sweep_dir) / CODE_SUBDIR
    path = here if here.is_dir() or not Path(code["snapshot"]).is_dir() else Path(code["snapshot"])
    if code.get("frozen") and not path.is_dir():
        raise SnapshotError(f"the sweep's code snapshot {path} is gone: its jobs would run other code than its first "
                         f"ones; submit the sweep again into a new directory")
    return str(path)


def code_lines(manifest: Mapping[str, Any]) -> list[str]:
    """Where the code the jobs import lives (printed by `vit-dt sweep`)."""
    code = manifest.get("code")
    if not code:
        return []
    if code.get("no_snapshot"):
        return ["code:      not frozen (--no-snapshot): each job imports the installed code as it is when it starts"]
    if code.get("reused"):
        return [f"code:      {code['snapshot']} (the recorded run's snapshot); every job imports it"]
    if not code.get("frozen"):
        return [f"code:      would be frozen into {code['snapshot']} at submission"]
    from vit_dt.records.provenance import code_version

    version = code_version(manifest) or "no git commit"
    shipped = f"shipped from {code['host']}:" if code.get("shipped") and code.get("host") else "of"
    return [f"code:      {code['snapshot']} ({code['kind']} snapshot {shipped} {code['source']} at {version}: "
            f"{code['files']} files, {code['bytes'] / 1e6:.1f} MB, {code['seconds']:.2f} s); every job imports it"]
