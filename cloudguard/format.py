"""Format v2: every byte cloudguard writes to a remote (normative spec: docs/format.md).

Pure functions over bytes and streams. Randomness enters only through ``os.urandom`` in
the ``new_*`` helpers, so tests can pass fixed values to the inner functions and compare exact
bytes against tests/format/vectors.json. Every authentication or parse failure raises the same
:class:`IntegrityError`; callers add the object or file name.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import FileChangedError, IntegrityError

VERSION = 2
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
FILE_ID_SIZE = 16

BLOB_MAGIC = b"CGB" + bytes([VERSION])
PACK_MAGIC = b"CGP" + bytes([VERSION])
SEGMENT_MAGIC = b"CGM" + bytes([VERSION])
BLOB_HEADER_SIZE = 4 + FILE_ID_SIZE + 32 + (16 + TAG_SIZE)
PACK_HEADER_SIZE = 4 + 16

_LENGTH_NONCE = b"\x01" + bytes(11)


def _hkdf(ikm: bytes, info: bytes, length: int = KEY_SIZE, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise IntegrityError()
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise IntegrityError() from exc


# --- size padding -------------------------------------------------------------------------


def padme(length: int) -> int:
    """Padmé: pads to a float-like grid so sizes leak O(log log L) bits, at most 12 % overhead."""
    if length < 2:
        return length
    exponent = length.bit_length() - 1
    mantissa_bits = exponent.bit_length()
    mask = (1 << (exponent - mantissa_bits)) - 1
    return (length + mask) & ~mask


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


def _nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return os.urandom(12)
    if len(nonce) != 12:
        raise ValueError("nonce must be 12 bytes")  # readers take exactly 12
    return nonce


# --- manifest segments --------------------------------------------------------------------

SEGMENT_HEADER_SIZE = 4 + 4 + 32 + 12
SIGNATURE_SIZE = 64
SEGMENT_MIN_PLAIN = 4096
SEGMENT_MIN_SIZE = SEGMENT_HEADER_SIZE + SEGMENT_MIN_PLAIN + TAG_SIZE + SIGNATURE_SIZE
MAX_SEGMENT_PLAIN = 256 * 1024 * 1024


def _segment_bound(vault_id: str, name: str, tail: bytes) -> bytes:
    """Label, vault and name before ``tail``: the associated data (tail = header) and the
    signed message (tail = header and ciphertext) share it, so neither moves to another
    vault or name."""
    return (b"cloudguard/v2/segment\x00" + vault_id.encode() + b"\x00" + name.encode()
            + b"\x00" + tail)


def seal_segment(kek: bytes, head_pos: int, head_id: str, vault_id: str, name: str,
                 payload: dict[str, Any] | Iterable[bytes], signer: Ed25519PrivateKey,
                 nonce: bytes | None = None) -> bytes:
    """Compressed, padded JSON under the KEK of the writer's head commit, signed by the writer
    over name, header and ciphertext: a reader checks who wrote it before decrypting.

    ``payload`` is a dict, or its compact, key-sorted JSON text in pieces: a snapshot of a big
    vault is compressed as it is written, never held whole as objects or text."""
    pieces = ([json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()]
              if isinstance(payload, dict) else payload)
    nonce = _nonce(nonce)
    header = SEGMENT_MAGIC + struct.pack(">I", head_pos) + bytes.fromhex(head_id) + nonce
    if len(header) != SEGMENT_HEADER_SIZE:
        raise ValueError("head id must be 32 bytes")
    packer = zlib.compressobj(6)
    body = b"".join([*(packer.compress(piece) for piece in pieces), packer.flush()])
    plain = struct.pack(">I", len(body)) + body
    plain += bytes(padme(max(SEGMENT_MIN_PLAIN, len(plain))) - len(plain))
    key = _hkdf(kek, b"cloudguard/v2/manifest")
    sealed = header + AESGCM(key).encrypt(nonce, plain, _segment_bound(vault_id, name, header))
    return sealed + signer.sign(_segment_bound(vault_id, name, sealed))


def segment_head(blob: bytes) -> tuple[int, str]:
    """The writer's head (position, commit id): readable before any key, signed."""
    if len(blob) < SEGMENT_MIN_SIZE or blob[:4] != SEGMENT_MAGIC:
        raise IntegrityError()
    return int(struct.unpack(">I", blob[4:8])[0]), blob[8:40].hex()


def verify_segment(blob: bytes, vault_id: str, name: str, signer_pub: bytes) -> None:
    segment_head(blob)
    try:
        Ed25519PublicKey.from_public_bytes(signer_pub).verify(
            blob[-SIGNATURE_SIZE:], _segment_bound(vault_id, name, blob[:-SIGNATURE_SIZE]))
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError() from exc


def open_segment(kek: bytes, vault_id: str, name: str, blob: bytes) -> dict[str, Any]:
    """Only after :func:`verify_segment`."""
    segment_head(blob)
    header, nonce = blob[:SEGMENT_HEADER_SIZE], blob[40:52]
    key = _hkdf(kek, b"cloudguard/v2/manifest")
    try:
        plain = AESGCM(key).decrypt(nonce, blob[SEGMENT_HEADER_SIZE:-SIGNATURE_SIZE],
                                    _segment_bound(vault_id, name, header))
        (length,) = struct.unpack(">I", plain[:4])
        if 4 + length > len(plain) or any(plain[4 + length:]):
            raise IntegrityError()
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(plain[4:4 + length], MAX_SEGMENT_PLAIN)
        # exactly one complete zlib stream: not cut short (no Adler-32 check), nothing after it
        if decompressor.unconsumed_tail or not decompressor.eof or decompressor.unused_data:
            raise IntegrityError()
        payload = parse_json(raw, name)
    except (InvalidTag, zlib.error, ValueError, struct.error) as exc:
        raise IntegrityError() from exc
    if not isinstance(payload, dict):
        raise IntegrityError()
    return payload


# --- key slots ----------------------------------------------------------------------------


def public_bytes(key: X25519PrivateKey | X25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _slot_aad(ctx: bytes, rid: str) -> bytes:
    return b"cloudguard/v2/slot\x00" + ctx + b"\x00" + rid.encode()


def wrap_to_recipient(pub: bytes, secret: bytes, ctx: bytes, rid: str,
                      ephemeral: X25519PrivateKey | None = None) -> dict[str, str]:
    """X25519 + HKDF + AES-GCM, as age does; a fresh ephemeral key makes a zero nonce safe.
    Anyone can wrap to a public key: a slot is trusted only through a signed commit."""
    eph = ephemeral or X25519PrivateKey.generate()
    eph_pub = public_bytes(eph)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(pub))
    key = _hkdf(shared, b"cloudguard/v2/slot", salt=eph_pub + pub)
    ct = AESGCM(key).encrypt(bytes(12), secret, _slot_aad(ctx, rid))
    return {"epk": b64(eph_pub), "ct": b64(ct)}


def unwrap_from_slot(priv: X25519PrivateKey, slot: object, ctx: bytes, rid: str) -> bytes:
    try:
        if not isinstance(slot, dict):
            raise IntegrityError()
        eph_pub = unb64(slot["epk"])
        pub = public_bytes(priv)
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        if shared == bytes(32):
            raise IntegrityError()
        key = _hkdf(shared, b"cloudguard/v2/slot", salt=eph_pub + pub)
        return AESGCM(key).decrypt(bytes(12), unb64(slot["ct"]), _slot_aad(ctx, rid))
    except (InvalidTag, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError() from exc


def seal_json(key_material: bytes, info: bytes, aad: bytes, payload: dict[str, Any],
              nonce: bytes | None = None, pad: bool = False) -> str:
    """``pad`` appends spaces (valid JSON whitespace) up to Padme(max(256, length)), so a
    sealed member list does not tell the length of its names."""
    nonce = _nonce(nonce)
    key = _hkdf(key_material, info)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if pad:
        body += b" " * (padme(max(256, len(body))) - len(body))
    return b64(nonce + AESGCM(key).encrypt(nonce, body, aad))


def open_json(key_material: bytes, info: bytes, aad: bytes, sealed: object) -> dict[str, Any]:
    raw = unb64(sealed)
    if len(raw) < 12 + TAG_SIZE:
        raise IntegrityError()
    key = _hkdf(key_material, info)
    try:
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], aad)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError() from exc
    payload = parse_json(plain, "a sealed document")
    if not isinstance(payload, dict):
        raise IntegrityError()
    return payload


def kek_commit(kek: bytes) -> str:
    """Names a KEK in public (256 bits): a KEK is used only under a verified commitment."""
    return _hkdf(kek, b"cloudguard/v2/kek-commit", 32).hex()


# --- passphrase-wrapped secrets (device key file, recovery kit) ---------------------------

KIT_LOG_N = 18
MAX_LOG_N = 20
SCRYPT_R = 8
SCRYPT_P = 1


def _scrypt(passphrase: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    # r and p are pinned to what seal_with_passphrase writes: a tampered document must not be
    # able to demand more than the 2**MAX_LOG_N * 1 KiB that an honest one can.
    if not (1 <= log_n <= MAX_LOG_N and r == SCRYPT_R and p == SCRYPT_P and len(salt) >= 16):
        raise IntegrityError()
    return Scrypt(salt=salt, length=32, n=1 << log_n, r=r, p=p).derive(passphrase.encode())


def _kit_aad(meta: dict[str, Any]) -> bytes:
    return b"cloudguard/v2/kit" + json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def seal_with_passphrase(secret: bytes, passphrase: str, meta: dict[str, Any],
                         log_n: int = KIT_LOG_N, salt: bytes | None = None,
                         nonce: bytes | None = None) -> dict[str, Any]:
    """scrypt (r=8, p=1) then AES-GCM; every metadata field is bound as associated data."""
    salt = salt if salt is not None else os.urandom(16)
    nonce = nonce if nonce is not None else os.urandom(12)
    doc = dict(meta)
    doc["kdf"] = {"alg": "scrypt", "log_n": log_n, "r": SCRYPT_R, "p": SCRYPT_P,
                  "salt": b64(salt)}
    key = _scrypt(passphrase, salt, log_n, SCRYPT_R, SCRYPT_P)
    doc["nonce"] = b64(nonce)
    doc["ct"] = b64(AESGCM(key).encrypt(nonce, secret, _kit_aad(doc)))
    return doc


def open_with_passphrase(doc: dict[str, Any], passphrase: str) -> bytes:
    """Raises IntegrityError for a wrong passphrase too: the two cannot be told apart."""
    try:
        meta = {k: v for k, v in doc.items() if k != "ct"}
        kdf = doc["kdf"]
        log_n, r, p = kdf["log_n"], kdf["r"], kdf["p"]
        if kdf["alg"] != "scrypt" or not all(type(v) is int for v in (log_n, r, p)):
            raise IntegrityError()
        key = _scrypt(passphrase, unb64(kdf["salt"]), log_n, r, p)
        return AESGCM(key).decrypt(unb64(doc["nonce"]), unb64(doc["ct"]), _kit_aad(meta))
    except (InvalidTag, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise IntegrityError() from exc


def _code(data: bytes) -> str:
    text = base64.b32encode(data[:15]).decode()
    return "-".join(text[i:i + 4] for i in range(0, 24, 4))


def fingerprint(request_body: bytes) -> str:
    """120 bits over the whole enrolment request (vault, id, name, both keys): compared in
    full, so neither a forged key nor a changed id or name can match."""
    return _code(hashlib.sha256(b"cloudguard/v2/fp\x00" + request_body).digest())


def vault_code(vault_id: str) -> str:
    """What a new device compares in full with the approving device's: 120 bits of the vault
    id, so a fake vault built by the provider cannot match."""
    return _code(bytes.fromhex(vault_id))


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


# --- JSON someone else wrote -----------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"the key {key[:40]!r} appears twice")
            seen.add(key)
    return doc


def parse_json(raw: bytes | str, what: str) -> Any:
    """Remote objects and kits: anything but plain JSON is an integrity failure naming ``what``.

    Deep nesting makes the parser raise RecursionError (a traceback, not exit 3); a key given
    twice, or UTF-16 where we write UTF-8, means two readers could see two different
    documents, so both are refused too.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError as exc:
        raise IntegrityError(f"{what} is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # also UnicodeDecodeError and the duplicate keys above
        raise IntegrityError(f"{what} is not valid JSON: {exc}") from exc
