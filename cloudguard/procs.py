"""Is a process still running: the one answer every stale-file sweep and wait needs.

Files named after a process (rcd sockets, stream spools, daemon and mount records) are left
alone while it runs. Another user's process counts as running (not ours to judge), and a
zombie (exited, not yet waited for) does not, or a wait on a child would never end.
Before a signal, ``ours`` asks more: a pid in a record may have been reused since.
"""

from __future__ import annotations

import os
from pathlib import Path


def running(pid: int) -> bool:
    """Alive, or another user's. Pid 0 and negative pids name groups to ``kill``: never."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # gone between the two looks
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ours(pid: int) -> bool:
    """A running cloudguard process of this user: the only kind a record may have us signal.

    A daemon killed hard leaves its record behind, and its pid may since name any process;
    another user's would make ``kill`` fail, this user's other programs must never be hit.
    """
    if not running(pid):
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        return b"cloudguard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
