#!/usr/bin/env python3
"""cloudguard-decrypt: restore a cloudguard vault without cloudguard.

This is a single, self-contained reader of cloudguard format version 1, written from the
normative specification docs/format.md and nothing else. It needs Python 3.11+ and the
``cryptography`` package. It exists for two reasons:

* an escape hatch: if cloudguard ever disappears, a copy of the remote folder, a recovery kit
  and its passphrase are enough to get every file back;
* an independent verifier: a second implementation that agrees with the first on real vaults
  is evidence that the specification is complete and correct.

Usage::

    python3 cloudguard-decrypt.py --remote-dir COPY_OF_REMOTE --kit KIT.json --out OUTPUT \\
        [--passphrase-env VAR]

COPY_OF_REMOTE is a local copy of the remote folder (for example ``rclone copy remote:path
COPY``). The passphrase of the kit is read from the environment variable VAR (default
CLOUDGUARD_PASSPHRASE) or, when that is unset or empty, asked for on the terminal. OUTPUT must
be an empty or missing folder.

Exit codes: 0 everything was restored; 3 an integrity failure (tampered, truncated, swapped or
missing data; the message names the file or object); 1 any other error (also bad arguments).
On any failure nothing is left in OUTPUT: everything is first decrypted and verified in a
private staging folder inside OUTPUT and only moved into place once all of it has passed.

The sections below follow docs/format.md; section names are quoted in the comments so an
auditor can read the two side by side. Where this reader checks more than the specification
asks, the comment says so ("extra check"). A few details are not (yet) in format.md; this
reader follows cloudguard's code for them and says so: the recovery-kit fields, and the exact
ordering and naming rules of conflict resolution.

Limits: a stand-alone reader has no memory of what it saw before, so it cannot tell a copy
of a rolled-back remote (or one whose newest manifest segments were deleted) from an honest
older one ("Reading the manifest", step 4). A segment missing from the middle of a device's
sequence is detected.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
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

VERSION = 1
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


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadData() from exc


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
    """AAD_i = "cloudguard/v1/chunk" || 0x01 || FILE_ID || u64be(i) || u8(final_i)"""
    return (b"cloudguard/v1/chunk" + bytes([VERSION]) + file_id + struct.pack(">Q", index)
            + bytes([1 if final else 0]))


def decrypt_blob(src: LimitedReader, dek: bytes, file_id: bytes, sha256_hex: str,
                 size: int, out: BinaryIO) -> None:
    """"Reading a blob", steps 1 to 7, streaming one chunk at a time (flat memory).

    Writes plaintext to ``out``; the caller must treat it as unverified until this returns.
    """
    # 1. the 84-byte header, complete, starting with MAGIC
    header = src.read_exact(BLOB_HEADER_SIZE)
    if len(header) != BLOB_HEADER_SIZE or header[:4] != BLOB_MAGIC:
        raise BadData()
    blob_file_id, commit, length_ct = header[4:20], header[20:52], header[52:84]
    # 2. the file id the manifest expects (a swapped blob fails here)
    if not hmac.compare_digest(blob_file_id, file_id):
        raise BadData()
    # 3. key commitment, compared before anything is decrypted
    okm = hkdf(dek, b"cloudguard/v1/blob", 64, salt=file_id)
    key = okm[:32]
    if not hmac.compare_digest(commit, okm[32:64]):
        raise BadData()
    # 4. the sealed length: u64be(size) || u64be(padded)
    plain_size, padded = struct.unpack(
        ">QQ", gcm_open(key, LENGTH_NONCE, length_ct,
                        b"cloudguard/v1/length" + bytes([VERSION]) + file_id))
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
    """KW          = HKDF(ikm = KEK, info = "cloudguard/v1/dek-wrap")
    WRAPPED_DEK = NONCE || GCM(KW, NONCE, DEK, "cloudguard/v1/dek" || 0x01 || FILE_ID)"""
    if len(wrapped) != 12 + KEY_SIZE + 16 or len(file_id) != 16:
        raise BadData()
    try:
        dek = AESGCM(hkdf(kek, b"cloudguard/v1/dek-wrap")).decrypt(
            wrapped[:12], wrapped[12:], b"cloudguard/v1/dek" + bytes([1]) + file_id)
    except InvalidTag as exc:
        raise BadData() from exc
    if len(dek) != KEY_SIZE:
        raise BadData()
    return dek


# --- manifest segments -------------------------------------------------------------------
#
# SEGMENT = HEADER || GCM(KM, NONCE, BODY, HEADER || utf8(NAME))
# HEADER  = "CGM" || 0x01 || u32be(generation) || NONCE

SEGMENT_MAGIC = b"CGM" + bytes([VERSION])
SEGMENT_HEADER_SIZE = 20
MAX_SEGMENT_JSON = 256 * 1024 * 1024


def segment_generation(blob: bytes) -> int:
    """The generation is readable without a key (to choose the KEK)."""
    if len(blob) < SEGMENT_HEADER_SIZE + TAG_SIZE or blob[:4] != SEGMENT_MAGIC:
        raise BadData()
    return int(struct.unpack(">I", blob[4:8])[0])


def open_segment(kek: bytes, name: str, blob: bytes) -> dict[str, Any]:
    segment_generation(blob)  # length and magic
    header, nonce = blob[:SEGMENT_HEADER_SIZE], blob[8:SEGMENT_HEADER_SIZE]
    key = hkdf(kek, b"cloudguard/v1/manifest")
    body = gcm_open(key, nonce, blob[SEGMENT_HEADER_SIZE:], header + name.encode("utf-8"))
    # exactly one complete zlib stream (with its Adler-32), nothing after it, <= 256 MiB
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, MAX_SEGMENT_JSON)
    except zlib.error as exc:
        raise BadData() from exc
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise BadData()
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise BadData()
    return payload


# --- key slots ---------------------------------------------------------------------------


def public_bytes(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def open_slot(priv: X25519PrivateKey, slot: dict[str, Any], vault_id: str,
              generation: int) -> bytes:
    """Unwrap the secret of one slot {"rid", "epk", "ct"} with our X25519 private key."""
    rid = slot.get("rid")
    if not isinstance(rid, str) or "epk" not in slot or "ct" not in slot:
        raise BadData()
    epk = unb64(slot["epk"])
    ct = unb64(slot["ct"])
    if len(epk) != 32:
        raise BadData()
    pub = public_bytes(priv)
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError as exc:  # OpenSSL refuses an all-zero result
        raise BadData() from exc
    if shared == bytes(32):  # a low-order point
        raise BadData()
    key = hkdf(shared, b"cloudguard/v1/slot", salt=epk + pub)
    aad = b"cloudguard/v1/slot" + f"{vault_id}/{generation}/{rid}".encode()
    return gcm_open(key, bytes(NONCE_SIZE), ct, aad)


# --- sealed JSON -------------------------------------------------------------------------


def open_sealed_json(key_material: bytes, info: bytes, aad: bytes,
                     sealed: object) -> dict[str, Any]:
    """SEALED = b64(NONCE || GCM(HKDF(ikm = key material, info = INFO), NONCE, JSON, AAD))"""
    raw = unb64(sealed)
    if len(raw) < NONCE_SIZE + TAG_SIZE:
        raise BadData()
    payload = parse_json(gcm_open(hkdf(key_material, info), raw[:NONCE_SIZE],
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
    aad = b"cloudguard/v1/kit" + canonical_json({k: v for k, v in doc.items() if k != "ct"})
    return gcm_open(kp, nonce, ct, aad)


# --- key commitments ---------------------------------------------------------------------


def kek_id(kek: bytes) -> str:
    return hkdf(kek, b"cloudguard/v1/kek-id", 16).hex()


# --- remote layout: descriptor -----------------------------------------------------------

DESCRIPTOR = "cloudguard.json"


@dataclass
class Vault:
    vault_id: str
    descriptor_sha256: str


def read_descriptor(remote: Path) -> Vault:
    """"Descriptor": plain JSON; readers stop on an unknown format.

    It is authenticated later, against the hash sealed in every generation's body.
    """
    try:
        raw = (remote / DESCRIPTOR).read_bytes()
    except FileNotFoundError as exc:
        raise Failure(f"{remote} holds no {DESCRIPTOR}: not a copy of a cloudguard vault") from exc
    try:
        doc = parse_json(raw)
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
    if not is_hex(doc.get("vault"), 32):
        raise IntegrityFailure(f"{DESCRIPTOR}: the vault id is not 32 hex characters")
    return Vault(str(doc["vault"]), hashlib.sha256(raw).hexdigest())


# --- the kit -----------------------------------------------------------------------------


@dataclass
class Kit:
    rid: str
    priv: X25519PrivateKey


def read_kit(path: Path, vault: Vault, passphrase_env: str) -> Kit:
    """A recovery kit: {"cloudguard": "recovery-kit", "format": 1, "vault", "rid", kdf...};
    the sealed secret is the raw 32-byte X25519 private key of the kit's member."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Failure(f"cannot read kit {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("cloudguard") != "recovery-kit":
        raise Failure(f"{path} is not a cloudguard recovery kit")
    if not is_int(doc.get("format")) or doc.get("format") != VERSION:
        raise Failure(f"{path}: unknown recovery kit format {doc.get('format')!r}")
    rid, kit_vault = doc.get("rid"), doc.get("vault")
    if not isinstance(rid, str) or not isinstance(kit_vault, str):
        raise Failure(f"{path} is not a cloudguard recovery kit (no rid or vault)")
    if kit_vault != vault.vault_id:
        raise Failure(f"{path} belongs to vault {kit_vault}, not {vault.vault_id}")
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
    if len(secret) != 32:
        raise IntegrityFailure(f"kit {path}: the sealed key is not 32 bytes")
    return Kit(rid, X25519PrivateKey.from_private_bytes(secret))


# --- remote layout: key-slot objects -----------------------------------------------------

KEYS_NAME = re.compile(r"[0-9]{8}")


@dataclass
class Generation:
    number: int
    kek: bytes
    members: dict[str, str]  # rid -> member name (the label of conflict copies)
    history: dict[int, bytes]
    link: object


def open_generation(raw: bytes, name: str, number: int, vault: Vault,
                    kit: Kit) -> Generation | None:
    """Open keys/<generation> with the kit's slot; None when the kit holds no slot in it."""
    try:
        doc = parse_json(raw)
    except BadData as exc:
        raise IntegrityFailure(f"{name} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("cloudguard") != "keys":
        raise IntegrityFailure(f"{name} is not a key-slot object")
    if not is_int(doc.get("format")) or doc.get("format") != VERSION:
        raise Failure(f"{name}: unknown key format {doc.get('format')!r}")
    if doc.get("vault") != vault.vault_id or doc.get("generation") != number or not is_int(
            doc.get("generation")):
        raise IntegrityFailure(f"{name} belongs to another vault or generation")
    slots = doc.get("slots")
    if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
        raise IntegrityFailure(f"{name}: malformed slots")
    mine = [s for s in slots if s.get("rid") == kit.rid]
    if not mine:
        return None
    try:
        kek = open_slot(kit.priv, mine[0], vault.vault_id, number)
        if len(kek) != KEY_SIZE:
            raise BadData()
        body_aad = f"cloudguard/v1/members/{vault.vault_id}/{number}".encode()
        body = open_sealed_json(kek, b"cloudguard/v1/members", body_aad, doc.get("body"))
    except BadData as exc:
        raise IntegrityFailure(f"{name}: the kit's key slot or the sealed body failed "
                               "authentication") from exc
    members = body.get("members")
    if not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("rid"), str) and isinstance(m.get("name"), str)
            for m in members):
        raise IntegrityFailure(f"{name}: malformed member list")
    # the member-list rule: slots outside the sealed body are an attack. Compared as sorted
    # lists (extra strictness over "sets": a duplicated slot or member fails too).
    slot_rids = sorted(str(s.get("rid")) for s in slots)
    if slot_rids != sorted(m["rid"] for m in members):
        raise IntegrityFailure(f"{name}: the key slots do not match the sealed member list")
    # extra check: the sealed member entry for our rid holds our public key
    ours = [m for m in members if m["rid"] == kit.rid]
    try:
        if unb64(ours[0].get("pub")) != public_bytes(kit.priv):
            raise BadData()
    except BadData as exc:
        raise IntegrityFailure(f"{name}: the member list holds another key for this kit") from exc
    if body.get("descriptor") != vault.descriptor_sha256:
        raise IntegrityFailure(f"{DESCRIPTOR} was altered: its SHA-256 differs from the one "
                               f"sealed in {name}")
    history_raw = body.get("history", {})
    if not isinstance(history_raw, dict):
        raise IntegrityFailure(f"{name}: malformed history")
    history: dict[int, bytes] = {}
    for key, wrapped in history_raw.items():
        # "history": {"<g>": b64(AES-KW(KEK_G, KEK_g))} -- the KEK itself is the wrapping key
        if not re.fullmatch(r"[1-9][0-9]*", key) or int(key) >= number:
            raise IntegrityFailure(f"{name}: malformed history entry {key!r}")
        try:
            old = aes_key_unwrap(kek, unb64(wrapped))
        except (BadData, InvalidUnwrap, ValueError) as exc:
            raise IntegrityFailure(f"{name}: history entry {key} failed to unwrap") from exc
        if len(old) != KEY_SIZE:
            raise IntegrityFailure(f"{name}: history entry {key} is not a 32-byte key")
        history[int(key)] = old
    link = body.get("link")
    if number == 1 and link is not None:  # extra check: "link: null for G = 1"
        raise IntegrityFailure(f"{name}: generation 1 must have no link")
    return Generation(number, kek, {m["rid"]: m["name"] for m in members}, history, link)


def check_link(gen: Generation, previous_kek: bytes, vault: Vault, name: str) -> None:
    """The link, sealed under KEK_{G-1}, proves that whoever made G held the previous KEK."""
    try:
        doc = open_sealed_json(previous_kek, b"cloudguard/v1/link",
                               f"cloudguard/v1/members/{vault.vault_id}/{gen.number}".encode(),
                               gen.link)
    except BadData as exc:
        raise IntegrityFailure(f"{name}: the link to generation {gen.number - 1} failed "
                               "authentication") from exc
    if doc.get("generation") != gen.number or doc.get("commit") != kek_id(gen.kek):
        raise IntegrityFailure(f"{name}: the link does not commit to this generation's key")


@dataclass
class KeyRing:
    keks: dict[int, bytes]  # every KEK generation we can use, from slots and history
    labels: dict[str, str]  # rid -> member name, from the newest generation


def load_keys(remote: Path, vault: Vault, kit: Kit) -> KeyRing:
    keys_dir = remote / "keys"
    numbers = sorted(int(p.name) for p in (keys_dir.iterdir() if keys_dir.is_dir() else [])
                     if KEYS_NAME.fullmatch(p.name))
    if not numbers:
        raise IntegrityFailure("keys/ holds no key generation: the copy is incomplete")
    opened: dict[int, Generation] = {}
    for number in numbers:
        name = f"keys/{number:08d}"
        gen = open_generation((keys_dir / f"{number:08d}").read_bytes(), name, number, vault,
                              kit)
        if gen is not None:
            opened[number] = gen
    if not opened:
        raise Failure("this kit holds no key slot in the vault: it was removed, or it belongs "
                      "to another copy")
    if max(opened) != numbers[-1]:
        raise Failure(f"this kit holds no slot in the newest key generation {numbers[-1]}: it "
                      "was removed from the vault")
    for number, gen in opened.items():
        if number - 1 in opened:  # a KEK learnt only from history proves nothing
            check_link(gen, opened[number - 1].kek, vault, f"keys/{number:08d}")
    # KEKs: from our own slots, and older ones from history. Every source must agree (extra
    # check: a generation's KEK never changes, whoever reports it).
    keks: dict[int, bytes] = {n: g.kek for n, g in opened.items()}
    for gen in opened.values():
        for old, kek in gen.history.items():
            if keks.setdefault(old, kek) != kek:
                raise IntegrityFailure(f"keys/{gen.number:08d}: its history disagrees about "
                                       f"the key of generation {old}")
    return KeyRing(keks, opened[max(opened)].members)


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


@dataclass
class State:
    ctx: dict[str, int] = field(default_factory=dict)
    paths: dict[str, dict[str, Entry]] = field(default_factory=dict)  # path -> {dot: ENTRY}

    def merge(self, other: State) -> None:
        """Observed-remove merge: an entry one side lacks survives unless that side's ctx covers
        its dot (it saw the entry and removed it). Version vectors merge by maximum. When both
        sides hold the same dot, the side with the higher (r, o) wins (newer_location)."""
        for path in set(self.paths) | set(other.paths):
            mine = self.paths.get(path, {})
            theirs = other.paths.get(path, {})
            keep: dict[str, Entry] = {}
            for dot, entry in mine.items():
                if dot in theirs or not covered(dot, other.ctx):
                    keep[dot] = entry
            for dot, entry in theirs.items():
                if dot in mine:
                    keep[dot] = newer_location(mine[dot], entry)
                elif not covered(dot, self.ctx):
                    keep[dot] = entry
            if keep:
                self.paths[path] = keep
            else:
                self.paths.pop(path, None)
        for device, seq in other.ctx.items():
            self.ctx[device] = max(self.ctx.get(device, 0), seq)

    def apply(self, dot: str, ops: list[dict[str, Any]]) -> None:
        """Applying a delta removes the rm dots at p and adds e under the delta's dot.

        A "reloc" op (written by a repack) moves an existing dot's blob to a new location
        without a new dot, if the dot is still there and the move is newer (newer_location)."""
        for op in ops:
            siblings = self.paths.setdefault(op["p"], {})
            for moved, location in op.get("reloc", {}).items():
                if moved in siblings:
                    siblings[moved] = newer_location(siblings[moved],
                                                     {**siblings[moved], **location})
            for old in op.get("rm", []):
                siblings.pop(old, None)
            if op.get("e") is not None:
                siblings[dot] = op["e"]
            if not siblings:
                del self.paths[op["p"]]

    def dominates(self, vv: dict[str, int]) -> bool:
        return all(self.ctx.get(device, 0) >= seq for device, seq in vv.items())


def parse_ops(raw: object) -> list[dict[str, Any]]:
    """OP = {"p": path, "e": ENTRY | null, "rm": [dot, ...]}, or a relocation written by
    cloudguard's repack: {"p": path, "reloc": {dot: {"o", "a", "r"[, "om"]}}}.
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
            # extra strictness: a relocation changes where the blob is, nothing else. The
            # optional "om" (hex MD5 of the new object, for cloudguard's verify; NOT IN
            # format.md when this was written) is carried along and not used here.
            if not (isinstance(location, dict) and set(location) - {"om"} == {"o", "a", "r"}
                    and isinstance(location.get("om", ""), str)
                    and is_hex(location["o"], 32) and is_int(location["a"])
                    and location["a"] >= 0 and is_int(location["r"]) and location["r"] >= 0):
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


def load_manifest(remote: Path, ring: KeyRing) -> State:
    """"Reading the manifest", steps 1 to 3 (step 4, the device's stored vector, needs state
    this reader does not have: a copy of a rolled-back remote restores the older manifest)."""
    m_dir = remote / "m"
    segments: dict[str, tuple[str, int, str]] = {}
    for path in sorted(m_dir.iterdir()) if m_dir.is_dir() else []:
        match = SEGMENT_NAME.fullmatch(f"m/{path.name}")
        if match is not None:  # other names in m/ are not segments and are ignored
            segments[f"m/{path.name}"] = (match.group(1), int(match.group(2)), match.group(3))

    def open_named(name: str) -> dict[str, Any]:
        device, seq, kind = segments[name]
        blob = (remote / name).read_bytes()
        try:
            generation = segment_generation(blob)
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} failed authentication") from exc
        kek = ring.keks.get(generation)
        if kek is None:
            raise IntegrityFailure(f"manifest segment {name} is sealed under key generation "
                                   f"{generation}, which this kit cannot open")
        try:
            payload = open_segment(kek, name, blob)
        except BadData as exc:
            raise IntegrityFailure(f"manifest segment {name} failed authentication") from exc
        # device, seq and kind must match the object name
        expected = (device, seq, {"d": "delta", "s": "snapshot"}[kind])
        if (payload.get("device"), payload.get("seq"), payload.get("kind")) != expected or (
                not is_int(payload.get("seq"))):
            raise IntegrityFailure(f"manifest segment {name} does not match its name")
        return payload

    # 1. open every snapshot and merge them
    state = State()
    for name, (_device, _seq, kind) in sorted(segments.items()):
        if kind == "s":
            payload = open_named(name)
            try:
                snapshot = State(parse_vv(payload.get("ctx")),
                                 parse_snapshot_paths(payload.get("paths")))
            except BadData as exc:
                raise IntegrityFailure(f"manifest segment {name} is malformed") from exc
            state.merge(snapshot)

    # 2. apply the deltas the merged vector does not cover, in causal order: D:S applies when
    #    the vector holds D:S-1 and dominates the delta's deps
    pending: dict[str, dict[int, str]] = {}
    for name, (device, seq, kind) in segments.items():
        if kind == "d" and seq > state.ctx.get(device, 0):
            pending.setdefault(device, {})[seq] = name
    opened: dict[str, tuple[dict[str, int], list[dict[str, Any]]]] = {}
    progress = True
    while progress:
        progress = False
        for device in sorted(pending):
            seq = state.ctx.get(device, 0) + 1
            found = pending[device].get(seq)
            if found is None:
                continue
            if found not in opened:
                payload = open_named(found)
                try:
                    opened[found] = (parse_vv(payload.get("deps")),
                                     parse_ops(payload.get("ops")))
                except BadData as exc:
                    raise IntegrityFailure(f"manifest segment {found} is malformed") from exc
            deps, ops = opened[found]
            if not state.dominates(deps):
                continue
            state.apply(f"{device}:{seq}", ops)
            state.ctx[device] = seq
            del pending[device][seq]
            progress = True
    # 3. a delta that can never apply means a segment is missing
    for device, rest in sorted(pending.items()):
        if rest:
            nxt = state.ctx.get(device, 0) + 1
            if nxt in rest:
                raise IntegrityFailure(f"manifest segment {rest[nxt]} depends on a segment "
                                       "that is missing")
            raise IntegrityFailure(f"manifest segment m/{device}-{nxt:012d}.d is missing: the "
                                   "manifest was truncated or a segment was deleted")
    return state


# --- entries and paths -------------------------------------------------------------------


def check_path(path: str) -> None:
    """Paths are /-separated, relative, with no empty, "." or ".." component."""
    try:
        path.encode("utf-8")  # strict: no lone surrogates
    except UnicodeEncodeError as exc:
        raise IntegrityFailure(f"the manifest holds a path that is not UTF-8: {q(path)}") from exc
    if (not path or path.startswith("/") or "\x00" in path
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise IntegrityFailure(f"the manifest holds an unsafe path {q(path)}")


def check_entry(path: str, entry: Entry) -> None:
    """The ENTRY fields this reader uses, with their types (see the table in format.md)."""
    kind = entry.get("t")

    def need(key: str, ok: bool) -> None:
        if not ok:
            raise IntegrityFailure(f"the manifest entry for {q(path)} has a malformed {key!r}")

    need("t", kind in ("f", "d", "l"))
    need("m", "m" not in entry or is_int(entry["m"]))  # conflicts are ordered by it
    if kind == "f":
        for key in ("s", "m", "a", "n", "g"):
            need(key, is_int(entry.get(key)))
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
# sibling with the largest (m, dot) where dots compare as strings; each other distinct content
# becomes a copy named NAME (conflict YYYY-MM-DD HHMMSS LABEL).EXT, from its own mtime in UTC
# and its writer's member name (numbered "LABEL 2", "LABEL 3", ... when that name is taken).
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
        order = sorted(siblings.items(), key=lambda kv: (kv[1].get("m", 0), kv[0]))
        winner = order[-1][1]
        ops.append((path, winner, sorted(siblings)))
        seen = {content_key(winner)}
        for dot, entry in order[:-1]:
            if content_key(entry) in seen:
                continue
            seen.add(content_key(entry))
            device = dot_parts(dot)[0]
            name = conflict_name(path, int(entry.get("m", 0)), labels.get(device, device[:8]),
                                 taken)
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


def write_file(stage: Path, remote: Path, path: str, entry: Entry, ring: KeyRing,
               src: BinaryIO) -> None:
    """Decrypt one file to a temp file beside its target, verify, then rename into place."""
    parent = safe_mkdirs(stage, posixpath.dirname(path))
    target = parent / posixpath.basename(path)
    kek = ring.keks.get(entry["g"])
    where = f"{q(path)} (data/{entry['o']})"
    if kek is None:
        raise IntegrityFailure(f"{where}: its key is wrapped under generation {entry['g']}, "
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


def build(stage: Path, remote: Path, view: dict[str, Entry], ring: KeyRing) -> None:
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
                write_file(stage, remote, path, view[path], ring, src)
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


def restore(remote: Path, kit_path: Path, out: Path, passphrase_env: str) -> dict[str, int]:
    if not remote.is_dir():
        raise Failure(f"{remote} is not a folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Failure(f"{out} must be an empty or missing folder")
    # everything that can fail on the vault's contents before anything is written ...
    vault = read_descriptor(remote)
    kit = read_kit(kit_path, vault, passphrase_env)
    ring = load_keys(remote, vault, kit)
    state = load_manifest(remote, ring)
    for path, siblings in state.paths.items():
        check_path(path)
        for entry in siblings.values():
            check_entry(path, entry)
    resolve_siblings(state, ring.labels)
    view = final_view(state)
    for path in view:
        check_path(path)  # conflict names too
    check_tree(view)
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
        build(stage, remote, view, ring)
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
    return {"files": kinds.count("f"), "folders": kinds.count("d"), "links": kinds.count("l")}


# --- command line ------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{PROG}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=PROG, description="Restore a cloudguard vault (format 1) from a "
                    "local copy of its remote folder and a recovery kit, without cloudguard.")
    parser.add_argument("--remote-dir", required=True, type=Path,
                        help="a local copy of the remote folder (holds cloudguard.json)")
    parser.add_argument("--kit", required=True, type=Path, help="the recovery kit (JSON)")
    parser.add_argument("--out", required=True, type=Path,
                        help="an empty or missing folder to restore into")
    parser.add_argument("--passphrase-env", default="CLOUDGUARD_PASSPHRASE", metavar="VAR",
                        help="environment variable holding the kit passphrase (default "
                             "%(default)s; prompts when unset)")
    args = parser.parse_args(argv)
    try:
        counts = restore(args.remote_dir, args.kit, args.out, args.passphrase_env)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
