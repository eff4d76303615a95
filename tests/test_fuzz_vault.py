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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudguard import format as fmt
from cloudguard import keys
from cloudguard import manifest as mf
from cloudguard.errors import CloudguardError, IntegrityError
from cloudguard.vault import parse_descriptor

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


VALID = json.dumps({"cloudguard": "vault", "format": 1, "vault": "ab" * 16,
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


PRIV = X25519PrivateKey.from_private_bytes(bytes(range(32)))
KEK = bytes(32)


def _generation_doc() -> dict[str, Any]:
    member = keys.Member("me", "device", "n", "t", fmt.public_bytes(PRIV))
    gen = keys.Generation(1, KEK, "2026-01-01T00:00:00Z", [member], "d")
    doc: dict[str, Any] = json.loads(keys.seal_generation("v", gen))
    return doc


@SETTINGS
@given(st.sampled_from(["cloudguard", "format", "vault", "generation", "slots", "body"]), JSON)
def test_key_slot_object_fields(field: str, value: Any) -> None:
    doc = _generation_doc()
    doc[field] = value
    try:
        keys.open_generation("v", 1, json.dumps(doc).encode(), "me", PRIV, None)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


@SETTINGS
@given(st.binary(max_size=400))
def test_key_slot_object_bytes(raw: bytes) -> None:
    try:
        keys.open_generation("v", 1, raw, "me", PRIV, None)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


def _ring() -> keys.KeyRing:
    return keys.KeyRing("v", {1: keys.Generation(1, KEK, "t", [], "d")})


@SETTINGS
@given(JSON, st.sampled_from(["d", "s"]))
def test_manifest_payloads(payload: Any, kind: str) -> None:
    """Even a keyholder's garbage payload must not crash a reader with an untyped error."""
    dev = "0" * 16
    name = mf.segment_name(dev, 1, kind)
    body = payload if isinstance(payload, dict) else {"x": payload}
    body.update({"device": dev, "seq": 1, "kind": "delta" if kind == "d" else "snapshot"})
    blob = fmt.seal_segment(KEK, 1, name, body)
    cache = mf.SegmentCache(Path(os.environ["CLOUDGUARD_HOME"]) / "fuzz-cache")
    try:
        mf.load({name: len(blob)}, {name: blob}.__getitem__, _ring(), dev, {}, cache)
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["p", "e", "rm", "reloc"]), JSON,
                                max_size=4), max_size=4))
def test_manifest_ops(ops: list[dict[str, Any]]) -> None:
    dev = "0" * 16
    name = mf.segment_name(dev, 1, "d")
    blob = fmt.seal_segment(KEK, 1, name, mf.delta_payload(dev, 1, {}, None, ops))
    cache = mf.SegmentCache(Path(os.environ["CLOUDGUARD_HOME"]) / "fuzz-cache")
    try:
        loaded = mf.load({name: len(blob)}, {name: blob}.__getitem__, _ring(), dev, {}, cache)
        from cloudguard import sync
        sync.view(loaded.state)
        sync.resolve_siblings(loaded.state, {})
    except Exception as exc:  # noqa: BLE001
        typed_only(exc)


def test_typed_only_rejects_other_errors() -> None:
    with pytest.raises(AssertionError):
        typed_only(KeyError("x"))
