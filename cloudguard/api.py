"""The long-lived face of a vault: what the daemon and the mount hold open.

A CLI run unlocks the device key, works and exits. A daemon or a mount works for hours, so
:class:`Vault` unlocks the key once (memory only) and then serves many small calls. Each call
still takes the folder lock for its own duration (waiting for another process's operation,
never holding it between calls), and re-reads the remote through a session, so a push from
the CLI and one from the daemon never race.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from . import manifest as mf
from . import sync
from .chain import KEYS_PREFIX
from .format import Reader
from .held import forget_unlocked, unlock, use_transport
from .manifest.entry import Entry
from .ops import write
from .ops.blobstream import BlobStream
from .ops.doctor import _epoch
from .ops.pull import pull
from .ops.push import push
from .ops.rotate import key_rotate
from .ops.status import open_reader, status
from .ops.verify import verify
from .reader import ChunkCache, FileReader
from .results import PullResult, PushResult, RotateResult, StatusResult, VerifyResult
from .session import UI, Session, session
from .state import find_binding

_POLLED = (mf.PREFIX, KEYS_PREFIX)  # what a poll lists: the manifest and the key commits


class Vault:
    """One bound folder, opened once."""

    def __init__(self, folder: str | None = None, ui: UI | None = None,
                 cache_bytes: int = 8 * 1024 * 1024, deadline: float | None = None,
                 bandwidth: str | None = None, wait: bool = True) -> None:
        """``deadline``: seconds a remote call may go without progress (default: the
        CLOUDGUARD_STALL_SECONDS setting); the mount passes a short one. ``bandwidth``:
        rclone's ``--bwlimit`` for every transfer of this folder (the daemon's setting).
        ``wait=False``: return while rclone starts; the first remote call waits for it (the
        daemon's worker sets up its watches meanwhile), and :attr:`broken` tells a failed
        start from an outage."""
        self.binding = find_binding(folder)
        self.ui = ui or UI()
        unlock(self.binding)  # the keyring or passphrase is asked once, here
        from .rcd import RcdTransport  # here, not at import: a CLI run never needs it
        from .transport import RcloneTransport

        inner = RcloneTransport(self.binding.remote, stall=deadline,
                                extra_args=["--bwlimit", bandwidth] if bandwidth else None)
        self._transport = RcdTransport(self.binding.remote, inner,  # one rclone, all calls
                                       wait=wait, record=_POLLED)
        use_transport(self.binding, self._transport)
        self._seen: dict[str, int] | None = None
        self._cache = ChunkCache(cache_bytes)
        self._stager: write.Stager | None = None  # what staging needs of the last session
        # the key commits listed, the newest key's creation, ours to rotate? (key_schedule)
        self._schedule: tuple[frozenset[tuple[str, int]], float, bool] | None = None

    @property
    def folder(self) -> str:
        return self.binding.folder

    @property
    def broken(self) -> bool:
        """rclone did not start: no retry will help (an outage, by contrast, ends)."""
        return self._transport.failed is not None

    def refresh(self) -> None:
        """Pick up new manifest segments and key commits (verified as any session does)."""
        with session(self.folder, self.ui) as s:
            if self._stager is not None:
                self._stager.renew(s)
        self._transport.own_changes()  # the listing below has them
        self._seen = self._listing()

    def key_schedule(self) -> tuple[float, bool]:
        """(age in days of the newest key, is this device the one that rotates on schedule:
        the device member with the lowest id, so that the others do not rotate at once).

        A session verifies the key chain only when its commits changed since the last call
        (a rotation, a member added or removed: one listing of the small key prefix says);
        otherwise the answer is the last verified one's, aged by the clock."""
        keys = frozenset((n, o.size) for n, o in self._transport.list(KEYS_PREFIX).items())
        if self._schedule is None or self._schedule[0] != keys:
            with session(self.folder, self.ui) as s:
                newest = next(c for c in s.ring.view.ancestry(s.ring.head)
                              if c.action != "add")
                devices = sorted(r for r, k in s.ring.view.members.items()
                                 if k.kind == "device")
                mine = bool(devices) and devices[0] == s.binding.device
                self._schedule = keys, _epoch(newest.created), mine
        _keys, created, mine = self._schedule
        return (time.time() - created) / 86400, mine

    def rotate(self) -> RotateResult:
        """A new key generation (no re-encryption), through the engine's own rotation."""
        got = key_rotate(self.folder, False, self.ui)
        if self._stager is not None:
            with session(self.folder, self.ui) as s:  # the next stage takes the new head
                self._stager.renew(s)
        return got

    def poll(self) -> bool:
        """Has the remote changed since the last call (or refresh), other than by this Vault's
        own writes? One listing of the manifest and key prefixes: no data is listed or
        downloaded. A segment this Vault uploaded (a push's, a compaction's, a rotation's) is
        expected there and is no change; another device's is, even one that a session of
        ours took in and a compaction of ours already deleted."""
        own = self._transport.own_changes()  # first: a write after it shows as a change
        now = self._listing()
        if self._seen is None:
            self._seen = now
            return True
        expected, foreign = dict(self._seen), False
        mine: set[str] = set()
        for name, size in own:
            if size is None:  # deleted: a name we never listed nor wrote was another's
                foreign |= name not in expected and name not in mine
                expected.pop(name, None)
            else:
                expected[name] = size
                mine.add(name)
        self._seen = now
        return foreign or now != expected

    def _listing(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for prefix in _POLLED:
            out.update({n: o.size for n, o in self._transport.list(prefix).items()})
        return out

    def push(self, paths: list[str] | None = None, *, dry_run: bool = False,
             allow_mass_delete: bool = False,
             ignore: Callable[[str], bool] | None = None,
             deleted_before: int = 0, rewritten_before: int | None = None,
             allow_mass_change: bool = False) -> PushResult:
        """``paths`` (relative to the folder, or absolute inside it): only those and what is
        under them are scanned and pushed; the cost does not grow with the folder.
        ``deleted_before``: files deleted by this caller's recent pushes (mass-delete guard)."""
        return push(self.folder, dry_run, self.ui, allow_mass_delete, paths, ignore,
                    deleted_before, rewritten_before, allow_mass_change)

    def pull(self, paths: list[str] | None = None) -> PullResult:
        """``paths``: only those (and what is under them, and the folders above them) are
        brought down; the rest of the folder is not scanned."""
        return pull(self.folder, self.ui, paths)

    def status(self) -> StatusResult:
        """What push and pull would do (``daemon`` and ``mounts`` are the CLI's to fill)."""
        return status(self.folder, self.ui)

    def verify(self, read_data: bool = False) -> VerifyResult:
        return verify(self.folder, read_data, self.ui)

    def write_version(self, path: str, stream: Reader, size: int, mode: int = 0o644,
                      mtime_ns: int = 0) -> dict[str, Any]:
        """A new version of ``path`` from ``stream`` (exactly ``size`` bytes), committed."""
        return write.write_version(self.folder, path, stream, size, mode, mtime_ns)

    def stage_version(self, path: str, stream: Reader, size: int, mode: int = 0o644,
                      mtime_ns: int = 0, durable: bool = False) -> None:
        """Encrypted and journaled on local disk (``durable``: also against a power cut, as
        fsync asks); committed by :meth:`commit`. Under the newest head verified by this
        Vault's last session (write.Stager)."""
        self._staging().stage(path, stream, size, mode, mtime_ns, durable)

    def new_stream(self) -> BlobStream:
        """A new version's blob, sealed as it is written (ops/blobstream.py); stage it with
        :meth:`stage_stream`, or close it to forget it."""
        return self._staging().stream()

    def stage_stream(self, path: str, blob: BlobStream, mode: int = 0o644, mtime_ns: int = 0,
                     durable: bool = False) -> None:
        """As :meth:`stage_version`, for a blob sealed as it was written: no second
        encryption."""
        self._staging().stage_stream(path, blob, mode, mtime_ns, durable)

    def stage_dir(self, path: str, mode: int = 0o755) -> int:
        """A new folder, committed with the staged versions by :meth:`commit`; its row id."""
        return self._staging().stage_dir(path, mode)

    def stage_row(self, path: str, row: dict[str, Any]) -> int:
        """A symlink or a name operation (ops/namelog.py: rm, mv, x, m), journaled after what
        is staged so far and committed with it by :meth:`commit`; its row id."""
        return self._staging().stage_row(path, row)

    def staged_ids(self) -> set[int]:
        """The row ids staged and not committed yet."""
        return self._staging().staged_ids()

    def sync_staged(self) -> None:
        """Every staged version so far, durable against a power cut (what fsync asks)."""
        if self._stager is not None:
            self._stager.sync()

    def _staging(self, s: Session | None = None) -> write.Stager:
        """The stager, under the head ``s`` verified (or a session of its own at first)."""
        if s is None:
            if self._stager is None:
                with session(self.folder, self.ui) as opened:
                    self._stager = write.Stager(opened)
        elif self._stager is None:
            self._stager = write.Stager(s)
        else:
            self._stager.renew(s)
        return self._stager

    def commit(self) -> list[str]:
        """Upload and commit every staged version in one delta segment."""
        with session(self.folder, self.ui) as s:
            stager = self._staging(s)  # the head this session verified, from now on
            return write.commit_staged(s, stager.known)

    def rename(self, old: str, new: str) -> dict[str, Any]:
        return write.rename(self.folder, old, new)

    def mkdir(self, path: str, mode: int = 0o755) -> dict[str, Any]:
        return write.mkdir(self.folder, path, mode)

    def symlink(self, path: str, target: str) -> dict[str, Any]:
        return write.symlink(self.folder, path, target)

    def set_mode(self, path: str, mode: int) -> dict[str, Any]:
        return write.set_mode(self.folder, path, mode)

    def set_mtime(self, path: str, mtime_ns: int) -> dict[str, Any]:
        return write.set_mtime(self.folder, path, mtime_ns)

    def delete(self, path: str) -> dict[str, Any]:
        return write.delete(self.folder, path)

    def files(self) -> dict[str, Entry]:
        """Path -> the entry the vault shows there now (what a mount lists)."""
        with session(self.folder, self.ui) as s:
            return {path: entry for path, (_dot, entry) in sync.view(s.state).items()}

    def open_reader(self, path: str) -> FileReader:
        """Ranged reads of the vault's current version of ``path`` (chunks cached in memory,
        shared by every reader of this vault); the reader holds no lock."""
        return open_reader(self.folder, path, self._cache)

    def open_entry(self, entry: Entry, path: str = "") -> FileReader:
        """Ranged reads of the version ``entry`` (one of :meth:`files`, which a mount may show
        under another name until a staged rename is committed)."""
        with session(self.folder, self.ui) as s:
            return FileReader(s.transport, entry, s.ring.kek, self._cache, path)

    def close(self) -> None:
        """Forget the unlocked key and the cached plaintext; stop the rclone."""
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        forget_unlocked(self.binding)
        use_transport(self.binding, None)
        self._transport.close()
        self._cache.clear()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Vault"]
