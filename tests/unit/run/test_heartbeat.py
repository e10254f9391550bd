"""vit_dt.run.heartbeat: a rank's beat file, and which ranks of an attempt went silent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from vit_dt.run import heartbeat
from vit_dt.run.heartbeat import beat_path, heartbeat_interval_s, silent_ranks


def test_the_interval_is_a_tenth_of_the_collective_bound_within_1_and_15_s():
    assert heartbeat_interval_s(30) == 3.0
    assert heartbeat_interval_s(5) == 1.0
    assert heartbeat_interval_s(1800) == 15.0


def test_a_beat_names_rank_host_pid_phase_and_step(tmp_path):
    beat = heartbeat.start(tmp_path, rank=2, dist_timeout_s=10, attempt="7.0@h:1")
    try:
        heartbeat.phase("epoch 3: training")
        heartbeat.step(12)
        time.sleep(beat.interval_s * 1.5)      # the thread writes the step
        written = json.loads(beat_path(tmp_path, 2).read_text())
    finally:
        heartbeat.stop()
    assert written["rank"] == 2 and written["pid"] == os.getpid() and written["attempt"] == "7.0@h:1"
    assert written["phase"] == "epoch 3: training (step 12)" and written["host"]


STOPPED_RANK = textwrap.dedent('''
    import os, signal, sys, time
    from vit_dt.run import heartbeat
    heartbeat.start(sys.argv[1], rank=int(sys.argv[2]), dist_timeout_s=10, attempt="A")
    heartbeat.phase(sys.argv[3])
    if sys.argv[4] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)   # as a frozen rank: the process lives, its heartbeat thread stops
    time.sleep(60)
''')


def test_a_stopped_rank_goes_silent_while_a_waiting_one_keeps_beating(tmp_path):
    """Two real processes: rank 1 stops itself (SIGSTOP), rank 2 just sleeps (as a rank waiting in a collective
    would). After three intervals only rank 1 is silent, named with its phase; rank 3 never started."""
    script = tmp_path / "rank.py"
    script.write_text(STOPPED_RANK)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), "1", "epoch 4: validation", "stop"],
                              env=env),
             subprocess.Popen([sys.executable, str(script), str(tmp_path), "2", "epoch 4: training", "wait"], env=env)]
    try:
        deadline = time.monotonic() + 60
        while not all(beat_path(tmp_path, r).exists() for r in (1, 2)):
            assert time.monotonic() < deadline, "no beat files"
            time.sleep(0.2)
        time.sleep(heartbeat.STALE_AFTER_BEATS * heartbeat_interval_s(10) + 1.5)
        silent = silent_ranks(tmp_path, world_size=4, attempt="A", skip=0)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert [s.rank for s in silent] == [1, 3], silent
    assert silent[0].phase == "epoch 4: validation" and silent[0].silent_s > 3, silent[0]
    assert "rank 1 on " in silent[0].describe() and "'epoch 4: validation'" in silent[0].describe()
    assert silent[1].describe() == "rank 3 never started in this attempt"


def test_a_beat_left_by_an_earlier_attempt_does_not_count(tmp_path):
    path = beat_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"rank": 1, "host": "n2", "phase": "epoch 9: training", "beat": time.time(),
                                "interval_s": 1.0, "attempt": "5.0@n1:20005"}))
    silent = silent_ranks(tmp_path, world_size=2, attempt="5.1@n1:20005", skip=0)
    assert [(s.rank, s.phase) for s in silent] == [(1, None)]
