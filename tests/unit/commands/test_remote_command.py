"""`--remote` on the command line (vit_dt/commands/remote.py): which word is the login node, which options go with it,
and the record `status|results|report|sync --remote` read (vit_dt/slurm/remote_sweep.py). Nothing here connects:
the real sshd is in tests/e2e/test_remote_slurm.py."""
from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli_here
from vit_dt.commands.remote import take_destination
from vit_dt.slurm.remote import RemoteError
from vit_dt.slurm.remote_sweep import read_record


@pytest.mark.parametrize("args, expected", [
    (["--remote", "alice@login:2222", "cluster=x"], (True, "alice@login:2222", ["cluster=x"])),
    (["cluster=x", "--remote=login"], (True, "login", ["cluster=x"])),
    (["--remote", "cluster=x"], (True, None, ["cluster=x"])),                 # an override: the profile's host
    (["--remote", "--dry-run", "cluster=x"], (True, None, ["--dry-run", "cluster=x"])),
    (["cluster=x"], (False, None, ["cluster=x"])),
])
def test_the_word_after_remote_is_the_login_node_unless_it_is_an_option_or_an_override(args, expected):
    assert take_destination(args) == expected


@pytest.mark.parametrize("option", ["--resume", "--calibrate-from", "--no-snapshot", "--cfg"])
def test_options_about_this_machines_files_do_not_go_with_remote(option):
    proc = run_cli_here("sweep", "--remote", "login", option, "x", "cluster=localslurm")
    assert proc.returncode == 2 and f"{option} does not go with --remote" in proc.stderr


def test_an_unknown_option_is_refused_before_connecting():
    proc = run_cli_here("sweep", "--remote", "login", "--dryrun", "cluster=localslurm")
    assert proc.returncode == 2 and "unknown option(s) ['--dryrun']" in proc.stderr


def test_without_a_host_the_sweep_is_refused_naming_both_ways_to_give_one():
    proc = run_cli_here("sweep", "--remote", "cluster=localslurm", "--dry-run")
    assert proc.returncode == 2 and "--remote [user@]host[:port]" in proc.stderr and "cluster.remote.host" in proc.stderr


def test_the_latest_record_or_a_named_one_is_read(tmp_path):
    with pytest.raises(RemoteError, match="no remote sweep recorded"):
        read_record(None, tmp_path)
    for name in ("20260101-120000", "20260101-130000"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "remote": {"host": "h"},
                                                            "sweep_dir": f"/there/{name}", "local_dir": "x"}))
    assert read_record(None, tmp_path)["name"] == "20260101-130000"       # the one written last
    assert read_record("20260101-120000", tmp_path)["sweep_dir"] == "/there/20260101-120000"
    with pytest.raises(RemoteError, match="recorded: 20260101-120000, 20260101-130000"):
        read_record("nope", tmp_path)


def test_status_remote_without_any_record_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_DT_OUT_DIR", str(tmp_path))
    for command in ("status", "report", "results", "sync"):
        proc = run_cli_here(command, "--remote")
        assert proc.returncode == 2 and "vit-dt sweep --remote" in proc.stderr, (command, proc.stderr)
