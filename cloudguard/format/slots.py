"""Key slots and what commits seal: secrets wrapped to a member's X25519 key, sealed JSON,
KEK commitments, passphrase-wrapped secrets (device key file, recovery kit) and the codes
people compare."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import IntegrityError
from .common import TAG_SIZE, _hkdf, _nonce, b64, padme, parse_json, unb64

__all__ = [
    "KIT_LOG_N", "MAX_LOG_N", "SCRYPT_P", "SCRYPT_R", "fingerprint", "kek_commit", "open_json",
    "open_with_passphrase", "public_bytes", "seal_json", "seal_with_passphrase",
    "unwrap_from_slot", "vault_code", "wrap_to_recipient",
]

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
