"""What a vault is made of on its remote: the descriptor and the object names.

Every object a vault writes lives under one of a few prefixes (docs/format.md,
"Remote layout"); knowing them tells a vault from a wrong remote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from . import chain, sync
from . import format as fmt
from . import keys as keymod
from . import manifest as mf
from .errors import IntegrityError, UnsupportedFormat
from .keys import now_iso

DESCRIPTOR = "cloudguard.json"


def make_descriptor(padding: str) -> bytes:
    doc = {"cloudguard": "vault", "format": fmt.VERSION, "chunk_size": fmt.CHUNK_SIZE,
           "padding": padding, "created": now_iso(), "salt": os.urandom(16).hex()}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


class Descriptor(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``cloudguard.json`` as format.md lists it: every key present, no other, each typed."""

    cloudguard: Literal["vault"]
    format: int
    chunk_size: int
    padding: Literal["padme", "none"]
    created: str
    salt: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]


def parse_descriptor(raw: bytes, where: str) -> Descriptor:
    """The format is checked first, so a newer vault says "upgrade", not "tampered"."""
    doc = fmt.parse_json(raw, f"{where}: the vault descriptor {DESCRIPTOR}")
    if not isinstance(doc, dict) or doc.get("cloudguard") != "vault":
        raise IntegrityError(f"{where}: not a cloudguard vault descriptor")
    if doc.get("format") != fmt.VERSION:
        raise UnsupportedFormat(f"{where}: vault format {doc.get('format')!r} is unknown to this "
                              f"cloudguard (knows {fmt.VERSION}); upgrade cloudguard")
    try:
        desc = msgspec.convert(doc, Descriptor)
    except msgspec.ValidationError as exc:
        raise IntegrityError(f"{where}: the vault descriptor is malformed: {exc}") from exc
    if desc.chunk_size != fmt.CHUNK_SIZE:
        raise IntegrityError(f"{where}: the vault descriptor has altered parameters")
    return desc


def descriptor_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def listing_descriptor(fetch: Callable[[str], bytes], listing: dict[str, int], remote: str
                       ) -> bytes:
    if DESCRIPTOR not in listing:
        raise IntegrityError(f"{remote}: the vault descriptor {DESCRIPTOR} is missing (wrong "
                             "remote, or it was deleted)")
    return fetch(DESCRIPTOR)


# What a vault leaves on its remote. A remote with none of them was never a vault (a wrong name
# or path: exit 1); one with some but a missing or bad descriptor or chain is exit 3.
_VAULT_PREFIXES = (chain.KEYS_PREFIX, mf.PREFIX, sync.DATA_PREFIX, keymod.ENROLL_PREFIX)


def _holds_vault(listing: dict[str, int]) -> bool:
    return DESCRIPTOR in listing or any(n.startswith(_VAULT_PREFIXES) for n in listing)


_KNOWN = re.compile(r"^(cloudguard\.json|keys/[0-9]{8}-[0-9a-f]{64}(\.k)?|"
                    r"m/[0-9a-f]{16}-[0-9]{12}\.[ds]|"
                    r"data/[0-9a-f]{32}|enroll/[0-9a-f]{16})$")
