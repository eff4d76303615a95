"""A case-insensitive, normalisation-insensitive, case-preserving filesystem over a folder, as
macOS (APFS), Windows (NTFS) and SMB shares behave: ``Doc.txt`` and ``doc.txt`` are one file,
and so are the NFC and NFD spellings of ``é``. Served with FUSE for the tests of issue 8, item
10, because this machine cannot mount a casefolded ext4 or vfat image.

    python tests/casefold_fs.py BACKING MOUNTPOINT     (foreground; unmount with fusermount3 -u)
"""

from __future__ import annotations

import errno
import os
import sys
import unicodedata
from typing import Any

import mfusepy as fuse


def fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class CaseFold(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)  # served single-threaded: no locking needed

    # --- names -----------------------------------------------------------------------------

    def _real(self, path: str, create: bool = False) -> str:
        """The backing path: each component matched by its folded name; a missing last
        component keeps the spelling given (case-preserving)."""
        real = self.root
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            try:
                names = os.listdir(real)
            except OSError:
                names = []
            match = next((n for n in names if fold(n) == fold(part)), None)
            if match is None:
                if i < len(parts) - 1 and not create:
                    raise fuse.FuseOSError(errno.ENOENT)
                match = part
            real = os.path.join(real, match)
        return real

    # --- attributes --------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.lstat(self._real(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid",
                                             "st_size", "st_atime_ns", "st_mtime_ns",
                                             "st_ctime_ns", "st_ino")} | {
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode, follow_symlinks=False):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._real(path), follow_symlinks=False)
        else:
            os.utime(self._real(path), ns=times, follow_symlinks=False)
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._real(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                             "f_favail", "f_ffree", "f_files", "f_flag",
                                             "f_frsize", "f_namemax")}

    # --- folders -------------------------------------------------------------------------------

    def readdir(self, path: str, fh: Any) -> list[tuple[str, dict[str, int], int]]:
        """With stable inode numbers (use_ino: both spellings of a name are one file), each
        entry carries its own; an entry with inode 0 is one the C library skips."""
        real = self._real(path)
        out = []
        for name in [".", "..", *os.listdir(real)]:
            st = os.lstat(os.path.join(real, name))
            out.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        return out

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path, create=True), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    # --- links and names -----------------------------------------------------------------------

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._real(target, create=True))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        src = self._real(old)
        dst = self._real(new, create=True)
        if os.path.dirname(src) == os.path.dirname(dst) and fold(
                os.path.basename(src)) == fold(os.path.basename(new)):
            dst = os.path.join(os.path.dirname(src), os.path.basename(new))  # case-only
        os.rename(src, dst)
        return 0

    def link(self, target: str, source: str) -> int:
        raise fuse.FuseOSError(errno.EPERM)

    # --- files ---------------------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._real(path, create=True), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                       mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._real(path), length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


if __name__ == "__main__":
    fuse.FUSE(CaseFold(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True, use_ino=True,
              default_permissions=False)
