"""vit_dt.engines.deepspeed_ops: a wait on DeepSpeed's op-build lock gives up on a stopped holder, naming the lock
and the holder, and waits for a holder that is still building. Real flock locks (the `filelock` package torch
uses for its extension builds) held by real processes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from filelock import FileLock

from vit_dt.engines.deepspeed_ops import OpLockTimeout, lock_holder, wait_for

HOLDER = textwrap.dedent('''
    import os, signal, sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    if sys.argv[2] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)     # a builder frozen mid-build
    else:
        time.sleep(float(sys.argv[2]))           # a builder that finishes
    lock.release()
''')


def _hold(tmp_path, how: str) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "lock"), how], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _waiter(lock_path) -> threading.Thread:
    """What torch's cpp_extension.load does: take the build lock, with no time limit."""
    def take():
        with FileLock(str(lock_path)):
            pass
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def test_a_stopped_holder_is_named_and_the_wait_gives_up_after_the_bound(tmp_path):
    holder = _hold(tmp_path, "stop")
    try:
        deadline = time.monotonic() + 10
        while (seen := lock_holder(tmp_path / "lock")) is None or not seen.stopped:
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        assert seen.pid == holder.pid
        started = time.monotonic()
        with pytest.raises(OpLockTimeout) as refused:
            wait_for(_waiter(tmp_path / "lock"), tmp_path / "lock", "DeepSpeed's test op", stopped_bound_s=2)
        assert 2 <= time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    message = str(refused.value)
    assert str(tmp_path / "lock") in message and f"pid {holder.pid}" in message and "stopped" in message, message


def test_a_running_holder_is_waited_for_past_the_stopped_bound(tmp_path):
    holder = _hold(tmp_path, "3")
    try:
        waiter = _waiter(tmp_path / "lock")
        wait_for(waiter, tmp_path / "lock", "DeepSpeed's test op", stopped_bound_s=0.5)
        assert not waiter.is_alive()
    finally:
        holder.kill()
        holder.wait()


def test_no_holder_when_nobody_holds_the_lock(tmp_path):
    (tmp_path / "lock").touch()       # torch leaves the file behind: its existence means nothing
    assert lock_holder(tmp_path / "lock") is None
    assert lock_holder(tmp_path / "missing") is None
    assert os.path.exists(tmp_path / "lock")
