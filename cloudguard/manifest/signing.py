"""Entry signatures: the writer of a dot signs what its version *is*, so a snapshot that
carries other writers' entries (after compaction deleted their deltas) cannot change them
(format.md, "Entry signatures"; review round 3, R3).

Only content is signed; where the blob lives (a repack, a re-encryption, a rotation moves or
re-wraps it without the dot's writer) is not, and is checked against the signed ``h`` on read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .. import format as fmt
from ..errors import IntegrityError
from .entry import Entry

LABEL = b"cloudguard/v2/entry"
CONTENT_FIELDS = ("t", "s", "m", "x", "h", "l", "lc", "wb", "pt", "cs")
SIG_FIELD = "sg"


def _field(key: str, value: object) -> bytes:
    if type(value) is int:
        return key.encode() + b"\x00\x01" + struct.pack(">q", value)
    if type(value) is str:
        raw = value.encode()
        return key.encode() + b"\x00\x02" + struct.pack(">I", len(raw)) + raw
    raise IntegrityError("manifest entry is malformed")


def content(entry: Entry) -> tuple[object, ...]:
    """What a version is, for comparing two copies of one dot."""
    return tuple(entry.get(k) for k in CONTENT_FIELDS)


def message(vault_id: str, path: str, dot: str, entry: Entry) -> bytes:
    fields = cast(dict[str, Any], entry)  # by name, in CONTENT_FIELDS' order
    body = b"".join(_field(k, fields[k]) for k in CONTENT_FIELDS if k in fields)
    return (LABEL + b"\x00" + vault_id.encode() + b"\x00" + path.encode()
            + b"\x00" + dot.encode() + b"\x00" + body)


def sign(key: Ed25519PrivateKey, vault_id: str, path: str, dot: str, entry: Entry) -> None:
    """Set ``entry``'s signature (in place: the writer's own state keeps the signed entry)."""
    entry["sg"] = fmt.b64(key.sign(message(vault_id, path, dot, entry)))


class Verifier:
    """Checks entries under the signing key of their dot's device (member or removed member
    of the verified chain); keys are parsed once per device."""

    def __init__(self, vault_id: str, key_of: Callable[[str], bytes | None]) -> None:
        self.vault_id = vault_id
        self._key_of = key_of
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.checked = 0  # how many signatures were verified (tests, benchmarks)

    def _key(self, device: str) -> Ed25519PublicKey:
        key = self._keys.get(device)
        if key is None:
            raw = self._key_of(device)
            if raw is None:
                raise IntegrityError(f"manifest entry of {device}, who was never a member")
            key = self._keys[device] = Ed25519PublicKey.from_public_bytes(raw)
        return key

    def __call__(self, path: str, dot: str, entry: Entry) -> None:
        raw = entry.get(SIG_FIELD)
        try:
            sig = fmt.unb64(raw)
        except IntegrityError:
            sig = b""
        if len(sig) != 64:
            raise IntegrityError(f"manifest entry {dot} has no valid signature")
        try:
            self._key(dot.partition(":")[0]).verify(
                sig, message(self.vault_id, path, dot, entry))
        except (InvalidSignature, UnicodeEncodeError) as exc:
            raise IntegrityError(f"manifest entry {dot} is not signed by its writer: a "
                                 "segment changed another device's version") from exc
        self.checked += 1
