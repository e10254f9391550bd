"""The swept knobs: config settings that change a run's speed or what it learns and do not follow from its world
size; records that differ in one split into separate series (vit_dt/analysis/series.py). Pure functions."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vit_dt.records import result

# Config settings that change a run's speed or what it learns and do not follow from its world size. When the
# records of a report differ in one, runs that differ in it are separate series (labelled with its value) instead of
# averaging into one point. Not among them: a seed (runs that differ only in it are repeats of one point) and the
# epoch count (the mean epoch time after the first does not depend on it; accuracy is shown per run).
SERIES_KNOBS = ("optimizer.", "deepspeed.bf16_mode", "deepspeed.overrides", "deepspeed.wall_clock_breakdown",
                "trainer.compile", "trainer.grad_clip", "trainer.lr_schedule", "trainer.warmup_epochs",
                "trainer.max_steps_per_epoch", "trainer.timer_sample_every", "trainer.balance",
                "model.fast_attention", "model.activation_checkpointing", "model.dropout", "model.patch_size",
                "model.image_size", "dataset.hflip",
                "dataset.val_fraction")


def knob_values(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's SERIES_KNOBS settings as flat `key: value` text (nested groups joined with dots), and its code
    version and package digest (provenance_check.py): runs of other code are not repeats of the same point."""
    from vit_dt.analysis.provenance_check import provenance_knobs

    knobs = {k: v for k, v in result.flat_config(record).items() if k.startswith(SERIES_KNOBS)}
    return knobs | provenance_knobs(record)


def swept_knobs(records: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The SERIES_KNOBS the records differ in, with a swapped config group named once: `optimizer.name` stands for
    the lr, betas, ... that came with the other optimizer, unless one of them also splits runs of the same name.

    Only keys every record with a config has count: a setting added to vit-dt later is absent from older records,
    and merging their store with a newer one must not split every series by it.
    """
    per_record = [knob_values(r) for r in records if r.get("config")]
    if len(per_record) < 2:
        return ()
    common = set.intersection(*(set(values) for values in per_record))
    varying = sorted(k for k in common if len({values[k] for values in per_record}) > 1)
    chosen = [k for k in varying if k.endswith(".name")]

    def groups(keys: Sequence[str]) -> int:
        return len({tuple(values[k] for k in keys) for values in per_record})

    for key in varying:
        swapped_group = f"{key.split('.')[0]}.name" in chosen
        if key not in chosen and (not swapped_group or groups([*chosen, key]) > groups(chosen)):
            chosen.append(key)
    return tuple(sorted(chosen))


def knob_values_text(record: Mapping[str, Any], knobs: Sequence[str]) -> str:
    """The record's values of the swept knobs, short (for per-run labels): "fused" or "fused, true"."""
    values = knob_values(record) if knobs else {}
    return ", ".join(values.get(k, "unset") for k in knobs)
