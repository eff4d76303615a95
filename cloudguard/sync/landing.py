"""Landing files in the folder: the private staging folder, and every
replace, delete, link or mode change checked against what the plan saw.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import CloudguardError, FileChangedError
from ..manifest import Entry
from ..names import local, to_disk
from .scanning import (
    MARKER_DIR,
    PERMISSIONS,
    LocalItem,
    check_rel_path,
    hash_file,
    local_item,
)


def safe_dir(folder: Path, rel_dir: str, created: list[Path] | None = None) -> Path:
    """Create parents without ever following a symlink out of the folder."""
    current = folder
    for part in [p for p in rel_dir.split("/") if p]:
        current = current / to_disk(part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o700)
            if created is not None:
                created.append(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotAFolder(f"cannot write inside {current}: it is not a folder "
                             "(a symlink or file is in the way)")
    return current


class NotAFolder(CloudguardError):
    """A file or symlink stands where a folder must be."""


STAGING = "staging"  # MARKER_DIR/STAGING: where a pull writes files before renaming them


TEMP_NAME = re.compile(r"^[0-9a-f]{16}\.tmp\Z")


KEPT_NAME = re.compile(r"^ok-([0-9a-f]{64})\Z")  # an authenticated download kept for reuse


KEPT_FOR = 86400.0  # seconds an interrupted pull's authenticated downloads wait for the next


def _private_dir(path: Path) -> Path:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise CloudguardError(f"{path} is not a folder (cloudguard keeps its own files "
                                  "there); move it away and try again") from None
    return path


def staging_dir(folder: Path) -> Path:
    """The private folder where temp files live, inside the folder (so on its filesystem,
    and a rename from there is atomic) but under a name no user file can have."""
    return _private_dir(_private_dir(folder / MARKER_DIR) / STAGING)


def temp_path(folder: Path) -> Path:
    return staging_dir(folder) / f"{os.urandom(8).hex()}.tmp"


def clear_staging(folder: Path) -> list[Path]:
    """Delete what a killed pull left in the staging folder: only names we create there, so
    nothing that cloudguard did not write is ever removed. The caller holds the folder lock."""
    where = folder / MARKER_DIR / STAGING
    removed: list[Path] = []
    try:
        linked = os.path.islink(where.parent) or os.path.islink(where)
        names = [] if linked else os.listdir(where)  # never clean through a link
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for name in names:
        stale = TEMP_NAME.match(name) is not None
        if not stale and KEPT_NAME.match(name):
            try:
                stale = now - os.lstat(where / name).st_mtime > KEPT_FOR
            except OSError:
                continue
        if stale:
            (where / name).unlink(missing_ok=True)
            removed.append(where / name)
    return removed


def keep_staged(folder: Path, staged: Staged, sha256: str) -> None:
    """An interrupted pull keeps a download it authenticated, named by its plaintext SHA-256,
    so the next pull need not fetch it again (issue: a Ctrl-C at 105 of 524 MB restarted at
    0). Its mtime is reset: KEPT_FOR counts from now."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        staged.tmp.unlink(missing_ok=True)
        return
    kept = staged.tmp.with_name(f"ok-{sha256}")
    os.replace(staged.tmp, kept)
    os.utime(kept)


def reuse_staged(folder: Path, dest: str, sha256: str, size: int, mode: int, mtime: int
                 ) -> Staged | None:
    """A kept download of this content, checked again (its SHA-256 is read back, so a file
    planted there is never trusted), as a fresh temp file for ``dest``; None if there is none
    or it does not match (then it is deleted)."""
    kept = staging_dir(folder) / f"ok-{sha256}"
    try:
        st = os.lstat(kept)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or hash_file(kept) != sha256:
        kept.unlink(missing_ok=True)
        return None
    tmp = temp_path(folder)
    os.replace(kept, tmp)
    set_mode(tmp, mode)
    os.utime(tmp, ns=(mtime, mtime))
    return Staged(tmp, dest)


@dataclass
class Staged:
    """A verified, fsynced temp file waiting for its rename."""

    tmp: Path
    dest: str


def stage(folder: Path, dest: str, fill: Callable[[IO[bytes]], None], mode: int, mtime: int,
          created: list[Path]) -> Staged:
    """Write and fsync a temp file in the staging folder; on any error nothing is left."""
    check_rel_path(dest)
    head, _, _base = dest.rpartition("/")
    try:
        safe_dir(folder, head, created)
    except NotAFolder:
        pass  # a file or link that this pull replaces by a folder: made at commit time
    tmp = temp_path(folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        set_mode(tmp, mode)
        os.utime(tmp, ns=(mtime, mtime))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, dest)


# ``expect`` for a caller that has made its own checks and replaces whatever is there
ANYTHING = LocalItem("", "*")


def check_unchanged(folder: Path, rel: str, expect: LocalItem | None) -> None:
    """Right before a pull replaces or deletes ``rel``: it must still be exactly what the plan
    saw (``expect``, None for nothing), down to ctime and inode, or the user's edit would be
    lost. Raises :class:`FileChangedError`; the caller keeps the path as it is."""
    if expect is not ANYTHING and local_item(folder, rel) != expect:
        raise FileChangedError(rel)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def commit_staged(folder: Path, staged: Staged, expect: LocalItem | None = ANYTHING) -> None:
    target = local(folder, staged.dest)
    try:
        if not _real_dir(target.parent):  # a file was in the way when it was staged
            safe_dir(folder, staged.dest.rpartition("/")[0])
        if os.path.isdir(target) and not os.path.islink(target):
            raise CloudguardError(f"cannot replace folder {staged.dest} with a file")
        check_unchanged(folder, staged.dest, expect)
    except BaseException:
        staged.tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(staged.tmp, target)
    except OSError as exc:
        staged.tmp.unlink(missing_ok=True)
        if exc.errno == errno.EXDEV:  # staged on the folder's filesystem, not this one's
            raise CloudguardError(f"cannot write {staged.dest}: it is on another filesystem "
                                  f"than {folder} (a mount point inside the folder)") from exc
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def discard(staged: list[Staged], created: list[Path]) -> None:
    for item in staged:
        item.tmp.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def make_link(folder: Path, dest: str, target: str,
              expect: LocalItem | None = ANYTHING) -> None:
    """Land a symlink, replacing only what the plan saw at ``dest`` (see check_unchanged)."""
    head, _, base = dest.rpartition("/")
    parent = safe_dir(folder, head)
    base = to_disk(base)
    tmp = temp_path(folder)
    os.symlink(to_disk(target), tmp)
    try:
        if os.path.isdir(parent / base) and not os.path.islink(parent / base):
            raise CloudguardError(f"cannot replace folder {dest} with a symlink")
        check_unchanged(folder, dest, expect)
        os.replace(tmp, parent / base)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_local(folder: Path, rel: str, expect: LocalItem) -> None:
    """Delete a file, link or empty folder that the remote deleted, only while it is still what
    the plan saw (see check_unchanged); a folder the user filled meanwhile fails to go."""
    now = local_item(folder, rel)
    if now is None:
        return  # gone already
    if now != expect:
        raise FileChangedError(rel)
    if expect.kind == "d":
        os.rmdir(local(folder, rel))
    else:
        os.unlink(local(folder, rel))


def move_aside(folder: Path, rel: str, name: str, expect: LocalItem) -> None:
    """Rename the user's file or link at ``rel`` to the conflict name ``name`` (a folder
    arrives at ``rel``), only while it is what the plan saw and ``name`` is free."""
    check_rel_path(name)
    check_unchanged(folder, rel, expect)
    if os.path.lexists(local(folder, name)):
        raise CloudguardError(f"cannot move {rel} aside: {name} exists")
    os.rename(local(folder, rel), local(folder, name))


# What a file system without POSIX modes (FAT, exFAT, some FUSE and SMB mounts) answers a
# chmod with; the mode then is whatever its mount options say, and the index records that.
NO_MODES = frozenset({errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})


def set_mode(path: Path, mode: int) -> None:
    """chmod that a folder on a file system without modes survives; never setuid, setgid or
    sticky. EPERM counts as "no modes" because every path set here is one we just wrote."""
    try:
        os.chmod(path, mode & PERMISSIONS)
    except OSError as exc:
        if exc.errno not in NO_MODES:
            raise


def apply_meta(folder: Path, rel: str, expect: LocalItem | None, entry: Entry) -> None:
    """A remote mode or mtime change to a file or folder whose content already matches,
    applied only while the path is what the plan saw; never setuid, setgid or sticky."""
    check_unchanged(folder, rel, expect)
    path = local(folder, rel)
    if "x" in entry:
        set_mode(path, int(entry["x"]))
    if entry.get("t") == "f" and "m" in entry:
        mtime = int(entry["m"])
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def make_dir(folder: Path, dest: str, mode: int) -> None:
    check_rel_path(dest)
    safe_dir(folder, dest)
    if mode:
        set_mode(local(folder, dest), mode)
