#!/usr/bin/env python3
"""Generate tests/format/vectors.json: fixed-input test vectors for format v2 (docs/format.md).

Every random input (keys, file ids, nonces, ephemeral keys, salts, member secrets) is fixed
here and passed explicitly into cloudguard.format and cloudguard.chain, so the output is
deterministic (Ed25519 signatures are deterministic too). tests/format/test_format.py
recomputes every vector from the inputs stored in the JSON and checks that this script still
reproduces the file byte for byte; a format change therefore fails the tests until the vectors
are regenerated on purpose:

    python3 scripts/gen_vectors.py            # rewrite tests/format/vectors.json
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from cloudguard import chain  # noqa: E402
from cloudguard import format as fmt  # noqa: E402

VECTORS_PATH = ROOT / "tests" / "format" / "vectors.json"

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


def _secret(label: str) -> bytes:
    """A fixed 64-byte member secret: X25519 private key || Ed25519 seed."""
    return _h(f"{label} x25519") + _h(f"{label} ed25519")


def _signer(secret: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(secret[32:])


def _x25519(secret: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(secret[:32])


SEGMENT_VAULT = _h("segment vault id").hex()


def segment_vectors() -> list[dict[str, Any]]:
    kek = _h("manifest kek")
    signer = _secret("segment writer")
    device = "0123456789abcdef"
    cases: list[tuple[int, str, dict[str, Any]]] = [
        (0, f"m/{device}-000000000001.d",
         {"kind": "delta", "device": device, "seq": 1, "deps": {}, "dh": {}, "prev": None,
          "created": "2024-01-01T00:00:00Z", "ops": []}),
        (7, f"m/{device}-000000000002.s",
         {"kind": "snapshot", "device": device, "seq": 2, "ctx": {device: 2},
          "created": "2024-01-02T00:00:00Z",
          "paths": {"docs/Ärger.txt": {f"{device}:1": {"t": "d", "x": 0o755}}}}),
        (2**32 - 1, f"m/{device}-000000000003.d", {"x": "y" * 10000, "pi": 3.5, "ok": True}),
    ]
    out = []
    for i, (head_pos, name, payload) in enumerate(cases):
        nonce = _h(f"segment nonce {i}", 12)
        head_id = _h(f"segment head {i}").hex()
        sealed = fmt.seal_segment(kek, head_pos, head_id, SEGMENT_VAULT, name, payload,
                                  _signer(signer), nonce=nonce)
        out.append({"kek": kek.hex(), "head_pos": head_pos, "head_id": head_id,
                    "vault_id": SEGMENT_VAULT, "name": name, "payload": payload,
                    "signer_secret": signer.hex(),
                    "signer_public": fmt.public_bytes(_signer(signer)).hex(),
                    "nonce": nonce.hex(), "sealed": sealed.hex()})
    return out


def entry_signature_vectors() -> list[dict[str, Any]]:
    """format.md "Entry signatures": the exact message and the (deterministic) Ed25519
    signature of a file, a folder, a symlink and a conflict copy's entry."""
    from cloudguard.manifest import signing

    signer = _secret("entry writer")
    device = "0123456789abcdef"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("docs/Ärger.txt", f"{device}:7",
         {"t": "f", "s": 11, "m": -5_000_000_000, "x": 0o644, "h": "ab" * 32,
          "lc": 9, "wb": device, "pt": 1_700_000_000, "o": "cd" * 16, "a": 0, "n": 127,
          "i": "ef" * 16, "k": "AAAA", "g": "12" * 32, "w": "12" * 32}),
        ("docs", f"{device}:1", {"t": "d", "x": 0o755, "pt": 0}),
        ("link\u241b80", f"{device}:123456789012", {"t": "l", "l": "../x", "m": 1}),
        # a conflict resolution's copy: the content's lc and wb, and its first dot (cs)
        ("paper (conflict 2026-12-04 101010 x).txt", f"{device}:8",
         {"t": "f", "s": 3, "m": 1_700_000_000_000_000_000, "x": 0o600, "h": "cd" * 32,
          "lc": 4, "wb": "fedcba9876543210", "pt": 1_700_000_100,
          "cs": "fedcba9876543210:5", "o": "ab" * 16, "a": 0, "n": 99,
          "i": "01" * 16, "k": "AAAA", "g": "34" * 32}),
    ]
    out = []
    for path, dot, entry in cases:
        message = signing.message(SEGMENT_VAULT, path, dot, entry)
        sig = _signer(signer).sign(message)
        out.append({"vault_id": SEGMENT_VAULT, "path": path, "dot": dot, "entry": entry,
                    "signer_secret": signer.hex(),
                    "signer_public": fmt.public_bytes(_signer(signer)).hex(),
                    "message": message.hex(), "sg": fmt.b64(sig)})
    return out


def slot_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (vault_id, pos, parent, rid) in enumerate([
            ("", 0, None, "0123456789abcdef"),
            (SEGMENT_VAULT, 42, _h("slot parent").hex(), "fedcba9876543210")]):
        recipient = _h(f"slot recipient {i}")
        ephemeral = _h(f"slot ephemeral {i}")
        secret = _h(f"slot secret {i}")
        ctx = chain.context(vault_id, pos, parent)
        pub = fmt.public_bytes(X25519PrivateKey.from_private_bytes(recipient))
        slot = fmt.wrap_to_recipient(pub, secret, ctx, rid,
                                     ephemeral=X25519PrivateKey.from_private_bytes(ephemeral))
        out.append({"recipient_private": recipient.hex(), "recipient_public": pub.hex(),
                    "ephemeral_private": ephemeral.hex(), "secret": secret.hex(),
                    "vault_id": vault_id, "pos": pos, "parent": parent, "ctx": ctx.hex(),
                    "rid": rid, "slot": slot})
    return out


def sealed_json_vectors() -> list[dict[str, Any]]:
    out = []
    ctx = chain.context(SEGMENT_VAULT, 3, _h("sealed parent").hex())
    for i, (info, aad, payload) in enumerate([
        (b"cloudguard/v2/names", chain.context("", 0, None), {"0123456789abcdef": "laptop"}),
        (b"cloudguard/v2/history", ctx,
         {fmt.kek_commit(_h("old kek")): fmt.b64(_h("old kek"))}),
        (b"cloudguard/v2/names", ctx, {"0123456789abcdef": "lä ptop ✓", "fedcba9876543210": ""}),
    ]):
        key_material, nonce = _h(f"json key {i}"), _h(f"json nonce {i}", 12)
        sealed = fmt.seal_json(key_material, info, aad, payload, nonce=nonce)
        out.append({"key_material": key_material.hex(), "info": info.decode(),
                    "aad": aad.hex(), "payload": payload, "nonce": nonce.hex(),
                    "sealed": sealed})
    return out


def kek_commit_vectors() -> list[dict[str, str]]:
    keks = [bytes(32), _h("commitment kek")]
    return [{"kek": k.hex(), "kek_commit": fmt.kek_commit(k)} for k in keks]


DESCRIPTOR = json.dumps({"cloudguard": "vault", "format": 2, "chunk_size": 65536,
                         "padding": "padme", "created": "2024-01-01T00:00:00Z",
                         "salt": _h("descriptor salt", 16).hex()}, indent=1, sort_keys=True)


def make_commit(vault_id: str, pos: int, parent: str | None, action: str, signer: bytes,
                signer_rid: str, members: dict[str, tuple[str, bytes]], kek: bytes,
                epoch: int, names: dict[str, str], history: dict[str, bytes],
                created: str, label: str) -> dict[str, Any]:
    """One commit and its key object, as chain.build makes them but with fixed randomness:
    an ephemeral X25519 key per slot and the nonces of the sealed names and history."""
    ctx = chain.context(vault_id if pos else "", pos, parent)
    ephemerals = {rid: _h(f"{label} ephemeral {rid}") for rid in members}
    history_nonce, names_nonce = _h(f"{label} history nonce", 12), _h(f"{label} names nonce", 12)
    slots = {rid: fmt.wrap_to_recipient(fmt.public_bytes(_x25519(sec)), kek, ctx, rid,
                                        ephemeral=X25519PrivateKey.from_private_bytes(
                                            ephemerals[rid]))
             for rid, (_kind, sec) in members.items()}
    sealed_history = fmt.seal_json(kek, b"cloudguard/v2/history", ctx,
                                   {c: fmt.b64(k) for c, k in sorted(history.items())},
                                   nonce=history_nonce, pad=True)
    keyobj = json.dumps({"slots": slots, "history": sealed_history}, sort_keys=True,
                        indent=1).encode()
    body = {"type": "cloudguard/commit", "format": 2, "vault": vault_id if pos else None,
            "pos": pos, "parent": parent, "merges": [], "action": action,
            "signer": signer_rid, "created": created,
            "members": {rid: {"kind": kind, "x": fmt.b64(fmt.public_bytes(_x25519(sec))),
                              "s": fmt.b64(fmt.public_bytes(_signer(sec)))}
                        for rid, (kind, sec) in sorted(members.items())},
            "removed": {}, "epoch": epoch, "kek": fmt.kek_commit(kek),
            "keyobj": hashlib.sha256(keyobj).hexdigest(),
            "names": fmt.seal_json(kek, b"cloudguard/v2/names", ctx, names, nonce=names_nonce,
                                   pad=True),
            "descriptor": hashlib.sha256(DESCRIPTOR.encode()).hexdigest(), "reencrypt": False}
    data, raw = chain.encode_signed(chain.COMMIT_MAGIC, body, _signer(signer),
                                    b"cloudguard/v2/commit")
    cid = chain.commit_id(raw)
    return {"name": chain.commit_name(pos, cid), "id": cid, "ctx": ctx.hex(),
            "ephemerals": {rid: e.hex() for rid, e in ephemerals.items()},
            "history_nonce": history_nonce.hex(), "names_nonce": names_nonce.hex(),
            "body": raw.decode(), "commit": data.hex(), "keyobj": keyobj.decode()}


def chain_vectors() -> dict[str, Any]:
    """A genesis by a device and an add commit, signed by it, that adds a recovery kit."""
    device, kit = _secret("chain device"), _secret("chain kit")
    device_rid, kit_rid = "0123456789abcdef", "fedcba9876543210"
    kek = _h("chain kek")
    genesis = make_commit("", 0, None, "genesis", device, device_rid,
                          {device_rid: ("device", device)}, kek, 1, {device_rid: "laptop"}, {},
                          "2024-01-01T00:00:00Z", "genesis")
    vault_id = genesis["id"]
    add = make_commit(vault_id, 1, vault_id, "add", device, device_rid,
                      {device_rid: ("device", device), kit_rid: ("kit", kit)}, kek, 1,
                      {device_rid: "laptop", kit_rid: "kit"}, {}, "2024-01-01T00:01:00Z", "add")
    return {"descriptor": DESCRIPTOR, "kek": kek.hex(),
            "members": {device_rid: {"kind": "device", "secret": device.hex()},
                        kit_rid: {"kind": "kit", "secret": kit.hex()}},
            "vault_id": vault_id, "commits": [genesis, add]}


def enrolment_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (name, created) in enumerate([("desk", "2024-01-01T00:00:00Z"),
                                         ("Bürorechner ✓", "2024-02-29T23:59:59Z")]):
        secret = _secret(f"enrolment {i}")
        vault_id, rid = _h(f"enrolment vault {i}").hex(), _h(f"enrolment rid {i}", 8).hex()
        request = chain.make_request(vault_id, rid, name, created, chain.Secret.from_raw(secret))
        out.append({"secret": secret.hex(), "vault_id": vault_id, "rid": rid, "name": name,
                    "created": created, "request": request.hex(),
                    "fingerprint": chain.read_request(request).fingerprint})
    return out


def vault_code_vectors() -> list[dict[str, str]]:
    ids = ["0" * 64, _h("vault code").hex()]
    return [{"vault_id": v, "code": fmt.vault_code(v)} for v in ids]


def passphrase_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (passphrase, meta) in enumerate([
        ("correct horse battery staple",
         {"cloudguard": "recovery-kit", "format": 2, "vault": _h("kit vault").hex(),
          "rid": "fedcba9876543210", "anchor": _h("kit anchor").hex()}),
        ("pässwörd ✓", {"cloudguard": "device-key", "account": "vault/device"}),
    ]):
        secret, salt = _secret(f"kit secret {i}"), _h(f"kit salt {i}", 16)
        nonce = _h(f"kit nonce {i}", 12)
        doc = fmt.seal_with_passphrase(secret, passphrase, meta, log_n=10, salt=salt, nonce=nonce)
        out.append({"secret": secret.hex(), "passphrase": passphrase, "meta": meta, "log_n": 10,
                    "salt": salt.hex(), "nonce": nonce.hex(), "doc": doc})
    return out


def build() -> dict[str, Any]:
    return {
        "format_version": fmt.VERSION,
        "comment": "Generated by scripts/gen_vectors.py; format spec in docs/format.md. "
                   "Blob plaintext = " + PATTERN + ". Hex unless a field says otherwise.",
        "blobs": blob_vectors(),
        "padme": padme_vectors(),
        "wrap_dek": wrap_dek_vectors(),
        "segments": segment_vectors(),
        "entry_signatures": entry_signature_vectors(),
        "slots": slot_vectors(),
        "sealed_json": sealed_json_vectors(),
        "kek_commit": kek_commit_vectors(),
        "chain": chain_vectors(),
        "enrolment": enrolment_vectors(),
        "vault_code": vault_code_vectors(),
        "passphrase": passphrase_vectors(),
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
