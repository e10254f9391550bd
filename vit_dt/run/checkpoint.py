"""Atomic epoch checkpoints and exact resume.

A checkpoint is a directory `<run_dir>/checkpoints/epoch-<E>/` (E = epochs completed) holding `state.pt` (model,
optimizer, scheduler, the run's measured epochs, and every rank's RNG state) and `MANIFEST.json` (sha256 of each file).
It is written under a temporary name and renamed into place, so a kill mid-write leaves the previous checkpoint as
the newest complete one. With ZeRO stages 1-3 the optimizer state is partitioned across ranks: DeepSpeed's own
`save_checkpoint` writes the shards inside the same temporary directory.

The data order needs no saving: it is a pure function of (seed, epoch).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vit_dt import atomic
from vit_dt.run.distributed import gather_to_all_ranks

log = logging.getLogger("vit_dt.run.checkpoint")
STATE_FILE, MANIFEST_FILE = "state.pt", "MANIFEST.json"
KEEP = 2


class CheckpointError(RuntimeError):
    pass


def _world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _cleaned_up_on_failure(tmp: Path):
    """A checkpoint write that fails leaves the previous checkpoints as they were and frees what it wrote (on a
    full disk the half-written one is what a resumed run needs room for). Where the write failed for lack of
    space but said so only in a RuntimeError (torch.save to a path, DeepSpeed's shards), say ENOSPC."""
    try:
        yield
    except BaseException as exc:
        full = not isinstance(exc, OSError) and _nearly_full(tmp.parent)    # before the clean-up frees room
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {tmp.parent} while writing a checkpoint "
                                        f"({type(exc).__name__}: {exc})") from exc
        raise


def _nearly_full(directory: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(directory).free < margin
    except OSError:
        return False


def _fsync_tree(root: Path) -> None:
    """Every file and directory below `root`, so the rename that publishes it publishes complete data."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            atomic.fsync_dir(path)
    atomic.fsync_dir(root)


def _uses_deepspeed_shards(engine) -> bool:
    inner = getattr(engine, "engine", None)
    return inner is not None and inner.zero_optimization_stage() > 0


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int = KEEP):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def completed(self) -> list[Path]:
        """Complete checkpoints, newest first (temporary directories of an interrupted write are ignored)."""
        if not self.root.exists():
            return []
        found = [p for p in self.root.glob("epoch-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)

    def save(self, engine, train_state) -> Path | None:
        """Collective: every rank calls it at the same point (epoch end)."""
        rank, _ = _world()
        rngs = gather_to_all_ranks(rng_state())
        final = self.root / f"epoch-{train_state.epoch}"
        tmp = self.root / f".tmp-epoch-{train_state.epoch}"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        sharded = _uses_deepspeed_shards(engine)
        with _cleaned_up_on_failure(tmp):
            if sharded:
                engine.engine.save_checkpoint(str(tmp), tag="zero", client_state={}, save_latest=False)
            if rank == 0:
                payload = {"train_state": asdict(train_state), "rng": rngs, "sharded": sharded,
                           "engine": None if sharded else engine.state_dict()}
                with open(tmp / STATE_FILE, "wb") as handle:   # a file object: a full disk raises OSError(ENOSPC)
                    torch.save(payload, handle)
                files = sorted(p for p in tmp.rglob("*") if p.is_file())
                manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
                (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
                _fsync_tree(tmp)
        if rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            atomic.fsync_dir(self.root)   # the rename itself survives a crash
            for old in self.completed()[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def _verify(self, path: Path) -> None:
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.exists():
            raise CheckpointError(f"{manifest_path} is missing")
        manifest = json.loads(manifest_path.read_text())
        for name, digest in manifest.items():
            file = path / name
            if not file.exists():
                raise CheckpointError(f"{file} is missing")
            if _sha256(file) != digest:
                raise CheckpointError(f"{file} does not match its checksum (truncated or corrupt)")

    def load_latest(self, engine, train_state_cls) -> tuple[Any, Path] | None:
        """Restore the newest good checkpoint into `engine`; returns (train state, path) or None to start fresh.

        A corrupt checkpoint is reported and skipped in favour of the previous one. Every rank reaches the same
        verdict because rank 0 decides and broadcasts it.
        """
        rank, _ = _world()
        choice, notes = None, []
        if rank == 0:
            for path in self.completed():
                try:
                    self._verify(path)
                    choice = str(path)
                    break
                except (CheckpointError, OSError, ValueError) as exc:
                    notes.append(f"checkpoint {path} is unusable ({exc}); trying an older one")
        choice, notes = gather_to_all_ranks((choice, notes))[0]
        for note in notes:
            log.warning(note)
        if choice is None:
            if notes:
                log.warning("no usable checkpoint in %s: starting fresh", self.root)
            return None
        path = Path(choice)
        payload = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        if payload["sharded"]:
            engine.engine.load_checkpoint(str(path), tag="zero", load_module_strict=True,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
        else:
            engine.load_state_dict(payload["engine"])
        set_rng_state(payload["rng"][rank])
        log.info("resumed from %s (%d epochs done)", path, payload["train_state"]["epoch"])
        return train_state_cls(**payload["train_state"]), path
