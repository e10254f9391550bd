"""DeepSpeed's wall-clock timers, driven by vit-dt: switched on for sampled steps only, read without a device
synchronisation, and kept from printing.

DeepSpeed's `wall_clock_breakdown` timers (fwd, bwd = bwd_inner + bwd_allreduce, step) run on sampled steps only
and are read once those steps have finished on the device (vit_dt.measure.step_timing), so timing never synchronises
it. What the numbers mean and how they are analysed: vit_dt.measure.breakdown, docs/metrics.md.
"""
from __future__ import annotations

from typing import Any

from vit_dt.measure.breakdown import TIMER_KEYS


def read_engine_timers(engine: Any) -> dict[str, float]:
    """This rank's DeepSpeed timers (ms) for the last timed optimizer step, reset for the next timed one.

    The global timers (fwd, bwd, ...) add up all micro-steps of the accumulation window. On a GPU they are CUDA
    events: read them once the step's device work is done (vit_dt.measure.step_timing), or reading waits for it. This is
    what `engine.get_wall_clock_timers()` would report, read later: DeepSpeed fills that snapshot inside `step()`,
    which synchronises the device on every timed step. A key it did not time reads 0.0.
    """
    timers = engine.timers.timers
    return {key: float(timers[key].elapsed(reset=True)) if key in timers else 0.0 for key in TIMER_KEYS}


def quiet_engine_timer_log(engine: Any) -> None:
    """DeepSpeed prints timed steps' timers from rank 0 (print_dist, whatever the log level) and ZeRO logs its
    optimizer timers every step; vit-dt records the breakdown itself. Keep the reset the print did, without reading
    the timers first (a read synchronises the device)."""
    timers = getattr(engine, "timers", None)
    if timers is None or not hasattr(timers, "timers"):
        return

    def reset_only(names, normalizer=1.0, reset=True, memory_breakdown=False, ranks=None):
        for name in names:
            if reset and name in timers.timers:
                timers.timers[name].reset()

    timers.log = reset_only


def set_engine_timing(engine: Any, enabled: bool) -> None:
    """Switch DeepSpeed's wall-clock timers on or off for the next optimizer step; call between steps.

    The engine decides at init which timers it starts and stops (`engine.engine_timers`); swapping that set gives
    timed steps their events and untimed steps no timer work at all. Its `wall_clock_breakdown` flag stays off:
    with it on, `step()` reads the timers at once (a device synchronisation) and resets them; vit-dt reads them
    later with `read_engine_timers`, which also resets them, so each timed step reports that step alone.
    """
    from deepspeed.runtime.engine import EngineTimers

    engine._config.wall_clock_breakdown = False
    engine.engine_timers = EngineTimers(enable_micro_timers=False,
                                        enable_global_timers=bool(enabled) or engine.flops_profiler_enabled())
