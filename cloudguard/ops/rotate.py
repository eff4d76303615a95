"""Key rotation: a new KEK under a signed commit, every DEK re-wrapped (no content
is re-uploaded), and with --reencrypt the content redone by ops.rekey.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import chain, sync, trust
from .. import format as fmt
from .. import manifest as mf
from ..errors import (
    IntegrityError,
)
from ..manifest.raises import in_stretch
from ..results import RotateResult
from ..session import INTENT, UI, Session, session
from ..session import intent as rekey_intent
from .common import _audited, _log, _resolve
from .maintain import _collect_pending


def key_rotate(folder: str | None, reencrypt: bool = False, ui: UI | None = None
               ) -> RotateResult:
    with _audited("rotate", folder, every=True), session(folder, ui) as s:
        result = _rotate(s, reencrypt, remove=None)
        _log(s, "rotate", reencrypt=reencrypt, deleted=result["deleted_objects"],
             resumed=result.get("resumed"))
        return msgspec.convert(result, RotateResult)


def _cutoff(s: Session, rid: str) -> chain.Cutoff:
    """The last segment of ``rid`` that we applied: readers accept nothing of it after this."""
    seq = s.state.ctx.get(rid, 0)
    digest = mf.applied_hash(s.state.consumed(), rid, seq)
    return chain.Cutoff(s.ring.head.members[rid].s, seq, digest)


def _rewrap(s: Session, kek: bytes, commitment: str) -> dict[str, str]:
    """Re-wrap every live DEK under ``kek``; returns {path: dot} of those whose KEK no
    verified commit hands this device any more (a re-encryption deleted it while this device
    wrote under it, not having seen the re-encryption): their DEKs are lost with it."""
    lost: dict[str, str] = {}
    suspect = s.state.raises.suspect(s.state.cuts)
    for path, sibs in list(s.state.items()):
        for dot, entry in sibs.items():
            if "k" in entry and entry.get("g") != commitment:
                try:
                    dek, file_id = sync.dek_of(entry, s.ring.kek)
                except IntegrityError:
                    lost[path] = dot
                    continue
                if in_stretch(dot, suspect) and sync.key_opens(
                        s.transport, entry, dek) is not True:
                    # taken on a removed member's word (its late snapshot lifted this
                    # device over it) and its key unchecked: under the head, a junk key
                    # would beat the real one for good (review round 23, MM3)
                    continue
                entry["k"] = fmt.b64(fmt.wrap_dek(kek, dek, file_id))
                entry["g"] = commitment
                s.state.put_entry(path, dot, entry)
    return lost


def _rewrap_stale(s: Session) -> dict[str, str]:
    """Entries a device wrote under an older KEK (it was frozen, or raced a rotation) move
    to the head's KEK: that limits, but does not undo, what a removed member could read.
    Returns the versions whose key went with a re-encryption (``_rewrap``)."""
    head = s.ring.head.kek
    if s.index.get_meta("wrapped_under") == head and not s.index.get_meta("rewrap_needed"):
        return {}
    stale = any("k" in e and e.get("g") != head for _p, sibs in s.state.items()
                for e in sibs.values())
    lost: dict[str, str] = {}
    if stale or _sealed_under_ended(s):
        with s.state.transaction():
            # the snapshot, under the head's key, also covers what this device wrote under
            # a key a re-encryption has deleted since, which no one can open (test_trust_lag)
            lost = _rewrap(s, s.ring.head_kek, head) if stale else {}
            s.snapshot()
    s.index.set_meta("wrapped_under", head)
    s.index.set_meta("rewrap_needed", None)
    return lost


def _sealed_under_ended(s: Session) -> bool:
    """Is one of this device's listed segments sealed under a key a re-encryption ended?
    No one opens it any more, not even this device's own fresh rebuild (``verify``), so a
    snapshot under the head's key replaces it, even when every version was redone."""
    ended = s.ring.view.ended()
    every = {**s.ring.view.voided, **s.ring.view.commits}
    for name, size in s.listing.items():
        parsed = mf.parse_name(name)
        if parsed is None or parsed[0] != s.binding.device:
            continue
        blob = s.segment_cache.get(name, size)
        if blob is None:
            continue  # not read since it was written here: the header tells nothing cheaply
        commit = every.get(fmt.segment_head(blob)[1])
        if commit is not None and commit.kek in ended:
            return True
    return False


def _exposure(s: Session) -> list[dict[str, Any]]:
    """Files whose DEK a removed member could unwrap: the DEK was first wrapped (``w``) under
    a KEK it held. Re-wrapping does not change that; only re-encryption does."""
    exposed = s.ring.view.exposed_to()
    if not exposed:
        return []
    s.ring.learn_names(s.ring.view.removed)
    counts: dict[str, int] = {}
    for _path, sibs in s.state.items():
        for entry in sibs.values():
            for rid in exposed.get(str(entry.get("w", entry.get("g"))), []):
                counts[rid] = counts.get(rid, 0) + 1
    return [{"removed": rid, "name": s.ring.name_of(rid), "files": n}
            for rid, n in sorted(counts.items())]


def _rotate(s: Session, reencrypt: bool, remove: str | None) -> dict[str, Any]:
    """A new KEK in a signed commit, wrapped to the remaining members; DEKs re-wrapped, or
    content redone (:mod:`cloudguard.rekey`, which also resumes an interrupted run).

    Order keeps every crash recoverable: the commit (with its key object), then the re-wrapped
    entries in a snapshot, or the re-encrypted content in committed batches, then deletions.
    """
    from . import rekey

    _resolve(s)
    _collect_pending(s)  # objects of an earlier run that was killed before its commit
    started = rekey_intent(s.index)
    if started is not None and not rekey.landed(s, started):
        s.index.set_meta(INTENT, None)  # killed before its new key was published
        started = None
    if reencrypt and remove is None and started is not None:
        return rekey.run(s, started, resumed=True)
    members = {r: k for r, k in s.ring.head.members.items() if r != remove}
    removed = dict(s.ring.head.removed)
    if remove is not None:
        # a snapshot of ours covers the member's writes up to the cutoff before the removal
        # lands, so no reader ever needs the removed member's own segments again
        s.snapshot()
        removed[remove] = _cutoff(s, remove)
    s.ring.all_keks()  # every older KEK, for the history (and the re-wrap below)
    intent = rekey.begin(s, remove, started) if reencrypt else None
    commit = trust.change(s.ring, s.transport, s.index, "remove" if remove else "rotate",
                          members=members, removed=removed, new_key=True, names={},
                          reencrypt=reencrypt)
    if intent is not None:
        rekey.published(s, intent, commit)
        return rekey.run(s, intent, resumed=False)
    new_kek = s.ring.head_kek
    # The entries change in place; until the snapshot that commits them is uploaded, a
    # failure must leave the local state as it was, so all of it is one transaction.
    with s.state.transaction():
        for path in sorted(_rewrap(s, new_kek, commit.kek)):
            s.ui.warn(f"{path}: its key went with a re-encryption this device had not seen; "
                      "push uploads it again from the folder")
        s.snapshot()
    s.index.set_meta("wrapped_under", commit.kek)
    return {"epoch": commit.epoch, "commit": commit.id, "reencrypted": False,
            "removed": remove, "resumed": False, "files": 0, "deleted_objects": 0}
