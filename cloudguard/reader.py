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
from .sync import blob_reader, dek_of
from .transport import Transport

__all__ = ["ChunkCache", "FileReader"]


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

    def __init__(self, transport: Transport, entry: dict[str, Any],
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
        pieces: dict[int, bytes] = {}
        missing: list[int] = []
        for index in range(first, last + 1):
            got = self.cache.get(self._key(index))
            if got is None:
                missing.append(index)
            else:
                pieces[index] = got
        for run in _runs(missing):
            pieces.update(self._fetch(blob, run))
        data = b"".join(pieces[i] for i in range(first, last + 1))
        start = offset - first * fmt.CHUNK_SIZE
        return data[start:start + (end - offset)]

    def _key(self, index: int) -> tuple[str, int, int]:
        return (self.object + ":" + self._file_id.hex(), self.base, index)

    def _fetch(self, blob: fmt.OpenBlob, run: list[int]) -> dict[int, bytes]:
        """One ranged download for consecutive chunks."""
        start, _ = blob.chunk_span(run[0])
        stop = sum(blob.chunk_span(run[-1]))
        out: dict[int, bytes] = {}
        with self.transport.reader(self.object, offset=self.base + start,
                                   count=stop - start) as stream:
            for index in run:
                _off, length = blob.chunk_span(index)
                sealed = fmt.read_exact(stream, length)
                try:
                    plain = fmt.decrypt_chunk(blob, index, sealed)
                except IntegrityError as exc:
                    raise named(self._what, IntegrityError(
                        f"chunk {index} failed authentication")) from exc
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
