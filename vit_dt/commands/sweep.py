"""`vit-dt sweep [hydra overrides] [--dry-run] [--no-verify-data]`, `vit-dt sweep --resume SWEEP_DIR [--dry-run]`:
a Hydra multirun over conf/ through vit-dt's launcher.

    vit-dt sweep cluster=localslurm resources.layout=inter resources.gpus=1,2,4
    vit-dt sweep cluster=vaughan resources.gpus_per_node=1,2,4,8 --dry-run
    vit-dt sweep --resume outputs/sweeps/20250101-120000     # run again only what did not complete

Every comma list is swept; points are grouped by resource shape, one Slurm job array per shape, and the
command returns once they are queued (see docs/sweeps.md). Running the same command again with the same
hydra.sweep.dir is the same as --resume: completed points are skipped, queued/running ones left alone, the
rest (failed, timed out, cancelled, never submitted) resubmitted into their run directories (docs/reliability.md).
File datasets are verified on this node before anything is queued; --no-verify-data skips that for roots only
compute nodes see. Exit status 2: nothing was submitted; 3: sbatch failed part-way (the jobs queued
before are in sweep.json; --resume submits the rest); 1: a point of a cluster=local sweep failed.

Options:
  --remote [[USER@]HOST[:PORT]]
                           submit from this machine to a login node over SSH (default: the profile's
                           cluster.remote.host): the code is frozen here and shipped; `vit-dt status|results|report|
                           sync --remote` follow it (docs/clusters.md#remote-submission)
  --dry-run                render every job's sbatch script, submit nothing
  --no-verify-data         do not verify file datasets on this node
  --no-snapshot            do not freeze the code into <sweep dir>/code/: jobs import the installed code as it
                           is when each starts (sweep.json says so)
  --resume SWEEP_DIR       run again only what did not complete
  --calibrate-from SWEEP_OR_RESULT
                           estimate each point's time and GPU-hours from these finished runs (the scaling model);
                           without it the estimate is a guess from the peak-FLOPs table (docs/sweeps.md#estimates)
  --max-gpu-hours H        refuse the sweep (exit 2, nothing queued) when its estimate exceeds H GPU-hours
  --cfg, -c job|hydra|all  print every point's composed config (one YAML document each) and exit: nothing queued
  --resolve                resolve interpolations in what --cfg prints (alone: --cfg job --resolve)
  -m, --multirun           accepted as in Hydra; a sweep is always a multirun
  -h, --help               this help
"""
from __future__ import annotations

import sys

USAGE = __doc__


OPTIONS = ("--remote", "--dry-run", "--no-verify-data", "--no-snapshot", "--resume", "--calibrate-from", "--max-gpu-hours",
           "--cfg", "-c", "--resolve", "-m", "--multirun", "-h", "--help")


def usage() -> str:
    """USAGE, then the config groups and their options, read from conf/ (as Hydra's own --help lists them)."""
    from vit_dt.config.groups import groups_help

    return f"{USAGE.rstrip()}\n\n{groups_help()}"


def build_overrides(args: list[str], dry_run: bool, verify_data: bool = True,
                    cost: dict[str, str] | None = None, snapshot: bool = True) -> list[str]:
    """Hydra overrides for the multirun: vit-dt's launcher (points are validated together and submitted as one
    array per shape; no other launcher knows how) and its sweeper, unless another sweeper was picked."""
    overrides = list(args)
    chosen = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[-1] for a in overrides}
    if chosen.get("hydra/launcher", "vitdt") != "vitdt":
        raise ValueError(f"hydra/launcher={chosen['hydra/launcher']} is invalid for vit-dt sweep; valid: vitdt (the "
                         f"default: it validates every point, then submits one Slurm array per resource shape)")
    # The vitdt sweeper skips Hydra's duplicate up-front composition of every point (the launcher does it).
    for group in ("hydra/sweeper", "hydra/launcher"):
        if group not in chosen:
            overrides.insert(0, f"{group}=vitdt")
    if dry_run:
        overrides.append("hydra.launcher.dry_run=true")
    if not verify_data:
        overrides.append("hydra.launcher.verify_data=false")
    for key, value in (cost or {}).items():   # quoted: a path is one string whatever it holds
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        shown = f"'{quoted}'" if key == "calibrate_from" else value
        overrides.append(f"hydra.launcher.{key}={shown}")
    if not snapshot:
        overrides.append("hydra.launcher.snapshot=false")
    return overrides


def take_cost_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """--calibrate-from PATH and --max-gpu-hours H out of `args`, checked (ValueError names the bad value)."""
    cost: dict[str, str] = {}
    for option, key in (("--calibrate-from", "calibrate_from"), ("--max-gpu-hours", "max_gpu_hours")):
        if option not in args:
            continue
        at = args.index(option)
        if at + 1 >= len(args) or args[at + 1].startswith("--"):
            raise ValueError(f"{option} needs a value" + (": a finished sweep directory, results.jsonl or "
                                                          "result.json" if key == "calibrate_from" else
                                                          ": a number of GPU-hours > 0, e.g. 100"))
        value = args[at + 1]
        args = args[:at] + args[at + 2:]
        if key == "calibrate_from":
            from pathlib import Path

            if not Path(value).exists():
                raise ValueError(f"--calibrate-from {value}: no such file or directory (a finished sweep directory, "
                                 f"results.jsonl or result.json)")
            value = str(Path(value).absolute())
        else:
            try:
                hours = float(value)
            except ValueError:
                hours = float("nan")
            if not hours > 0 or hours == float("inf"):
                raise ValueError(f"--max-gpu-hours {value!r} is invalid: it must be a number of GPU-hours > 0")
        cost[key] = value
    return cost, args


def run_sweep(overrides: list[str]) -> list:
    """Run the multirun; returns Hydra's JobReturns (their return_value: the manifest's point records)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vit_dt.paths import conf_dir

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="vit-dt"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        batches = hydra.multirun(config_name="config", task_function=_not_called, overrides=overrides,
                                 with_log_configuration=False)
    return [ret for batch in batches for ret in batch]


def main(argv: list[str]) -> int:
    from vit_dt.commands.options import OptionError, print_config, take_cfg_options

    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    from vit_dt.commands import remote

    given, destination, rest = remote.take_destination(argv)
    if given:   # -m/--multirun: Hydra's habit; a sweep always is one
        return remote.sweep(destination, [a for a in rest if a not in ("-m", "--multirun")], argv)
    dry_run = "--dry-run" in argv
    verify_data = "--no-verify-data" not in argv
    snapshot = "--no-snapshot" not in argv
    # -m/--multirun: Hydra's habit; a sweep always is one
    args = [a for a in argv if a not in ("--dry-run", "--no-verify-data", "--no-snapshot", "-m", "--multirun")]
    try:
        cfg_type, resolve, args = take_cfg_options(args)
    except OptionError as exc:
        print(f"vit-dt sweep: {exc}", file=sys.stderr)
        return 2
    try:
        cost, args = take_cost_options(args)
    except ValueError as exc:
        print(f"vit-dt sweep: {exc}", file=sys.stderr)
        return 2
    resume_dir = None
    if "--resume" in args:
        at = args.index("--resume")
        if at + 1 >= len(args) or args[at + 1].startswith("--"):
            print("vit-dt sweep: --resume needs the sweep directory (the one holding sweep.json)", file=sys.stderr)
            return 2
        resume_dir = args[at + 1]
        args = args[:at] + args[at + 2:]
    from vit_dt.commands.options import unknown_options, unknown_options_message

    unknown = unknown_options(args, OPTIONS)
    if unknown:
        print(unknown_options_message("sweep", unknown, OPTIONS), file=sys.stderr)
        return 2
    if cfg_type is not None:
        if resume_dir is not None:
            print("vit-dt sweep: --cfg prints a new sweep's configs; a resumed point's is <run dir>/config.yaml",
                  file=sys.stderr)
            return 2
        return print_config("sweep", args, cfg_type, resolve, sweep=True)
    if resume_dir is not None:
        if cost:
            print("vit-dt sweep: --resume keeps each point's saved time limit and estimate; drop --calibrate-from "
                  "and --max-gpu-hours", file=sys.stderr)
            return 2
        return _resume(resume_dir, args, dry_run, verify_data)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vit_dt.slurm.submit import PartialSubmissionError

    try:
        returns = run_sweep(build_overrides(args, dry_run, verify_data, cost, snapshot))
    except PartialSubmissionError as exc:
        print(f"vit-dt sweep: error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, HydraException, OmegaConfBaseException) as exc:
        from vit_dt.config.compose import error_message

        print(f"vit-dt sweep: error: {error_message(exc)}", file=sys.stderr)
        return 2
    return 0 if dry_run else _local_failures([r.return_value for r in returns])


def _resume(sweep_dir: str, overrides: list[str], dry_run: bool, verify_data: bool) -> int:
    from vit_dt.slurm.manifest import ManifestError
    from vit_dt.slurm.resume import resume_sweep

    if overrides:
        print(f"vit-dt sweep: --resume takes every point's config from {sweep_dir}; drop the overrides "
              f"{overrides} (a changed sweep belongs in a new directory)", file=sys.stderr)
        return 2
    from vit_dt.slurm.submit import PartialSubmissionError

    try:
        manifest = resume_sweep(sweep_dir, dry_run=dry_run, verify_data=verify_data)
    except PartialSubmissionError as exc:
        print(f"vit-dt sweep: error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, ManifestError, OSError) as exc:  # SweepError, ProfileError, ... are ValueErrors
        print(f"vit-dt sweep: error: {exc}", file=sys.stderr)
        return 2
    return 0 if dry_run else _local_failures(manifest["points"])   # a dry run's manifest keeps the old states


def _local_failures(points: list) -> int:
    failed_local = [p["index"] for p in points if isinstance(p, dict) and p.get("local_state") == "failed"]
    if failed_local:
        print(f"vit-dt sweep: local point(s) failed: {failed_local}", file=sys.stderr)
        return 1
    return 0


def _not_called(cfg) -> None:  # pragma: no cover - the vitdt launcher never calls Hydra's task function
    raise RuntimeError("vit-dt sweep runs points through its launcher (hydra/launcher=vitdt), not the task function")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
