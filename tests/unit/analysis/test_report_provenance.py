"""The report states the code and environment of its runs, and a series whose runs carry two commits is split in
two and warned about in the header (vit_dt/analysis/provenance_check.py)."""
from __future__ import annotations

import json

from tests.fixtures.sample_records import make_record, write_store
from vit_dt.analysis.report import build_report

OLD, NEW = "1111111aaaaaaa" + "0" * 26, "2222222bbbbbbb" + "0" * 26
PACKAGES = "cd" * 32


def _with_code(record: dict, commit: str) -> dict:
    record["provenance"] = {"code": {"commit": commit, "dirty": False, "diff_sha256": None},
                            "environment": {"packages_sha256": PACKAGES, "python": "3.11.7", "torch": "2.4.0",
                                            "deepspeed": "0.15.0"}, "machine": {}, "request": {}}
    return record


def _series_of(commits: dict[int, str]) -> list[dict]:
    return [_with_code(make_record(world_size=n, epoch_time_s=100.0 / n, micro_batch=64, point=i), commit)
            for i, (n, commit) in enumerate(commits.items())]


def test_one_commit_is_stated_and_nothing_is_split(tmp_path):
    write_store(tmp_path, _series_of({1: OLD, 2: OLD, 4: OLD}))
    report = build_report([tmp_path])
    header = report.data["meta"]["provenance"]
    assert header[0] == "Code: 1111111 (3 runs)."
    assert header[1] == f"Environment: packages {PACKAGES[:8]} (3 runs); python 3.11.7, torch 2.4.0, deepspeed 0.15.0."
    assert not any(line.startswith("Warning") for line in header)
    assert len(report.data["series"]) == 1
    assert "Code: 1111111 (3 runs)." in report.markdown.read_text()


def test_a_series_of_two_commits_is_split_and_the_header_warns(tmp_path):
    new_single = _with_code(make_record(world_size=1, epoch_time_s=100.0, micro_batch=64, point=3), NEW)
    write_store(tmp_path, _series_of({1: OLD, 2: OLD, 4: NEW}) + [new_single])
    report = build_report([tmp_path])
    header = report.data["meta"]["provenance"]
    warning = next(line for line in header if line.startswith("Warning"))
    assert "2 code versions (1111111, 2222222)" in warning and "kept apart" in warning
    labels = sorted(s["label"] for s in report.data["series"])
    assert len(labels) == 2 and any("code=1111111" in label for label in labels) \
        and any("code=2222222" in label for label in labels)
    by_code = {("1111111" if "code=1111111" in s["label"] else "2222222"): s for s in report.data["series"]}
    assert [p["world_size"] for p in by_code["1111111"]["points"]] == [1, 2]
    assert [p["world_size"] for p in by_code["2222222"]["points"]] == [1, 4]
    assert warning in report.markdown.read_text() and json.loads(report.json.read_text())["meta"]["provenance"]


def test_records_without_provenance_neither_split_nor_break_the_report(tmp_path):
    records = _series_of({1: OLD, 2: OLD})
    records.append(make_record(world_size=4, epoch_time_s=25.0, micro_batch=64, point=2))   # an older record
    write_store(tmp_path, records)
    report = build_report([tmp_path])
    assert len(report.data["series"]) == 1
    assert report.data["meta"]["provenance"][0] == "Code: 1111111 (2 runs), unknown (no provenance) (1 run)."


def test_predict_refuses_a_profile_from_runs_of_two_commits_and_where_picks_one():
    import pytest

    from vit_dt.analysis.scaling_model import ModelError
    from vit_dt.commands.predict import filter_where, pick_profile_record

    runs = [_with_code(make_record(world_size=1, epoch_time_s=100.0, micro_batch=64, point=i), commit)
            for i, commit in enumerate((OLD, NEW))]
    with pytest.raises(ModelError, match=r"code: 1111111, 2222222.*--where code=1111111"):
        pick_profile_record(runs)
    assert pick_profile_record(filter_where(runs, ["code=2222222"]))["point"] == 1
