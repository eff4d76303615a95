"""Fuzz the parsers above the format layer: descriptor, key-slot objects, manifest payloads.

The only failures allowed are the project's typed errors: IntegrityError, or the
unknown-version error that asks the user to upgrade.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudguard import chain, membership
from cloudguard import format as fmt
from cloudguard import manifest as mf
from cloudguard.errors import CloudguardError, IntegrityError
from cloudguard.layout import parse_descriptor

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=10), children, max_size=4),
    max_leaves=20)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def typed_only(exc: BaseException) -> None:
    assert isinstance(exc, IntegrityError) or (
        isinstance(exc, CloudguardError) and "unknown" in str(exc)), repr(exc)


@SETTINGS
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_descriptor_parser(raw: bytes) -> None:
    try:
        parse_descriptor(raw, "remote")
    except Exception as exc:  # noqa: BLE001 - the point of the test
        typed_only(exc)


VALID = json.dumps({"cloudguard": "vault", "format": 2, "salt": "ab" * 16,
                    "chunk_size": 65536, "padding": "padme", "created": "x"}).encode()


@SETTINGS
@given(st.sampled_from(["cloudguard", "format", "vault", "chunk_size", "padding"]), JSON)
def test_descriptor_fields(field: str, value: Any) -> None:
    doc = json.loads(VALID)
    doc[field] = value
    try:
        parse_descriptor(json.dumps(doc).encode(), "remote")
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


ME = chain.Secret(X25519PrivateKey.from_private_bytes(bytes(range(32))),
                  Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
RID = "00" * 8
KEK = bytes(32)
GENESIS, GENESIS_BYTES, GENESIS_KEYS = chain.build(
    None, "", ME, RID, "genesis", {RID: ME.public("device")}, {}, KEK, 1, {RID: "n"}, {},
    "11" * 32, "2026-01-01T00:00:00Z")


def _verify(data: bytes) -> None:
    membership.verify(GENESIS.id, [GENESIS.name], {GENESIS.name: data}.__getitem__, set(),
                      "11" * 32)


@SETTINGS
@given(st.sampled_from(sorted(chain._BODY_KEYS)), JSON)
def test_commit_fields(field: str, value: Any) -> None:
    """A commit whose field was changed fails (its id no longer matches), typed."""
    doc = json.loads(GENESIS.body)
    doc[field] = value
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    data = GENESIS_BYTES[:4] + len(body).to_bytes(4, "big") + body + GENESIS.sig
    try:
        _verify(data)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


@SETTINGS
@given(st.binary(max_size=400))
def test_commit_bytes(raw: bytes) -> None:
    try:
        _verify(raw)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


def test_commit_roundtrip() -> None:
    view = membership.verify(GENESIS.id, [GENESIS.name], {GENESIS.name: GENESIS_BYTES}.__getitem__,
                        set(), "11" * 32)
    assert chain.open_keys(view, view.head, GENESIS_KEYS, RID, ME.x) == KEK


def _opener(name: str, _dev: str, _seq: int, data: bytes) -> dict[str, Any]:
    fmt.verify_segment(data, "v", name, fmt.public_bytes(ME.s))
    return fmt.open_segment(KEK, "v", name, data)


def _seal(name: str, body: dict[str, Any]) -> bytes:
    return fmt.seal_segment(KEK, 0, "22" * 32, "v", name, body, ME.s)


@SETTINGS
@given(JSON, st.sampled_from(["d", "s"]))
def test_manifest_payloads(payload: Any, kind: str) -> None:
    """Even a keyholder's garbage payload must not crash a reader with an untyped error."""
    dev = "0" * 16
    name = mf.segment_name(dev, 1, kind)
    body = payload if isinstance(payload, dict) else {"x": payload}
    body.update({"device": dev, "seq": 1, "kind": "delta" if kind == "d" else "snapshot"})
    blob = _seal(name, body)
    cache = mf.SegmentCache(Path(os.environ["CLOUDGUARD_HOME"]) / "fuzz-cache")
    try:
        mf.load({name: len(blob)}, {name: blob}.__getitem__, _opener, dev, {}, cache)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["p", "e", "rm", "reloc"]), JSON,
                                max_size=4), max_size=4))
def test_manifest_ops(ops: list[dict[str, Any]]) -> None:
    dev = "0" * 16
    name = mf.segment_name(dev, 1, "d")
    blob = _seal(name, mf.delta_payload(dev, 1, {}, None, ops))
    cache = mf.SegmentCache(Path(os.environ["CLOUDGUARD_HOME"]) / "fuzz-cache")
    try:
        loaded = mf.load({name: len(blob)}, {name: blob}.__getitem__, _opener, dev, {}, cache)
        from cloudguard import sync
        sync.view(loaded.state)
        sync.resolve_siblings(loaded.state, {})
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


def test_typed_only_rejects_other_errors() -> None:
    with pytest.raises(AssertionError):
        typed_only(KeyError("x"))


def _rebuilt(doc: dict[str, Any]) -> tuple[bytes, str]:
    """The genesis with ``doc`` as its body, under the name that body's id gives."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    name = chain.commit_name(0, chain.commit_id(body))
    return GENESIS_BYTES[:4] + len(body).to_bytes(4, "big") + body + GENESIS.sig, name


@pytest.mark.parametrize("change", [
    {"pos": False},  # a bool is not a position (JSON false == 0 in Python)
    {"epoch": 1.0},
    {"signer": RID + "\n"},  # a trailing newline passes a ^...$ pattern
    {"members": {}},
    {"extra": 1},
    {"format": "2"},
])
def test_decoding_a_commit_is_typed(change: dict[str, Any]) -> None:
    """msgspec checks every field's type before anything reads it (issue 10): a wrong type,
    a missing or an extra key is an integrity error, never a crash or a silent coercion."""
    data, name = _rebuilt({**json.loads(GENESIS.body), **change})
    with pytest.raises(IntegrityError):  # a genesis's own id is the vault id
        chain.decode_commit(data, name, chain.commit_id(data[8:-64]))
    data, name = _rebuilt(json.loads(GENESIS.body))
    assert chain.decode_commit(data, name, chain.commit_id(data[8:-64])).pos == 0  # control
    doc = json.loads(GENESIS.body)
    del doc["kek"]
    data, name = _rebuilt(doc)
    with pytest.raises(IntegrityError):
        chain.decode_commit(data, name, chain.commit_id(data[8:-64]))
