"""Fuzzing the readers of format v1: whatever the input, the only exception that may leave
cloudguard.format is IntegrityError (never FileChangedError, never a ValueError/KeyError/...).

Any other exception escapes the ``rejects`` helper and fails the test.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloudguard import format as fmt
from cloudguard.errors import IntegrityError
from cloudguard.format import slots

# hypothesis' failure report touches mypy_extensions.TypedDict, whose DeprecationWarning the
# project-wide filterwarnings=error would turn into an INTERNALERROR hiding the real failure
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

T = TypeVar("T")
_MISSING = object()


def rejects(fn: Callable[..., T], *args: Any) -> T | object:
    """Call fn; IntegrityError is the accepted failure (returns _MISSING), anything else
    propagates and fails the test."""
    try:
        return fn(*args)
    except IntegrityError:
        return _MISSING


# --- fixed valid inputs to mutate ---------------------------------------------------------

DEK = bytes(range(32))
FID = bytes(range(100, 116))
KEK = bytes(range(200, 232))


def _blob(plain: bytes, padding: bool) -> bytes:
    out = io.BytesIO()
    fmt.encrypt_blob(io.BytesIO(plain), out, DEK, FID, len(plain), padding)
    return out.getvalue()


PLAINS = [b"", b"x", bytes(range(100)), bytes(fmt.CHUNK_SIZE + 7)]
BLOBS = [(p, _blob(p, padding)) for p in PLAINS for padding in (True, False)]
SEGMENT_NAME = "manifest/0003-ab"
SEGMENT_PAYLOAD: dict[str, Any] = {"files": {"a.txt": {"s": 3, "h": "00" * 32}}, "n": 3}
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(50, 82)))
SIGNER_PUB = fmt.public_bytes(SIGNER)
HEAD = "ab" * 32
VAULT = "cd" * 32
SEGMENT = fmt.seal_segment(KEK, 3, HEAD, VAULT, SEGMENT_NAME, SEGMENT_PAYLOAD, SIGNER)
RECIPIENT = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CTX = b"vault-1\x002\x00parent"
SLOT = fmt.wrap_to_recipient(fmt.public_bytes(RECIPIENT), KEK, CTX, "dev-1")
JSON_ARGS = (KEK, b"cloudguard/v2/test", b"aad")
SEALED_JSON = fmt.seal_json(*JSON_ARGS, {"k": [1, 2, "v"]})
KIT = fmt.seal_with_passphrase(b"s" * 32, "pw", {"cloudguard": "recovery-kit", "vault": "v"},
                               log_n=10)


# --- mutations ----------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A valid input with a few flips, cuts, insertions or deletions."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "append"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        else:
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


def with_prefix(prefix: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size),
                     st.binary(max_size=max_size).map(lambda b: prefix + b))


keys = st.one_of(st.sampled_from(["kdf", "ct", "nonce", "alg", "rid", "a"]), st.text(max_size=4))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                         st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
json_objects = st.dictionaries(keys, json_values, max_size=4)
valid_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


def b64_of(max_size: int) -> st.SearchStrategy[str]:
    return st.binary(max_size=max_size).map(fmt.b64)


# --- blobs --------------------------------------------------------------------------------


@FUZZ
@given(header=with_prefix(b"CGB\x01", 100), dek=st.binary(max_size=40),
       expected=st.one_of(st.none(), st.binary(max_size=20)))
def test_open_blob_header_arbitrary(header: bytes, dek: bytes, expected: bytes | None) -> None:
    assert rejects(fmt.open_blob_header, header, dek, expected) is _MISSING


@FUZZ
@given(data=st.data(), which=st.integers(0, len(BLOBS) - 1),
       expected=st.sampled_from([FID, None]))
def test_open_blob_header_mutated(data: st.DataObject, which: int,
                                  expected: bytes | None) -> None:
    original = BLOBS[which][1][: fmt.BLOB_HEADER_SIZE]
    header = data.draw(mutated(original))
    result = rejects(fmt.open_blob_header, header, DEK, expected)
    assert (result is _MISSING) == (header != original)


def _consume(blob: bytes, dek: bytes, expected: bytes | None, limit: int | None) -> bytes:
    src: fmt.Reader = io.BytesIO(blob)
    if limit is not None:
        src = fmt.read_blob_stream(src, limit)
    out = b"".join(fmt.decrypt_blob_iter(src, dek, expected))
    fmt.expect_end(src)
    return out


@FUZZ
@given(blob=with_prefix(b"CGB\x01" + FID, 400), dek=st.sampled_from([DEK, bytes(32), b""]),
       expected=st.sampled_from([FID, None]), limit=st.one_of(st.none(), st.integers(0, 500)))
def test_decrypt_blob_iter_arbitrary(blob: bytes, dek: bytes, expected: bytes | None,
                                     limit: int | None) -> None:
    assert rejects(_consume, blob, dek, expected, limit) is _MISSING


@FUZZ
@given(data=st.data(), which=st.integers(0, len(BLOBS) - 1),
       expected=st.sampled_from([FID, None]), use_limit=st.booleans())
def test_decrypt_blob_iter_mutated(data: st.DataObject, which: int, expected: bytes | None,
                                   use_limit: bool) -> None:
    plain, original = BLOBS[which]
    blob = data.draw(mutated(original))
    result = rejects(_consume, blob, DEK, expected, len(blob) if use_limit else None)
    if blob == original:
        assert result == plain
    elif use_limit or len(blob) < len(original) or blob[: len(original)] != original:
        # with the stored length known, any change is caught; without it, only bytes
        # appended after an intact blob go unseen by the blob reader itself
        assert result is _MISSING
    else:
        assert result is _MISSING or result == plain


@FUZZ
@given(kek=st.binary(max_size=40), wrapped=st.binary(max_size=80),
       file_id=st.binary(max_size=20))
def test_unwrap_dek_arbitrary(kek: bytes, wrapped: bytes, file_id: bytes) -> None:
    assert rejects(fmt.unwrap_dek, kek, wrapped, file_id) is _MISSING


# --- segments -----------------------------------------------------------------------------


def _open_checked(kek: bytes, name: str, blob: bytes) -> dict[str, Any]:
    """What a reader does: the writer's signature first, then the decryption."""
    fmt.verify_segment(blob, VAULT, name, SIGNER_PUB)
    return fmt.open_segment(kek, VAULT, name, blob)


@FUZZ
@given(blob=with_prefix(b"CGM\x02", fmt.SEGMENT_MIN_SIZE + 20))
def test_segment_head_arbitrary(blob: bytes) -> None:
    result = rejects(fmt.segment_head, blob)
    if result is not _MISSING:
        assert blob[:4] == b"CGM\x02" and len(blob) >= fmt.SEGMENT_MIN_SIZE
        assert result == (int.from_bytes(blob[4:8], "big"), blob[8:40].hex())


@FUZZ
@given(blob=with_prefix(b"CGM\x02\x00\x00\x00\x03", fmt.SEGMENT_MIN_SIZE + 20),
       kek=st.sampled_from([KEK, b"", DEK]),
       name=st.one_of(st.just(SEGMENT_NAME), st.text(max_size=20)))
def test_open_segment_arbitrary(blob: bytes, kek: bytes, name: str) -> None:
    assert rejects(_open_checked, kek, name, blob) is _MISSING
    assert rejects(fmt.open_segment, kek, VAULT, name, blob) is _MISSING


@FUZZ
@given(data=st.data(), name=st.one_of(st.just(SEGMENT_NAME), st.text(max_size=20)))
def test_open_segment_mutated(data: st.DataObject, name: str) -> None:
    blob = data.draw(mutated(SEGMENT))
    result = rejects(_open_checked, KEK, name, blob)
    if blob == SEGMENT and name == SEGMENT_NAME:
        assert result == SEGMENT_PAYLOAD
    else:
        assert result is _MISSING


@FUZZ
@given(payload=json_objects, name=valid_text, pos=st.integers(0, 2**32 - 1))
def test_segment_roundtrip(payload: dict[str, Any], name: str, pos: int) -> None:
    sealed = fmt.seal_segment(KEK, pos, HEAD, VAULT, name, payload, SIGNER)
    assert fmt.segment_head(sealed) == (pos, HEAD)
    assert len(sealed) >= fmt.SEGMENT_MIN_SIZE
    assert _open_checked(KEK, name, sealed) == json.loads(json.dumps(payload))


# --- key slots ----------------------------------------------------------------------------

slot_values = st.one_of(st.text(max_size=60), b64_of(64),
                        st.binary(min_size=32, max_size=32).map(fmt.b64),  # a well-formed key
                        st.just(SLOT["epk"]), st.just(SLOT["ct"]))


@FUZZ
@given(slot=st.dictionaries(st.one_of(st.sampled_from(["epk", "ct"]), st.text(max_size=5)),
                            slot_values, max_size=5),
       ctx=st.one_of(st.just(CTX), st.binary(max_size=20)),
       rid=st.one_of(st.just("dev-1"), st.text(max_size=8)))
def test_unwrap_from_slot_arbitrary(slot: dict[str, Any], ctx: bytes, rid: str) -> None:
    assume({k: slot.get(k) for k in SLOT} != SLOT)
    assert rejects(fmt.unwrap_from_slot, RECIPIENT, slot, ctx, rid) is _MISSING


@FUZZ
@given(field=st.sampled_from(sorted(SLOT)), value=st.one_of(json_values, slot_values))
def test_unwrap_from_slot_mutated(field: str, value: Any) -> None:
    slot = {**SLOT, field: value}
    result = rejects(fmt.unwrap_from_slot, RECIPIENT, slot, CTX, "dev-1")
    if value == SLOT[field] or (field == "epk" and _b64_equal(value, SLOT[field])) or (
            field == "ct" and _b64_equal(value, SLOT[field])):
        assert result in (KEK, _MISSING)
    else:
        assert result is _MISSING


def _b64_equal(value: Any, reference: str) -> bool:
    """base64 is not canonical (padding bits), so another text may decode to the same bytes."""
    try:
        return fmt.unb64(value) == fmt.unb64(reference)
    except IntegrityError:
        return False


# --- sealed JSON --------------------------------------------------------------------------


@FUZZ
@given(sealed=st.one_of(st.text(max_size=80), b64_of(80), st.binary(max_size=40), st.none(),
                        st.integers(), json_values),
       key_material=st.one_of(st.just(KEK), st.binary(max_size=40)),
       info=st.binary(max_size=30), aad=st.binary(max_size=30))
def test_open_json_arbitrary(sealed: object, key_material: bytes, info: bytes,
                             aad: bytes) -> None:
    assert rejects(fmt.open_json, key_material, info, aad, sealed) is _MISSING


@FUZZ
@given(data=st.data())
def test_open_json_mutated(data: st.DataObject) -> None:
    raw = data.draw(mutated(fmt.unb64(SEALED_JSON)))
    as_text = data.draw(st.booleans())
    sealed = data.draw(mutated(SEALED_JSON.encode())).decode("latin-1") if as_text else fmt.b64(raw)
    result = rejects(fmt.open_json, *JSON_ARGS, sealed)
    if _b64_equal(sealed, SEALED_JSON):
        assert result == {"k": [1, 2, "v"]}
    else:
        assert result is _MISSING


@FUZZ
@given(payload=json_objects, aad=st.binary(max_size=20))
def test_sealed_json_roundtrip(payload: dict[str, Any], aad: bytes) -> None:
    sealed = fmt.seal_json(KEK, b"info", aad, payload)
    assert fmt.open_json(KEK, b"info", aad, sealed) == json.loads(json.dumps(payload))


# --- passphrase kits ----------------------------------------------------------------------

_real_scrypt = slots.Scrypt
_scrypt_calls: list[tuple[int, int, int]] = []


def _guarded_scrypt(*, salt: bytes, length: int, n: int, r: int, p: int) -> Any:
    """Fails the test if the module would run scrypt harder than an honest kit allows, and
    keeps fuzzing cheap by running at most 2**10 (a doc claiming more cannot open anyway: the
    claimed log_n is in the associated data)."""
    _scrypt_calls.append((n, r, p))
    assert n <= 2**fmt.MAX_LOG_N and (r, p) == (fmt.SCRYPT_R, fmt.SCRYPT_P), (n, r, p)
    return _real_scrypt(salt=salt, length=length, n=min(n, 2**10), r=r, p=p)


@pytest.fixture(autouse=True, scope="module")
def _cheap_scrypt() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slots, "Scrypt", _guarded_scrypt)
        yield


kdf_values = st.one_of(json_values, st.integers(-2, 70), st.sampled_from(["scrypt", 8, 1, 10]),
                       b64_of(24))


@FUZZ
@given(doc=json_objects, passphrase=st.text(max_size=10))
def test_open_with_passphrase_arbitrary(doc: dict[str, Any], passphrase: str) -> None:
    assert rejects(fmt.open_with_passphrase, doc, passphrase) is _MISSING


def near(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``valid``, sometimes anything (flatmap: one_of would flatten kdf_values' branches
    and draw ``valid`` rarely)."""
    return st.integers(0, 4).flatmap(lambda k: kdf_values if k == 0 else valid)


kdf_objects = st.one_of(
    st.dictionaries(st.sampled_from(["alg", "log_n", "r", "p", "salt"]), kdf_values),
    st.fixed_dictionaries({
        "alg": near(st.just("scrypt")), "log_n": near(st.integers(-1, 24)),
        "r": near(st.integers(0, 33)), "p": near(st.integers(0, 17)),
        "salt": near(st.binary(min_size=14, max_size=40).map(fmt.b64)),
    }),
)


@FUZZ
@given(kdf=kdf_objects,
       nonce=st.one_of(b64_of(16), json_values), ct=st.one_of(b64_of(60), json_values),
       extra=json_objects, passphrase=st.sampled_from(["pw", "", "\udcff"]))
def test_open_with_passphrase_structured(kdf: dict[str, Any], nonce: Any, ct: Any,
                                         extra: dict[str, Any], passphrase: str) -> None:
    doc = {**extra, "kdf": kdf, "nonce": nonce, "ct": ct}
    assert rejects(fmt.open_with_passphrase, doc, passphrase) is _MISSING


KIT_PATHS = [("kdf", k) for k in sorted(KIT["kdf"])] + [(k,) for k in sorted(KIT) if k != "kdf"]


@FUZZ
@given(path=st.sampled_from(KIT_PATHS + [("kdf",), ("new",)]),
       value=st.one_of(kdf_values, st.integers(1, fmt.MAX_LOG_N)),
       drop=st.booleans())
def test_open_with_passphrase_mutated(path: tuple[str, ...], value: Any, drop: bool) -> None:
    doc = json.loads(json.dumps(KIT))
    target = doc
    for key in path[:-1]:
        target = target[key]
    old = target.get(path[-1], _MISSING)
    if drop:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    result = rejects(fmt.open_with_passphrase, doc, "pw")
    if _canonical(doc) == _canonical(KIT) or (path == ("ct",) and not drop and isinstance(old, str)
                      and _b64_equal(value, old)):
        assert result == b"s" * 32
    else:
        assert result is _MISSING


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)  # True == 1 == 1.0 in Python, but not in the AAD


def test_scrypt_guard_was_exercised() -> None:
    """The fuzzers above reached scrypt and never asked for more than the bounds."""
    _scrypt_calls.clear()
    assert fmt.open_with_passphrase(KIT, "pw") == b"s" * 32
    assert _scrypt_calls == [(2**10, 8, 1)]
    doc = json.loads(json.dumps(KIT))
    doc["kdf"]["log_n"] = fmt.MAX_LOG_N  # allowed, but only 2**22 * 1 KiB, and the AAD differs
    assert rejects(fmt.open_with_passphrase, doc, "pw") is _MISSING
    assert _scrypt_calls[-1] == (2**fmt.MAX_LOG_N, 8, 1)
