"""A scaling model: predict a data-parallel run's step and epoch time on N ranks before spending an allocation.

Inputs: a measured *profile* (per-image forward/backward time on one rank, the optimizer step, the data wait,
gradient bytes) and an *interconnect* (intra-node and inter-node bandwidth in Gb/s, gigabits per second as
the `*_gbps` keys of a cluster profile say, and latency in us).
Model (docs/scaling-model.md has the derivation):

    images per rank per step   m = micro_batch * grad_accum
    compute                    fwd = m * fwd_per_image,  bwd = m * bwd_per_image
    ring all-reduce            comm(N) = 2(N-1)/N * grad_bytes / bw + 2(N-1) * latency      (0 when N = 1)
                               bw = inter-node bandwidth when the ranks span nodes (the ring's slowest link),
                                    else intra-node bandwidth
    step, no overlap           data + fwd + bwd + comm + optimizer + overhead
    step, overlap              data + fwd + max(bwd, comm) + optimizer + overhead
    epoch                      steps(N) * step,  steps(N) = floor(floor(samples(N) / N) / micro_batch) / grad_accum
                               samples(N) = dataset size (strong) or samples_per_rank * N (weak)

`calibrate` fits the effective bandwidth (and the latency, given points that separate them) to measured
all-reduce times. Pure: no I/O; vit_dt/commands/predict.py does the reading and printing.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vit_dt.config.batch import steps_per_epoch
from vit_dt.config.choices import LAYOUTS
from vit_dt.config.interconnect import Interconnect
from vit_dt.records import result

SCALINGS = ("strong", "weak")
BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
GBIT = 1e9 / 8   # bytes per second in one Gb/s: bandwidths are gigabits per second (cluster.interconnect.*_gbps)


class ModelError(ValueError):
    """Bad input to the model (a layout, a world size, a record it cannot read)."""


# ---------------------------------------------------------------- inputs

def interconnect_from_config(interconnect: Mapping[str, Any] | None) -> Interconnect:
    """A `cluster.interconnect` mapping as the model's Interconnect (vit_dt.config.interconnect); ModelError if bad."""
    return Interconnect.from_config(interconnect, error=ModelError)


@dataclass(frozen=True)
class Profile:
    """What one rank spends per step, measured on a run (see `profile_from_record`)."""
    fwd_ms_per_image: float
    bwd_ms_per_image: float           # backward without the all-reduce (DeepSpeed's bwd_inner)
    optimizer_ms: float               # per optimizer step; does not grow with the batch
    data_wait_ms_per_image: float
    overhead_ms: float                # per step: what the timers do not cover
    grad_bytes: float                 # bytes all-reduced per step: parameters x bytes per element
    micro_batch: int
    grad_accum: int = 1
    train_samples: int | None = None  # samples of the measured run's epoch
    world_size: int = 1               # ranks of the measured run
    scaling: str = "strong"
    drop_last: bool = True            # vit-dt's training loader drops the ragged tail
    max_steps_per_epoch: int | None = None
    source: str = ""

    def compute_ms(self, micro_batch: int, grad_accum: int) -> dict[str, float]:
        m = micro_batch * grad_accum
        return {"fwd": m * self.fwd_ms_per_image, "bwd": m * self.bwd_ms_per_image,
                "optimizer": self.optimizer_ms, "data_wait": m * self.data_wait_ms_per_image,
                "overhead": self.overhead_ms}

    def samples(self, world_size: int) -> int:
        if self.train_samples is None:
            raise ModelError("the profile has no train_samples: epoch times need the dataset size")
        if self.scaling == "weak":
            return int(round(self.train_samples / self.world_size * world_size))
        return int(self.train_samples)


def bytes_per_element(precision: str) -> int:
    if precision not in BYTES_PER_ELEMENT:
        raise ModelError(f"unknown precision {precision!r}; valid: {', '.join(BYTES_PER_ELEMENT)}")
    return BYTES_PER_ELEMENT[precision]


# ---------------------------------------------------------------- the model

def ring_allreduce_s(world_size: int, grad_bytes: float, bandwidth_gbps: float, latency_us: float) -> float:
    """2(N-1)/N * bytes / bw + 2(N-1) * latency: a ring's reduce-scatter then all-gather, N-1 hops each."""
    if world_size < 1:
        raise ModelError(f"world size {world_size} is invalid: it must be >= 1")
    if world_size == 1:
        return 0.0
    n = world_size
    return 2 * (n - 1) / n * grad_bytes / (bandwidth_gbps * GBIT) + 2 * (n - 1) * latency_us * 1e-6


def shape(world_size: int, layout: str, gpus_per_node: int | None = None) -> tuple[int, int]:
    """(nodes, ranks per node) of N ranks: intra 1 x N, inter N x 1, grid ceil(N/G) x G."""
    if layout not in LAYOUTS:
        raise ModelError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if world_size < 1:
        raise ModelError(f"world size {world_size} is invalid: it must be >= 1")
    if layout == "intra":
        return 1, world_size
    if layout == "inter":
        return world_size, 1
    if not gpus_per_node or gpus_per_node < 1:
        raise ModelError("layout grid needs gpus_per_node >= 1 (ranks per node)")
    per_node = min(world_size, gpus_per_node)
    if world_size % per_node:
        raise ModelError(f"world size {world_size} is not a multiple of gpus_per_node {gpus_per_node}")
    return world_size // per_node, per_node


@dataclass(frozen=True)
class Prediction:
    world_size: int
    nodes: int
    ranks_per_node: int
    link: str                  # intra | inter: which bandwidth bounds the ring
    overlap: bool
    micro_batch: int
    global_batch: int
    steps_per_epoch: int
    compute_ms: float          # fwd + bwd + optimizer + data wait + overhead: everything but the all-reduce
    allreduce_ms: float
    step_ms: float
    epoch_s: float
    speedup: float
    efficiency: float
    allreduce_share: float     # all-reduce time / step time (what `comm_share` measures)
    exposed_allreduce_share: float  # the part of the step the all-reduce adds (= share without overlap)


def step_time_ms(profile: Profile, interconnect: Interconnect, world_size: int, nodes: int, micro_batch: int,
                 grad_accum: int, overlap: bool) -> dict[str, float]:
    parts = profile.compute_ms(micro_batch, grad_accum)
    comm = 1e3 * ring_allreduce_s(world_size, profile.grad_bytes, interconnect.bandwidth_gbps(nodes),
                                  interconnect.latency_us)
    rest = parts["data_wait"] + parts["fwd"] + parts["optimizer"] + parts["overhead"]
    backward = max(parts["bwd"], comm) if overlap else parts["bwd"] + comm
    step = rest + backward
    return {"compute": rest + parts["bwd"], "allreduce": comm, "step": step,
            "exposed": step - (rest + parts["bwd"])}


def predict(profile: Profile, interconnect: Interconnect, gpus: Sequence[int], layout: str = "intra",
            gpus_per_node: int | None = None, micro_batch: int | None = None, grad_accum: int | None = None,
            scaling: str | None = None, overlap: bool = False, global_batch: int | None = None) -> list[Prediction]:
    """Predicted step/epoch time, speed-up, efficiency and all-reduce share at each world size in `gpus`.

    Speed-up and efficiency use the scaling.py formulas relative to the smallest world size asked for.
    `scaling` (default: the profile's) picks strong (fixed dataset) or weak (samples_per_rank * N).
    The micro-batch is `micro_batch` (default: the profile's) at every N, or, given `global_batch` (strong
    scaling with a fixed global batch), global_batch / (N * grad_accum), which must divide evenly.
    """
    from vit_dt.analysis.formulas import efficiency, speedup

    if not gpus:
        raise ModelError("no world sizes to predict: pass at least one, e.g. gpus=[1, 2, 4, 8]")
    scaling = scaling or profile.scaling
    if scaling not in SCALINGS:
        raise ModelError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    accum = int(profile.grad_accum if grad_accum is None else grad_accum)
    workload = replace(profile, scaling=scaling)
    rows = []
    for n in sorted(set(int(g) for g in gpus)):
        micro = _micro_batch(n, accum, profile.micro_batch if micro_batch is None else micro_batch, global_batch)
        nodes, per_node = shape(n, layout, gpus_per_node)
        times = step_time_ms(profile, interconnect, n, nodes, micro, accum, overlap)
        steps = steps_per_epoch(workload.samples(n), n, micro, accum, profile.drop_last, profile.max_steps_per_epoch)
        if steps < 1:
            raise ModelError(f"{n} ranks x micro-batch {micro} x grad_accum {accum} leave no full step in "
                             f"{workload.samples(n)} samples")
        rows.append(dict(world_size=n, nodes=nodes, ranks_per_node=per_node, link="inter" if nodes > 1 else "intra",
                         overlap=overlap, micro_batch=micro, global_batch=micro * accum * n, steps_per_epoch=steps,
                         compute_ms=times["compute"], allreduce_ms=times["allreduce"], step_ms=times["step"],
                         epoch_s=steps * times["step"] / 1e3,
                         allreduce_share=times["allreduce"] / times["step"],
                         exposed_allreduce_share=times["exposed"] / times["step"]))
    base = rows[0]
    return [Prediction(**row, speedup=speedup(scaling, base["epoch_s"], base["world_size"], row["epoch_s"],
                                              row["world_size"]),
                       efficiency=efficiency(scaling, base["epoch_s"], base["world_size"], row["epoch_s"],
                                             row["world_size"]))
            for row in rows]


def _micro_batch(world_size: int, grad_accum: int, micro_batch: int, global_batch: int | None) -> int:
    if grad_accum < 1:
        raise ModelError(f"grad_accum={grad_accum} is invalid: it must be >= 1")
    if global_batch is None:
        if int(micro_batch) < 1:
            raise ModelError(f"micro_batch={micro_batch} is invalid: it must be >= 1")
        return int(micro_batch)
    per_step = world_size * grad_accum
    if global_batch < per_step or global_batch % per_step:
        raise ModelError(f"global batch {global_batch} is not divisible by {world_size} ranks x grad_accum "
                         f"{grad_accum}")
    return global_batch // per_step


# ---------------------------------------------------------------- from records

def _mean_breakdown(record: Mapping[str, Any]) -> dict[str, float] | None:
    mean = (record.get("breakdown_ms") or {}).get("mean")
    return {k: float(v) for k, v in mean.items() if isinstance(v, (int, float))} if mean else None


def _steps(record: Mapping[str, Any]) -> int | None:
    epochs = record.get("epochs") or []
    steps = [e.get("steps") for e in epochs if e.get("steps")]
    return int(steps[-1]) if steps else None


def measured_step_ms(record: Mapping[str, Any]) -> float:
    """Mean wall-clock ms per optimizer step: epoch time / steps (falls back on the sampled step_time)."""
    t, steps = result.epoch_time(record), _steps(record)
    if t is not None and steps:
        return 1e3 * t / steps
    mean = _mean_breakdown(record) or {}
    if mean.get("step_time"):
        return float(mean["step_time"])
    raise ModelError(f"record {record.get('run_dir')!r} has neither epoch time with steps nor a step_time")


def grad_bytes_of(record: Mapping[str, Any], bytes_per_elem: int | None = None) -> float:
    params = record.get("num_params")
    if not params:
        raise ModelError(f"record {record.get('run_dir')!r} has no num_params: cannot size the all-reduce")
    precision = result.value(record, "precision") or "fp32"
    return float(params) * (bytes_per_elem or bytes_per_element(precision))


def profile_from_record(record: Mapping[str, Any], bytes_per_elem: int | None = None) -> Profile:
    """A profile from one completed run (best: a 1-rank run).

    The step time is the measured epoch time / steps; the timers (sampled steps) split it into parts. When the
    parts add up to more than the step (timed steps synchronise the device, so they run a little slower) they
    are scaled down to fit; what they leave uncovered is `overhead_ms`. A multi-rank run's all-reduce is taken
    out (the model adds its own); a 1-rank run's small bwd_allreduce stays in the overhead, since the model's
    comm(1) is 0. Without timers the whole step counts as forward time (nothing can overlap).
    """
    micro = int(result.micro_batch(record) or 0)
    accum = result.grad_accum(record)
    world = int(record.get("world_size") or 1)
    if micro < 1:
        raise ModelError(f"record {record.get('run_dir')!r} has no micro_batch")
    images = micro * accum
    step = measured_step_ms(record)
    mean = _mean_breakdown(record)
    if mean:
        comm = mean.get("bwd_allreduce", 0.0) if world > 1 else 0.0
        parts = {"fwd": mean.get("fwd", 0.0), "bwd": mean.get("bwd_inner", mean.get("bwd", 0.0)),
                 "optimizer": mean.get("step", 0.0), "data_wait": mean.get("data_wait", 0.0)}
        covered = sum(parts.values()) + comm
        scale = step / covered if covered > step else 1.0
        parts = {k: v * scale for k, v in parts.items()}
        overhead = max(0.0, step - sum(parts.values()) - comm * scale)
    else:
        parts = {"fwd": step, "bwd": 0.0, "optimizer": 0.0, "data_wait": 0.0}
        overhead = 0.0
    scaling = "weak" if result.value(record, "scaling") == "weak" else "strong"
    return Profile(fwd_ms_per_image=parts["fwd"] / images, bwd_ms_per_image=parts["bwd"] / images,
                   optimizer_ms=parts["optimizer"], data_wait_ms_per_image=parts["data_wait"] / images,
                   overhead_ms=overhead, grad_bytes=grad_bytes_of(record, bytes_per_elem), micro_batch=micro,
                   grad_accum=accum, train_samples=record.get("train_samples"), world_size=world, scaling=scaling,
                   max_steps_per_epoch=result.config_value(record, "trainer", "max_steps_per_epoch"),
                   source=str(record.get("run_dir") or ""))


def full_epochs(profile: Profile) -> tuple[Profile, str | None]:
    """`profile` without the measured run's trainer.max_steps_per_epoch, and a note saying so (None when it had no
    cap). A capped epoch is `cap` steps at every N, so strong scaling would predict a speed-up of about 1: a
    prediction is for whole epochs of the dataset (train_samples), which only the per-step times carry over to."""
    cap = profile.max_steps_per_epoch
    if not cap:
        return profile, None
    samples = f"{profile.train_samples} samples" if profile.train_samples is not None else "the whole dataset"
    return replace(profile, max_steps_per_epoch=None), (
        f"the profile run stopped its epochs at trainer.max_steps_per_epoch={cap}; predictions are for full epochs "
        f"({samples}), from its per-step times")


def interconnect_of(record: Mapping[str, Any]) -> Interconnect | None:
    interconnect = result.config_value(record, "cluster", "interconnect")
    return interconnect_from_config(interconnect) if interconnect else None


# ---------------------------------------------------------------- calibration

@dataclass(frozen=True)
class CalibrationPoint:
    world_size: int
    nodes: int
    link: str
    allreduce_ms: float
    source: str                 # "bwd_allreduce" (timer) or "epoch excess" (epoch time over the profile's)
    run_dir: str


@dataclass(frozen=True)
class Calibration:
    interconnect: Interconnect
    fitted: tuple[str, ...]     # which fields the data determined; the rest are the prior's
    points: tuple[CalibrationPoint, ...]
    residuals_ms: tuple[float, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"interconnect": asdict(self.interconnect), "fitted": list(self.fitted),
                "points": [asdict(p) for p in self.points], "residuals_ms": list(self.residuals_ms),
                "notes": list(self.notes)}


def _comm_observation(record: Mapping[str, Any], profile: Profile | None) -> tuple[float, str] | None:
    mean = _mean_breakdown(record) or {}
    if mean.get("bwd_allreduce", 0.0) > 0:
        return mean["bwd_allreduce"], "bwd_allreduce"
    if profile is None:
        return None
    micro, accum = int(result.micro_batch(record) or profile.micro_batch), result.grad_accum(record)
    excess = measured_step_ms(record) - sum(profile.compute_ms(micro, accum).values())
    return (excess, "epoch excess") if excess > 0 else None


def calibrate(records: Iterable[Mapping[str, Any]], prior: Interconnect | None = None,
              profile: Profile | None = None, bytes_per_elem: int | None = None) -> Calibration:
    """Fit the interconnect to measured multi-rank runs.

    Each completed run with N > 1 gives one equation  t = a*B/bw_link + b*L  with a = 2(N-1)/N, b = 2(N-1),
    B its gradient bytes, link = inter when it spans nodes, t its measured all-reduce time per step: DeepSpeed's
    bwd_allreduce timer, or, for a run without timers and given a `profile`, its step time minus the profile's
    predicted compute step ("epoch excess"). Unknowns: 1/bw for each link seen, and L when the points can tell
    latency from bandwidth (least squares, full rank; a fit giving a negative value falls back). Otherwise L
    stays at the prior's and each link's bandwidth is the least-squares fit with L held. Links no run used
    keep the prior's bandwidth.
    """
    import numpy as np

    prior = prior or Interconnect()
    points: list[CalibrationPoint] = []
    rows: list[tuple[str, float, float, float]] = []   # link, a*B (bytes), b (hops), t (s)
    for record in records:
        n = int(record.get("world_size") or 1)
        if record.get("status", "completed") != "completed" or n < 2:
            continue
        observed = _comm_observation(record, profile)
        if observed is None:
            continue
        t_ms, how = observed
        nodes = int(record.get("nodes") or 1)
        link = "inter" if nodes > 1 else "intra"
        rows.append((link, 2 * (n - 1) / n * grad_bytes_of(record, bytes_per_elem), 2 * (n - 1), t_ms / 1e3))
        points.append(CalibrationPoint(world_size=n, nodes=nodes, link=link, allreduce_ms=t_ms, source=how,
                                       run_dir=str(record.get("run_dir") or "")))
    if not rows:
        return Calibration(interconnect=prior, fitted=(), points=(),
                           notes=("No multi-rank run with an all-reduce time: the prior interconnect is used.",))
    links = sorted({r[0] for r in rows})
    column = {link: i for i, link in enumerate(links)}
    volume = np.zeros((len(rows), len(links)))
    hops = np.array([r[2] for r in rows])
    t = np.array([r[3] for r in rows])
    for i, (link, a_bytes, _, _) in enumerate(rows):
        volume[i, column[link]] = a_bytes
    notes = []
    solution = None
    design = np.column_stack([volume, hops])
    if len(rows) > len(links) and np.linalg.matrix_rank(design) == design.shape[1]:
        x, *_ = np.linalg.lstsq(design, t, rcond=None)
        if np.all(x[:-1] > 0) and x[-1] >= 0:
            solution, latency, fitted_latency = x[:-1], float(x[-1]), True
        else:
            notes.append("The joint bandwidth+latency fit gave a non-physical value; latency held at the prior's.")
    if solution is None:
        latency, fitted_latency = prior.latency_us * 1e-6, False
        residual = t - hops * latency
        if np.any(residual <= 0):
            notes.append("Measured all-reduce times are below the prior latency term; latency set to 0.")
            latency, residual = 0.0, t
        solution = np.array([float(volume[:, j] @ residual) / float(volume[:, j] @ volume[:, j])
                             for j in range(len(links))])
    bandwidth = {link: float(1.0 / solution[column[link]] / GBIT) for link in links}
    fitted_interconnect = Interconnect(intra_node_gbps=bandwidth.get("intra", prior.intra_node_gbps),
                                       inter_node_gbps=bandwidth.get("inter", prior.inter_node_gbps),
                                       latency_us=float(latency) * 1e6)
    predicted = volume @ solution + hops * latency
    fitted = tuple(f"{link}_node_gbps" for link in links) + (("latency_us",) if fitted_latency else ())
    return Calibration(interconnect=fitted_interconnect, fitted=fitted, points=tuple(points),
                       residuals_ms=tuple(float(v) for v in (t - predicted) * 1e3), notes=tuple(notes))
