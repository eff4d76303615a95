"""A staged version's DEK, also wrapped under a key only this device has (journal version 2,
docs/design.md "Local state").

A staged DEK is wrapped under the head KEK of its stage (``k``, ``g``), and a re-encryption
run on another device while the mount was stopped ends that key generation: no one can
unwrap ``k`` any more, and the version the user saved would be lost. The journal row
therefore also holds ``lk``: the DEK wrapped under a key derived (HKDF, a label of its own)
from this device's own member secret, which any later commit unwraps and re-wraps under the
current head KEK (ops/write._rewrap). ``lk`` is local state: it is stripped before a version
is committed, so not a byte on the remote changes.
"""

from __future__ import annotations

import os
from typing import Final, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import format as fmt
from ..chain import Secret
from ..format.common import _hkdf
from ..manifest.entry import Entry

FIELD: Final = "lk"  # a journal row's local wrap (version 2); never committed
_LABEL = b"cloudguard/v2/staged-local-wrap"
_AAD = b"cloudguard/v2/staged-dek"


def key(me: Secret, vault_id: str, device: str) -> AESGCM:
    """This device's local wrapping key for one vault's journal: from its member secret (the
    device key keys.py unlocks), bound to the vault and the device id."""
    salt = f"{vault_id}\0{device}".encode()
    return AESGCM(_hkdf(me.raw(), _LABEL, salt=salt))


def wrap(local: AESGCM, dek: bytes, file_id: bytes) -> str:
    """``dek`` sealed under the local key, bound to the blob's file id."""
    nonce = os.urandom(12)
    return fmt.b64(nonce + local.encrypt(nonce, dek, _AAD + file_id))


def unwrap(local: AESGCM, entry: Entry) -> tuple[bytes, bytes] | None:
    """(DEK, file id) from a row's local wrap; None when it has none (a version 1 row) or this
    device's key does not open it (the device key changed since it was staged)."""
    sealed = entry.get(FIELD)
    if not isinstance(sealed, str):
        return None
    try:
        file_id = bytes.fromhex(str(entry["i"]))
        raw = fmt.unb64(sealed)
        dek = local.decrypt(raw[:12], raw[12:], _AAD + file_id)
    except (InvalidTag, KeyError, TypeError, ValueError):
        return None
    return (dek, file_id) if len(dek) == 32 else None


def strip(entry: Entry) -> Entry:
    """The entry as it is committed: without its local wrap."""
    return cast(Entry, {k: v for k, v in entry.items() if k != FIELD}) if FIELD in entry else entry
