"""Content blobs and packs: chunked AES-GCM with the length sealed up front, random access to
single chunks, DEK wrapping, and the stream limit that keeps a blob from reading into its
neighbour in a pack (docs/format.md, "Content blobs")."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import FileChangedError, IntegrityError
from .common import CHUNK_SIZE, FILE_ID_SIZE, KEY_SIZE, TAG_SIZE, VERSION, _hkdf, _nonce, padme

__all__ = [
    "BLOB_HEADER_SIZE", "BLOB_MAGIC", "DEK_WRAP_SIZE", "PACK_HEADER_SIZE", "PACK_MAGIC",
    "BlobHeader", "BlobInfo", "BlobSealer", "OpenBlob", "Reader", "blob_size", "chunk_count",
    "decrypt_blob", "decrypt_blob_iter", "decrypt_chunk", "encrypt_blob", "expect_end",
    "new_dek", "new_file_id", "new_object_id", "open_blob", "open_blob_header", "pack_header",
    "padded_length", "read_blob_stream", "read_exact", "unwrap_dek", "wrap_dek",
]

BLOB_MAGIC = b"CGB" + bytes([VERSION])
PACK_MAGIC = b"CGP" + bytes([VERSION])
BLOB_HEADER_SIZE = 4 + FILE_ID_SIZE + 32 + (16 + TAG_SIZE)
PACK_HEADER_SIZE = 4 + 16

_LENGTH_NONCE = b"\x01" + bytes(11)


def padded_length(length: int, padding: bool) -> int:
    return padme(length) if padding else length


def chunk_count(padded: int) -> int:
    return max(1, -(-padded // CHUNK_SIZE))


def blob_size(length: int, padding: bool) -> int:
    padded = padded_length(length, padding)
    return BLOB_HEADER_SIZE + padded + TAG_SIZE * chunk_count(padded)



# --- content blobs ------------------------------------------------------------------------


def _blob_keys(dek: bytes, file_id: bytes) -> tuple[bytes, bytes]:
    okm = _hkdf(dek, b"cloudguard/v2/blob", 64, salt=file_id)
    return okm[:32], okm[32:]


def _chunk_nonce(index: int, final: bool) -> bytes:
    return b"\x00" + index.to_bytes(10, "big") + (b"\x01" if final else b"\x00")


def _chunk_aad(file_id: bytes, index: int, final: bool) -> bytes:
    return b"cloudguard/v2/chunk" + bytes([VERSION]) + file_id + struct.pack(">Q?", index, final)


class Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class BlobInfo:
    """What the manifest records about one encrypted blob."""

    size: int
    sha256: str
    blob_len: int


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class BlobSealer:
    """One blob's keys: its header and any chunk, sealed or opened on its own (encrypt_blob
    streams; a mount's draft seals chunks as writes come). The nonce comes from (index, final)
    alone, so a caller must seal each pair once only under one DEK and file id."""

    def __init__(self, dek: bytes, file_id: bytes) -> None:
        if len(file_id) != FILE_ID_SIZE:
            raise ValueError("file id must be 16 bytes")  # else the header would not parse back
        key, self.commitment = _blob_keys(dek, file_id)
        self.file_id, self.aead = file_id, AESGCM(key)

    def header(self, size: int, padded: int) -> bytes:
        return BLOB_MAGIC + self.file_id + self.commitment + self.aead.encrypt(
            _LENGTH_NONCE, struct.pack(">QQ", size, padded),
            b"cloudguard/v2/length" + bytes([VERSION]) + self.file_id)

    def seal(self, index: int, data: bytes, final: bool) -> bytes:
        return self.aead.encrypt(_chunk_nonce(index, final), data,
                                 _chunk_aad(self.file_id, index, final))

    def open(self, index: int, sealed: bytes, final: bool) -> bytes:
        try:
            return self.aead.decrypt(_chunk_nonce(index, final), sealed,
                                     _chunk_aad(self.file_id, index, final))
        except InvalidTag as exc:
            raise IntegrityError() from exc


def encrypt_blob(
    src: Reader, dst: _Writer, dek: bytes, file_id: bytes, size: int, padding: bool = True,
    digest: _Hash | None = None,
) -> BlobInfo:
    """Encrypt exactly ``size`` bytes from ``src``; raises FileChangedError if it has more or less.

    The length is sealed in the header up front so the decryptor can strip padding while
    streaming, without holding anything back. ``digest`` (SHA-256 of the plaintext) may be
    computed elsewhere, e.g. on another thread for a big file.
    """
    sealer = BlobSealer(dek, file_id)
    padded = padded_length(size, padding)
    written = dst.write(sealer.header(size, padded))
    if digest is None:
        digest = hashlib.sha256()
    total = chunk_count(padded)
    remaining = size
    for index in range(total):
        want = min(CHUNK_SIZE, padded - index * CHUNK_SIZE)
        take = min(want, remaining)
        data = read_exact(src, take) if take else b""
        if len(data) != take:
            raise FileChangedError("file shrank while it was read")
        digest.update(data)
        remaining -= take
        if take < want:
            data += bytes(want - take)
        written += dst.write(sealer.seal(index, data, index == total - 1))
    if src.read(1):
        raise FileChangedError("file grew while it was read")
    return BlobInfo(size=size, sha256=digest.hexdigest(), blob_len=written)


def read_exact(src: Reader, count: int) -> bytes:
    """``count`` bytes, or fewer only at the end of ``src`` (a pipe returns short reads)."""
    parts: list[bytes] = []
    while count > 0:
        part = src.read(count)
        if not part:
            break
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


@dataclass(frozen=True)
class BlobHeader:
    file_id: bytes
    size: int
    padded: int


def open_blob_header(header: bytes, dek: bytes, expected_file_id: bytes | None) -> BlobHeader:
    if len(header) != BLOB_HEADER_SIZE or header[:4] != BLOB_MAGIC:
        raise IntegrityError()
    file_id = header[4:20]
    if expected_file_id is not None and not hmac.compare_digest(file_id, expected_file_id):
        raise IntegrityError()
    sealer = BlobSealer(dek, file_id)
    if not hmac.compare_digest(header[20:52], sealer.commitment):
        raise IntegrityError()
    try:
        plain = sealer.aead.decrypt(
            _LENGTH_NONCE, header[52:], b"cloudguard/v2/length" + bytes([VERSION]) + file_id
        )
    except InvalidTag as exc:
        raise IntegrityError() from exc
    size, padded = struct.unpack(">QQ", plain)
    if size > padded:
        raise IntegrityError()
    return BlobHeader(file_id=file_id, size=size, padded=padded)


def decrypt_blob_iter(src: Reader, dek: bytes, expected_file_id: bytes | None) -> Iterator[bytes]:
    """Yield authenticated plaintext pieces; raises IntegrityError on any tampering.

    Consumes exactly one blob from ``src``, so blobs can be read back to back from a pack.
    The caller must not act on the plaintext as final until the iterator is exhausted: only then
    is the final-chunk flag (truncation) checked.
    """
    header = open_blob_header(read_exact(src, BLOB_HEADER_SIZE), dek, expected_file_id)
    sealer = BlobSealer(dek, header.file_id)
    total = chunk_count(header.padded)
    remaining = header.size
    for index in range(total):
        plain_len = min(CHUNK_SIZE, header.padded - index * CHUNK_SIZE)
        sealed = read_exact(src, plain_len + TAG_SIZE)
        if len(sealed) != plain_len + TAG_SIZE:
            raise IntegrityError()
        data = sealer.open(index, sealed, index == total - 1)
        keep = min(len(data), remaining)
        remaining -= keep
        if keep:
            yield data[:keep] if keep < len(data) else data


@dataclass(frozen=True)
class OpenBlob:
    """A blob whose header was authenticated: any one chunk can now be read and checked on its
    own (random access for ranged reads). Truncation cannot hide: the chunk count comes from
    the sealed length, and only the last index is opened with the final flag."""

    header: BlobHeader
    sealer: BlobSealer

    @property
    def chunks(self) -> int:
        return chunk_count(self.header.padded)

    @property
    def blob_len(self) -> int:
        return BLOB_HEADER_SIZE + self.header.padded + TAG_SIZE * self.chunks

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset in the blob, sealed length) of chunk ``index``."""
        if not 0 <= index < self.chunks:
            raise ValueError("chunk index out of range")
        plain = min(CHUNK_SIZE, self.header.padded - index * CHUNK_SIZE)
        return BLOB_HEADER_SIZE + index * (CHUNK_SIZE + TAG_SIZE), plain + TAG_SIZE


def open_blob(header: bytes, dek: bytes, expected_file_id: bytes | None) -> OpenBlob:
    opened = open_blob_header(header, dek, expected_file_id)
    return OpenBlob(opened, BlobSealer(dek, opened.file_id))


def decrypt_chunk(blob: OpenBlob, index: int, sealed: bytes) -> bytes:
    """The plaintext of chunk ``index`` with the padding cut off (b"" for a chunk that is all
    padding); IntegrityError if it is not that chunk of that blob."""
    _offset, length = blob.chunk_span(index)
    if len(sealed) != length:
        raise IntegrityError()
    data = blob.sealer.open(index, sealed, index == blob.chunks - 1)
    keep = max(0, min(len(data), blob.header.size - index * CHUNK_SIZE))
    return data[:keep] if keep < len(data) else data


def decrypt_blob(src: Reader, dst: _Writer, dek: bytes, expected_file_id: bytes | None,
                 expected_sha256: str | None = None) -> int:
    digest = hashlib.sha256()
    count = 0
    for piece in decrypt_blob_iter(src, dek, expected_file_id):
        digest.update(piece)
        dst.write(piece)
        count += len(piece)
    if expected_sha256 is not None and not hmac.compare_digest(
            digest.hexdigest().encode(), str(expected_sha256).encode("utf-8", "surrogatepass")):
        raise IntegrityError()
    return count


def new_dek() -> bytes:
    return os.urandom(KEY_SIZE)


def new_file_id() -> bytes:
    return os.urandom(FILE_ID_SIZE)


def new_object_id() -> str:
    return os.urandom(16).hex()


def pack_header(pack_id: bytes) -> bytes:
    return PACK_MAGIC + pack_id


# --- DEK wrapping -------------------------------------------------------------------------


DEK_WRAP_SIZE = 12 + 32 + TAG_SIZE  # nonce, DEK, tag


@functools.lru_cache(maxsize=64)
def _dek_wrapper(kek: bytes) -> AESGCM:
    """Derived once per KEK: a rotation re-wraps every DEK of the vault."""
    return AESGCM(_hkdf(kek, b"cloudguard/v2/dek-wrap"))


def _dek_aad(file_id: bytes) -> bytes:
    return b"cloudguard/v2/dek" + bytes([VERSION]) + file_id


def wrap_dek(kek: bytes, dek: bytes, file_id: bytes, nonce: bytes | None = None) -> bytes:
    """AES-GCM under a KEK-derived key, bound to the blob's file id; re-wrapping never touches
    content. Not AES-KW: cryptography's AES-KW runs in Python (~75 us a call), which was
    most of the CPU of a push of 2,000 small files and of a rotation of a big vault."""
    if len(dek) != 32 or len(file_id) != FILE_ID_SIZE:
        raise ValueError("a DEK is 32 bytes and a file id 16")
    nonce = _nonce(nonce)
    return nonce + _dek_wrapper(kek).encrypt(nonce, dek, _dek_aad(file_id))


def unwrap_dek(kek: bytes, wrapped: bytes, file_id: bytes) -> bytes:
    if len(wrapped) != DEK_WRAP_SIZE or len(file_id) != FILE_ID_SIZE:
        raise IntegrityError()
    try:
        return _dek_wrapper(kek).decrypt(wrapped[:12], wrapped[12:], _dek_aad(file_id))
    except InvalidTag as exc:
        raise IntegrityError() from exc


def expect_end(reader: Reader) -> None:
    """After a blob: the stream (usually a read_blob_stream) must hold nothing more.

    decrypt_blob_iter consumes exactly the blob its authenticated header describes, so bytes
    appended after it (or a stored length that is longer than the blob) show only here. For a
    read_blob_stream this also fails when the source ended before the stated length.
    """
    if reader.read(1) or (isinstance(reader, _Limited) and reader.remaining):
        raise IntegrityError()


def read_blob_stream(src: Reader, length: int) -> Reader:
    """Limit a stream to one blob, so a blob cannot read into its neighbour in a pack."""
    return _Limited(src, length)


class _Limited:
    def __init__(self, src: Reader, length: int) -> None:
        self._src = src
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._src.read(size)
        self._left -= len(data)
        return data

    @property
    def remaining(self) -> int:
        """Bytes of the stated length not delivered yet (also if the source ended early)."""
        return max(self._left, 0)
