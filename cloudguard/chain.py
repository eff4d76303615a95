"""The signed membership chain: commits, key objects and a device's verified view of them.

Normative text: docs/format.md, "The membership chain". Membership and keys change only
through commits signed by a member of the parent commit, so nobody who is not a member -- the
provider included -- can hand a device a KEK or a member list. Pure apart from the ``fetch``
callback: no keyring, no rclone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import format as fmt
from .errors import IntegrityError, KeyStoreError

if TYPE_CHECKING:
    from .membership import View

KEYS_PREFIX = "keys/"
COMMIT_MAGIC = b"CGC" + bytes([fmt.VERSION])
ENROLL_MAGIC = b"CGE" + bytes([fmt.VERSION])
ACTIONS = ("genesis", "add", "remove", "rotate", "merge")
_NAME = re.compile(r"^keys/([0-9]{8})-([0-9a-f]{64})(\.k)?\Z")  # \Z: no trailing newline


# --- member secrets -----------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A member's X25519 key (receives slots) and Ed25519 key (signs)."""

    x: X25519PrivateKey
    s: Ed25519PrivateKey

    @staticmethod
    def generate() -> Secret:
        return Secret(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    @staticmethod
    def from_raw(raw: bytes) -> Secret:
        if len(raw) != 64:
            raise IntegrityError("a member secret must be 64 bytes")
        return Secret(X25519PrivateKey.from_private_bytes(raw[:32]),
                      Ed25519PrivateKey.from_private_bytes(raw[32:]))

    def raw(self) -> bytes:
        return self.x.private_bytes_raw() + self.s.private_bytes_raw()

    def public(self, kind: str) -> MemberKeys:
        return MemberKeys(kind, fmt.public_bytes(self.x), fmt.public_bytes(self.s))


@dataclass(frozen=True)
class MemberKeys:
    kind: str  # "device" | "kit"
    x: bytes
    s: bytes

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "x": fmt.b64(self.x), "s": fmt.b64(self.s)}


@dataclass(frozen=True)
class Cutoff:
    """The last segment of a removed member that readers still accept."""

    s: bytes
    seq: int
    hash: str | None

    def to_json(self) -> dict[str, Any]:
        return {"s": fmt.b64(self.s), "seq": self.seq, "hash": self.hash}


def verify_sig(pub: bytes, label: bytes, message: bytes, sig: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, label + b"\x00" + message)
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError() from exc


# --- commits ------------------------------------------------------------------------------


@dataclass
class Commit:
    id: str
    pos: int
    parent: str | None
    merges: list[str]
    action: str
    signer: str
    created: str
    members: dict[str, MemberKeys]
    removed: dict[str, Cutoff]
    epoch: int
    kek: str
    keyobj: str
    names: str
    descriptor: str
    body: bytes
    sig: bytes
    reencrypt: bool = False  # a re-encryption starts here: the older history ends (U2)

    @property
    def name(self) -> str:
        return commit_name(self.pos, self.id)

    def ctx(self, vault_id: str) -> bytes:
        return context(vault_id if self.pos else "", self.pos, self.parent)


def commit_name(pos: int, commit_id: str) -> str:
    return f"{KEYS_PREFIX}{pos:08d}-{commit_id}"


def parse_name(name: str) -> tuple[int, str, bool] | None:
    """(position, id, is key object) of a keys/ object name."""
    got = _NAME.match(name)
    return (int(got.group(1)), got.group(2), bool(got.group(3))) if got else None


def context(vault_id: str, pos: int, parent: str | None) -> bytes:
    return f"{vault_id}\x00{pos}\x00{parent or ''}".encode()


def commit_id(body: bytes) -> str:
    return hashlib.sha256(b"cloudguard/v2/commit-id\x00" + body).hexdigest()


def encode_signed(magic: bytes, body: dict[str, Any], signer: Ed25519PrivateKey,
                  label: bytes) -> tuple[bytes, bytes]:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return magic + struct.pack(">I", len(raw)) + raw + signer.sign(label + b"\x00" + raw), raw


def split_signed(magic: bytes, data: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    """The exact signed body bytes, their strict parse, and the signature."""
    if len(data) < 8 + 64 or data[:4] != magic:
        raise IntegrityError()
    (length,) = struct.unpack(">I", data[4:8])
    if 8 + length + 64 != len(data):
        raise IntegrityError()
    raw = data[8:8 + length]
    doc = fmt.parse_json(raw, "a signed object")
    if not isinstance(doc, dict):
        raise IntegrityError()
    return raw, doc, data[8 + length:]


def _key(value: object) -> bytes:
    raw = fmt.unb64(value)
    if len(raw) != 32:
        raise IntegrityError()
    return raw


_HEX64 = msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")
_RID16 = msgspec.Meta(pattern=r"^[0-9a-f]{16}\Z")
_KEY32 = msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{43}=\Z")  # standard base64 of 32 bytes
_COUNT = msgspec.Meta(ge=0)
_Id = Annotated[str, _HEX64]
_Rid = Annotated[str, _RID16]
_Pub = Annotated[str, _KEY32]


class _Keys(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["device", "kit"]
    x: _Pub
    s: _Pub


class _Cut(msgspec.Struct, forbid_unknown_fields=True):
    s: _Pub
    seq: Annotated[int, _COUNT]
    hash: _Id | None


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """A commit's body as format.md lists it: every key present, no other, each typed."""

    type: Literal["cloudguard/commit"]
    format: Literal[2]
    vault: _Id | None
    pos: Annotated[int, _COUNT]
    parent: _Id | None
    merges: list[_Id]
    action: Literal["genesis", "add", "remove", "rotate", "merge"]
    signer: _Rid
    created: str
    members: Annotated[dict[_Rid, _Keys], msgspec.Meta(min_length=1)]
    removed: dict[_Rid, _Cut]
    epoch: Annotated[int, _COUNT]
    kek: _Id
    keyobj: _Id
    names: str
    descriptor: _Id
    reencrypt: bool


_BODY_KEYS = frozenset(_Body.__struct_fields__)


def decode_commit(data: bytes, name: str, vault_id: str) -> Commit:
    """Structure only (format.md check 1 and 5); the signature needs the parent. The strict
    JSON parse (no duplicate keys) comes first, then msgspec checks every field's type."""
    parsed = parse_name(name)
    raw, doc, sig = split_signed(COMMIT_MAGIC, data)
    try:
        body = msgspec.convert(doc, _Body)
    except msgspec.ValidationError as exc:
        raise IntegrityError() from exc
    cid = commit_id(raw)
    if parsed is None or parsed[2] or parsed[0] != body.pos or parsed[1] != cid:
        raise IntegrityError()
    if (body.action == "genesis") != (body.pos == 0) or bool(body.merges) != (
            body.action == "merge"):
        raise IntegrityError()
    if body.pos == 0:
        if body.vault is not None or body.parent is not None or cid != vault_id:
            raise IntegrityError()
    elif body.vault != vault_id or body.parent is None:
        raise IntegrityError()
    if any(cut.seq == 0 and cut.hash is not None for cut in body.removed.values()):
        raise IntegrityError()  # seq 0: nothing of it was applied, so no segment
    if set(body.members) & set(body.removed):
        raise IntegrityError()
    if body.reencrypt and body.action not in ("rotate", "remove"):
        raise IntegrityError()  # only a new KEK can start a re-encryption
    members = {rid: MemberKeys(k.kind, _key(k.x), _key(k.s)) for rid, k in body.members.items()}
    removed = {rid: Cutoff(_key(c.s), c.seq, c.hash) for rid, c in body.removed.items()}
    return Commit(cid, body.pos, body.parent, list(body.merges), body.action, body.signer,
                  body.created, members, removed, body.epoch, body.kek, body.keyobj,
                  body.names, body.descriptor, raw, sig, body.reencrypt)


# --- key objects --------------------------------------------------------------------------


def open_keys(view: View, commit: Commit, data: bytes, rid: str, priv: X25519PrivateKey
              ) -> bytes:
    """The KEK of ``commit`` through our slot in its key object, plus the names and history
    it carries; every KEK is checked against a verified commitment."""
    name = commit.name + ".k"
    if hashlib.sha256(data).hexdigest() != commit.keyobj:
        raise IntegrityError(f"{name} does not match its commit: a slot was swapped")
    ctx = commit.ctx(view.vault_id)
    try:
        doc = fmt.parse_json(data, name)
        if not isinstance(doc, dict) or set(doc) != {"slots", "history"}:
            raise IntegrityError()
        slots = doc["slots"]
        if not isinstance(slots, dict) or set(slots) != set(commit.members):
            raise IntegrityError()
        if rid not in slots:
            raise KeyStoreError(f"this device holds no slot in {commit.name}")
        kek = fmt.unwrap_from_slot(priv, slots[rid], ctx, rid)
        if len(kek) != 32 or fmt.kek_commit(kek) != commit.kek:
            raise IntegrityError()
        history = fmt.open_json(kek, b"cloudguard/v2/history", ctx, doc["history"])
        known = {c.kek for c in [*view.commits.values(), *view.voided.values()]}
        older: dict[str, bytes] = {}
        for commitment, value in history.items():
            old = fmt.unb64(value)
            if fmt.kek_commit(old) != commitment or commitment not in known:
                raise IntegrityError()
            older[commitment] = old
        names = fmt.open_json(kek, b"cloudguard/v2/names", ctx, commit.names)
        if set(names) != set(commit.members) or not all(isinstance(v, str)
                                                         for v in names.values()):
            raise IntegrityError()
    except IntegrityError as exc:
        if str(exc):
            raise
        raise IntegrityError(f"{name}: key object failed authentication") from exc
    view.keks[commit.kek] = kek
    view.keks.update(older)
    for member, label in names.items():
        view.names.setdefault(member, label)
    if commit is view.head:
        view.head_history = older
    view.opened.add(commit.id)
    return kek


def build(view: View | None, vault_id: str, me: Secret, my_rid: str, action: str,
          members: dict[str, MemberKeys], removed: dict[str, Cutoff], kek: bytes, epoch: int,
          names: dict[str, str], history: dict[str, bytes], descriptor: str,
          created: str, merges: list[str] | None = None, reencrypt: bool = False
          ) -> tuple[Commit, bytes, bytes]:
    """A new commit on ``view.head`` (or a genesis): (commit, commit bytes, key object bytes).
    ``reencrypt``: the commit starts a re-encryption, which ends the history under older
    KEKs; signed here, so that only a current member's commit ends it (review round 6, U2)."""
    parent = view.head if view is not None else None
    pos = parent.pos + 1 if parent else 0
    ctx = context(vault_id if parent else "", pos, parent.id if parent else None)
    slots = {rid: fmt.wrap_to_recipient(keys.x, kek, ctx, rid) for rid, keys in members.items()}
    sealed_history = fmt.seal_json(kek, b"cloudguard/v2/history", ctx,
                                   {c: fmt.b64(k) for c, k in sorted(history.items())},
                                   pad=True)
    keyobj = json.dumps({"slots": slots, "history": sealed_history}, sort_keys=True,
                        indent=1).encode()
    body = {"type": "cloudguard/commit", "format": 2, "vault": vault_id if parent else None,
            "pos": pos, "parent": parent.id if parent else None, "merges": merges or [],
            "action": action, "signer": my_rid, "created": created,
            "members": {r: k.to_json() for r, k in sorted(members.items())},
            "removed": {r: c.to_json() for r, c in sorted(removed.items())},
            "epoch": epoch, "kek": fmt.kek_commit(kek),
            "keyobj": hashlib.sha256(keyobj).hexdigest(),
            "names": fmt.seal_json(kek, b"cloudguard/v2/names", ctx,
                                   {r: names[r] for r in members}, pad=True),
            "descriptor": descriptor, "reencrypt": reencrypt}
    data, raw = encode_signed(COMMIT_MAGIC, body, me.s, b"cloudguard/v2/commit")
    cid = commit_id(raw)
    commit = decode_commit(data, commit_name(pos, cid), vault_id if parent else cid)
    return commit, data, keyobj


def new_kek() -> bytes:
    return os.urandom(32)


# --- enrolment requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    vault: str
    rid: str
    name: str
    created: str
    keys: MemberKeys
    fingerprint: str


def make_request(vault_id: str, rid: str, name: str, created: str, me: Secret) -> bytes:
    body = {"type": "cloudguard/enroll", "format": 2, "vault": vault_id, "rid": rid,
            "name": name, "created": created, "x": fmt.b64(fmt.public_bytes(me.x)),
            "s": fmt.b64(fmt.public_bytes(me.s))}
    return encode_signed(ENROLL_MAGIC, body, me.s, b"cloudguard/v2/enroll")[0]


class _EnrollBody(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["cloudguard/enroll"]
    format: Literal[2]
    vault: str
    rid: _Rid
    name: str
    created: str
    x: _Pub
    s: _Pub


def read_request(data: bytes) -> Request:
    """A request signed by the key it introduces: proof of possession; the fingerprint,
    compared by a person, is what authenticates it."""
    raw, doc, sig = split_signed(ENROLL_MAGIC, data)
    try:
        body = msgspec.convert(doc, _EnrollBody)
    except msgspec.ValidationError as exc:
        raise IntegrityError() from exc
    keys = MemberKeys("device", _key(body.x), _key(body.s))
    verify_sig(keys.s, b"cloudguard/v2/enroll", raw, sig)
    return Request(body.vault, body.rid, body.name, body.created, keys, fmt.fingerprint(raw))


# --- segments: who may have written them --------------------------------------------------


class Skip(Exception):
    """A segment that is not applied this time: its head is not listed yet (deferred), or
    its writer was removed before writing it (refused for good)."""


class KeyGone(Skip):
    """A segment sealed under a key this device cannot reach (``kek``: its commitment)."""

    def __init__(self, message: str, kek: str) -> None:
        super().__init__(message)
        self.kek = kek


def accept_segment(view: View, name: str, device: str, seq: int, data: bytes,
                   kek_of: Callable[[Commit], bytes], late: bool = False) -> dict[str, Any]:
    """Writer rules of format.md: check the writer and its signature before decrypting.
    ``late``: a removed member's segment past its cutoff is opened too (for the history only,
    manifest/refused.py)."""
    key = view.signer_key(device)
    if key is None:
        raise IntegrityError(f"manifest segment {name} was written by {device}, who is not a "
                             "member of this vault")
    if device in view.members and view.members[device].kind != "device":
        raise IntegrityError(f"manifest segment {name} was written by recovery kit {device}: "
                             "a kit only ever adds a device, it never writes")
    cut = view.removed.get(device)
    if cut is not None and seq > cut.seq and not late:
        raise Skip(f"manifest segment {name} was written by removed member {device} after its "
                   "removal; refused")
    try:
        fmt.verify_segment(data, view.vault_id, name, key)
    except IntegrityError as exc:
        raise IntegrityError(f"manifest segment {name} has a bad signature") from exc
    pos, head = fmt.segment_head(data)
    commit = view.find(head)
    if commit is not None and commit.pos != pos:
        raise IntegrityError(f"manifest segment {name} names commit {head[:16]}... at the wrong "
                             "position")
    if commit is None:
        raise Skip(f"manifest segment {name} names commit {head[:16]}... that is not verified "
                   "(yet); deferred")
    if device not in commit.members:
        raise IntegrityError(f"manifest segment {name}: its writer was not a member at the "
                             "commit it names")
    if cut is not None and seq == cut.seq and cut.hash and (
            hashlib.sha256(data).hexdigest() != cut.hash):
        raise IntegrityError(f"manifest segment {name} is not the one its writer's removal "
                             "recorded")
    try:
        kek = kek_of(commit)
    except IntegrityError as exc:
        # its writer had not seen a re-encryption, which deleted that key: the writer writes
        # it again under the current key once it sees the re-encryption (rotate._rewrap_stale)
        raise KeyGone(f"manifest segment {name} is sealed under a key this device cannot "
                      f"open any more ({exc}); waiting for its writer {device} to write it "
                      "again under the current key", commit.kek) from exc
    try:
        return fmt.open_segment(kek, view.vault_id, name, data)
    except IntegrityError as exc:
        raise IntegrityError(f"manifest segment {name} failed authentication") from exc
