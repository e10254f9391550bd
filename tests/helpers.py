"""Shared by the tests: running vit-dt as a user would (its CLI, in a subprocess) and reading what it wrote."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

from omegaconf import OmegaConf

from vit_dt.config import compose, to_container
from vit_dt.config.schema import RootSchema
from vit_dt.config.typed import OPTION_KEY, typed_group

REPO = Path(__file__).resolve().parent.parent   # the checkout the tests run from

# Fast, learnable settings for the embedded digits dataset on a 2-core CPU.
DIGITS_FAST = ["dataset=digits", "model=vit_tiny", "trainer.micro_batch=16", "optimizer.lr=2e-3", "wandb.mode=disabled"]


@functools.lru_cache(maxsize=None)
def _composed_group(group: str, option: str | None) -> dict:
    return to_container(compose([f"{group}={option}"] if option else []))[group]


def typed(group: str, **keys):
    """The typed config of `group` (what a rank hands the component: vit_dt.config.typed), as composed from conf/
    with `keys` changed. dataset/optimizer/scaling start from the option named by `keys` (name=, mode=); a name
    conf/ has no option for (an invalid one, for a test of its error) starts from the keys all options share."""
    option = keys.get(OPTION_KEY.get(group, ""))
    if option is None or (REPO / "conf" / group / f"{option}.yaml").exists():
        return typed_group(group, {**_composed_group(group, option), **keys})
    shared = {f.name for f in dataclasses.fields(typing.get_type_hints(RootSchema)[group])}
    return typed_group(group, {**{k: v for k, v in _composed_group(group, None).items() if k in shared}, **keys})


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_dt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """`vit-dt ARGS` in this process (no interpreter start-up, ~2 s saved a call): for the torch-free commands that
    only print (`sweep --dry-run`, `--cfg`, `--help`). Anything that starts ranks or waits on Slurm: run_cli."""
    import contextlib
    import io

    from vit_dt import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:     # argparse's refusals and --help
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["vit-dt", *args], code, out.getvalue(), err.getvalue())


def run_dir_from_output(stdout: str) -> Path:
    for line in stdout.splitlines():
        if line.startswith("run directory: "):
            return Path(line.split(": ", 1)[1].strip())
    raise AssertionError(f"no run directory in output:\n{stdout}")


def read_result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def write_run_config(run_dir: Path, overrides: list[str]) -> dict:
    """A run directory ready for `python -m vit_dt.run.rank RUN_DIR` (what `vit-dt train` prepares)."""
    cfg = to_container(compose(overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    return cfg


def fresh_user_env(tmp_path: Path) -> dict[str, str]:
    """A newcomer's environment for a CLI subprocess: outputs under tmp_path through VIT_DT_OUT_DIR (what
    conf/config.yaml's out_dir reads), W&B at its defaults (offline) with its own files kept under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(VIT_DT_OUT_DIR=str(tmp_path / "outputs"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    return env


def isolate_wandb(tmp_path: Path, monkeypatch) -> None:
    """Keep W&B's own settings and caches out of $HOME, and start a test without a W&B mode or key in the env."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
