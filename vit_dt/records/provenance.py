"""The provenance block: what produced a result. One home for its field names; torch-free.

    provenance:
      code:        commit, branch, dirty, diff_sha256, diff_file, source ("git" | "package"), version,
                   snapshot (the sweep's code/ or null), imported_from (where the rank imported vit_dt from)
      environment: packages_sha256, packages_file, packages_count, python, torch, cuda, cudnn, nccl, deepspeed, mpi
      machine:     nodes, gpus (per node: model, driver, count) or null with gpus_reason, slurm_version, job_id,
                   array_job_id, array_task_id
      request:     command_line (as typed, secrets redacted), overrides (the point's)
      container:   runtime ("none" without one), image, identity (kind: file | directory | reference; path, bytes,
                   mtime, id: an mtime-based identity, not a content digest; digest: a reference's @sha256:...),
                   seen (what the rank saw from inside: markers the runtime set, os (/etc/os-release's PRETTY_NAME),
                   mnt_ns (its mount namespace))

The login side gathers code, environment and request at submission (`gather`), saves the uncommitted diff and the
package list once per sweep under `<sweep_dir>/provenance/`, and leaves the block next to each point's config
(`<run_dir>/provenance.json`). Rank 0 reads it back, adds the machine and the versions only the rank can see
(vit_dt/run/record.py), and puts the one block into result.json, the results store line and the W&B config.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROVENANCE = "provenance"                 # the record's field, and the sweep's folder of once-per-sweep files
POINT_FILE = "provenance.json"            # <run_dir>/provenance.json: the point's block as submitted
SWEEP_FILE = "provenance.json"            # <sweep_dir>/provenance/provenance.json: the sweep's block
DIFF_FILE = "diff.patch"                  # <sweep_dir>/provenance/diff.patch: uncommitted changes at submission
PACKAGES_FILE = "packages.txt"            # <sweep_dir>/provenance/packages.txt: name==version, one a line
SHIPPED_FILE = "shipped.json"             # <sweep_dir>/provenance/shipped.json: the code block and command line
SHIPPED_DIFF = "shipped.patch"            # gathered where `vit-dt sweep --remote` ran, and its uncommitted diff
CODE, ENVIRONMENT, MACHINE, REQUEST, CONTAINER = "code", "environment", "machine", "request", "container"
# Variables a container runtime sets inside (charliecloud: CH_RUNNING; `container` is systemd's convention, which
# several runtimes follow): the rank records those it sees.
CONTAINER_MARKERS = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "CH_RUNNING", "PYXIS_VERSION", "container")
COMMIT, BRANCH, DIRTY, DIFF_SHA256 = "commit", "branch", "dirty", "diff_sha256"
PACKAGES_SHA256 = "packages_sha256"
MAX_UNTRACKED_IN_DIFF = 200               # untracked files beyond this are named in the diff, not included


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_state(root: Path) -> tuple[dict[str, Any], bytes]:
    """(code fields, the uncommitted diff) of the checkout at `root`: tracked changes against HEAD, then each
    untracked (not ignored) file as a new-file diff."""
    head = _git(root, "rev-parse", "HEAD")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    diff = _git(root, "diff", "HEAD", "--binary")
    untracked = _git(root, "ls-files", "-z", "--others", "--exclude-standard")
    text = diff.stdout if diff is not None and diff.returncode == 0 else b""
    names = [n for n in (untracked.stdout.decode().split("\0") if untracked and untracked.returncode == 0 else [])
             if n]
    for name in sorted(names)[:MAX_UNTRACKED_IN_DIFF]:
        new = _git(root, "diff", "--no-index", "--binary", "--", "/dev/null", name)
        text += new.stdout if new is not None else b""
    if len(names) > MAX_UNTRACKED_IN_DIFF:
        text += ("# untracked, not included: " + " ".join(sorted(names)[MAX_UNTRACKED_IN_DIFF:]) + "\n").encode()
    fields = {
        "source": "git",
        COMMIT: head.stdout.decode().strip() if head is not None and head.returncode == 0 else None,
        BRANCH: branch.stdout.decode().strip() if branch is not None and branch.returncode == 0 else None,
        DIRTY: bool(text),
        DIFF_SHA256: hashlib.sha256(text).hexdigest() if text else None,
    }
    return fields, text


def package_list() -> list[str]:
    """Every installed distribution as name==version, sorted: what the environment digest covers. Only what is
    installed counts: not the working directory (''), nor the vendored copies a library puts on sys.path while it
    runs (torch's extension builder adds setuptools/_vendor), which would change the digest mid-run."""
    import importlib.metadata as metadata

    paths = [p for p in sys.path if p and not Path(p).name.endswith("_vendor")]
    return sorted({f"{(d.metadata['Name'] or '?').lower()}=={d.version}" for d in metadata.distributions(path=paths)})


def packages_digest(packages: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(packages).encode()).hexdigest()


def _version(dist: str) -> str | None:
    import importlib.metadata as metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_fields(packages: Sequence[str] | None = None) -> dict[str, Any]:
    """What the login side can tell without importing torch; the rank fills in cuda, cudnn, nccl."""
    packages = package_list() if packages is None else packages
    return {PACKAGES_SHA256: packages_digest(packages), "packages_count": len(packages), "packages_file": None,
            "python": platform.python_version(), "torch": _version("torch"), "cuda": None, "cudnn": None,
            "nccl": None, "deepspeed": _version("deepspeed"), "mpi": _mpi_version()}


def _mpi_version() -> str | None:
    """mpi4py's version and, when MPI is already loaded in this process, its library (never initialised here)."""
    version = _version("mpi4py")
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            return f"mpi4py {version}; {mpi.Get_library_version().splitlines()[0].strip()}"
        except Exception:  # noqa: BLE001 - a version string must never fail a run
            pass
    return f"mpi4py {version}" if version else None


def slurm_version() -> str | None:
    try:
        out = subprocess.run(["scontrol", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (vit-dt's own arguments), secrets redacted."""
    from vit_dt.records.secrets import scrub_override

    argv = list(sys.argv if argv is None else argv)
    prog = "vit-dt" if argv and argv[0].endswith(("vit_dt/cli.py", "vit-dt", "vit_dt.cli")) else (argv[0] if argv else "")
    return " ".join([prog, *(shlex.quote(scrub_override(a)) for a in argv[1:])]).strip()


def code_fields(root: Path, *, is_checkout: bool, snapshot: str | None = None) -> tuple[dict[str, Any], bytes]:
    """Code fields of the vit_dt at `root` (a git checkout's top, or where the package is installed) and its
    uncommitted diff (empty for an installed package)."""
    if is_checkout:
        fields, diff = git_state(root)
    else:
        fields, diff = {"source": "package", COMMIT: None, BRANCH: None, DIRTY: None, DIFF_SHA256: None}, b""
    fields.update(version=_version("vit-dt"), diff_file=None, snapshot=snapshot, imported_from=None)
    return fields, diff


def gather(root: Path, *, is_checkout: bool, snapshot: str | None, argv: Sequence[str] | None = None,
           packages: Sequence[str] | None = None) -> tuple[dict[str, Any], bytes, list[str]]:
    """The login side's block (code, environment, request; the machine is the rank's to fill), the uncommitted
    diff and the package list."""
    packages = package_list() if packages is None else list(packages)
    code, diff = code_fields(root, is_checkout=is_checkout, snapshot=snapshot)
    block = {CODE: code, ENVIRONMENT: environment_fields(packages), MACHINE: empty_machine(),
             REQUEST: {"command_line": command_line(argv), "overrides": []}}
    return block, diff, packages


def write_shipped(sweep_dir: Path, code: Mapping[str, Any], diff: bytes, argv: Sequence[str] | None = None) -> None:
    """`vit-dt sweep --remote`: what only this machine knows (`code_fields` of the checkout the snapshot came from,
    its uncommitted diff, the command as typed here), written into the sweep directory that goes to the login node."""
    from vit_dt import atomic

    folder = Path(sweep_dir) / PROVENANCE
    folder.mkdir(parents=True, exist_ok=True)
    if diff:
        (folder / SHIPPED_DIFF).write_bytes(diff)
    atomic.write_text(folder / SHIPPED_FILE, json.dumps({CODE: code, "command_line": command_line(argv),
                                                         "host": platform.node()}, indent=1) + "\n")


def read_shipped(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(sweep_dir) / PROVENANCE / SHIPPED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get(CODE), dict) else None


def read_shipped_diff(sweep_dir: Path) -> bytes:
    path = Path(sweep_dir) / PROVENANCE / SHIPPED_DIFF
    return path.read_bytes() if path.is_file() else b""


def with_shipped(block: Mapping[str, Any], shipped: Mapping[str, Any]) -> dict[str, Any]:
    """The login node's block (environment: the Python the jobs run) with the shipped code fields and command line."""
    block = json.loads(json.dumps(block))
    block[CODE] = {**shipped[CODE], "snapshot": block[CODE]["snapshot"], "diff_file": None, "imported_from": None}
    block[REQUEST]["command_line"] = shipped.get("command_line") or block[REQUEST]["command_line"]
    return block


def empty_machine() -> dict[str, Any]:
    return {"nodes": None, "gpus": None, "gpus_reason": None, "slurm_version": None, "job_id": None,
            "array_job_id": None, "array_task_id": None}


def save_sweep_files(sweep_dir: Path, block: Mapping[str, Any], diff: bytes, packages: Sequence[str]) -> dict:
    """Write the once-per-sweep files; returns the block with their names (relative to the sweep directory)."""
    from vit_dt import atomic

    folder = Path(sweep_dir) / PROVENANCE
    folder.mkdir(parents=True, exist_ok=True)
    block = json.loads(json.dumps(block))
    atomic.write_text(folder / PACKAGES_FILE, "\n".join(packages) + "\n")
    block[ENVIRONMENT]["packages_file"] = f"{PROVENANCE}/{PACKAGES_FILE}"
    if diff:
        (folder / DIFF_FILE).write_bytes(diff)
        block[CODE]["diff_file"] = f"{PROVENANCE}/{DIFF_FILE}"
    atomic.write_text(folder / SWEEP_FILE, json.dumps(block, indent=1) + "\n")
    return block


def write_point(run_dir: Path, block: Mapping[str, Any], overrides: Sequence[str],
                container: Mapping[str, Any] | None = None) -> None:
    """The point's block: the sweep's, its overrides and the container its ranks run in (`container_fields`)."""
    from vit_dt import atomic
    from vit_dt.records.secrets import scrub_override

    point = json.loads(json.dumps(block))
    point[REQUEST]["overrides"] = [scrub_override(o) for o in overrides]
    point[CONTAINER] = dict(container) if container is not None else container_fields("none", None)
    atomic.write_text(Path(run_dir) / POINT_FILE, json.dumps(point, indent=1) + "\n")


def container_fields(runtime: str, image: str | None) -> dict[str, Any]:
    """The container block as submitted: the runtime, the image and its identity as the login node sees it."""
    return {"runtime": runtime, "image": image, "identity": image_identity(image) if runtime != "none" else None}


def image_identity(image: str | None) -> dict[str, Any] | None:
    """Which image this is without reading it (a .sif is gigabytes): for a file, its size and mtime; for a directory
    image, the newest mtime of it and its top-level entries; `id` hashes those with the path and inode, so an image
    rebuilt in place gets another. A registry reference is its own identity (`digest` when it pins one)."""
    import datetime as dt

    if not image:
        return None
    path = Path(image)
    if not image.startswith("/") or not path.exists():
        return {"kind": "reference", "digest": image.split("@", 1)[1] if "@sha256:" in image else None}
    st = path.stat()
    kind = "directory" if path.is_dir() else "file"
    mtime_ns = st.st_mtime_ns
    if kind == "directory":
        for entry in os.scandir(path):
            try:
                mtime_ns = max(mtime_ns, entry.stat(follow_symlinks=False).st_mtime_ns)
            except OSError:
                continue
    size = st.st_size if kind == "file" else None
    key = f"{kind}:{path.resolve()}:{st.st_ino}:{size}:{mtime_ns}"
    return {"kind": kind, "path": str(path.resolve()), "bytes": size,
            "mtime": dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.timezone.utc).isoformat(timespec="seconds"),
            "id": f"mtime:{hashlib.sha256(key.encode()).hexdigest()[:16]}"}


def container_seen() -> dict[str, Any]:
    """What this process sees of the container it runs in, if any: the runtime's markers, the distribution of the
    root file system, the mount namespace (another than the node's inside a container). Never fails."""
    seen: dict[str, Any] = {"markers": {name: os.environ[name] for name in CONTAINER_MARKERS if name in os.environ}}
    try:
        seen["os"] = next((line.split("=", 1)[1].strip().strip('"') for line in
                           Path("/etc/os-release").read_text().splitlines() if line.startswith("PRETTY_NAME=")), None)
    except OSError:
        seen["os"] = None
    try:
        seen["mnt_ns"] = os.readlink("/proc/self/ns/mnt")
    except OSError:
        seen["mnt_ns"] = None
    return seen


def read_point(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / POINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def of(record: Mapping[str, Any]) -> Mapping[str, Any]:
    block = record.get(PROVENANCE)
    return block if isinstance(block, Mapping) else {}


def code_version(record: Mapping[str, Any]) -> str | None:
    """The short code version a person reads: 'a1b2c3d', 'a1b2c3d+dirty', or None (no provenance recorded)."""
    code = of(record).get(CODE) or {}
    commit = code.get(COMMIT)
    if not commit:
        version = code.get("version")
        return f"pkg {version}" if version else None
    return f"{commit[:7]}{'+dirty' if code.get(DIRTY) else ''}"


def packages_of(record: Mapping[str, Any]) -> str | None:
    return (of(record).get(ENVIRONMENT) or {}).get(PACKAGES_SHA256)


def env_root() -> str | None:
    return os.environ.get("VIT_DT_CODE_DIR")
