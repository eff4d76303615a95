#!/usr/bin/env python3
"""cloudguard-decrypt: restore a cloudguard vault without cloudguard.

This is a single, self-contained reader of cloudguard format version 2, written from the
normative specification docs/format.md and nothing else. It needs Python 3.11+ and the
``cryptography`` package. It exists for two reasons:

* an escape hatch: if cloudguard ever disappears, a copy of the remote folder, a recovery kit
  and its passphrase are enough to get every file back;
* an independent verifier: a second implementation that agrees with the first on real vaults
  is evidence that the specification is complete and correct.

Usage::

    python3 cloudguard-decrypt.py --remote-dir COPY_OF_REMOTE --kit KIT.json --out OUTPUT \\
        [--passphrase-env VAR] [--history DIR]

COPY_OF_REMOTE is a local copy of the remote folder (for example ``rclone copy remote:path
COPY``). The passphrase of the kit is read from the environment variable VAR (default
CLOUDGUARD_KIT_PASSPHRASE, as for the CLI) or, when that is unset or empty, asked for on the
terminal. OUTPUT must be an empty or missing folder. With --history, every earlier version
that can still be read (the vault's history, and the late writes of removed members, which
the current tree leaves out) is written to DIR, also an empty or missing folder, as
DIR/PATH/STAMP DEVICE-SEQ.EXT; a version whose object was collected or re-encrypted, or that
fails a check, is left out with a warning.

Exit codes: 0 everything was restored; 3 an integrity failure (tampered, truncated, swapped or
missing data; the message names the file or object); 1 any other error (also bad arguments).
On any failure nothing is left in OUTPUT: everything is first decrypted and verified in a
private staging folder inside OUTPUT and only moved into place once all of it has passed.

The sections below follow docs/format.md; section names are quoted in the comments so an
auditor can read the two side by side. Where this reader checks more than the specification
asks, the comment says so ("extra check"). A few details are not spelt out in format.md; this
reader follows cloudguard's code for them and says so: the exact ordering and naming rules of
conflict resolution.

Trust: the kit names the vault id, which is the id of the genesis commit. The reader verifies
the signed membership chain from the genesis forward, requires the commit that added the kit
to be in it and the kit to be a member of the head, opens the key objects the kit holds slots
in, and accepts a manifest segment only if it is signed by its writer, a device (never a
kit), that was a member at the commit the segment names ("Writer rules"). Commits signed by a
member on a branch its removal does not build on are void: their membership changes are
ignored, but a segment written under one is still read by the writer rules ("Void commits").
Only a genesis or an add brings a member in. A removed member's segments count only if its
removal vouches for them (the cutoff hash, then back along "prev"); its other segments are
skipped, and its writes past the cutoff are left out of honest snapshots and dependencies.
Its segments past the cutoff are read for one thing only: a file version whose object is gone
takes a place they state, once the blob there decrypts to the version's signed hash (a
re-encryption raced by its writer's removal, "Moves").
Removals win: a removal that another removal attacks (members removing each other
concurrently) is void but still takes its target out, and its cutoff clamps like any other;
the versions a clamp leaves out are in the vault's history, which --history writes out. A
commit whose parent is missing from the copy is skipped, as cloudguard defers it; so is a
segment written under a commit that is not verified. Every such skip is reported as a
warning on stderr.

Limits: a stand-alone reader has no memory of what it saw before, so it cannot tell a copy
of a rolled-back remote (or one whose newest commits after the kit's anchor, or newest manifest
segments, were deleted) from an honest older one ("Reading the manifest", step 4). A
segment missing from the middle of a device's sequence is detected.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROG = "cloudguard-decrypt"

# --- errors ------------------------------------------------------------------------------
#
# "Errors": every parse or authentication failure in the format layer is the same anonymous
# error (BadData here); the caller adds the name of the file or object and turns it into an
# IntegrityFailure (exit 3). Everything else is a Failure (exit 1).


class BadData(Exception):
    """A format-layer check failed; deliberately says nothing about which one."""


class Failure(Exception):
    """An error the user must act on; exit code 1."""

    exit_code = 1


class IntegrityFailure(Failure):
    """Tampered, truncated, swapped or missing data; exit code 3."""

    exit_code = 3


def q(text: str) -> str:
    """Quote a name for a one-line message (newlines and other control characters escaped)."""
    return repr(text)


# --- notation and primitives -------------------------------------------------------------

VERSION = 2
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
FILE_ID_SIZE = 16
CHUNK_SIZE = 65536  # "Chunk": 64 KiB of padded plaintext


def hkdf(ikm: bytes, info: bytes, length: int = KEY_SIZE, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869); salt None is the RFC default (32 zero bytes)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def gcm_open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decryption; ``sealed`` is ciphertext followed by the 16-byte tag."""
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE or len(sealed) < TAG_SIZE:
        raise BadData()
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag as exc:
        raise BadData() from exc


_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def unb64(value: object) -> bytes:
    """Strict standard base64: only the alphabet and correct padding (RFC 4648 section 4)."""
    if not isinstance(value, str) or not _B64.fullmatch(value) or len(value) % 4:
        raise BadData()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadData() from exc


def canonical_json(value: Any) -> bytes:
    """JSON(v): no whitespace, keys sorted, non-ASCII escaped (ensure_ascii), UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def is_int(value: object) -> bool:
    """A JSON integer; Python's bool is an int subclass and is excluded."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{length}}}", value) is not None


# --- content blobs -----------------------------------------------------------------------
#
# BLOB = MAGIC || FILE_ID || COMMIT || LENGTH_CT || CHUNK_0 || ... || CHUNK_{n-1}

BLOB_MAGIC = b"CGB" + bytes([VERSION])
BLOB_HEADER_SIZE = 4 + FILE_ID_SIZE + 32 + (16 + TAG_SIZE)  # 84 bytes
LENGTH_NONCE = b"\x01" + bytes(11)


class LimitedReader:
    """read_blob_stream(stream, length): never reads past the recorded blob length."""

    def __init__(self, src: BinaryIO, length: int) -> None:
        self.src = src
        self.left = length

    def read_exact(self, count: int) -> bytes:
        """Up to ``count`` bytes; fewer only when the limit or the stream ends first."""
        parts: list[bytes] = []
        while count > 0 and self.left > 0:
            part = self.src.read(min(count, self.left))
            if not part:
                break
            parts.append(part)
            count -= len(part)
            self.left -= len(part)
        return b"".join(parts)

    def at_end(self) -> bool:
        """expect_end: the whole recorded length was delivered and nothing remains."""
        return self.left == 0


def chunk_nonce(index: int, final: bool) -> bytes:
    """NONCE_i = 0x00 || u80be(i) || u8(final_i)"""
    return b"\x00" + index.to_bytes(10, "big") + bytes([1 if final else 0])


def chunk_aad(file_id: bytes, index: int, final: bool) -> bytes:
    """AAD_i = "cloudguard/v2/chunk" || 0x02 || FILE_ID || u64be(i) || u8(final_i)"""
    return (b"cloudguard/v2/chunk" + bytes([VERSION]) + file_id + struct.pack(">Q", index)
            + bytes([1 if final else 0]))


def open_header(header: bytes, dek: bytes, file_id: bytes) -> bytes:
    """"Reading a blob", steps 1 to 3; returns the blob key. Also how the merge judges which of
    two copies' DEKs is the blob's (State.unwraps)."""
    # 1. the 84-byte header, complete, starting with MAGIC
    if len(header) != BLOB_HEADER_SIZE or header[:4] != BLOB_MAGIC:
        raise BadData()
    # 2. the file id the manifest expects (a swapped blob fails here)
    if not hmac.compare_digest(header[4:20], file_id):
        raise BadData()
    # 3. key commitment, compared before anything is decrypted
    okm = hkdf(dek, b"cloudguard/v2/blob", 64, salt=file_id)
    if not hmac.compare_digest(header[20:52], okm[32:64]):
        raise BadData()
    return okm[:32]


def decrypt_blob(src: LimitedReader, dek: bytes, file_id: bytes, sha256_hex: str,
                 size: int, out: BinaryIO) -> None:
    """"Reading a blob", steps 1 to 7, streaming one chunk at a time (flat memory).

    Writes plaintext to ``out``; the caller must treat it as unverified until this returns.
    """
    header = src.read_exact(BLOB_HEADER_SIZE)
    key = open_header(header, dek, file_id)
    length_ct = header[52:84]
    # 4. the sealed length: u64be(size) || u64be(padded)
    plain_size, padded = struct.unpack(
        ">QQ", gcm_open(key, LENGTH_NONCE, length_ct,
                        b"cloudguard/v2/length" + bytes([VERSION]) + file_id))
    if plain_size > padded:
        raise BadData()
    if plain_size != size:  # extra check: the manifest's "s" must equal the sealed size
        raise BadData()
    # 5. the chunks: n = max(1, ceil(padded / 65536)); only the last carries the final flag
    aead = AESGCM(key)
    count = max(1, -(-padded // CHUNK_SIZE))
    digest = hashlib.sha256()
    remaining = plain_size  # plaintext bytes still to output; the rest is padding
    for index in range(count):
        final = index == count - 1
        plain_len = min(CHUNK_SIZE, padded - index * CHUNK_SIZE)
        sealed = src.read_exact(plain_len + TAG_SIZE)
        if len(sealed) != plain_len + TAG_SIZE:
            raise BadData()  # the stream (or the recorded length) ended first
        try:
            data = aead.decrypt(chunk_nonce(index, final), sealed,
                                chunk_aad(file_id, index, final))
        except InvalidTag as exc:
            raise BadData() from exc
        keep = min(len(data), remaining)  # padding is authenticated, never inspected
        if keep:
            piece = data[:keep]
            digest.update(piece)
            out.write(piece)
            remaining -= keep
    # 6. the SHA-256 of the plaintext
    if not hmac.compare_digest(digest.hexdigest(), sha256_hex):
        raise BadData()
    # 7. expect_end: the blob ends exactly at the end of the recorded range
    if not src.at_end():
        raise BadData()


# --- DEK wrapping ------------------------------------------------------------------------


def unwrap_dek(kek: bytes, wrapped: bytes, file_id: bytes) -> bytes:
    """KW          = HKDF(ikm = KEK, info = "cloudguard/v2/dek-wrap")
    WRAPPED_DEK = NONCE || GCM(KW, NONCE, DEK, "cloudguard/v2/dek" || 0x02 || FILE_ID)"""
    if len(wrapped) != 12 + KEY_SIZE + 16 or len(file_id) != 16:
        raise BadData()
    try:
        dek = AESGCM(hkdf(kek, b"cloudguard/v2/dek-wrap")).decrypt(
            wrapped[:12], wrapped[12:], b"cloudguard/v2/dek" + bytes([VERSION]) + file_id)
    except InvalidTag as exc:
        raise BadData() from exc
    if len(dek) != KEY_SIZE:
        raise BadData()
    return dek


# --- signed objects ----------------------------------------------------------------------
#
# SIGN(member, label, M) = Ed25519(member's signing key, label || 0x00 || M). Signed JSON bodies
# are parsed strictly: duplicate keys and nesting deeper than 32 levels are errors.

MAX_JSON_DEPTH = 32
SIGNATURE_SIZE = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadData()
        out[key] = value
    return out


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def strict_json(raw: bytes) -> Any:
    """UTF-8, one JSON value, no duplicate keys, at most 32 levels deep."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadData() from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadData()
    return value


def verify_sig(public: bytes, label: bytes, message: bytes, sig: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, label + b"\x00" + message)
    except (InvalidSignature, ValueError) as exc:
        raise BadData() from exc


# --- manifest segments -------------------------------------------------------------------
#
# SEGMENT = HEADER || CT || SIG
# HEADER  = "CGM" || 0x02 || u32be(head pos) || HEAD_ID (32 bytes) || NONCE (12 bytes)
# CT      = GCM(KM, NONCE, PADDED, "cloudguard/v2/segment" || 0x00 || utf8(V) || 0x00
#                                  || utf8(NAME) || 0x00 || HEADER)
# SIG     = SIGN(writer, "cloudguard/v2/segment", utf8(V) || 0x00 || utf8(NAME) || 0x00
#                                                  || HEADER || CT)
# PADDED  = u32be(len(Z)) || Z || zero padding;  Z = zlib(JSON(payload))

SEGMENT_MAGIC = b"CGM" + bytes([VERSION])
SEGMENT_HEADER_SIZE = 4 + 4 + 32 + 12
SEGMENT_MIN_SIZE = SEGMENT_HEADER_SIZE + 4096 + TAG_SIZE + SIGNATURE_SIZE
MAX_SEGMENT_SIZE = 512 * 1024 * 1024
MAX_SEGMENT_JSON = 256 * 1024 * 1024


def segment_head(blob: bytes) -> tuple[int, str]:
    """The writer's head (position, commit id): readable without a key, covered by SIG."""
    if not SEGMENT_MIN_SIZE <= len(blob) <= MAX_SEGMENT_SIZE or blob[:4] != SEGMENT_MAGIC:
        raise BadData()
    return int(struct.unpack(">I", blob[4:8])[0]), blob[8:40].hex()


def segment_names(vault_id: str, name: str) -> bytes:
    return vault_id.encode("utf-8") + b"\x00" + name.encode("utf-8") + b"\x00"


def verify_segment(blob: bytes, vault_id: str, name: str, writer: bytes) -> None:
    """SIG is checked before anything is decrypted."""
    segment_head(blob)
    verify_sig(writer, b"cloudguard/v2/segment",
               segment_names(vault_id, name) + blob[:-SIGNATURE_SIZE], blob[-SIGNATURE_SIZE:])


def open_segment(kek: bytes, vault_id: str, name: str, blob: bytes) -> dict[str, Any]:
    """Only after verify_segment: the tag, the length prefix and zero padding, one complete
    zlib stream of at most 256 MiB, a JSON object."""
    segment_head(blob)
    header, nonce = blob[:SEGMENT_HEADER_SIZE], blob[40:SEGMENT_HEADER_SIZE]
    key = hkdf(kek, b"cloudguard/v2/manifest")
    padded = gcm_open(key, nonce, blob[SEGMENT_HEADER_SIZE:-SIGNATURE_SIZE],
                      b"cloudguard/v2/segment\x00" + segment_names(vault_id, name) + header)
    (length,) = struct.unpack(">I", padded[:4])
    if 4 + length > len(padded) or any(padded[4 + length:]):
        raise BadData()
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(padded[4:4 + length], MAX_SEGMENT_JSON)
    except zlib.error as exc:
        raise BadData() from exc
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise BadData()
    payload = strict_json(raw)
    if not isinstance(payload, dict):
        raise BadData()
    return payload


# --- key slots ---------------------------------------------------------------------------


def x25519_public(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_public(priv: Ed25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def open_slot(priv: X25519PrivateKey, slot: object, ctx: bytes, rid: str) -> bytes:
    """SLOT = {"epk": b64(EPK), "ct": b64(GCM(KS, 0x00*12, secret,
    "cloudguard/v2/slot" || 0x00 || CTX || 0x00 || utf8(rid)))}"""
    if not isinstance(slot, dict) or "epk" not in slot or "ct" not in slot:
        raise BadData()
    epk = unb64(slot["epk"])
    ct = unb64(slot["ct"])
    if len(epk) != 32:
        raise BadData()
    pub = x25519_public(priv)
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError as exc:  # OpenSSL refuses an all-zero result
        raise BadData() from exc
    if shared == bytes(32):  # a low-order point
        raise BadData()
    key = hkdf(shared, b"cloudguard/v2/slot", salt=epk + pub)
    return gcm_open(key, bytes(NONCE_SIZE), ct,
                    b"cloudguard/v2/slot\x00" + ctx + b"\x00" + rid.encode("utf-8"))


# --- sealed JSON -------------------------------------------------------------------------


def open_sealed_json(key_material: bytes, info: bytes, aad: bytes,
                     sealed: object) -> dict[str, Any]:
    """SEALED = b64(NONCE || GCM(HKDF(ikm = key material, info = INFO), NONCE, JSON, AAD))"""
    raw = unb64(sealed)
    if len(raw) < NONCE_SIZE + TAG_SIZE:
        raise BadData()
    payload = strict_json(gcm_open(hkdf(key_material, info), raw[:NONCE_SIZE],
                                   raw[NONCE_SIZE:], aad))
    if not isinstance(payload, dict):
        raise BadData()
    return payload


# --- passphrase kits ---------------------------------------------------------------------

MAX_LOG_N = 20


def open_kit(doc: dict[str, Any], passphrase: str) -> bytes:
    """scrypt then AES-GCM; every field except "ct" is associated data.

    The reader bounds are checked before any key derivation, so a tampered kit cannot make us
    spend more than 2^20 * 1 KiB of memory.
    """
    kdf = doc.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("alg") != "scrypt":
        raise BadData()
    log_n, r, p = kdf.get("log_n"), kdf.get("r"), kdf.get("p")
    if not (is_int(log_n) and is_int(r) and is_int(p)):
        raise BadData()
    assert isinstance(log_n, int)  # for the type checker; is_int said so
    if not (1 <= log_n <= MAX_LOG_N and r == 8 and p == 1):
        raise BadData()
    salt = unb64(kdf.get("salt"))
    if len(salt) < 16:
        raise BadData()
    nonce = unb64(doc.get("nonce"))
    ct = unb64(doc.get("ct"))
    try:
        secret = passphrase.encode("utf-8")  # strict: a lone surrogate is an error
    except UnicodeEncodeError as exc:
        raise Failure("the passphrase cannot be encoded as UTF-8") from exc
    kp = Scrypt(salt=salt, length=32, n=1 << log_n, r=8, p=1).derive(secret)
    aad = b"cloudguard/v2/kit" + canonical_json({k: v for k, v in doc.items() if k != "ct"})
    return gcm_open(kp, nonce, ct, aad)


# --- remote layout: descriptor -----------------------------------------------------------

DESCRIPTOR = "cloudguard.json"


@dataclass
class Vault:
    descriptor_sha256: str


def read_descriptor(remote: Path) -> Vault:
    """"Descriptor": plain JSON; readers stop on an unknown format.

    It is authenticated later, against the SHA-256 held by the genesis commit (whose id is the
    vault id the kit names).
    """
    try:
        raw = (remote / DESCRIPTOR).read_bytes()
    except FileNotFoundError as exc:
        raise Failure(f"{remote} holds no {DESCRIPTOR}: not a copy of a cloudguard vault") from exc
    try:
        doc = strict_json(raw)
    except BadData as exc:
        raise IntegrityFailure(f"{DESCRIPTOR} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("cloudguard") != "vault":
        raise Failure(f"{DESCRIPTOR} is not a cloudguard vault descriptor")
    if not is_int(doc.get("format")) or doc.get("format") != VERSION:
        raise Failure(f"{DESCRIPTOR}: vault format {doc.get('format')!r} is unknown "
                      f"(this reader knows format {VERSION} only)")
    # extra checks: the parameters this reader is built for
    if doc.get("chunk_size") != CHUNK_SIZE or not is_int(doc.get("chunk_size")):
        raise Failure(f"{DESCRIPTOR}: unsupported chunk_size {doc.get('chunk_size')!r}")
    if doc.get("padding") not in ("padme", "none"):
        raise Failure(f"{DESCRIPTOR}: unknown padding {doc.get('padding')!r}")
    return Vault(hashlib.sha256(raw).hexdigest())


# --- the kit -----------------------------------------------------------------------------


@dataclass
class Kit:
    vault_id: str
    rid: str
    anchor: str  # id of the commit that added the kit
    x: X25519PrivateKey
    s: Ed25519PrivateKey


def read_kit(path: Path, passphrase_env: str) -> Kit:
    """"Passphrase kits": a recovery kit {"cloudguard": "recovery-kit", "format": 2, "vault",
    "rid", "anchor", kdf...}; the sealed secret is the kit member's 64-byte MEMBER_SECRET =
    X25519 private key || Ed25519 private key seed."""
    try:
        doc = strict_json(path.read_bytes())
    except OSError as exc:
        raise Failure(f"cannot read kit {path}: {exc}") from exc
    except BadData as exc:
        raise Failure(f"{path} is not a cloudguard recovery kit (not valid JSON)") from exc
    if not isinstance(doc, dict) or doc.get("cloudguard") != "recovery-kit":
        raise Failure(f"{path} is not a cloudguard recovery kit")
    if not is_int(doc.get("format")) or doc.get("format") != VERSION:
        raise Failure(f"{path}: unknown recovery kit format {doc.get('format')!r}")
    rid, vault_id, anchor = doc.get("rid"), doc.get("vault"), doc.get("anchor")
    if not (is_hex(rid, 16) and is_hex(vault_id, 64) and is_hex(anchor, 64)):
        raise Failure(f"{path} is not a cloudguard recovery kit (no rid, vault or anchor)")
    assert isinstance(rid, str) and isinstance(vault_id, str) and isinstance(anchor, str)
    passphrase = os.environ.get(passphrase_env, "")
    if not passphrase:
        try:
            passphrase = getpass.getpass(f"Passphrase for {path}: ")
        except EOFError as exc:
            raise Failure(f"no passphrase: set {passphrase_env} or run on a terminal") from exc
    try:
        secret = open_kit(doc, passphrase)
    except BadData as exc:
        # a wrong passphrase and a damaged kit cannot be told apart
        raise Failure(f"cannot open kit {path}: wrong passphrase, or the kit is damaged") from exc
    if len(secret) != 64:
        raise IntegrityFailure(f"kit {path}: the sealed member secret is not 64 bytes")
    return Kit(vault_id, rid, anchor, X25519PrivateKey.from_private_bytes(secret[:32]),
               Ed25519PrivateKey.from_private_bytes(secret[32:]))


# --- the membership chain ----------------------------------------------------------------
#
# COMMIT = "CGC" || 0x02 || u32be(len(BODY)) || BODY || SIG
# SIG    = SIGN(signer, "cloudguard/v2/commit", BODY)
# id     = lowercase hex SHA-256("cloudguard/v2/commit-id" || 0x00 || BODY)
# object name keys/<pos:08d>-<id>; its key object is keys/<pos:08d>-<id>.k

COMMIT_MAGIC = b"CGC" + bytes([VERSION])
COMMIT_NAME = re.compile(r"([0-9]{8})-([0-9a-f]{64})")
BODY_KEYS = {"type", "format", "vault", "pos", "parent", "merges", "action", "signer", "created",
             "members", "removed", "epoch", "kek", "keyobj", "names", "descriptor", "reencrypt"}
ACTIONS = ("genesis", "add", "remove", "rotate", "merge")


@dataclass(frozen=True)
class Member:
    kind: str  # "device" or "kit"
    x: bytes   # X25519 public key (receives key slots)
    s: bytes   # Ed25519 public key (signs commits and segments)


@dataclass(frozen=True)
class Cutoff:
    """A removed member: its signing key and the last of its segments readers accept."""

    s: bytes
    seq: int
    hash: str | None


@dataclass
class Commit:
    name: str
    id: str
    pos: int
    parent: str | None
    merges: list[str]
    action: str
    signer: str
    members: dict[str, Member]
    removed: dict[str, Cutoff]
    epoch: int
    kek: str      # kek_commit of the KEK in force after this commit
    keyobj: str   # SHA-256 of the key object
    names: str    # sealed member names
    descriptor: str
    body: bytes
    sig: bytes

    def ctx(self, vault_id: str) -> bytes:
        """CTX = utf8(vault or "") || 0x00 || decimal(pos) || 0x00 || utf8(parent or "")"""
        return (f"{vault_id if self.pos else ''}\x00{self.pos}\x00{self.parent or ''}"
                .encode())


def kek_commit(kek: bytes) -> str:
    """kek_commit(KEK) = lowercase hex HKDF(ikm = KEK, info = "cloudguard/v2/kek-commit")"""
    return hkdf(kek, b"cloudguard/v2/kek-commit", 32).hex()


def _key32(value: object) -> bytes:
    raw = unb64(value)
    if len(raw) != 32:
        raise BadData()
    return raw


def _rid(value: object) -> str:
    if not is_hex(value, 16):
        raise BadData()
    assert isinstance(value, str)
    return value


def decode_commit(data: bytes, name: str, vault_id: str) -> Commit:
    """"Verifying the chain", checks 1 and 5: structure, name, id; the signature needs the
    parent and is checked in verify_chain."""
    if len(data) < 8 + SIGNATURE_SIZE or data[:4] != COMMIT_MAGIC:
        raise BadData()
    (length,) = struct.unpack(">I", data[4:8])
    if 8 + length + SIGNATURE_SIZE != len(data):
        raise BadData()
    body, sig = data[8:8 + length], data[8 + length:]
    doc = strict_json(body)
    if not isinstance(doc, dict) or set(doc) != BODY_KEYS:
        raise BadData()
    if doc["type"] != "cloudguard/commit" or not is_int(doc["format"]) or doc["format"] != 2:
        raise BadData()
    pos, cid = doc["pos"], hashlib.sha256(b"cloudguard/v2/commit-id\x00" + body).hexdigest()
    if not is_int(pos) or pos < 0 or name != f"keys/{pos:08d}-{cid}":
        raise BadData()  # the name is derived from the body, so the signature covers it
    action = doc["action"]
    if action not in ACTIONS or (action == "genesis") != (pos == 0):
        raise BadData()
    if pos == 0:  # the genesis: no vault (its own id is the vault id), no parent
        if doc["vault"] is not None or doc["parent"] is not None or cid != vault_id:
            raise BadData()
    elif doc["vault"] != vault_id or not is_hex(doc["parent"], 64):
        raise BadData()
    merges = doc["merges"]
    if not isinstance(merges, list) or not all(is_hex(m, 64) for m in merges):
        raise BadData()
    if bool(merges) != (action == "merge"):
        raise BadData()
    if not isinstance(doc["members"], dict) or not doc["members"]:
        raise BadData()
    members: dict[str, Member] = {}
    for rid, keys in doc["members"].items():
        if (not isinstance(keys, dict) or set(keys) != {"kind", "x", "s"}
                or keys["kind"] not in ("device", "kit")):
            raise BadData()
        members[_rid(rid)] = Member(keys["kind"], _key32(keys["x"]), _key32(keys["s"]))
    if not isinstance(doc["removed"], dict):
        raise BadData()
    removed: dict[str, Cutoff] = {}
    for rid, cut in doc["removed"].items():
        if not isinstance(cut, dict) or set(cut) != {"s", "seq", "hash"}:
            raise BadData()
        if not is_int(cut["seq"]) or cut["seq"] < 0:
            raise BadData()
        if cut["hash"] is not None and (not is_hex(cut["hash"], 64) or cut["seq"] == 0):
            raise BadData()
        removed[_rid(rid)] = Cutoff(_key32(cut["s"]), cut["seq"], cut["hash"])
    if set(members) & set(removed):
        raise BadData()
    if doc["reencrypt"] is not False and (doc["reencrypt"] is not True
                                         or action not in ("rotate", "remove")):
        raise BadData()  # only a new KEK starts a re-encryption
    if not (is_hex(doc["kek"], 64) and is_hex(doc["keyobj"], 64)
            and is_hex(doc["descriptor"], 64) and isinstance(doc["names"], str)
            and isinstance(doc["created"], str) and is_int(doc["epoch"]) and doc["epoch"] >= 0):
        raise BadData()
    return Commit(name, cid, pos, doc["parent"], list(merges), action, _rid(doc["signer"]),
                  members, removed, doc["epoch"], doc["kek"], doc["keyobj"], doc["names"],
                  doc["descriptor"], body, sig)


def ancestry(commit: Commit, verified: dict[str, Commit]) -> list[Commit]:
    out: list[Commit] = []
    current: Commit | None = commit
    while current is not None:
        out.append(current)
        current = verified.get(current.parent) if current.parent else None
    return out


def union(commits: dict[str, Commit], challenged: list[Commit], every: dict[str, Commit]
          ) -> tuple[dict[str, Member], dict[str, Cutoff], set[str]]:
    """The two-phase set over commits: members ever added minus every member ever removed;
    for a member removed on several branches, the lowest cutoff (seq, then hash) wins.

    Only a genesis (all its members) or an add (the member its parent lacks) brings a member
    in: a merge's or rotation's member list is checked, never used, so a member added on a
    void branch stays out. A ``challenged`` removal (see void_commits) removes its target too:
    removals win. The third value holds the members only challenged removals took out.
    ``every`` holds the parents, void ones too. (Same rule as cloudguard's
    membership._union.)"""
    added: dict[str, Member] = {}
    cuts: dict[str, list[Cutoff]] = {}
    firm: set[str] = set()
    for c in commits.values():
        for rid, keys in brought_in(c, every).items():
            if added.setdefault(rid, keys) != keys:
                raise IntegrityFailure(f"{c.name}: member {rid} appears with two different "
                                       "keys")
    for c, counts in [*((c, True) for c in commits.values()), *((c, False) for c in challenged)]:
        if c.action != "remove":  # any other commit's "removed" is a claim, never used
            continue
        for rid in fresh(c, every):
            cuts.setdefault(rid, []).append(c.removed[rid])
            if counts:
                firm.add(rid)
    # the lowest cutoff over every removal: it only ever falls (round 6, U3)
    removed = {rid: earliest(found) for rid, found in cuts.items()}
    return {r: k for r, k in added.items() if r not in removed}, removed, set(removed) - firm


def brought_in(c: Commit, every: dict[str, Commit]) -> dict[str, Member]:
    """All members of a genesis, the new member of an add, nobody otherwise."""
    if c.action == "genesis":
        return c.members
    if c.action != "add":
        return {}
    parent = every.get(c.parent) if c.parent else None
    return {r: k for r, k in c.members.items() if parent is None or r not in parent.members}


def fresh(c: Commit, every: dict[str, Commit]) -> set[str]:
    """The members a commit removes that its parent had not removed."""
    parent = every.get(c.parent) if c.parent else None
    return set(c.removed) - set(parent.removed if parent else {})


def closure(starts: list[Commit], commits: dict[str, Commit]) -> set[str]:
    """"Builds on": ancestry through parents and through every tip a merge names."""
    out: set[str] = set()
    todo = list(starts)
    while todo:
        for a in ancestry(todo.pop(), commits):
            if a.id not in out:
                out.add(a.id)
                todo += [commits[m] for m in a.merges if m in commits]
    return out


def merged(every: dict[str, Commit], starts: list[Commit]
           ) -> tuple[dict[str, Member], dict[str, Cutoff]]:
    """The member set of a merge: the two-phase set over the non-void commits that its parent
    and its tips build on."""
    scope = {cid: every[cid] for cid in closure(starts, every)}
    void, challenged = void_commits(scope)
    members, removed, _only = union({cid: c for cid, c in scope.items() if cid not in void},
                                    [scope[cid] for cid in challenged], scope)
    return members, removed


def earliest(cuts: list[Cutoff]) -> Cutoff:
    """The lowest cutoff wins; two at that seq naming different segments vouch neither and
    count up to the seq before ("Races, equivocation and the head")."""
    low = min(c.seq for c in cuts)
    at = {c.hash for c in cuts if c.seq == low}
    if len(at) == 1:
        return next(c for c in cuts if c.seq == low)
    return Cutoff(cuts[0].s, low - 1, None)


def check_commit(c: Commit, parent: Commit, verified: dict[str, Commit],
                 descriptor: str) -> None:
    """"Verifying the chain", checks 2 to 4, and the "Authority rules"; raises with the rule
    that failed."""
    if c.pos != parent.pos + 1:
        raise Failure("its position is not its parent's + 1")
    signer = parent.members.get(c.signer)
    if signer is None:
        raise Failure(f"its signer {c.signer} is not a member of the parent commit")
    try:
        verify_sig(signer.s, b"cloudguard/v2/commit", c.body, c.sig)
    except BadData as exc:
        raise Failure("bad signature") from exc
    if c.descriptor != descriptor:
        raise Failure(f"the SHA-256 of {DESCRIPTOR} differs from the one it holds")
    ever: set[str] = set()
    keks_seen: set[str] = set()
    for a in ancestry(parent, verified):
        ever |= set(a.members) | set(a.removed)
        keks_seen.add(a.kek)
    for tip in c.merges:  # a merge's KEK is new to the branches it takes in too
        keks_seen |= {a.kek for a in ancestry(verified[tip], verified)}
    if c.action == "add":
        added = set(c.members) - set(parent.members)
        if (len(added) != 1 or set(parent.members) - set(c.members) or c.removed != parent.removed
                or added & ever or c.kek != parent.kek or c.epoch != parent.epoch
                or any(parent.members[r] != c.members[r] for r in parent.members)):
            raise Failure("not a valid add")
        if signer.kind == "kit" and c.members[next(iter(added))].kind != "device":
            raise Failure("a kit may add only a device")
        return
    if signer.kind != "device":
        raise Failure(f"a kit may not {c.action}")
    # remove, rotate, merge: a new KEK; a merge's epoch is above every branch it takes in
    top = max([parent.epoch, *(verified[t].epoch for t in c.merges)])
    if c.kek in keks_seen or c.epoch != top + 1:
        raise Failure("a new KEK and the next epoch are required")
    if c.action == "rotate":
        if c.members != parent.members or c.removed != parent.removed:
            raise Failure("a rotation changed the members")
    elif c.action == "remove":
        gone = set(parent.members) - set(c.members)
        if (len(gone) != 1 or set(c.members) - set(parent.members)
                or set(c.removed) != set(parent.removed) | gone
                or any(c.removed[r] != parent.removed[r] for r in parent.removed)
                or c.removed[next(iter(gone))].s != parent.members[next(iter(gone))].s):
            raise Failure("not a valid removal")
    elif c.action == "merge":
        if merged(verified, [parent, *(verified[t] for t in c.merges)]) != (c.members,
                                                                             c.removed):
            raise Failure("the merge does not equal the merged member set")


def void_commits(verified: dict[str, Commit]) -> tuple[set[str], set[str]]:
    """"Void commits": (void commits, challenged removals). A removal of M attacks every
    commit signed by M that it does not build on (through parents and merges), and every
    commit whose signer such a commit of M brought in, directly or through further adds.
    Removals win: every removal attacks, attacked or not, and an attacked commit is void; an
    attacked removal is challenged, and still removes its target (see union). (Same rule as
    cloudguard's membership._void.)"""
    reach = {cid: closure([c], verified) for cid, c in verified.items()}

    def introduced(c: Commit) -> set[str]:
        out: set[str] = set()
        todo = [c]
        while todo:
            x = todo.pop()
            if x.id in out:
                continue
            out.add(x.id)
            todo += [verified[a] for a in reach[x.id]
                     if a != x.id and x.signer in brought_in(verified[a], verified)]
        return out

    unsigned = {cid for cid, c in verified.items() if c.action != "genesis" and not any(
        c.signer in brought_in(verified[a], verified) for a in reach[cid])}
    removals = {c.id: fresh(c, verified) for c in verified.values()
                if c.action == "remove" and c.id not in unsigned}
    chains = {cid: introduced(c) for cid, c in verified.items()}
    attacked = {cid for cid in verified
                if any(verified[x].signer in gone and x not in reach[r]
                       for r, gone in removals.items() for x in chains[cid])}
    return unsigned | attacked, {r for r in removals if r in attacked}


@dataclass
class Chain:
    remote: Path
    vault_id: str
    commits: dict[str, Commit]   # every verified commit
    head: Commit                 # the tip with the highest epoch, then pos, then lowest id
    members: dict[str, Member]   # merged view: ever added minus removed
    removed: dict[str, Cutoff]
    keks: dict[str, bytes] = field(default_factory=dict)   # kek_commit -> KEK
    labels: dict[str, str] = field(default_factory=dict)   # rid -> member name
    warnings: list[str] = field(default_factory=list)      # deferred and void commits
    challenged: set[str] = field(default_factory=set)      # void removals that still remove
    contested: set[str] = field(default_factory=set)       # members only those took out
    # void commits: out of the view, but they still name the head and KEK of segments
    voided: dict[str, Commit] = field(default_factory=dict)

    def writer_key(self, rid: str) -> bytes | None:
        if rid in self.members:
            return self.members[rid].s
        cut = self.removed.get(rid)
        return cut.s if cut else None


def verify_chain(remote: Path, vault_id: str, descriptor: str) -> Chain:
    """"Verifying the chain": every listed commit whose parent is verified, from the genesis
    forward. A commit whose parent is not listed is deferred (skipped) as cloudguard does."""
    keys_dir = remote / "keys"
    names = sorted(f"keys/{p.name}" for p in (keys_dir.iterdir() if keys_dir.is_dir() else [])
                   if COMMIT_NAME.fullmatch(p.name))
    genesis_name = f"keys/{0:08d}-{vault_id}"
    if genesis_name not in names:
        raise IntegrityFailure(f"{genesis_name}: the genesis commit of the kit's vault is "
                               "missing (wrong folder, or it was deleted)")
    decoded: dict[str, Commit] = {}
    for name in names:
        try:
            commit = decode_commit((remote / name).read_bytes(), name, vault_id)
        except BadData as exc:
            raise IntegrityFailure(f"{name}: invalid commit") from exc
        decoded[commit.id] = commit
    genesis = decoded[vault_id]
    only = next(iter(genesis.members.values()))
    if (len(genesis.members) != 1 or genesis.removed or genesis.signer not in genesis.members
            or only.kind != "device"):
        raise IntegrityFailure(f"{genesis_name}: invalid genesis commit")
    try:
        verify_sig(only.s, b"cloudguard/v2/commit", genesis.body, genesis.sig)
    except BadData as exc:
        raise IntegrityFailure(f"{genesis_name}: bad signature") from exc
    if genesis.descriptor != descriptor:
        raise IntegrityFailure(f"{DESCRIPTOR} was altered: its SHA-256 differs from the one "
                               f"in the genesis commit {genesis_name}")
    verified = {genesis.id: genesis}
    waiting = {cid: c for cid, c in decoded.items() if cid != vault_id}
    progress = True
    while progress:
        progress = False
        for cid, c in sorted(waiting.items(), key=lambda item: item[1].pos):
            if c.parent not in verified or any(m not in verified for m in c.merges):
                continue  # not yet, or deferred for good (its parent is not listed)
            assert c.parent is not None
            try:
                check_commit(c, verified[c.parent], verified, descriptor)
            except Failure as exc:
                raise IntegrityFailure(f"{c.name}: invalid commit ({exc})") from exc
            verified[cid] = c
            del waiting[cid]
            progress = True
    void, challenged = void_commits(verified)
    voided = {cid: verified.pop(cid) for cid in void}
    members, removed, contested = union(verified, [voided[cid] for cid in challenged],
                                        {**voided, **verified})
    children: dict[str, list[Commit]] = {}
    for c in verified.values():
        if c.parent:
            children.setdefault(c.parent, []).append(c)
    for kids in children.values():  # "Races, equivocation and the head"
        by_signer: dict[str, Commit] = {}
        for kid in kids:
            other = by_signer.setdefault(kid.signer, kid)
            if other is not kid and kid.signer not in removed:  # a removed member stops nobody
                raise IntegrityFailure(f"equivocation: member {kid.signer} signed both "
                                       f"{other.name} and {kid.name} on one parent")
    tips = [c for c in verified.values() if not children.get(c.id)] or [genesis]
    head = min(tips, key=lambda c: (-c.epoch, -c.pos, c.id))
    warnings = [f"{c.name}: its parent is not listed; deferred (skipped)"
                for c in sorted(waiting.values(), key=lambda c: c.name)]
    warnings += [f"{decoded[cid].name}: void (signed by a member on a branch its removal does "
                 "not build on); ignored" for cid in sorted(void, key=lambda c: decoded[c].name)]
    every = {**voided, **verified}
    for c in voided.values():  # members only a void add brought in are out, cutoff 0 (S6)
        for rid, keys in brought_in(c, every).items():
            if rid not in members and rid not in removed:
                removed[rid] = Cutoff(keys.s, 0, None)
                warnings.append(f"member {rid} was approved only by a void commit: it is out")
    if challenged:
        warnings.append(f"{len(challenged)} removals are challenged by other removals: every "
                        "target is out; versions the clamp left out are in the history")
    return Chain(remote, vault_id, verified, head, members, removed, warnings=warnings,
                 challenged=challenged, contested=contested, voided=voided)


# --- key objects -------------------------------------------------------------------------
#
# KEYOBJ = JSON({"slots": {rid: SLOT, ...},
#                "history": SEALED(KEK, "cloudguard/v2/history", CTX, {kek_commit(K): b64(K)})})


def open_key_object(chain: Chain, commit: Commit, kit: Kit) -> None:
    """The KEK of ``commit`` through the kit's slot, every older KEK in its history (each only
    under a commitment of a verified or void commit) and the member names. Adds them to
    ``chain``."""
    name = commit.name + ".k"
    raw = (chain.remote / name).read_bytes()
    if hashlib.sha256(raw).hexdigest() != commit.keyobj:
        raise IntegrityFailure(f"{name} does not match the hash in its commit: a slot was "
                               "added, removed or swapped")
    ctx = commit.ctx(chain.vault_id)
    try:
        doc = strict_json(raw)
        if not isinstance(doc, dict) or set(doc) != {"slots", "history"}:
            raise BadData()
        slots = doc["slots"]
        if not isinstance(slots, dict) or set(slots) != set(commit.members):
            raise BadData()
        kek = open_slot(kit.x, slots[kit.rid], ctx, kit.rid)
        if len(kek) != KEY_SIZE or kek_commit(kek) != commit.kek:
            raise BadData()
        history = open_sealed_json(kek, b"cloudguard/v2/history", ctx, doc["history"])
        known = {c.kek for c in [*chain.commits.values(), *chain.voided.values()]}
        older: dict[str, bytes] = {}
        for commitment, value in history.items():
            old = unb64(value)
            if kek_commit(old) != commitment or commitment not in known:
                raise BadData()
            older[commitment] = old
        labels = open_sealed_json(kek, b"cloudguard/v2/names", ctx, commit.names)
        if set(labels) != set(commit.members) or not all(isinstance(v, str)
                                                          for v in labels.values()):
            raise BadData()
    except BadData as exc:
        raise IntegrityFailure(f"{name}: the key object failed authentication") from exc
    chain.keks[commit.kek] = kek
    chain.keks.update(older)
    for rid, label in labels.items():
        chain.labels.setdefault(rid, label)


def load_keys(remote: Path, vault: Vault, kit: Kit) -> Chain:
    """Verify the chain, check the kit's membership, and open the key objects it has slots in
    (the head's first: its history holds the older KEKs)."""
    chain = verify_chain(remote, kit.vault_id, vault.descriptor_sha256)
    if kit.anchor not in chain.commits:
        raise IntegrityFailure(f"the commit that added this kit ({kit.anchor[:16]}...) is not "
                               "in the vault's verified chain")
    if kit.rid in chain.removed or kit.rid not in chain.head.members:
        raise Failure("this recovery kit was removed from the vault")
    me = chain.members.get(kit.rid)
    if me is None or me.x != x25519_public(kit.x) or me.s != ed25519_public(kit.s):
        raise IntegrityFailure("the chain holds other keys for this kit's member id")
    # the head first; older commits only for KEKs we do not hold yet (their key objects may
    # be gone after a re-encrypting rotation, which is fine: nothing is sealed under them then).
    # Void commits too: segments written under them stay readable ("Void commits")
    every = [*chain.commits.values(), *chain.voided.values()]
    older = sorted((c for c in every if c is not chain.head), key=lambda c: (-c.pos, c.id))
    for commit in [chain.head, *older]:
        if kit.rid not in commit.members or commit.kek in chain.keks:
            continue
        if not (remote / (commit.name + ".k")).is_file():
            if commit is chain.head:
                raise IntegrityFailure(f"{commit.name}.k, the key object of the newest "
                                       "commit, is missing")
            continue
        open_key_object(chain, commit, kit)
    return chain


# --- manifest payloads and the merged state ----------------------------------------------

SEGMENT_NAME = re.compile(r"m/([0-9a-f]{16})-([0-9]{12})\.([ds])")
DOT = re.compile(r"([0-9a-f]{16}):([0-9]+)")

Entry = dict[str, Any]


def dot_parts(dot: str) -> tuple[str, int]:
    match = DOT.fullmatch(dot)
    if match is None:
        raise BadData()
    return match.group(1), int(match.group(2))


def covered(dot: str, ctx: dict[str, int]) -> bool:
    device, seq = dot_parts(dot)
    return seq <= ctx.get(device, 0)


def parse_vv(raw: object) -> dict[str, int]:
    """VV = {device: highest seq seen}"""
    if not isinstance(raw, dict):
        raise BadData()
    out: dict[str, int] = {}
    for device, seq in raw.items():
        if not is_hex(device, 16) or not is_int(seq) or seq < 0:
            raise BadData()
        out[device] = seq
    return out


def newer_location(one: Entry, two: Entry) -> Entry:
    """Of two versions of one entry (same dot), the one with the higher relocation count "r"
    (absent = 0), then the higher object id "o" (a max-register). On a full tie the first
    wins: format.md does not say, this follows cloudguard."""
    return max(one, two, key=lambda e: (int(e.get("r", 0)), str(e.get("o", ""))))


LOCATION_FIELDS = ("o", "a", "r", "om", "n", "i", "k", "g", "w")
MOVE_FIELDS = ("rd", "rt", "pl")


def moved_entry(entry: Entry, location: dict[str, Any], dot: str) -> Entry:
    """"Moves": the entry at its new location; "rd" lists the dots of the moves since the
    location "pl" (kept from an earlier move, else the location before this one). ("rt", the
    move's time, only matters to a writer.)"""
    base = {k: v for k, v in entry.items() if k not in MOVE_FIELDS}
    if isinstance(entry.get("pl"), dict) and isinstance(entry.get("rd"), list):
        return {**base, **location, "rd": [*entry["rd"], dot], "rt": 0, "pl": entry["pl"]}
    return {**base, **location, "rd": [dot], "rt": 0,
            "pl": {k: base[k] for k in LOCATION_FIELDS if k in base}}


def unmoved(entry: Entry, limit: dict[str, int], listed: set[str]) -> Entry:
    """"Moves": an entry moved by a removed member past its cutoff (any dot of "rd") goes back
    to "pl", unless the object there is no longer listed (round 7, V1)."""
    rd, previous = entry.get("rd"), entry.get("pl")
    if not isinstance(rd, list) or not isinstance(previous, dict) or not any(
            isinstance(d, str) and late_dot(d, limit) for d in rd):
        return entry
    if "o" in previous and previous["o"] not in listed:
        return entry
    base = {k: v for k, v in entry.items()
            if k not in MOVE_FIELDS and k not in LOCATION_FIELDS}
    return {**base, **previous}


# "Entry signatures": the writer of a dot signs what the version is
ENTRY_CONTENT = ("t", "s", "m", "x", "h", "l", "lc", "wb", "pt", "cs")


def entry_message(vault_id: str, path: str, dot: str, entry: Entry) -> bytes:
    """utf8(vault) || 0x00 || utf8(path) || 0x00 || utf8(dot) || 0x00 || CONTENT, where
    CONTENT is FIELD(k, v) for the content keys present, in order: utf8(k) || 0x00 ||
    (0x01 || i64be(v)) for an integer, (0x02 || u32be(len) || utf8(v)) for a text."""
    out = [vault_id.encode(), b"\x00", path.encode(), b"\x00", dot.encode(), b"\x00"]
    for key in ENTRY_CONTENT:
        if key not in entry:
            continue
        value = entry[key]
        if is_int(value):
            out.append(key.encode() + b"\x00\x01" + struct.pack(">q", value))
        elif isinstance(value, str):
            raw = value.encode()
            out.append(key.encode() + b"\x00\x02" + struct.pack(">I", len(raw)) + raw)
        else:
            raise BadData()
    return b"".join(out)


def same_content(one: Entry, two: Entry) -> bool:
    """"One dot, one content": two copies of one dot differ only in location fields."""
    return all(one.get(k) == two.get(k) for k in ENTRY_CONTENT)


def check_entry_signature(chain: Chain, path: str, dot: str, entry: Entry) -> None:
    device, _seq = dot_parts(dot)
    key = chain.writer_key(device)
    if key is None:
        raise IntegrityFailure(f"manifest entry {dot} of {path!r} names {device}, who was "
                               "never a member")
    try:
        verify_sig(key, b"cloudguard/v2/entry", entry_message(chain.vault_id, path, dot, entry),
                   unb64(entry.get("sg")))
    except (BadData, UnicodeEncodeError) as exc:
        raise IntegrityFailure(f"manifest entry {dot} of {path!r} is not signed by its "
                               "writer") from exc


@dataclass
class State:
    ctx: dict[str, int] = field(default_factory=dict)
    paths: dict[str, dict[str, Entry]] = field(default_factory=dict)  # path -> {dot: ENTRY}
    limit: dict[str, int] = field(default_factory=dict)  # removed member -> cutoff seq
    # "Suspect stretches": seqs a snapshot covering a late write lifted the vector over
    suspect: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # versions a snapshot's history holds: a suspect stretch does not bring them back
    gone: set[tuple[str, str]] = field(default_factory=set)
    # "Version history": every version a snapshot keeps or this load removed (--history)
    kept: dict[str, dict[str, Entry]] = field(default_factory=dict)
    # (path, late dot, honest dot): a delta removed a late version this reader never held
    unseen: list[tuple[str, str, str, dict[str, int]]] = field(default_factory=list)
    keks: dict[str, bytes] = field(default_factory=dict)  # the kit's, by commitment
    remote: Path | None = None  # where the blobs are: a key is judged by its blob's header

    def fresher(self, path: str, one: Entry, two: Entry) -> Entry:
        """Of two copies of one version at one place that differ only in their key wrap, one
        whose wrap fails under a KEK the kit holds, or whose DEK does not open its blob's
        key commitment, loses: a removed member's late snapshot can carry bytes that are no
        wrap at all (review round 21, KK2) or a wrap of a junk DEK (round 8, W7; round 22,
        LL2), and an honest snapshot can have taken it in. Two copies at one place that name
        two blobs (another offset, length or file id): the one whose blob decrypts to its
        signed "h" wins, else the first (round 23, MM1)."""
        if (one.get("r", 0), one.get("o")) == (two.get("r", 0), two.get("o")):
            if any(one.get(k) != two.get(k) for k in ("a", "n", "i")):
                if self.remote is not None and not blob_matches(
                        self.remote, self.keks, path, one) and blob_matches(
                        self.remote, self.keks, path, two):
                    return two
                return one
            ok = [self.unwraps(e) for e in (one, two)]
            if ok == [True, False]:
                return one
            if ok == [False, True]:
                return two
        return newer_location(one, two)

    def unwraps(self, entry: Entry) -> bool | None:
        """False: junk; None: cannot tell (a KEK the kit lacks)."""
        kek = self.keks.get(str(entry.get("g")))
        if kek is None:
            return None
        try:
            file_id = bytes.fromhex(entry["i"])
            dek = unwrap_dek(kek, unb64(entry["k"]), file_id)
        except (BadData, KeyError, TypeError, ValueError):
            return False
        if self.remote is None:
            return True
        at = entry.get("a", 0)
        if not is_hex(entry.get("o"), 32) or not is_int(at) or at < 0:
            return False
        try:
            with open(self.remote / "data" / entry["o"], "rb") as src:
                src.seek(at)
                header = src.read(BLOB_HEADER_SIZE)
        except OverflowError:
            return False  # an offset past any file
        except OSError:
            return True  # the blob is not there: the unwrap is all that can be told
        try:
            open_header(header, dek, file_id)
        except BadData:
            return False
        return True

    def in_suspect(self, dot: str) -> bool:
        device, seq = dot_parts(dot)
        return any(lo < seq <= hi for lo, hi in self.suspect.get(device, ()))

    def merge(self, other: State, hearsay: bool = False, writer: str = "",
              removed: set[tuple[str, str]] | None = None) -> None:
        """Observed-remove merge: an entry one side lacks survives unless that side's ctx covers
        its dot (it saw the entry and removed it). Version vectors merge by maximum. When both
        sides hold the same dot, the side with the higher (r, o) wins (newer_location).

        ``hearsay``: ``other`` is a snapshot whose vector covers a late write ("Suspect
        stretches"): it removes only the versions its history holds (``removed``; what a
        late write removed is back in its paths), and what it lifts the vector over, beyond
        its ``writer``'s own seqs, is suspect: a version there is taken when another snapshot
        holds it, and its delta is applied."""
        for path in set(self.paths) | set(other.paths):
            mine = self.paths.get(path, {})
            theirs = other.paths.get(path, {})
            keep: dict[str, Entry] = {}
            for dot, entry in mine.items():
                if dot in theirs or not covered(dot, other.ctx) or (
                        hearsay and (path, dot) not in (removed or set())):
                    keep[dot] = entry
                else:
                    self.kept.setdefault(path, {})[dot] = entry
            for dot, entry in theirs.items():
                if dot in mine:
                    if not same_content(mine[dot], entry):
                        raise IntegrityFailure(f"manifest entry {dot} of {path!r} has two "
                                               "contents")
                    keep[dot] = self.fresher(path, mine[dot], entry)
                elif not covered(dot, self.ctx) or (
                        self.in_suspect(dot) and (path, dot) not in self.gone):
                    keep[dot] = entry
            if keep:
                self.paths[path] = keep
            else:
                self.paths.pop(path, None)
        for device, seq in other.ctx.items():
            before = self.ctx.get(device, 0)
            if hearsay and device != writer and seq > before:
                self.suspect.setdefault(device, []).append((before, seq))
            elif not hearsay:  # an honest snapshot answers for what it covers
                self.suspect[device] = [(max(lo, seq), hi) for lo, hi in
                                        self.suspect.get(device, []) if hi > seq]
            self.ctx[device] = max(before, seq)

    def apply(self, dot: str, ops: list[dict[str, Any]], deps: dict[str, int]) -> None:
        """Applying a delta removes the rm dots at p and adds e under the delta's dot.

        A "reloc" op (written by a repack, re-encryption or repair) moves an existing dot's
        blob to a new location without a new dot, if the dot is still there and the move is
        newer (newer_location)."""
        for op in ops:
            if poisoned(op.get("e"), self.limit):  # a resolution a late write took part in:
                self.kept.setdefault(op["p"], {})[dot] = op["e"]  # what it removed stays
                continue
            siblings = self.paths.setdefault(op["p"], {})
            for target, location in op.get("reloc", {}).items():
                if target in siblings:
                    siblings[target] = newer_location(
                        siblings[target], moved_entry(siblings[target], location, dot))
            for old in op.get("rm", []):
                if old in siblings:
                    self.kept.setdefault(op["p"], {})[old] = siblings.pop(old)
                elif late_dot(old, self.limit):
                    self.unseen.append((op["p"], old, dot, deps))
            if op.get("e") is not None:
                siblings[dot] = op["e"]
            if not siblings:
                del self.paths[op["p"]]

    def dominates(self, vv: dict[str, int]) -> bool:
        return all(self.ctx.get(device, 0) >= seq for device, seq in vv.items())


def parse_ops(raw: object) -> list[dict[str, Any]]:
    """OP = {"p": path, "e": ENTRY | null, "rm": [dot, ...]}, or a relocation written by
    cloudguard's repack: {"p": path, "reloc": {dot: {"o", "a", "r"[, "om"]}}}, or by its
    re-encryption and repair, which also carries the new blob's "n", "i", "k", "g", "w"
    (the same content under a fresh DEK and file id)."""
    return _parse_ops(raw)


_REKEYED = {"n", "i", "k", "g", "w"}


def _location(location: object) -> bool:
    """A relocation changes where the blob is and, for a blob encrypted anew, its key fields;
    nothing else. The optional "om" (hex MD5 of the new object, for cloudguard's verify) is
    carried along and not used here."""
    if not isinstance(location, dict) or not isinstance(location.get("om", ""), str):
        return False
    keys = set(location) - {"om"}
    if keys not in ({"o", "a", "r"}, {"o", "a", "r"} | _REKEYED):
        return False
    if not (is_hex(location["o"], 32) and is_int(location["a"]) and location["a"] >= 0
            and is_int(location["r"]) and location["r"] >= 0):
        return False
    if "n" in location:
        return (is_int(location["n"]) and location["n"] >= 0
                and all(isinstance(location[k], str) for k in ("i", "k", "g", "w")))
    return True


def _parse_ops(raw: object) -> list[dict[str, Any]]:
    """See parse_ops.
    Missing "e" and "rm" mean null and [] (cloudguard reads them so)."""
    if not isinstance(raw, list):
        raise BadData()
    for op in raw:
        if not isinstance(op, dict) or not isinstance(op.get("p"), str):
            raise BadData()
        if not (op.get("e") is None or isinstance(op["e"], dict)):
            raise BadData()
        rm = op.get("rm", [])
        if not isinstance(rm, list) or not all(isinstance(d, str) for d in rm):
            raise BadData()
        for dot in rm:
            dot_parts(dot)
        reloc = op.get("reloc", {})
        if not isinstance(reloc, dict):
            raise BadData()
        for dot, location in reloc.items():
            dot_parts(dot)
            if not _location(location):
                raise BadData()
    return raw


def parse_snapshot_paths(raw: object) -> dict[str, dict[str, Entry]]:
    """"paths": {path: {dot: ENTRY}}"""
    if not isinstance(raw, dict):
        raise BadData()
    for siblings in raw.values():
        if not isinstance(siblings, dict):
            raise BadData()
        for dot, entry in siblings.items():
            dot_parts(dot)
            if not isinstance(entry, dict):
                raise BadData()
    return raw


def removed_late(raw: object, limit: dict[str, int]) -> dict[str, dict[str, Entry]]:
    """"Version history": from a snapshot's "attic" ({path: {dot: {"e": ENTRY, "g": T,
    "rb": [dot, ...]}}}), the versions that are not late themselves and have removers
    ("rb"), by path; late_chain decides which of them a late write removed. Only these are
    read here: they come back unless a version live at the path was written over them
    ("Writer rules", "Version history")."""
    out: dict[str, dict[str, Entry]] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise BadData()
    for path, rows in raw.items():
        if not isinstance(rows, dict):
            raise BadData()
        for dot, row in rows.items():
            dot_parts(dot)
            if not isinstance(row, dict) or not isinstance(row.get("e"), dict):
                raise BadData()
            rb = row.get("rb")
            if rb is not None and (not isinstance(rb, list) or not rb or not all(
                    isinstance(d, str) for d in rb)):
                raise BadData()
            if rb and not late_dot(dot, limit) and not poisoned(row["e"], limit):
                out.setdefault(path, {})[dot] = row["e"]
    return out


def carriers_of(payload: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A snapshot's "rc": {carrier dot: the version vector that snapshot had}."""
    raw = payload.get("rc", {})
    if not isinstance(raw, dict) or not all(
            isinstance(v, dict) and all(is_int(n) for n in v.values()) for v in raw.values()):
        raise BadData()
    return raw


def late_chain(rb: object, live: dict[str, Any], gone: dict[str, Any],
               limit: dict[str, int], carriers: dict[str, dict[str, int]],
               moves: set[tuple[str, str]], content: str) -> bool:
    """"Version history": did a late write remove this kept version? One late remover is
    enough: a late carrier, a carrier that names no other remover beside it and whose vector
    covers a late write (round 7, V5), or a late version still live, without a row, or
    itself removed by a late write, followed each dot once (a late cycle counts as late);
    honest and unknown removers revive nothing (round 6, U1; as cloudguard's
    manifest._late_removal)."""
    todo = [(str(d), rb, content) for d in rb] if isinstance(rb, list) else []
    seen: set[str] = set()
    while todo:
        dot, row_rb, removed = todo.pop()
        if dot in seen:
            return True
        seen.add(dot)
        vv = carriers.get(dot)
        if vv is not None and any(vv.get(dev, 0) > seq for dev, seq in limit.items()) and \
                not any(other != dot and covers(vv, str(other)) for other in row_rb):
            return True
        here = live.get(dot) if dot in live else gone.get(dot, {}).get("e")
        if poisoned(here if isinstance(here, dict) else None, limit):
            return True  # a resolution of a conflict with a late write (round 12, AA2)
        if (dot, removed) in moves:
            return True  # it carried the late version's content elsewhere (round 14, CC2)
        if not late_dot(dot, limit):
            if DOT.fullmatch(removed) and late_dot(removed, limit) and undoes(
                    dot, gone.get(removed), live, gone, content):
                return True
            continue
        if dot in live or dot not in gone:
            return True
        row = gone[dot]
        more = row.get("rb") if isinstance(row, dict) else None
        more = more if isinstance(more, list) else []
        todo += [(str(d), more, dot) for d in more]
    return False


def undoes(dot: str, late: object, live: dict[str, Any], gone: dict[str, Any],
           content: str) -> bool:
    """"Version history": an honest remover of a late version that held other content than
    the kept one undoes it unless it wrote a version at this path (live or since replaced)
    with other content than the late one: a delete, a rename away or a touch brings back what
    the late version replaced, an edit stands (review round 15, DD1, DD2; round 16, EE4,
    EE5; as cloudguard's manifest.clamp._undoes)."""
    held = late.get("e") if isinstance(late, dict) else None
    if isinstance(held, dict) and content_tag(held) == content:
        return False
    row = gone.get(dot)
    mine = live.get(dot) if dot in live else row.get("e") if isinstance(row, dict) else None
    if not isinstance(mine, dict):
        return True
    return isinstance(held, dict) and content_tag(mine) == content_tag(held)


def descends(rb: object, live: dict[str, Any], gone: dict[str, Any],
             limit: dict[str, int]) -> bool:
    """"Version history": was a version live at the path written over this kept one,
    directly or through versions since replaced? Only such a version stops it coming back;
    another live one is concurrent with it, and a conflict keeps both (round 11, Z1). A
    remover list naming a late dot is the removed member's word as a whole (round 12, AA1;
    as cloudguard's manifest.clamp.descends)."""
    def trusted(raw: object) -> list[str]:
        dots = [str(d) for d in raw] if isinstance(raw, list) else []
        return [] if any(late_dot(d, limit) for d in dots) else dots

    todo = trusted(rb)
    seen: set[str] = set()
    while todo:
        dot = todo.pop()
        if dot in live:
            return True
        if dot in seen or not isinstance(gone.get(dot), dict):
            continue
        seen.add(dot)
        todo += trusted(gone[dot].get("rb"))
    return False


def covers(vv: dict[str, int], dot: str) -> bool:
    """Does version vector ``vv`` cover ``dot``?"""
    device, _, seq = dot.partition(":")
    return seq.isdigit() and int(seq) <= vv.get(device, 0)


def rb_of(payload: dict[str, Any], path: str, dot: str) -> object:
    """The "rb" of attic version ``dot`` at ``path`` in a snapshot payload (None if absent)."""
    return payload.get("attic", {}).get(path, {}).get(dot, {}).get("rb")


class Skip(Exception):
    """A segment that is treated as not listed: its writer's head commit is not in the
    verified chain (yet), or its writer was removed and its removal does not vouch for it."""


SegmentIndex = dict[str, tuple[str, int, str]]  # name -> (device, seq, "d" or "s")


def first_missing(stuck: dict[str, dict[int, str]],
                  opened: dict[str, tuple[dict[str, int], list[dict[str, Any]]]],
                  ctx: dict[str, int]) -> tuple[str, int]:
    """(writer, seq) of the segment to name when deltas can never apply: a writer's next one
    that is not listed, else one a waiting delta depends on (its own next when none is
    found). Naming the waiting delta, which is there, sends a user after the wrong object."""
    for device, rest in stuck.items():
        if ctx.get(device, 0) + 1 not in rest:
            return device, ctx.get(device, 0) + 1
    for device, rest in stuck.items():
        deps = opened.get(rest[ctx.get(device, 0) + 1], ({}, []))[0]
        for writer, seq in sorted(deps.items()):
            if writer != device and seq > ctx.get(writer, 0) and not stuck.get(writer):
                return writer, ctx.get(writer, 0) + 1
    device = min(stuck)
    return device, ctx.get(device, 0) + 1


def clamp(vv: dict[str, int], limit: dict[str, int]) -> dict[str, int]:
    """"Writer rules": a removed member's writes past its cutoff count as never seen, so
    ctx and deps are clamped to the cutoff (an honest device may have applied them before it
    saw the removal; it must not launder them into the restored state)."""
    return {dev: min(seq, limit[dev]) if dev in limit else seq for dev, seq in vv.items()}


def late_dot(dot: str, limit: dict[str, int]) -> bool:
    """A dot W:k of a removed member W with k above its cutoff seq."""
    device, seq = dot_parts(dot)
    return device in limit and seq > limit[device]


def carried(paths: dict[str, dict[str, Entry]], attic: object, limit: dict[str, int]
            ) -> set[tuple[str, str]]:
    """(dot, the dot whose content it carries: "cs") of a snapshot's versions, live or kept,
    and (dot, content) of those that carry late content: a remover that carried a late
    version's content elsewhere moved it (round 14, CC2), and one that moved a version's
    content into such a version is undone with it (as cloudguard's resolutions.carried)."""
    rows = [(d, r.get("e")) for kept in (attic.values() if isinstance(attic, dict) else ())
            if isinstance(kept, dict) for d, r in kept.items() if isinstance(r, dict)]
    rows += [(d, e) for sibs in paths.values() for d, e in sibs.items()]
    out = {(d, e["cs"]) for d, e in rows if isinstance(e, dict) and isinstance(e.get("cs"), str)}
    return out | {(d, content_tag(e)) for d, e in rows
                  if isinstance(e, dict) and poisoned(e, limit)}


def content_tag(entry: Entry) -> str:
    """What a version is, as text (its kind, hash and link target)."""
    return f"={entry.get('t')}|{entry.get('h')}|{entry.get('l')}"


def sees(entry: Entry, vv: dict[str, int]) -> bool:
    """"Entries", `cs`: a delta's is covered by its deps or is an earlier push of its own
    writer (a carry names only content it saw). Not checked for a snapshot: its vector is
    lowered below suspect stretches (review round 16, EE2)."""
    raw = entry.get("cs")
    return raw is None or (isinstance(raw, str) and DOT.fullmatch(raw) is not None
                           and covered(raw, vv))


def poisoned(entry: Entry | None, limit: dict[str, int]) -> bool:
    """"Writer rules": a version a conflict resolution wrote carrying a late dot's content
    ("cs", the dot that first pushed it): it is late itself."""
    raw = entry.get("cs") if entry is not None else None
    return bool(limit) and isinstance(raw, str) and DOT.fullmatch(raw) is not None and \
        late_dot(raw, limit)


def pinned_segments(device: str, cut: Cutoff, segments: SegmentIndex,
                    open_named: Callable[[str], dict[str, Any]], hashes: dict[str, str]
                    ) -> set[str]:
    """"Writer rules": the segments of removed member ``device`` its removal vouches for: the
    one whose SHA-256 is the cutoff hash, then the one named by its "prev", and so on back
    (deltas and snapshots alike). The chain ends where a segment was compacted away (an honest
    snapshot covers it); a removal with hash null vouches for none. (As cloudguard's
    manifest._pinned.)"""
    out: set[str] = set()
    expect, seq = cut.hash, cut.seq
    while expect is not None and seq > 0:
        match: str | None = None
        payload: dict[str, Any] = {}
        for kind in ("d", "s"):
            name = f"m/{device}-{seq:012d}.{kind}"
            if name not in segments:
                continue
            try:
                payload = open_named(name)
            except Skip:
                continue
            if hashes.get(name) == expect:
                match = name
                break
        if match is None:
            break
        out.add(match)
        prev = payload.get("prev")
        expect = prev if isinstance(prev, str) else None
        seq -= 1
    return out


def load_manifest(remote: Path, chain: Chain) -> tuple[State, list[str]]:
    """"Reading the manifest", steps 1 to 3 (step 4, the device's stored vector, needs state
    this reader does not have: a copy of a rolled-back remote restores the older manifest).
    Returns the state and the segments skipped (with the reason)."""
    m_dir = remote / "m"
    d_dir = remote / "data"
    listed = {p.name for p in d_dir.iterdir()} if d_dir.is_dir() else set()
    segments: SegmentIndex = {}
    for path in sorted(m_dir.iterdir()) if m_dir.is_dir() else []:
        match = SEGMENT_NAME.fullmatch(f"m/{path.name}")
        if match is not None:  # other names in m/ are not segments and are ignored
            segments[f"m/{path.name}"] = (match.group(1), int(match.group(2)), match.group(3))
    hashes: dict[str, str] = {}  # SHA-256 of every segment opened
    skipped: list[str] = []
    cuts = dict(chain.removed)
    limit = {rid: cut.seq for rid, cut in cuts.items()}
    pinned: dict[str, set[str]] = {}  # removed member -> the segments its removal vouches for
    pinning = True  # while the pinned chains are being walked

    def open_named(name: str, late: bool = False) -> dict[str, Any]:
        """"Writer rules" and the segment checks, in the order format.md gives. ``late``: a
        removed member's segment past its cutoff is opened too (only to take places from)."""
        device, seq, kind = segments[name]
        writer = chain.writer_key(device)
        if writer is None:
            raise IntegrityFailure(f"manifest segment {name} was written by {device}, who is "
                                   "not a member of this vault")
        member = chain.members.get(device)
        if member is not None and member.kind != "device":
            raise IntegrityFailure(f"manifest segment {name} was written by recovery kit "
                                   f"{device}: a kit only ever adds a device, it never writes")
        cut = cuts.get(device)
        late = late and cut is not None and seq > cut.seq
        if cut is not None and not pinning and not late and name not in pinned.get(device,
                                                                                      set()):
            raise Skip(f"manifest segment {name} of removed member {device} is not on the "
                       "chain its removal recorded; refused")
        if cut is not None and seq > cut.seq and not late:
            raise Skip(f"manifest segment {name} was written by removed member {device} after "
                       "its removal; refused")
        blob = (remote / name).read_bytes()
        try:
            verify_segment(blob, chain.vault_id, name, writer)
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} has a bad signature") from exc
        pos, head_id = segment_head(blob)
        # "Void commits": a segment under a void commit is still read (writer rules apply)
        head = chain.commits.get(head_id) or chain.voided.get(head_id)
        if head is None:
            raise Skip(f"manifest segment {name} names commit {head_id[:16]}... that is not "
                       "verified; skipped")
        if head.pos != pos:
            raise IntegrityFailure(f"manifest segment {name} names commit {head_id[:16]}... "
                                   "at the wrong position")
        if device not in head.members:
            raise IntegrityFailure(f"manifest segment {name}: its writer was not a member at "
                                   "the commit it names")
        digest = hashlib.sha256(blob).hexdigest()
        if cut is not None and seq == cut.seq and cut.hash and digest != cut.hash:
            raise IntegrityFailure(f"manifest segment {name} is not the one its writer's "
                                   "removal recorded")
        kek = chain.keks.get(head.kek)
        if kek is None:  # its writer had not seen a re-encryption that deleted that key
            raise Skip(f"manifest segment {name} is sealed under the key of {head.name}, "
                       "which this kit cannot open (its writer had not seen a re-encryption); "
                       "left out, as cloudguard leaves it out until its writer writes it again")
        try:
            payload = open_segment(kek, chain.vault_id, name, blob)
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} failed authentication") from exc
        # device, seq and kind must match the object name
        expected = (device, seq, {"d": "delta", "s": "snapshot"}[kind])
        if (payload.get("device"), payload.get("seq"), payload.get("kind")) != expected or (
                not is_int(payload.get("seq"))):
            raise IntegrityFailure(f"manifest segment {name} does not match its name")
        hashes[name] = digest
        return payload

    for device, cut in sorted(cuts.items()):
        pinned[device] = pinned_segments(device, cut, segments, open_named, hashes)
    pinning = False

    # 1. open every snapshot and merge them
    state = State(limit=limit, keks=chain.keks, remote=remote)
    held: set[str] = set()  # devices with a snapshot skipped
    for name, (device, own_seq, kind) in sorted(segments.items()):
        if kind != "s":
            continue
        try:
            payload = open_named(name)
        except Skip as exc:
            skipped.append(str(exc))
            held.add(device)
            continue
        try:
            snapshot = State(parse_vv(payload.get("ctx")),
                             parse_snapshot_paths(payload.get("paths")))
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} is malformed") from exc
        if snapshot.ctx.get(device) != own_seq:
            raise IntegrityFailure(f"manifest segment {name}: its version vector does not name "
                                   "its own seq")
        hearsay = any(snapshot.ctx.get(rid, 0) > seq for rid, seq in limit.items())
        removed: set[tuple[str, str]] = set()
        if hearsay:
            # "Writer rules": late writes of a removed member are left out, not refused
            skipped.append(f"manifest segment {name} holds writes of a removed member past "
                           "its removal; they are left out (they are in the vault's history)")
            snapshot.ctx = clamp(snapshot.ctx, limit)
            unclamped = snapshot.paths
            snapshot.paths = {p: {d: unmoved(e, limit, listed) for d, e in sibs.items()
                                  if not late_dot(d, limit) and not poisoned(e, limit)}
                              for p, sibs in snapshot.paths.items()}
            try:
                back = removed_late(payload.get("attic"), limit)
                rc = carriers_of(payload)
            except BadData as exc:
                raise IntegrityFailure(f"manifest segment {name} is malformed") from exc
            moves = carried(unclamped, payload.get("attic"), limit)
            for where, versions in back.items():  # a late edit must not become a delete
                live = unclamped.get(where, {})  # ... while the late version is still there
                gone = payload.get("attic", {}).get(where, {})  # a late version deleted since
                now = snapshot.paths.get(where, {})
                versions = {d: e for d, e in versions.items()
                            if late_chain(rb_of(payload, where, d), live, gone, limit, rc, moves,
                                          content_tag(e))
                            and not descends(rb_of(payload, where, d), now, gone, limit)}
                if versions:
                    snapshot.paths[where] = {**now, **{d: unmoved(e, limit, listed)
                                                       for d, e in versions.items()}}
        attic = payload.get("attic")
        for where, rows in attic.items() if isinstance(attic, dict) else ():
            removed |= {(where, d) for d in (rows if isinstance(rows, dict) else ())
                        if d not in snapshot.paths.get(where, {})}  # not brought back
            for d, row in rows.items() if isinstance(rows, dict) else ():
                if isinstance(row, dict) and isinstance(row.get("e"), dict) and DOT.fullmatch(d):
                    state.kept.setdefault(where, {})[d] = row["e"]
        state.gone |= removed
        if not state.dominates(snapshot.ctx) or any(
                snapshot.ctx.get(dev, 0) > lo for dev, st in state.suspect.items()
                for lo, _hi in st):
            state.merge(snapshot, hearsay, device, removed)

    # 1b. deltas in a suspect stretch, in order ("Suspect stretches")
    for name, (device, seq, kind) in sorted(segments.items(), key=lambda i: i[1][:2]):
        if kind != "d" or not state.in_suspect(f"{device}:{seq}") or late_dot(
                f"{device}:{seq}", limit):
            continue
        try:
            payload = open_named(name)
            ops = [{k: v for k, v in op.items() if k != "e" or (op["p"], f"{device}:{seq}")
                    not in state.gone} for op in parse_ops(payload.get("ops"))]
            state.apply(f"{device}:{seq}", ops,
                        firm(clamp(parse_vv(payload.get("deps")), limit), payload))
        except Skip as exc:
            skipped.append(str(exc))
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} is malformed") from exc

    # 2. apply the deltas the merged vector does not cover, in causal order: D:S applies when
    #    the vector holds D:S-1 and dominates the delta's deps
    pending: dict[str, dict[int, str]] = {}
    for name, (device, seq, kind) in segments.items():
        if kind == "d" and seq > state.ctx.get(device, 0):
            if device in limit and seq > limit[device]:
                skipped.append(f"manifest segment {name} was written by removed member "
                               f"{device} after its removal; refused")
                continue
            pending.setdefault(device, {})[seq] = name
    opened: dict[str, tuple[dict[str, int], list[dict[str, Any]]]] = {}
    firmed: dict[str, dict[str, int]] = {}  # what each delta's writer had applied itself
    progress = True
    while progress:
        progress = False
        for device in sorted(pending):
            seq = state.ctx.get(device, 0) + 1
            found = pending[device].get(seq)
            if found is None:
                continue
            if found not in opened:
                try:
                    payload = open_named(found)
                except Skip as exc:  # the device's later deltas cannot apply either
                    skipped.append(str(exc))
                    pending[device] = {}
                    continue
                try:
                    deps = parse_vv(payload.get("deps"))
                    opened[found] = (deps, parse_ops(payload.get("ops")))
                except BadData as exc:
                    raise IntegrityFailure(f"manifest segment {found} is malformed") from exc
                check_history(found, payload, deps, hashes, seq)
                own = {**deps, device: seq - 1}  # an earlier push of its own writer
                if not all(sees(op["e"], own) for op in opened[found][1]
                           if isinstance(op.get("e"), dict)):
                    raise IntegrityFailure(f"manifest segment {found}: a resolution carries "
                                           "content its writer had not seen")
                opened[found] = (clamp(deps, limit), opened[found][1])
                firmed[found] = firm(opened[found][0], payload)
            deps, ops = opened[found]
            if not state.dominates({d: s for d, s in deps.items() if d != device}):
                continue
            state.apply(f"{device}:{seq}", ops, firmed[found])
            state.ctx[device] = seq
            del pending[device][seq]
            progress = True
    # 3. a delta that can never apply means a segment is missing
    refused = sorted(n for n, (dev, seq, kind) in segments.items()
                     if kind == "s" and dev in limit and seq > limit[dev])
    stuck = {d: rest for d, rest in sorted(pending.items()) if rest and d not in held}
    if stuck:
        device, nxt = first_missing(stuck, opened, state.ctx)
        if nxt in stuck.get(device, {}):  # none found: say which delta waits
            raise IntegrityFailure(f"manifest segment {stuck[device][nxt]} depends on a "
                                   "segment that is missing")
        if refused:  # "Writer rules": a late snapshot replaced it (review round 20, II1)
            raise IntegrityFailure(
                f"manifest segment m/{device}-{nxt:012d}.d is missing; the snapshot that "
                f"replaced it may be {refused[0]}, written by a removed member after its "
                "removal (refused): a pull or push by a current member that holds the "
                "vault writes a snapshot of its own")
        raise IntegrityFailure(f"manifest segment m/{device}-{nxt:012d}.d is missing: the "
                               "manifest was truncated or a segment was deleted")
    # "Entry signatures": every version restored was signed by the writer of its dot
    for path, siblings in state.paths.items():
        for dot, entry in siblings.items():
            check_entry_signature(chain, path, dot, entry)
    late = sorted((n for n, (device, seq, _k) in segments.items()
                   if device in limit and seq > limit[device]), key=segments.__getitem__)
    adopt_places(state, late, listed, lambda n: open_named(n, late=True),
                 lambda path, entry: blob_matches(remote, chain.keks, path, entry), skipped)
    late_ops: dict[str, dict[str, dict[str, Any]]] = {}
    for name in late:  # "Writer rules": late writes are kept in the history, never live
        device, seq, kind = segments[name]
        if kind != "d":
            continue
        try:
            payload = open_named(name, late=True)
            ops = parse_ops(payload.get("ops"))
            deps = parse_vv(payload.get("deps"))
        except (Skip, Failure, BadData):
            continue  # already reported as refused; only the history misses it
        # only the dots its writer had seen: a removed member could name an honest edit it
        # never saw (dot names are predictable) and hide it (review round 20, JJ1)
        late_ops[f"{device}:{seq}"] = {op["p"]: {**op, "rm": [
            d for d in op.get("rm", []) if seen_by(dot_parts(d), device, seq, deps)]}
            for op in ops}
        for op in ops:
            if isinstance(op.get("e"), dict):
                state.kept.setdefault(op["p"], {}).setdefault(f"{device}:{seq}", op["e"])
    replaced_by_unseen(state, late_ops)
    return state, skipped


def firm(deps: dict[str, int], payload: dict[str, Any]) -> dict[str, int]:
    """What a delta's writer had applied itself: its deps where "dh" names the segment (as
    cloudguard's manifest.segments.firm)."""
    dh = payload.get("dh")
    return {d: s for d, s in deps.items() if isinstance(dh, dict) and d in dh}


def seen_by(dot: tuple[str, int], writer: str, seq: int, deps: dict[str, int]) -> bool:
    """Had the writer of delta ``writer:seq`` seen ``dot``: one of its own earlier ones or one
    its ``deps`` cover (as cloudguard's manifest.unseen)."""
    return dot[1] < seq if dot[0] == writer else dot[1] <= deps.get(dot[0], 0)


def replaced_by_unseen(state: State, late_ops: dict[str, dict[str, dict[str, Any]]]) -> None:
    """"Version history": a delta of this reader removed a late version it never held (its
    delta was refused). Where that removal is an honest edit, what the late version replaced
    leaves the live tree too, as on a device that applied both (review round 20, II2; as
    cloudguard's manifest.unseen)."""
    todo = list(state.unseen)
    seen: set[tuple[str, str]] = set()
    while todo:
        path, late, honest, deps = todo.pop()
        writer, _, at = honest.partition(":")
        if (path, late) in seen:
            continue
        seen.add((path, late))
        op = late_ops.get(late, {}).get(path)
        if op is None or not isinstance(op.get("e"), dict):
            continue
        live = state.paths.get(path, {})
        gone = {d: {"e": e} for d, e in state.kept.get(path, {}).items()}
        for old in op.get("rm", []):
            if old == honest:
                continue
            if old not in live:  # a chain of late edits: follow it
                if late_dot(old, state.limit):
                    todo.append((path, old, honest, deps))
                continue
            if not seen_by(dot_parts(old), writer, int(at), deps):
                continue  # the honest editor never saw it: the late op's word alone (KK1)
            if late_dot(old, state.limit) or undoes(honest, {"e": op["e"]}, live, gone,
                                                    content_tag(live[old])):
                continue  # a delete, rename away or touch of it: what it replaced stays
            state.kept.setdefault(path, {})[old] = live.pop(old)
        if path in state.paths and not live:
            del state.paths[path]


def adopt_places(state: State, late: list[str], listed: set[str],
                 open_late: Callable[[str], dict[str, Any]],
                 matches: Callable[[str, Entry], bool], warnings: list[str]) -> None:
    """"Moves": a file version whose object is not listed takes the place that a removed
    member's segment past its cutoff (``late``, read in order) moved it to, if that object is
    listed and its blob decrypts to the version's signed "h". A re-encryption deletes the
    objects it moved away from at once; if its writer is retired meanwhile, its moves are
    late and only its refused segments name the new objects (round 7, V1). A place whose blob
    does not match is never taken: a removed member's move to junk must not stand in for an
    object the provider hides. Nothing is read when every object is listed. (As cloudguard's
    manifest.adopt_places.)"""
    missing = {(p, d) for p, sibs in state.paths.items() for d, e in sibs.items()
               if e.get("t") == "f" and str(e.get("o")) not in listed}
    adopted = 0
    for name in late if missing else []:
        try:
            places = stated_places(open_late(name))
        except (Skip, IntegrityFailure) as exc:
            warnings.append(f"{exc}; the places it states are not taken")
            continue
        except BadData:
            warnings.append(f"manifest segment {name} is malformed; the places it states are "
                            "not taken")
            continue
        for path, dot, loc in places:
            where = loc.get("o")
            if (path, dot) not in missing or not isinstance(where, str) or where not in listed:
                continue
            entry = {k: v for k, v in state.paths[path][dot].items()
                     if k not in LOCATION_FIELDS and k not in MOVE_FIELDS} | loc
            if not matches(path, entry):
                warnings.append(f"manifest segment {name} moves {q(path)} to data/{where}, "
                                "which does not hold the version its writer signed; not taken")
                continue
            state.paths[path][dot] = entry
            missing.discard((path, dot))
            adopted += 1
    if adopted:
        warnings.append(f"{adopted} versions whose objects are gone take the place a removed "
                        "member's segment past its cutoff moved them to")


def stated_places(payload: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, dot, location) of every move a segment states: a delta's "reloc"s, or the
    location fields of a snapshot's entries."""
    if payload.get("kind") == "delta":
        return [(op["p"], dot, loc) for op in parse_ops(payload.get("ops"))
                for dot, loc in op.get("reloc", {}).items()]
    return [(path, dot, {k: entry[k] for k in LOCATION_FIELDS if k in entry})
            for path, sibs in parse_snapshot_paths(payload.get("paths")).items()
            for dot, entry in sibs.items()]


def blob_matches(remote: Path, keks: dict[str, bytes], path: str, entry: Entry) -> bool:
    """Does the blob ``entry`` names decrypt, to its end, to the plaintext its signed "h"
    names? Streamed to nowhere, one chunk at a time."""
    try:
        check_entry(path, entry)
        kek = keks.get(entry["g"])
        if kek is None:
            return False
        file_id = bytes.fromhex(entry["i"])
        dek = unwrap_dek(kek, unb64(entry["k"]), file_id)
        with open(remote / "data" / entry["o"], "rb") as src, open(os.devnull, "wb") as sink:
            src.seek(entry["a"])
            decrypt_blob(LimitedReader(src, entry["n"]), dek, file_id, entry["h"], entry["s"],
                         sink)
    except (BadData, IntegrityFailure, OSError, OverflowError, ValueError):
        return False
    return True


def check_history(name: str, payload: dict[str, Any], deps: dict[str, int],
                  hashes: dict[str, str], seq: int) -> None:
    """"Manifest payloads": "prev" is the SHA-256 of the writer's own previous segment and
    "dh" the SHA-256 of segments it depends on; a different hash for a segment we opened means
    a replaced segment or a fork (extra check for "prev", which format.md does not require a
    reader to compare)."""
    device = payload["device"]
    for kind in ("d", "s"):
        before = hashes.get(f"m/{device}-{seq - 1:012d}.{kind}")
        if before is not None and payload.get("prev") not in (None, before):
            raise IntegrityFailure(f"manifest segment {name} does not follow its writer's "
                                   "previous segment: a segment was replaced")
    dh = payload.get("dh")
    if dh is None:
        return
    if not isinstance(dh, dict):
        raise IntegrityFailure(f"manifest segment {name} has malformed dependencies")
    for dev, digest in dh.items():
        dep = deps.get(dev)
        if dep is None or not isinstance(digest, str):
            raise IntegrityFailure(f"manifest segment {name} has malformed dependencies")
        for kind in ("d", "s"):
            mine = hashes.get(f"m/{dev}-{dep:012d}.{kind}")
            if mine is not None and mine != digest:
                raise IntegrityFailure(f"fork: manifest segment {name} depends on a "
                                       f"m/{dev}-{dep:012d}.{kind} other than the one read "
                                       "here")


# --- entries and paths -------------------------------------------------------------------


ESC = "\u241b"  # "Paths": ESC + two hex digits is a byte that is not UTF-8; ESC ESC is ESC


def on_disk(path: str) -> str:
    """A manifest path as the name os functions take (undecodable bytes as the lone
    surrogates of Python's surrogateescape); raises IntegrityFailure if an escape is bad."""
    if ESC not in path:
        return path
    out: list[str] = []
    i = 0
    while i < len(path):
        if path[i] != ESC:
            out.append(path[i])
            i += 1
        elif path[i + 1:i + 2] == ESC:
            out.append(ESC)
            i += 2
        elif re.fullmatch("[89a-f][0-9a-f]", path[i + 1:i + 3]):
            out.append(chr(0xDC00 + int(path[i + 1:i + 3], 16)))
            i += 3
        else:
            raise IntegrityFailure(f"the manifest holds a malformed name escape in {q(path)}")
    return "".join(out)


def check_path(path: str) -> None:
    """Paths are /-separated, relative, with no empty, "." or ".." component, and every
    name escape well formed."""
    try:
        path.encode("utf-8")  # strict: no lone surrogates
    except UnicodeEncodeError as exc:
        raise IntegrityFailure(f"the manifest holds a path that is not UTF-8: {q(path)}") from exc
    if (not path or path.startswith("/") or "\x00" in path
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise IntegrityFailure(f"the manifest holds an unsafe path {q(path)}")
    on_disk(path)


def check_entry(path: str, entry: Entry) -> None:
    """The ENTRY fields this reader uses, with their types (see the table in format.md)."""
    kind = entry.get("t")

    def need(key: str, ok: bool) -> None:
        if not ok:
            raise IntegrityFailure(f"the manifest entry for {q(path)} has a malformed {key!r}")

    need("t", kind in ("f", "d", "l"))
    need("m", "m" not in entry or is_int(entry["m"]))  # conflicts are ordered by it
    for key in ("lc", "pt"):  # so are these: the Lamport time of the content, push time
        need(key, key not in entry or (is_int(entry[key]) and entry[key] >= 0))
    need("wb", "wb" not in entry or is_hex(entry["wb"], 16))
    need("cs", "cs" not in entry or (isinstance(entry["cs"], str)
                                     and DOT.fullmatch(entry["cs"]) is not None))
    if kind == "f":
        for key in ("s", "m", "a", "n"):
            need(key, is_int(entry.get(key)))
        need("g", is_hex(entry.get("g"), 64))  # kek_commit of the wrapping KEK
        # kek_commit of the KEK the DEK was first wrapped under (who could ever read it):
        # informational here, but it must be well formed if present
        need("w", "w" not in entry or is_hex(entry["w"], 64))
        need("s", entry["s"] >= 0)
        need("a", entry["a"] >= 0)
        need("n", entry["n"] >= 0)
        need("x", is_int(entry.get("x")) and 0 <= entry["x"] <= 0o7777)
        need("h", is_hex(entry.get("h"), 64))
        need("o", is_hex(entry.get("o"), 32))  # also keeps data/<o> inside the copy
        need("i", is_hex(entry.get("i"), 32))
        need("k", isinstance(entry.get("k"), str))
        need("r", "r" not in entry or (is_int(entry["r"]) and entry["r"] >= 0))
    elif kind == "d":
        need("x", "x" not in entry or (is_int(entry["x"]) and 0 <= entry["x"] <= 0o7777))
    else:
        target = entry.get("l")
        need("l", isinstance(target, str) and target != "" and "\x00" not in target)
        try:
            str(target).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise IntegrityFailure(f"the link target of {q(path)} is not UTF-8") from exc


# --- siblings ----------------------------------------------------------------------------
#
# "Reading the manifest", step 5: a path with several dots of different content is a conflict.
# Some details below are not in format.md; they follow cloudguard's own resolution so that
# this reader restores the same names a device would: content is (t, h, l); the winner is the
# sibling with the largest (lc, m, dot) where dots compare as strings; each other distinct
# content becomes a copy named NAME (conflict YYYY-MM-DD HHMMSS LABEL).EXT, from its own mtime
# (or, for a folder, its push time `pt`) in UTC and the member name of `wb` (else the dot's
# device) (numbered "LABEL 2", "LABEL 3", ... when that name is taken).
# Siblings of equal content collapse to the one with the highest (seq, dot).


def content_key(entry: Entry) -> tuple[Any, ...]:
    return (entry.get("t"), entry.get("h"), entry.get("l"))


def conflict_name(path: str, when_ns: int, label: str, taken: set[str]) -> str:
    """NAME (conflict YYYY-MM-DD HHMMSS LABEL[ N]).EXT, the first such name not taken."""
    head, _, base = path.rpartition("/")
    stem, ext = posixpath.splitext(base)
    if not stem:
        stem, ext = base, ""
    try:
        # float seconds, as cloudguard computes them (so the names agree to the second)
        stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime(when_ns / 1e9))
    except (OverflowError, OSError, ValueError) as exc:
        raise IntegrityFailure(f"the manifest entry for {q(path)} has an impossible mtime"
                               ) from exc
    clean = "".join(c for c in label if c.isalnum() or c in "-_")[:24] or "device"
    for number in range(1, 10_000):
        extra = f" {number}" if number > 1 else ""
        short, tail = stem, ext
        while len((short + f" (conflict {stamp} {clean}{extra})" + tail).encode()) > 255:
            if short:  # shorten the stem to fit 255 bytes, keeping the extension ...
                short = short[:-1]
            else:  # ... unless the extension alone is too long
                tail = tail[:-1]
        name = f"{short} (conflict {stamp} {clean}{extra}){tail}"
        full = f"{head}/{name}" if head else name
        if full not in taken:
            return full
    raise Failure(f"too many conflict copies of {q(path)}")


RESOLVED = "resolved"  # stands for the dot a device would give its resolving delta


def resolve_siblings(state: State, labels: dict[str, str]) -> None:
    ops: list[tuple[str, Entry, list[str]]] = []
    taken = set(state.paths)
    for path in sorted(state.paths):
        siblings = state.paths[path]
        if len({content_key(e) for e in siblings.values()}) < 2:
            continue
        order = sorted(siblings.items(),
                       key=lambda kv: (kv[1].get("lc", 0), kv[1].get("m", 0), kv[0]))
        winner = order[-1][1]
        ops.append((path, winner, sorted(siblings)))
        seen = {content_key(winner)}
        for dot, entry in order[:-1]:
            if content_key(entry) in seen:
                continue
            seen.add(content_key(entry))
            device = str(entry.get("wb") or dot_parts(dot)[0])  # who wrote this content
            when = int(entry.get("m") or int(entry.get("pt", 0)) * 10**9)
            name = conflict_name(path, when, labels.get(device, device[:8]), taken)
            taken.add(name)
            ops.append((name, entry, []))
    for path, entry, rm in ops:
        siblings = state.paths.setdefault(path, {})
        for old in rm:
            siblings.pop(old, None)
        siblings[RESOLVED] = entry


def final_view(state: State) -> dict[str, Entry]:
    """One entry per path: equal siblings collapse to the highest (seq, dot)."""
    out: dict[str, Entry] = {}
    for path, siblings in state.paths.items():
        if RESOLVED in siblings:
            out[path] = siblings[RESOLVED]
            continue
        best = max(siblings, key=lambda d: (dot_parts(d)[1], d))
        out[path] = siblings[best]
    return out


def check_tree(view: dict[str, Entry]) -> None:
    """Every parent of a path must be a folder (or absent, then made as a plain folder): we
    never write through a symlink or into a file."""
    for path in sorted(view):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in view and view[parent]["t"] != "d":
                what = "a symlink" if view[parent]["t"] == "l" else "a file"
                raise Failure(f"cannot restore {q(path)}: its parent {q(parent)} is {what} in "
                              "the manifest")


# --- writing the output ------------------------------------------------------------------


def safe_mkdirs(root: Path, rel_dir: str) -> Path:
    """Create the folders of rel_dir under root, refusing any component that is not a real
    folder (a symlink is never followed). Only we write under root (a private 0700 folder)."""
    current = root
    for part in [p for p in rel_dir.split("/") if p]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o700)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise Failure(f"refusing to write inside {q(str(current))}: not a folder")
    return current


def write_file(stage: Path, remote: Path, path: str, entry: Entry, chain: Chain,
               src: BinaryIO) -> None:
    """Decrypt one file to a temp file beside its target, verify, then rename into place."""
    parent = safe_mkdirs(stage, posixpath.dirname(path))
    target = parent / posixpath.basename(path)
    kek = chain.keks.get(entry["g"])
    where = f"{q(path)} (data/{entry['o']})"
    if kek is None:
        raise IntegrityFailure(f"{where}: its key is wrapped under the KEK {entry['g'][:16]}..., "
                               "which this kit cannot open")
    try:
        dek = unwrap_dek(kek, unb64(entry["k"]), bytes.fromhex(entry["i"]))
    except BadData as exc:
        raise IntegrityFailure(f"{where}: the wrapped file key failed to unwrap") from exc
    tmp = parent / f".cg-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            src.seek(entry["a"])
            try:
                decrypt_blob(LimitedReader(src, entry["n"]), dek, bytes.fromhex(entry["i"]),
                             entry["h"], entry["s"], out)
            except BadData as exc:
                raise IntegrityFailure(f"{where} failed authentication: the data was "
                                       "tampered with, truncated or swapped") from exc
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), entry["x"] & 0o7777)
            try:
                os.utime(out.fileno(), ns=(entry["m"], entry["m"]))
            except OverflowError as exc:
                raise Failure(f"{q(path)}: the manifest's mtime is out of range") from exc
        if os.path.lexists(target):
            raise Failure(f"refusing to overwrite {q(path)} in the staging folder")
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def set_dir_mode(path: Path, mode: int) -> None:
    """chmod a folder we made, without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)


def force_remove(tree: Path) -> None:
    """Remove a staging tree, even folders whose restored mode forbids writing."""
    for dirpath, dirnames, _files in os.walk(tree):
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(tree, ignore_errors=True)


def build(stage: Path, remote: Path, view: dict[str, Entry], chain: Chain) -> None:
    """Everything into the staging folder: folders, then files, then symlinks."""
    for path in sorted(p for p, e in view.items() if e["t"] == "d"):
        safe_mkdirs(stage, path)
    # files, one data object at a time, in offset order
    by_object: dict[str, list[str]] = {}
    for path, entry in view.items():
        if entry["t"] == "f":
            by_object.setdefault(entry["o"], []).append(path)
    for object_id in sorted(by_object):
        paths = sorted(by_object[object_id], key=lambda p: (view[p]["a"], p))
        data_path = remote / "data" / object_id
        if not data_path.is_file():
            raise IntegrityFailure(f"data/{object_id} is missing (it holds {q(paths[0])})")
        with open(data_path, "rb") as src:
            for path in paths:
                write_file(stage, remote, path, view[path], chain, src)
    for path in sorted(p for p, e in view.items() if e["t"] == "l"):
        entry = view[path]
        parent = safe_mkdirs(stage, posixpath.dirname(path))
        link = parent / posixpath.basename(path)
        os.symlink(entry["l"], link)  # fails if anything is there already
        if "m" in entry:
            os.utime(link, ns=(entry["m"], entry["m"]), follow_symlinks=False)
    # folder modes last and deepest first, so a read-only folder does not block its contents;
    # top-level folders get theirs after the move (moving a folder needs it to be writable)
    for path in sorted((p for p, e in view.items() if e["t"] == "d" and "/" in p and "x" in e),
                       key=lambda p: -p.count("/")):
        set_dir_mode(stage / path, view[path]["x"])


def history_view(state: State) -> dict[str, tuple[str, str, Entry]]:
    """"Version history": every kept file version that is not current, by the name it is
    written under (PATH/STAMP DEVICE-SEQ.EXT, STAMP its mtime in UTC), with its path and
    dot."""
    out: dict[str, tuple[str, str, Entry]] = {}
    for path, versions in sorted(state.kept.items()):
        for dot, entry in sorted(versions.items()):
            if dot in state.paths.get(path, {}) or entry.get("t") != "f":
                continue
            device, seq = dot_parts(dot)
            m = entry.get("m")
            stamp = "undated"
            if isinstance(m, int) and 0 <= m < 2**62:
                stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(m / 1e9))
            ext = posixpath.splitext(posixpath.basename(path))[1]
            name = f"{path}/{stamp} {device[:8]}-{seq}{ext if len(ext) <= 16 else ''}"
            out[name] = (path, dot, entry)
    return out


def restore_history(remote: Path, state: State, chain: Chain, out: Path) -> int:
    """Write every earlier version that checks into OUT (a missing or empty folder). The
    history is best effort: a version whose object was collected, whose key this kit cannot
    open, or whose signature or content fails its check is left out with a warning."""
    view: dict[str, Entry] = {}
    for name, (path, dot, entry) in history_view(state).items():
        try:
            check_path(path)
            check_entry(path, entry)
            check_entry_signature(chain, path, dot, entry)
            view[on_disk(name)] = entry
        except (Failure, BadData) as exc:
            print(f"{PROG}: warning: version {dot} of {q(path)} is left out: {exc}",
                  file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    written = 0
    for name, entry in sorted(view.items()):
        data_path = remote / "data" / str(entry["o"])
        try:
            if not data_path.is_file():
                raise Failure(f"data/{entry['o']} is gone (collected or re-encrypted)")
            with open(data_path, "rb") as src:
                write_file(out, remote, name, entry, chain, src)
            written += 1
        except Failure as exc:
            print(f"{PROG}: warning: {q(name)} is left out: {exc}", file=sys.stderr)
    return written


def restore(remote: Path, kit_path: Path, out: Path, passphrase_env: str,
            history: Path | None = None) -> dict[str, int]:
    if not remote.is_dir():
        raise Failure(f"{remote} is not a folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Failure(f"{out} must be an empty or missing folder")
    if history is not None and history.exists() and (
            not history.is_dir() or any(history.iterdir())):
        raise Failure(f"{history} must be an empty or missing folder")
    # everything that can fail on the vault's contents before anything is written ...
    vault = read_descriptor(remote)
    kit = read_kit(kit_path, passphrase_env)
    chain = load_keys(remote, vault, kit)
    state, skipped = load_manifest(remote, chain)
    for reason in chain.warnings + skipped:
        print(f"{PROG}: warning: {reason}", file=sys.stderr)
    for path, siblings in state.paths.items():
        check_path(path)
        for entry in siblings.values():
            check_entry(path, entry)
    resolve_siblings(state, chain.labels)
    view = final_view(state)
    for path in view:
        check_path(path)  # conflict names too
    check_tree(view)
    view = {on_disk(p): ({**e, "l": on_disk(e["l"])} if e["t"] == "l" else e)
            for p, e in view.items()}
    # ... then decrypt and verify everything into a private staging folder inside OUT ...
    made_out = not out.exists()
    if made_out:
        os.mkdir(out)
    top = {p.split("/")[0] for p in view}
    stage_name = f".cloudguard-decrypt-{secrets.token_hex(8)}"
    while stage_name in top:
        stage_name = f".cloudguard-decrypt-{secrets.token_hex(8)}"
    stage = out / stage_name
    moved: list[str] = []
    try:
        os.mkdir(stage, 0o700)
        build(stage, remote, view, chain)
        # ... and only then move the top-level entries into OUT (renames on one file system)
        for name in sorted(os.listdir(stage)):
            if os.path.lexists(out / name):
                raise Failure(f"{q(str(out / name))} appeared while restoring")
            os.rename(stage / name, out / name)
            moved.append(name)
        os.rmdir(stage)
        for path, entry in view.items():
            if entry["t"] == "d" and "/" not in path and "x" in entry:
                set_dir_mode(out / path, entry["x"])
    except BaseException:
        for name in reversed(moved):  # undo: nothing partial is left in OUT
            if os.path.lexists(out / name) and not os.path.lexists(stage / name):
                os.rename(out / name, stage / name)
        force_remove(stage)
        if made_out:
            try:
                os.rmdir(out)
            except OSError:
                pass
        raise
    kinds = [e["t"] for e in view.values()]
    earlier = 0 if history is None else restore_history(remote, state, chain, history)
    return {"files": kinds.count("f"), "folders": kinds.count("d"), "links": kinds.count("l"),
            "earlier": earlier}


# --- command line ------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{PROG}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Restore a cloudguard vault (format 2) from a "
                    "local copy of its remote folder and a recovery kit, without cloudguard.")
    parser.add_argument("--remote-dir", required=True, type=Path,
                        help="a local copy of the remote folder (holds cloudguard.json)")
    parser.add_argument("--kit", required=True, type=Path, help="the recovery kit (JSON)")
    parser.add_argument("--out", required=True, type=Path,
                        help="an empty or missing folder to restore into")
    parser.add_argument("--passphrase-env", default="CLOUDGUARD_KIT_PASSPHRASE", metavar="VAR",
                        help="environment variable holding the kit passphrase (default "
                             "%(default)s; prompts when unset)")
    parser.add_argument("--history", type=Path, metavar="DIR",
                        help="also write every earlier version that can still be read into "
                             "DIR (an empty or missing folder), as DIR/PATH/STAMP DEVICE-SEQ")
    args = parser.parse_args(argv)
    try:
        counts = restore(args.remote_dir, args.kit, args.out, args.passphrase_env,
                         args.history)
    except Failure as exc:
        kind = "integrity failure" if isinstance(exc, IntegrityFailure) else "error"
        message = " ".join(str(exc).split("\n"))
        print(f"{PROG}: {kind}: {message}; nothing was written", file=sys.stderr)
        return exc.exit_code
    except BadData:  # a format check outside the places that name their object
        print(f"{PROG}: integrity failure: malformed vault data; nothing was written",
              file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"{PROG}: error: {exc}; nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 1
    print(f"restored {counts['files']} files, {counts['folders']} folders and "
          f"{counts['links']} symlinks into {args.out}")
    if args.history is not None:
        print(f"restored {counts['earlier']} earlier file versions into {args.history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
