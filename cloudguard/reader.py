"""Ranged reads of one file version: download and decrypt only the chunks a read touches.

What the mount needs (``open_reader(path).read(offset, n)``): a 4 KiB read in the middle of a
1 GiB file costs the 84-byte header once and one or two 64 KiB chunks, not the file. Each
chunk is authenticated on its own (AES-GCM under the version's own key, bound to the file id,
its index and the final flag; docs/format.md, "Content blobs"), so a chunk from anywhere else
fails. The content hash ``h`` covers the whole file: a ranged read cannot check it, which is
why ``pull`` (whole files) still does. Plaintext stays in memory, in a bounded cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from . import format as fmt
from .errors import IntegrityError, named
from .manifest.entry import Entry
from .sync import blob_reader, dek_of
from .transport import Transport

__all__ = ["ChunkCache", "FileReader"]

_NEAR = 4  # chunks: a read this close to the last one continues it
READ_AHEAD = 32  # chunks (2 MiB) at most, fetched with a sequential read: one ranged read
# per 2 MiB instead of one per kernel request (128 KiB), each a round trip through the rcd


class ChunkCache:
    """Decrypted chunks, least recently used first out; bounded in bytes, shared by readers."""

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._held = 0
        self._chunks: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            data = self._chunks.get(key)
            if data is not None:
                self._chunks.move_to_end(key)
            return data

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        with self._lock:
            old = self._chunks.pop(key, None)
            self._held -= len(old) if old is not None else 0
            self._chunks[key] = data
            self._held += len(data)
            while self._held > self.max_bytes and len(self._chunks) > 1:
                _key, dropped = self._chunks.popitem(last=False)
                self._held -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._held = 0


class FileReader:
    """One file version (a manifest entry), read by byte ranges.

    ``keks`` maps the entry's KEK commitment to a KEK of a verified commit (trust.Ring.kek).
    Errors name the object; a missing object is the transport's MissingObject.
    """

    def __init__(self, transport: Transport, entry: Entry,
                 keks: Any, cache: ChunkCache | None = None, path: str = "") -> None:
        if entry.get("t") != "f":
            raise IntegrityError(f"{path or 'entry'}: not a file")
        self.transport = transport
        self.object, self.base, self.length = blob_reader(entry)
        self._dek, self._file_id = dek_of(entry, keks)
        self.size = int(entry.get("s", -1))
        self.cache = cache if cache is not None else ChunkCache()
        self._blob: fmt.OpenBlob | None = None
        self._what = f"{self.object} (blob at {self.base})"
        self._lock = threading.Lock()
        self._fetching = threading.Lock()  # one download at a time: a second reader of the
        # same chunks waits for the first and finds them in the cache
        self._ahead = 0  # chunks to read ahead: doubles while reads stay sequential
        self._pos = -1  # the last chunk of the last read
        self._prefetching = False

    def _open(self) -> fmt.OpenBlob:
        with self._lock:
            if self._blob is None:
                with self.transport.reader(self.object, offset=self.base,
                                           count=fmt.BLOB_HEADER_SIZE) as stream:
                    header = stream.read(fmt.BLOB_HEADER_SIZE)
                try:
                    blob = fmt.open_blob(header, self._dek, self._file_id)
                    if blob.blob_len != self.length or blob.header.size != self.size:
                        raise IntegrityError()  # the manifest and the blob disagree
                except IntegrityError as exc:
                    raise named(self._what, exc) from exc
                self._blob = blob
            return self._blob

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer only at the end of the file)."""
        if offset < 0 or n < 0:
            raise ValueError("offset and count must not be negative")
        end = min(offset + n, self.size)
        if end <= offset:
            return b""
        blob = self._open()
        first, last = offset // fmt.CHUNK_SIZE, (end - 1) // fmt.CHUNK_SIZE
        # sequential: near where the last read was (the kernel's readahead comes on several
        # threads, a little out of order); read ahead twice as far each time, to READ_AHEAD
        sequential = first == 0 and self._pos < 0 or abs(first - self._pos) <= _NEAR
        self._pos = last
        pieces = self._cached(first, last)
        if len(pieces) <= last - first:
            self._ahead = min(max(1, self._ahead * 2), READ_AHEAD) if sequential else 0
            with self._fetching:
                pieces = self._cached(first, last)  # another thread's download may hold them
                missing = [i for i in range(first, last + 1) if i not in pieces]
                if missing:
                    # sequential: the next chunks in the same download (cached, not returned)
                    stop = min(max(missing) + self._ahead, blob.chunks - 1)
                    ahead = [i for i in range(max(missing) + 1, stop + 1)
                             if self.cache.get(self._key(i)) is None]
                    for run in _runs(missing + ahead):
                        pieces.update(self._fetch(blob, run))
        elif self._ahead == READ_AHEAD and sequential:
            self._prefetch(blob, last)
        data = b"".join(pieces[i] for i in range(first, last + 1))
        start = offset - first * fmt.CHUNK_SIZE
        return data[start:start + (end - offset)]

    def _prefetch(self, blob: fmt.OpenBlob, last: int) -> None:
        """A sequential reader nearing the end of what was read ahead: fetch the next
        window on a thread of its own, so the download overlaps the reads that use the
        cached chunks (a read that needs the window waits for it on ``_fetching``). A
        failure is left to the read that needs those chunks."""
        stop = min(last + READ_AHEAD, blob.chunks - 1)
        half = min(last + READ_AHEAD // 2, stop)
        if self._prefetching or half <= last or self.cache.get(self._key(half)) is not None:
            return
        self._prefetching = True

        def run() -> None:
            try:
                with self._fetching:
                    missing = [i for i in range(last + 1, stop + 1)
                               if self.cache.get(self._key(i)) is None]
                    for chunks in _runs(missing):
                        self._fetch(blob, chunks)
            except Exception:  # the read that needs these chunks raises it
                pass
            finally:
                self._prefetching = False

        threading.Thread(target=run, name="cloudguard-readahead", daemon=True).start()

    def _cached(self, first: int, last: int) -> dict[int, bytes]:
        pieces: dict[int, bytes] = {}
        for index in range(first, last + 1):
            got = self.cache.get(self._key(index))
            if got is not None:
                pieces[index] = got
        return pieces

    def _key(self, index: int) -> tuple[str, int, int]:
        return (self.object + ":" + self._file_id.hex(), self.base, index)

    def _fetch(self, blob: fmt.OpenBlob, run: list[int]) -> dict[int, bytes]:
        """One ranged download for consecutive chunks."""
        start, _ = blob.chunk_span(run[0])
        stop = sum(blob.chunk_span(run[-1]))
        out: dict[int, bytes] = {}
        with self.transport.reader(self.object, offset=self.base + start,
                                   count=stop - start) as stream:
            raw = fmt.read_exact(stream, stop - start)  # one read: 2 MiB, not 32 of 64 KiB
        with memoryview(raw) as view:
            for index in run:
                at, length = blob.chunk_span(index)
                sealed = view[at - start:at - start + length]
                try:
                    plain = fmt.decrypt_chunk(blob, index, sealed)  # type: ignore[arg-type]
                except IntegrityError as exc:
                    raise named(self._what, IntegrityError(
                        f"chunk {index} failed authentication")) from exc
                finally:
                    sealed.release()
                self.cache.put(self._key(index), plain)
                out[index] = plain
        return out


def _runs(indexes: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][-1] + 1 == index:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs
