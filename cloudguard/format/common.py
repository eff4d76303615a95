"""What the blob, segment and slot modules share: sizes, HKDF, base64, Padmé, nonces, and the
strict JSON reader for documents someone else wrote."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import IntegrityError

__all__ = [
    "CHUNK_SIZE", "FILE_ID_SIZE", "KEY_SIZE", "TAG_SIZE", "VERSION", "b64", "padme",
    "parse_json", "unb64",
]

VERSION = 2
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
FILE_ID_SIZE = 16


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


def _nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return os.urandom(12)
    if len(nonce) != 12:
        raise ValueError("nonce must be 12 bytes")  # readers take exactly 12
    return nonce


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
