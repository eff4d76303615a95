"""The mount's operations on names (folders, renames, deletes, modes, owners, links): manifest
operations, each after the staged versions are committed (so the manifest holds every closed
file it may touch). A mixin of :class:`~cloudguard.mount.fs.VaultFS`, which holds the state."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

import mfusepy as fuse  # type: ignore[import-untyped]

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

        def _settle(self) -> None: ...
        def _stage_dir(self, path: str, mode: int) -> None: ...
        def _reload(self) -> None: ...
        def _commit_now(self) -> None: ...
        def _save(self, fh: int) -> None: ...
        def _shared(self, path: str) -> tuple[Draft, int] | None: ...

    def _follow(self, old: str, new: str) -> None:
        """Open drafts follow their file: a rename moves them, an unlink ("" as ``new``)
        leaves them nameless, so a later close never brings the old name back."""
        for fh, (path, draft, mode) in list(self._drafts.items()):
            if path == old:
                self._drafts[fh] = (new, draft, mode)
            elif new and path.startswith(old.rstrip("/") + "/"):
                self._drafts[fh] = (new + path[len(old):], draft, mode)

    def _writable(self) -> None:
        if self.read_only:
            raise fuse.FuseOSError(errno.EROFS)

    def _empty(self, path: str) -> bool:
        """A folder with nothing in the vault and no file written in it not yet committed
        (created and still open)."""
        prefix = path.rstrip("/") + "/"
        return not self.tree.children.get(path) and not any(
            p.startswith(prefix) for p, _d, _m in list(self._drafts.values()))

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        """Staged with the file versions (committed in their delta), not a commit of its
        own: ``mkdir -p`` and ``tar x`` make many."""
        self._writable()
        if path in self.tree.entries or self.tree.is_dir(path) or self._shared(path):
            raise fuse.FuseOSError(errno.EEXIST)
        self._stage_dir(path, mode)
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        self._writable()
        self._settle()
        if not self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOTDIR)
        if not self._empty(path):
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        if path in self.tree.entries:
            self.vault.delete(path.lstrip("/"))
        self._reload()
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        self._writable()
        self._settle()
        if path not in self.tree.entries and self._shared(path) is not None:
            self._follow(path, "")  # created and still open, never committed: nothing to delete
            return 0
        if path not in self.tree.entries or self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOENT if path not in self.tree.entries
                                   else errno.EISDIR)
        self.vault.delete(path.lstrip("/"))
        self._follow(path, "")
        self._reload()
        return 0

    @_guarded
    def rename(self, old: str, new: str) -> int:
        self._writable()
        self._settle()
        if old not in self.tree.entries and not self.tree.is_dir(old):
            if self._shared(old) is None:
                raise fuse.FuseOSError(errno.ENOENT)
            self._save(next(fh for fh, d in self._drafts.items() if d[0] == old))
            self._commit_now()  # a file created and still open: its first version, now
        if old == new:
            return 0
        if self.tree.is_dir(new):  # the kernel refused a file over a folder: both folders
            if not self._empty(new):
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            if new in self.tree.entries:
                self.vault.delete(new.lstrip("/"))  # an empty folder is replaced
        elif new in self.tree.entries:
            self.vault.delete(new.lstrip("/"))  # rename replaces its target
            self._follow(new, "")
        self.vault.rename(old.lstrip("/"), new.lstrip("/"))
        self._follow(old, new)
        self._reload()
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
        self._settle()  # a closed file's staged version is committed first, then retimed
        open_drafts = [d for p, d, _m in self._drafts.values() if p == path]
        for draft in open_drafts:
            draft.mtime = mtime
        if open_drafts and path not in self.tree.entries:
            return 0
        if path not in self.tree.entries and not self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOENT)
        if path not in self.tree.entries:  # a folder: it has no time of its own
            return 0
        self.vault.set_mtime(path.lstrip("/"), mtime)
        self._reload()
        return 0

    @_guarded
    def chmod(self, path: str, mode: int) -> int:
        self._writable()
        self._settle()
        open_drafts = [fh for fh, (p, _d, _m) in self._drafts.items() if p == path]
        for fh in open_drafts:  # an open file (cp -a sets the mode before it closes)
            p, draft, _old = self._drafts[fh]
            self._drafts[fh] = (p, draft, mode & 0o777)
            draft.dirty = True
        if open_drafts and path not in self.tree.entries:
            return 0  # its first version gets the mode when it is committed
        if path not in self.tree.entries and not self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOENT)
        if path in ("", "/"):
            raise fuse.FuseOSError(errno.EPERM)
        self.vault.set_mode(path.lstrip("/"), mode)
        self._reload()
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
        """``ln -s SOURCE TARGET``: a new link ``target`` whose content is ``source``."""
        self._writable()
        self._settle()
        if target in self.tree.entries or self.tree.is_dir(target):
            raise fuse.FuseOSError(errno.EEXIST)
        self.vault.symlink(target.lstrip("/"), source)
        self._reload()
        return 0
