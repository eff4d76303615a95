"""Early streams: a push's big new or resized files start encrypting and uploading as soon as
the folder scan is done, while the session still lists the remote, reads the keyring and
verifies the chain (issue 9, item 8: the listing alone costs about 0.3 s over sftp).

A blob needs only its own fresh DEK, never the KEK, so it can go up before the chain names
the KEK; the DEK is wrapped when the push builds the entry. Only what will surely be uploaded
goes early: a file whose size differs from every version this device knows of, with no
vanished file of that size (a rename uploads nothing), and no cached remote version of that
size (a file another device pushed already is adopted, not uploaded). A push that does not
take a stream deletes its object; a crash leaves the object named in a journal beside the
index, which the next push deletes (``collect``), and garbage collection would anyway.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import format as fmt
from ..errors import FileChangedError
from ..manifest.entry import Entry
from ..names import local
from ..transport import Transport
from . import uploader
from .reading import DATA_PREFIX
from .scanning import LocalItem
from .uploader import ObjectWriter, _same_disk, encrypt_file

Scanned = tuple[dict[str, LocalItem], list[str], list[str]]
MAX_EARLY = 4  # files streamed early by one push: the rest wait for the plan


@dataclass
class Streamed:
    """A blob on the remote under ``object_id``, and what its entry needs besides the KEK."""

    item: LocalItem
    object_id: str
    dek: bytes
    file_id: bytes
    entry: Entry


class EarlyStreams:
    """Started by a push's session once its folder lock is held; see the module doc."""

    def __init__(self, folder: Path, home: Path, transport: Transport, padding: bool,
                 prescan: Callable[[], Scanned]) -> None:
        self.folder, self.home, self.transport, self.padding = folder, home, transport, padding
        self.journal = home / f"early-{os.getpid()}-{os.urandom(4).hex()}.json"
        self.done: dict[str, Streamed] = {}
        self.taken: set[str] = set()
        self._names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(prescan,), daemon=True)
        self._thread.start()

    def _run(self, prescan: Callable[[], Scanned]) -> None:
        with suppress(Exception):  # an early stream is only a head start: the push redoes it
            for item in self._pick(prescan()[0]):
                if self._stop.is_set():
                    return
                got = self._stream(item)
                if got is not None:
                    self.done[item.path] = got

    def _pick(self, scanned: dict[str, LocalItem]) -> list[LocalItem]:
        if _same_disk(self.home / "spool", self.transport):
            return []  # a local remote on this disk takes spool files by rename
        above = uploader.STREAM_ABOVE
        big = sorted((i for i in scanned.values() if i.kind == "f" and i.size > above),
                     key=lambda i: -i.size)
        if not big:
            return []
        with closing(_read_only(self.home / "index.db")) as index, \
                closing(_read_only(self.home / "manifest.db")) as state:
            sizes = {int(s) for (s,) in index.execute(
                "SELECT size FROM files WHERE kind = 'f' AND size > ?", (above,))
                } if _has(index, "files") else set()
            remote = {int(s) for (s,) in state.execute(
                "SELECT json_extract(e, '$.s') FROM entries WHERE json_extract(e, '$.s') > ?",
                (above,))} if _has(state, "entries") else set()
        return [i for i in big if i.size not in sizes and i.size not in remote][:MAX_EARLY]

    def _stream(self, item: LocalItem) -> Streamed | None:
        object_id = fmt.new_object_id()
        name = DATA_PREFIX + object_id
        st = os.stat(local(self.folder, item.path), follow_symlinks=False)
        if st.st_size != item.size or st.st_mtime_ns != item.mtime:
            return None  # changed since the scan: the plan sees it as it is now
        self._names.append(name)
        _write_journal(self.journal, self._names)  # before a byte goes up
        try:
            with self.transport.writer(name, fmt.blob_size(item.size, self.padding)) as raw:
                out = ObjectWriter(raw, md5=not self.transport.local)
                try:
                    entry, dek, file_id = encrypt_file(
                        self.folder, item, out, self.padding,
                        lambda fh: _Stoppable(fh, self._stop), item.size)
                finally:
                    out.close()
        except FileChangedError:
            return None
        if entry["m"] != item.mtime:
            return None
        entry.update({"o": object_id, "a": 0, "n": out.count})
        if out.md5():
            entry["om"] = out.md5()
        return Streamed(item, object_id, dek, file_id, entry)

    def take(self, item: LocalItem, kek: bytes, generation: str) -> Entry | None:
        """The entry of ``item`` if it went up early and the file is as the plan saw it."""
        self._thread.join()
        got = self.done.get(item.path)
        if got is None or got.item.size != item.size or got.item.mtime != item.mtime or \
                got.item.ino != item.ino or got.item.ctime != item.ctime:
            return None
        self.taken.add(got.object_id)
        return {**got.entry, "k": fmt.b64(fmt.wrap_dek(kek, got.dek, got.file_id)),
                "g": generation, "w": generation}

    def close(self) -> None:
        """Stop, delete what no push took, and drop the journal (the taken objects are the
        push's: committed, or pending in the index)."""
        self._stop.set()
        self._thread.join()
        unused = [n for n in self._names if n[len(DATA_PREFIX):] not in self.taken]
        try:
            if unused:
                self.transport.delete(unused)
        finally:
            self.journal.unlink(missing_ok=True)


class _Stoppable:
    """A file that stops being read once the push no longer wants the stream (it ended, was
    refused or interrupted): the upload is abandoned instead of finished for nothing."""

    def __init__(self, inner: Any, stop: threading.Event) -> None:
        self.inner, self.stop = inner, stop

    def read(self, size: int = -1) -> bytes:
        if self.stop.is_set():
            raise InterruptedError("early stream no longer wanted")
        data: bytes = self.inner.read(size)
        return data


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection only for reading (WAL lets it read beside the session's writer); a
    database not created yet reads as empty."""
    db = sqlite3.connect(path if path.exists() else ":memory:", timeout=5)
    db.execute("PRAGMA query_only = ON")
    return db


def _has(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() \
        is not None


def _write_journal(path: Path, names: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(names, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def left_behind(home: Path, mine: Path | None = None) -> tuple[set[str], list[Path]]:
    """Objects that early streams of runs that crashed named, and their journals."""
    names: set[str] = set()
    journals = [p for p in home.glob("early-*.json") if p != mine]
    for path in journals:
        with suppress(OSError, ValueError):
            found = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(found, list):
                names |= {n for n in found if isinstance(n, str) and n.startswith(DATA_PREFIX)}
    return names, journals


def forget(journals: Iterable[Path]) -> None:
    for path in journals:
        path.unlink(missing_ok=True)
