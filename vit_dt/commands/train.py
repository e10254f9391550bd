"""`vit-dt train [hydra overrides]`: one run on this machine, trainer.nproc local ranks."""
from __future__ import annotations

import datetime as _dt
import secrets
import sys
from pathlib import Path

from omegaconf import OmegaConf

from vit_dt.config import ConfigError, compose, to_container, validate
from vit_dt.config.compose import error_message
from vit_dt.records.result import RESULT_NAME
from vit_dt.records.secrets import scrub_secrets

HELP = """usage: vit-dt train [key=value ...] [--cfg job|hydra|all] [--resolve]

Runs one training run here. Examples:
  vit-dt train                                   # small ViT on the embedded digits dataset
  vit-dt train trainer.nproc=2 trainer.epochs=5  # 2 local ranks (gloo on CPU, NCCL on GPUs)
  vit-dt train dataset=cifar10 dataset.root=/data model=vit_b_16 precision=bf16
  vit-dt train model=vit_b_16 --cfg job          # print the composed config, run nothing

Options:
  --cfg, -c job|hydra|all  print the composed config (job: without Hydra's node) and exit
  --resolve                resolve interpolations in what --cfg prints (alone: --cfg job --resolve)
  -h, --help               this help
Keys: see docs/configuration.md."""


def usage() -> str:
    """HELP, then the config groups and their options, read from conf/ (as Hydra's own --help lists them)."""
    from vit_dt.config.groups import groups_help

    return f"{HELP}\n\n{groups_help()}"


def new_run_dir(out_dir: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(out_dir) / "runs" / f"{stamp}-{secrets.token_hex(3)}"


def compose_checked(overrides: list[str], world_size_key: str = "trainer.nproc"):
    """Compose and validate; raises ConfigError with a readable message for any bad input."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(overrides)
        container = to_container(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(error_message(exc)) from None
    validate(container, world_size=int(OmegaConf.select(cfg, world_size_key)))
    return container


OPTIONS = ("-h", "--help", "--cfg", "-c", "--resolve")
INTERRUPTED = 128 + 2       # the shell's exit status for a process ended by SIGINT (Ctrl-C)


def main(argv: list[str]) -> int:
    from vit_dt.commands import options

    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    if any(a in ("-m", "--multirun") for a in argv):
        print("vit-dt train: -m/--multirun: a multirun is `vit-dt sweep` (the same overrides, comma lists swept)",
              file=sys.stderr)
        return 2
    try:
        cfg_type, resolve, argv = options.take_cfg_options(argv)
    except options.OptionError as exc:
        print(f"vit-dt train: {exc}", file=sys.stderr)
        return 2
    unknown = options.unknown_options(argv, OPTIONS)
    if unknown:
        print(options.unknown_options_message("train", unknown, OPTIONS, example="trainer.epochs=1"), file=sys.stderr)
        return 2
    hydra_keys = [a for a in argv if a.lstrip("+~").startswith("hydra.")]
    if hydra_keys:
        # Hydra composes the config here but does not run the job, so its run settings would be silently ignored.
        print(f"vit-dt train: {hydra_keys[0]} has no effect: each run goes to <out_dir>/runs/<time>-<id>; "
              f"valid: out_dir=DIR to choose where runs go", file=sys.stderr)
        return 2
    if cfg_type is not None:
        return options.print_config("train", argv, cfg_type, resolve)
    try:
        cfg = compose_checked(argv)
    except ConfigError as exc:
        print(f"vit-dt train: {exc}", file=sys.stderr)
        return 2
    from vit_dt.data.verify import dataset_problems

    # `vit-dt sweep`'s data check, before a run directory or a rank exists: one line, not a traceback per rank
    problems = dataset_problems([cfg["dataset"]])
    if problems:
        print(f"vit-dt train: error: {'; '.join(line.strip() for line in problems[0].splitlines())}",
              file=sys.stderr)
        return 2
    run_dir = new_run_dir(cfg["out_dir"]).resolve()
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(scrub_secrets(cfg)), run_dir / "config.yaml")  # secrets come from the env
    _write_provenance(run_dir, argv)
    print(f"run directory: {run_dir}", flush=True)
    from vit_dt.run.local_launch import Interrupted, launch

    # One rank is a process too: the same run log, terminal filter and Ctrl-C handling as N ranks.
    try:
        code = launch(run_dir, int(cfg["trainer"]["nproc"]))
    except Interrupted:
        print(f"vit-dt train: interrupted; run dir kept at {run_dir}", file=sys.stderr, flush=True)
        return INTERRUPTED
    if code != 0:
        print(f"vit-dt train: run failed (exit status {code}); logs: {run_dir / 'logs'}", file=sys.stderr)
    print(f"result: {run_dir / RESULT_NAME}", flush=True)
    return 1 if code else 0


def _write_provenance(run_dir: Path, argv: list[str]) -> None:
    """The run's provenance as requested here (vit_dt/records/provenance.py); rank 0 completes it."""
    from vit_dt.records import provenance
    from vit_dt.slurm.snapshot import provenance_here

    block = provenance_here(["vit-dt", "train", *argv])
    provenance.write_point(run_dir, block, [a for a in argv if "=" in a and not a.startswith("-")])

