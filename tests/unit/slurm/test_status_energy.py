"""`vit-dt status` shows vit-dt's own energy beside Slurm's ConsumedEnergy where either exists; a cluster that
gathers no energy reports 0, which is "not recorded", not a free job."""
from __future__ import annotations

from vit_dt.slurm.status import PointStatus, _joules, format_table


def _row(index: int, energy_j=None, slurm_energy_j=None) -> PointStatus:
    return PointStatus(index=index, overrides=[f"resources.gpus={index + 1}"], job_id=f"7_{index}", state="completed",
                       slurm_state="COMPLETED", result="completed", run_dir=f"/s/points/{index}", stdout=None,
                       stderr=None, attempts=1, energy_j=energy_j, slurm_energy_j=slurm_energy_j)


def test_consumed_energy_zero_or_empty_is_not_recorded() -> None:
    assert _joules("0") is None and _joules("") is None and _joules(None) is None
    assert _joules("12345") == 12345.0


def test_the_energy_columns_appear_only_with_a_figure() -> None:
    manifest = {"sweep_dir": "/s"}
    plain = format_table(manifest, [_row(0), _row(1)])
    assert "energy" not in plain.splitlines()[1]
    table = format_table(manifest, [_row(0, energy_j=1520.4, slurm_energy_j=2210.0), _row(1)])
    header, first, second = table.splitlines()[1:4]
    assert "energy J (vit-dt)" in header and "energy J (Slurm)" in header
    assert first.split()[6:9] == ["1520", "2210", "resources.gpus=1"]      # after the code column
    assert second.split()[6:9] == ["-", "-", "resources.gpus=2"]
