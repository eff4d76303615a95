"""`cloudguard lock`: for walking away from a workstation.

Long-running cloudguard processes (the daemon, mounts) register themselves in
``CLOUDGUARD_HOME/run/`` so that lock can find them: it unmounts every mount, stops every
registered process, and drops the keys this process cached. With ``keyring=True`` it also
locks the Secret Service collection, so the next use needs the user's login password.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from . import keys
from .procs import ours, started
from .results import LockResult
from .state import home


def run_dir() -> Path:
    path = home() / "run"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def register(kind: str, mountpoint: str | None = None, folder: str | None = None) -> Path:
    """Called by a daemon or mount at start; the record is removed when it exits cleanly."""
    record = run_dir() / f"{kind}-{os.getpid()}.json"
    record.write_text(json.dumps({"pid": os.getpid(), "start": started(os.getpid()),
                                  "kind": kind, "mountpoint": mountpoint, "folder": folder}))
    return record


def _live_mounts() -> Iterator[tuple[int, dict[str, Any]]]:
    """(pid, record) of every mount of ours still running."""
    for record in sorted(run_dir().glob("mount-*.json")):
        try:
            doc = json.loads(record.read_text())
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ours(pid, doc.get("start")):
            yield pid, doc


def mounts(folder: str) -> list[str]:
    """Mount points where a live mount of ours serves the vault bound to ``folder``."""
    return [where for _pid, doc in _live_mounts()
            if doc.get("folder") == folder and isinstance(where := doc.get("mountpoint"), str)
            and os.path.ismount(where)]


def mount_process(mountpoint: str) -> tuple[int, str] | None:
    """(pid, bound folder) of the live mount of ours at ``mountpoint``, if any."""
    for pid, doc in _live_mounts():
        if doc.get("mountpoint") == mountpoint:
            return pid, str(doc.get("folder"))
    return None


SERVICE = "cloudguard.service"  # the unit `cloudguard daemon install` writes


def _under_systemd(pid: int) -> bool:
    """systemd gives every service it starts an INVOCATION_ID."""
    try:
        return b"\0INVOCATION_ID=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False



def lock(lock_keyring: bool = False) -> LockResult:
    stopped: list[int] = []
    unmounted: list[str] = []
    problems: list[str] = []
    for record in sorted(run_dir().glob("*.json")):
        try:
            doc = json.loads(record.read_text())
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        mountpoint = doc.get("mountpoint")
        if mountpoint:
            proc = subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)],
                                  capture_output=True, check=False)
            if proc.returncode == 0:
                unmounted.append(str(mountpoint))
            elif os.path.ismount(str(mountpoint)):
                problems.append(f"cannot unmount {mountpoint}: "
                                f"{proc.stderr.decode(errors='replace').strip()}")
        mine = ours(pid, start := doc.get("start"))
        if mine and doc.get("kind") == "daemon" and _under_systemd(pid):
            # a service: stop it through systemd, or Restart=on-failure brings it back
            proc = subprocess.run(["systemctl", "--user", "stop", SERVICE],
                                  capture_output=True, check=False)
            if proc.returncode != 0:
                problems.append(f"systemctl --user stop {SERVICE} failed: "
                                f"{proc.stderr.decode(errors='replace').strip()}")
        if mine:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    if not ours(pid, start):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
            stopped.append(pid)
        record.unlink(missing_ok=True)
    keys.drop_cached_keys()
    locked = False
    if lock_keyring:
        locked = keys.lock_secret_service(problems)
    return LockResult(stopped=stopped, unmounted=unmounted, keyring_locked=locked,
                      problems=problems)
