"""Maintenance after a push: compaction into snapshots, garbage collection
after a grace period, and repacking half-empty packs.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from .. import chain, sync, trust
from .. import format as fmt
from .. import manifest as mf
from ..errors import (
    IntegrityError,
)
from ..held import long_lived
from ..session import Session
from ..settings import settings
from ..sync.early import forget, left_behind

COMPACT_AFTER = 32  # delta segments before a snapshot replaces them


REPACK_BELOW = 0.5  # live fraction under which a pack is rewritten


def gc_grace() -> float:
    return settings().gc_grace


def _collect_pending(s: Session) -> None:
    """Objects we uploaded in a run that crashed before its commit are garbage: delete them,
    and the spool files such a run left behind. Not those of versions a mount staged: its
    next commit sends them no more (ops/write.py), so they stay, pending."""
    shutil.rmtree(s.binding.dir / "spool", ignore_errors=True)
    early, journals = left_behind(s.binding.dir, s.early.journal if s.early else None)
    pending = s.index.pending()
    if not pending and not early:
        return
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    staged = {sync.DATA_PREFIX + o for o in s.index.staged_objects()}
    stale = (pending | early) - live - staged
    if stale:
        s.transport.delete(stale)
    forget(journals)
    with s.index.transaction():
        s.index.clear_pending(s.index.pending() - staged)


# A long-lived face pushes every few seconds: it repacks and collects garbage at most this
# often (each pass reads every entry), a CLI run after every push. Compaction is never late.
MAINTAIN_EVERY = 600.0
_LAST_MAINTAINED: dict[str, float] = {}


def _maintain(s: Session) -> None:
    """Compaction, repacking and garbage collection after a successful commit. Versions
    replaced longer than ``keep_days`` ago leave the history first, so their objects are
    garbage too."""
    if long_lived(s.binding):
        if s.loaded.deltas >= COMPACT_AFTER:
            s.snapshot()
        if time.monotonic() - _LAST_MAINTAINED.get(s.binding.id, -MAINTAIN_EVERY) \
                < MAINTAIN_EVERY:
            return
        _LAST_MAINTAINED[s.binding.id] = time.monotonic()
    s.state.prune_attic(int(time.time()) - s.binding.keep_days * 86400, s.ring.view.cutoffs,
                        _ended_long_ago(s, time.time()))
    if s.loaded.deltas >= COMPACT_AFTER:
        s.snapshot()
    _repack(s)
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    # rclone's temp names of a killed upload ("<name>.<hex>.partial") are garbage too
    stored = {n for n in s.listing if n.startswith(sync.DATA_PREFIX) or (
        n.startswith((mf.PREFIX, chain.KEYS_PREFIX)) and n.endswith(".partial"))}
    mine = s.index.pending()
    now = time.time()
    seen = s.index.orphans()
    orphans = {n: seen.get(n, now) for n in stored - live - mine}
    doomed = {n for n, first in orphans.items() if now - first >= gc_grace()}
    if _holding(s, now):
        doomed = set()
    if doomed:
        s.transport.delete(doomed)
    with s.index.transaction():
        s.index.set_orphans({n: t for n, t in orphans.items() if n not in doomed})


def _ended_long_ago(s: Session, now: float) -> frozenset[str]:
    """Generations whose history a re-encryption ended, counting only the commits this device
    first saw ``keep_days`` ago: until then its snapshots still carry that history, so a
    removed member's backdated re-encryption, accepted while its removal was hidden, ends
    nothing once the removal shows, even on a device that compacted meanwhile (review round
    6, U2)."""
    first = trust.reencrypt_seen(s.ring.view, s.index, now)
    return s.ring.view.ended(lambda c: now - first[c.id] >= s.binding.keep_days * 86400)


def _holding(s: Session, now: float) -> bool:
    """Garbage collection waits for ``keep_days`` after this device first saw each removal
    (counting or challenged) and each void add: what a removal's target, or a device whose
    approval was voided, wrote in segments no snapshot covers is refused everywhere, and a
    device kept from seeing a challenge must not delete it (review round 4, S4). Its versions
    that honest snapshots carry are in the history and kept as such; the rest can be restored
    from the writer's folder meanwhile. Bounded, so one honest race never stops garbage
    collection for the life of the vault (review round 5, T5)."""
    view = s.ring.view
    # a void add counts only if the member it brought in wrote something: a thief's void
    # adds of fresh ids must not keep garbage collection off for ever (review round 6, U5)
    wrote = {parsed[0] for n in s.listing
             if n.startswith(mf.PREFIX) and (parsed := mf.parse_name(n))}
    changes = {c.id for c in view.commits.values() if c.action == "remove"} | set(
        view.challenged) | {c.id for c in view.voided.values()
                            if c.action == "add" and set(c.members) & set(view.ghosts) & wrote}
    first: dict[str, float] = s.index.get_meta("removal_seen", {})
    fresh = {cid: now for cid in changes if cid not in first}
    if fresh:
        with s.index.transaction():
            s.index.set_meta("removal_seen", {**first, **fresh})
        first = {**first, **fresh}
    return any(now - t < s.binding.keep_days * 86400 for t in first.values())


def _repack(s: Session) -> bool:
    """Copy live blobs of mostly-dead packs, as they are, into a fresh pack."""
    victims: list[str] = []
    for object_id, (live, lowest) in s.state.usage().items():
        size = s.listing.get(sync.DATA_PREFIX + object_id)
        if not size or lowest == 0:
            continue  # a stand-alone object, or unknown
        if live < REPACK_BELOW * size:
            victims.append(object_id)
    if not victims:
        return False
    moves = [(p, d, e) for p, d, e in s.state.in_objects(victims) if e.get("t") == "f"]
    new_id = fmt.new_object_id()
    name = sync.DATA_PREFIX + new_id
    s.index.add_pending(name)
    new_entries: dict[tuple[str, str], dict[str, Any]] = {}
    with s.transport.writer(name) as raw:
        out = sync.ObjectWriter(raw, md5=not s.transport.local)
        pos = out.write(fmt.pack_header(os.urandom(16)))
        groups = sync.group_by_object([(f"{p}\x00{d}", e) for p, d, e in moves])
        for obj, items in groups.items():
            for key, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                if reader is None:
                    raise err or IntegrityError(obj)
                data_len = int(entry["n"])
                copied = 0
                while copied < data_len:
                    block = reader.read(min(1024 * 1024, data_len - copied))
                    if not block:
                        raise IntegrityError(f"{obj} is shorter than the manifest says")
                    out.write(block)
                    copied += len(block)
                path, _, dot = key.partition("\x00")
                new_entries[(path, dot)] = {**entry, "o": new_id, "a": pos}
                pos += data_len
        if s.binding.padding != "none":
            sync.write_filler(out)
            pos = out.count
    digest = out.md5()
    ops: list[mf.Op] = [{"p": path, "reloc": {dot: {"o": new_id, "a": entry["a"], "om": digest,
                                       "r": int(entry.get("r", 0)) + 1}}}
           for (path, dot), entry in new_entries.items()]
    s.commit(ops)
    s.index.clear_pending({name})
    s.listing[name] = pos
    # The old packs are now unreferenced; the garbage collector deletes them after the grace
    # period, so a concurrent push that still points at them keeps working meanwhile.
    return True
