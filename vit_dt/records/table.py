"""`vit-dt results`' table of records: its columns, one row per record, what the points of a sweep differ in, CSV.

Every value is read through vit_dt.records.result, as the report reads it, so both show the same numbers."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vit_dt import atomic
from vit_dt.records import provenance, result
from vit_dt.records.result import flat_config, point_of

TABLE_COLUMNS = ("point", "status", "world_size", "nodes", "global_batch", "epoch_time_s", "img_per_s",
                 "comm_share", "final_val_acc", "code")


def table_row(record: Mapping[str, Any]) -> dict:
    """The columns of `vit-dt results` for one record; values a failed or older record lacks are None (the
    accessors of vit_dt.records.result, which the analysis reads through too)."""
    return {"point": result.point_of(record), "status": result.status(record),
            "world_size": record.get(result.WORLD_SIZE), "nodes": record.get(result.NODES),
            "global_batch": result.global_batch(record), "epoch_time_s": result.epoch_time(record),
            "img_per_s": result.img_per_s(record), "comm_share": record.get("comm_share"),
            "final_val_acc": record.get("final_val_acc"),
            "code": provenance.code_version(record)}      # short commit, "+dirty"; None before provenance


# Config entries that name or place a run rather than describe it: never "what differs" between points.
_BOOKKEEPING = ("out_dir", "point", "run_name", "sweep_dir", "wandb.")


def varying_settings(records: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The config keys whose values differ between the records that carry a config (a sweep's swept settings,
    plus whatever follows from them), bookkeeping left out."""
    configs = [flat_config(r) for r in records if r.get("config")]
    keys = set().union(*configs) if configs else set()
    return tuple(sorted(k for k in keys if not k.startswith(_BOOKKEEPING)
                        and len({c.get(k) for c in configs}) > 1))


def settings_text(record: Mapping[str, Any], keys: Iterable[str]) -> str:
    """`key=value, ...` of `keys` for one record ("" without a config)."""
    values = flat_config(record)
    return ", ".join(f"{k}={values.get(k, 'unset')}" for k in keys) if values else ""


def _sort_key(row: Mapping[str, Any]) -> tuple:
    point = row["point"]
    return (0, point, "") if isinstance(point, int) else (1, 0, str(point))


def sorted_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By point; a point's records (with --all, its superseded ones) keep their store order."""
    return sorted(records, key=lambda r: _sort_key({"point": point_of(r)}))


def results_table(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One row per record (TABLE_COLUMNS), sorted by point."""
    return [table_row(r) for r in sorted_records(records)]


def to_csv(records: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write results_table(records) as CSV (empty cells for missing values), atomically; one more column per
    setting the records differ in (varying_settings), so a table of a sweep says what each point was."""
    records = sorted_records(records)
    varying = varying_settings(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*TABLE_COLUMNS, *varying], lineterminator="\n")
    writer.writeheader()
    for record in records:
        settings = flat_config(record)
        writer.writerow({k: ("" if v is None else v) for k, v in table_row(record).items()}
                        | {k: settings.get(k, "") for k in varying})
    return atomic.write_text(Path(path), buffer.getvalue())
