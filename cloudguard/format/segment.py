"""Manifest segments: compressed, padded JSON sealed under a KEK and signed by its writer, who
is checked before anything is decrypted (docs/format.md, "Manifest segments")."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError
from .common import TAG_SIZE, VERSION, _hkdf, _nonce, padme, parse_json

__all__ = [
    "MAX_SEGMENT_PLAIN", "SEGMENT_HEADER_SIZE", "SEGMENT_MAGIC", "SEGMENT_MIN_PLAIN",
    "SEGMENT_MIN_SIZE", "SIGNATURE_SIZE", "open_segment", "seal_segment", "segment_head",
    "verify_segment",
]

SEGMENT_MAGIC = b"CGM" + bytes([VERSION])

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
