"""Which folders the kernel watches for a worker, and where it cannot: the file system type
of a folder (inotify misses other machines' changes on NFS, SMB and FUSE), and how many of a
folder's subfolders hold an inotify watch of this process (watchdog drops a refused one
silently)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# File systems whose changes inotify does not see when another machine makes them (or whose
# FUSE server may not report them): the worker polls these instead.
_REMOTE_FS = frozenset(("nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "afs",
                        "ceph", "glusterfs", "lustre", "gpfs", "ncpfs", "davfs", "fuse",
                        "fuseblk"))


def fs_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the file system holding ``path``, from /proc/self/mountinfo ("" if
    unknown): the mount with the longest mount point above the path."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, kind = -1, ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), right.split()[0]
    return kind


def polled(kind: str) -> bool:
    return kind in _REMOTE_FS or kind.startswith("fuse.")


def coverage(folder: Path) -> tuple[int, int]:
    """(folders under ``folder`` that this process watches, all of them), from the inode
    numbers /proc/self/fdinfo lists for every inotify watch held."""
    wanted: set[int] = set()
    for here, dirs, _files in os.walk(folder):
        if here == str(folder) and ".cloudguard" in dirs:
            dirs.remove(".cloudguard")  # ours: not a folder of the user's
        try:
            wanted.add(os.stat(here).st_ino)
        except OSError:
            continue
    held: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fdinfo")
    except OSError:
        return len(wanted), len(wanted)  # nothing to tell: assume watched
    for fd in fds:
        try:
            text = Path("/proc/self/fdinfo", fd).read_text()
        except OSError:
            continue
        held.update(int(m, 16) for m in re.findall(r"^inotify wd:\S+ ino:([0-9a-f]+)",
                                                     text, re.M))
    return len(wanted & held), len(wanted)
