"""A file open for writing in the mount: its changed chunks, never plaintext on disk.

A file written from its start (a new file, or one truncated to nothing) is sealed as it is
written, straight into its version's blob (:class:`~cloudguard.ops.blobstream.BlobStream`):
a close then seals only the last chunk and the header. Any other change (a write into a
chunk already sealed, a file opened on existing content) takes the general path below, with
what was sealed so far as its base.

There, writes land in 64 KiB chunks. A chunk that was written is kept in a temp file of this
device, sealed with AES-GCM under a key that lives only in this object's memory (and a fresh
nonce per write), so memory stays flat for any file size and the disk only ever holds
ciphertext that no one can open once the process is gone. Chunks never written come from the
version the file was opened on (a ranged reader). On release the whole new content streams,
chunk by chunk, into the engine's :func:`~cloudguard.ops.write.stage_version`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..ops.blobstream import BlobStream

CHUNK = 64 * 1024
_SLOT = 12 + CHUNK + 16  # nonce, sealed chunk (padded to a full chunk), tag


class _Content(Protocol):
    def read(self, offset: int, n: int, /) -> bytes: ...


class Draft:
    def __init__(self, base: _Content | None, size: int, spool: Path,
                 streams: Callable[[], BlobStream] | None = None) -> None:
        self.base = base  # the version opened on, or a blob stream this draft sealed
        self.size = size
        self.base_size = size
        self._spool = spool
        self._streams = streams
        self._aead: AESGCM | None = None  # the general path's, made at its first chunk
        self._fd = -1
        self._written: dict[int, int] = {}  # chunk index -> bytes of it that are real
        self.blob: BlobStream | None = None  # sealing as written (content from its start)
        self._owned: list[BlobStream] = []  # closed with the draft
        self.dirty = False
        self.refs = 1  # open handles sharing this draft (every writer of one file sees one)
        self.staged = 0  # versions staged from it (the mount's committer compares counts)
        self.parked = False  # kept under a negative handle until its version is committed
        # its content's time: stable between writes (an editor compares it before saving),
        # and the time its version is committed with
        self.mtime = time.time_ns()
        if base is None and size == 0:
            self._restart()

    def _restart(self) -> None:
        """Empty content: drop what was, and seal what comes next as it comes."""
        for blob in self._owned:
            blob.close()
        self._owned, self.blob, self.base, self.base_size = [], None, None, 0
        self._written.clear()
        if self._streams is not None:
            try:
                self.blob = self._streams()
            except OSError:  # no stream (a full disk, say): the general path still works
                return
            self._owned.append(self.blob)

    def _spill(self) -> None:
        """Leave the sealing path: what was sealed (and the tail) is the base from now on."""
        if self.blob is not None:
            self.base, self.base_size, self.blob = self.blob, self.blob.size, None

    def sealing(self) -> BlobStream | None:
        """The blob stream to stage (its content is the draft's), or None: the general
        path (stage the content afresh)."""
        if self.blob is not None and not self.blob.usable:
            self._spill()
        return self.blob

    def staged_stream(self) -> None:
        """The stream was staged and is finished: it reads on as the base."""
        self._spill()

    def _chunk(self, index: int) -> bytes:
        """The current plaintext of chunk ``index`` (zero-filled past what exists)."""
        if index in self._written and self._aead is not None:
            slot = os.pread(self._fd, _SLOT, index * _SLOT)
            plain = self._aead.decrypt(slot[:12], slot[12:], index.to_bytes(8, "big"))
            return plain[:self._written[index]]
        start = index * CHUNK
        if self.base is None or start >= self.base_size:
            return b""
        return self.base.read(start, min(CHUNK, self.base_size - start))

    def _put(self, index: int, plain: bytes) -> None:
        if self._aead is None:
            self._aead = AESGCM(AESGCM.generate_key(256))
            fd, name = tempfile.mkstemp(prefix="draft-", dir=self._spool)
            os.unlink(name)  # nothing to clean up after a crash: the file has no name
            self._fd = fd
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain.ljust(CHUNK, b"\0"), index.to_bytes(8, "big"))
        os.pwrite(self._fd, nonce + sealed, index * _SLOT)
        self._written[index] = len(plain)

    def read(self, offset: int, n: int) -> bytes:
        if self.blob is not None:
            return self.blob.read(offset, n)
        end = min(offset + n, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, CHUNK)
            chunk = self._chunk(index).ljust(min(CHUNK, self.size - index * CHUNK), b"\0")
            take = chunk[within:within + (end - pos)]
            out += take
            pos += len(take)
            if not take:
                break
        return bytes(out)

    def write(self, offset: int, data: bytes) -> int:
        if self.blob is not None:
            if self.blob.write(offset, data):
                self.size = self.blob.size
                self.dirty = True
                self.mtime = time.time_ns()
                return len(data)
            self._spill()
        pos, done = offset, 0
        while done < len(data):
            index, within = divmod(pos, CHUNK)
            chunk = bytearray(self._chunk(index))
            if len(chunk) < within:
                chunk += bytes(within - len(chunk))
            piece = data[done:done + CHUNK - within]
            chunk[within:within + len(piece)] = piece
            self._put(index, bytes(chunk))
            pos += len(piece)
            done += len(piece)
        self.size = max(self.size, offset + len(data))
        self.dirty = True
        self.mtime = time.time_ns()
        return len(data)

    def truncate(self, length: int) -> None:
        self.dirty = True
        self.mtime = time.time_ns()
        if self.blob is not None and self.blob.truncate(length):
            self.size = length
            return
        if length == 0:
            self._restart()
            self.size = 0
            return
        self._spill()
        if length < self.size:
            index, within = divmod(length, CHUNK)
            if within:
                self._put(index, self._chunk(index)[:within])
            for gone in [i for i in self._written if i * CHUNK >= length and i != index]:
                del self._written[gone]
            if not within:
                self._written.pop(index, None)
            self.base_size = min(self.base_size, length)
        self.size = length
        self.dirty = True
        self.mtime = time.time_ns()

    def stream(self) -> _Stream:
        return _Stream(self)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for blob in self._owned:
            blob.close()
        self._owned, self.blob = [], None


class _Stream:
    """The draft's whole content, read in order (what stage_version encrypts)."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.draft.size - self.pos
        data = self.draft.read(self.pos, min(size, CHUNK))
        self.pos += len(data)
        return data


class Drafts(dict[int, tuple[str, Draft, int]]):
    """The mount's drafts by handle (fh -> path, draft, mode; parked ones under negative
    handles), also indexed by path: finding the draft of a path is a lookup, not a scan, for
    a burst of new files parks one draft each until their commit (2,000 x 4 KiB: 2,000)."""

    def __init__(self) -> None:
        super().__init__()
        self._paths: dict[str, dict[int, None]] = {}  # path -> its handles, in order
        self._lock = threading.RLock()  # FUSE threads change it at once

    def __setitem__(self, fh: int, value: tuple[str, Draft, int]) -> None:
        with self._lock:
            old = self.get(fh)
            if old is not None:
                self._unindex(fh, old[0])
            super().__setitem__(fh, value)
            self._paths.setdefault(value[0], {})[fh] = None

    def __delitem__(self, fh: int) -> None:
        with self._lock:
            self._unindex(fh, self[fh][0])
            super().__delitem__(fh)

    def pop(self, fh: int) -> tuple[str, Draft, int]:  # type: ignore[override]
        with self._lock:
            value = self[fh]
            del self[fh]
            return value

    def _unindex(self, fh: int, path: str) -> None:
        handles = self._paths.get(path, {})
        handles.pop(fh, None)
        if not handles:
            self._paths.pop(path, None)

    def on(self, path: str) -> tuple[Draft, int] | None:
        """The draft open (or parked) on ``path``, and its mode."""
        with self._lock:
            for fh in self._paths.get(path, ()):
                return self[fh][1], self[fh][2]
            return None

    def handles(self, path: str) -> list[int]:
        """The handles open (or parked) on ``path``."""
        with self._lock:
            return list(self._paths.get(path, ()))

    def follow(self, old: str, new: str) -> None:
        """Drafts follow their file: a rename moves those of ``old`` and of what is under it,
        an unlink ("" as ``new``) leaves those of ``old`` nameless, so that a later close
        never brings the old name back."""
        with self._lock:
            moved = [old] if old in self._paths else []
            if new:
                prefix = old.rstrip("/") + "/"
                moved += [p for p in self._paths if p.startswith(prefix)]
            for path in moved:
                for fh in list(self._paths.get(path, ())):
                    _was, draft, mode = self[fh]
                    self[fh] = (new + path[len(old):] if new else "", draft, mode)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._paths)
