"""The folder scan and the change test: what is on disk, and whether it
still matches the index row or a manifest entry (git's racy-clean rule).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import CloudguardError, IntegrityError
from ..manifest import Entry
from ..names import ESC, from_disk, local, to_disk
from ..state import IndexRow

# Only these mode bits are synced, stored or applied: setuid, setgid and sticky never are, so
# a manifest entry (from a removed device, say) cannot plant a setuid program in the folder.
PERMISSIONS = 0o777


Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    return None


class LocalItem(NamedTuple):
    """A tuple, not a dataclass: a scan builds 100,000 of these and tuples are cheapest."""

    path: str
    kind: str  # "f" file, "d" folder, "l" symlink
    size: int = 0
    mtime: int = 0
    mode: int = 0
    target: str = ""
    ctime: int = 0  # files and links: status-change time and inode, which any edit changes
    ino: int = 0  # even one that keeps size and mtime (a pull checks them before replacing)


def scan(folder: Path, warn: Callable[[str], None],
         unreadable: list[str] | None = None, start: str = "") -> dict[str, LocalItem]:
    """Walk without following links; skip what cannot be synced, naming it.

    The folder's own ``.cloudguard`` (marker and staging) is never part of it. A path that
    cannot be read goes into ``unreadable`` instead of the result: it must never look deleted,
    so the caller keeps its last synced state. An unreadable folder root is an error.
    ``start`` walks only that sub-folder (a relative path; the result holds paths under it).
    """
    if unreadable is None:
        unreadable = []
    items: dict[str, LocalItem] = {}
    stack = [start]
    is_lnk, is_dir, is_reg = stat.S_ISLNK, stat.S_ISDIR, stat.S_ISREG
    while stack:
        rel_dir = stack.pop()
        base = local(folder, rel_dir)
        prefix = f"{rel_dir}/" if rel_dir else ""
        try:
            with os.scandir(base) as listing:
                entries = list(listing)  # a read error part-way drops the whole folder
        except OSError as exc:
            if not rel_dir and not start:
                raise CloudguardError(f"cannot read the folder {folder}: "
                                      f"{exc.strerror or exc}") from exc
            warn(f"cannot read folder {rel_dir}: {exc.strerror or exc}; kept its last synced "
                 "state")
            unreadable.append(rel_dir)
            items.pop(rel_dir, None)  # its mode too: what we see of it is not the truth
            continue
        for entry in entries:
            name = entry.name
            if not rel_dir and name == MARKER_DIR:
                continue
            rel = prefix + from_disk(name)  # bytes that are not UTF-8: escaped, not skipped
            try:
                st = entry.stat(follow_symlinks=False)
                target = from_disk(os.readlink(entry.path)) if is_lnk(st.st_mode) else ""
            except OSError as exc:
                warn(f"cannot read {rel}: {exc.strerror or exc}; kept its last synced state")
                unreadable.append(rel)
                continue
            mode = st.st_mode
            if is_reg(mode):
                items[rel] = LocalItem(rel, "f", st.st_size, st.st_mtime_ns, mode & PERMISSIONS,
                                       "", st.st_ctime_ns, st.st_ino)
            elif is_dir(mode):
                items[rel] = LocalItem(rel, "d", mode=mode & PERMISSIONS)
                stack.append(rel)
            elif is_lnk(mode):
                items[rel] = LocalItem(rel, "l", mtime=st.st_mtime_ns, target=target,
                                       ctime=st.st_ctime_ns, ino=st.st_ino)
            else:  # never synced, never taken as a delete: reported, and push exits 1
                warn(f"skipped {rel}: not a regular file, folder or symlink "
                     "(fifo, socket or device); kept its last synced state")
                unreadable.append(rel)
    return items


def scan_paths(folder: Path, paths: list[str], warn: Callable[[str], None],
               unreadable: list[str]) -> dict[str, LocalItem]:
    """What is on disk at ``paths`` (relative), their parent folders, and everything under
    the ones that are folders: a push of a few paths costs what they hold, not the folder."""
    items: dict[str, LocalItem] = {}
    for rel in paths:
        parts = check_rel_path(rel).split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path in items or (depth == 1 and path == MARKER_DIR):
                continue
            try:
                item = local_item(folder, path)
            except OSError as exc:
                warn(f"cannot read {path}: {exc.strerror or exc}; kept its last synced state")
                unreadable.append(path)
                break
            if item is None or (depth < len(parts) and item.kind != "d"):
                break  # gone (or no longer a folder): so is everything below it
            if item.kind == "f" and not stat.S_ISREG(os.lstat(local(folder, path)).st_mode):
                warn(f"skipped {path}: not a regular file, folder or symlink "
                     "(fifo, socket or device); kept its last synced state")
                unreadable.append(path)
                break
            items[path] = item
        else:
            if items.get(rel) is not None and items[rel].kind == "d":
                items.update(scan(folder, warn, unreadable, start=rel))
    return items


def under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them."""
    return any(path == root or path.startswith(root + "/") for root in roots)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def check_rel_path(path: str) -> str:
    """A manifest path must stay inside the folder, whoever wrote it."""
    wrapped = f"/{path}/"
    if (not path or "//" in wrapped or "/./" in wrapped or "/../" in wrapped
            or "\x00" in path):
        raise IntegrityError(f"the manifest holds an unsafe path {path!r}")
    if ESC in path:
        try:
            to_disk(path)
        except ValueError as exc:
            raise IntegrityError(f"the manifest holds a malformed name escape in {path!r}") \
                from exc
    return path


def dirty(loc: LocalItem, row: IndexRow) -> bool:
    if loc.kind != row.kind:
        return True
    if loc.kind == "f":
        return (loc.size, loc.mtime, loc.mode) != (row.size, row.mtime, row.mode)
    if loc.kind == "l":
        return loc.target != row.target
    return loc.mode != row.mode  # a folder: its mode is synced too


def meta_differs(loc: LocalItem, entry: Entry) -> bool:
    """Same content, other metadata: a file's mode or mtime, a folder's mode."""
    mode = int(entry.get("x", 0)) & PERMISSIONS
    if loc.kind == "f":
        return (loc.mtime, loc.mode) != (entry.get("m"), mode)
    return loc.kind == "d" and loc.mode != mode


def synced(loc: LocalItem, row: IndexRow, local_hash: Callable[[], str] | None = None) -> bool:
    """``loc`` still holds what was last synced at its path: only such a path may a pull
    delete or replace. Not dirty, and for a file the same ctime and inode where the index
    recorded them: an edit that kept size and mtime still moved the ctime. Where they moved
    with size and mtime kept, the content decides (``local_hash`` against the synced SHA-256):
    a remount renumbers inodes on FAT and some network filesystems, and a chmod and back or a
    new hard link moves the ctime, none of which is an edit."""
    if dirty(loc, row):
        return False
    if loc.kind != "f" or (row.ctime and row.ctime == loc.ctime
                           and (not row.ino or row.ino == loc.ino)):
        return True  # (ctime 0: not recorded or racily clean, so the content decides)
    if not row.sha256 or local_hash is None:
        return False
    try:
        return local_hash() == row.sha256
    except OSError:  # unreadable: not known to be as synced, so kept
        return False


def entry_matches(loc: LocalItem, entry: Entry, local_hash: Callable[[], str]) -> bool:
    if loc.kind != entry.get("t"):
        return False
    if loc.kind == "f":
        return bool(loc.size == entry.get("s") and local_hash() == entry.get("h"))
    if loc.kind == "l":
        return loc.target == entry.get("l")
    return True


RACY_NS = 2_000_000_000  # a file changed this recently before its row is written


def row_from(loc: LocalItem, dot: str, sha: str) -> IndexRow:
    """A row for what was synced. A file whose last change (ctime) is within RACY_NS of now
    is *racily clean* (git's term): an edit in the same clock tick as our read would leave
    size, mtime and ctime alike, so its ctime is stored as 0, which makes the next push hash
    it again instead of trusting the stat."""
    ctime = loc.ctime
    if ctime and time.time_ns() - ctime < RACY_NS:
        ctime = 0
    return IndexRow(loc.path, loc.kind, loc.size, loc.mtime, loc.mode, sha, dot, loc.target,
                    ctime, loc.ino)


def row_from_entry(path: str, dot: str, entry: Entry) -> IndexRow:
    """What the index records after landing a manifest entry as it is."""
    return IndexRow(path, str(entry.get("t")), int(entry.get("s", 0)), int(entry.get("m", 0)),
                    int(entry.get("x", 0)) & PERMISSIONS, str(entry.get("h", "")), dot,
                    str(entry.get("l", "")))


MARKER_DIR = ".cloudguard"  # the only name cloudguard writes in a folder; never synced


def local_item(folder: Path, rel: str) -> LocalItem | None:
    try:
        st = os.lstat(local(folder, rel))
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return LocalItem(rel, "l", mtime=st.st_mtime_ns,
                         target=from_disk(os.readlink(local(folder, rel))),
                         ctime=st.st_ctime_ns, ino=st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        return LocalItem(rel, "d", mode=st.st_mode & PERMISSIONS)
    return LocalItem(rel, "f", st.st_size, st.st_mtime_ns, st.st_mode & PERMISSIONS, "",
                     st.st_ctime_ns, st.st_ino)
