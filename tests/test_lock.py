"""cloudguard lock stops registered cloudguard processes and leaves others alone."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from helpers import cg_json

from cloudguard import lock


def test_lock_stops_registered_processes() -> None:
    # argv carries "cloudguard", as the daemon's does; the record is what it would write
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "cloudguard-daemon"])
    try:
        record = lock.run_dir() / f"daemon-{proc.pid}.json"
        record.write_text(json.dumps({"pid": proc.pid, "kind": "daemon", "mountpoint": None}))
        result = cg_json("lock")
        assert result["stopped"] == [proc.pid]
        assert proc.wait(timeout=10) != 0
        assert not record.exists()
        assert cg_json("log")[-1]["event"] == "lock"
    finally:
        proc.kill()
        proc.wait()


def test_lock_never_signals_a_reused_pid() -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = lock.run_dir() / f"daemon-{other.pid}.json"
        record.write_text(json.dumps({"pid": other.pid, "kind": "daemon", "mountpoint": None}))
        assert cg_json("lock")["stopped"] == []
        time.sleep(0.2)
        assert other.poll() is None and not record.exists()
    finally:
        other.kill()
        other.wait()
