"""What code and environment the runs of a report came from, and whether a series mixes them. Pure functions.

Runs of different code versions or package sets are not repeats of one measurement: like runs that differ in a
swept knob (swept_knobs.py), they are kept apart, as series of their own labelled `code=...` / `packages=...`
(`provenance_knobs`, which swept_knobs.knob_values adds to the config's knobs), and the report's header says so.
Records written before provenance existed carry none: they neither split nor warn (a key only some records have
never splits, swept_knobs), and the header counts them as unknown.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vit_dt.records import provenance

CODE_KNOB = "code"           # pseudo-knobs: not config keys (those are dotted), so they never collide with one
PACKAGES_KNOB = "packages"
SHORT = 8                    # characters of a digest shown


def code_label(record: Mapping[str, Any]) -> str | None:
    """The code version, precise: a dirty tree's label carries its diff's hash (two different edits of one commit
    are two code versions)."""
    version = provenance.code_version(record)
    diff = (provenance.of(record).get(provenance.CODE) or {}).get(provenance.DIFF_SHA256)
    return f"{version}@{diff[:6]}" if version and diff else version


def packages_label(record: Mapping[str, Any]) -> str | None:
    digest = provenance.packages_of(record)
    return digest[:SHORT] if digest else None


def provenance_knobs(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's code version and package digest as knob values (absent when the record has no provenance)."""
    values = {CODE_KNOB: code_label(record), PACKAGES_KNOB: packages_label(record)}
    return {k: v for k, v in values.items() if v is not None}


def _counted(labels: Iterable[str | None]) -> str:
    counts = Counter(label or "unknown (no provenance)" for label in labels)
    return ", ".join(f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in sorted(counts.items()))


def header_lines(records: Sequence[Mapping[str, Any]], knobs: Sequence[str] = ()) -> list[str]:
    """The report header's statement of the runs' code and environment, then a warning per thing they mix."""
    if not records:
        return []
    environment = [provenance.of(r).get(provenance.ENVIRONMENT) or {} for r in records]
    versions = {f"python {e.get('python')}, torch {e.get('torch')}, deepspeed {e.get('deepspeed')}"
                for e in environment if e.get("python")}
    lines = [f"Code: {_counted(code_label(r) for r in records)}.",
             f"Environment: packages {_counted(packages_label(r) for r in records)}"
             + (f"; {'; '.join(sorted(versions))}." if versions else ".")]
    codes = {code_label(r) for r in records} - {None}
    packages = {packages_label(r) for r in records} - {None}
    for what, found, knob in (("code versions", codes, CODE_KNOB), ("package sets", packages, PACKAGES_KNOB)):
        if len(found) > 1:
            kept = ("their runs are kept apart as separate series (labelled " + knob + "=...)" if knob in knobs
                    else "runs without provenance cannot be told apart")
            lines.append(f"Warning: these runs come from {len(found)} {what} ({', '.join(sorted(found))}); "
                         f"{kept}: do not compare them as one measurement.")
    return lines
