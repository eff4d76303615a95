"""A vault as a FUSE file system (mfusepy on libfuse3): files are read by byte ranges, only the
chunks asked for, decrypted into memory; nothing plaintext is written to disk.

A file opened for writing is a :class:`~cloudguard.mount.draft.Draft` (changed chunks sealed
under a key in memory); on flush, fsync or release its new content streams into a staged
version (ciphertext durable on local disk), and staged versions are committed together, in
one delta, once writes pause for COMMIT_IDLE, and at unmount. Until then the file reads and
lists from its draft. Folders, symlinks, deletes, renames, modes and times are journal rows
staged in order with the versions and committed in the same delta (mount/names.py,
ops/namelog.py); until then they are replayed over the view served. Every callback is wrapped: a
failure is logged without a file name and answered with the right errno (EIO for an integrity
or transport failure), never mfusepy's default EINVAL. No lock is held across I/O: the tree
is swapped whole after each refresh, and each open file has its own reader or draft.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping
from typing import Any

import mfusepy as fuse  # type: ignore[import-untyped]

from ..api import Vault
from ..errors import CloudguardError
from ..manifest.entry import Entry
from ..names import to_disk
from .draft import Draft, Drafts
from .errnos import _guarded
from .names import Names
from .relocate import Following
from .tree import Tree, _ino

log = logging.getLogger("cloudguard.mount")

BLOCK = 128 * 1024  # st_blksize: readers ask in big pieces (chunks are 64 KiB)
CACHE_SECONDS = 10.0  # the kernel keeps names and attributes this long; a poll invalidates
COMMIT_IDLE = 1.0  # staged versions are committed (one delta) once no new one came this long

# fuse_invalidate_path (libfuse >= 3.1), which mfusepy does not wrap
_INVALIDATE: Any = getattr(fuse._libfuse, "fuse_invalidate_path", None)
if _INVALIDATE is not None:
    _INVALIDATE.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _INVALIDATE.restype = ctypes.c_int


class VaultFS(Names, fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, vault: Vault, poll_seconds: float = 15.0, read_only: bool = False
                 ) -> None:
        self.vault = vault
        self.read_only = read_only
        self._drafts = Drafts()  # fh -> (path, draft, mode)
        self._spool = vault.binding.dir / "drafts"
        self._spool.mkdir(mode=0o700, exist_ok=True)
        # rows staged and not committed (row id, relative path, row: ops/namelog.py): folders,
        # symlinks and name operations, replayed over every view served until committed
        self._rows: list[tuple[int, str, dict[str, Any]]] = []
        self._names = threading.Lock()  # rows are journaled and shown in one order
        self.tree = Tree.of(vault.files())
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self._handles: dict[int, Following] = {}
        self._opened: dict[int, tuple[str, Entry]] = {}  # fh -> path, entry at open
        self._next = 1
        self._lock = threading.Lock()  # guards the handle table only, never held over I/O
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._fuse: int | None = None
        # versions staged (durable on local disk) but not yet committed: their drafts stay
        # parked under negative handles, so the file reads and lists as written meanwhile
        self._staged_at = 0.0
        self._commit_soon = threading.Event()
        self._commit_lock = threading.Lock()
        self._parked = 0

    # --- background refresh: off the FUSE threads -------------------------------------------

    def init(self, path: str) -> None:
        """libfuse's handle, for telling the kernel which cached paths went stale."""
        self._fuse = fuse._libfuse.fuse_get_context().contents.fuse

    def _invalidate(self, old: Tree, new: Tree) -> int:
        """After a poll brought other devices' changes: drop the kernel's cached attributes,
        names and pages of every path that changed, so the long cache times stay correct.
        Called from the poll thread only, never inside a FUSE callback."""
        if not self._fuse or _INVALIDATE is None:
            return 0
        changed = old.changed(new)
        for path in sorted(changed, key=len, reverse=True):  # deepest first
            _INVALIDATE(self._fuse, path.encode("utf-8", "surrogateescape"))  # -ENOENT: uncached
        return len(changed)

    def start_polling(self) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(self.poll_seconds):
                try:
                    if self.vault.poll():
                        with self._commit_lock:  # no commit drops rows while they replay
                            old = self._install(Tree.of(self.vault.files()))  # swapped whole
                        self._invalidate(old, self.tree)
                except CloudguardError as exc:
                    log.warning("refresh failed: %s", type(exc).__name__)
        thread = threading.Thread(target=loop, name="cloudguard-mount-poll", daemon=True)
        thread.start()
        return thread

    def start_committing(self) -> threading.Thread:
        """Commit staged versions once writes pause (COMMIT_IDLE): a burst of closes and
        fsyncs (SQLite commits each transaction so) becomes one delta, not one each."""
        def loop() -> None:
            backoff = COMMIT_IDLE
            while not self._stop.is_set():
                self._commit_soon.wait(1.0)
                if not self._commit_soon.is_set():
                    continue
                idle = time.monotonic() - self._staged_at
                if idle < COMMIT_IDLE:
                    self._stop.wait(COMMIT_IDLE - idle)
                    continue
                self._commit_soon.clear()
                try:
                    self._commit_now()
                    backoff = COMMIT_IDLE
                except CloudguardError as exc:  # staged versions are durable: try again
                    log.warning("commit failed: %s; retrying in %.0f s", type(exc).__name__,
                                backoff)
                    self._commit_soon.set()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 60.0)
        thread = threading.Thread(target=loop, name="cloudguard-mount-commit", daemon=True)
        thread.start()
        return thread

    def _commit_now(self) -> None:
        """Every staged version in one delta; then the parked drafts of those files go,
        unless a newer version of one was staged meanwhile (it waits for the next commit)."""
        with self._commit_lock:
            with self._lock:
                before = {fh: d.staged for fh, (_p, d, _m) in self._drafts.items() if fh < 0}
            committed = self.vault.commit()
            left = self.vault.staged_ids()  # rows staged while it committed stay
            with self._lock:
                rows, self._rows = self._rows, [row for row in self._rows if row[0] in left]
            if committed or len(rows) != len(self._rows):
                self._reload()
            with self._lock:
                for fh, count in before.items():
                    got = self._drafts.get(fh)
                    if got is None or got[1].staged != count or got[1].dirty:
                        continue
                    del self._drafts[fh]
                    got[1].parked = False
                    got[1].refs -= 1
                    if got[1].refs <= 0:
                        got[1].close()

    def destroy(self, path: str) -> None:
        self._stop.set()
        try:
            self._commit_now()  # unmount: nothing staged is left for the next start
        except CloudguardError as exc:
            log.error("commit at unmount failed: %s; the versions stay staged and are "
                      "committed at the next mount", type(exc).__name__)

    # --- attributes and folders --------------------------------------------------------------

    @_guarded
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if path is None:  # a file unlinked while open (hard_remove): its handle knows it
            if fh not in self._opened:
                raise fuse.FuseOSError(errno.EBADF)
            was, at_open = self._opened[fh]
            got = self._drafts.get(fh)
            return self._file_attr(was, self._draft_entry(got[1], got[2]) if got else at_open,
                                   (got[1], got[2]) if got else None)
        tree = self.tree
        entry = tree.entries.get(path)
        shared = self._shared(path)
        if entry is None and shared is not None:
            entry = self._draft_entry(*shared)
        if path == "/" or (tree.is_dir(path) and (entry is None or entry.get("t") == "d")):
            mode = int(entry.get("x", 0o755)) if entry else 0o755
            return {"st_uid": self.uid, "st_gid": self.gid, "st_ino": _ino(path),
                    "st_blksize": BLOCK, "st_mode": stat.S_IFDIR | (mode & 0o777),
                    "st_nlink": 2, "st_size": 0, "st_mtime": self.started,
                    "st_atime": self.started, "st_ctime": self.started}
        if entry is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return self._file_attr(path, entry, shared)

    def _file_attr(self, path: str, entry: Entry, shared: tuple[Draft, int] | None
                   ) -> dict[str, Any]:
        base = {"st_uid": self.uid, "st_gid": self.gid, "st_ino": _ino(path),
                "st_blksize": BLOCK}
        mtime = shared[0].mtime if shared is not None else int(entry.get("m", self.started))
        if entry.get("t") == "l":
            target = str(entry.get("l", ""))
            return {**base, "st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1,
                    "st_size": len(target.encode()), "st_mtime": mtime, "st_atime": mtime,
                    "st_ctime": mtime}
        size = shared[0].size if shared is not None else int(entry.get("s", 0))
        return {**base, "st_mode": stat.S_IFREG | (int(entry.get("x", 0o644)) & 0o777),
                "st_nlink": 1, "st_size": size, "st_blocks": -(-size // 512),
                "st_mtime": mtime, "st_atime": mtime, "st_ctime": mtime}

    @_guarded
    def readdir(self, path: str, fh: Any) -> list[tuple[str, dict[str, int], int]]:
        tree = self.tree
        if not tree.is_dir(path):
            raise fuse.FuseOSError(errno.ENOTDIR)
        prefix = path.rstrip("/") + "/"
        out = [(".", {"st_ino": _ino(path), "st_mode": stat.S_IFDIR}, 0),
               ("..", {"st_ino": 1, "st_mode": stat.S_IFDIR}, 0)]
        names = set(tree.children[path])
        for draft_path in self._drafts.paths():  # written, not committed yet
            if draft_path.startswith(prefix) and "/" not in draft_path[len(prefix):]:
                names.add(draft_path[len(prefix):])
        for name in sorted(names):
            child = prefix + name
            kind = stat.S_IFDIR if tree.is_dir(child) else (
                stat.S_IFLNK if tree.entries.get(child, {}).get("t") == "l" else stat.S_IFREG)
            out.append((name, {"st_ino": _ino(child), "st_mode": kind}, 0))
        return out

    @_guarded
    def readlink(self, path: str) -> str:
        entry = self.tree.entries.get(path)
        if entry is None or entry.get("t") != "l":
            raise fuse.FuseOSError(errno.EINVAL)
        return to_disk(str(entry["l"]))  # bytes that are not UTF-8 come back as they were

    @_guarded
    def statfs(self, path: str) -> dict[str, Any]:
        files = len(self.tree.entries)
        used = sum(int(e.get("s", 0)) for e in self.tree.entries.values()) // BLOCK + 1
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": used, "f_bfree": 0,
                "f_bavail": 0, "f_files": files, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255}

    # --- files ----------------------------------------------------------------------------

    def _draft_entry(self, draft: Draft, mode: int) -> Entry:
        return {"t": "f", "s": draft.size, "x": mode, "m": draft.mtime}

    def _handle(self, path: str, entry: Entry | None = None) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._opened[fh] = (path, entry or {"t": "f"})
            return fh

    def _shared(self, path: str) -> tuple[Draft, int] | None:
        """The draft another handle has open on ``path``: every handle of one file reads and
        writes one draft, or two writers would each commit their own and one would be lost."""
        return self._drafts.on(path)

    @_guarded
    def open(self, path: str, flags: int) -> int:
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if writing and self.read_only:
            raise fuse.FuseOSError(errno.EROFS)
        shared = self._shared(path)
        if shared is not None:  # open elsewhere: this handle joins that draft
            draft, mode = shared
            draft.refs += 1
            if flags & os.O_TRUNC:
                draft.truncate(0)
            fh = self._handle(path)
            self._drafts[fh] = (path, draft, mode)
            return fh
        entry = self.tree.entries.get(path)
        if entry is None or entry.get("t") != "f":
            raise fuse.FuseOSError(errno.ENOENT if entry is None else errno.EISDIR)
        reader = Following(entry, path, lambda e: self.vault.open_entry(e, path.lstrip("/")),
                           self._refreshed)  # the version shown there
        fh = self._handle(path, entry)
        if writing:
            draft = Draft(reader, int(entry.get("s", 0)), self._spool, self.vault.new_stream)
            if flags & os.O_TRUNC:
                draft.truncate(0)
            self._drafts[fh] = (path, draft, int(entry.get("x", 0o644)))
        else:
            self._handles[fh] = reader
        return fh

    @_guarded
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        if self.read_only:
            raise fuse.FuseOSError(errno.EROFS)
        if self.tree.is_dir(path):
            raise fuse.FuseOSError(errno.EISDIR)
        shared = self._shared(path)
        fh = self._handle(path)
        if shared is not None:  # created again while open elsewhere (O_CREAT without O_EXCL)
            shared[0].refs += 1
            self._drafts[fh] = (path, shared[0], shared[1])
            return fh
        draft = Draft(None, 0, self._spool, self.vault.new_stream)
        draft.dirty = True  # an empty new file is a version too
        self._drafts[fh] = (path, draft, mode & 0o777)
        return fh

    @_guarded
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if fh in self._drafts:
            return self._drafts[fh][1].read(offset, size)
        reader = self._handles.get(fh)
        if reader is None:
            raise fuse.FuseOSError(errno.EBADF)
        return reader.read(offset, size)

    @_guarded
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        got = self._drafts.get(fh)
        if got is None:
            raise fuse.FuseOSError(errno.EBADF)
        return got[1].write(offset, data)

    @_guarded
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if self.read_only:
            raise fuse.FuseOSError(errno.EROFS)
        if fh is not None and fh in self._drafts:
            self._drafts[fh][1].truncate(length)
            return 0
        fh = self.open(path, os.O_WRONLY)
        try:
            self._drafts[fh][1].truncate(length)
        finally:
            self.release(path, fh)
        return 0

    def _save(self, fh: int) -> None:
        """Stage the draft's content as a version (durable on local disk: what fsync asks
        for); the committer uploads it with whatever else is staged once writes pause."""
        path, draft, mode = self._drafts[fh]
        if not draft.dirty or not path:
            return  # nothing new, or the file was unlinked while open (hard_remove)
        blob = draft.sealing()
        if blob is not None:  # sealed as it was written: only its end is left to seal
            self.vault.stage_stream(path.lstrip("/"), blob, mode, draft.mtime)
            draft.staged_stream()
        else:
            self.vault.stage_version(path.lstrip("/"), draft.stream(), draft.size, mode,
                                     draft.mtime)
        draft.dirty = False
        with self._lock:  # parking and the committer's unparking never interleave
            draft.staged += 1
            if not draft.parked:
                draft.parked = True
                self._parked += 1
                draft.refs += 1
                self._drafts[-self._parked] = (path, draft, mode)
        self._staged_at = time.monotonic()
        self._commit_soon.set()

    @_guarded
    def flush(self, path: str, fh: int) -> int:
        """close() waits for flush, not for release (which the kernel sends later): the
        version is staged here; a rename right after the close commits it first."""
        if fh in self._drafts:
            self._save(fh)
        return 0

    @_guarded
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """A close stages a version at once, safe from a killed process; fsync also makes
        it (and what was staged before) safe from a power cut."""
        if fh in self._drafts:
            self._save(fh)
        self.vault.sync_staged()
        return 0

    @_guarded
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
            self._opened.pop(fh, None)
        if fh in self._drafts:
            try:
                self._save(fh)
            finally:
                draft = self._drafts.pop(fh)[1]
                draft.refs -= 1
                if draft.refs <= 0:
                    draft.close()
        return 0

    def _stage(self, path: str, row: dict[str, Any]) -> None:
        """A folder, a symlink or a name operation (ops/namelog.py): a journal row (safe from
        a killed mount at once), shown at once, committed with the next batch."""
        rel = path.lstrip("/")
        with self._names:
            row_id = self.vault.stage_row(rel, row)
            with self._lock:
                self._rows.append((row_id, rel, row))
                self.tree = self.tree.replayed([(rel, row)])
        self._staged_at = time.monotonic()
        self._commit_soon.set()

    def _install(self, tree: Tree) -> Tree:
        """Serve ``tree`` (the vault's entries, read now) with the rows staged and not
        committed replayed over it (also those staged while it replays); the view it
        replaces. Callers hold the commit lock: only a commit drops rows."""
        done = 0
        while True:
            with self._lock:
                rows = self._rows[done:]
                if not rows:
                    old, self.tree = self.tree, tree
                    return old
            tree = tree.replayed([(rel, row) for _id, rel, row in rows])
            done += len(rows)

    def _reload(self) -> None:
        self._install(Tree.of(self.vault.files()))

    def _refreshed(self) -> Mapping[str, Entry]:
        """The served entries once the view is read again (an open or a read failed: a
        re-encryption may have moved it, mount/relocate.py). The kernel's cache is left to
        the next poll: invalidating from inside a callback can deadlock."""
        with self._commit_lock:
            self._reload()
        return self.tree.entries


class _FUSE(fuse.FUSE):  # type: ignore[misc]
    """mfusepy drops ftruncate's handle on libfuse3 (truncate_fuse_3 ignores ``fip``): pass it
    on, so an ftruncate changes that handle's draft and stages no version, and works on a file
    unlinked while open (no path). ``create`` skips a per-call signature check."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return int(self.ftruncate(path, length, fip))

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        """As mfusepy's, without the ``inspect.signature`` it runs on every create."""
        fi = fip.contents
        fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
        return 0


def mount(vault: Vault, mountpoint: str, poll_seconds: float = 15.0,
          read_only: bool = False) -> None:
    """Serve until unmounted (foreground; libfuse never forks). auto_unmount: a killed mount
    leaves no dead mount point behind. Versions are staged when their file is closed and
    committed together once writes pause; versions a killed mount staged are committed here."""
    fs = VaultFS(vault, poll_seconds, read_only)
    if not read_only:
        vault.commit()  # versions a killed mount staged and never committed
        fs._reload()
        fs.start_committing()
    fs.start_polling()
    # Request sizes need no option: libfuse 3.14's max_write is already its 1 MiB buffer (the
    # kernel sends 1 MiB writes); reads come as the bdi's readahead (128 KiB), which init's
    # max_readahead can only lower (docs/benchmarks.md, 2026-12-05 day).
    # hard_remove: an unlinked open file goes at once (its handles keep their draft or
    # reader), never renamed to a .fuse_hidden file that would be committed to the vault
    _FUSE(fs, mountpoint, foreground=True, nothreads=False, use_ino=True, ro=read_only,
              auto_unmount=True, default_permissions=True, hard_remove=True,
              fsname="cloudguard", subtype="cloudguard", attr_timeout=CACHE_SECONDS,
              entry_timeout=CACHE_SECONDS)
