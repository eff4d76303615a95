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



def started(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def ours(pid: int, start: object) -> bool:
    """The running process of this user that wrote a record (``start``: its ``started``): the
    only kind a record may have us signal. A daemon killed hard leaves its record behind, and
    its pid may since name any process; a command line that merely mentions cloudguard (an
    editor on ~/cloudguard/notes.txt) proves nothing (review round 21, KK3). A record with no
    start (written before records had one) names a process that runs cloudguard itself, or
    ``lock`` would leave a running daemon with its keys (round 22, LL3).
    """
    if not running(pid):
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        if start is None:
            return _runs_cloudguard(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    except OSError:
        return False
    return isinstance(start, int) and not isinstance(start, bool) and started(pid) == start


def _runs_cloudguard(argv: list[bytes]) -> bool:
    """The ``cloudguard`` entry point, run directly or by an interpreter (a shebang adds its
    flags), or ``python -m cloudguard``; never a program that merely names a cloudguard
    path (``cp ~/cloudguard ...``; review round 23, MM2)."""
    name = os.path.basename(argv[0]) if argv else b""
    if name == b"cloudguard":
        return True
    if not name.startswith(b"python"):
        return False
    rest = iter(argv[1:])
    for arg in rest:
        if arg == b"-m":
            return next(rest, b"") == b"cloudguard"
        if arg in (b"-c", b"-"):
            return False
        if not arg.startswith(b"-"):
            return os.path.basename(arg) == b"cloudguard"
        if arg in (b"-W", b"-X", b"-Q"):  # flags that take a value
            next(rest, None)
    return False
