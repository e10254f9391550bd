"""vit_dt.atomic: the one atomic, durable write every wing uses."""
from __future__ import annotations

import json
import stat
import threading

import pytest

from vit_dt import atomic


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "er" / "result.json"
    atomic.write_text(target, "old\n")
    assert atomic.write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_mode_is_applied_for_secrets(tmp_path):
    target = atomic.write_text(tmp_path / "password", "s3cret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = atomic.write_text(tmp_path / "sweep.json", '{"points": []}\n')
    with pytest.raises(TypeError):
        atomic.write_text(target, b"bytes are not text")          # fails inside the write, after the temp exists
    assert target.read_text() == '{"points": []}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]


def test_write_json_ends_with_a_newline_and_reads_back(tmp_path):
    target = atomic.write_json(tmp_path / "m.json", {"a": [1, 2]}, indent=1)
    assert target.read_text().endswith("}\n") and json.loads(target.read_text()) == {"a": [1, 2]}


def test_concurrent_writers_never_leave_a_mixed_file(tmp_path):
    target = tmp_path / "shared.json"
    bodies = [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(8)]
    threads = [threading.Thread(target=lambda b=b: [atomic.write_text(target, b) for _ in range(20)])
               for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in bodies
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]
