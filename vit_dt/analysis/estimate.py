"""What a sweep point will cost before it is queued: wall time, GPU-hours, and the time limit to ask for.

Two sources, and each estimate names its own:

* **calibrated**: a `CostModel` from earlier runs (`vit-dt sweep --calibrate-from SWEEP_OR_RESULT`): the scaling
  model (scaling_model.py) predicts the point's epoch time from the measured profile and the calibrated
  interconnect; the per-image times are scaled by the ratio of FLOPs per image when the point's model or image
  size differs from the measured run's. The fixed costs (start-up, compile/JIT warm-up, validation, checkpoints)
  are the measured run's wall time less its epochs' steady-state time.
* **guess** (no calibration): a prior. An epoch costs `samples x training FLOPs per image` at `PRIOR_MFU` of the
  GPU's dense peak (measure/metrics.py PEAK_TFLOPS, at the point's precision); a rank on a CPU partition runs at
  `CPU_RANK_GFLOPS`; ranks share the work perfectly; the fixed costs
  are `DEFAULT_OVERHEAD_S`. A guess is marked as one wherever it is printed.

    estimate          wall = epochs x epoch_s + (overhead_s + LAUNCH_S) x segments
    resource hours    ranks x wall / 3600     (GPU-hours on a GPU partition, CPU rank-hours on a CPU partition)
    time limit (auto) ceil((epochs x epoch_s x margin + overhead_s + LAUNCH_S + signal_delay_s + SIGNAL_JITTER_S)
                      / 60) min (the last two only where the cluster requeues), clamped to the
                      partition's max; when clamped, each segment (attempt) fits whole epochs only
                      (checkpoints are written at epoch ends), so segments = ceil(epochs / epochs per segment).

Pure: no I/O; vit_dt/commands/sweep_cost.py reads the calibration and wires this into `vit-dt sweep`.
"""
from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from vit_dt.analysis import scaling_model as sm
from vit_dt.config.batch import steps_per_epoch
from vit_dt.measure.metrics import hardware_flops_per_image, peak_tflops
from vit_dt.records import result

# The prior, stated once (docs/sweeps.md#estimates quotes it). 35% MFU is what a well-fed ViT-B/16 data-parallel
# run reaches on the tables' GPUs (the paper's T4 and A40 runs measured 30-40%); small models reach less.
PRIOR_MFU = 0.35
CPU_RANK_GFLOPS = 10.0        # effective GFLOP/s of one CPU rank (one core, gloo): a CPU partition's prior
DEFAULT_OVERHEAD_S = 120.0    # start-up + compile/JIT warm-up + validation + checkpoints, when nothing measured them
LAUNCH_S = 30.0               # srun to the record's started_at (interpreter, torch, submitit): no record measures it
SIGNAL_JITTER_S = 30.0        # Slurm sends USR2 up to 30 s before cluster.signal_delay_s (it checks every 30 s)
GUESS, CALIBRATED = "guess", "calibrated"
# Training images per epoch of each file dataset (synthetic: dataset.train_size; digits: 1,797 images less the
# dataset.val_fraction hold-out). The weak-scaling subset follows vit_dt/data/subsets.py weak_subset_size.
TRAIN_SAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet100": 126_689}
DIGITS_IMAGES = 1_797


class EstimateError(ValueError):
    """A point cannot be estimated or cannot fit its partition; nothing was queued."""


@dataclass(frozen=True)
class CostModel:
    """A calibration: the measured profile, the fitted interconnect and the measured fixed costs."""
    profile: sm.Profile
    interconnect: sm.Interconnect
    overhead_s: float | None      # None: the run's timestamps did not tell; DEFAULT_OVERHEAD_S is used
    flops_per_image: float | None  # of the measured run, to scale to another model
    source: str                   # where it came from (the profile run's directory)


@dataclass(frozen=True)
class PointEstimate:
    index: int
    epochs: int
    epoch_s: float
    overhead_s: float
    overhead_measured: bool
    ranks: int
    on_gpus: bool
    source: str                   # GUESS | CALIBRATED
    basis: str                    # one line: what the estimate rests on
    time_min: int | None = None   # the job's limit (set by time_limit or the fixed resources.time_min)
    time_auto: bool = False
    segments: int = 1             # attempts the point takes (1: it fits one job)

    @property
    def train_s(self) -> float:
        return self.epochs * self.epoch_s

    @property
    def wall_s(self) -> float:
        """The job's wall time over all its segments: training, and each attempt's fixed costs and launch."""
        return self.train_s + (self.overhead_s + LAUNCH_S) * self.segments

    @property
    def hours(self) -> float:
        return self.ranks * self.wall_s / 3600.0

    @property
    def unit(self) -> str:
        return "GPU-hours" if self.on_gpus else "CPU rank-hours"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_s": round(self.wall_s, 1), "hours": round(self.hours, 4), "unit": self.unit}


# ---------------------------------------------------------------- the point's workload

def train_samples(cfg: Mapping[str, Any], world_size: int) -> int:
    """Training images per epoch of a composed config on `world_size` ranks."""
    dataset = cfg["dataset"]
    name = dataset["name"]
    if name == "synthetic":
        full = int(dataset["train_size"])
    elif name == "digits":
        full = DIGITS_IMAGES - math.ceil(DIGITS_IMAGES * float(dataset.get("val_fraction") or 0.0))
    elif name in TRAIN_SAMPLES:
        full = TRAIN_SAMPLES[name]
    else:
        raise EstimateError(f"dataset {name!r} has no known size; known: synthetic, digits, {', '.join(TRAIN_SAMPLES)}")
    scaling = cfg.get("scaling") or {}
    if scaling.get("mode") == "weak":
        wanted = math.floor(float(scaling["fraction_per_gpu"]) * world_size * full + 1e-6)
        return min(full, max(world_size, wanted))
    return full


def batch_of(cfg: Mapping[str, Any], world_size: int) -> tuple[int, int]:
    """(micro-batch, grad_accum) of the point, as config/batch.py resolve_batch derives them."""
    trainer = cfg["trainer"]
    accum = int(trainer.get("grad_accum") or 1)
    if trainer.get("global_batch"):
        return max(1, int(trainer["global_batch"]) // (world_size * accum)), accum
    return int(trainer["micro_batch"]), accum


def point_steps(cfg: Mapping[str, Any], world_size: int) -> int:
    micro, accum = batch_of(cfg, world_size)
    return steps_per_epoch(train_samples(cfg, world_size), world_size, micro, accum, True,
                           cfg["trainer"].get("max_steps_per_epoch"))


def flops_per_image(cfg: Mapping[str, Any]) -> float:
    return hardware_flops_per_image(cfg["model"], int(cfg["dataset"]["num_classes"]))


# ---------------------------------------------------------------- estimates

def prior_epoch_s(cfg: Mapping[str, Any], world_size: int, gpu_model: str | None, on_gpus: bool) -> tuple[float, str]:
    """The prior's epoch seconds and its basis line."""
    micro, accum = batch_of(cfg, world_size)
    images = point_steps(cfg, world_size) * micro * accum      # per rank
    precision = cfg.get("precision") or "fp32"
    if on_gpus:
        peak = peak_tflops(gpu_model, precision)   # fp32: the CUDA-core rate (precision=tf32 is its own choice)
        if peak is None:
            raise EstimateError(f"no peak TFLOP/s for GPU model {gpu_model!r} at {precision}: set the partition's "
                                f"gpu_model to one of the peak table's, or pass --calibrate-from a finished sweep")
        rate, basis = peak * 1e12 * PRIOR_MFU, f"guess: {gpu_model} {peak:g} TFLOP/s peak x {PRIOR_MFU:.0%} MFU"
    else:
        rate, basis = CPU_RANK_GFLOPS * 1e9, f"guess: {CPU_RANK_GFLOPS:g} GFLOP/s per CPU rank"
    return images * flops_per_image(cfg) / rate, basis


def estimate_point(index: int, cfg: Mapping[str, Any], *, nodes: int, ranks_per_node: int, on_gpus: bool,
                   gpu_model: str | None, model: CostModel | None = None) -> PointEstimate:
    """The point's estimate: the cost model's epoch time x epochs + its measured fixed costs; without a model,
    the prior (PRIOR_MFU of the peak table, DEFAULT_OVERHEAD_S), marked GUESS."""
    world = nodes * ranks_per_node
    epochs = int(cfg["trainer"]["epochs"])
    if model is None:
        epoch_s, basis = prior_epoch_s(cfg, world, gpu_model, on_gpus)
        return PointEstimate(index=index, epochs=epochs, epoch_s=epoch_s, overhead_s=DEFAULT_OVERHEAD_S,
                             overhead_measured=False, ranks=world, on_gpus=on_gpus, source=GUESS, basis=basis)
    epoch_s, basis = calibrated_epoch_s(cfg, model, nodes, ranks_per_node)
    measured = model.overhead_s is not None
    return PointEstimate(index=index, epochs=epochs, epoch_s=epoch_s,
                         overhead_s=model.overhead_s if measured else DEFAULT_OVERHEAD_S,
                         overhead_measured=measured, ranks=world, on_gpus=on_gpus, source=CALIBRATED, basis=basis)


def calibrated_epoch_s(cfg: Mapping[str, Any], model: CostModel, nodes: int, ranks_per_node: int) -> tuple[float, str]:
    """The scaling model's epoch time for the point's world size, layout, batch and dataset."""
    world = nodes * ranks_per_node
    micro, accum = batch_of(cfg, world)
    profile = model.profile
    basis = f"calibrated from {model.source}"
    if model.flops_per_image:
        ratio = flops_per_image(cfg) / model.flops_per_image
        if abs(ratio - 1.0) > 1e-6:
            profile = replace(profile, fwd_ms_per_image=profile.fwd_ms_per_image * ratio,
                              bwd_ms_per_image=profile.bwd_ms_per_image * ratio)
            basis += f" (per-image times x {ratio:.3g}, the FLOPs ratio)"
    workload = replace(profile, train_samples=train_samples(cfg, world), world_size=world, scaling="strong",
                       max_steps_per_epoch=cfg["trainer"].get("max_steps_per_epoch"))
    try:
        [row] = sm.predict(workload, model.interconnect, [world], layout="grid", gpus_per_node=ranks_per_node,
                           micro_batch=micro, grad_accum=accum)
    except sm.ModelError as exc:
        raise EstimateError(f"the scaling model cannot estimate this point: {exc}") from None
    return row.epoch_s, basis


def cost_model(record: Mapping[str, Any], interconnect: sm.Interconnect) -> CostModel:
    """A CostModel from the profile run `record` (scaling_model.profile_from_record) and a (calibrated)
    interconnect; its fixed costs: finished_at - started_at less epochs x the steady-state epoch time."""
    profile, _ = sm.full_epochs(sm.profile_from_record(record))
    return CostModel(profile=profile, interconnect=interconnect, overhead_s=measured_overhead_s(record),
                     flops_per_image=record.get("flops_per_image"), source=str(record.get("run_dir") or "?"))


def measured_overhead_s(record: Mapping[str, Any]) -> float | None:
    try:
        wall = (_dt.datetime.fromisoformat(record["finished_at"])
                - _dt.datetime.fromisoformat(record["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    epoch, epochs = result.epoch_time(record), len(record.get(result.EPOCHS) or [])
    if epoch is None or not epochs or wall <= 0:
        return None
    return max(0.0, wall - epochs * epoch)


# ---------------------------------------------------------------- time limits

@dataclass(frozen=True)
class TimeLimit:
    time_min: int
    segments: int
    clamped: bool


def time_limit(estimate: PointEstimate, *, margin: float, max_time_min: int, signal_delay_s: float = 0.0) -> TimeLimit:
    """`resources.time_min=auto`: ceil((train_s x margin + fixed costs) / 60) min, clamped to `max_time_min`; when
    clamped, segments = ceil(epochs / whole epochs one attempt holds). Fixed costs: `job_fixed_s`."""
    if margin < 1.0:
        raise EstimateError(f"resources.time_margin={margin:g} is invalid: it must be >= 1 (1.5: 50% headroom)")
    wanted = math.ceil((estimate.train_s * margin + job_fixed_s(estimate, signal_delay_s)) / 60.0)
    if wanted <= max_time_min:
        return TimeLimit(time_min=max(1, wanted), segments=1, clamped=False)
    return TimeLimit(time_min=max_time_min, segments=segments(estimate, max_time_min, margin, signal_delay_s),
                     clamped=True)


def job_fixed_s(estimate: PointEstimate, signal_delay_s: float = 0.0) -> float:
    """What each attempt spends besides training: the estimate's fixed costs, the launch before the record's clock
    starts (LAUNCH_S), and, where the cluster requeues, the warning before the limit (signal_delay_s, which Slurm
    may send up to SIGNAL_JITTER_S early): time the attempt cannot train in."""
    return estimate.overhead_s + LAUNCH_S + (signal_delay_s + SIGNAL_JITTER_S if signal_delay_s else 0.0)


def segments(estimate: PointEstimate, time_min: int, margin: float = 1.0, signal_delay_s: float = 0.0) -> int:
    """Attempts a point takes under a `time_min` limit: each pays the fixed costs (job_fixed_s) and keeps only whole
    epochs (checkpoints at epoch ends). EstimateError when not one epoch fits."""
    fixed = job_fixed_s(estimate, signal_delay_s)
    usable = time_min * 60.0 - fixed
    if estimate.train_s * margin <= usable:
        return 1
    per_segment = math.floor(usable / (estimate.epoch_s * margin)) if usable > 0 else 0
    if per_segment < 1:
        with_margin = f" x margin {margin:g}" if margin != 1.0 else ""
        raise EstimateError(f"point {estimate.index}: one epoch (~{_duration(estimate.epoch_s * margin)}{with_margin}) "
                            f"and the fixed costs (~{_duration(fixed)}) do not fit a {time_min} min limit: no attempt "
                            f"could checkpoint an epoch; use more GPUs (resources.gpus), a partition with a longer "
                            f"limit, or trainer.max_steps_per_epoch")
    return math.ceil(estimate.epochs / per_segment)


# ---------------------------------------------------------------- summaries

def summary_lines(estimates: Sequence[Mapping[str, Any]], shapes: Mapping[int, str], index_ranges,
                  max_requeues: int | None = None) -> list[str]:
    """What `vit-dt sweep` prints under its job lines: per-shape and total hours, each source, segmented points.
    `estimates`: PointEstimate.to_dict()s; `shapes`: point index -> its shape's label."""
    if not estimates:
        return []
    lines = ["estimated cost (before queueing):"]
    by_shape: dict[str, list[Mapping[str, Any]]] = {}
    for e in estimates:
        by_shape.setdefault(shapes[e["index"]], []).append(e)
    for label, group in by_shape.items():
        units = {e["unit"] for e in group}
        lines.append(f"  {label}: points {index_ranges(e['index'] for e in group)}: "
                     f"{sum(e['hours'] for e in group):.2f} {'/'.join(sorted(units))}, "
                     f"~{_duration(max(e['wall_s'] for e in group))} per point at most")
    lines.append(f"  total: {total_line(estimates)}")
    for basis in sorted({e["basis"] for e in estimates}):
        points = index_ranges(e["index"] for e in estimates if e["basis"] == basis)
        lines.append(f"  source: {basis}: points {points}")
    if any(not e["overhead_measured"] for e in estimates):
        lines.append(f"  fixed costs (start-up, warm-up, validation, checkpoints): {DEFAULT_OVERHEAD_S:g} s per "
                     f"attempt, a stated default where no calibration measured them")
    for e in estimates:
        if e["segments"] > 1:
            over = (f"; more than the {max_requeues} requeue(s) allowed (hydra.launcher.max_num_timeout)"
                    if max_requeues is not None and e["segments"] - 1 > max_requeues else "")
            lines.append(f"  point {e['index']}: needs {e['segments']} requeued segments of {e['time_min']} min "
                         f"(~{_duration(e['wall_s'])} in all){over}")
    return lines


def total_line(estimates: Sequence[Mapping[str, Any]]) -> str:
    totals: dict[str, float] = {}
    for e in estimates:
        totals[e["unit"]] = totals.get(e["unit"], 0.0) + e["hours"]
    guesses = sum(e["source"] == GUESS for e in estimates)
    marked = f" ({guesses} of {len(estimates)} point(s) a guess)" if guesses else ""
    return " + ".join(f"{hours:.2f} {unit}" for unit, hours in sorted(totals.items())) + marked


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
