"""The Hydra Launcher: compose every point, validate them ALL, then hand them to vit_dt.slurm.submit.

Unlike hydra-submitit-launcher, points with different resource shapes go into different job arrays, and
`launch` returns as soon as the arrays are queued (nothing waits on the login node). The task function Hydra
passes in is not called: each job runs `entry(cfg, run_dir)` (default vit_dt.train:run_rank) through submitit.

Heavy imports stay inside methods: Hydra imports every plugin module whenever it starts.
"""
from __future__ import annotations

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

POINTS_SUBDIR = "points"


class VitDtLauncher(Launcher):
    def __init__(self, dry_run: bool = False, entry: str = "vit_dt.train:run_rank", max_num_timeout: int = 3) -> None:
        self.dry_run = bool(dry_run)
        self.entry = entry
        self.max_num_timeout = int(max_num_timeout)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vit_dt.slurm.job_entry import load_entry
        from vit_dt.slurm.submit import SweepError, submit_sweep

        assert self.config is not None and self.hydra_context is not None
        if initial_job_idx != 0:
            raise SweepError("hydra.sweeper.max_batch_size split this sweep into batches; vit-dt validates and "
                             "submits all points at once (one manifest, one array per shape): leave it null")
        tic = time.perf_counter()
        setup_globals()
        load_entry(self.entry)  # a typo in the entry fails here, not in every job
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        composer = PointComposer(self.hydra_context.config_loader, self.config)
        points, errors = [], []
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            try:
                points.append(self._point(composer, index, list(overrides), sweep_dir))
            except (ValueError, HydraException, OmegaConfBaseException) as exc:  # bad shape, profile, config
                shown = " ".join(filter_overrides(overrides)) or "(no overrides)"
                errors.append(f"  point {index} [{shown}]: {exc}")
        if errors:
            raise SweepError("nothing was submitted; fix these point(s) first:\n" + "\n".join(errors))
        manifest = submit_sweep(sweep_dir, points, entry=self.entry, dry_run=self.dry_run,
                                max_num_timeout=self.max_num_timeout, argv=list(self.config.hydra.overrides.task),
                                prepare_seconds=time.perf_counter() - tic)
        _print_summary(manifest)
        by_index = {p["index"]: p for p in manifest["points"]}
        returns = []
        for point in points:
            ret = JobReturn(overrides=point.overrides, working_dir=str(point.run_dir), task_name="vit-dt",
                            status=JobStatus.COMPLETED)
            ret.return_value = by_index[point.index]
            returns.append(ret)
        return returns

    def _point(self, composer: PointComposer, index: int, overrides: list[str], sweep_dir: Path) -> Any:
        from vit_dt.config import validate
        from vit_dt.config.shape import resolve_shape
        from vit_dt.slurm.profile import ClusterProfile, validate_request
        from vit_dt.slurm.submit import SweepPoint

        cfg = OmegaConf.to_container(composer.job_config(overrides), resolve=True)
        run_dir = sweep_dir / POINTS_SUBDIR / str(index)
        cfg["sweep_dir"] = str(sweep_dir)
        cfg["point"] = index
        profile = ClusterProfile.from_config(cfg["cluster"])
        shape = resolve_shape(cfg, profile)
        validate_request(profile, shape)
        validate(cfg, shape.world_size)
        return SweepPoint(index=index, overrides=overrides, cfg=cfg, run_dir=run_dir, profile=profile, shape=shape)


def _print_summary(manifest: dict[str, Any]) -> None:
    sweep_dir = manifest["sweep_dir"]
    jobs = manifest["jobs"]
    slurm_jobs = [j for j in jobs if j["scheduler"] == "slurm"]
    verb = "rendered (dry run, nothing submitted)" if manifest["dry_run"] else "submitted"
    if slurm_jobs:
        print(f"vit-dt sweep: {len(manifest['points'])} point(s) -> {len(slurm_jobs)} Slurm job(s) {verb} "
              f"in {manifest['submit_seconds']:.2f} s")
    for job in slurm_jobs:
        kind = f"array of {len(job['points'])}" if job["array"] else "single job"
        ident = f"job {job['job_id']}" if job["job_id"] else f"job group {job['group']}"
        shape = job["shape"]
        print(f"  {ident} ({kind}): {shape['nodes']} node(s) x {shape['tasks_per_node']} rank(s), "
              f"partition {shape['partition']}, {shape['time_min']} min, points "
              f"{','.join(map(str, job['points']))}  script {job['script']}")
    print(f"sweep dir: {sweep_dir}")
    print(f"status:    vit-dt status {sweep_dir}")
