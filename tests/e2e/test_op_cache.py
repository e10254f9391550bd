"""DeepSpeed's C++ op on a user's first runs: built once, into the one cache (vit_dt.paths.torch_extensions_dir)
that `make` and every later `vit-dt train` use, announced when it is built, and silent after that."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DIGITS_FAST

pytestmark = pytest.mark.slow

BUILT = Path("deepspeed_shm_comm") / "deepspeed_shm_comm.so"
ANNOUNCED = "building DeepSpeed's deepspeed_shm_comm op once"


def test_the_op_is_built_once_into_the_shared_cache_and_the_next_run_prints_no_build(tmp_path):
    """Without TORCH_EXTENSIONS_DIR (as a user's shell has it, and as `make` leaves it) `vit-dt train` uses the
    one vit-dt cache. Whether a first run here builds depends on what ran before (CI's first DeepSpeed test
    builds it): if it does, it says so; the next run must find it and print neither a build nor compiler lines."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    cache = Path.home() / ".cache" / "vit-dt" / "torch_extensions"     # what docs/reliability.md promises
    built_before = (cache / BUILT).exists()
    outputs = [""] if built_before else []     # built by an earlier run (CI's first DeepSpeed test): one run tells
    for attempt in range(len(outputs), 2):
        proc = subprocess.run([sys.executable, "-m", "vit_dt.cli", "train", *DIGITS_FAST, "trainer.nproc=2",
                               "trainer.epochs=1", "trainer.max_steps_per_epoch=2", f"out_dir={tmp_path / str(attempt)}"],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs.append(proc.stdout + proc.stderr)
    assert (cache / BUILT).exists(), f"no op in the shared cache {cache}"
    if not built_before:
        assert ANNOUNCED in outputs[0], outputs[0][-3000:]
    assert ANNOUNCED not in outputs[1], outputs[1][-3000:]
    assert "gcc " not in outputs[1] and "ninja" not in outputs[1], outputs[1][-3000:]
