"""Energy per epoch: RAPL counters read from a powercap tree (unwrapped at their range; the tree is written here in
the kernel's on-disk layout, since this machine has no /sys/class/powercap), GPU counters through NVML
where importable, and on this CPU machine every figure null with the reason, never 0; the epoch and run summaries;
and the training loop records it per epoch."""
from __future__ import annotations

import pytest

from vit_dt.measure.energy import POWERCAP, EnergyMeter, RaplCounter, epoch_energy, open_gpu, run_energy


def _zone(root, name: str, energy_uj: int, range_uj: int = 1_000_000_000):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return zone


def test_rapl_sums_the_packages_and_unwraps_a_counter(tmp_path) -> None:
    first = _zone(tmp_path, "intel-rapl:0", 999_000_000)
    second = _zone(tmp_path, "intel-rapl:1", 5_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 123)              # a sub-zone (core, dram): inside its package, not added
    counter = RaplCounter(tmp_path)
    (first / "energy_uj").write_text("2000000\n")        # wrapped past 1e9: 1_000_001 + 2_000_000 uJ
    (second / "energy_uj").write_text("8000000\n")       # +3 J
    assert counter.read() == pytest.approx(3.000001 + 3.0)


def test_the_meter_gives_joules_per_epoch_from_its_sources(tmp_path) -> None:
    zone = _zone(tmp_path, "intel-rapl:0", 1_000_000)
    meter = EnergyMeter.open(powercap=tmp_path)
    mark = meter.mark()
    (zone / "energy_uj").write_text("51000000\n")        # +50 J
    used = meter.since(mark)
    assert (used["cpu_j"], used["cpu_source"], used["cpu_reason"]) == (pytest.approx(50.0), "rapl", None)
    assert used["gpu_j"] is None and used["gpu_reason"] == "no GPU on this rank"
    epoch = epoch_energy([used, EnergyMeter.open(read_cpu=False).since({})], seconds=10.0, images=1000)
    assert (epoch["total_j"], epoch["j_per_image"], epoch["avg_watts"]) == pytest.approx((50.0, 0.05, 5.0))
    assert epoch["sources"] == ["rapl"] and epoch["reason"] == "gpu: no GPU on this rank"


def test_no_source_is_null_with_the_reason_never_zero(tmp_path) -> None:
    meter = EnergyMeter.open(powercap=tmp_path / "absent")
    used = meter.since(meter.mark())
    assert used["gpu_j"] is None and used["cpu_j"] is None
    assert used["cpu_reason"] == f"no RAPL on this node ({tmp_path / 'absent'} absent)"
    epoch = epoch_energy([used], seconds=3.0, images=100)
    assert epoch["total_j"] is None and epoch["j_per_image"] is None and epoch["avg_watts"] is None
    assert "no RAPL" in epoch["reason"]
    summary = run_energy([{"energy": epoch, "time_s": 3.0, "train_samples_seen": 100}] * 2,
                         [{"energy": epoch, "time_s": 3.0, "train_samples_seen": 100}])
    assert summary["total_j"] is None and summary["j_per_image"] is None and "no RAPL" in summary["reason"]


def test_requeued_attempts_add_up_and_j_per_image_uses_the_steady_epochs() -> None:
    def epoch(joules, seconds=10.0, images=1000):
        return {"energy": {"total_j": joules, "sources": ["rapl"]}, "time_s": seconds, "train_samples_seen": images}

    first_attempt, second_attempt = [epoch(120.0), epoch(100.0)], [epoch(130.0), epoch(100.0)]
    epochs = first_attempt + second_attempt
    summary = run_energy(epochs, [first_attempt[1], second_attempt[1]])
    assert summary["total_j"] == pytest.approx(450.0)
    assert (summary["j_per_image"], summary["avg_watts"]) == pytest.approx((0.1, 10.0))
    assert summary["reason"] is None and summary["sources"] == ["rapl"]


def test_on_this_machine_the_gpu_reading_says_why_not() -> None:
    source, reason = open_gpu(None, None)
    assert source is None and reason == "no GPU on this rank"
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert open_gpu(None, 0) == (None, "pynvml not importable (pip install nvidia-ml-py)")
    else:
        pytest.skip("pynvml is installed: the GPU path is the device machine's test (docs/metrics.md)")


def test_this_machine_has_no_rapl_unless_it_has() -> None:
    if POWERCAP.exists():
        pytest.skip(f"{POWERCAP} exists here: the fake-tree tests above cover the reading")
    meter = EnergyMeter.open()
    assert meter.cpu is None and "no RAPL" in meter.reasons["cpu"]


def test_wandb_gets_the_epochs_energy_numbers_and_no_nulls() -> None:
    from vit_dt.run.record import epoch_row

    row = epoch_row({"time_s": 2.0, "steps": 3, "energy": {"total_j": 40.0, "gpu_j": 40.0, "cpu_j": None,
                                                            "j_per_image": 0.02, "avg_watts": 20.0,
                                                            "sources": ["nvml_energy_counter"], "reason": None}})
    assert {k: v for k, v in row.items() if k.startswith("epoch/energy/")} == {
        "epoch/energy/total_j": 40.0, "epoch/energy/gpu_j": 40.0, "epoch/energy/j_per_image": 0.02,
        "epoch/energy/avg_watts": 20.0}
