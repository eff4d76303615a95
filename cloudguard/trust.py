"""A device's side of the membership chain: verify it from the local anchor, hold the KEKs of
verified commits, and write new commits so that a crash never makes a device equivocate.

docs/format.md, "The membership chain", is the normative text; chain.py has the pure rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import chain, membership
from . import format as fmt
from .chain import Commit, Cutoff, MemberKeys, Secret
from .errors import IntegrityError, KeyStoreError
from .keys import now_iso
from .manifest import Limits
from .manifest.entry import Entry
from .membership import View
from .state import Index
from .transport import Transport


@dataclass
class Ring:
    """The verified view plus what this member can open: KEKs are looked up by commitment."""

    view: View
    rid: str
    secret: Secret
    fetch: Callable[[str], bytes]

    @property
    def head(self) -> Commit:
        return self.view.head

    def kek(self, commitment: str) -> bytes:
        every = [*self.view.commits.values(), *self.view.voided.values()]
        for c in sorted(every, key=lambda c: -c.pos):
            if commitment in self.view.keks:
                break
            if c.kek == commitment:
                self._try_open(c)
        got = self.view.keks.get(commitment)
        if got is None:
            raise IntegrityError(f"the key {commitment[:16]}... is not available to this "
                                 "device (no verified commit hands it to this device)")
        return got

    def open(self, commit: Commit) -> bytes:
        try:
            data = self.fetch(commit.name + ".k")
        except Exception as exc:  # a deleted key object (after --reencrypt) is just unavailable
            if isinstance(exc, IntegrityError):
                raise
            raise KeyStoreError(f"{commit.name}.k is not on the remote") from exc
        return chain.open_keys(self.view, commit, data, self.rid, self.secret.x)

    def _try_open(self, commit: Commit) -> None:
        """Open ``commit``'s key object if it holds a slot of ours and is still there."""
        if self.rid in commit.members and commit.id not in self.view.opened:
            with contextlib.suppress(KeyStoreError):
                self.open(commit)

    def kek_of(self, commit: Commit) -> bytes:
        return self.kek(commit.kek)

    @property
    def head_kek(self) -> bytes:
        return self.kek(self.head.kek)

    def all_keks(self) -> dict[str, bytes]:
        """Every KEK this member can reach, for history (opening key objects as needed). Void
        commits' too: a blob a raced re-encryption moved is wrapped under its void commit's
        KEK, and members added later read it only through a history (review round 7, V1)."""
        for c in [*self.view.commits.values(), *self.view.voided.values()]:
            if c.kek not in self.view.keks:
                self._try_open(c)
        return dict(self.view.keks)

    def learn_names(self, rids: Iterable[str]) -> None:
        """Names are sealed in each commit: open older ones for members not named yet."""
        wanted = set(rids)
        for c in sorted(self.view.commits.values(), key=lambda c: -c.pos):
            missing = wanted - set(self.view.names)
            if not missing:
                return
            if missing & set(c.members):
                self._try_open(c)

    def name_of(self, rid: str) -> str:
        return self.view.names.get(rid, rid[:8])


def open_ring(vault_id: str, listing: Iterable[str], fetch: Callable[[str], bytes],
              descriptor: str, rid: str, secret: Secret, index: Index | None,
              warn: Callable[[str], None], enrolled: bool = True,
              tolerate: frozenset[str] = frozenset()) -> Ring:
    """Verify the chain from this device's anchor and open the head's key object.

    The anchor is every commit id this device verified before (all must still be listed).
    Without one (a lost index), the device re-anchors from the genesis and says so.
    """
    known: set[str] = set(index.get_meta("verified", []) if index is not None else [])
    if index is not None and not known and enrolled:
        warn("no record of the commits this device verified: re-anchoring from the genesis; "
             "rollback protection starts again from here")
    view = membership.verify(vault_id, listing, fetch, known, descriptor, tolerate)
    for name in view.deferred:
        warn(f"{name}: its parent is not listed yet; deferred")
    for name in view.void:
        warn(f"{name}: signed by a member on a branch its removal does not build on; void")
    if view.challenged:
        who = ", ".join(sorted(view.contested)) or "none"
        warn(f"{len(view.challenged)} removals are challenged by other removals (a removed "
             f"member answering its removal, or a race): removals win, so every target is out "
             f"(taken out only by a challenged removal: {who}); their versions are in the "
             "history (cloudguard restore --late-of MEMBER), and nothing is deleted from the "
             "remote for keep_days (docs/threat-model.md, \"Removals win\")")
    if view.ghosts:
        warn(f"members approved only by commits a removal voided are out: "
             f"{', '.join(sorted(view.ghosts))}; their versions are in the history "
             "(cloudguard restore --late-of MEMBER), and they must enrol again")
    me = view.members.get(rid)
    if me is None or me.x != fmt.public_bytes(secret.x) or me.s != fmt.public_bytes(secret.s):
        if rid in view.ghosts:
            raise KeyStoreError("this device's approval was voided by a removal of the member "
                                "that approved it (docs/threat-model.md, \"Removals win\"): "
                                "enrol again (cloudguard clone), then restore its versions "
                                "from the history")
        if rid in view.removed:
            raise KeyStoreError("this device was removed from the vault")
        raise KeyStoreError("this device is not a member of the vault: its enrolment was not "
                            "approved yet (cloudguard device approve), or it was removed")
    ring = Ring(view, rid, secret, fetch)
    if rid in view.head.members:
        try:
            ring.open(view.head)
        except KeyStoreError:
            # a re-encryption deleted the key object, then a removal voided the commit that
            # replaced it (S1, or a race): the merge that must follow makes a new KEK (round 7,
            # V1); without one, nothing can be written, and the error stands
            if not view.needs_merge:
                raise
    if index is not None:
        seen_kits = set(index.get_meta("kits_seen", []))
        for c in sorted(view.commits.values(), key=lambda c: c.pos):
            parent = view.commits.get(c.parent) if c.parent else None
            if parent is not None and parent.members[c.signer].kind == "kit" and (
                    c.id not in seen_kits):
                added = next(iter(set(c.members) - set(parent.members)), "?")
                if added != rid:
                    warn(f"RECOVERY KIT USED: kit {c.signer} added device {added} in {c.name} "
                         f"({c.created}). If this was not you, remove that device and the kit "
                         "(cloudguard device remove), then export a new kit.")
                seen_kits.add(c.id)
        index.set_meta("kits_seen", sorted(seen_kits))
        index.set_meta("verified", sorted(view.commits))
    return ring


def write(transport: Transport, index: Index | None, commit: Commit, data: bytes,
          keyobj: bytes) -> None:
    """Key object first, then the commit. The bytes are recorded before the upload and kept
    until a listing shows them: a crashed attempt is re-sent byte for byte and never re-made
    (which would equivocate), and a listing that lags behind our own upload is not taken for
    a rollback."""
    if index is not None:
        pending = list(index.get_meta("pending_commits", []))
        pending.append({"name": commit.name, "data": fmt.b64(data), "keyobj": fmt.b64(keyobj)})
        index.set_meta("pending_commits", pending)
    transport.put_bytes(commit.name + ".k", keyobj)
    transport.put_bytes(commit.name, data)
    if index is not None:
        index.set_meta("verified", sorted(set(index.get_meta("verified", [])) | {commit.id}))


def resend_pending(transport: Transport, index: Index, listing: dict[str, int]) -> None:
    """Our own commits that a listing does not show (yet): send the recorded bytes again."""
    kept = []
    for pending in index.get_meta("pending_commits", []):
        name = str(pending["name"])
        data, keyobj = fmt.unb64(pending["data"]), fmt.unb64(pending["keyobj"])
        if listing.get(name) == len(data):
            continue  # seen: confirmed (its key object may since have been deleted on purpose)
        transport.put_bytes(name + ".k", keyobj)
        transport.put_bytes(name, data)
        listing[name + ".k"], listing[name] = len(keyobj), len(data)
        kept.append(pending)
    index.set_meta("pending_commits", kept)


def advance(ring: Ring, commit: Commit, kek: bytes, history: dict[str, bytes],
            names: dict[str, str]) -> None:
    """Our own new commit becomes the head of our view."""
    view = ring.view
    view.commits[commit.id] = commit
    view.head = commit
    view.members, removed, view.contested = membership._union(
        view.commits, [view.voided[cid] for cid in view.challenged],
        {**view.voided, **view.commits})
    view.removed = {**view.ghosts, **removed}
    view.keks[commit.kek] = kek
    view.keks.update(history)
    view.head_history = dict(history)
    view.names.update(names)
    view.opened.add(commit.id)


def change(ring: Ring, transport: Transport, index: Index | None, action: str, *,
           members: dict[str, MemberKeys], removed: dict[str, Cutoff], new_key: bool,
           names: dict[str, str], reencrypt: bool = False, merges: list[str] | None = None
           ) -> Commit:
    """Sign and upload one commit on the head: add (same KEK), or remove/rotate/merge (new)."""
    head = ring.head
    if new_key:
        kek = chain.new_kek()
        history = {} if reencrypt else {**ring.all_keks()}
        epoch = max([head.epoch, *(ring.view.must_find(t).epoch for t in merges or [])]) + 1
    else:
        kek = ring.head_kek
        history = dict(ring.view.head_history)
        epoch = head.epoch
    history.pop(fmt.kek_commit(kek), None)
    all_names = {**{r: ring.name_of(r) for r in members}, **names}
    commit, data, keyobj = chain.build(ring.view, ring.view.vault_id, ring.secret, ring.rid,
                                       action, members, removed, kek, epoch, all_names,
                                       history, head.descriptor, now_iso(), merges,
                                       reencrypt)
    write(transport, index, commit, data, keyobj)
    advance(ring, commit, kek, history, all_names)
    return commit


def merge_if_needed(ring: Ring, transport: Transport, index: Index | None,
                    warn: Callable[[str], None], skip: frozenset[str] = frozenset()
                    ) -> Commit | None:
    """Two devices committed at once: write the merged member set under a new KEK.

    ``skip``: members about to be removed for equivocating; their branches are not taken in
    (the removal, built on the head, voids them)."""
    view = ring.view
    if not view.needs_merge or ring.rid not in view.head.members:
        return None
    tips = view.merge_tips(skip)
    if skip and not tips:
        return None
    if view.head.members[ring.rid].kind != "device":
        raise KeyStoreError("the membership chain needs a merge, which only a device can sign")
    members, removed = membership.merge_members(view, view.head, tips)
    warn(f"two devices changed membership at once; merging {len(tips) + 1} branches")
    return change(ring, transport, index, "merge", members=members, removed=removed,
                  new_key=True, names={}, merges=tips)


Opener = Callable[[str, str, int, bytes], dict[str, Any]]


def limits(ring: Ring, matches: Callable[[Entry], bool]) -> Limits:
    """What loading's clamp needs from the chain beyond the cutoffs (manifest.Limits);
    ``matches`` checks a blob against its signed hash."""
    view = ring.view
    every = [*view.commits.values(), *view.voided.values()]
    checked: dict[tuple[str, ...], bool] = {}

    def once(entry: Entry) -> bool:  # several late snapshots name one place
        key = tuple(str(entry.get(k)) for k in ("o", "a", "n", "h", "k", "g", "i"))
        if key not in checked:
            checked[key] = matches(entry)
        return checked[key]
    return Limits(ended=view.ended(), vouched=view.vouched(), ghosts=view.introducers(),
                  keks=frozenset(c.kek for c in every), matches=once,
                  known=frozenset(r for c in every for r in (*c.members, *c.removed)))


def reencrypt_seen(view: View, index: Index, now: float) -> dict[str, float]:
    """When this device first saw each re-encrypting commit (recorded the first time)."""
    first: dict[str, float] = index.get_meta("reencrypt_seen", {})
    fresh = {c.id: now for c in view.commits.values() if c.reencrypt and c.id not in first}
    if fresh:
        first = {**first, **fresh}
        with index.transaction():
            index.set_meta("reencrypt_seen", first)
    return first


def ended_since(view: View, index: Index, now: float) -> dict[str, int]:
    """Each ended generation, with when this device first saw a re-encryption end it: a
    version under it that joined the history later was not there for the re-encryption to
    redo (an interrupted run, a lagging device's push), and stays listed until it is
    ``keep_days`` old (review round 7, V2 (a))."""
    first = reencrypt_seen(view, index, now)
    out: dict[str, int] = {}
    for c in view.commits.values():
        if c.reencrypt:
            for gen in view.ended_by(c):
                out[gen] = min(out.get(gen, int(first[c.id])), int(first[c.id]))
    return out


def late_opener(ring: Ring) -> Opener:
    """Opens a removed member's segments past its cutoff, for the history only."""
    def opener(name: str, dev: str, seq: int, data: bytes) -> dict[str, Any]:
        return chain.accept_segment(ring.view, name, dev, seq, data, ring.kek_of, late=True)
    return opener


def segment_opener(ring: Ring, index: Index) -> Opener:
    """Writer rules (chain.accept_segment), plus: a writer's heads only move forward along
    the chain (or off a head that turned void), and a segment written under an older KEK
    marks the state for re-wrapping."""
    heads: dict[str, tuple[int, str]] = {}

    def opener(name: str, dev: str, seq: int, data: bytes) -> dict[str, Any]:
        payload = chain.accept_segment(ring.view, name, dev, seq, data, ring.kek_of)
        written = ring.view.find(fmt.segment_head(data)[1])
        if written is None:  # accept_segment has skipped such a segment already
            raise IntegrityError(f"manifest segment {name} names no verified commit")
        before = heads.get(dev)  # leaving a head that turned void is the removal's doing
        if before is not None and before[0] == seq - 1 and before[1] not in ring.view.voided \
                and not ring.view.builds_on(written.id, before[1]):
            raise IntegrityError(f"fork: manifest segment {name} names a head that does not "
                                 "build on its writer's previous one")
        heads[dev] = (seq, written.id)
        if written.kek != ring.head.kek:  # a frozen or racing writer: re-wrap later
            index.set_meta("rewrap_needed", True)
        return payload
    return opener
