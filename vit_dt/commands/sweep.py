"""`vit-dt sweep [hydra overrides] [--dry-run]`: a Hydra multirun over conf/ through vit-dt's launcher.

    vit-dt sweep cluster=localslurm resources.layout=inter resources.gpus=1,2,4
    vit-dt sweep cluster=vaughan resources.gpus_per_node=1,2,4,8 --dry-run

Every comma list is swept; points are grouped by resource shape, one Slurm job array per shape, and the
command returns once they are queued (see docs/sweeps.md). Exit status 2: nothing was submitted.
"""
from __future__ import annotations

import sys

USAGE = __doc__


def build_overrides(args: list[str], dry_run: bool) -> list[str]:
    """Hydra overrides for the multirun: our launcher unless the user picked another one."""
    overrides = list(args)
    chosen = {a.split("=", 1)[0].lstrip("+~") for a in overrides}
    # The vitdt sweeper skips Hydra's duplicate up-front composition of every point (the launcher does it).
    for group in ("hydra/sweeper", "hydra/launcher"):
        if group not in chosen:
            overrides.insert(0, f"{group}=vitdt")
    if dry_run:
        overrides.append("hydra.launcher.dry_run=true")
    return overrides


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
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    dry_run = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    unknown = [a for a in args if a.startswith("--")]
    if unknown:
        print(f"vit-dt sweep: unknown option(s) {unknown}; valid: --dry-run, -h/--help "
              f"(everything else is a Hydra override, key=value)", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        returns = run_sweep(build_overrides(args, dry_run))
    except (ValueError, HydraException, OmegaConfBaseException) as exc:
        print(f"vit-dt sweep: error: {exc}", file=sys.stderr)
        return 2
    failed_local = [r.return_value["index"] for r in returns
                    if isinstance(r.return_value, dict) and r.return_value.get("local_state") == "failed"]
    if failed_local:
        print(f"vit-dt sweep: local point(s) failed: {failed_local}", file=sys.stderr)
        return 1
    return 0


def _not_called(cfg) -> None:  # pragma: no cover - the vitdt launcher never calls Hydra's task function
    raise RuntimeError("vit-dt sweep runs points through its launcher (hydra/launcher=vitdt), not the task function")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
