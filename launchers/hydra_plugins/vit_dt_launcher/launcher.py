"""The Hydra Launcher: compose every point, validate them ALL, then hand them to vit_dt.slurm.submit.

Unlike hydra-submitit-launcher, points with different resource shapes go into different job arrays, and
`launch` returns as soon as the arrays are queued (nothing waits on the login node). The task function Hydra
passes in is not called: each job runs `entry(cfg, run_dir)` (default vit_dt.run.rank:run_rank, DEFAULT_ENTRY) through submitit.

Heavy imports stay inside methods: Hydra imports every plugin module whenever it starts.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.vit_dt_launcher.compose import PointComposer
from vit_dt import atomic
from vit_dt.slurm.job_entry import DEFAULT_ENTRY

POINTS_SUBDIR = "points"
HYDRA_DUMP = "multirun.yaml"


class VitDtLauncher(Launcher):
    def __init__(self, dry_run: bool = False, entry: str = DEFAULT_ENTRY, max_num_timeout: int = 3,
                 verify_data: bool = True, calibrate_from: str | None = None,
                 max_gpu_hours: float | None = None, snapshot: bool = True, shipped_snapshot: bool = False) -> None:
        self.dry_run = bool(dry_run)
        self.calibrate_from = calibrate_from
        self.max_gpu_hours = None if max_gpu_hours is None else float(max_gpu_hours)
        self.entry = entry
        self.max_num_timeout = int(max_num_timeout)
        self.verify_data = bool(verify_data)
        self.snapshot = bool(snapshot)
        self.shipped_snapshot = bool(shipped_snapshot)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vit_dt.slurm.manifest import manifest_path

        assert self.config is not None and self.hydra_context is not None
        tic = time.perf_counter()
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        _scrub_hydra_dump(sweep_dir, self._typed_overrides())
        if manifest_path(sweep_dir).exists():  # the same sweep again: idempotent, only what did not complete
            self._refuse_batches(job_overrides, initial_job_idx)
            return self._resume(sweep_dir, job_overrides)
        self._refuse_batches(job_overrides, initial_job_idx)
        return self._launch_new(sweep_dir, job_overrides, tic)   # refused: the sweeper removes the directory

    def _refuse_batches(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        """Refused at the first batch, before anything is queued: a later batch would find part of the sweep queued."""
        from vit_dt.slurm.submit import SweepError

        assert self.config is not None
        batch_size = (self.config.hydra.get("sweeper") or {}).get("max_batch_size")
        if initial_job_idx != 0 or (batch_size and len(job_overrides) >= int(batch_size)):
            raise SweepError("hydra.sweeper.max_batch_size split this sweep into batches; vit-dt validates and "
                             "submits all points at once (one manifest, one array per shape): leave it null")

    def _launch_new(self, sweep_dir: Path, job_overrides: Sequence[Sequence[str]], tic: float) -> Sequence[JobReturn]:
        from vit_dt.config.compose import error_message
        from vit_dt.slurm.job_entry import load_entry
        from vit_dt.slurm.submit import SweepError, submit_sweep

        assert self.config is not None and self.hydra_context is not None
        load_entry(self.entry)  # a typo in the entry fails here, not in every job
        composer = PointComposer(self.hydra_context.config_loader, self.config)
        points, errors = [], []
        for index, overrides in enumerate(job_overrides):
            try:
                points.append(self._point(composer, index, list(overrides), sweep_dir))
            except (ValueError, HydraException, OmegaConfBaseException) as exc:  # bad shape, profile, config
                shown = " ".join(filter_overrides(overrides)) or "(no overrides)"
                errors.append(f"  point {index} [{shown}]: {error_message(exc)}")
        if errors:
            raise SweepError("nothing was submitted; fix these point(s) first:\n" + "\n".join(errors))
        if self.verify_data:   # a dry run too: it should fail where the real sweep would
            from vit_dt.data.verify import dataset_problems

            problems = dataset_problems(p.cfg["dataset"] for p in points)
            if problems:
                raise SweepError("nothing was submitted; the data is not usable from this node:\n  "
                                 + "\n  ".join(problems)
                                 + "\n(if the root exists only on compute nodes, pass --no-verify-data)")
        from vit_dt.commands.sweep_cost import plan_costs

        # estimates, time_min=auto limits and the budget: before anything is written or queued
        notes = plan_costs(points, calibrate_from=self.calibrate_from, max_gpu_hours=self.max_gpu_hours)
        manifest = submit_sweep(sweep_dir, points, entry=self.entry, dry_run=self.dry_run,
                                max_num_timeout=self.max_num_timeout, argv=self._argv(),
                                prepare_seconds=time.perf_counter() - tic, snapshot=self.snapshot,
                                shipped=self.shipped_snapshot)
        _print_summary(manifest, self.max_num_timeout)
        for note in notes:
            print(note)
        by_index = {p["index"]: p for p in manifest["points"]}
        returns = []
        for point in points:
            ret = JobReturn(overrides=point.overrides, working_dir=str(point.run_dir), task_name="vit-dt",
                            status=JobStatus.COMPLETED)
            ret.return_value = by_index[point.index]
            returns.append(ret)
        return returns

    def _resume(self, sweep_dir: Path, job_overrides: Sequence[Sequence[str]]) -> Sequence[JobReturn]:
        from vit_dt.slurm.manifest import manifest_path, read_manifest
        from vit_dt.slurm.resume import resume_sweep
        from vit_dt.slurm.submit import SweepError

        assert self.config is not None
        manifest = read_manifest(sweep_dir)
        argv = self._argv()
        if manifest.get("dry_run") or self.entry != manifest.get("entry", self.entry):
            raise SweepError(f"{manifest_path(sweep_dir)} exists: {sweep_dir} already holds a "
                             f"{'dry run' if manifest.get('dry_run') else 'sweep with another entry'}; "
                             f"pass hydra.sweep.dir=<new dir>")
        if manifest.get("argv") is not None and list(manifest["argv"]) != argv:
            raise SweepError(f"{sweep_dir} already holds a sweep made with other overrides\n  there: "
                             f"{' '.join(manifest['argv'])}\n  now:   {' '.join(argv)}\n"
                             f"resume it with `vit-dt sweep --resume {shlex.quote(str(sweep_dir))}`, or pass hydra.sweep.dir=<new dir>")
        manifest = resume_sweep(sweep_dir, dry_run=self.dry_run, verify_data=self.verify_data)
        by_index = {p["index"]: p for p in manifest["points"]}
        returns = []
        for index, overrides in enumerate(job_overrides):
            point = by_index.get(index, {})
            ret = JobReturn(overrides=list(overrides), working_dir=point.get("run_dir"), task_name="vit-dt",
                            status=JobStatus.COMPLETED)
            ret.return_value = point
            returns.append(ret)
        return returns

    def _typed_overrides(self) -> list[str]:
        """The command line's overrides as typed: `${oc.env:...}` not resolved."""
        assert self.config is not None
        return [str(o) for o in OmegaConf.to_container(self.config.hydra.overrides.task, resolve=False)]

    def _argv(self) -> list[str]:
        """The typed overrides with secrets redacted: what sweep.json keeps to recognise the same sweep again."""
        from vit_dt.records.secrets import scrub_override

        return [scrub_override(o) for o in self._typed_overrides()]

    def _point(self, composer: PointComposer, index: int, overrides: list[str], sweep_dir: Path) -> Any:
        from vit_dt.config import validate
        from vit_dt.slurm.container import job_paths
        from vit_dt.slurm.profile import ClusterProfile
        from vit_dt.slurm.shape import resolve_shape, validate_request
        from vit_dt.slurm.submit import SweepPoint

        cfg = OmegaConf.to_container(composer.job_config(overrides), resolve=True)
        run_dir = sweep_dir / POINTS_SUBDIR / str(index)
        cfg["sweep_dir"] = str(sweep_dir)
        cfg["point"] = index
        profile = ClusterProfile.from_config(cfg["cluster"])
        shape = resolve_shape(cfg, profile)
        validate_request(profile, shape, job_paths(cfg))
        validate(cfg, shape.world_size)
        return SweepPoint(index=index, overrides=overrides, cfg=cfg, run_dir=run_dir, profile=profile, shape=shape)


def _scrub_hydra_dump(sweep_dir: Path, typed_overrides: Sequence[str]) -> None:
    """Hydra saves the multirun's config, command line included, as <sweep>/multirun.yaml before any launcher runs:
    redact what the command line typed under a secret-looking key, and $WANDB_API_KEY's value."""
    from vit_dt.records.secrets import REDACTED, looks_secret, secret_values

    dump = sweep_dir / HYDRA_DUMP
    if not dump.is_file():
        return
    typed = [o.partition("=") for o in typed_overrides]
    secrets = [value for key, sep, value in typed if sep and value and looks_secret(key)] + secret_values()
    text = original = dump.read_text()
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    if text != original:
        atomic.write_text(dump, text)


def _print_summary(manifest: dict[str, Any], max_requeues: int) -> None:
    from vit_dt.commands.sweep_cost import cost_lines
    from vit_dt.slurm.submit import summary_lines

    print("\n".join(summary_lines(manifest) + cost_lines(manifest, max_requeues)))
