"""Format v2 (cloudguard/format/, docs/format.md): vectors, an independent reading of the
byte layout, tampering, padding and memory use."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import random
import re
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloudguard import chain, membership
from cloudguard import format as fmt
from cloudguard.errors import FileChangedError, IntegrityError
from cloudguard.format import slots

ROOT = Path(__file__).resolve().parents[2]
VECTORS_FILE = ROOT / "tests" / "format" / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
BLOBS: list[dict[str, Any]] = VECTORS["blobs"]
KiB, MiB = 1024, 1024 * 1024


def pattern(size: int) -> bytes:
    """The vector plaintext, written exactly as tests/format/vectors.json states it."""
    return bytes((i * 7 + 3) % 256 for i in range(size))


def encrypt(plain: bytes, dek: bytes, file_id: bytes, padding: bool = True) -> bytes:
    out = io.BytesIO()
    info = fmt.encrypt_blob(io.BytesIO(plain), out, dek, file_id, len(plain), padding)
    assert info.blob_len == len(out.getvalue())
    return out.getvalue()


def decrypt(blob: bytes, dek: bytes, file_id: bytes | None, sha256: str | None = None) -> bytes:
    out = io.BytesIO()
    fmt.decrypt_blob(io.BytesIO(blob), out, dek, file_id, sha256)
    return out.getvalue()


def read_from_pack(pack: bytes, offset: int, length: int, dek: bytes,
                   file_id: bytes | None) -> bytes:
    """What a reader does with a manifest entry (offset, length): limit, decrypt, expect end."""
    src = io.BytesIO(pack)
    src.seek(offset)
    reader = fmt.read_blob_stream(src, length)
    plain = b"".join(fmt.decrypt_blob_iter(reader, dek, file_id))
    fmt.expect_end(reader)
    return plain


def blob_id(vec: dict[str, Any]) -> str:
    return str(vec["name"])


def vector_blob(vec: dict[str, Any]) -> bytes:
    """The full ciphertext of a blob vector (stored, or regenerated and checked by hash)."""
    if "blob" in vec:
        return bytes.fromhex(vec["blob"])
    blob = encrypt(pattern(vec["size"]), bytes.fromhex(vec["dek"]),
                   bytes.fromhex(vec["file_id"]), vec["padding"])
    assert hashlib.sha256(blob).hexdigest() == vec["blob_sha256"]
    return blob


# --- vectors ------------------------------------------------------------------------------


def test_vectors_file_is_what_the_generator_writes() -> None:
    path = ROOT / "scripts" / "gen_vectors.py"
    spec = importlib.util.spec_from_file_location("gen_vectors", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == VECTORS_FILE.read_text(encoding="utf-8"), (
        "format output changed: if on purpose, run scripts/gen_vectors.py and bump the docs")


def test_vector_coverage() -> None:
    assert VECTORS["format_version"] == fmt.VERSION == 2
    have = {(v["size"], v["padding"]) for v in BLOBS}
    for size in (0, 1, 65535, 65536, 65537, 150000):
        assert {(size, True), (size, False)} <= have


@pytest.mark.parametrize("vec", BLOBS, ids=blob_id)
def test_blob_vector_encrypts_exactly(vec: dict[str, Any]) -> None:
    plain = pattern(vec["size"])
    assert hashlib.sha256(plain).hexdigest() == vec["plaintext_sha256"]
    dek, file_id = bytes.fromhex(vec["dek"]), bytes.fromhex(vec["file_id"])
    out = io.BytesIO()
    info = fmt.encrypt_blob(io.BytesIO(plain), out, dek, file_id, vec["size"], vec["padding"])
    blob = out.getvalue()
    assert info == fmt.BlobInfo(size=vec["size"], sha256=vec["plaintext_sha256"],
                                blob_len=vec["blob_len"])
    assert len(blob) == vec["blob_len"] == fmt.blob_size(vec["size"], vec["padding"])
    assert fmt.padded_length(vec["size"], vec["padding"]) == vec["padded"]
    assert fmt.chunk_count(vec["padded"]) == vec["chunks"]
    assert blob[: fmt.BLOB_HEADER_SIZE].hex() == vec["header"]
    assert hashlib.sha256(blob).hexdigest() == vec["blob_sha256"]
    if "blob" in vec:
        assert blob.hex() == vec["blob"]


@pytest.mark.parametrize("vec", BLOBS, ids=blob_id)
def test_blob_vector_decrypts(vec: dict[str, Any]) -> None:
    blob = vector_blob(vec)
    dek, file_id = bytes.fromhex(vec["dek"]), bytes.fromhex(vec["file_id"])
    header = fmt.open_blob_header(blob[: fmt.BLOB_HEADER_SIZE], dek, file_id)
    assert header == fmt.BlobHeader(file_id=file_id, size=vec["size"], padded=vec["padded"])
    assert decrypt(blob, dek, file_id, vec["plaintext_sha256"]) == pattern(vec["size"])
    assert decrypt(blob, dek, None) == pattern(vec["size"])
    pieces = list(fmt.decrypt_blob_iter(io.BytesIO(blob), dek, file_id))
    assert all(0 < len(p) <= fmt.CHUNK_SIZE for p in pieces)
    assert len(pieces) <= vec["chunks"]


def test_padme_vectors() -> None:
    for vec in VECTORS["padme"]:
        n = vec["length"]
        assert fmt.padme(n) == vec["padme"] == spec_padme(n)
        assert fmt.blob_size(n, True) == vec["blob_size_padded"]
        assert fmt.blob_size(n, False) == vec["blob_size_unpadded"]


def test_wrap_dek_vectors() -> None:
    for vec in VECTORS["wrap_dek"]:
        kek, dek = bytes.fromhex(vec["kek"]), bytes.fromhex(vec["dek"])
        file_id, nonce = bytes.fromhex(vec["file_id"]), bytes.fromhex(vec["nonce"])
        wrapped = fmt.wrap_dek(kek, dek, file_id, nonce)
        assert wrapped.hex() == vec["wrapped"]
        assert fmt.unwrap_dek(kek, wrapped, file_id) == dek


def _signer(secret_hex: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret_hex)[32:])


def test_segment_vectors() -> None:
    for vec in VECTORS["segments"]:
        kek, nonce = bytes.fromhex(vec["kek"]), bytes.fromhex(vec["nonce"])
        signer = _signer(vec["signer_secret"])
        assert fmt.public_bytes(signer).hex() == vec["signer_public"]
        sealed = fmt.seal_segment(kek, vec["head_pos"], vec["head_id"], vec["vault_id"],
                                  vec["name"], vec["payload"], signer, nonce=nonce)
        assert sealed.hex() == vec["sealed"]
        assert fmt.segment_head(sealed) == (vec["head_pos"], vec["head_id"])
        fmt.verify_segment(sealed, vec["vault_id"], vec["name"],
                           bytes.fromhex(vec["signer_public"]))
        assert fmt.open_segment(kek, vec["vault_id"], vec["name"], sealed) == vec["payload"]


def test_entry_signature_vectors() -> None:
    from cloudguard.manifest import signing

    assert VECTORS["entry_signatures"]
    for vec in VECTORS["entry_signatures"]:
        entry = dict(vec["entry"])
        message = signing.message(vec["vault_id"], vec["path"], vec["dot"], entry)
        assert message.hex() == vec["message"]
        signing.sign(_signer(vec["signer_secret"]), vec["vault_id"], vec["path"], vec["dot"],
                     entry)
        assert entry["sg"] == vec["sg"]
        public = bytes.fromhex(vec["signer_public"])
        check = signing.Verifier(vec["vault_id"], lambda _d, key=public: key)
        check(vec["path"], vec["dot"], entry)
        for changed in ({**entry, "h": "00" * 32}, {**entry, "pt": 1}, {**entry, "t": "x"}):
            if changed != entry:
                with pytest.raises(IntegrityError, match="not signed"):
                    check(vec["path"], vec["dot"], changed)
        with pytest.raises(IntegrityError, match="not signed"):  # another path, dot, vault
            check(vec["path"] + "2", vec["dot"], entry)
        with pytest.raises(IntegrityError, match="not signed"):
            check(vec["path"], vec["dot"] + "0", entry)
        with pytest.raises(IntegrityError, match="not signed"):
            signing.Verifier("00" * 32, lambda _d, key=public: key)(
                vec["path"], vec["dot"], entry)
        moved = {**entry, "o": "99" * 16, "r": 3, "k": "BBBB"}  # location is not signed
        check(vec["path"], vec["dot"], moved)


def test_slot_vectors() -> None:
    for vec in VECTORS["slots"]:
        priv = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["recipient_private"]))
        pub = fmt.public_bytes(priv)
        assert pub.hex() == vec["recipient_public"] == fmt.public_bytes(priv.public_key()).hex()
        ctx = chain.context(vec["vault_id"], vec["pos"], vec["parent"])
        assert ctx.hex() == vec["ctx"]
        eph = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["ephemeral_private"]))
        slot = fmt.wrap_to_recipient(pub, bytes.fromhex(vec["secret"]), ctx, vec["rid"],
                                     ephemeral=eph)
        assert slot == vec["slot"]
        secret = fmt.unwrap_from_slot(priv, vec["slot"], ctx, vec["rid"])
        assert secret.hex() == vec["secret"]


def test_sealed_json_vectors() -> None:
    for vec in VECTORS["sealed_json"]:
        km, aad = bytes.fromhex(vec["key_material"]), bytes.fromhex(vec["aad"])
        info = vec["info"].encode()
        sealed = fmt.seal_json(km, info, aad, vec["payload"], nonce=bytes.fromhex(vec["nonce"]))
        assert sealed == vec["sealed"]
        assert fmt.open_json(km, info, aad, vec["sealed"]) == vec["payload"]


def test_passphrase_vectors() -> None:
    for vec in VECTORS["passphrase"]:
        doc = fmt.seal_with_passphrase(bytes.fromhex(vec["secret"]), vec["passphrase"],
                                       vec["meta"], log_n=vec["log_n"],
                                       salt=bytes.fromhex(vec["salt"]),
                                       nonce=bytes.fromhex(vec["nonce"]))
        assert doc == vec["doc"]
        # the document survives a JSON round trip (it is stored as JSON)
        secret = fmt.open_with_passphrase(json.loads(json.dumps(vec["doc"])), vec["passphrase"])
        assert secret.hex() == vec["secret"] and len(secret) == 64
        assert chain.Secret.from_raw(secret).raw() == secret


def test_kek_commit_and_vault_code_vectors() -> None:
    for vec in VECTORS["kek_commit"]:
        assert fmt.kek_commit(bytes.fromhex(vec["kek"])) == vec["kek_commit"]
        assert len(vec["kek_commit"]) == 64
    for vec in VECTORS["vault_code"]:
        code = fmt.vault_code(vec["vault_id"])
        assert code == vec["code"]
        assert len(code) == 29 and code.count("-") == 5


def test_enrolment_vectors() -> None:
    for vec in VECTORS["enrolment"]:
        me = chain.Secret.from_raw(bytes.fromhex(vec["secret"]))
        request = chain.make_request(vec["vault_id"], vec["rid"], vec["name"], vec["created"], me)
        assert request.hex() == vec["request"]
        got = chain.read_request(request)
        assert got.fingerprint == vec["fingerprint"] == fmt.fingerprint(request[8:-64])
        assert (got.vault, got.rid, got.name, got.created) == (
            vec["vault_id"], vec["rid"], vec["name"], vec["created"])
        assert got.keys == me.public("device")
        assert len(got.fingerprint) == 29 and got.fingerprint.count("-") == 5


CHAIN: dict[str, Any] = VECTORS["chain"]


def _chain_fetch() -> tuple[dict[str, bytes], Callable[[str], bytes]]:
    objects = {c["name"]: bytes.fromhex(c["commit"]) for c in CHAIN["commits"]}
    objects.update({c["name"] + ".k": c["keyobj"].encode() for c in CHAIN["commits"]})
    return objects, objects.__getitem__


def test_chain_vectors_verify_and_open() -> None:
    vault_id = CHAIN["vault_id"]
    descriptor = hashlib.sha256(CHAIN["descriptor"].encode()).hexdigest()
    objects, fetch = _chain_fetch()
    genesis, add = CHAIN["commits"]
    assert genesis["id"] == vault_id and genesis["name"] == f"keys/00000000-{vault_id}"
    view = membership.verify(vault_id, list(objects), fetch, set(), descriptor)
    assert set(view.commits) == {genesis["id"], add["id"]} and view.head.id == add["id"]
    assert not view.deferred and not view.void
    kek = bytes.fromhex(CHAIN["kek"])
    for rid, member in CHAIN["members"].items():
        me = chain.Secret.from_raw(bytes.fromhex(member["secret"]))
        assert view.members[rid] == me.public(member["kind"])
        opened = chain.open_keys(view, view.head, fetch(add["name"] + ".k"), rid, me.x)
        assert opened == kek
        assert view.keks == {fmt.kek_commit(kek): kek}
    assert view.names == {"0123456789abcdef": "laptop", "fedcba9876543210": "kit"}
    # the wrong descriptor, or a commit that lost its genesis, does not verify
    with pytest.raises(IntegrityError):
        membership.verify(vault_id, list(objects), fetch, set(), "0" * 64)
    with pytest.raises(IntegrityError):
        membership.verify(vault_id, [add["name"]], fetch, set(), descriptor)


def test_chain_vectors_match_build() -> None:
    """chain.build makes the same commits apart from its random ephemeral keys and nonces."""
    vault_id = CHAIN["vault_id"]
    members = {rid: chain.Secret.from_raw(bytes.fromhex(m["secret"])).public(m["kind"])
               for rid, m in CHAIN["members"].items()}
    device_rid = next(r for r, k in members.items() if k.kind == "device")
    device = chain.Secret.from_raw(bytes.fromhex(CHAIN["members"][device_rid]["secret"]))
    kek = bytes.fromhex(CHAIN["kek"])
    descriptor = hashlib.sha256(CHAIN["descriptor"].encode()).hexdigest()
    objects, fetch = _chain_fetch()
    genesis, add = CHAIN["commits"]
    built, _data, keyobj = chain.build(None, "", device, device_rid, "genesis",
                                       {device_rid: members[device_rid]}, {}, kek, 1,
                                       {device_rid: "laptop"}, {}, descriptor,
                                       "2024-01-01T00:00:00Z")
    random_fields = {"names", "keyobj"}
    want = json.loads(genesis["body"])
    assert {k: v for k, v in json.loads(built.body).items() if k not in random_fields} == {
        k: v for k, v in want.items() if k not in random_fields}
    assert set(json.loads(keyobj)) == set(json.loads(genesis["keyobj"])) == {"slots", "history"}
    view = membership.verify(vault_id, [genesis["name"]], fetch, set(), descriptor)
    built, _data, keyobj = chain.build(view, vault_id, device, device_rid, "add", members, {},
                                       kek, 1, {"0123456789abcdef": "laptop",
                                                "fedcba9876543210": "kit"}, {}, descriptor,
                                       "2024-01-01T00:01:00Z")
    want = json.loads(add["body"])
    assert {k: v for k, v in json.loads(built.body).items() if k not in random_fields} == {
        k: v for k, v in want.items() if k not in random_fields}
    assert set(json.loads(keyobj)["slots"]) == set(json.loads(add["keyobj"])["slots"])
    assert built.ctx(vault_id).hex() == add["ctx"]


# --- the byte layout, read independently of the format package's helpers -----------------
#
# Written from docs/format.md only: cryptography's HKDF and AESGCM, no fmt._* helpers.

SPEC_CHUNK = 65536


def spec_padme(length: int) -> int:
    if length < 2:
        return length
    e = length.bit_length() - 1          # floor(log2 L)
    s = e.bit_length()                   # floor(log2 E) + 1
    z = e - s
    return (length + (1 << z) - 1) // (1 << z) * (1 << z)


def spec_keys(dek: bytes, file_id: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=file_id,
               info=b"cloudguard/v2/blob").derive(dek)
    return okm[:32], okm[32:]


def spec_nonce(index: int, final: bool) -> bytes:
    return b"\x00" + index.to_bytes(10, "big") + bytes([final])


def spec_aad(file_id: bytes, index: int, final: bool) -> bytes:
    return b"cloudguard/v2/chunk\x02" + file_id + index.to_bytes(8, "big") + bytes([final])


def spec_encrypt(plain: bytes, dek: bytes, file_id: bytes, padding: bool,
                 final_flags: Callable[[int, int], bool] | None = None) -> bytes:
    padded = spec_padme(len(plain)) if padding else len(plain)
    body = plain + bytes(padded - len(plain))
    key, commit = spec_keys(dek, file_id)
    gcm = AESGCM(key)
    length_ct = gcm.encrypt(b"\x01" + bytes(11), struct.pack(">QQ", len(plain), padded),
                            b"cloudguard/v2/length\x02" + file_id)
    out = [b"CGB\x02", file_id, commit, length_ct]
    n = max(1, -(-padded // SPEC_CHUNK))
    for i in range(n):
        final = i == n - 1 if final_flags is None else final_flags(i, n)
        out.append(gcm.encrypt(spec_nonce(i, final), body[i * SPEC_CHUNK:(i + 1) * SPEC_CHUNK],
                               spec_aad(file_id, i, final)))
    return b"".join(out)


def spec_decrypt(blob: bytes, dek: bytes) -> bytes:
    assert blob[:4] == b"CGB\x02"
    file_id, commit, length_ct = blob[4:20], blob[20:52], blob[52:84]
    key, want_commit = spec_keys(dek, file_id)
    assert commit == want_commit
    gcm = AESGCM(key)
    size, padded = struct.unpack(">QQ", gcm.decrypt(b"\x01" + bytes(11), length_ct,
                                                    b"cloudguard/v2/length\x02" + file_id))
    assert size <= padded
    n = max(1, -(-padded // SPEC_CHUNK))
    pos, body = 84, b""
    for i in range(n):
        plain_len = min(SPEC_CHUNK, padded - i * SPEC_CHUNK)
        sealed = blob[pos:pos + plain_len + 16]
        pos += plain_len + 16
        final = i == n - 1
        body += gcm.decrypt(spec_nonce(i, final), sealed, spec_aad(file_id, i, final))
    assert pos == len(blob) == 84 + padded + 16 * n
    assert len(body) == padded and body[size:] == bytes(padded - size)  # zero padding
    return body[:size]


@pytest.mark.parametrize("vec", BLOBS, ids=blob_id)
def test_blob_layout_matches_spec(vec: dict[str, Any]) -> None:
    dek, file_id = bytes.fromhex(vec["dek"]), bytes.fromhex(vec["file_id"])
    plain = pattern(vec["size"])
    mine = spec_encrypt(plain, dek, file_id, vec["padding"])
    assert hashlib.sha256(mine).hexdigest() == vec["blob_sha256"]
    assert mine[:84].hex() == vec["header"]
    assert spec_decrypt(vector_blob(vec), dek) == plain
    if vec["chunks"] > 1:
        # chunk boundaries where the spec puts them: each chunk opens on its own
        key, _ = spec_keys(dek, file_id)
        second = mine[84 + SPEC_CHUNK + 16:84 + 2 * (SPEC_CHUNK + 16)]
        last = vec["chunks"] == 2
        got = AESGCM(key).decrypt(spec_nonce(1, last), second, spec_aad(file_id, 1, last))
        body = plain + bytes(vec["padded"] - vec["size"])
        assert got == body[SPEC_CHUNK:2 * SPEC_CHUNK]


def test_final_flag_is_enforced() -> None:
    dek, fid = b"k" * 32, b"f" * 16
    plain = pattern(2 * SPEC_CHUNK + 5)
    assert decrypt(spec_encrypt(plain, dek, fid, False), dek, fid) == plain
    never_final = spec_encrypt(plain, dek, fid, False, lambda i, n: False)
    always_final = spec_encrypt(plain, dek, fid, False, lambda i, n: True)
    for blob in (never_final, always_final):
        with pytest.raises(IntegrityError):
            decrypt(blob, dek, fid)



def spec_hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def spec_open_segment(blob: bytes, kek: bytes, vault: str, name: str,
                      writer: bytes) -> tuple[int, str, Any]:
    """SEGMENT = HEADER || CT || SIG, checked in the order of "Manifest segments"."""
    assert len(blob) >= 52 + 4096 + 16 + 64 and blob[:4] == b"CGM\x02"
    header, ct, sig = blob[:52], blob[52:-64], blob[-64:]
    names = vault.encode() + b"\x00" + name.encode() + b"\x00"
    # the signature first, before anything is decrypted
    Ed25519PublicKey.from_public_bytes(writer).verify(
        sig, b"cloudguard/v2/segment" + b"\x00" + names + header + ct)
    head_pos, head_id, nonce = int.from_bytes(header[4:8], "big"), header[8:40].hex(), header[40:52]
    km = spec_hkdf(kek, b"cloudguard/v2/manifest")
    padded = AESGCM(km).decrypt(nonce, ct, b"cloudguard/v2/segment\x00" + names + header)
    length = int.from_bytes(padded[:4], "big")
    z = padded[4:4 + length]
    assert len(z) == length and padded[4 + length:] == bytes(len(padded) - 4 - length)
    assert len(padded) == spec_padme(max(4096, 4 + length))
    inflater = zlib.decompressobj()
    raw = inflater.decompress(z)
    assert inflater.eof and not inflater.unused_data
    return head_pos, head_id, json.loads(raw)


@pytest.mark.parametrize("vec", VECTORS["segments"], ids=lambda v: str(v["head_pos"]))
def test_segment_layout_matches_spec(vec: dict[str, Any]) -> None:
    blob = bytes.fromhex(vec["sealed"])
    pos, head, payload = spec_open_segment(blob, bytes.fromhex(vec["kek"]), vec["vault_id"],
                                           vec["name"], bytes.fromhex(vec["signer_public"]))
    assert (pos, head, payload) == (vec["head_pos"], vec["head_id"], vec["payload"])
    seed = bytes.fromhex(vec["signer_secret"])[32:]
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert pub.hex() == vec["signer_public"]
    for other in (vec["name"] + "x", vec["name"][:-1] + ("s" if vec["name"][-1] == "d" else "d")):
        with pytest.raises(InvalidSignature):  # the name is signed
            spec_open_segment(blob, bytes.fromhex(vec["kek"]), vec["vault_id"], other,
                              bytes.fromhex(vec["signer_public"]))


def spec_ctx(vault: str | None, pos: int, parent: str | None) -> bytes:
    return (vault or "").encode() + b"\x00" + str(pos).encode() + b"\x00" + (parent or "").encode()


def test_commit_layout_matches_spec() -> None:
    """COMMIT = "CGC" || 0x02 || u32be(len(BODY)) || BODY || SIG, id, name and signature as
    "The membership chain" defines them; the key object and the kit's slot too."""
    verified: dict[str, dict[str, Any]] = {}
    for vec in CHAIN["commits"]:
        data = bytes.fromhex(vec["commit"])
        assert data[:4] == b"CGC\x02"
        length = int.from_bytes(data[4:8], "big")
        body, sig = data[8:8 + length], data[8 + length:]
        assert len(sig) == 64 and body.decode() == vec["body"]
        doc = json.loads(body)
        cid = hashlib.sha256(b"cloudguard/v2/commit-id\x00" + body).hexdigest()
        assert cid == vec["id"] and vec["name"] == f"keys/{doc['pos']:08d}-{cid}"
        members = doc["members"] if doc["pos"] == 0 else verified[doc["parent"]]["members"]
        signer = base64.b64decode(members[doc["signer"]]["s"], validate=True)
        Ed25519PublicKey.from_public_bytes(signer).verify(
            sig, b"cloudguard/v2/commit\x00" + body)
        assert doc["vault"] == (None if doc["pos"] == 0 else CHAIN["vault_id"])
        assert doc["descriptor"] == hashlib.sha256(CHAIN["descriptor"].encode()).hexdigest()
        # the key object: its hash, every member's slot, the KEK commitment
        keyobj = vec["keyobj"].encode()
        assert hashlib.sha256(keyobj).hexdigest() == doc["keyobj"]
        ctx = spec_ctx(doc["vault"], doc["pos"], doc["parent"])
        assert ctx.hex() == vec["ctx"]
        slots = json.loads(keyobj)["slots"]
        assert set(slots) == set(doc["members"])
        for rid, slot in slots.items():
            priv = X25519PrivateKey.from_private_bytes(
                bytes.fromhex(CHAIN["members"][rid]["secret"])[:32])
            epk = base64.b64decode(slot["epk"], validate=True)
            pub = priv.public_key().public_bytes_raw()
            assert base64.b64decode(doc["members"][rid]["x"]) == pub
            ks = spec_hkdf(priv.exchange(X25519PublicKey.from_public_bytes(epk)),
                           b"cloudguard/v2/slot", salt=epk + pub)
            kek = AESGCM(ks).decrypt(bytes(12), base64.b64decode(slot["ct"]),
                                     b"cloudguard/v2/slot\x00" + ctx + b"\x00" + rid.encode())
            assert kek.hex() == CHAIN["kek"]
            assert spec_hkdf(kek, b"cloudguard/v2/kek-commit").hex() == doc["kek"]
        names = base64.b64decode(doc["names"], validate=True)
        opened = AESGCM(spec_hkdf(kek, b"cloudguard/v2/names")).decrypt(names[:12], names[12:],
                                                                        ctx)
        assert set(json.loads(opened)) == set(doc["members"])
        verified[cid] = doc
    assert CHAIN["commits"][0]["id"] == CHAIN["vault_id"]


def test_fingerprint_and_code_match_spec() -> None:
    def group4(text: str) -> str:
        return "-".join(text[i:i + 4] for i in range(0, 24, 4))

    for vec in VECTORS["enrolment"]:
        request = bytes.fromhex(vec["request"])
        assert request[:4] == b"CGE\x02"
        body = request[8:8 + int.from_bytes(request[4:8], "big")]
        assert len(request) == 8 + len(body) + 64
        digest = hashlib.sha256(b"cloudguard/v2/fp\x00" + body).digest()
        assert group4(base64.b32encode(digest[:15]).decode()) == vec["fingerprint"]
        doc = json.loads(body)
        assert set(doc) == {"type", "format", "vault", "rid", "name", "created", "x", "s"}
        Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["s"])).verify(
            request[-64:], b"cloudguard/v2/enroll\x00" + body)
    for vec in VECTORS["vault_code"]:
        code = group4(base64.b32encode(bytes.fromhex(vec["vault_id"])[:15]).decode())
        assert code == vec["code"]


# --- tampering ----------------------------------------------------------------------------

DEK = bytes(range(32))
FID_A = bytes(range(16))
FID_B = bytes(range(16, 32))
SIZE3 = 2 * fmt.CHUNK_SIZE + 1000   # three chunks, the last one short
PLAIN3 = pattern(SIZE3)
BLOB_A = encrypt(PLAIN3, DEK, FID_A, padding=False)
BLOB_B = encrypt(PLAIN3[::-1], DEK, FID_B, padding=False)
SEALED = fmt.CHUNK_SIZE + fmt.TAG_SIZE
H = fmt.BLOB_HEADER_SIZE


def chunks(blob: bytes) -> list[bytes]:
    body = blob[H:]
    return [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


def assemble(header: bytes, parts: list[bytes]) -> bytes:
    return header + b"".join(parts)


def assert_rejected(blob: bytes, file_id: bytes | None = FID_A, dek: bytes = DEK) -> None:
    with pytest.raises(IntegrityError):
        decrypt(blob, dek, file_id)
    with pytest.raises(IntegrityError):
        read_from_pack(blob, 0, len(blob), dek, file_id)


def test_tamper_fixture_is_sound() -> None:
    assert [len(c) for c in chunks(BLOB_A)] == [SEALED, SEALED, 1000 + fmt.TAG_SIZE]
    assert decrypt(BLOB_A, DEK, FID_A) == PLAIN3
    assert read_from_pack(BLOB_A, 0, len(BLOB_A), DEK, FID_A) == PLAIN3


FLIPS = {
    "magic-first": 0, "magic-version": 3, "file-id-first": 4, "file-id-last": 19,
    "commit-first": 20, "commit-last": 51, "length-first": 52, "length-tag-last": H - 1,
    "chunk0-first": H, "chunk0-middle": H + 30000, "chunk0-tag": H + SEALED - 1,
    "chunk1-first": H + SEALED, "last-chunk-first": H + 2 * SEALED,
    "last-chunk-ct-last": len(BLOB_A) - fmt.TAG_SIZE - 1,
    "tag-first": len(BLOB_A) - fmt.TAG_SIZE, "tag-last": len(BLOB_A) - 1,
}


@pytest.mark.parametrize("offset", FLIPS.values(), ids=FLIPS.keys())
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_flipped_byte(offset: int, bit: int) -> None:
    blob = bytearray(BLOB_A)
    blob[offset] ^= bit
    assert_rejected(bytes(blob))
    assert_rejected(bytes(blob), file_id=None)


def _truncation_points() -> list[int]:
    points = {0, 1, 3, 4, 20, 52, H - 1, H, H + 1, H + 100, len(BLOB_A) - 1}
    for k in range(1, 3):
        boundary = H + k * SEALED
        points |= {boundary - 1, boundary, boundary + 1, boundary - fmt.TAG_SIZE,
                   boundary - SEALED // 2}
    return sorted(p for p in points if p < len(BLOB_A))


@pytest.mark.parametrize("cut", _truncation_points())
def test_truncated(cut: int) -> None:
    assert_rejected(BLOB_A[:cut])


def test_truncated_at_every_chunk_boundary_of_many_chunks() -> None:
    plain = pattern(5 * fmt.CHUNK_SIZE)  # exact multiple: the last chunk is full
    blob = encrypt(plain, DEK, FID_A, padding=False)
    for k in range(5):
        with pytest.raises(IntegrityError):
            decrypt(blob[:H + k * SEALED], DEK, FID_A)
        with pytest.raises(IntegrityError):
            decrypt(blob[:H + k * SEALED + 7], DEK, FID_A)
    assert decrypt(blob, DEK, FID_A) == plain


CHUNK_EDITS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "drop-first": lambda c: c[1:],
    "drop-middle": lambda c: [c[0], c[2]],
    "drop-last": lambda c: c[:2],
    "swap-0-1": lambda c: [c[1], c[0], c[2]],
    "swap-1-2": lambda c: [c[0], c[2], c[1]],
    "reverse": lambda c: c[::-1],
    "dup-first": lambda c: [c[0], c[0], c[1], c[2]],
    "dup-middle": lambda c: [c[0], c[1], c[1], c[2]],
    "dup-first-replacing-second": lambda c: [c[0], c[0], c[2]],
}


@pytest.mark.parametrize("edit", CHUNK_EDITS.values(), ids=CHUNK_EDITS.keys())
def test_chunk_reordering(edit: Callable[[list[bytes]], list[bytes]]) -> None:
    assert_rejected(assemble(BLOB_A[:H], edit(chunks(BLOB_A))))


def test_trailing_bytes_are_caught_by_expect_end() -> None:
    """decrypt_blob_iter reads exactly the blob its authenticated header describes, so bytes
    after it are invisible to it; the reader of a pack must check that the stored length was
    used up (format.expect_end)."""
    pack_id = b"p" * 16
    for extra in (b"\x00", b"junk", chunks(BLOB_A)[-1], BLOB_B):
        tampered = fmt.pack_header(pack_id) + BLOB_A + extra
        # the blob itself still authenticates ...
        assert decrypt(tampered[fmt.PACK_HEADER_SIZE:], DEK, FID_A) == PLAIN3
        # ... but a length that runs to the end of the object does not match it
        with pytest.raises(IntegrityError):
            read_from_pack(tampered, fmt.PACK_HEADER_SIZE, len(BLOB_A) + len(extra), DEK, FID_A)
    with pytest.raises(IntegrityError):
        fmt.expect_end(io.BytesIO(b"x"))
    fmt.expect_end(io.BytesIO(b""))


def test_pack_of_blobs_read_by_offset_and_length() -> None:
    pack = fmt.pack_header(b"p" * 16) + BLOB_A + BLOB_B
    assert len(fmt.pack_header(b"p" * 16)) == fmt.PACK_HEADER_SIZE
    off_b = fmt.PACK_HEADER_SIZE + len(BLOB_A)
    assert read_from_pack(pack, fmt.PACK_HEADER_SIZE, len(BLOB_A), DEK, FID_A) == PLAIN3
    assert read_from_pack(pack, off_b, len(BLOB_B), DEK, FID_B) == PLAIN3[::-1]
    for offset, length, fid in [
        (fmt.PACK_HEADER_SIZE, len(BLOB_A) - 1, FID_A),   # stored length too short
        (fmt.PACK_HEADER_SIZE, len(BLOB_A) + 1, FID_A),   # too long: runs into the neighbour
        (off_b, len(BLOB_B), FID_A),                      # the neighbour under A's id
        (fmt.PACK_HEADER_SIZE + 1, len(BLOB_A), FID_A),   # wrong offset
        (off_b, len(BLOB_B) + 10, FID_B),                 # past the end of the pack
    ]:
        with pytest.raises(IntegrityError):
            read_from_pack(pack, offset, length, DEK, fid)


def test_chunk_spliced_from_another_file() -> None:
    a, b = chunks(BLOB_A), chunks(BLOB_B)
    for i in range(3):
        parts = list(a)
        parts[i] = b[i]
        assert_rejected(assemble(BLOB_A[:H], parts))
    # B's header with A's chunks, and A's header with all of B's chunks
    assert_rejected(assemble(BLOB_B[:H], a), file_id=FID_B)
    assert_rejected(assemble(BLOB_A[:H], b))


def test_swapped_blob() -> None:
    assert_rejected(BLOB_B, file_id=FID_A)
    assert_rejected(BLOB_A, file_id=FID_B)
    with pytest.raises(IntegrityError):
        fmt.open_blob_header(BLOB_A[:H], DEK, FID_B)


def test_wrong_dek() -> None:
    for dek in (bytes(32), DEK[:-1] + b"\x00", DEK + b"\x00", b""):
        assert_rejected(BLOB_A, dek=dek)
        assert_rejected(BLOB_A, file_id=None, dek=dek)


def test_wrong_sha256() -> None:
    good = hashlib.sha256(PLAIN3).hexdigest()
    assert decrypt(BLOB_A, DEK, FID_A, good) == PLAIN3
    for bad in ("0" * 64, good[:-1] + ("0" if good[-1] != "0" else "1"), good.upper(), "",
                "é" * 64, good + "\udcff"):
        with pytest.raises(IntegrityError):
            decrypt(BLOB_A, DEK, FID_A, bad)


def _forged_header(size: int, padded: int, dek: bytes = DEK, fid: bytes = FID_A) -> bytes:
    """A header sealed with the right key (so only the size check can reject it)."""
    key, commit = spec_keys(dek, fid)
    length_ct = AESGCM(key).encrypt(b"\x01" + bytes(11), struct.pack(">QQ", size, padded),
                                    b"cloudguard/v2/length\x02" + fid)
    return b"CGB\x02" + fid + commit + length_ct


def test_header_size_larger_than_padded() -> None:
    assert fmt.open_blob_header(_forged_header(5, 10), DEK, FID_A).size == 5
    for size, padded in [(11, 10), (1, 0), (2**64 - 1, 2**64 - 2)]:
        header = _forged_header(size, padded)
        with pytest.raises(IntegrityError):
            fmt.open_blob_header(header, DEK, FID_A)
        assert_rejected(header + chunks(BLOB_A)[0])


def test_header_of_wrong_length() -> None:
    for header in (BLOB_A[: H - 1], BLOB_A[: H + 1], b""):
        with pytest.raises(IntegrityError):
            fmt.open_blob_header(header, DEK, FID_A)


@pytest.mark.parametrize(("size", "real"), [
    (10, 9), (10, 11), (1, 0), (0, 1), (fmt.CHUNK_SIZE, fmt.CHUNK_SIZE - 1),
    (fmt.CHUNK_SIZE, fmt.CHUNK_SIZE + 1), (150000, 100), (150000, 150001), (100, 10**6),
])
@pytest.mark.parametrize("padding", [True, False])
def test_source_shorter_or_longer_than_size(size: int, real: int, padding: bool) -> None:
    with pytest.raises(FileChangedError):
        fmt.encrypt_blob(io.BytesIO(pattern(real)), io.BytesIO(), DEK, FID_A, size, padding)


def test_trickling_source_is_read_fully() -> None:
    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.src = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self.src.read(min(size, 777) if size >= 0 else 777)

    out = io.BytesIO()
    fmt.encrypt_blob(Trickle(PLAIN3), out, DEK, FID_A, SIZE3, padding=False)
    assert out.getvalue() == BLOB_A


def test_writer_rejects_malformed_fixed_inputs() -> None:
    with pytest.raises(ValueError):
        fmt.encrypt_blob(io.BytesIO(b"x"), io.BytesIO(), DEK, b"short", 1)
    signer = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(ValueError):
        fmt.seal_segment(DEK, 1, "ab" * 32, "v", "m", {}, signer, nonce=bytes(16))
    with pytest.raises(ValueError):
        fmt.seal_segment(DEK, 1, "ab" * 31, "v", "m", {}, signer)
    with pytest.raises(ValueError):
        fmt.seal_json(DEK, b"i", b"", {}, nonce=bytes(8))


# --- segments, slots, sealed JSON, kits ---------------------------------------------------

KEK = bytes(range(100, 132))
WRITER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WRITER_PUB = fmt.public_bytes(WRITER)
VAULT = "ab" * 32
HEAD = "cd" * 32
SEG = "m/0123456789abcdef-000000000005.d"


def read_segment(blob: bytes, name: str = SEG, kek: bytes = KEK, vault: str = VAULT,
                 pub: bytes = WRITER_PUB) -> dict[str, Any]:
    fmt.verify_segment(blob, vault, name, pub)
    return fmt.open_segment(kek, vault, name, blob)


def test_segment_tampering() -> None:
    sealed = fmt.seal_segment(KEK, 5, HEAD, VAULT, SEG, {"a": 1}, WRITER)
    assert read_segment(sealed) == {"a": 1}
    assert len(sealed) == fmt.SEGMENT_MIN_SIZE  # padded to 4 KiB of plaintext
    for name in (SEG.replace("05.d", "06.d"), SEG + " ", "", SEG.upper()):
        with pytest.raises(IntegrityError):
            fmt.verify_segment(sealed, VAULT, name, WRITER_PUB)
        with pytest.raises(IntegrityError):
            fmt.open_segment(KEK, VAULT, name, sealed)
    for vault in ("", "ab" * 31 + "ac"):
        with pytest.raises(IntegrityError):
            read_segment(sealed, vault=vault)
        with pytest.raises(IntegrityError):
            fmt.open_segment(KEK, vault, SEG, sealed)
    with pytest.raises(IntegrityError):
        fmt.open_segment(bytes(32), VAULT, SEG, sealed)
    other = fmt.public_bytes(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    for pub in (other, bytes(32), WRITER_PUB[:31], b""):
        with pytest.raises(IntegrityError):
            fmt.verify_segment(sealed, VAULT, SEG, pub)
    for i in range(len(sealed)):
        blob = bytearray(sealed)
        blob[i] ^= 0x10
        with pytest.raises(IntegrityError):
            read_segment(bytes(blob))
        if i < len(sealed) - fmt.SIGNATURE_SIZE:  # the key alone catches it too
            with pytest.raises(IntegrityError):
                fmt.open_segment(KEK, VAULT, SEG, bytes(blob))
    for cut in list(range(0, 200)) + list(range(len(sealed) - 200, len(sealed))):
        with pytest.raises(IntegrityError):
            read_segment(sealed[:cut])
    with pytest.raises(IntegrityError):
        read_segment(sealed + b"\x00")
    # the head is readable without the key, and signed
    moved = sealed[:4] + struct.pack(">I", 6) + sealed[8:]
    assert fmt.segment_head(moved) == (6, HEAD)
    assert fmt.segment_head(sealed) == (5, HEAD)
    with pytest.raises(IntegrityError):
        fmt.verify_segment(moved, VAULT, SEG, WRITER_PUB)
    with pytest.raises(IntegrityError):
        fmt.segment_head(b"CGM\x01" + sealed[4:])


def _seal_raw(plain: bytes, name: str = "m") -> bytes:
    """A segment whose padded plaintext is given exactly, signed by WRITER."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"cloudguard/v2/manifest").derive(KEK)
    header = b"CGM\x02" + struct.pack(">I", 1) + bytes.fromhex(HEAD) + bytes(12)
    names = VAULT.encode() + b"\x00" + name.encode() + b"\x00"
    sealed = header + AESGCM(key).encrypt(bytes(12), plain,
                                          b"cloudguard/v2/segment\x00" + names + header)
    return sealed + WRITER.sign(b"cloudguard/v2/segment\x00" + names + sealed)


def _padded(z: bytes, pad: bytes | None = None) -> bytes:
    plain = struct.pack(">I", len(z)) + z
    return plain + (pad if pad is not None else bytes(spec_padme(max(4096, len(plain)))
                                                      - len(plain)))


def test_segment_payload_must_be_object() -> None:
    assert read_segment(_seal_raw(_padded(zlib.compress(b'{"a":1}'))), "m") == {"a": 1}
    for plain in (_padded(zlib.compress(b"[1,2]")), _padded(zlib.compress(b"not json")),
                  _padded(b"not zlib"), _padded(zlib.compress(b'{"a":1}')[:-3]),
                  _padded(zlib.compress(b'{"a":1}') + b"x"),
                  _padded(zlib.compress(b'{"a":1,"a":2}')),
                  _padded(zlib.compress(b'{"a":1}'), b"\x01" + bytes(4083)),  # non-zero padding
                  struct.pack(">I", 5000) + bytes(4092)):  # length past the end
        with pytest.raises(IntegrityError):
            read_segment(_seal_raw(plain), "m")


def test_dek_unwrap_tampering() -> None:
    fid = bytes(range(16))
    wrapped = fmt.wrap_dek(KEK, DEK, fid)
    assert len(wrapped) == 60 and fmt.unwrap_dek(KEK, wrapped, fid) == DEK
    assert fmt.wrap_dek(KEK, DEK, fid) != wrapped  # a fresh nonce every time
    flipped = bytearray(wrapped)
    flipped[20] ^= 1
    for bad_kek, bad, bad_fid in [
            (bytes(32), wrapped, fid), (KEK, wrapped[:-8], fid), (KEK, wrapped + bytes(8), fid),
            (KEK, bytes(len(wrapped)), fid), (KEK, b"", fid), (KEK, wrapped[:-1], fid),
            (KEK, bytes(flipped), fid), (KEK, wrapped, bytes(16)),  # moved to another file
            (KEK, wrapped, fid[:8])]:
        with pytest.raises(IntegrityError):
            fmt.unwrap_dek(bad_kek, bad, bad_fid)


def test_slot_tampering() -> None:
    priv = X25519PrivateKey.from_private_bytes(b"r" * 32)
    ctx = chain.context(VAULT, 3, HEAD)
    slot = fmt.wrap_to_recipient(fmt.public_bytes(priv), b"s" * 32, ctx, "0123456789abcdef")
    assert fmt.unwrap_from_slot(priv, slot, ctx, "0123456789abcdef") == b"s" * 32
    other = X25519PrivateKey.from_private_bytes(b"o" * 32)
    rid = "0123456789abcdef"
    for key, s, c, r in [
        (other, slot, ctx, rid), (priv, slot, chain.context(VAULT, 4, HEAD), rid),
        (priv, slot, chain.context(VAULT, 3, "cd" * 31 + "ce"), rid),
        (priv, slot, chain.context("", 3, HEAD), rid), (priv, slot, ctx, "0123456789abcdee"),
        (priv, {**slot, "epk": fmt.b64(bytes(32))}, ctx, rid),
        (priv, {**slot, "ct": slot["epk"]}, ctx, rid), (priv, {"ct": slot["ct"]}, ctx, rid),
        (priv, {**slot, "epk": "%%%"}, ctx, rid), (priv, {**slot, "ct": 5}, ctx, rid),
        (priv, [slot], ctx, rid), (priv, {**slot, "epk": fmt.b64(bytes(31))}, ctx, rid),
    ]:
        with pytest.raises(IntegrityError):
            fmt.unwrap_from_slot(key, s, c, r)


def test_sealed_json_tampering() -> None:
    sealed = fmt.seal_json(KEK, b"info", b"aad", {"k": "v"})
    assert fmt.open_json(KEK, b"info", b"aad", sealed) == {"k": "v"}
    for km, info, aad, s in [(bytes(32), b"info", b"aad", sealed), (KEK, b"inf0", b"aad", sealed),
                             (KEK, b"info", b"aad2", sealed), (KEK, b"info", b"aad", sealed[4:]),
                             (KEK, b"info", b"aad", None), (KEK, b"info", b"aad", "AAAA")]:
        with pytest.raises(IntegrityError):
            fmt.open_json(km, info, aad, s)


def test_passphrase_kit_tampering(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = fmt.seal_with_passphrase(b"secret", "pw", {"vault": "v1"}, log_n=10)
    assert fmt.open_with_passphrase(doc, "pw") == b"secret"
    assert doc["kdf"] == {"alg": "scrypt", "log_n": 10, "r": 8, "p": 1, "salt": doc["kdf"]["salt"]}
    for wrong in ("pW", "pw ", "", "\udcff"):
        with pytest.raises(IntegrityError):
            fmt.open_with_passphrase(doc, wrong)
    for field, value in [("vault", "v2"), ("extra", 1), ("nonce", fmt.b64(bytes(12)))]:
        with pytest.raises(IntegrityError):
            fmt.open_with_passphrase({**doc, field: value}, "pw")
    with pytest.raises(IntegrityError):
        fmt.open_with_passphrase({k: v for k, v in doc.items() if k != "vault"}, "pw")
    # KDF parameters outside what seal_with_passphrase writes never reach scrypt
    calls: list[int] = []
    real = slots.Scrypt

    def counting_scrypt(**kw: Any) -> Any:
        calls.append(kw["n"])
        return real(**kw)

    monkeypatch.setattr(slots, "Scrypt", counting_scrypt)
    for change in [{"log_n": fmt.MAX_LOG_N + 1}, {"log_n": 64}, {"log_n": 10**100},
                   {"log_n": 0}, {"log_n": -1}, {"log_n": "10"}, {"log_n": 10.0},
                   {"log_n": True}, {"r": 16}, {"r": 32}, {"p": 16}, {"p": 2}, {"r": 0},
                   {"alg": "argon2id"}, {"salt": fmt.b64(bytes(8))}, {"salt": 5}]:
        start = time.monotonic()
        with pytest.raises(IntegrityError):
            fmt.open_with_passphrase({**doc, "kdf": {**doc["kdf"], **change}}, "pw")
        assert time.monotonic() - start < 0.5, change
    assert calls == []
    for broken in ({}, {"kdf": None}, {"kdf": "scrypt"}, {"kdf": []}, {**doc, "ct": 1}):
        with pytest.raises(IntegrityError):
            fmt.open_with_passphrase(broken, "pw")


# --- padding ------------------------------------------------------------------------------


def test_padme_bounds() -> None:
    rng = random.Random(1)
    values = list(range(0, 70000)) + [rng.randrange(1, 2**48) for _ in range(20000)]
    values += [2**k + d for k in range(1, 50) for d in (-1, 0, 1)]
    for n in values:
        p = fmt.padme(n)
        assert p >= n
        assert fmt.padme(p) == p
        assert p == spec_padme(n)
        if n >= 1024:
            assert (p - n) / n <= 0.12, n
    assert fmt.padme(0) == 0 and fmt.padme(1) == 1


def test_padme_leaks_few_sizes() -> None:
    # lengths in [1 MiB, 2 MiB) round up to multiples of 2**(20 - 5): 32 sizes and 2 MiB itself
    assert len({fmt.padme(n) for n in range(MiB, 2 * MiB, 97)}) <= 33
    assert {fmt.padme(n) % 2**15 for n in range(MiB, 2 * MiB, 97)} == {0}


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 1000, 1023, 1025, 4097, 65535, 65536, 65537,
                                  2 * 65536, 2 * 65536 + 1, 200000])
@pytest.mark.parametrize("padding", [True, False])
def test_blob_size_matches_output(size: int, padding: bool) -> None:
    blob = encrypt(pattern(size), DEK, FID_A, padding)
    assert len(blob) == fmt.blob_size(size, padding)
    padded = fmt.padded_length(size, padding)
    assert len(blob) == H + padded + fmt.TAG_SIZE * fmt.chunk_count(padded)
    assert decrypt(blob, DEK, FID_A) == pattern(size)


# --- memory -------------------------------------------------------------------------------


class PatternSource:
    """A reader that produces ``size`` bytes of the vector pattern without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.pos = 0
        self.block = pattern(256) * (fmt.CHUNK_SIZE // 256 + 2)

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        size = min(size, fmt.CHUNK_SIZE)
        start = self.pos % 256
        data = self.block[start:start + size]
        self.pos += size
        self.left -= size
        return data


class HashSink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.count += len(data)
        return len(data)


def test_streaming_memory_stays_flat(tmp_path: Path) -> None:
    size = 64 * MiB + 12345
    expected = hashlib.sha256()
    src = PatternSource(size)
    while piece := src.read(fmt.CHUNK_SIZE):
        expected.update(piece)
    path = tmp_path / "big.blob"
    tracemalloc.start()
    try:
        with path.open("wb") as out:
            info = fmt.encrypt_blob(PatternSource(size), out, DEK, FID_A, size, padding=True)
        sink = HashSink()
        with path.open("rb") as f:
            reader = fmt.read_blob_stream(f, info.blob_len)
            fmt.decrypt_blob(reader, sink, DEK, FID_A, info.sha256)
            fmt.expect_end(reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.sha256 == expected.hexdigest()
    assert info.blob_len == path.stat().st_size == fmt.blob_size(size, True)
    assert sink.count == size and sink.digest.hexdigest() == expected.hexdigest()
    assert peak < 4 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


# --- the spec document --------------------------------------------------------------------


def test_spec_names_every_label_and_its_examples_hold() -> None:
    doc = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")
    code = "".join(path.read_text(encoding="utf-8")
                   for path in sorted((ROOT / "cloudguard" / "format").glob("*.py")))
    chain_code = (ROOT / "cloudguard" / "chain.py").read_text(encoding="utf-8")
    labels = set(re.findall(r'b"(cloudguard/v2/[a-z-]+)', code + chain_code))
    assert len(labels) >= 16
    for label in labels:
        assert f"`{label}`" in doc, label
    examples = re.findall(r"`padme\((\d+)\) = (\d+)`", doc)
    assert len(examples) >= 4
    for length, padded in examples:
        assert fmt.padme(int(length)) == int(padded)
    assert "## Remote layout and manifest" in doc
    for magic in (fmt.BLOB_MAGIC, fmt.PACK_MAGIC, fmt.SEGMENT_MAGIC):
        assert f'"{magic[:3].decode()}" || 0x02' in doc
