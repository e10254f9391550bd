"""A 2-node point inside a real container runtime (Charliecloud's ch-run, Debian's charliecloud-runtime), on the real
local Slurm cluster: the profile's `container:` block puts each rank in the image (vit_dt/slurm/container.py).

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
def test_a_two_node_point_trains_inside_a_charliecloud_container(slurm_cluster, charliecloud_image, tmp_path):
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
         "cluster.container.env=[WANDB_API_KEY]", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = read_manifest(sweep)
    (job,) = manifest["jobs"]
    script = Path(job["script"]).read_text()
    launch = script.splitlines()[-1]
    assert f" ch-run -b /{sweep.parts[1]} " in launch and f" --private-tmp {image} -- " in launch, launch

    (row,) = wait_until_done(sweep)
    assert (row.state, row.result) == ("completed", "completed"), row.stderr
    host_ns = os.readlink("/proc/self/ns/mnt")
    (point,) = manifest["points"]
    run_dir = Path(point["run_dir"])
    launches = [json.loads(p.read_text()) for p in sorted(run_dir.glob("launch/rank*.json"))]
    assert len(launches) == 2 and len({r["env"]["SLURM_NODEID"] for r in launches}) == 2   # one rank per node
    for record in launches:
        inside = record["container"]
        assert inside["os"] == IMAGE_OS and "CH_RUNNING" in inside["markers"], inside
        assert inside["mnt_ns"] != host_ns, inside

    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"]
    container = result["provenance"]["container"]
    assert container["runtime"] == "charliecloud" and container["image"] == str(image)
    assert container["identity"]["kind"] == "directory" and container["identity"]["id"].startswith("mtime:")
    assert container["seen"]["os"] == IMAGE_OS and container["seen"]["mnt_ns"] != host_ns
    store = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert store[0]["provenance"]["container"] == container

    leaked = [p for p in sweep.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked and key not in proc.stdout + proc.stderr, leaked
