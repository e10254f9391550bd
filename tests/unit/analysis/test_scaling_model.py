"""The scaling model (vit_dt/analysis/scaling_model.py) and `vit-dt predict`.

The calibration tests use the paper's recorded numbers (/work/shared/reference/paper-numbers.md: ViT-B/16, fp32,
T4 GPUs, micro-batch 64, CIFAR 50,000 images, its loader keeping the ragged tail):

    1 GPU                                  1815 s/epoch
    8 GPUs in one node (strong)            245 s/epoch; bwd_allreduce 457 ms per step (17%)
    2 GPUs in one node                     bwd_allreduce 97 ms per step (4%)
    1 GPU per node x 8 / 16 / 32 nodes     95% / 92% / 92% efficiency -> 238.8 / 123.3 / 61.65 s/epoch
    weak scaling (10% of CIFAR per GPU)    169 s (1 GPU) -> 201 s (8 GPUs)

Tolerances, stated per test: calibrated on ONE multi-GPU run, the model must predict the other runs' epoch
time within 5% and their efficiency within 4 percentage points. One known miss is tested with its own, wider
bound (see test_strong_intra_node_8_gpus_known_miss).
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.fixtures.sample_records import VIT_B_16_PARAMS, make_record, write_store
from vit_dt.analysis import scaling_model as sm
from vit_dt.commands import predict as predict_cmd

EPOCH_TOLERANCE = 0.05          # relative error of a predicted epoch time
EFFICIENCY_TOLERANCE = 0.04     # absolute error of a predicted efficiency (4 percentage points)

# The paper's 1-GPU step: "about 2.1 s compute" of a 2.32 s step (1815 s / 782 steps); the split of the
# compute into forward and backward does not change any prediction without overlap.
PAPER_STEP = {"fwd": 700.0, "bwd_inner": 1400.0, "step": 60.0, "data_wait": 100.0}


def paper_record(world_size: int, epoch_time_s: float, *, layout: str = "intra", scaling: str = "strong",
                 allreduce_ms: float | None = None, train_samples: int = 50_000) -> dict:
    parts = None if allreduce_ms is None else dict(PAPER_STEP, bwd_allreduce=allreduce_ms)
    return make_record(world_size=world_size, epoch_time_s=epoch_time_s, micro_batch=64, layout=layout,
                       scaling=scaling, train_samples=train_samples, epochs=5, step_parts_ms=parts,
                       drop_last=False, num_params=VIT_B_16_PARAMS, point=world_size)


@pytest.fixture()
def paper() -> dict:
    return {
        "one": paper_record(1, 1815.0, allreduce_ms=7.0),                 # 0.3% at 1 GPU
        "intra8": paper_record(8, 245.0, allreduce_ms=457.0),
        "intra2_allreduce_ms": 97.0,
        "inter": {n: paper_record(n, 1815.0 / (n * eff), layout="inter") for n, eff in ((8, .95), (16, .92), (32, .92))},
        "inter_efficiency": {8: .95, 16: .92, 32: .92},
        "weak1": paper_record(1, 169.0, scaling="weak", train_samples=5_000, allreduce_ms=7.0),
        "weak8": paper_record(8, 201.0, scaling="weak", train_samples=40_000, allreduce_ms=457.0),
    }


def _paper_profile(record: dict) -> sm.Profile:
    return replace(sm.profile_from_record(record), drop_last=False)   # the paper's loader kept the tail


def test_one_gpu_profile_reproduces_its_own_epoch(paper: dict) -> None:
    profile = _paper_profile(paper["one"])
    [only] = sm.predict(profile, sm.Interconnect(), [1])
    assert only.steps_per_epoch == 782
    assert only.epoch_s == pytest.approx(1815.0, rel=1e-9)
    assert only.allreduce_ms == 0.0


def test_inter_node_calibrated_on_8_nodes_predicts_16_and_32(paper: dict) -> None:
    """Calibrated on the 8-node run alone (no timers there: the epoch-time excess over the 1-GPU step)."""
    profile = _paper_profile(paper["one"])
    calibration = sm.calibrate([paper["inter"][8]], prior=sm.Interconnect(latency_us=5.0), profile=profile)
    assert calibration.fitted == ("inter_node_gbps",)
    assert [p.source for p in calibration.points] == ["epoch excess"]
    predicted = {p.world_size: p for p in sm.predict(profile, calibration.interconnect, [1, 8, 16, 32], layout="inter")}
    assert predicted[8].epoch_s == pytest.approx(paper["inter"][8]["epoch_time_s_mean"], rel=1e-6)  # fitted point
    for n in (16, 32):
        measured = paper["inter"][n]["epoch_time_s_mean"]
        assert predicted[n].epoch_s == pytest.approx(measured, rel=EPOCH_TOLERANCE), n
        assert predicted[n].efficiency == pytest.approx(paper["inter_efficiency"][n], abs=EFFICIENCY_TOLERANCE), n
        assert predicted[n].link == "inter" and predicted[n].nodes == n


def test_weak_scaling_predicted_from_the_strong_8_gpu_allreduce(paper: dict) -> None:
    """Calibrated on the strong 8-GPU run's bwd_allreduce (457 ms), the weak 1-GPU profile predicts 8 GPUs."""
    calibration = sm.calibrate([paper["intra8"]], prior=sm.Interconnect(latency_us=5.0))
    assert calibration.fitted == ("intra_node_gbps",)
    gbit_per_s = 1.75 * VIT_B_16_PARAMS * 4 * 8 / 0.457 / 1e9          # Gb/s: a ring moves 2(N-1)/N x the bytes
    assert calibration.interconnect.intra_node_gbps == pytest.approx(gbit_per_s, rel=0.01)
    profile = _paper_profile(paper["weak1"])
    assert profile.scaling == "weak"
    predicted = {p.world_size: p for p in sm.predict(profile, calibration.interconnect, [1, 8], layout="intra")}
    assert predicted[8].steps_per_epoch == predicted[1].steps_per_epoch == 79       # same data per GPU
    assert predicted[8].epoch_s == pytest.approx(201.0, rel=EPOCH_TOLERANCE)
    assert predicted[8].efficiency == pytest.approx(169.0 / 201.0, abs=EFFICIENCY_TOLERANCE)


def test_allreduce_share_stays_in_the_recorded_band(paper: dict) -> None:
    """Recorded: 4-17% of the step for 2-8 GPUs. A two-point fit (2 and 8 GPUs) separates latency from
    bandwidth, reproduces both points, and puts 4 GPUs inside the band."""
    two = paper_record(2, 1815.0 / 2 / 0.97, allreduce_ms=paper["intra2_allreduce_ms"])
    calibration = sm.calibrate([two, paper["intra8"]], prior=sm.Interconnect())
    assert set(calibration.fitted) == {"intra_node_gbps", "latency_us"}
    assert max(abs(r) for r in calibration.residuals_ms) < 1e-6
    profile = _paper_profile(paper["one"])
    shares = {p.world_size: p.allreduce_share for p in sm.predict(profile, calibration.interconnect, [2, 4, 8])}
    assert shares[2] == pytest.approx(97.0 / (97.0 + 2321.0), abs=0.005)
    assert shares[8] == pytest.approx(457.0 / (457.0 + 2321.0), abs=0.005)
    assert 0.04 <= shares[4] <= 0.17
    assert shares[2] < shares[4] < shares[8]


def test_strong_intra_node_8_gpus_known_miss(paper: dict) -> None:
    """From the 1-GPU profile plus the 457 ms all-reduce the model gives 272 s for 8 GPUs; the paper measured
    245 s: its 8-GPU ranks computed ~10% faster per step than the 1-GPU run, which no all-reduce model can
    explain. Tolerance 15% here, and the miss is in docs/scaling-model.md."""
    calibration = sm.calibrate([paper["intra8"]], prior=sm.Interconnect(latency_us=5.0))
    [_, eight] = sm.predict(_paper_profile(paper["one"]), calibration.interconnect, [1, 8])
    assert eight.epoch_s == pytest.approx(245.0, rel=0.15)
    assert eight.epoch_s > 245.0


# ---------------------------------------------------------------- the model's parts

def test_ring_allreduce_cost_and_bottleneck_link() -> None:
    grad = 400e6
    assert sm.ring_allreduce_s(1, grad, 10.0, 20.0) == 0.0
    assert sm.ring_allreduce_s(4, grad, 10.0, 20.0) == pytest.approx(2 * 3 / 4 * grad * 8 / 10e9 + 2 * 3 * 20e-6)
    ic = sm.Interconnect(intra_node_gbps=100.0, inter_node_gbps=10.0, latency_us=0.0)
    profile = sm.Profile(fwd_ms_per_image=1.0, bwd_ms_per_image=2.0, optimizer_ms=5.0, data_wait_ms_per_image=0.0,
                         overhead_ms=0.0, grad_bytes=grad, micro_batch=10, train_samples=10_000)
    intra = sm.predict(profile, ic, [8], layout="intra")[0]
    inter = sm.predict(profile, ic, [8], layout="inter")[0]
    grid = sm.predict(profile, ic, [8], layout="grid", gpus_per_node=4)[0]
    assert intra.allreduce_ms == pytest.approx(1e3 * 1.75 * grad * 8 / 100e9)      # Gb/s: 8 bits a byte
    assert inter.allreduce_ms == pytest.approx(1e3 * 1.75 * grad * 8 / 10e9)
    assert (grid.nodes, grid.ranks_per_node, grid.link) == (2, 4, "inter")
    assert grid.allreduce_ms == pytest.approx(inter.allreduce_ms)


def test_overlap_hides_the_allreduce_behind_backward() -> None:
    profile = sm.Profile(fwd_ms_per_image=1.0, bwd_ms_per_image=2.0, optimizer_ms=5.0, data_wait_ms_per_image=0.5,
                         overhead_ms=1.0, grad_bytes=125e6, micro_batch=10, train_samples=8_000)
    ic = sm.Interconnect(intra_node_gbps=100.0, inter_node_gbps=10.0, latency_us=0.0)
    # intra: comm 17.5 ms < bwd 20 ms, fully hidden; inter: comm 175 ms > bwd, only the excess shows
    for layout, comm in (("intra", 17.5), ("inter", 175.0)):
        plain = sm.predict(profile, ic, [8], layout=layout)[0]
        hidden = sm.predict(profile, ic, [8], layout=layout, overlap=True)[0]
        rest = 10 * 1.0 + 10 * 0.5 + 5.0 + 1.0
        assert plain.allreduce_ms == pytest.approx(comm)
        assert plain.step_ms == pytest.approx(rest + 20.0 + comm)
        assert hidden.step_ms == pytest.approx(rest + max(20.0, comm))
        assert plain.exposed_allreduce_share == pytest.approx(plain.allreduce_share)
        assert hidden.exposed_allreduce_share == pytest.approx(max(0.0, comm - 20.0) / hidden.step_ms)


def test_steps_per_epoch_agree_with_the_training_loader() -> None:
    from vit_dt.data.loader import steps_per_epoch as loader_steps

    for samples, world, micro in ((50_000, 8, 64), (1_437, 3, 32), (40_000, 16, 48)):
        assert sm.steps_per_epoch(samples, world, micro) == loader_steps(samples, world_size=world, batch_size=micro,
                                                                         drop_last=True)


def test_fixed_global_batch_and_weak_workloads() -> None:
    profile = sm.Profile(fwd_ms_per_image=1.0, bwd_ms_per_image=2.0, optimizer_ms=5.0, data_wait_ms_per_image=0.0,
                         overhead_ms=0.0, grad_bytes=1e8, micro_batch=64, train_samples=51_200)
    rows = sm.predict(profile, sm.Interconnect(), [1, 2, 4], global_batch=256)
    assert [r.micro_batch for r in rows] == [256, 128, 64]
    assert {r.global_batch for r in rows} == {256}
    assert {r.steps_per_epoch for r in rows} == {200}
    with pytest.raises(sm.ModelError, match="not divisible"):
        sm.predict(profile, sm.Interconnect(), [3], global_batch=256)
    weak = sm.predict(profile, sm.Interconnect(), [1, 4], scaling="weak")
    assert weak[0].steps_per_epoch == weak[1].steps_per_epoch == 800


def test_calibration_recovers_a_known_interconnect() -> None:
    """Records made with a known bandwidth and latency: the joint fit gets both back."""
    intra_gbps, inter_gbps, latency_us = 40.0, 6.0, 30.0
    grad = VIT_B_16_PARAMS * 4
    records = []
    for n, layout in ((2, "intra"), (4, "intra"), (8, "intra"), (4, "inter"), (16, "inter")):
        bw = inter_gbps if layout == "inter" else intra_gbps
        comm_ms = 1e3 * sm.ring_allreduce_s(n, grad, bw, latency_us)
        records.append(make_record(world_size=n, layout=layout, epoch_time_s=100.0, micro_batch=64, point=len(records),
                                   step_parts_ms=dict(PAPER_STEP, bwd_allreduce=comm_ms)))
    calibration = sm.calibrate(records, prior=sm.Interconnect(1.0, 1.0, 1.0))
    assert set(calibration.fitted) == {"intra_node_gbps", "inter_node_gbps", "latency_us"}
    assert calibration.interconnect.intra_node_gbps == pytest.approx(intra_gbps, rel=1e-6)
    assert calibration.interconnect.inter_node_gbps == pytest.approx(inter_gbps, rel=1e-6)
    assert calibration.interconnect.latency_us == pytest.approx(latency_us, rel=1e-6)
    nothing = sm.calibrate([records[0] | {"world_size": 1}], prior=sm.Interconnect(3.0, 2.0, 1.0))
    assert nothing.fitted == () and nothing.interconnect == sm.Interconnect(3.0, 2.0, 1.0)


def test_bad_inputs_name_the_value_and_the_valid_ones() -> None:
    with pytest.raises(sm.ModelError, match="valid: intra, inter, grid"):
        sm.shape(4, "ring")
    with pytest.raises(sm.ModelError, match="gpus_per_node"):
        sm.shape(4, "grid")
    with pytest.raises(sm.ModelError, match="valid: intra_node_gbps"):
        sm.interconnect_from_config({"intra_gbps": 5})
    with pytest.raises(sm.ModelError, match="valid: fp32"):
        sm.bytes_per_element("int8")


# ---------------------------------------------------------------- vit-dt predict

def test_predict_command_table_and_json(tmp_path, capsys, paper: dict) -> None:
    write_store(tmp_path, [paper["one"], paper["intra8"]])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,2,4,8,16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["world_size"] for p in result["predictions"]] == [1, 2, 4, 8, 16]
    assert result["calibration"]["fitted"] == ["intra_node_gbps"]
    eight = result["predictions"][3]
    assert eight["allreduce_ms"] == pytest.approx(457.0, rel=0.01)     # calibrated on that very run
    assert result["predictions_overlap"][3]["epoch_s"] < eight["epoch_s"]
    assert predict_cmd.main(["--from", str(tmp_path), "--layout", "inter", "--gpus", "8,16"]) == 0
    table = capsys.readouterr().out
    assert "8×1" in table and "16×1" in table and "efficiency" in table


def test_predict_command_errors(tmp_path, capsys, paper: dict) -> None:
    write_store(tmp_path, [paper["one"]])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,two"]) == 2
    assert "--gpus '1,two'" in capsys.readouterr().err
    assert predict_cmd.main(["--from", str(tmp_path), "--cluster", "nosuchcluster"]) == 2
    err = capsys.readouterr().err
    assert "nosuchcluster" in err and "local" in err
    assert predict_cmd.main(["--from", str(tmp_path / "missing")]) == 2
    assert predict_cmd.main(["--from", str(tmp_path), "--cluster", "local", "--gpus", "1,2"]) == 0
    assert "interconnect (local)" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--micro-batch", "--global-batch", "--gpus-per-node"])
@pytest.mark.parametrize("value", ["0", "-4"])
def test_predict_refuses_counts_below_one_zero_included(tmp_path, capsys, paper: dict, option, value) -> None:
    write_store(tmp_path, [paper["one"]])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,2", option, value]) == 2
    assert f"{option} {value} is invalid: it must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(sm.ModelError, match="micro_batch=0 is invalid"):
        sm.predict(_paper_profile(paper["one"]), sm.Interconnect(), [1, 2], micro_batch=0)


def test_predict_from_a_capped_profile_run_predicts_full_epochs(tmp_path, capsys) -> None:
    """A profile run with trainer.max_steps_per_epoch set timed `cap` steps per epoch; carrying the cap over
    would give every N the same `cap` steps (a strong-scaling speed-up of about 1)."""
    capped = make_record(world_size=1, epoch_time_s=100 * 2.0, micro_batch=64, epochs=3, step_parts_ms=PAPER_STEP,
                         point=1)
    capped["config"]["trainer"]["max_steps_per_epoch"] = 100
    for epoch in capped["epochs"]:
        epoch["steps"] = 100
    write_store(tmp_path, [capped])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,2,4", "--json", "--no-calibrate"]) == 0
    result = json.loads(capsys.readouterr().out)
    full = 50_000 // 64                                                # the dataset's steps at one rank
    assert [p["steps_per_epoch"] for p in result["predictions"]] == [full, 50_000 // 2 // 64, 50_000 // 4 // 64]
    assert result["predictions"][0]["epoch_s"] == pytest.approx(full * 2.0, rel=1e-6)   # 2 s per measured step
    assert result["predictions"][2]["speedup"] > 3
    assert "trainer.max_steps_per_epoch=100" in result["notes"][0] and "full epochs" in result["notes"][0]
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,2", "--no-calibrate"]) == 0
    assert "note: the profile run stopped its epochs at trainer.max_steps_per_epoch=100" in capsys.readouterr().out


def _with_update(record: dict, update: str) -> dict:
    record = json.loads(json.dumps(record))
    record["config"]["optimizer"] = {"name": "adamw", "master_update": update}
    record["run_dir"] += f"-{update}"
    record["point"] = f"{record['point']}-{update}"      # another point of the sweep, not a resubmission
    return record


def test_predict_refuses_a_profile_among_unlike_runs_and_where_picks_one(tmp_path, capsys, paper: dict) -> None:
    """A sweep over a setting has several smallest-N runs: the profile must not be whichever came last."""
    slow_one = paper_record(1, 2 * 1815.0, allreduce_ms=7.0)
    slow_eight = paper_record(8, 2 * 245.0, allreduce_ms=457.0)
    write_store(tmp_path, [_with_update(paper["one"], "fused"), _with_update(slow_one, "separate"),
                           _with_update(paper["intra8"], "fused"), _with_update(slow_eight, "separate")])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,8"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.master_update: fused, separate" in err and "--where optimizer.master_update=fused" in err

    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,8", "--json",
                             "--where", "optimizer.master_update=separate"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["profile_run"].endswith("-separate")
    assert result["predictions"][0]["epoch_s"] == pytest.approx(2 * 1815.0, rel=0.01)   # the slow run's epoch
    assert [p["run_dir"] for p in result["calibration"]["points"]] == [slow_eight["run_dir"] + "-separate"]

    assert predict_cmd.main(["--from", str(tmp_path), "--where", "optimizer.master_update=fusd"]) == 2
    assert "valid: fused, separate" in capsys.readouterr().err
    assert predict_cmd.main(["--from", str(tmp_path), "--where", "optimizer.master_updat=fused"]) == 2
    assert "no run has a setting 'optimizer.master_updat'" in capsys.readouterr().err
    assert predict_cmd.main(["--from", str(tmp_path), "--where", "fused"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_predict_micro_batch_chooses_among_profile_runs(tmp_path, capsys, paper: dict) -> None:
    small = make_record(world_size=1, epoch_time_s=2000.0, micro_batch=32, epochs=5, step_parts_ms=PAPER_STEP,
                        drop_last=False, point=101)
    write_store(tmp_path, [paper["one"], small, paper["intra8"]])
    assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,8"]) == 2
    err = capsys.readouterr().err
    assert "micro_batch: 32, 64" in err and "--where micro_batch=32 (or --micro-batch 32)" in err
    for chosen in (["--micro-batch", "32"], ["--where", "trainer.micro_batch=32"], ["--where", "micro_batch=32"]):
        assert predict_cmd.main(["--from", str(tmp_path), "--gpus", "1,8", "--json", *chosen]) == 0, chosen
        assert json.loads(capsys.readouterr().out)["profile"]["micro_batch"] == 32
