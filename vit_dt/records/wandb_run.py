"""One W&B run per training run: rank 0 only, offline by default, never a secret on disk.

Compute nodes usually have no network, so runs are written offline into the run directory and uploaded later
from a login node with `vit-dt sync SWEEP_DIR`. A training run keeps one W&B run id, stored in its run directory
(`wandb-run-id.txt`), across Slurm requeues and restarts: every attempt writes one more segment of the same run
(W&B's `resume="allow"`), and its steps continue after the last step the earlier segments logged.

The API key is only ever read by wandb itself from the environment; vit-dt never passes it, and scrubs it (and
anything that looks like a secret) out of the config before W&B writes it. A W&B failure never stops training:
the run degrades to a no-op with a warning, and the results store keeps the numbers. See docs/wandb.md.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vit_dt.config.choices import WANDB_MODES
from vit_dt.records.secrets import scrub_secrets, secret_values
from vit_dt.records.wandb_files import last_logged_step, run_id_for, segment_files

log = logging.getLogger("vit_dt.wandb")
# What a run's config says when it says nothing: conf/wandb/default.yaml for a composed config; these two serve the
# report's W&B run, whose config comes from records (an older record may carry no wandb node).
DEFAULT_MODE = "offline"
DEFAULT_PROJECT = "vit-dt"
RESUME_MODE = "allow"   # resume the run when W&B knows the id, create it otherwise (offline: always a new segment)


# ---------------------------------------------------------------- configuration

def resolve_mode(cfg: Mapping[str, Any]) -> str:
    """cfg.wandb.mode if set (the default config reads $WANDB_MODE), else $WANDB_MODE, else offline."""
    mode = (cfg.get("wandb") or {}).get("mode") or os.environ.get("WANDB_MODE") or DEFAULT_MODE
    mode = str(mode).strip().lower()
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={mode!r} is not valid; valid: {', '.join(WANDB_MODES)} "
                         f"(set it with wandb.mode=... or $WANDB_MODE)")
    return mode


def flatten(tree: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"lr": 1e-3}} -> {"trainer.lr": 1e-3}: one W&B config column per Hydra override key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def flat_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config W&B records at init: flattened, then scrubbed (key names are checked at every level)."""
    return scrub_secrets(flatten(scrub_secrets(cfg)))


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(str(item)[:64], None)     # W&B rejects tags longer than 64 characters
    return list(seen)


# ---------------------------------------------------------------- the run

class WandbRun:
    """A W&B run, or a no-op (rank != 0, mode disabled, or after a W&B failure) that writes nothing."""

    def __init__(self, run: Any = None, mode: str = "disabled", run_id: str | None = None,
                 logged_through: int | None = None, segment: int = 1):
        self._run, self.mode = run, mode
        self.run_id = run_id if run is None else getattr(run, "id", run_id)
        # Steps up to here are already in this W&B run (earlier segments): rows at them are skipped, not re-logged.
        self.logged_through = logged_through
        self.segment = segment          # 1 for the first start of a run, n for its (n-1)-th restart
        self._last_step: int | None = None
        self._warned_step = False
        self._skipped = 0

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def dir(self) -> Path | None:
        """The W&B run directory (offline-run-...), for `vit-dt sync` and tests; None when inactive."""
        return Path(self._run.dir).parent if self._run is not None else None

    @classmethod
    def start(cls, cfg: Mapping[str, Any], run_dir: Path, *, rank: int, group: str | None, job_type: str,
              tags: list[str], name: str | None, resumable: bool = False) -> "WandbRun":
        """Rank 0's W&B run (a no-op on other ranks, when disabled, or when W&B fails).

        resumable: the run's id comes from `<run_dir>/wandb-run-id.txt` (created on the first start) and W&B is
        started with `resume="allow"`, so a restarted training run continues the same W&B run: a new segment
        (offline: a new offline-run-* folder with the same id) whose rows start after the earlier segments' last
        step. Training runs use it; one-off runs (the report's) do not.
        """
        mode = resolve_mode(cfg)           # a bad mode is a config error on every rank, so check it first
        if rank != 0 or mode == "disabled":
            return cls()
        wb_cfg = cfg.get("wandb") or {}
        secrets = secret_values()
        init_kwargs = dict(
            project=wb_cfg.get("project") or DEFAULT_PROJECT,
            entity=wb_cfg.get("entity") or None,
            group=scrub_secrets(group or wb_cfg.get("group") or None, secrets),
            job_type=scrub_secrets(job_type, secrets),
            tags=scrub_secrets(_dedupe(list(tags)), secrets),
            name=scrub_secrets(name, secrets),
            config=flat_config(cfg),
            dir=str(run_dir),
        )
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run_id, logged_through, segment = None, None, 1
        if resumable:
            try:
                run_id = run_id_for(run_dir)
            except OSError as error:
                log.warning("cannot keep a W&B run id in %s (%s); this attempt gets a W&B run of its own",
                            run_dir, error)
            if run_id is not None:
                earlier = segment_files(run_dir, run_id)
                logged_through, segment = last_logged_step(earlier), len(earlier) + 1
                init_kwargs.update(id=run_id, resume=RESUME_MODE)
        run = cls._init(mode, init_kwargs)
        if run is None and mode == "online":
            log.warning("W&B online init failed; writing the run offline instead (upload it with `vit-dt sync`)")
            mode, run = "offline", cls._init("offline", init_kwargs)
        if run is None:
            return cls()
        if getattr(run, "resumed", False):  # online, the run known to W&B: it reports where its history ends
            server_step = int(getattr(run, "step", 0) or 0) - 1
            if server_step >= 0:
                logged_through = max(server_step, logged_through if logged_through is not None else -1)
        if segment > 1 or logged_through is not None:
            log.info("W&B run %s continues (segment %d%s)", run_id, segment,
                     f"; steps up to {logged_through} are already logged" if logged_through is not None else "")
        return cls(run, mode, run_id=run_id, logged_through=logged_through, segment=segment)

    def resumed_from(self, step: int | None) -> None:
        """Training resumed from a checkpoint at global step `step`: rows continue after it (the steps up to it
        belong to earlier attempts; RunRecorder.resumed_from first logs the epoch rows they left off disk)."""
        if self._run is None or step is None:
            return
        if self.logged_through is None or step > self.logged_through:
            self.logged_through = step

    @staticmethod
    def _init(mode: str, kwargs: dict) -> Any:
        try:
            import wandb

            return wandb.init(mode=mode, **kwargs)
        except Exception as error:  # noqa: BLE001 - W&B must never stop training
            log.warning("W&B init (mode=%s) failed, continuing without W&B: %s", mode, error)
            return None

    def _guard(self, what: str, call) -> None:
        if self._run is None:
            return
        try:
            call()
        except Exception as error:  # noqa: BLE001
            log.warning("W&B %s failed, W&B is off for the rest of this run: %s", what, error)
            self._run = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """One history row at `step`; rows with the same step merge. Steps must not go back: W&B drops such rows."""
        if self._run is None:
            return
        if self.logged_through is not None and step <= self.logged_through:
            # Redone work of a restarted run (the partial epoch a requeue interrupted): its rows are in W&B already.
            if self._skipped == 0:
                log.info("W&B: not logging steps up to %d again (an earlier attempt of this run logged them)",
                         self.logged_through)
            self._skipped += 1
            return
        if self._last_step is not None and step < self._last_step and not self._warned_step:
            log.warning("W&B drops history rows whose step goes back (step %d after %d); log with steps that "
                        "only grow", step, self._last_step)
            self._warned_step = True
        self._last_step = step if self._last_step is None else max(step, self._last_step)
        values = {k: v for k, v in metrics.items() if v is not None}
        self._guard("log", lambda: self._run.log(values, step=step))

    def add_config(self, values: Mapping[str, Any]) -> None:
        """More of the run's config (nested values flattened as the config's own: provenance.code.commit, ...)."""
        flat = scrub_secrets(flatten(values))
        self._guard("config", lambda: self._run.config.update(flat, allow_val_change=True))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        values = scrub_secrets({k: v for k, v in metrics.items() if v is not None})
        self._guard("summary", lambda: self._run.summary.update(values))

    def finish(self, exit_code: int = 0) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            log.warning("W&B finish failed: %s", error)
