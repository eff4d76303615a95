#!/usr/bin/env python3
"""Generate tests/vectors.json: fixed-input test vectors for format v1 (docs/format.md).

Every random input (keys, file ids, nonces, ephemeral keys, salts) is fixed here and passed
explicitly into cloudguard.format, so the output is deterministic. tests/test_format.py
recomputes every vector from the inputs stored in the JSON and checks that this script still
reproduces the file byte for byte; a format change therefore fails the tests until the vectors
are regenerated on purpose:

    python3 scripts/gen_vectors.py            # rewrite tests/vectors.json
    python3 scripts/gen_vectors.py --check    # exit 1 if it is out of date

Blob plaintexts are not stored; they are ``pattern(size)`` (see below). Full ciphertexts are
stored only for the small blobs, the others by SHA-256 and length.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from cloudguard import format as fmt  # noqa: E402

VECTORS_PATH = ROOT / "tests" / "vectors.json"

PATTERN = "bytes((i * 7 + 3) % 256 for i in range(size))"
BLOB_SIZES = [0, 1, 100, 65535, 65536, 65537, 150000]
FULL_HEX_MAX = 100  # store the whole ciphertext for blobs up to this plaintext size
PADME_SIZES = [
    0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 4095,
    4096, 4097, 65535, 65536, 65537, 150000, 1000000, 1048575, 1048576, 1048577, 123456789,
    2**32 - 1, 2**32, 2**40 + 1,
]


def pattern(size: int) -> bytes:
    """The blob plaintext of a vector: byte i is (7 * i + 3) mod 256."""
    block = bytes((i * 7 + 3) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def _h(label: str, length: int = 32) -> bytes:
    """A fixed, labelled test value (any bytes would do; this keeps them visibly distinct)."""
    return hashlib.sha256(b"cloudguard test vector/" + label.encode()).digest()[:length]


def blob_vectors() -> list[dict[str, Any]]:
    dek = _h("blob dek")
    out = []
    for padding in (True, False):
        for size in BLOB_SIZES:
            name = f"blob-{size}-{'padded' if padding else 'unpadded'}"
            file_id = _h(f"file id {name}", fmt.FILE_ID_SIZE)
            plain = pattern(size)
            sink = io.BytesIO()
            info = fmt.encrypt_blob(io.BytesIO(plain), sink, dek, file_id, size, padding)
            blob = sink.getvalue()
            padded = fmt.padded_length(size, padding)
            vec: dict[str, Any] = {
                "name": name,
                "dek": dek.hex(),
                "file_id": file_id.hex(),
                "size": size,
                "padding": padding,
                "plaintext": PATTERN,
                "plaintext_sha256": hashlib.sha256(plain).hexdigest(),
                "padded": padded,
                "chunks": fmt.chunk_count(padded),
                "blob_len": len(blob),
                "header": blob[: fmt.BLOB_HEADER_SIZE].hex(),
                "blob_sha256": hashlib.sha256(blob).hexdigest(),
            }
            assert info.blob_len == len(blob) and info.sha256 == vec["plaintext_sha256"]
            if size <= FULL_HEX_MAX:
                vec["blob"] = blob.hex()
            out.append(vec)
    return out


def padme_vectors() -> list[dict[str, int]]:
    return [
        {
            "length": n,
            "padme": fmt.padme(n),
            "blob_size_padded": fmt.blob_size(n, True),
            "blob_size_unpadded": fmt.blob_size(n, False),
        }
        for n in PADME_SIZES
    ]


def wrap_dek_vectors() -> list[dict[str, str]]:
    out = []
    for i in range(2):
        kek, dek = _h(f"wrap kek {i}"), _h(f"wrap dek {i}")
        file_id, nonce = _h(f"wrap file id {i}", fmt.FILE_ID_SIZE), _h(f"wrap nonce {i}", 12)
        out.append({"kek": kek.hex(), "dek": dek.hex(), "file_id": file_id.hex(),
                    "nonce": nonce.hex(),
                    "wrapped": fmt.wrap_dek(kek, dek, file_id, nonce).hex()})
    return out


def segment_vectors() -> list[dict[str, Any]]:
    kek = _h("manifest kek")
    cases: list[tuple[int, str, dict[str, Any]]] = [
        (0, "manifest/head", {}),
        (7, "manifest/0007-a1b2", {"files": {"docs/Ärger.txt": {"size": 3, "v": [1, 2]}},
                                  "gen": 7, "ok": True, "none": None, "pi": 3.5}),
        (2**32 - 1, "m", {"x": "y" * 1000}),
    ]
    out = []
    for i, (generation, name, payload) in enumerate(cases):
        nonce = _h(f"segment nonce {i}", 12)
        sealed = fmt.seal_segment(kek, generation, name, payload, nonce=nonce)
        out.append({"kek": kek.hex(), "generation": generation, "name": name,
                    "payload": payload, "nonce": nonce.hex(), "sealed": sealed.hex()})
    return out


def slot_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (vault_id, generation, rid) in enumerate([("v-0123", 1, "device-a"),
                                                     ("v-0123", 42, "recovery")]):
        recipient = _h(f"slot recipient {i}")
        ephemeral = _h(f"slot ephemeral {i}")
        secret = _h(f"slot secret {i}")
        pub = fmt.public_bytes(X25519PrivateKey.from_private_bytes(recipient))
        slot = fmt.wrap_to_recipient(pub, secret, vault_id, generation, rid,
                                     ephemeral=X25519PrivateKey.from_private_bytes(ephemeral))
        out.append({"recipient_private": recipient.hex(), "recipient_public": pub.hex(),
                    "ephemeral_private": ephemeral.hex(), "secret": secret.hex(),
                    "vault_id": vault_id, "generation": generation, "rid": rid, "slot": slot})
    return out


def sealed_json_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (info, aad, payload) in enumerate([
        (b"cloudguard/v1/test", b"", {}),
        (b"cloudguard/v1/test", b"vault v-0123", {"a": [1, "b"], "c": {"d": None}}),
    ]):
        key_material, nonce = _h(f"json key {i}"), _h(f"json nonce {i}", 12)
        sealed = fmt.seal_json(key_material, info, aad, payload, nonce=nonce)
        out.append({"key_material": key_material.hex(), "info": info.hex(), "aad": aad.hex(),
                    "payload": payload, "nonce": nonce.hex(), "sealed": sealed})
    return out


def passphrase_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (passphrase, meta) in enumerate([
        ("correct horse battery staple", {"type": "recovery-kit", "vault": "v-0123"}),
        ("pässwörd ✓", {}),
    ]):
        secret, salt = _h(f"kit secret {i}"), _h(f"kit salt {i}", 16)
        nonce = _h(f"kit nonce {i}", 12)
        doc = fmt.seal_with_passphrase(secret, passphrase, meta, log_n=10, salt=salt, nonce=nonce)
        out.append({"secret": secret.hex(), "passphrase": passphrase, "meta": meta, "log_n": 10,
                    "salt": salt.hex(), "nonce": nonce.hex(), "doc": doc})
    return out


def fingerprint_vectors() -> list[dict[str, str]]:
    pubs = [bytes(32), _h("fingerprint pub")]
    pubs.append(fmt.public_bytes(X25519PrivateKey.from_private_bytes(_h("fingerprint key"))))
    return [{"public": p.hex(), "fingerprint": fmt.fingerprint(p)} for p in pubs]


def key_commitment_vectors() -> list[dict[str, str]]:
    keks = [bytes(32), _h("commitment kek")]
    return [{"kek": k.hex(), "key_commitment": fmt.key_commitment(k)} for k in keks]


def build() -> dict[str, Any]:
    return {
        "format_version": fmt.VERSION,
        "comment": "Generated by scripts/gen_vectors.py; format spec in docs/format.md. "
                   "Blob plaintext = " + PATTERN + ". Hex unless a field says otherwise.",
        "blobs": blob_vectors(),
        "padme": padme_vectors(),
        "wrap_dek": wrap_dek_vectors(),
        "segments": segment_vectors(),
        "slots": slot_vectors(),
        "sealed_json": sealed_json_vectors(),
        "passphrase": passphrase_vectors(),
        "fingerprint": fingerprint_vectors(),
        "key_commitment": key_commitment_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--output", type=Path, default=VECTORS_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
