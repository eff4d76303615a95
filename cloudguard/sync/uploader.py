"""Encrypt and upload: small files packed into objects, big ones streamed
into rclone, a spool batch uploading while the next is encrypted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .. import format as fmt
from ..errors import FileChangedError, Interrupted
from ..manifest import Entry
from ..names import local
from ..transport import Transport
from .reading import DATA_PREFIX
from .scanning import PERMISSIONS, LocalItem, Progress, _no_progress

PACK_THRESHOLD = 4 * 1024 * 1024  # files below this share pack objects


PACK_TARGET = 16 * 1024 * 1024


class ThreadedHash:
    """A hash fed on a second thread (hashlib releases the GIL on large updates), so hashing
    a big file runs beside its encryption on the other core.

    Small updates are handed over in blocks of about 1 MiB: one queue hand-off per 4 KiB
    blob cost more than hashing it. The order of the data is kept.
    """

    _BLOCK = 1024 * 1024

    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name, usedforsecurity=False)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._small: list[bytes] = []
        self._small_len = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def _flush_small(self) -> None:
        if self._small:
            self._queue.put(b"".join(self._small))
            self._small, self._small_len = [], 0

    def update(self, data: bytes) -> None:
        if len(data) >= 64 * 1024:
            self._flush_small()
            self._queue.put(data)
        elif data:
            self._small.append(data)
            self._small_len += len(data)
            if self._small_len >= self._BLOCK:
                self._flush_small()

    def close(self) -> None:
        if self._thread.is_alive():
            self._flush_small()
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


class ObjectWriter:
    """Counts what goes into an object and hashes it (MD5, the hash most backends keep), so
    plain `verify` can compare the backend's own hash without downloading.

    Not for a local remote (``md5=False``, :meth:`md5` is then ""): there the backend's hash
    is computed by reading the whole object, so `verify` reads and authenticates it instead,
    and the MD5 (2 s of CPU per GiB here, the slowest step of a big push) would buy nothing.
    """

    def __init__(self, inner: IO[bytes], md5: bool = True) -> None:
        self.inner = inner
        self.count = 0
        self._md5 = ThreadedHash("md5") if md5 else None

    def write(self, data: bytes) -> int:
        self.inner.write(data)
        self.count += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        return len(data)

    def close(self) -> None:
        if self._md5 is not None:
            self._md5.close()

    def md5(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else ""


class _ProgressReader:
    def __init__(self, inner: IO[bytes], progress: Progress) -> None:
        self.inner = inner
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.progress(len(data))
        return data


@dataclass
class Uploaded:
    entries: dict[str, Entry]  # those not handed to ``landed``
    objects: list[str]
    skipped: list[str]
    bytes_out: int
    paths: list[str] = field(default_factory=list)  # every file uploaded
    unreadable: list[str] = field(default_factory=list)  # skipped on a read error


def pack_groups(items: list[LocalItem]) -> list[list[LocalItem]]:
    small = [i for i in items if i.size < PACK_THRESHOLD]
    large = [[i] for i in items if i.size >= PACK_THRESHOLD]
    groups: list[list[LocalItem]] = []
    current: list[LocalItem] = []
    total = 0
    for item in small:
        if current and total + item.size > PACK_TARGET:
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += item.size
    if current:
        groups.append(current)
    return groups + large


# A file deleted, or replaced by a link, since the scan: a change the next push sees, not an
# error (the others - EACCES, EIO, ... - keep its last synced version and fail the push)
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)


SPOOL_FLUSH = 96 * 1024 * 1024  # spooled ciphertext handed to rclone in one process


SPOOL_FLUSH_FILES = 20_000  # ... or this many files, whichever comes first


STREAM_ABOVE = 32 * 1024 * 1024  # bigger files go straight into rclone, never to disk


LAND_EVERY = 256 * 1024 * 1024  # uploaded plaintext bytes committed together (or
# SPOOL_FLUSH_FILES files): a crash loses at most that much upload, and a push of a few big
# files and some small ones commits once


def _same_disk(spool: Path, transport: Transport) -> bool:
    """A local remote on the spool's filesystem takes spool files by rename: no copy, and no
    extra disk at all, so even a big file may be spooled there.

    Either folder may not exist yet (the spool does not before a binding's first push): its
    nearest existing parent stands for it. Early streams ask this before the uploader makes
    the spool; a False there streamed a first push's big files twice (rcat, then the spool).
    """
    if not transport.local:
        return False
    root = Path(getattr(transport, "remote", ""))
    try:
        return os.stat(_existing(spool)).st_dev == os.stat(_existing(root)).st_dev
    except OSError:
        return False


def _existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


class _InFlight:
    """One spool batch uploading on a thread while the next one is encrypted: encryption
    overlaps the upload, and at most two batches (about 2 x SPOOL_FLUSH) sit on disk."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, work: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # handed to the main thread by wait()
                self.error = exc
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def upload(folder: Path, items: list[LocalItem], transport: Transport, spool: Path, kek: bytes,
           generation: str, padding: bool, register: Callable[[str], None],
           warn: Callable[[str], None], progress: Progress = _no_progress,
           landed: Callable[[dict[str, Entry], list[str]], None] | None = None,
           early: Callable[[LocalItem], Entry | None] | None = None) -> Uploaded:
    """Encrypt into spool files (ciphertext only) and let rclone move them in batches, one
    batch uploading while the next is encrypted; files over STREAM_ABOVE are encrypted
    straight into an rclone upload, so the disk never holds more than two batches.

    A spool file rather than a pipe for the rest: rclone can retry a file and knows its size
    (multipart uploads), one process moves many objects, and on the same filesystem a local
    remote receives it by rename. Each object is registered as pending before it is written.

    ``landed`` receives uploaded entries and objects once they are on the remote (on this
    thread) whenever LAND_EVERY bytes or SPOOL_FLUSH_FILES files of them have gathered, so the
    caller can commit them: a huge first push then keeps its progress across a crash or an
    interrupt, and its entries are not all held in memory. Those entries are not kept in the
    result; the rest are (``entries``), so the caller commits them with its other changes in
    one segment. Before a big file is streamed, the spooled batch starts uploading, so small
    files go up beside it. ``early`` gives the entry of a big file that went up while the
    session opened (sync.early), if it did.
    """
    result = Uploaded({}, [], [], 0)
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    stream_big = not _same_disk(spool, transport)
    batch: list[str] = []
    batch_bytes = 0
    batch_entries: dict[str, Entry] = {}
    flight = _InFlight()
    waiting: tuple[dict[str, Entry], list[str]] | None = None  # uploaded, not yet landed
    carried: dict[str, Entry] = {}  # on the remote, not yet handed to ``landed``
    carried_names: list[str] = []
    carried_bytes = 0
    committed = 0  # files handed to ``landed``

    def carry(entries: dict[str, Entry], names: list[str]) -> None:
        nonlocal carried_bytes, committed
        carried.update(entries)
        carried_names.extend(names)
        carried_bytes += sum(int(e.get("s", 0)) for e in entries.values())
        result.paths += list(entries)
        if landed is not None and (carried_bytes >= LAND_EVERY
                                   or len(carried) >= SPOOL_FLUSH_FILES):
            landed(dict(carried), list(carried_names))
            committed += len(carried)
            carried.clear()
            carried_names.clear()
            carried_bytes = 0

    def land() -> None:
        """Hand the batch that finished uploading to the caller (on this thread: the caller
        commits to SQLite)."""
        nonlocal waiting
        flight.wait()
        if waiting is not None:
            entries, names = waiting
            waiting = None
            carry(entries, [DATA_PREFIX + o for o in names])

    def send(entries: dict[str, Entry], names: list[str]) -> None:
        """The bar moves with the bytes rclone reports on the remote, not with encryption
        (which runs many times faster than most uplinks): plaintext sizes stand for them."""
        plain = sum(int(e.get("s", 0)) for e in entries.values())
        shown = 0

        def sent(count: int) -> None:
            nonlocal shown
            step = min(count, plain - shown)
            if step > 0:
                shown += step
                progress(step)

        transport.put_files(spool, names, DATA_PREFIX, sent)
        sent(plain)  # a local remote takes the batch by rename, moving no bytes

    def flush() -> None:
        nonlocal batch, batch_bytes, batch_entries, waiting
        land()
        entries, names = batch_entries, batch
        waiting = (entries, names)
        flight.start(lambda: send(entries, names))
        batch, batch_bytes, batch_entries = [], 0, {}

    try:
        for group in pack_groups(items):
            object_id = fmt.new_object_id()
            register(DATA_PREFIX + object_id)
            packed = len(group) > 1 or group[0].size < PACK_THRESHOLD
            if not packed and stream_big and group[0].size > STREAM_ABOVE:
                if batch:
                    flush()  # the small files go up beside the big one
                ahead = early(group[0]) if early is not None else None
                if ahead is not None:
                    register(DATA_PREFIX + str(ahead["o"]))
                    progress(group[0].size)
                    result.objects.append(DATA_PREFIX + str(ahead["o"]))
                    result.bytes_out += int(ahead["n"])
                    land()
                    carry({group[0].path: ahead}, [DATA_PREFIX + str(ahead["o"])])
                    continue
                streamed = _stream_one(folder, group[0], object_id, transport, kek,
                                       generation, padding, warn, progress, result)
                land()  # keep the order: an earlier batch lands first
                if streamed is not None:
                    carry({group[0].path: streamed}, [DATA_PREFIX + object_id])
                continue
            entries, out = _spool_group(folder, group, object_id, spool / object_id,
                                        packed, transport, kek, generation, padding, warn,
                                        result)
            if out is None:
                continue
            batch_entries.update(entries)
            result.objects.append(DATA_PREFIX + object_id)
            result.bytes_out += out.count
            batch.append(object_id)
            batch_bytes += out.count
            if batch_bytes >= SPOOL_FLUSH or len(batch_entries) >= SPOOL_FLUSH_FILES:
                flush()
        land()
        if batch:  # the last batch: its entries go to the caller with its other changes
            send(batch_entries, batch)
            result.entries.update(batch_entries)
            result.paths += list(batch_entries)
        result.entries.update(carried)
    except BaseException as exc:
        try:
            flight.wait()  # never leave an upload running behind our back
        except BaseException:
            pass
        for name in batch:
            (spool / name).unlink(missing_ok=True)
        if waiting is not None:
            for name in waiting[1]:
                (spool / name).unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            kept = committed
            raise Interrupted(
                f"interrupted: {kept} file(s) were committed on the remote before it and are "
                "kept; the rest were not uploaded (no spool file was left) and go up on the "
                "next push") from exc
        raise
    return result


def _spool_group(folder: Path, group: list[LocalItem], object_id: str, path: Path,
                 packed: bool, transport: Transport, kek: bytes, generation: str,
                 padding: bool, warn: Callable[[str], None], result: Uploaded
                 ) -> tuple[dict[str, Entry], ObjectWriter | None]:
    """One object into a spool file; (entries, writer), or (.., None) if nothing was kept."""
    entries: dict[str, Entry] = {}
    abandoned = False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as raw:
            out = ObjectWriter(raw, md5=not transport.local)
            try:
                if packed:
                    out.write(fmt.pack_header(os.urandom(16)))
                for item in group:
                    offset = out.count
                    entry = _encrypt_or_skip(folder, item, out, kek, generation, padding, warn,
                                             result)
                    if entry is None:
                        abandoned = not packed
                        continue  # in a pack, its partial blob stays as dead bytes
                    entry.update({"o": object_id, "a": offset, "n": out.count - offset})
                    entries[item.path] = entry
                if packed and padding:
                    write_filler(out)
            finally:
                out.close()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if abandoned or not entries:
        path.unlink()
        return {}, None
    digest = out.md5()
    if digest:
        for entry in entries.values():
            entry["om"] = digest
    return entries, out


def _stream_one(folder: Path, item: LocalItem, object_id: str, transport: Transport,
                kek: bytes, generation: str, padding: bool, warn: Callable[[str], None],
                progress: Progress, result: Uploaded) -> Entry | None:
    """A big file encrypted straight into an rclone upload: no disk, and the upload runs as
    fast as encryption feeds it. A file that changes meanwhile ends the upload; the object
    stays registered as pending, so the next run deletes whatever rclone left of it."""
    name = DATA_PREFIX + object_id
    try:
        # the object is one blob of the size the scan saw; a file of another size by the
        # time it is opened is skipped before a byte is sent
        with transport.writer(name, fmt.blob_size(item.size, padding)) as raw:
            out = ObjectWriter(raw, md5=not transport.local)
            try:
                entry = _encrypt_or_skip(folder, item, out, kek, generation, padding, warn,
                                         result, progress, expect=item.size)
            finally:
                out.close()
            if entry is None:
                raise _Abandon()
    except _Abandon:
        return None
    entry.update({"o": object_id, "a": 0, "n": out.count})
    digest = out.md5()
    if digest:
        entry["om"] = digest
    result.objects.append(name)
    result.bytes_out += out.count
    return entry


class _Abandon(Exception):
    """Ends a streamed upload whose file could not be read whole."""


def _encrypt_or_skip(folder: Path, item: LocalItem, out: ObjectWriter, kek: bytes,
                     generation: str, padding: bool, warn: Callable[[str], None],
                     result: Uploaded, progress: Progress = _no_progress,
                     expect: int | None = None) -> Entry | None:
    try:
        return _encrypt_one(folder, item, out, kek, generation, padding, progress, expect)
    except (FileChangedError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in _GONE:
            warn(f"could not push {item.path}: {exc.strerror or exc}; kept its last synced "
                 "version")  # and reported: exit 1
            result.unreadable.append(item.path)
        else:
            warn(f"skipped {item.path}: it changed while it was read; it goes up on the next "
                 "push")
        result.skipped.append(item.path)
        return None


def write_filler(out: ObjectWriter) -> None:
    """Random bytes up to padme(size): a pack's size says no more than a file's does."""
    filler = fmt.padme(out.count) - out.count
    while filler > 0:
        step = min(filler, 1024 * 1024)
        out.write(os.urandom(step))
        filler -= step


def _encrypt_one(folder: Path, item: LocalItem, out: ObjectWriter, kek: bytes, generation: str,
                 padding: bool, progress: Progress, expect: int | None = None) -> Entry:
    entry, dek, file_id = encrypt_file(folder, item, out, padding,
                                       lambda fh: _ProgressReader(fh, progress), expect)
    return {**entry, "k": fmt.b64(fmt.wrap_dek(kek, dek, file_id)), "g": generation,
            "w": generation}


def encrypt_file(folder: Path, item: LocalItem, out: ObjectWriter, padding: bool,
                 source: Callable[[IO[bytes]], fmt.Reader], expect: int | None = None
                 ) -> tuple[Entry, bytes, bytes]:
    """One file as a blob under a fresh DEK: its entry without the wrapped key, the DEK and
    the file id. The KEK is not needed yet (sync.early wraps the DEK later); ``source``
    wraps the open file (progress, or a stop)."""
    fd = os.open(local(folder, item.path), os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or expect not in (None, st.st_size):
            raise FileChangedError(item.path)
        dek, file_id = fmt.new_dek(), fmt.new_file_id()
        # a big file's SHA-256 runs on the other core, beside its encryption
        digest = ThreadedHash("sha256") if st.st_size >= PACK_THRESHOLD else None
        try:
            info = fmt.encrypt_blob(source(fh), out, dek, file_id, st.st_size, padding, digest)
        finally:
            if digest is not None:
                digest.close()
        after = os.fstat(fd)
        if after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size:
            raise FileChangedError(item.path)
    return ({"t": "f", "s": info.size, "m": st.st_mtime_ns, "x": st.st_mode & PERMISSIONS,
             "h": info.sha256, "i": file_id.hex()}, dek, file_id)
