"""The code snapshot a sweep's jobs import (vit_dt/slurm/snapshot.py) and the provenance gathered with it: a git
checkout's tracked and uncommitted files, an installed package's files, never .venv/outputs/data; the dirty flag,
the diff's hash and the saved diff."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli
from vit_dt.records import provenance
from vit_dt.slurm.snapshot import CODE_SUBDIR, SNAPSHOT_INFO, git_root, make_snapshot


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A small checkout shaped like vit-dt's: a package, a launcher plugin, an ignored .venv, outputs and data."""
    repo = tmp_path / "repo"
    (repo / "vit_dt").mkdir(parents=True)
    (repo / "vit_dt" / "__init__.py").write_text("VERSION = 1\n")
    (repo / "vit_dt" / "trainer.py").write_text("def train():\n    return 'committed'\n")
    (repo / "launchers" / "hydra_plugins" / "p").mkdir(parents=True)
    (repo / "launchers" / "hydra_plugins" / "p" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\noutputs/\ndata/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    for ignored in (".venv/lib/big.py", "outputs/sweeps/x/result.json", "data/digits/train.bin"):
        (repo / ignored).parent.mkdir(parents=True, exist_ok=True)
        (repo / ignored).write_text("ignored")
    return repo


def test_a_checkout_snapshot_holds_tracked_and_uncommitted_files_but_no_venv_outputs_or_data(checkout, tmp_path):
    (checkout / "vit_dt" / "trainer.py").write_text("def train():\n    return 'edited, not committed'\n")
    (checkout / "vit_dt" / "new_module.py").write_text("NEW = True\n")      # untracked, not ignored
    snap = make_snapshot(tmp_path / "sweep", checkout)
    code = tmp_path / "sweep" / CODE_SUBDIR
    assert snap.kind == "git" and snap.path == str(code) and Path(snap.source) == checkout
    assert "edited, not committed" in (code / "vit_dt" / "trainer.py").read_text()
    assert (code / "vit_dt" / "new_module.py").read_text() == "NEW = True\n"
    assert (code / "launchers" / "hydra_plugins" / "p" / "__init__.py").is_file()
    for ignored in (".venv", "outputs", "data", ".git"):
        assert not (code / ignored).exists(), ignored
    assert json.loads((code / SNAPSHOT_INFO).read_text())["files"] == snap.files == 5
    # the snapshot is a copy: editing the working tree afterwards does not reach it
    (checkout / "vit_dt" / "trainer.py").write_text("raise ImportError('broken')\n")
    assert "edited, not committed" in (code / "vit_dt" / "trainer.py").read_text()


def test_uncommitted_changes_set_the_dirty_flag_and_the_diff_is_hashed_and_saved_once(checkout, tmp_path):
    clean, diff = provenance.git_state(checkout)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and diff == b""
    assert clean["commit"] == _git(checkout, "rev-parse", "HEAD").strip() and clean["branch"] in ("master", "main")
    (checkout / "vit_dt" / "trainer.py").write_text("def train():\n    return 'edited'\n")
    (checkout / "vit_dt" / "new_module.py").write_text("NEW = True\n")
    block, diff, packages = provenance.gather(checkout, is_checkout=True, snapshot=None, argv=["vit-dt", "sweep"])
    code = block["code"]
    assert code["dirty"] is True and code["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    assert b"+    return 'edited'" in diff and b"+NEW = True" in diff
    saved = provenance.save_sweep_files(tmp_path, block, diff, packages)
    assert (tmp_path / saved["code"]["diff_file"]).read_bytes() == diff
    listed = (tmp_path / saved["environment"]["packages_file"]).read_text().splitlines()
    assert provenance.packages_digest(listed) == saved["environment"]["packages_sha256"]
    assert any(line.startswith("omegaconf==") for line in listed)
    assert provenance.code_version({"provenance": saved}) == code["commit"][:7] + "+dirty"


def test_an_installed_package_without_git_still_gets_a_snapshot(tmp_path):
    site = tmp_path / "site-packages"
    (site / "vit_dt" / "slurm").mkdir(parents=True)
    (site / "vit_dt" / "__init__.py").write_text("")
    (site / "vit_dt" / "slurm" / "submit.py").write_text("X = 1\n")
    (site / "vit_dt" / "data").mkdir()
    (site / "vit_dt" / "data" / "build.py").write_text("Y = 2\n")     # a package named like a data folder
    (site / "vit_dt" / "__pycache__").mkdir()
    (site / "vit_dt" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert git_root(site) is None
    snap = make_snapshot(tmp_path / "sweep", site)
    code = Path(snap.path)
    assert snap.kind == "package"
    assert (code / "vit_dt" / "slurm" / "submit.py").read_text() == "X = 1\n"
    assert (code / "vit_dt" / "data" / "build.py").read_text() == "Y = 2\n"
    assert not (code / "vit_dt" / "__pycache__").exists()
    assert (code / "launchers" / "hydra_plugins" / "vit_dt_launcher" / "launcher.py").is_file()  # the plugin too
    block, diff, _ = provenance.gather(site, is_checkout=False, snapshot=snap.path)
    assert block["code"]["source"] == "package" and block["code"]["commit"] is None and diff == b""


def test_this_repository_snapshots_small(tmp_path):
    snap = make_snapshot(tmp_path, REPO)
    assert snap.kind == "git" and snap.bytes < 20e6 and not snap.skipped
    assert (Path(snap.path) / "vit_dt" / "slurm" / "snapshot.py").is_file()
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "vit_dt"], capture_output=True, text=True).stdout
    missing = [n for n in tracked.split() if (REPO / n).is_file() and not (Path(snap.path) / n).is_file()]
    assert not missing, missing          # every module of the package: vit_dt/data/ too
    assert not (Path(snap.path) / ".venv").exists()


def test_a_dry_run_names_the_snapshot_and_no_snapshot_says_so(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cli("sweep", "cluster=vaughan", f"hydra.sweep.dir={sweep}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would be frozen into {sweep / CODE_SUBDIR}" in proc.stdout
    assert f"export PYTHONPATH={sweep / CODE_SUBDIR}:" in proc.stdout
    opted_out = tmp_path / "n"
    proc = run_cli("sweep", "cluster=vaughan", f"hydra.sweep.dir={opted_out}", "--dry-run", "--no-snapshot")
    assert proc.returncode == 0, proc.stderr
    assert "not frozen (--no-snapshot)" in proc.stdout and "export PYTHONPATH" not in proc.stdout
    manifest = json.loads((opted_out / "sweep.json").read_text())
    assert manifest["code"]["no_snapshot"] is True and manifest["code"]["snapshot"] is None


def test_resubmissions_use_the_sweeps_own_snapshot_and_refuse_when_it_is_gone(tmp_path):
    """`--resume` and later submissions read the snapshot from sweep.json; a moved sweep uses its copy's."""
    from vit_dt.slurm.snapshot import SnapshotError, code_dir_of

    manifest = {"code": {"snapshot": "/elsewhere/old-sweep/code", "frozen": True}}
    with pytest.raises(SnapshotError, match="code snapshot .* is gone"):
        code_dir_of(tmp_path, manifest)
    (tmp_path / CODE_SUBDIR).mkdir()
    assert code_dir_of(tmp_path, manifest) == str(tmp_path / CODE_SUBDIR)
    assert code_dir_of(tmp_path, {"code": {"snapshot": None, "no_snapshot": True}}) is None
    assert code_dir_of(tmp_path, {}) is None          # a sweep made before snapshots


def test_a_local_sweeps_points_import_the_snapshot(tmp_path):
    """cluster=local runs its points here, one after another: each imports the sweep's snapshot, as a Slurm job."""
    sweep = tmp_path / "local"
    proc = run_cli("sweep", "cluster=local", "dataset=digits", "trainer.seed=0,1", f"hydra.sweep.dir={sweep}",
                   "hydra.launcher.entry=vit_dt.slurm.job_entry:noop_entry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for index in (0, 1):
        (launch,) = (sweep / "points" / str(index) / "launch").glob("rank*.json")
        assert json.loads(launch.read_text())["code"] == str(sweep / CODE_SUBDIR / "vit_dt")


def test_a_shipped_snapshot_is_kept_and_its_code_provenance_is_the_one_gathered_where_it_was_frozen(checkout,
                                                                                                     tmp_path):
    """`vit-dt sweep --remote` freezes the code on the laptop and ships it with its git facts; the login node keeps
    both (hydra.launcher.shipped_snapshot=true) and adds only what it knows: the environment its jobs run."""
    from vit_dt.slurm.snapshot import SnapshotError, freeze

    (checkout / "vit_dt" / "trainer.py").write_text("def train():\n    return 'edited on the laptop'\n")
    sweep = tmp_path / "there"
    with pytest.raises(SnapshotError, match="holds no shipped snapshot"):
        freeze(sweep, {}, [], snapshot=True, shipped=True)
    make_snapshot(sweep, checkout)
    code, diff = provenance.code_fields(checkout, is_checkout=True)
    provenance.write_shipped(sweep, code, diff, ["vit-dt", "sweep", "--remote", "login", "cluster=x"])
    (sweep / CODE_SUBDIR / "marker").write_text("shipped")       # not copied again: the marker stays
    manifest: dict = {}
    freeze(sweep, manifest, [], snapshot=True, shipped=True)
    assert (sweep / CODE_SUBDIR / "marker").read_text() == "shipped"
    assert manifest["code"]["shipped"] is True and manifest["code"]["snapshot"] == str(sweep / CODE_SUBDIR)
    assert manifest["code"]["kind"] == "git" and Path(manifest["code"]["source"]) == checkout
    block = manifest["provenance"]
    assert block["code"]["commit"] == code["commit"] and block["code"]["dirty"] is True
    assert block["code"]["snapshot"] == str(sweep / CODE_SUBDIR)
    assert block["request"]["command_line"] == "vit-dt sweep --remote login cluster=x"
    assert (sweep / block["code"]["diff_file"]).read_bytes() == diff
    assert block["environment"]["packages_count"] > 0              # the login node's own packages
