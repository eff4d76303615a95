"""The mount's operations on names (folders, renames, deletes, modes, times, owners, links):
journal rows staged after the versions staged so far (ops/namelog.py), shown at once and
committed with them in one delta once writes pause (``rm -rf`` of a tree or git's own test
scripts make thousands), never a commit each. A mixin of :class:`~cloudguard.mount.fs.VaultFS`,
which holds the state."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING, Any

import mfusepy as fuse  # type: ignore[import-untyped]

from ..names import from_disk
from ..ops import namelog
from .errnos import _guarded

# utimensat(2)'s special tv_nsec values, which libfuse passes on
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

if TYPE_CHECKING:
    from ..api import Vault
    from .draft import Draft, Drafts
    from .tree import Tree


class Names:
    if TYPE_CHECKING:
        vault: Vault
        tree: Tree
        read_only: bool
        uid: int
        gid: int
        _drafts: Drafts

        def _stage(self, path: str, row: dict[str, Any]) -> None: ...
        def _save(self, fh: int) -> None: ...
        def _shared(self, path: str) -> tuple[Draft, int] | None: ...

    def _writable(self) -> None:
        if self.read_only:
            raise fuse.FuseOSError(errno.EROFS)

    def _empty(self, path: str) -> bool:
        """A folder with nothing in the vault and no file written in it not yet committed
        (created and still open)."""
        prefix = path.rstrip("/") + "/"
        return not self.tree.children.get(path) and not any(
            p.startswith(prefix) for p in self._drafts.paths())

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        """Staged with the file versions (committed in their delta), not a commit of its
        own: ``mkdir -p`` and ``tar x`` make many."""
        self._writable()
        if path in self.tree.entries or self.tree.is_dir(path) or self._shared(path):
            raise fuse.FuseOSError(errno.EEXIST)
        self._stage(path, {"t": "d", "x": mode & 0o777})
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        self._writable()
        if not self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOTDIR)
        if not self._empty(path):
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        self._stage(path, namelog.rm())
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        """A journal row (``rm -rf`` and git make many): gone from the view at once, from
        the vault with the next batch. An open file keeps its handles (hard_remove)."""
        self._writable()
        if path not in self.tree.entries and self._shared(path) is None:
            raise fuse.FuseOSError(errno.ENOENT)
        if self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.EISDIR)
        self._drafts.follow(path, "")  # first: a close meanwhile stages nothing under it
        self._stage(path, namelog.rm())
        return 0

    @_guarded
    def rename(self, old: str, new: str) -> int:
        """A journal row: the file or folder (with everything under it) moves in the view at
        once, and in the vault with the next batch; what was at ``new`` is replaced (a file,
        or an empty folder), and its open handles keep their content (hard_remove)."""
        self._writable()
        if old not in self.tree.entries and not self.tree.is_dir(old):
            handles = self._drafts.handles(old)
            if not handles:
                raise fuse.FuseOSError(errno.ENOENT)
            self._save(handles[0])  # created and still open: its first version, staged
        if old == new:
            return 0
        if self.tree.is_dir(new) and not self._empty(new):  # the kernel refused the rest
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        self._drafts.follow(new, "")  # a file renamed over is unlinked
        self._drafts.follow(old, new)
        self._stage(old, namelog.mv(new.lstrip("/")))
        return 0

    @_guarded
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """The modification time a version carries (`touch -d`, `rsync -t`, `cp -a`); the
        vault keeps no access time. An open file takes it into its next version."""
        self._writable()
        mtime = time.time_ns() if times is None else times[1]
        if mtime % 10**9 == _UTIME_OMIT:
            return 0
        if mtime % 10**9 == _UTIME_NOW:
            mtime = time.time_ns()
        handles = self._drafts.handles(path)
        for fh in handles:
            self._drafts[fh][1].mtime = mtime
        if path not in self.tree.entries and not handles:
            if not self.tree.is_dir(path):
                raise fuse.FuseOSError(errno.ENOENT)
            return 0  # a folder: it has no time of its own
        self._stage(path, namelog.mtime(mtime))
        return 0

    @_guarded
    def chmod(self, path: str, mode: int) -> int:
        self._writable()
        if path in ("", "/"):
            raise fuse.FuseOSError(errno.EPERM)
        handles = self._drafts.handles(path)
        for fh in handles:  # an open file (cp -a sets the mode before it closes)
            was, draft, _old = self._drafts[fh]
            self._drafts[fh] = (was, draft, mode & 0o777)
        if path not in self.tree.entries and not self.tree.is_dir(path) and not handles:
            raise fuse.FuseOSError(errno.ENOENT)
        self._stage(path, namelog.mode(mode))
        return 0

    @_guarded
    def chown(self, path: str, uid: int, gid: int) -> int:
        """The vault keeps no owners: a chown to the mount's own owner (what cp -a and tar
        ask for) changes nothing and succeeds; any other is refused."""
        if (path not in self.tree.entries and not self.tree.is_dir(path) and path != "/"
                and self._shared(path) is None):
            raise fuse.FuseOSError(errno.ENOENT)
        same = {-1, 0xFFFFFFFF}
        if uid not in same | {self.uid} or gid not in same | {self.gid}:
            raise fuse.FuseOSError(errno.EPERM)
        return 0

    def link(self, target: str, source: str) -> int:
        raise fuse.FuseOSError(errno.EPERM)

    @_guarded
    def symlink(self, target: str, source: str) -> int:
        """``ln -s SOURCE TARGET``: a new link ``target`` whose content is ``source`` (kept
        byte for byte when it is not UTF-8, format.md "paths"); stored, never followed."""
        self._writable()
        if target in self.tree.entries or self.tree.is_dir(target) or self._shared(target):
            raise fuse.FuseOSError(errno.EEXIST)
        self._stage(target, {"t": "l", "l": from_disk(source), "m": time.time_ns()})
        return 0
