"""`vit-dt rerun RUN_DIR_OR_RESULT [--slurm] [--out DIR] [--dry-run]`: run one recorded point again, here or on
Slurm, with the code and config it ran with, so that a surprising number can be reproduced months later.

    vit-dt rerun outputs/sweeps/20260101-120000/points/3             # a sweep point's run directory
    vit-dt rerun outputs/runs/20260101-120000-ab12cd/result.json     # or its result.json
    vit-dt rerun outputs/sweeps/20260101-120000/points/3 --slurm     # as a Slurm job of the point's shape

The config is the one the run received (`<run dir>/config.yaml`, else the record's own `config`); the code is the
sweep's snapshot the record names (`provenance.code.snapshot`, docs/sweeps.md), imported first as the jobs did.
Before it starts it says when the snapshot is gone (the installed code runs instead) and when the installed
packages differ from the recorded ones (`provenance.environment.packages_sha256`). The rerun writes into a new
run directory, `<run dir>/reruns/<UTC time>/` (or --out), with its own result.json and results store: the
original's records are never touched. Here, the point's world size is started as local ranks (trainer.nproc);
with --slurm the rerun directory is a one-point sweep (`vit-dt status` follows it) submitted with the point's
shape (from its sweep.json) to its cluster, its job importing the recorded snapshot.

Options:
  --slurm       submit it as a Slurm job of the point's shape instead of running it here
  --out DIR     the rerun's run directory (default <run dir>/reruns/<UTC time>); must not exist
  --dry-run     say what would run (and the checks), run nothing
  -h, --help    this help
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

USAGE = __doc__


class RerunError(ValueError):
    pass


def locate(source: Path) -> tuple[Path, dict]:
    """(run directory, its record) for a run directory or a result.json."""
    from vit_dt.records.result import RESULT_NAME

    path = Path(source)
    run_dir = path.parent if path.is_file() else path
    result = path if path.is_file() else path / RESULT_NAME
    if not run_dir.is_dir():
        raise RerunError(f"{source} is neither a run directory nor a result.json")
    try:
        record = json.loads(result.read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        raise RerunError(f"{result} does not hold a result record")
    return run_dir, record


def recorded_config(run_dir: Path, record: dict) -> dict[str, Any]:
    config = run_dir / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    if isinstance(record.get("config"), dict):
        return dict(record["config"])
    raise RerunError(f"{run_dir} holds neither config.yaml nor a result.json with its config: nothing to rerun")


def checks(run_dir: Path, record: dict, cfg: dict) -> tuple[str | None, list[str]]:
    """(the snapshot to import, or None for the installed code; what differs from the recorded run)."""
    from vit_dt.records import provenance
    from vit_dt.slurm.snapshot import CODE_SUBDIR, package_root

    block = provenance.of(record) or provenance.read_point(run_dir) or {}
    code = block.get(provenance.CODE) or {}
    notes = []
    snapshot = code.get("snapshot") or (str(Path(cfg["sweep_dir"]) / CODE_SUBDIR) if cfg.get("sweep_dir") else None)
    recorded = provenance.code_version({provenance.PROVENANCE: block}) or "unknown"
    if snapshot and not Path(snapshot).is_dir():
        notes.append(f"the code snapshot {snapshot} is gone: the installed code at {package_root()} runs instead "
                     f"(the run was recorded at code version {recorded})")
        snapshot = None
    elif not snapshot:
        notes.append(f"the run recorded no code snapshot: the installed code at {package_root()} runs "
                     f"(the run was recorded at code version {recorded})")
    recorded_packages = (block.get(provenance.ENVIRONMENT) or {}).get(provenance.PACKAGES_SHA256)
    if recorded_packages is None:
        notes.append("the run recorded no package digest: the environment cannot be compared")
    else:
        here = provenance.packages_digest(provenance.package_list())
        if here != recorded_packages:
            listed = (block.get(provenance.ENVIRONMENT) or {}).get("packages_file")
            notes.append(f"the installed packages differ from the run's (digest {here[:8]} here, "
                         f"{recorded_packages[:8]} recorded" + (f"; its list: <sweep>/{listed}" if listed else "")
                         + ")")
    return snapshot, notes


def prepare(run_dir: Path, record: dict, cfg: dict, out: Path, argv: list[str]) -> tuple[Path, int]:
    """The rerun's directory with its config and provenance; returns it and the number of ranks."""
    import yaml

    from vit_dt.records import provenance

    out.mkdir(parents=True)
    cfg = dict(cfg)
    world = int(record.get("world_size") or (cfg.get("trainer") or {}).get("nproc") or 1)
    # its own store, never the sweep's: a rerun must not supersede the point it reproduces
    cfg.update(sweep_dir=None, out_dir=str(out))
    cfg.setdefault("trainer", {})["nproc"] = world
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    block = json.loads(json.dumps(provenance.of(record) or provenance.read_point(run_dir) or {}))
    if block:
        block.setdefault(provenance.REQUEST, {})["command_line"] = provenance.command_line(["vit-dt", "rerun", *argv])
        block[provenance.REQUEST]["rerun_of"] = str(run_dir.resolve())
        (out / provenance.POINT_FILE).write_text(json.dumps(block, indent=1) + "\n")
    return out, world


def run_here(out: Path, world: int, snapshot: str | None) -> int:
    """The ranks as local processes, importing the snapshot first (as a sweep's jobs do)."""
    from vit_dt.slurm.snapshot import python_path

    env = dict(os.environ)
    if snapshot:
        env.update(PYTHONPATH=python_path(snapshot) + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else ""),
                   PYTHONSAFEPATH="1", VIT_DT_CODE_DIR=snapshot)
    if world == 1:   # one rank: this environment's threads, as the run had (local_launch would set its own)
        command = [sys.executable, "-m", "vit_dt.run.rank", str(out)]
    else:
        command = [sys.executable, "-c", "import sys; from pathlib import Path; from vit_dt.run.local_launch import "
                   "launch; sys.exit(launch(Path(sys.argv[1]), int(sys.argv[2])))", str(out), str(world)]
    return subprocess.run(command, env=env).returncode


def submit(run_dir: Path, record: dict, cfg: dict, out: Path, argv: list[str], snapshot: str | None) -> int:
    """The point as a one-point sweep in `out`, its job importing the recorded snapshot."""
    from vit_dt.records import provenance
    from vit_dt.slurm.manifest import read_manifest
    from vit_dt.slurm.profile import ClusterProfile
    from vit_dt.slurm.shape import JobShape, resolve_shape, validate_request
    from vit_dt.slurm.submit import SweepPoint, submit_sweep, summary_lines

    shape_saved, overrides = None, []
    try:
        entry = next(p for p in read_manifest(cfg["sweep_dir"])["points"] if p["index"] == cfg.get("point"))
        shape_saved, overrides = entry.get("shape"), list(entry.get("overrides") or [])
    except Exception:  # noqa: BLE001 - a lone run, or its sweep is gone: the config says the shape
        pass
    cfg = dict(cfg, sweep_dir=str(out.absolute()), point=0)
    profile = ClusterProfile.from_config(cfg["cluster"])
    shape = JobShape.from_dict(shape_saved) if shape_saved else resolve_shape(cfg, profile)
    try:
        validate_request(profile, shape)
    except ValueError as exc:
        print(f"vit-dt rerun: {exc}", file=sys.stderr)
        return 2
    block = json.loads(json.dumps(provenance.of(record) or provenance.read_point(run_dir) or {}))
    block.setdefault(provenance.REQUEST, {})["command_line"] = provenance.command_line(["vit-dt", "rerun", *argv])
    block[provenance.REQUEST]["rerun_of"] = str(run_dir.resolve())
    block.setdefault(provenance.CODE, {})["snapshot"] = snapshot
    out.mkdir(parents=True)
    point = SweepPoint(index=0, overrides=overrides, cfg=cfg, run_dir=out / "points" / "0", profile=profile,
                       shape=shape)
    try:
        manifest = submit_sweep(out, [point], argv=None, reuse_code=(snapshot, block))
    except ValueError as exc:
        print(f"vit-dt rerun: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(manifest)))
    return 0


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    args = list(argv)
    dry_run, on_slurm = "--dry-run" in args, "--slurm" in args
    args = [a for a in args if a not in ("--dry-run", "--slurm")]
    out = None
    if "--out" in args:
        at = args.index("--out")
        if at + 1 >= len(args):
            print("vit-dt rerun: --out needs a directory", file=sys.stderr)
            return 2
        out = Path(args[at + 1])
        args = args[:at] + args[at + 2:]
    unknown = [a for a in args if a.startswith("-")]
    if unknown or len(args) != 1:
        print(f"vit-dt rerun: expected one RUN_DIR_OR_RESULT and --slurm/--out/--dry-run, got {' '.join(argv)}",
              file=sys.stderr)
        return 2
    try:
        run_dir, record = locate(Path(args[0]))
        cfg = recorded_config(run_dir, record)
    except RerunError as exc:
        print(f"vit-dt rerun: {exc}", file=sys.stderr)
        return 2
    snapshot, notes = checks(run_dir, record, cfg)
    for note in notes:
        print(f"vit-dt rerun: note: {note}", flush=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = out or run_dir / "reruns" / stamp
    if out.exists():
        print(f"vit-dt rerun: {out} exists; pass --out <new dir>", file=sys.stderr)
        return 2
    code = f"the snapshot {snapshot}" if snapshot else "the installed code"
    if dry_run:
        print(f"vit-dt rerun: would run {run_dir} again into {out} with {code} (nothing run: --dry-run)")
        return 0
    if on_slurm:
        return submit(run_dir, record, cfg, out, argv, snapshot)
    out, world = prepare(run_dir, record, cfg, out, argv)
    print(f"vit-dt rerun: {run_dir} again, {world} local rank(s), with {code}", flush=True)
    print(f"run directory: {out}", flush=True)
    status = run_here(out, world, snapshot)
    print(f"result: {out / 'result.json'}", flush=True)
    if status != 0:
        print(f"vit-dt rerun: the rerun failed (exit {status}); see {shlex.quote(str(out))}", file=sys.stderr)
    return 1 if status else 0
