"""procs.running: what every stale-file sweep and wait asks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cloudguard.procs import running


def test_this_process_runs() -> None:
    assert running(os.getpid())


def test_a_zombie_does_not_run_and_a_reaped_child_neither() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while running(child.pid):  # exited but not waited for: a zombie, which must not count
        assert time.monotonic() < deadline, "a zombie counted as running"
        time.sleep(0.05)
    assert child.poll() == 0
    assert not running(child.pid)


def test_group_pids_are_never_running() -> None:
    # os.kill(0, 0) and os.kill(-1, 0) succeed: they signal a group, not one process
    assert not running(0)
    assert not running(-1)
