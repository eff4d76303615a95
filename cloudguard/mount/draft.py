"""A file open for writing in the mount: its changed chunks, never plaintext on disk.

Writes land in 64 KiB chunks. A chunk that was written is kept in a temp file of this device,
sealed with AES-GCM under a key that lives only in this object's memory (and a fresh nonce per
write), so memory stays flat for any file size and the disk only ever holds ciphertext that
no one can open once the process is gone. Chunks never written come from the version the file
was opened on (a ranged reader). On release the whole new content streams, chunk by chunk,
into the engine's :func:`~cloudguard.ops.write.stage_version`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..reader import FileReader

CHUNK = 64 * 1024
_SLOT = 12 + CHUNK + 16  # nonce, sealed chunk (padded to a full chunk), tag


class Draft:
    def __init__(self, base: FileReader | None, size: int, spool: Path) -> None:
        self.base = base
        self.size = size
        self.base_size = size
        self._aead = AESGCM(AESGCM.generate_key(256))
        fd, name = tempfile.mkstemp(prefix="draft-", dir=spool)
        os.unlink(name)  # nothing to clean up after a crash: the file has no name
        self._fd = fd
        self._written: dict[int, int] = {}  # chunk index -> bytes of it that are real
        self.dirty = False
        self.refs = 1  # open handles sharing this draft (every writer of one file sees one)
        self.staged = 0  # versions staged from it (the mount's committer compares counts)
        # its content's time: stable between writes (an editor compares it before saving),
        # and the time its version is committed with
        self.mtime = time.time_ns()

    def _chunk(self, index: int) -> bytes:
        """The current plaintext of chunk ``index`` (zero-filled past what exists)."""
        if index in self._written:
            slot = os.pread(self._fd, _SLOT, index * _SLOT)
            plain = self._aead.decrypt(slot[:12], slot[12:], index.to_bytes(8, "big"))
            return plain[:self._written[index]]
        start = index * CHUNK
        if self.base is None or start >= self.base_size:
            return b""
        return self.base.read(start, min(CHUNK, self.base_size - start))

    def _put(self, index: int, plain: bytes) -> None:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain.ljust(CHUNK, b"\0"), index.to_bytes(8, "big"))
        os.pwrite(self._fd, nonce + sealed, index * _SLOT)
        self._written[index] = len(plain)

    def read(self, offset: int, n: int) -> bytes:
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
