"""Writing the vault without a folder: what the mount needs (issue 12).

``write_version`` is two steps, because a mount closes files one at a time but should commit
them together: :func:`stage_version` encrypts a stream into a spooled object (fsynced) and
journals its entry, wrapped DEK included, in the local index; :func:`commit_staged` uploads
every staged object and commits them in one delta segment. A kill between the two loses
nothing: the journal survives and the next commit finishes it (objects already uploaded are
not sent again). ``rename`` and ``delete`` are manifest-only: no content moves. A mount also
journals its folders, symlinks, deletes, renames, modes and times as rows
(:meth:`Stager.stage_row`, ops/namelog.py); the commit replays the journal in order and
commits the result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

from .. import format as fmt
from .. import manifest as mf
from .. import sync
from ..errors import IntegrityError, KeyStoreError, UsageError
from ..names import from_disk
from ..session import Session, session
from ..state import Index
from . import localwrap, namelog
from .blobstream import BlobStream, sweep
from .common import _log

STAGED = "staged_versions"  # index meta: versions written and not yet committed
# index meta: the delta segment that commits the journal up to a row, with its dot and a few
# paths it writes, set while it is written (a kill after it landed and before the rows were
# dropped must not replay them: a rename replayed over its own result would replace the file
# it moved)
COMMITTING = "staged_commit"
log = logging.getLogger("cloudguard.write")


def _spool(s: Session) -> Path:
    path = s.binding.dir / "staged"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class Stager:
    """What staging a version needs of a session: the newest verified head's KEK, the spool
    and the index. A long-lived Vault keeps one between commits (:meth:`renew` after each), so
    a close (the mount stages at every close) costs an encryption and a journal row, not a
    session (8 ms each).

    A stage is durable against a killed process at once (the blob is written and the row
    committed). ``durable`` (fsync) also makes it, and every stage before it, durable against
    a power cut; a plain close, as on any file system, waits for the next :meth:`sync`."""

    def __init__(self, s: Session) -> None:
        self.spool = _spool(s)
        sweep(self.spool)  # what a killed mount was sealing, never staged
        self.padding = s.binding.padding != "none"
        self.md5 = not s.transport.local
        self._lock = threading.Lock()
        self._unsynced: list[Path] = []
        self._keks: dict[str, bytes] = {}  # every head KEK held, by commitment
        self._local = localwrap.key(s.me, s.binding.vault_id, s.binding.device)
        self._index = Index(s.binding.dir / "index.db", threads=True)  # FUSE's threads
        self._index.db.execute("PRAGMA synchronous=NORMAL")  # WAL: safe when a process dies
        self.renew(s)

    def renew(self, s: Session) -> None:
        """The head the latest session verified (the generation floor). Every KEK it held
        stays known (:meth:`known`): a version staged under one that a re-encryption of
        another process deleted meanwhile is re-wrapped at its commit (_rewrap)."""
        with self._lock:
            self.kek_id, self.kek = s.ring.head.kek, s.ring.head_kek
            self._keks[self.kek_id] = self.kek

    def known(self, kek_id: str) -> bytes | None:
        """A KEK this stager wrapped staged DEKs under, by commitment (None: never held)."""
        with self._lock:
            return self._keks.get(kek_id)

    def stage(self, path: str, stream: fmt.Reader, size: int, mode: int = 0o644,
              mtime_ns: int = 0, durable: bool = False) -> dict[str, Any]:
        """Encrypt exactly ``size`` bytes of ``stream`` as a new version of ``path``, journaled
        on local disk; nothing reaches the remote until :func:`commit_staged`."""
        path = sync.check_rel_path(path)
        object_id = fmt.new_object_id()
        dek, file_id = fmt.new_dek(), fmt.new_file_id()
        spool = self.spool / object_id
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                out = sync.ObjectWriter(fh, md5=self.md5)
                info = fmt.encrypt_blob(stream, out, dek, file_id, size, self.padding)
                out.close()
        except BaseException:
            spool.unlink(missing_ok=True)
            raise
        return self._journal(path, object_id, info, dek, file_id, mode, mtime_ns, out.md5(),
                             durable)

    def stream(self) -> BlobStream:
        """A new version's blob, sealed as it is written (ops/blobstream.py), in the spool."""
        return BlobStream(self.spool, self.padding, self.md5)

    def stage_stream(self, path: str, blob: BlobStream, mode: int = 0o644, mtime_ns: int = 0,
                     durable: bool = False) -> dict[str, Any]:
        """As :meth:`stage`, for a blob sealed as it was written: its last chunks and header
        are sealed, and the spool file takes its object name; nothing is encrypted twice.
        A stream file removed meanwhile (swept) is encrypted afresh from its descriptor."""
        path = sync.check_rel_path(path)
        info = blob.finish()
        object_id = fmt.new_object_id()
        if blob.path is None:
            raise ValueError("this blob was staged already")
        named = self.spool / object_id
        try:
            os.rename(blob.path, named)
        except FileNotFoundError:
            return self.stage(path, _Content(blob), info.size, mode, mtime_ns, durable)
        try:
            entry = self._journal(path, object_id, info, blob.dek, blob.file_id, mode,
                                  mtime_ns, blob.object_md5(), False)
        except BaseException:
            os.rename(named, blob.path)  # no journal row: the stream's own file again
            raise
        blob.path = None  # staged: closing the stream keeps the object
        if durable:
            self.sync()
        return entry

    def _journal(self, path: str, object_id: str, info: fmt.BlobInfo, dek: bytes,
                 file_id: bytes, mode: int, mtime_ns: int, md5: str, durable: bool
                 ) -> dict[str, Any]:
        """The staged version's entry, wrapped DEK included, as a journal row."""
        with self._lock:
            kek_id, kek = self.kek_id, self.kek
        entry: dict[str, Any] = {
            "t": "f", "s": info.size, "m": mtime_ns, "x": mode & 0o777, "h": info.sha256,
            "i": file_id.hex(), "k": fmt.b64(fmt.wrap_dek(kek, dek, file_id)),
            "g": kek_id, "w": kek_id, "o": object_id, "a": 0, "n": info.blob_len, "om": md5,
            localwrap.FIELD: localwrap.wrap(self._local, dek, file_id)}
        with self._lock:
            self._index.add_staged(path, entry)
            self._unsynced.append(self.spool / object_id)
        if durable:
            self.sync()
        return entry

    def stage_dir(self, path: str, mode: int = 0o755) -> int:
        """A new folder, journaled with the versions and committed in their delta (a mount's
        ``mkdir`` costs a journal row, not a commit); its row id."""
        return self.stage_row(path, {"t": "d", "x": mode & 0o777})

    def stage_row(self, path: str, row: dict[str, Any]) -> int:
        """A row with no blob (a folder, a symlink or a name operation, ops/namelog.py),
        journaled after every stage so far and committed with them; its row id."""
        with self._lock:
            return self._index.add_staged(sync.check_rel_path(path), row)

    def staged_ids(self) -> set[int]:
        """The rows not committed yet (a commit drops the rows it read)."""
        with self._lock:
            return self._index.staged_ids()

    def sync(self) -> None:
        """Every stage so far, durable against a power cut: blobs, their folder, the rows."""
        with self._lock:
            for path in [*self._unsynced, self.spool]:
                with suppress(FileNotFoundError):  # a blob committed and removed since
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            self._unsynced.clear()
            self._index.db.execute("PRAGMA synchronous=FULL")  # this commit syncs the WAL
            self._index.set_meta("staged_synced", time.time())
            self._index.db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        self.sync()
        self._index.close()


class _Content:
    """A finished blob stream's plaintext, read in order (a fallback's source)."""

    def __init__(self, blob: BlobStream) -> None:
        self.blob, self.pos = blob, 0

    def read(self, size: int = -1) -> bytes:
        data = self.blob.read(self.pos, fmt.CHUNK_SIZE if size < 0 else size)
        self.pos += len(data)
        return data


def stage_version(s: Session, path: str, stream: fmt.Reader, size: int, mode: int = 0o644,
                  mtime_ns: int = 0) -> dict[str, Any]:
    stager = Stager(s)
    try:
        return stager.stage(path, stream, size, mode, mtime_ns, durable=True)
    finally:
        stager.close()


class _Planned:
    """The vault as the journal leaves it: the newest entry of each path, with the rows
    replayed so far (``touched``) over it (a namelog.View)."""

    def __init__(self, s: Session) -> None:
        self.state = s.state
        self.touched: dict[str, mf.Entry | None] = {}

    def get(self, path: str) -> mf.Entry | None:
        if path in self.touched:
            return self.touched[path]
        sibs = self.state.siblings(path)
        return sync.newest(sibs)[1] if sibs else None

    def under(self, path: str) -> list[str]:
        found = {p for p, _sibs in self.state.subtree(path) if p != path}
        found |= {p for p in self.touched if p.startswith(path + "/")}
        return sorted(p for p in found if self.get(p) is not None)


def _finish_commit(s: Session) -> None:
    """A commit killed after its segment landed and before its rows were dropped: drop them
    now. It landed if its segment is listed (a torn one was removed when the session opened)
    and holds its versions: another command of this device, after a kill before the upload,
    may have written a segment of that name since (then the rows are replayed, which is
    safe: nothing of theirs was committed)."""
    intent = s.index.get_meta(COMMITTING)
    if not intent:
        return
    done = []
    dot = str(intent.get("dot"))
    if str(intent.get("segment")) in s.listing and any(
            dot in s.state.siblings(p) for p in intent.get("paths", [])):
        done = [(i, e) for i, _p, e in s.index.staged() if i <= int(intent.get("last", 0))]
    with s.index.transaction():
        s.index.drop_staged([i for i, _e in done])
        s.index.set_meta(COMMITTING, None)
    spool = _spool(s)
    for _i, row in done:  # uploaded (moved) already, or superseded
        if "o" in row:
            (spool / str(row["o"])).unlink(missing_ok=True)


def _rewrap(s: Session, known: Callable[[str], bytes | None] | None) -> None:
    """Staged versions wrapped under a KEK other than the head's move to the head's before
    they are committed. A stager keeps the KEK it was given at its last commit, and a
    re-encryption run meanwhile by another process or device publishes a new head and
    deletes the old key objects: committed as they were, those versions would be wrapped
    under a key no one can open any more. The old KEK comes from the session's ring or, once
    deleted, from the stager that used it (``known``); when neither has it (the mount was
    stopped while another device re-encrypted), the DEK comes from the row's local wrap
    (ops/localwrap.py, journal version 2). The wrap was never on the remote, so the head's
    key is also the first (``w``) it has. A row of journal version 1 (no local wrap) is given
    one while its key is known. A version whose key a re-encryption ended (the chain says
    so: never a passing fetch error) and that no local wrap of this device opens can never be
    read by anyone: it leaves the journal (_lost), so that it does not hold up every version
    staged after it; its path keeps its last committed version."""
    head = s.ring.head.kek
    local = localwrap.key(s.me, s.binding.vault_id, s.binding.device)
    moved, lost = [], []
    for row, path, staged in s.index.staged():
        entry = cast(mf.Entry, staged)  # a version's row (a name operation has no "k")
        if "k" not in entry or entry.get("g") == head and localwrap.FIELD in entry:
            continue
        kek_id = str(entry.get("g"))
        kek = known(kek_id) if known is not None else None
        opened = None
        if kek is None:
            try:
                kek = s.ring.kek(kek_id)
            except (IntegrityError, KeyStoreError) as exc:
                opened = localwrap.unwrap(local, entry)
                if opened is None and kek_id in s.state.ended:
                    lost.append((row, path))
                    continue
                if opened is None:
                    raise IntegrityError(
                        f"{path}: a staged version's key {kek_id[:16]}... is gone (a "
                        "re-encryption deleted it before the version was committed); it "
                        "cannot be committed readable") from exc
        held = {} if kek is None else {kek_id: kek}
        dek, file_id = opened or sync.dek_of(entry, held.__getitem__)
        if kek_id != head:
            entry["k"] = fmt.b64(fmt.wrap_dek(s.ring.head_kek, dek, file_id))
            entry["g"] = head
            entry["w"] = head
        entry.setdefault(localwrap.FIELD, localwrap.wrap(local, dek, file_id))
        moved.append((row, entry))
    if moved or lost:
        with s.index.transaction():
            for row, entry in moved:
                s.index.replace_staged(row, entry)
            s.index.drop_staged([row for row, _path in lost])
    if lost:
        _lost(s, [path for _row, path in lost])


LOST = "staged_lost"  # index meta: versions a commit had to drop (count, when); status says so


def _lost(s: Session, paths: list[str]) -> None:
    """Saved data that no one can read any more is said everywhere the user may look: the
    terminal (naming a path), the audit log, the log (a mount's; no file names there) and
    ``cloudguard status`` (ops/status.py, from index meta ``staged_lost``)."""
    s.ui.warn(f"{len(paths)} staged version(s) could not be committed, e.g. {paths[0]}: "
              "a re-encryption deleted the key they were written under before they were "
              "committed (the mount was stopped meanwhile), and this device's own key does "
              "not open them; those paths keep their last committed version")
    log.warning("%d staged version(s) could not be committed: a re-encryption deleted the key "
                "they were written under and this device's key does not open them; their "
                "paths keep their last committed version (see the audit log)", len(paths))
    before = s.index.get_meta(LOST, None) or {}
    s.index.set_meta(LOST, {"files": int(before.get("files", 0)) + len(paths),
                            "at": time.time()})
    _log(s, "write-lost", files=len(paths))


def commit_staged(s: Session, known: Callable[[str], bytes | None] | None = None
                  ) -> list[str]:
    """Upload the staged objects and commit the journal in one delta; the paths it touched.
    The rows are replayed in order (ops/namelog.py), so only the result is committed: of
    several versions staged for one path the last wins, and a version deleted or renamed
    over before its commit is never uploaded. ``known``: KEKs the stager held (_rewrap)."""
    legacy = s.index.get_meta(STAGED, []) or []  # a journal from before the staged table
    if legacy:
        with s.index.transaction():
            for row in legacy:
                s.index.add_staged(str(row["p"]), row["e"])
            s.index.set_meta(STAGED, None)
    _finish_commit(s)
    _rewrap(s, known)
    journal = s.index.staged()
    if not journal:
        return []
    planned = _Planned(s)
    for _id, path, row in journal:
        planned.touched.update(namelog.changes(planned, path, row))
    ops: list[mf.Op] = []
    for path, entry in sorted(planned.touched.items()):
        sibs = s.state.siblings(path)
        if entry is None and not sibs or len(sibs) == 1 and entry in sibs.values():
            continue  # made and removed in this batch, or back as it was
        if entry is not None:
            entry = localwrap.strip(entry)  # local state: never committed
        ops.append({"p": path, "e": None if entry is None else mf.resolutions.carry(entry),
                    "rm": sorted(sibs, key=sync.dot_key)})
    staged = {str(row["o"]) for _id, _p, row in journal if "o" in row}
    objects = sorted({str(op["e"]["o"]) for op in ops if op["e"] is not None
                      and op["e"].get("o") in staged})  # not a renamed version's
    for name in objects:
        s.index.add_pending(sync.DATA_PREFIX + name)  # garbage if this never commits
    spool = _spool(s)
    waiting = [o for o in objects if (spool / o).exists()]
    if waiting:
        s.transport.put_files(spool, waiting, sync.DATA_PREFIX)
    unsent = [o for o in objects if o not in waiting]
    stored = s.transport.list(sync.DATA_PREFIX) if unsent else {}
    missing = [o for o in unsent if sync.DATA_PREFIX + o not in stored]
    if missing:
        raise UsageError(f"staged object {missing[0]} is neither staged nor uploaded; "
                         "its version was lost before it was committed")
    if ops:
        seq = s.next_seq()  # the one s.commit takes
        s.index.set_meta(COMMITTING, {
            "segment": mf.segment_name(s.binding.device, seq, "d"), "last": journal[-1][0],
            "dot": mf.dot_of(s.binding.device, seq),
            "paths": [op["p"] for op in ops if op["e"] is not None][:16]})
        s.commit(ops)
    with s.index.transaction():
        s.index.clear_pending({sync.DATA_PREFIX + o for o in objects})
        s.index.drop_staged([i for i, _p, _e in journal])  # a stage since stays staged
        s.index.set_meta(COMMITTING, None)
    for name in staged.difference(objects):  # superseded before it was committed
        (spool / name).unlink(missing_ok=True)
    _log(s, "write", files=len(ops), objects=len(objects), segments=s.committed)
    return sorted(planned.touched)


def write_version(folder: str | None, path: str, stream: fmt.Reader, size: int,
                  mode: int = 0o644, mtime_ns: int = 0) -> dict[str, Any]:
    """One new version of ``path`` from ``stream``, staged and committed at once."""
    with session(folder) as s:
        entry = stage_version(s, path, stream, size, mode, mtime_ns)
        commit_staged(s)
        return {"path": sync.check_rel_path(path), "size": entry["s"], "sha256": entry["h"]}


def rename(folder: str | None, old: str, new: str) -> dict[str, Any]:
    """Move a file or folder (with everything under it) in the manifest; no content moves."""
    old, new = sync.check_rel_path(old), sync.check_rel_path(new)
    if new == old or new.startswith(old + "/"):
        raise UsageError(f"cannot move {old} into itself")
    with session(folder) as s:
        moved = list(s.state.subtree(old))
        if not moved:
            raise UsageError(f"{old}: not in the vault")
        if s.state.has_path(new):
            raise UsageError(f"{new}: already in the vault")
        ops: list[mf.Op] = []
        for path, sibs in moved:
            _dot, entry = sync.newest(sibs)
            ops.append({"p": new + path[len(old):], "e": mf.resolutions.carry(entry), "rm": []})
            ops.append({"p": path, "e": None, "rm": sorted(sibs, key=sync.dot_key)})
        s.commit(ops)
        _log(s, "rename", files=len(moved), segments=s.committed)
        return {"renamed": {old: new}, "paths": len(moved)}


def _retouch(folder: str | None, path: str, field: str, value: int, event: str,
             refuse: Callable[[mf.Entry], str | None]) -> bool:
    """A new version of ``path`` with one metadata field changed and the same content (a
    manifest-only change); False when it already had that value."""
    path = sync.check_rel_path(path)
    with session(folder) as s:
        sibs = s.state.siblings(path)
        if not sibs:
            raise UsageError(f"{path}: not in the vault")
        _dot, entry = sync.newest(sibs)
        why = refuse(entry)
        if why:
            raise UsageError(f"{path}: {why}")
        fields = cast(dict[str, Any], entry)
        if entry.get("t") == "d" and field == "m" or int(fields.get(field, -1)) == value:
            return False  # a folder has no time of its own
        s.commit([{"p": path, "e": mf.resolutions.carry(entry, **{field: value}),
                   "rm": sorted(sibs, key=sync.dot_key)}])
        _log(s, event, files=1, segments=s.committed)
        return True


def set_mode(folder: str | None, path: str, mode: int) -> dict[str, Any]:
    """Permission bits ``mode`` (never setuid, setgid or sticky) for ``path``."""
    mode &= 0o777
    changed = _retouch(folder, path, "x", mode, "chmod", lambda e: (
        "a symlink has no mode of its own" if e.get("t") == "l" else None))
    return {"path": sync.check_rel_path(path), "mode": mode, "changed": changed}


def set_mtime(folder: str | None, path: str, mtime_ns: int) -> dict[str, Any]:
    """Modification time ``mtime_ns`` for ``path`` (what `touch -d`, `rsync -t` and `cp -a`
    ask of a mount)."""
    changed = _retouch(folder, path, "m", mtime_ns, "touch", lambda e: None)
    return {"path": sync.check_rel_path(path), "mtime_ns": mtime_ns, "changed": changed}


def delete(folder: str | None, path: str) -> dict[str, Any]:
    """Delete a file or folder (with everything under it); its versions stay in the
    history for the folder's keep period."""
    path = sync.check_rel_path(path)
    with session(folder) as s:
        gone = list(s.state.subtree(path))
        if not gone:
            raise UsageError(f"{path}: not in the vault")
        s.commit([{"p": p, "e": None, "rm": sorted(sibs, key=sync.dot_key)} for p, sibs in gone])
        _log(s, "delete", files=len(gone), segments=s.committed)
        return {"deleted": [p for p, _s in gone]}


def symlink(folder: str | None, path: str, target: str) -> dict[str, Any]:
    """A new symlink ``path`` -> ``target`` (the target as ``os`` gives it: a name that is not
    UTF-8 is kept byte for byte, format.md "paths"). It is stored, never followed."""
    path = sync.check_rel_path(path)
    if not target or "\0" in target:
        raise UsageError(f"{path}: a symlink needs a target")
    with session(folder) as s:
        if s.state.has_path(path):
            raise UsageError(f"{path}: already in the vault")
        s.commit([{"p": path, "e": {"t": "l", "l": from_disk(target), "m": time.time_ns()},
                   "rm": []}])
        _log(s, "symlink", files=1, segments=s.committed)
        return {"created": path}


def mkdir(folder: str | None, path: str, mode: int = 0o755) -> dict[str, Any]:
    """A new, empty folder in the manifest."""
    path = sync.check_rel_path(path)
    with session(folder) as s:
        if s.state.has_path(path):
            raise UsageError(f"{path}: already in the vault")
        s.commit([{"p": path, "e": {"t": "d", "x": mode & 0o777}, "rm": []}])
        return {"created": path}
