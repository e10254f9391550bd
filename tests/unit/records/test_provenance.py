"""Where people look for a point's code version: `vit-dt results` and `vit-dt status` show it (short commit,
"+dirty"), from the provenance block (vit_dt/records/provenance.py)."""
from __future__ import annotations

import json

from tests.helpers import run_cli
from vit_dt.records import provenance
from vit_dt.records.table import table_row
from vit_dt.slurm.status import format_table, sweep_status

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def block(commit: str | None = COMMIT, dirty: bool = False) -> dict:
    return {"code": {"commit": commit, "dirty": dirty, "version": "0.1.0"},
            "environment": {"packages_sha256": "ab" * 32}, "machine": {}, "request": {}}


def test_the_code_version_is_the_short_commit_and_dirty_mark():
    assert provenance.code_version({"provenance": block()}) == "0123456"
    assert provenance.code_version({"provenance": block(dirty=True)}) == "0123456+dirty"
    assert provenance.code_version({"provenance": block(commit=None)}) == "pkg 0.1.0"   # an installed package
    assert provenance.code_version({}) is None                                          # an older record
    assert table_row({"point": 0, "provenance": block(dirty=True)})["code"] == "0123456+dirty"


def test_results_and_status_show_each_points_code_version(tmp_path):
    sweep = tmp_path / "sweep"
    points = []
    for index, dirty in ((0, False), (1, True)):
        run_dir = sweep / "points" / str(index)
        run_dir.mkdir(parents=True)
        provenance.write_point(run_dir, block(dirty=dirty), [f"trainer.seed={index}"])
        points.append({"index": index, "run_dir": str(run_dir), "overrides": [f"trainer.seed={index}"],
                       "scheduler": "local", "local_state": "completed", "job_id": str(index)})
        record = {"point": index, "status": "completed", "provenance": block(dirty=dirty), "epochs": []}
        (run_dir / "result.json").write_text(json.dumps(record))
        with open(sweep / "results.jsonl", "a") as store:
            store.write(json.dumps(record) + "\n")
    (sweep / "sweep.json").write_text(json.dumps({"schema_version": 1, "sweep_dir": str(sweep), "points": points,
                                                  "jobs": []}))
    manifest, rows = sweep_status(sweep)
    assert [r.code for r in rows] == ["0123456", "0123456+dirty"]
    table = format_table(manifest, rows)
    assert "code" in table.splitlines()[1] and "0123456+dirty" in table
    proc = run_cli("results", str(sweep))
    assert proc.returncode == 0, proc.stderr
    assert "code" in proc.stdout.splitlines()[0] and "0123456+dirty" in proc.stdout


def test_the_command_line_is_kept_as_typed_with_secrets_redacted(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k3y-value-0123456789")
    line = provenance.command_line(["/x/vit_dt/cli.py", "sweep", "wandb.api_key=abcdefgh12345678",
                                    "wandb.notes=k3y-value-0123456789", "trainer.seed=0,1", "--dry-run"])
    assert line == ("vit-dt sweep 'wandb.api_key=<redacted>' 'wandb.notes=<redacted>' trainer.seed=0,1 --dry-run")
    assert "abcdefgh" not in line and "k3y-value" not in line


def test_the_container_block_says_which_image_ran(tmp_path):
    sif = tmp_path / "vit-dt.sif"
    sif.write_bytes(b"SIF" * 100)
    fields = provenance.container_fields("apptainer", str(sif))
    assert fields["runtime"] == "apptainer" and fields["image"] == str(sif)
    assert fields["identity"]["kind"] == "file" and fields["identity"]["bytes"] == 300
    assert fields["identity"]["id"] == provenance.image_identity(str(sif))["id"]   # the same file: the same identity
    sif.write_bytes(b"SIF" * 101)                                                     # rebuilt in place: another one
    assert provenance.image_identity(str(sif))["id"] != fields["identity"]["id"]
    image = tmp_path / "img"
    (image / "etc").mkdir(parents=True)
    assert provenance.image_identity(str(image))["kind"] == "directory"
    assert provenance.image_identity("nvcr.io#nvidia/pytorch@sha256:" + "ab" * 32) == \
        {"kind": "reference", "digest": "sha256:" + "ab" * 32}
    assert provenance.container_fields("none", None) == {"runtime": "none", "image": None, "identity": None}


def test_a_point_records_its_container_and_a_rank_what_it_sees(tmp_path, monkeypatch):
    provenance.write_point(tmp_path, block(), ["x=1"], provenance.container_fields("pyxis", "nvcr.io#x"))
    assert provenance.read_point(tmp_path)["container"]["runtime"] == "pyxis"
    provenance.write_point(tmp_path, block(), ["x=1"])
    assert provenance.read_point(tmp_path)["container"]["runtime"] == "none"
    for name in provenance.CONTAINER_MARKERS:     # this test may itself run in a container
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CH_RUNNING", "Weird Al Yankovic")
    seen = provenance.container_seen()
    assert seen["markers"] == {"CH_RUNNING": "Weird Al Yankovic"} and seen["mnt_ns"].startswith("mnt:")
