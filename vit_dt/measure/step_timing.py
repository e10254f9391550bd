"""Timing sampled training steps without ever synchronising the device.

On a GPU a timed step used to synchronise four times (before, around the data fetch, after, and inside DeepSpeed's
timer read); each synchronisation empties the launch queue, and the GPU then idles until the host gets ahead
again: ~2% of throughput at one timed step in five on ViT-B/16, more at small batches (docs/performance.md).
Here a timed step only records CUDA events. They are read once the step's last event has completed on the device
(found by a non-blocking query at later steps), or at the next timed step or the end of the epoch, whichever
comes first; by then reading them costs nothing. On a CPU, where work runs synchronously, a mark is simply
`time.perf_counter()`.

Which steps are timed, and the running means of the timed ones, is the StepSampler's business; what the means
say (shares, stragglers) is vit_dt.measure.breakdown's.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch

from vit_dt.measure.breakdown import EXTRA_KEYS, TIMER_KEYS

Mark = Union[float, "torch.cuda.Event"]


class StepSampler:
    """Which steps to time (every `sample_every`-th after `warmup_steps`) and the running means of the timed ones."""

    def __init__(self, sample_every: int, warmup_steps: int):
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {sample_every}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        self.sample_every, self.warmup_steps = sample_every, warmup_steps
        self.reset()

    def should_sample(self, step: int) -> bool:
        """True for steps warmup_steps, warmup_steps + sample_every, ... (0-based step numbers)."""
        return step >= self.warmup_steps and (step - self.warmup_steps) % self.sample_every == 0

    def add(self, timers_ms: Mapping[str, float], data_wait_ms: float, step_ms: float) -> None:
        for key in TIMER_KEYS:
            self._sums[key] += float(timers_ms.get(key, 0.0))
        self._sums["data_wait"] += float(data_wait_ms)
        self._sums["step_time"] += float(step_ms)
        self._samples += 1

    def summary(self) -> dict[str, float]:
        """Mean ms per timed step for each TIMER_KEY, data_wait and step_time, and the number of samples."""
        n = self._samples
        means = {key: (total / n if n else 0.0) for key, total in self._sums.items()}
        return means | {"samples": n}

    def reset(self) -> None:
        self._sums = dict.fromkeys(TIMER_KEYS + EXTRA_KEYS, 0.0)
        self._samples = 0


class DeviceClock:
    """Marks in the device's own timeline: CUDA events on the current stream, or host seconds on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Mark:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def done(mark: Mark) -> bool:
        """Whether the device has reached `mark` (never blocks)."""
        return not isinstance(mark, torch.cuda.Event) or mark.query()

    @staticmethod
    def wait(mark: Mark) -> None:
        """Blocks until the device has reached `mark` (only this event, not the whole device)."""
        if isinstance(mark, torch.cuda.Event):
            mark.synchronize()

    @staticmethod
    def ms(start: Mark, end: Mark) -> float:
        if isinstance(start, torch.cuda.Event):
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


@dataclass
class _TimedStep:
    start: Mark
    end: Mark
    data_wait_ms: float
    info: dict[str, Any] = field(default_factory=dict)


class SampledStepTimer:
    """Decides which steps to time (the sampler), switches the engine's timers on for them, and adds each timed
    step's numbers to the sampler once its device work is done.

        timer.begin(step)            # before fetching the step's data
        ...                          # fetch, micro-steps
        timer.end(data_wait_ms, ...) # after the optimizer step; keyword args reach on_sample with the timers
        timer.finish()               # end of epoch: collects the last timed step (waiting for it if need be)

    The engine keeps one timed step's timers at a time, so a timed step still pending when the next one begins
    is collected first, waiting for the device if it has not got there yet (it is several steps behind then).
    """

    def __init__(self, engine, sampler: StepSampler, clock: DeviceClock,
                 on_sample: Callable[[dict[str, float], dict[str, Any]], None] | None = None):
        self.engine, self.sampler, self.clock, self.on_sample = engine, sampler, clock, on_sample
        self._pending: _TimedStep | None = None
        self._start: Mark | None = None

    def begin(self, step: int) -> bool:
        """Whether step `step` (0-based, in the epoch) is timed; collects the previous timed step if it is done."""
        sampled = self.sampler.should_sample(step)
        if self._pending is not None and (sampled or self.clock.done(self._pending.end)):
            self._collect()
        self._start = self.clock.mark() if sampled else None
        self.engine.set_timing(sampled)
        return sampled

    def end(self, data_wait_ms: float = 0.0, **info: Any) -> None:
        if self._start is None:
            return
        self.engine.set_timing(False)
        self._pending = _TimedStep(self._start, self.clock.mark(), data_wait_ms, info)
        self._start = None

    def poll(self) -> None:
        """Collects the pending timed step if the device has finished it (never blocks): a step line then shows
        the latest loss already available."""
        if self._pending is not None and self.clock.done(self._pending.end):
            self._collect()

    def finish(self) -> None:
        if self._pending is not None:
            self._collect()

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        self.clock.wait(pending.end)
        timers = self.engine.last_step_timers()
        self.sampler.add(timers, data_wait_ms=pending.data_wait_ms,
                         step_ms=self.clock.ms(pending.start, pending.end))
        if self.on_sample:
            self.on_sample(timers, pending.info)
