"""2-node points inside a real container runtime (Charliecloud's ch-run, Debian's charliecloud-runtime), on the real
local Slurm cluster: the profile's `container:` block puts each rank in the image (vit_dt/slurm/container.py). One
sweep, two points: srun starting ch-run as each task, and mpirun starting it on each node (the MPI wrapper maps the
ranks inside); rank discovery works inside under both. (srun --mpi=pmix is srun's path with PMIx's variables: left
out to keep CI's time, it passed the same checks when run by hand.)

The image (tests/fixtures/container_image.py) has its own root and /etc, with an /etc/os-release found nowhere on the
host, and binds the host's /usr and this Python. `--private-tmp` hides the host's /tmp, so the sweep directory (a
tmp path) is reached only through the bind vit-dt adds for it. Proof that each rank ran inside: its launch record and
the result's provenance hold the image's os-release, ch-run's CH_RUNNING marker and a mount namespace other than
this process's. The W&B key set here is in no file of the sweep.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.container_image import IMAGE_OS, build_image, host_software
from tests.fixtures.sweeps import wait_until_done
from vit_dt.slurm.manifest import read_manifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def charliecloud_image(tmp_path_factory):
    """The directory image and the host software it binds, built once per session."""
    if shutil.which("ch-run") is None:
        if os.environ.get("VIT_DT_REQUIRE_SLURM"):
            pytest.fail("ch-run is not installed (scripts/install-system-deps.sh installs charliecloud-runtime)")
        pytest.skip("ch-run is not installed: run scripts/install-system-deps.sh as root (charliecloud-runtime); "
                    "set VIT_DT_REQUIRE_SLURM=1 to fail instead")
    binds = host_software()
    return build_image(tmp_path_factory.mktemp("charliecloud"), binds), binds


def _list(values: list[str]) -> str:
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


@pytest.mark.timeout(900)
def test_two_node_points_train_inside_a_charliecloud_container(slurm_cluster, charliecloud_image, tmp_path):
    image, binds = charliecloud_image
    sweep = tmp_path / "sweep"
    key = secrets.token_hex(20)    # made here: the code snapshot holds this file, which must not hold the key
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_API_KEY": key}
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dt.cli", "sweep", "cluster=localslurm", "resources.layout=inter",
         "resources.gpus=2", "dataset=digits", "model=vit_tiny", "engine=ddp", "trainer.micro_batch=16",
         "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "wandb.mode=disabled",
         "cluster.container.runtime=charliecloud", f"cluster.container.image={image}",
         f"cluster.container.binds={_list(binds)}", "cluster.container.flags=[--private-tmp]",
         "cluster.container.env=[WANDB_API_KEY]", "cluster.launcher=srun,mpirun",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = read_manifest(sweep)
    launch_lines = {job["launcher"]: Path(job["script"]).read_text().splitlines()[-1] for job in manifest["jobs"]}
    assert sorted(launch_lines) == ["mpirun", "srun"]
    for line in launch_lines.values():   # the sweep directory's bind (its top-level directory) is vit-dt's own
        assert f" ch-run -b /{sweep.parts[1]} " in line and f" --private-tmp {image} -- " in line, line

    rows = wait_until_done(sweep)
    assert [(r.state, r.result) for r in rows] == [("completed", "completed")] * 2, [r.stderr for r in rows]
    host_ns = os.readlink("/proc/self/ns/mnt")
    store = {r["point"]: r for r in map(json.loads, (sweep / "results.jsonl").read_text().splitlines())}
    for point in manifest["points"]:
        run_dir = Path(point["run_dir"])
        launches = [json.loads(p.read_text()) for p in sorted(run_dir.glob("launch/rank*.json"))]
        where = (point["launcher"], launches)
        assert [r["rank_label"] for r in launches] == ["0", "1"], where
        assert len({r["env"]["SLURMD_NODENAME"] for r in launches}) == 2, where   # one rank on each node
        for record in launches:
            inside = record["container"]
            assert inside["os"] == IMAGE_OS and "CH_RUNNING" in inside["markers"], where
            assert inside["mnt_ns"] != host_ns, where

        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "completed" and result["epochs"], where
        container = result["provenance"]["container"]
        assert container["runtime"] == "charliecloud" and container["image"] == str(image)
        assert container["identity"]["kind"] == "directory" and container["identity"]["id"].startswith("mtime:")
        assert container["seen"]["os"] == IMAGE_OS and container["seen"]["mnt_ns"] != host_ns
        assert store[point["index"]]["provenance"]["container"] == container

    leaked = [p for p in sweep.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked and key not in proc.stdout + proc.stderr, leaked
