"""`repeats=N`: a sweep runs each point N times with distinct seeds (trainer.seed, +1, ...), refused next to a swept
seed or as a value below 1, before anything is written."""
from __future__ import annotations

import json

import pytest

from hydra_plugins.vit_dt_launcher.sweeper import expand_repeats
from vit_dt.commands import sweep


def test_repeats_expand_into_distinct_seeds() -> None:
    assert expand_repeats(["resources.nodes=1,2"], 3, 5) == ["resources.nodes=1,2", "trainer.seed=5,6,7"]
    assert expand_repeats(["trainer.seed=9", "x=1"], 2, 9) == ["x=1", "trainer.seed=9,10"]
    assert expand_repeats(["trainer.seed=1,2"], 1, 0) == ["trainer.seed=1,2"]      # repeats=1: as before


@pytest.mark.parametrize("arguments, repeats, message", [
    (["trainer.seed=1,2"], 3, "repeats=3 and trainer.seed=1,2 both sweep the seed"),
    (["repeats=2,3"], 2, "repeats=2,3 is invalid: repeats takes one whole number"),
    ([], 0, "repeats=0 is invalid: it must be an integer >= 1"),
])
def test_repeats_refused_with_the_reason(arguments, repeats, message) -> None:
    with pytest.raises(ValueError, match=message):
        expand_repeats(arguments, repeats, 0)


def test_a_dry_run_sweep_with_repeats_has_a_point_per_seed(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert sweep.main(["cluster=localslurm", "repeats=3", "resources.nodes=1,2", "trainer.seed=5",
                       f"hydra.sweep.dir={out}", "--dry-run"]) == 0
    points = json.loads((out / "sweep.json").read_text())["points"]
    seeds = sorted((p["overrides"][2], p["overrides"][-1]) for p in points)
    assert seeds == [(f"resources.nodes={n}", f"trainer.seed={s}") for n in (1, 2) for s in (5, 6, 7)]
    refused = tmp_path / "refused"
    assert sweep.main(["cluster=localslurm", "repeats=2", "trainer.seed=1,2", f"hydra.sweep.dir={refused}",
                       "--dry-run"]) == 2
    assert "both sweep the seed" in capsys.readouterr().err and not refused.exists()
