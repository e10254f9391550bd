"""Trainer.fit's bookkeeping, in process and fast: which epochs are warm-up (each attempt's first), the per-step loss
and lr it reports, and how result.json and the analysis turn epoch records into steady-state figures."""
from __future__ import annotations

import logging
import re

import torch

from vit_dt.config.batch import Batch
from vit_dt.data.build import DatasetInfo
from vit_dt.data.tensors import TensorImages
from vit_dt.records.result import epoch_time, steady_epochs, steady_mask, warmup_flags
from vit_dt.records.table import table_row
from vit_dt.run.distributed import DistEnv
from vit_dt.run.loop import LoopSettings, Trainer, TrainState

CPU = torch.device("cpu")
ENV = DistEnv(rank=0, world_size=1, local_rank=0, node_rank=0, nodes=1, master_addr="127.0.0.1", master_port=0,
              source="single")
INFO = DatasetInfo(name="fake", num_classes=2, channels=1, mean=(0.5,), std=(0.25,), native_image_size=8,
                   image_size=8, train_samples=32, val_samples=8, train_samples_full=32, in_memory=True,
                   classes=["a", "b"])


class CountingEngine:
    """An engine whose k-th micro-step (0-based, over the whole run) returns loss k, and whose lr is the number
    of the optimizer step it is about to take (1, 2, ...): a LambdaLR stepped after each update, as the real ones."""

    def __init__(self):
        self.module = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: k + 1.0)
        self.micro_steps = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def micro_step(self, images, labels, boundary):
        loss = torch.tensor(float(self.micro_steps))
        self.micro_steps += 1
        if boundary:
            self.optimizer.step()          # no gradients: updates nothing, but the scheduler follows a step
            self.scheduler.step()
        return loss, torch.zeros(labels.numel(), 2)

    def eval_logits(self, images):
        return torch.zeros(images.shape[0], 2)

    def set_timing(self, enabled):
        pass

    def last_step_timers(self):
        return {}

    def set_loss_weight(self, weight):
        pass


def _trainer(engine, epochs: int, grad_accum: int, steps: list, log_every: int = 0) -> Trainer:
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    train, val = TensorImages(images, torch.arange(32) % 2, INFO.classes), TensorImages(images[:8],
                                                                                       torch.arange(8) % 2, INFO.classes)
    settings = LoopSettings(epochs=epochs, batch=Batch(4, grad_accum, 1), seed=0, timer_sample_every=1,
                            timer_warmup_steps=0, log_every=log_every, max_steps_per_epoch=None)
    return Trainer(engine, train, val, INFO, 8, False, settings, ENV, CPU,
                   on_step=lambda step, values: steps.append((step, values)))


def test_step_loss_is_the_mean_over_micro_batches_and_lr_the_one_the_step_used():
    engine, steps = CountingEngine(), []
    state = _trainer(engine, epochs=2, grad_accum=2, steps=steps).fit(TrainState())
    # 32 images / micro-batch 4 / grad_accum 2: 4 steps an epoch; step g's micro-batches return 2g-2 and 2g-1.
    assert [s for s, _ in steps] == list(range(1, 9))
    assert [v["loss"] for _, v in steps] == [2 * g - 1.5 for g in range(1, 9)]
    assert [v["lr"] for _, v in steps] == [float(g) for g in range(1, 9)]      # LambdaLR: step g runs at lr g
    assert [e["lr"] for e in state.epochs] == [4.0, 8.0]                       # each epoch's last step's


def test_step_lines_carry_the_loss_the_throughput_and_the_lr(caplog):
    """docs/configuration.md's promise for trainer.log_every: loss, img/s and lr on every step line."""
    caplog.set_level(logging.INFO, logger="vit_dt.run.loop")
    _trainer(CountingEngine(), epochs=1, grad_accum=2, steps=[], log_every=2).fit(TrainState())
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    pattern = re.compile(r"^epoch 0 step (\d)/4 loss ([\d.]+) ([\d.]+) img/s lr ([\d.e+-]+)$")
    parsed = [pattern.match(line) for line in lines]
    assert len(lines) == 2 and all(parsed), lines
    # step g's micro-batches return losses 2g-2 and 2g-1; the line shows the step it closes (sampled, finished)
    assert [(int(m[1]), float(m[2]), float(m[4])) for m in parsed] == [(2, 2.5, 2.0), (4, 6.5, 4.0)]
    assert all(float(m[3]) > 0 for m in parsed)


def test_each_attempts_first_epoch_is_marked_warmup():
    engine = CountingEngine()
    state = _trainer(engine, epochs=2, grad_accum=1, steps=[]).fit(TrainState())
    state = _trainer(engine, epochs=4, grad_accum=1, steps=[]).fit(state)     # resumed from epoch 2
    assert [(e["epoch"], e["warmup"]) for e in state.epochs] == [(0, True), (1, False), (2, True), (3, False)]


def test_steady_epochs_leave_out_every_attempts_first_unless_none_is_left():
    marked = [{"warmup": True}, {"warmup": False}, {"warmup": True}, {"warmup": False}]
    assert steady_mask(marked) == [False, True, False, True]
    assert steady_epochs([{"warmup": True, "i": 0}, {"warmup": True, "i": 1}]) == [{"warmup": True, "i": 0},
                                                                                   {"warmup": True, "i": 1}]
    # Records from before the mark: the first epoch is the warm-up one.
    assert warmup_flags([{}, {}, {}]) == [True, False, False] and steady_mask([{}]) == [True]
    assert steady_epochs([]) == []


def _resumed_epochs() -> list[dict]:
    """Two attempts of two epochs: each attempt's first epoch 10 s (compile, allocator), the others 1 s."""
    return [{"epoch": i, "warmup": i % 2 == 0, "time_s": 10.0 if i % 2 == 0 else 1.0, "steps": 4,
             "train_samples_seen": 100, "img_per_s": 10.0 if i % 2 == 0 else 100.0, "val_acc": 0.5,
             "train_loss": 1.0} for i in range(4)]


def _timers(ms: float) -> list[dict]:
    return [{"fwd": ms, "bwd": ms, "bwd_inner": ms, "bwd_allreduce": 0.0, "step": ms, "data_wait": 0.0,
             "step_time": 3 * ms, "samples": 2}]


def test_result_json_steady_state_leaves_out_the_resumed_attempts_first_epoch(tmp_path):
    from tests.helpers import DIGITS_FAST
    from vit_dt.config import compose, to_container
    from vit_dt.config.typed import typed_config
    from vit_dt.measure import hardware
    from vit_dt.run.record import RunRecorder

    recorder = object.__new__(RunRecorder)
    recorder.cfg = to_container(compose([*DIGITS_FAST, f"out_dir={tmp_path}"]))
    recorder.config = typed_config(recorder.cfg)
    recorder.run_dir, recorder.env, recorder.device, recorder.batch, recorder.info = tmp_path, ENV, CPU, \
        Batch(4, 1, 1), INFO
    recorder.started, recorder.ds_config, recorder.gpu_model, recorder.num_params = "t0", None, None, 1
    recorder.flops_per_image, recorder.hardware_flops_per_image = 1e9, 1e9
    recorder.rank_hardware = [hardware.local_hardware(CPU)]
    recorder.hostnames = [recorder.rank_hardware[0]["host"]]
    recorder.provenance = None
    epochs = _resumed_epochs()
    state = TrainState(epoch=4, epochs=epochs, breakdowns=[_timers(ms) for ms in (50.0, 1.0, 50.0, 1.0)])
    result = recorder._summarise(state, [1.0], [None])
    assert result["epoch_time_s_mean"] == 1.0 and result["epoch_time_s_all_mean"] == 5.5
    assert result["img_per_s"] == 100.0
    assert result["breakdown_ms"]["mean"]["fwd"] == 1.0
    # The analysis, from the epochs alone (as for a record without the summary fields), agrees.


    bare = {"epochs": epochs}
    assert epoch_time(bare) == 1.0 and table_row(bare)["epoch_time_s"] == 1.0 and table_row(bare)["img_per_s"] == 100.0


def test_breakdown_merge_falls_back_to_warmup_epochs_when_nothing_else_was_timed():
    from vit_dt.run.record import _merge_rank_summaries

    merged = _merge_rank_summaries([_timers(50.0), []], [{"warmup": True}, {"warmup": False}])
    assert merged[0]["fwd"] == 50.0
    assert _merge_rank_summaries([_timers(50.0), _timers(1.0)])[0]["fwd"] == 1.0     # no records: first is warm-up


def test_each_epoch_records_its_energy_null_with_the_reason_where_no_source_exists(tmp_path):
    from vit_dt.measure.energy import EnergyMeter

    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    trainer = _trainer(CountingEngine(), epochs=2, grad_accum=1, steps=[])
    trainer.energy = EnergyMeter.open(powercap=tmp_path / "absent")
    state = trainer.fit(TrainState())
    assert [e["energy"]["total_j"] for e in state.epochs] == [None, None]
    assert all("no RAPL" in e["energy"]["reason"] for e in state.epochs)
    trainer = _trainer(CountingEngine(), epochs=1, grad_accum=1, steps=[])
    trainer.energy = EnergyMeter.open(powercap=tmp_path)       # a counter that does not move: 0 J is a reading
    (epoch,) = trainer.fit(TrainState()).epochs
    assert epoch["energy"]["cpu_j"] == 0.0 and epoch["energy"]["sources"] == ["rapl"]
