"""The rank's failure path (vit_dt/run/rank.py): a failed run keeps the epochs it measured and says its cause in
one line, and `vit-dt status` shows it. Real files, real exceptions; no process group needed."""
from __future__ import annotations

import errno
import json

from vit_dt.config import compose, to_container
from vit_dt.engines.deepspeed_ops import OpLockTimeout
from vit_dt.records.result import FAILURE_CAUSES
from vit_dt.records.store import ResultsStore
from vit_dt.run import rank
from vit_dt.run.distributed import DistEnv
from vit_dt.slurm.status import failure_reason

ENV = DistEnv(rank=0, world_size=2, local_rank=0, node_rank=0, nodes=2, master_addr="127.0.0.1",
              master_port=29500, source="test")


def _raise(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        try:
            raise cause if cause is not None else exc
        except BaseException as inner:
            if cause is None:
                raise
            raise exc from inner
    except BaseException as caught:
        return caught


def test_failure_causes_tell_io_from_a_silent_peer_from_the_run_s_own_error():
    disk_full = OSError(errno.ENOSPC, "No space left on device", "/ckpt/state.pt")
    assert rank.failure_cause(disk_full) == "io"
    assert rank.failure_cause(_raise(RuntimeError("could not save the checkpoint"), disk_full)) == "io"
    assert rank.failure_cause(OSError(errno.EROFS, "Read-only file system")) == "io"
    assert rank.failure_cause(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")) \
        == "collective"
    assert rank.failure_cause(ValueError("dataset.num_classes=10 but digits has 11 classes")) == "error"
    stopped_builder = OpLockTimeout("gave up after 120 s waiting for DeepSpeed's op: its lock ... pid 7 (stopped)")
    assert rank.failure_cause(stopped_builder) == "hang"
    assert {rank.failure_cause(e) for e in (disk_full, RuntimeError("x timed out"), stopped_builder, KeyError("k"))} \
        == set(FAILURE_CAUSES)


def test_the_error_is_one_line():
    exc = RuntimeError("first line of a long\nmulti-line\nmessage")
    assert rank.one_line(exc) == "RuntimeError: first line of a long multi-line message"
    assert len(rank.one_line(RuntimeError("x" * 1000))) == 500 and rank.one_line(KeyError()) == "KeyError"


def test_a_failed_run_keeps_its_epochs_and_cause_in_the_record_the_store_and_status(tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "points" / "0"
    cfg = to_container(compose(["wandb.mode=disabled", f"out_dir={tmp_path}"])) | {"sweep_dir": str(sweep),
                                                                                  "point": 0}
    epochs = [{"epoch": e, "time_s": 1.0, "val_acc": 0.5 + e / 10, "train_loss": 1.0, "steps": 3} for e in range(2)]
    disk_full = OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints"))
    rank._record_failure(cfg, run_dir, ENV, "2026-12-03T00:00:00", disk_full, epochs, attempt="A")

    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "failed" and record["failure_cause"] == "io"
    assert record["error"].startswith("OSError: [Errno 28] No space left on device") and "\n" not in record["error"]
    assert record["epochs"] == epochs and record["final_val_acc"] == 0.6
    assert ResultsStore(sweep / "results.jsonl").records() == [record]
    assert (run_dir / "error-rank0.txt").read_text().startswith("OSError")

    reason = failure_reason({"run_dir": str(run_dir), "logs": {}}, "FAILED")
    assert "I/O error" in reason and "after 2 epoch(s)" in reason and "No space left on device" in reason
    assert record["silent_ranks"] == []       # not a collective failure: nobody is blamed


def test_a_collective_failure_names_the_rank_that_went_silent_and_its_phase(tmp_path):
    """Rank 1's last beat of this attempt is a minute old (it stopped); rank 0 timed out in an all-reduce."""
    import time

    from vit_dt.run.heartbeat import beat_path

    sweep = tmp_path / "sweep"
    run_dir = sweep / "points" / "0"
    cfg = to_container(compose(["wandb.mode=disabled", f"out_dir={tmp_path}"])) | {"sweep_dir": str(sweep),
                                                                                  "point": 0}
    beat = beat_path(run_dir, 1)
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"rank": 1, "host": "c2", "pid": 7, "phase": "epoch 3: training (step 4)",
                                "beat": time.time() - 60, "interval_s": 3.0, "attempt": "A"}))
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms for recv")
    rank._record_failure(cfg, run_dir, ENV, "2026-12-03T00:00:00", timeout, [], attempt="A")

    record = json.loads((run_dir / "result.json").read_text())
    assert record["failure_cause"] == "collective"
    assert record["error"].startswith("rank 1 on c2 went silent 60 s ago during 'epoch 3: training (step 4)': "
                                      "RuntimeError: "), record["error"]
    assert [(s["rank"], s["host"], s["phase"]) for s in record["silent_ranks"]] == [
        (1, "c2", "epoch 3: training (step 4)")]
    reason = failure_reason({"run_dir": str(run_dir), "logs": {}}, "FAILED")
    assert "rank 1 on c2 went silent" in reason and "epoch 3: training" in reason, reason


def test_a_rank_other_than_0_that_times_out_names_the_silent_rank_0_in_its_traceback(tmp_path):
    """The stopped rank may be rank 0, which then writes no record: rank 1's error file says who went silent, and
    `vit-dt status` shows it on rank 1's line."""
    import time

    from vit_dt.run.heartbeat import beat_path

    run_dir = tmp_path / "points" / "0"
    beat = beat_path(run_dir, 0)
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"rank": 0, "host": "c1", "pid": 7, "phase": "epoch 2: validation",
                                "beat": time.time() - 45, "interval_s": 3.0, "attempt": "A"}))
    rank_1 = DistEnv(rank=1, world_size=2, local_rank=0, node_rank=1, nodes=2, master_addr="127.0.0.1",
                     master_port=29500, source="test")
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms for recv")
    rank._record_failure({}, run_dir, rank_1, "2026-12-03T00:00:00", timeout, [], attempt="A")

    assert not (run_dir / "result.json").exists()
    reason = failure_reason({"run_dir": str(run_dir), "logs": {}}, "FAILED")
    assert "rank 1: rank 0 on c1 went silent 45 s ago during 'epoch 2: validation': RuntimeError:" in reason, reason

def test_a_submitit_line_is_printed_once_after_the_rank_configures_logging():
    """submitit's logger has its own stdout handler; the rank's root handler used to print each of its lines a
    second time in the job's log. A fresh interpreter, as a Slurm task is: submitit's real logger set-up."""
    import subprocess
    import sys

    script = ("from submitit.core.logger import get_logger\n"
              "from vit_dt.run.rank import configure_logging\n"
              "configure_logging(0)\n"
              "get_logger().info('Job completed successfully')\n"
              "import logging; logging.getLogger('vit_dt.run.loop').info('epoch 0 step 1/1')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Job completed successfully") == 1, proc.stdout
    assert proc.stdout.count("epoch 0 step 1/1") == 1, proc.stdout


def test_a_stopped_rank_unwinds_releasing_a_build_lock_and_leaves_quietly(tmp_path):
    """SIGTERM (the launcher's stop on Ctrl-C) while a rank holds torch's extension-build lock, as during DeepSpeed's
    first op build: the lock file goes (the default action left it, and every later run waited on it forever), the
    exit status is 128 + SIGTERM, and nothing is printed."""
    import signal
    import subprocess
    import sys

    lock = tmp_path / "lock"
    script = ("import time\n"
              "from torch.utils.file_baton import FileBaton\n"
              "from vit_dt.run.rank import run_stoppable\n"
              f"baton = FileBaton({str(lock)!r})\n"
              "def build():\n"
              "    assert baton.try_acquire()\n"
              "    try:\n"
              "        print('building', flush=True)\n"
              "        time.sleep(120)\n"
              "    finally:\n"
              "        baton.release()\n"
              "run_stoppable(build)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "building\n"
    assert lock.exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not lock.exists()
    assert (out, err) == ("", "")
