"""A new version's blob, sealed as its content is written (the mount's fast path, issue 12).

A file written from its start (a new file, or one truncated to nothing) is the common case:
``cp``, a save, an editor's temp file. Its blob is sealed chunk by chunk as the writes come,
straight into a spool file under the version's own fresh DEK and file id, so a close only
seals the last chunk and the header and journals the entry: no second encryption of the
whole file and no second copy on disk. Only ciphertext reaches the disk; the chunk not yet
sealed (at most 64 KiB) stays in memory.

Nonces: a blob's chunk nonce is its (index, final) pair under its own key, so each pair is
sealed once only. A chunk is sealed (not final) only once content exists past it, and the
chunks from the first unsealed one to the end are sealed once, at :meth:`finish`, the last
as final. A write or truncation that would change a sealed chunk, or any change after
finish, is refused (``False``): the caller then keeps that content as the base of an
ordinary draft, and the version is encrypted afresh under a new DEK.

The file is named ``draft-<pid>-<random>`` until it is staged (renamed to its object id);
a killed mount leaves such files behind, ciphertext under a key nobody has, which
:func:`sweep` removes when the next stager starts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from .. import format as fmt
from ..procs import running

CHUNK = fmt.CHUNK_SIZE
_SEALED = CHUNK + fmt.TAG_SIZE
PREFIX = "draft-"  # a draft's file, as the general path's unnamed ones


class _Digest:
    """SHA-256 of the content, inline while the file is small; past THREAD_AFTER bytes on a
    thread of its own (hashlib lets go of the GIL), so hashing a big file runs on the other
    core beside its sealing and writing (0.8 s per GiB here). Order is kept; the pieces
    queued are immutable bytes."""

    THREAD_AFTER = 4 * 1024 * 1024

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._count = 0
        self._queue: queue.Queue[tuple[bytes, int, int] | None] | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes, start: int = 0, stop: int | None = None) -> None:
        stop = len(data) if stop is None else stop
        if self._queue is not None:
            self._queue.put((data, start, stop))
            return
        with memoryview(data) as view:
            self._hash.update(view[start:stop])
        self._count += stop - start
        if self._count >= self.THREAD_AFTER:
            self._queue = queue.Queue(maxsize=16)
            self._thread = threading.Thread(target=self._run, name="cloudguard-digest",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            data, start, stop = item
            with memoryview(data) as view:
                self._hash.update(view[start:stop])

    def hexdigest(self) -> str:
        self.stop()
        return self._hash.hexdigest()

    def stop(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class _Writer:
    """Writes sealed chunks to the spool file on a thread of its own once a file is big, so
    the FUSE thread takes the next write while this one reaches the page cache (the write
    was 60 % of a streamed write's time). A failed write keeps its ciphertext, and that of
    every piece queued after it, in memory: the content stays readable, and the stream's
    next seal raises the error (the stream is then broken, as after an inline failure)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0  # chunks on disk (or kept in ``failed``), from index 0
        self.failed: dict[int, bytes] = {}
        self.error: OSError | None = None
        self._queue: queue.Queue[tuple[int, int, list[bytes]] | None] = queue.Queue(maxsize=4)
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cloudguard-spool", daemon=True)
        self._thread.start()

    def put(self, first: int, pieces: list[bytes]) -> None:
        self._queue.put((first, fmt.BLOB_HEADER_SIZE + first * _SEALED, pieces))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            first, at, pieces = item
            try:
                if self.error is not None:
                    raise self.error
                if os.pwritev(self.fd, pieces, at) != len(pieces) * _SEALED:
                    raise OSError(errno.EIO, "short write to the spool")
            except OSError as exc:
                self.error = self.error or exc
                self.failed.update({first + k: piece for k, piece in enumerate(pieces)})
            with self._done:
                self.written = first + len(pieces)
                self._done.notify_all()

    def wait(self, chunks: int) -> None:
        """Until the first ``chunks`` chunks are written (or kept)."""
        with self._done:
            while self.written < chunks:
                self._done.wait()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class BlobStream:
    def __init__(self, spool: Path, padding: bool, md5: bool) -> None:
        self.dek, self.file_id = fmt.new_dek(), fmt.new_file_id()
        self._sealer = fmt.BlobSealer(self.dek, self.file_id)
        self.padding, self.md5 = padding, md5
        self.path: Path | None = spool / f"{PREFIX}{os.getpid()}-{fmt.new_object_id()}"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.sealed = 0  # full chunks sealed (not final), from index 0
        self._tail = bytearray()  # the content after them: at most one chunk, in memory only
        self._digest = _Digest()
        self._lock = threading.Lock()  # a read sees sealed and tail of one moment
        self.info: fmt.BlobInfo | None = None  # once finished
        self._blob: fmt.OpenBlob | None = None
        self._header: bytes | None = None  # once finished
        self._broken = False  # a failed write: never seal again (an index may be on disk)
        self._writer: _Writer | None = None  # once the file passes _Digest.THREAD_AFTER

    @property
    def size(self) -> int:
        if self.info is not None:
            return self.info.size
        return self.sealed * CHUNK + len(self._tail)

    def write(self, offset: int, data: bytes) -> bool:
        """Put ``data`` at ``offset``; False (nothing changed) if that would touch a sealed
        chunk or the blob is finished. A gap before ``offset`` reads as zeros."""
        base = self.sealed * CHUNK
        if self.info is not None or offset < base or self.fd < 0 or self._broken:
            return False
        pos = offset - base
        if pos == len(self._tail) and pos + len(data) > CHUNK:
            self._append(data)  # the common case, from the caller's buffer without a copy
            return True
        tail = bytearray(self._tail)
        if pos > len(tail):
            tail += bytes(pos - len(tail))
        tail[pos:pos + len(data)] = data
        self._settle(tail)
        return True

    def _append(self, data: bytes) -> None:
        """``data`` after the tail: the tail's chunk completed from it, then whole chunks of
        it sealed in place; what is left (at least one byte) is the new tail."""
        data = bytes(data)  # immutable: the digest's thread may read it later
        head = CHUNK - len(self._tail)
        full = (len(data) - head - 1) // CHUNK  # whole chunks of data after the tail's
        first = bytes(self._tail) + data[:head]
        self._digest.update(first)
        self._digest.update(data, head, head + full * CHUNK)
        with memoryview(data) as view:
            body = view[head:head + full * CHUNK]
            self._seal([first, *(body[k * CHUNK:(k + 1) * CHUNK] for k in range(full))])
            body.release()
            tail = bytearray(view[head + full * CHUNK:])
        with self._lock:
            self.sealed += full + 1
            self._tail = tail

    def truncate(self, length: int) -> bool:
        """Cut or extend (with zeros) to ``length``; False if that would change a sealed chunk
        (a sealed chunk must stay the one before more content)."""
        base = self.sealed * CHUNK
        if (self.info is not None or self.fd < 0 or self._broken
                or (self.sealed and length <= base)):
            return False
        keep = length - base
        self._settle(self._tail[:keep] + bytes(max(0, keep - len(self._tail))))
        return True

    def _settle(self, tail: bytearray) -> None:
        """Seal every full chunk of the new ``tail`` but its last byte's (the last chunk may
        be final); keep the rest in memory."""
        full = (len(tail) - 1) // CHUNK if tail else 0
        if full > 0:
            with memoryview(tail) as view:
                chunks = [bytes(view[k * CHUNK:(k + 1) * CHUNK]) for k in range(full)]
            for chunk in chunks:
                self._digest.update(chunk)
            self._seal(chunks)
            del tail[:full * CHUNK]
        with self._lock:
            self.sealed += full
            self._tail = tail

    def _seal(self, chunks: list[Any]) -> None:
        """Seal ``chunks`` (full, not final) from index ``sealed`` on, in one write (on the
        writer's thread once the file is big). A failure leaves the stream broken: a chunk of
        it may be on disk, never to be sealed again."""
        self._broken = True  # until this write is whole
        if self._writer is not None and self._writer.error is not None:
            raise OSError(self._writer.error.errno or errno.EIO,
                          f"writing the spool: {self._writer.error.strerror}")
        pieces = [self._sealer.seal(self.sealed + k, plain, False)
                  for k, plain in enumerate(chunks)]
        if self._writer is None and self.sealed * CHUNK >= _Digest.THREAD_AFTER:
            self._writer = _Writer(self.fd)
        if self._writer is not None:
            self._writer.put(self.sealed, pieces)
            self._broken = False
            return
        at = fmt.BLOB_HEADER_SIZE + self.sealed * _SEALED
        if os.pwritev(self.fd, pieces, at) != len(pieces) * _SEALED:
            raise OSError("short write to the spool")
        self._broken = False

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes of the content from ``offset``, opened from the spool file (and
        the unsealed tail in memory)."""
        with self._lock:
            if self._blob is None and self._header is not None:
                self._blob = fmt.open_blob(self._header, self.dek, self.file_id)
            sealed, tail, blob = self.sealed, bytes(self._tail), self._blob
        size = sealed * CHUNK + len(tail) if blob is None else blob.header.size
        end = min(offset + n, size)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, CHUNK)
            if blob is not None:
                span_at, span_len = blob.chunk_span(index)
                plain = fmt.decrypt_chunk(blob, index, os.pread(self.fd, span_len, span_at))
            elif index < sealed:
                plain = self._sealer.open(index, self._sealed_chunk(index), False)
            else:
                plain = tail
            take = plain[within:within + end - pos]
            if not take:
                break
            out += take
            pos += len(take)
        return bytes(out)

    def _sealed_chunk(self, index: int) -> bytes:
        """Sealed chunk ``index`` (< sealed) as written, once its write is done."""
        writer = self._writer
        if writer is not None:
            writer.wait(index + 1)
            if index in writer.failed:
                return writer.failed[index]
        return os.pread(self.fd, _SEALED, fmt.BLOB_HEADER_SIZE + index * _SEALED)

    def finish(self) -> fmt.BlobInfo:
        """Seal the rest (the tail, the padding, the final flag on the last chunk) and the
        header; from now on the blob only reads."""
        if self.info is not None:
            return self.info
        if self._writer is not None:
            self._writer.wait(self.sealed)  # every sealed chunk on disk before the end
            if self._writer.error is not None:
                self._broken = True
        if self._broken or self.fd < 0:
            raise OSError("this blob stream failed or was closed; it cannot be finished")
        self._broken = True  # until the last chunks and the header are whole
        with self._lock:
            size = self.size
            padded = fmt.padded_length(size, self.padding)
            total = fmt.chunk_count(padded)
            self._digest.update(bytes(self._tail))
            pieces = []
            rest = bytes(self._tail)
            for index in range(self.sealed, total):
                want = min(CHUNK, padded - index * CHUNK)
                plain = rest[:want].ljust(want, b"\0")
                rest = rest[want:]
                pieces.append(self._sealer.seal(index, plain, index == total - 1))
            header = self._sealer.header(size, padded)
            if self.sealed:
                os.pwritev(self.fd, pieces, fmt.BLOB_HEADER_SIZE + self.sealed * _SEALED)
                os.pwrite(self.fd, header, 0)
            else:  # a small file: the whole blob in one write
                os.pwritev(self.fd, [header, *pieces], 0)
            blob_len = fmt.BLOB_HEADER_SIZE + padded + fmt.TAG_SIZE * total
            self.info = fmt.BlobInfo(size=size, sha256=self._digest.hexdigest(),
                                     blob_len=blob_len)
            self._header = header  # opened when first read (most small files never are)
            self._tail = bytearray()
        self._broken = False
        return self.info

    def object_md5(self) -> str:
        """MD5 of the finished blob ("" when the remote keeps none we check: a local one),
        read back from the page cache: the header is written last, so it cannot be
        computed in order as the chunks go."""
        if not self.md5 or self.info is None:
            return ""
        digest = hashlib.md5(usedforsecurity=False)
        for at in range(0, self.info.blob_len, 1 << 20):
            digest.update(os.pread(self.fd, min(1 << 20, self.info.blob_len - at), at))
        return digest.hexdigest()

    @property
    def usable(self) -> bool:
        """Can still be written or finished (not failed, not closed)."""
        return self.fd >= 0 and not self._broken and (
            self._writer is None or self._writer.error is None)

    def close(self) -> None:
        """Forget the blob: the descriptor, and the file unless it was staged (renamed)."""
        self._digest.stop()
        if self._writer is not None:
            self._writer.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.path is not None:
                with suppress(FileNotFoundError):
                    self.path.unlink()


def sweep(spool: Path) -> int:
    """Remove the stream files a killed process left (ciphertext under a DEK that died with
    it; their versions were never staged). A file is named after its process: a live
    one's streams are left alone."""
    gone = 0
    for child in spool.glob(PREFIX + "*"):
        try:
            if running(int(child.name.split("-")[1])):
                continue
        except (ValueError, IndexError):
            continue  # not named by us
        with suppress(FileNotFoundError):
            child.unlink()
            gone += 1
    return gone
