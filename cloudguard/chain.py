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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import format as fmt
from .errors import IntegrityError, KeyStoreError

KEYS_PREFIX = "keys/"
COMMIT_MAGIC = b"CGC" + bytes([fmt.VERSION])
ENROLL_MAGIC = b"CGE" + bytes([fmt.VERSION])
ACTIONS = ("genesis", "add", "remove", "rotate", "merge")
_NAME = re.compile(r"^keys/([0-9]{8})-([0-9a-f]{64})(\.k)?$")
_RID = re.compile(r"^[0-9a-f]{16}$")
_ID = re.compile(r"^[0-9a-f]{64}$")
_BODY_KEYS = {"type", "format", "vault", "pos", "parent", "merges", "action", "signer", "created",
              "members", "removed", "epoch", "kek", "keyobj", "names", "descriptor"}


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


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise IntegrityError()
    return value


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise IntegrityError()
    return value


def _key(value: object) -> bytes:
    raw = fmt.unb64(value)
    if len(raw) != 32:
        raise IntegrityError()
    return raw


def _rid(value: object) -> str:
    if not isinstance(value, str) or not _RID.match(value):
        raise IntegrityError()
    return value


def decode_commit(data: bytes, name: str, vault_id: str) -> Commit:
    """Structure only (format.md check 1 and 5); the signature needs the parent."""
    parsed = parse_name(name)
    raw, doc, sig = split_signed(COMMIT_MAGIC, data)
    try:
        if set(doc) != _BODY_KEYS or doc["type"] != "cloudguard/commit" or doc["format"] != 2:
            raise IntegrityError()
        pos = _int(doc["pos"])
        cid = commit_id(raw)
        if parsed is None or parsed[2] or parsed[0] != pos or parsed[1] != cid:
            raise IntegrityError()
        action = _str(doc["action"])
        if action not in ACTIONS or (action == "genesis") != (pos == 0):
            raise IntegrityError()
        if pos == 0:
            if doc["vault"] is not None or doc["parent"] is not None or cid != vault_id:
                raise IntegrityError()
            parent = None
        else:
            if doc["vault"] != vault_id or not _ID.match(_str(doc["parent"])):
                raise IntegrityError()
            parent = _str(doc["parent"])
        merges = doc["merges"]
        if not isinstance(merges, list) or not all(isinstance(m, str) and _ID.match(m)
                                                   for m in merges):
            raise IntegrityError()
        if bool(merges) != (action == "merge"):
            raise IntegrityError()
        members: dict[str, MemberKeys] = {}
        if not isinstance(doc["members"], dict) or not doc["members"]:
            raise IntegrityError()
        for rid, keys in doc["members"].items():
            if not isinstance(keys, dict) or set(keys) != {"kind", "x", "s"} or keys[
                    "kind"] not in ("device", "kit"):
                raise IntegrityError()
            members[_rid(rid)] = MemberKeys(keys["kind"], _key(keys["x"]), _key(keys["s"]))
        removed: dict[str, Cutoff] = {}
        if not isinstance(doc["removed"], dict):
            raise IntegrityError()
        for rid, cut in doc["removed"].items():
            if not isinstance(cut, dict) or set(cut) != {"s", "seq", "hash"}:
                raise IntegrityError()
            digest = cut["hash"]
            if digest is not None and not (isinstance(digest, str) and _ID.match(digest)):
                raise IntegrityError()
            seq = _int(cut["seq"])
            if seq == 0 and digest is not None:
                raise IntegrityError()  # seq 0: nothing of it was applied, so no segment
            removed[_rid(rid)] = Cutoff(_key(cut["s"]), seq, digest)
        if set(members) & set(removed):
            raise IntegrityError()
        for key in ("kek", "keyobj", "descriptor"):
            if not _ID.match(_str(doc[key])):
                raise IntegrityError()
        return Commit(cid, pos, parent, list(merges), action, _rid(doc["signer"]),
                      _str(doc["created"]), members, removed, _int(doc["epoch"]),
                      doc["kek"], doc["keyobj"], _str(doc["names"]), doc["descriptor"], raw,
                      sig)
    except (KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError() from exc


# --- the view a device verified -----------------------------------------------------------


UNLIMITED = 1 << 62  # the cutoff of a member removed only by a counter-removal: none


def _union(commits: dict[str, Commit], counters: set[str] | None = None
           ) -> tuple[dict[str, MemberKeys], dict[str, Cutoff]]:
    """Two-phase set over commits: once removed, never a member; the earliest cutoff wins.

    Only a genesis or an add brings a member in (a merge's member list is a claim, not an
    addition, so a member added on a void branch stays out). A removal in ``counters`` (a
    removed member's answer to its removal) removes its target but sets no cutoff: it cannot
    make readers drop what its target wrote."""
    counters = counters or set()
    added: dict[str, MemberKeys] = {}
    cuts: dict[str, list[Cutoff]] = {}
    for c in commits.values():
        parent = commits.get(c.parent) if c.parent else None
        new = c.members if c.action == "genesis" else (
            {r: k for r, k in c.members.items() if parent is None or r not in parent.members}
            if c.action == "add" else {})
        for rid, keys in new.items():
            if added.setdefault(rid, keys) != keys:
                raise IntegrityError(f"{c.name}: member {rid} has two different keys")
        fresh = set(c.removed) - set(parent.removed if parent else {})
        for rid, cut in c.removed.items():
            if c.id in counters and rid in fresh:
                cut = Cutoff(cut.s, UNLIMITED, None)
            cuts.setdefault(rid, []).append(cut)
    removed = {rid: _earliest(found) for rid, found in cuts.items()}
    return {r: k for r, k in added.items() if r not in removed}, removed


def _earliest(cuts: list[Cutoff]) -> Cutoff:
    """The lowest cutoff wins. Two removals naming different segments at that seq mean the
    removed member showed its removers two histories: neither is vouched, and its writes
    count up to the seq before (every device decides alike, whatever order it lists)."""
    low = min(c.seq for c in cuts)
    at = {c.hash for c in cuts if c.seq == low}
    if len(at) == 1:
        return next(c for c in cuts if c.seq == low)
    return Cutoff(cuts[0].s, low - 1, None)


@dataclass
class View:
    """Every commit this device verified, the head it writes under, and the KEKs it holds."""

    vault_id: str
    commits: dict[str, Commit]
    head: Commit
    members: dict[str, MemberKeys]  # merged view: ever added minus removed
    removed: dict[str, Cutoff]
    keks: dict[str, bytes] = field(default_factory=dict)  # commitment -> KEK
    names: dict[str, str] = field(default_factory=dict)
    head_history: dict[str, bytes] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    deferred: list[str] = field(default_factory=list)
    void: list[str] = field(default_factory=list)
    counters: set[str] = field(default_factory=set)
    voided: dict[str, Commit] = field(default_factory=dict)  # still name KEKs of segments

    def ancestry(self, commit: Commit) -> list[Commit]:
        return _ancestry(commit, self.commits)

    def find(self, commit_id: str) -> Commit | None:
        """A verified commit, void or not: a segment may name either (format.md)."""
        return self.commits.get(commit_id) or self.voided.get(commit_id)

    def _reach(self, start: Commit, commits: dict[str, Commit] | None = None) -> set[str]:
        """``start``'s ancestry and every branch a merge in it took in."""
        commits = self.commits if commits is None else commits
        out: set[str] = set()
        todo = [start]
        while todo:
            for a in _ancestry(todo.pop(), commits):
                if a.id not in out:
                    out.add(a.id)
                    todo += [commits[m] for m in a.merges if m in commits]
        return out

    def covered(self) -> set[str]:
        """Commits the head builds on: its ancestry and every branch a merge in it took in.
        A concurrent merge that took in nothing more and handed its KEK to exactly the head's
        members is covered too, so two devices merging at once do not merge for ever."""
        out = self._reach(self.head)
        for c in self.commits.values():
            if (c.id not in out and c.action == "merge"
                    and set(c.members) == set(self.head.members)
                    and self._reach(c) - {c.id} <= out):
                out.add(c.id)
        return out

    def builds_on(self, later: str, earlier: str) -> bool:
        """Does commit ``later`` cover ``earlier`` (its ancestry, merged branches included)?
        Void commits count here: segments written under them are still read."""
        every = {**self.voided, **self.commits}
        return later == earlier or (later in every and earlier in self._reach(every[later],
                                                                               every))

    @property
    def needs_merge(self) -> bool:
        """Any branch the head does not cover needs a merge under a new KEK: a racing add
        must not put the head back on a KEK that a racing rotation retired."""
        return bool(set(self.commits) - self.covered())

    def signer_key(self, rid: str) -> bytes | None:
        if rid in self.members:
            return self.members[rid].s
        cut = self.removed.get(rid)
        return cut.s if cut else None

    def exposed_to(self) -> dict[str, list[str]]:
        """KEK commitment -> removed members who held that KEK (or a later one wrapping it)."""
        out: dict[str, list[str]] = {}
        for rid in self.removed:
            spans = [c for c in self.commits.values() if rid in c.members]
            if not spans:
                continue
            last = max(c.pos for c in spans)
            for c in self.commits.values():
                if c.pos <= last:
                    out.setdefault(c.kek, [])
                    if rid not in out[c.kek]:
                        out[c.kek].append(rid)
        return out


def verify(vault_id: str, listing: Iterable[str], fetch: Callable[[str], bytes],
           known: set[str], descriptor: str, tolerate: frozenset[str] = frozenset()) -> View:
    """Verify every listed commit whose parent is verified, from the genesis forward."""
    names = {n: p for n in listing if (p := parse_name(n)) is not None and not p[2]
             and (p[0] > 0 or p[1] == vault_id)}  # another vault's genesis is not ours
    listed = {p[1] for p in names.values()}
    lost = sorted(known - listed)
    if lost:
        raise IntegrityError(f"commit {lost[0][:16]}... that this device verified is gone from "
                             "keys/: the remote was rolled back or a commit was deleted")
    genesis_name = commit_name(0, vault_id)
    if genesis_name not in names:
        raise IntegrityError(f"{genesis_name}: the genesis commit of vault {vault_id} is "
                             "missing (wrong remote, or it was deleted)")
    decoded: dict[str, Commit] = {}
    for name in sorted(names, key=lambda n: names[n][0]):
        try:
            commit = decode_commit(fetch(name), name, vault_id)
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: invalid commit") from exc
        decoded[commit.id] = commit
    genesis = decoded[vault_id]
    _check_genesis(genesis, descriptor)
    verified: dict[str, Commit] = {genesis.id: genesis}
    waiting = {cid: c for cid, c in decoded.items() if cid != vault_id}
    progress = True
    while progress:
        progress = False
        for cid, c in sorted(waiting.items(), key=lambda item: item[1].pos):
            if c.parent not in verified or any(m not in verified for m in c.merges):
                continue
            try:
                _check(c, verified[c.parent], verified, descriptor)
            except IntegrityError as exc:
                raise IntegrityError(f"{c.name}: invalid commit ({exc})") from exc
            verified[cid] = c
            del waiting[cid]
            progress = True
    void, counters = _void(verified)
    voided = {cid: verified.pop(cid) for cid in void}
    children: dict[str, list[Commit]] = {}
    for c in verified.values():
        if c.parent:
            children.setdefault(c.parent, []).append(c)
    for kids in children.values():
        signers: dict[str, Commit] = {}
        for kid in kids:
            other = signers.setdefault(kid.signer, kid)
            if other is not kid and kid.signer not in tolerate:
                raise IntegrityError(f"equivocation: member {kid.signer} signed both "
                                     f"{other.name} and {kid.name} on one parent; remove it "
                                     f"from another device (cloudguard device remove "
                                     f"{kid.signer}), which voids one of them")
    head = genesis
    while children.get(head.id):
        head = min(children[head.id], key=lambda c: c.id)
    members, removed = _union(verified, counters)
    view = View(vault_id, verified, head, members, removed,
                deferred=sorted(c.name for c in waiting.values()))
    view.counters = counters
    view.voided = voided
    view.void = sorted(decoded[cid].name for cid in void)
    return view


def _void(verified: dict[str, Commit]) -> tuple[set[str], set[str]]:
    """(void commits, counter-removals). A commit signed by M counts only if it is an ancestor
    of every commit that removes M: a removed member cannot sign a branch from the past (nor a
    stolen kit), and everything built on a void commit is void too.

    A removed member may answer its removal with a concurrent removal of its remover (neither
    an ancestor of the other). Nothing tells the two apart without letting the removed member
    grind ids, and every device must decide alike (so no local anchor may break the tie): both
    stand (removals win). Each is a *counter-removal*: it sets no cutoff, the pair does not
    void each other, and it never voids its target's other removals.
    """
    ancestors = {cid: {a.id for a in _ancestry(c, verified)} for cid, c in verified.items()}
    removals = []
    for c in verified.values():
        parent = verified.get(c.parent) if c.parent else None
        gone = set(c.removed) - set(parent.removed if parent else {})
        if gone:
            removals.append((c, gone))
    counters: set[str] = set()
    for c, gone_c in removals:
        for r, gone_r in removals:
            if (c.signer in gone_r and r.signer in gone_c and r.id not in ancestors[c.id]
                    and c.id not in ancestors[r.id]):
                counters.add(c.id)
    hit: set[str] = set()
    for r, gone in removals:
        for cid, c in verified.items():
            if c.signer in gone and cid not in ancestors[r.id] and cid not in counters:
                if r.id in counters and c.action == "remove":
                    continue  # a counter-removal never undoes its target's removals
                hit.add(cid)
    return {cid for cid in verified if ancestors[cid] & hit}, counters


def _check_genesis(c: Commit, descriptor: str) -> None:
    if (len(c.members) != 1 or c.removed or c.signer not in c.members
            or c.members[c.signer].kind != "device" or c.descriptor != descriptor):
        raise IntegrityError(f"{c.name}: invalid genesis commit")
    try:
        verify_sig(c.members[c.signer].s, b"cloudguard/v2/commit", c.body, c.sig)
    except IntegrityError as exc:
        raise IntegrityError(f"{c.name}: bad signature") from exc


def _ancestry(c: Commit, verified: dict[str, Commit]) -> list[Commit]:
    out = []
    current: Commit | None = c
    while current is not None:
        out.append(current)
        current = verified.get(current.parent) if current.parent else None
    return out


def _check(c: Commit, parent: Commit, verified: dict[str, Commit], descriptor: str) -> None:
    """The authority rules of format.md; the message names the broken one."""
    if c.pos != parent.pos + 1:
        raise IntegrityError("wrong position")
    signer = parent.members.get(c.signer)
    if signer is None:
        raise IntegrityError(f"signer {c.signer} is not a member of the parent")
    verify_sig(signer.s, b"cloudguard/v2/commit", c.body, c.sig)
    if c.descriptor != descriptor:
        raise IntegrityError("descriptor hash differs")
    ever: set[str] = set()
    kek_seen: set[str] = set()
    for a in _ancestry(parent, verified):
        ever |= set(a.members) | set(a.removed)
        kek_seen.add(a.kek)
    same_keys = c.kek == parent.kek and c.epoch == parent.epoch
    new_key = c.kek not in kek_seen and c.epoch == parent.epoch + 1
    if c.action == "add":
        added = set(c.members) - set(parent.members)
        if (len(added) != 1 or set(parent.members) - set(c.members) or c.removed != parent.removed
                or added & ever or not same_keys):
            raise IntegrityError("not a valid add")
        if any(parent.members[r] != c.members[r] for r in parent.members):
            raise IntegrityError("an add changed a member's keys")
        if signer.kind == "kit" and c.members[next(iter(added))].kind != "device":
            raise IntegrityError("a kit may add only a device")
        return
    if signer.kind != "device":
        raise IntegrityError(f"a kit may not {c.action}")
    if not new_key:
        raise IntegrityError("a new KEK and the next epoch are required")
    if c.action == "rotate":
        if c.members != parent.members or c.removed != parent.removed:
            raise IntegrityError("a rotation changed members")
    elif c.action == "remove":
        gone = set(parent.members) - set(c.members)
        if (len(gone) != 1 or set(c.members) - set(parent.members)
                or set(c.removed) != set(parent.removed) | gone
                or any(c.removed[r] != parent.removed[r] for r in parent.removed)):
            raise IntegrityError("not a valid removal")
        rid = next(iter(gone))
        if c.removed[rid].s != parent.members[rid].s:
            raise IntegrityError("the removal names another key")
    elif c.action == "merge":
        scope: dict[str, Commit] = {a.id: a for a in _ancestry(parent, verified)}
        for tip in c.merges:
            scope.update({a.id: a for a in _ancestry(verified[tip], verified)})
        members, removed = _union(scope, _void(scope)[1])
        if c.members != members or c.removed != removed:
            raise IntegrityError("the merge does not equal the merged member set")


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
          created: str, merges: list[str] | None = None) -> tuple[Commit, bytes, bytes]:
    """A new commit on ``view.head`` (or a genesis): (commit, commit bytes, key object bytes)."""
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
            "descriptor": descriptor}
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


def read_request(data: bytes) -> Request:
    """A request signed by the key it introduces: proof of possession; the fingerprint,
    compared by a person, is what authenticates it."""
    raw, doc, sig = split_signed(ENROLL_MAGIC, data)
    try:
        if set(doc) != {"type", "format", "vault", "rid", "name", "created", "x", "s"} or (
                doc["type"] != "cloudguard/enroll" or doc["format"] != 2):
            raise IntegrityError()
        keys = MemberKeys("device", _key(doc["x"]), _key(doc["s"]))
        verify_sig(keys.s, b"cloudguard/v2/enroll", raw, sig)
        return Request(_str(doc["vault"]), _rid(doc["rid"]), _str(doc["name"]),
                       _str(doc["created"]), keys, fmt.fingerprint(raw))
    except (KeyError, TypeError) as exc:
        raise IntegrityError() from exc


# --- segments: who may have written them --------------------------------------------------


class Skip(Exception):
    """A segment that is not applied this time: its head is not listed yet (deferred), or
    its writer was removed before writing it (refused for good)."""


def accept_segment(view: View, name: str, device: str, seq: int, data: bytes,
                   kek_of: Callable[[Commit], bytes]) -> dict[str, Any]:
    """Writer rules of format.md: check the writer and its signature before decrypting."""
    key = view.signer_key(device)
    if key is None:
        raise IntegrityError(f"manifest segment {name} was written by {device}, who is not a "
                             "member of this vault")
    if device in view.members and view.members[device].kind != "device":
        raise IntegrityError(f"manifest segment {name} was written by recovery kit {device}: "
                             "a kit only ever adds a device, it never writes")
    cut = view.removed.get(device)
    if cut is not None and seq > cut.seq:
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
        return fmt.open_segment(kek_of(commit), view.vault_id, name, data)
    except IntegrityError as exc:
        raise IntegrityError(f"manifest segment {name} failed authentication") from exc
