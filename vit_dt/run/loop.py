"""The training loop of one rank: per-epoch training and held-out validation, engine-agnostic.

Metrics stay on the device during an epoch (no per-step `.item()`, which would stall a GPU); they are reduced
across ranks once per epoch. The wall-clock breakdown is sampled every `trainer.timer_sample_every` steps and read
once a timed step has finished on the device (vit_dt.measure.step_timing): nothing in the loop synchronises the device.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from vit_dt.config.batch import Batch, optimizer_steps
from vit_dt.data.augment import DeviceAugment
from vit_dt.data.build import DatasetInfo
from vit_dt.data.loader import make_loader
from vit_dt.engines import TrainEngine
from vit_dt.measure import breakdown
from vit_dt.measure.energy import EnergyMeter, epoch_energy
from vit_dt.measure.step_timing import DeviceClock, SampledStepTimer, StepSampler
from vit_dt.run import balance, heartbeat
from vit_dt.run.distributed import DistEnv, gather_to_rank0

log = logging.getLogger("vit_dt.run.loop")


@dataclass
class TrainState:
    """What a checkpoint holds besides the engine: where to resume and what was already measured."""
    epoch: int = 0                      # next epoch to run
    epochs: list[dict] = field(default_factory=list)
    breakdowns: list[list[dict]] = field(default_factory=list)   # per epoch, per rank (rank 0 only)
    shares: list[int] | None = None     # trainer.balance=speed: per-rank micro-batches of the next epoch (all ranks)
    balance: list[dict] = field(default_factory=list)   # per epoch: shares, speeds, spread (rank 0 only)


@dataclass
class LoopSettings:
    epochs: int
    batch: Batch
    seed: int
    timer_sample_every: int
    timer_warmup_steps: int
    log_every: int
    max_steps_per_epoch: int | None
    balance: str = "off"                # trainer.balance: off | speed (vit_dt/run/balance.py)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _broadcast_from_rank0(value):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _rounded(value, digits: int = 1):
    if isinstance(value, list):
        return [round(v, digits) for v in value]
    return None if value is None else round(value, digits)


def accumulate_totals(totals: torch.Tensor, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Adds (loss sum, correct, samples) on the device. The sample count goes in as a Python number: a tensor made
    from it would be a blocking host-to-device copy, a full device sync on every step."""
    totals[0] += loss_sum.double()
    totals[1] += (logits.argmax(1) == labels).sum()
    totals[2] += labels.numel()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    def __init__(self, engine: TrainEngine, train_set, val_set, info: DatasetInfo, image_size: int, hflip: bool,
                 settings: LoopSettings, env: DistEnv, device: torch.device, num_workers: int = 0,
                 on_epoch_end: Callable[[TrainState, dict], None] | None = None,
                 on_step: Callable[[int, dict], None] | None = None, energy: EnergyMeter | None = None):
        """`energy`: this rank's meter (vit_dt/measure/energy.py), read at each training epoch's start and end."""
        self.engine, self.settings, self.env, self.device = engine, settings, env, device
        self.energy = energy
        self.on_epoch_end, self.on_step = on_epoch_end, on_step
        batch = settings.batch
        self.train_loader = make_loader(train_set, rank=env.rank, world_size=env.world_size, batch_size=batch.micro,
                                        seed=settings.seed, train=True, device=device, num_workers=num_workers,
                                        drop_last=True)
        self.val_loader = make_loader(val_set, rank=env.rank, world_size=env.world_size, batch_size=batch.micro,
                                      seed=settings.seed, train=False, device=device, num_workers=num_workers,
                                      drop_last=False)
        self.train_augment = DeviceAugment(image_size, info.mean, info.std, train=True, hflip=hflip)
        self.val_augment = DeviceAugment(image_size, info.mean, info.std, train=False)
        self.steps_per_epoch = optimizer_steps(len(self.train_loader), batch.grad_accum,
                                               max_steps=settings.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set gives each rank {len(self.train_loader)} micro-batches of {batch.micro}, fewer than "
                f"grad_accum={batch.grad_accum}: lower trainer.micro_batch or trainer.grad_accum, or use more data")
        self.global_step = 0
        self._last_loss: float | None = None     # the latest sampled step's loss, for the step lines
        self.shares = balance.equal_shares(batch.micro * env.world_size, env.world_size)

    def fit(self, state: TrainState) -> TrainState:
        self.global_step = state.epoch * self.steps_per_epoch
        if state.shares and self.settings.balance == "speed":      # resumed: the checkpoint's plan
            self._use_shares(state.shares)
        first = state.epoch
        for epoch in range(state.epoch, self.settings.epochs):
            heartbeat.phase(f"epoch {epoch}: training")
            record, per_rank = self._train_epoch(epoch)
            heartbeat.phase(f"epoch {epoch}: validation")
            record.update(self._validate())
            record["epoch"] = epoch
            # The first epoch of this attempt (the run's start or a resume) pays for compile, allocator and loader
            # warm-up: steady-state figures leave it out (vit_dt.records.result.steady_epochs).
            record["warmup"] = epoch == first
            if self.env.is_main:
                record.update(self._epoch_breakdown_fields(per_rank))
                state.breakdowns.append(per_rank)
                log.info("epoch %d: %.1f s, train loss %.4f acc %.4f, val loss %.4f acc %.4f, %.1f img/s", epoch,
                         record["time_s"], record["train_loss"], record["train_acc"], record["val_loss"],
                         record["val_acc"], record["img_per_s"])
            self._plan_next_epoch(state, epoch, per_rank)
            state.epochs.append(record)
            state.epoch = epoch + 1
            if self.on_epoch_end:
                self.on_epoch_end(state, record)
        return state

    def _use_shares(self, shares: list[int]) -> None:
        """Per-rank micro-batches for the next epoch; the loss weight keeps DDP's average the global batch's."""
        self.shares = [int(b) for b in shares]
        self.train_loader.set_shares(self.shares)
        if self.settings.balance == "speed":
            self.engine.set_loss_weight(balance.loss_weight(self.shares[self.env.rank], self.env.world_size,
                                                            sum(self.shares)))

    def _plan_next_epoch(self, state: TrainState, epoch: int, per_rank: list[dict] | None) -> None:
        """Rank 0 records what this epoch measured and, with trainer.balance=speed, decides the next epoch's shares
        from the measured speeds; every rank takes them from rank 0, so all agree."""
        entry = None
        if self.env.is_main:
            entry = balance.epoch_entry(epoch, self.settings.balance, self.shares, per_rank,
                                        self.settings.batch.grad_accum)
            state.balance.append(entry)
        if self.settings.balance != "speed":
            return
        if entry:
            log.info("balance: epoch %d shares %s, compute %s ms per step (spread %s), speeds %s img/s; next: %s",
                     epoch, entry["shares"], _rounded(entry["compute_ms"]), _rounded(entry["spread"], 3),
                     _rounded(entry["speed_img_per_s"]), entry["next_shares"])
        shares = _broadcast_from_rank0(entry["next_shares"] if entry else None)
        self._use_shares(shares)
        state.shares = list(shares)

    @staticmethod
    def _epoch_breakdown_fields(per_rank: list[dict] | None) -> dict:
        if not per_rank:
            return {}
        analysis = breakdown.analyse(per_rank)
        return {"breakdown_ms": analysis["mean"], "comm_share": analysis["comm_share"],
                "data_wait_share": analysis["data_wait_share"], "straggler": analysis["straggler"]}

    def _train_epoch(self, epoch: int) -> tuple[dict, list[dict] | None]:
        s, batch, engine = self.settings, self.settings.batch, self.engine
        self.train_loader.set_epoch(epoch)
        sampler = StepSampler(sample_every=s.timer_sample_every, warmup_steps=s.timer_warmup_steps)
        timer = SampledStepTimer(engine, sampler, DeviceClock(self.device), on_sample=self._report_sample)
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, correct, samples
        batches = iter(self.train_loader)
        _sync(self.device)
        energy_mark = self.energy.mark() if self.energy else None
        epoch_start = time.perf_counter()
        lr = engine.lr
        self._last_loss = None
        line_start = (0, epoch_start)       # the step and host time of the last step line: img/s since then
        for step in range(self.steps_per_epoch):
            timed = timer.begin(step)
            # The lr this step's optimizer update uses: the scheduler steps at the boundary, after the update, so
            # engine.lr read after the step would be the next step's.
            lr = engine.lr
            data_wait = 0.0
            step_loss = None
            for micro in range(batch.grad_accum):
                fetch_start = time.perf_counter()
                images, labels = next(batches)
                data_wait += time.perf_counter() - fetch_start
                images = self.train_augment(images)
                loss, logits = engine.micro_step(images, labels, boundary=micro == batch.grad_accum - 1)
                accumulate_totals(totals, loss * labels.numel(), logits, labels)
                if timed:    # the step's loss: the mean over its (equal-sized) micro-batches, summed on the device
                    step_loss = loss if step_loss is None else step_loss + loss
            self.global_step += 1
            heartbeat.step(step + 1)
            if timed and batch.grad_accum > 1:
                step_loss = step_loss / batch.grad_accum
            # The loss stays a device tensor: it is read when the timed step is collected, after it has finished.
            timer.end(data_wait * 1e3, global_step=self.global_step, loss=step_loss, lr=lr)
            if self.env.is_main and s.log_every and (step + 1) % s.log_every == 0:
                timer.poll()
                line_start = self._log_step(epoch, step, lr, line_start)
        timer.finish()
        _sync(self.device)
        elapsed = time.perf_counter() - epoch_start
        loss_sum, correct, seen = _all_reduce_sum(totals).tolist()
        per_rank = gather_to_rank0(sampler.summary())
        record = {"time_s": elapsed, "steps": self.steps_per_epoch, "train_samples_seen": int(seen),
                  "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "img_per_s": seen / elapsed if elapsed > 0 else 0.0, "lr": lr}   # the epoch's last step's
        if self.energy is not None:      # a collective: every rank has a meter, with or without a source
            used = gather_to_rank0(self.energy.since(energy_mark))
            if self.env.is_main:
                record["energy"] = epoch_energy(used, elapsed, int(seen))
        return record, per_rank

    def _log_step(self, epoch: int, step: int, lr: float, since: tuple[int, float]) -> tuple[int, float]:
        """One step line: the latest sampled step's loss (read once that step had finished on the device: the line
        never synchronises), the global img/s since the previous line by the host clock, and the lr."""
        now = time.perf_counter()
        images = (step + 1 - since[0]) * sum(self.shares) * self.settings.batch.grad_accum
        img_per_s = images / (now - since[1]) if now > since[1] else 0.0
        loss = "-" if self._last_loss is None else f"{self._last_loss:.4f}"
        log.info("epoch %d step %d/%d loss %s %.1f img/s lr %.2e", epoch, step + 1, self.steps_per_epoch, loss,
                 img_per_s, lr)
        return step + 1, now

    def _report_sample(self, timers: dict[str, float], info: dict) -> None:
        self._last_loss = float(info["loss"]) if info.get("loss") is not None else None
        if self.on_step:
            self.on_step(info["global_step"], {"loss": self._last_loss, "lr": info["lr"],
                                               **{f"time/{k}_ms": v for k, v in timers.items()}})

    def _validate(self) -> dict:
        self.engine.module.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)
        for images, labels in self.val_loader:
            logits = self.engine.eval_logits(self.val_augment(images))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            accumulate_totals(totals, loss, logits, labels)
        self.engine.module.train()
        loss_sum, correct, seen = _all_reduce_sum(totals).tolist()
        return {"val_loss": loss_sum / max(seen, 1), "val_acc": correct / max(seen, 1), "val_samples_seen": int(seen)}


def parameter_checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights: replicas that stayed in sync give the same value on every rank.

    At ZeRO-3 each rank holds only its partition and the parameters themselves are empty placeholders: the full
    weights are gathered first (a collective, so every rank must call this; it runs once per run)."""
    params = list(module.parameters())
    with torch.no_grad(), _gathered(params):
        return float(sum(p.detach().double().sum() + p.detach().double().abs().sum() for p in params))


def _gathered(params: list[torch.nn.Parameter]):
    """ZeRO-3 partitioned parameters gathered whole for reading (read-only: nothing is written back)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
