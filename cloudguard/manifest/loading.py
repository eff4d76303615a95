"""Loading: bring the state up to the listed segments, with the writer rules,
the removed members' cutoffs (clamping), and the rollback and fork checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

from ..chain import KeyGone, Skip
from ..errors import REPUBLISH_HINT, HistoryError, IntegrityError, named
from . import cover
from .clamp import Limits, clamp_ctx, clamp_own, clamp_snapshot, late
from .crdt import State, Vouch
from .entry import Entry, Op
from .raises import in_stretch
from .segments import (
    SegmentCache,
    _check_segment,
    carriers_of,
    firm,
    parse_name,
    segment_name,
    time_of,
)


@dataclass
class Loaded:
    state: State
    names: dict[str, int]  # segment name -> size
    own_seq: int  # highest seq this device has used on the remote
    deltas: int  # how many delta segments are stored (compaction trigger)
    heads: dict[str, str]  # device -> sha256 of its newest segment (for the prev chain)
    # N11: its own versions a vector that claimed more of this device's segments than it
    # wrote did not hold (to be written again)
    reissue: list[tuple[str, str]] = field(default_factory=list)
    # each such claim by the snapshot that made it, with that snapshot's vector as written:
    # once a removal shows that it covers a late write, the claim stops counting (claim_floor)
    claims: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    # device -> its segments (seqs) sealed under a key a verified re-encryption ended: no one
    # reads it until its writer writes again (rotate._rewrap_stale)
    keyless: dict[str, set[int]] = field(default_factory=dict)
    # II1 (cover.py): the late snapshots listed, and whether this device holds honest writes
    # a fresh reader could not reach past them (the next push or pull writes a snapshot)
    late_snapshots: list[str] = field(default_factory=list)
    uncovered: bool = False

    @property
    def claimed(self) -> int:
        """The most of this device's segments another's vector claimed beyond what it wrote."""
        return max((c for c, _raw in self.claims.values()), default=0)


Opener = Callable[[str, str, int, bytes], dict[str, Any]]


def load(listing: dict[str, int], fetch: Callable[[str], bytes], opener: Opener,
         device: str, seen: dict[str, int], cache: SegmentCache,
         state: State | None = None, cutoffs: dict[str, tuple[int, str | None]] | None = None,
         skipped: list[str] | None = None, vouch: Vouch | None = None,
         written: int | None = None, listed: Callable[[str], bool] | None = None,
         limits: Limits | None = None) -> Loaded:
    """Bring ``state`` up to the segments listed on the remote and check for rollback.

    A persistent ``state`` already holds the merge of the segments it recorded; only new ones
    are opened and applied. If a recorded segment vanished without a listed snapshot covering
    it, or changed size, the state is rebuilt from every segment, which then reports the gap
    or rollback as a full load would. Any failure leaves ``state`` as it was.

    ``opener`` checks a segment's writer and signature and decrypts it (chain.accept_segment);
    a segment it skips (deferred, or by a removed member past its ``cutoffs``) is treated as
    not listed, and its reason goes to ``skipped``. A removed member's segments count only on
    the ``prev`` chain that ends at the hash its removal recorded, and its writes past the
    cutoff are never live: a snapshot's are moved to the history, where they are kept (a
    clamp is never a deletion: the target of a removed member's backdated removal may be
    honest), and they are left out of every dependency and stored vector (format.md, "Writer
    rules"). A state that holds such writes already is rebuilt.

    ``vouch`` checks the writer's signature of every entry that enters the state (format.md,
    "Entry signatures").

    ``limits``: what the chain says beyond the cutoffs (ended generations, members with a
    counting removal, every commit's KEK), for the clamp (clamp.Limits).

    ``written`` is the highest seq this device knows it wrote (None: not known, as after a
    clone). Another writer's snapshot claiming more of it is planted (review round 2, N11):
    its word about this device counts for nothing (format.md, "Claims about this device").
    """
    state = state if state is not None else State()
    state.vouch = vouch
    try:
        return _load(listing, fetch, opener, device, seen, cache, state, cutoffs, skipped,
                     written, listed or (lambda _o: True), limits or Limits())
    finally:
        state.vouch = None


def _load(listing: dict[str, int], fetch: Callable[[str], bytes], opener: Opener,
          device: str, seen: dict[str, int], cache: SegmentCache, state: State,
          cutoffs: dict[str, tuple[int, str | None]] | None,
          skipped: list[str] | None, written: int | None = None,
          listed: Callable[[str], bool] = lambda _o: True,
          limits: Limits | None = None) -> Loaded:
    cuts = cutoffs or {}
    limit = {dev: seq for dev, (seq, _h) in cuts.items()}
    lim = replace(limits or Limits(), cuts=limit, listed=listed)
    # every late write is a removed member's word: a member that only challenged removals
    # took out may be the thief answering its own removal (review round 10, Y1)
    state.cuts = dict(limit)
    # what the writer rules refuse is not expected back: no rollback is read into it
    seen = clamp_ctx(seen, limit)
    skip_log = skipped if skipped is not None else []
    held: set[str] = set()
    parsed: dict[str, tuple[str, int, str]] = {}
    for name in listing:
        got = parse_name(name)
        if got is not None:
            parsed[name] = got
    heads_hash: dict[str, str] = {}
    refused = cover.late_snapshots(parsed, limit)  # every reader refuses these (cover.py)

    pinned: dict[str, set[str]] = {}
    keyless: dict[str, set[int]] = {}
    state.short = {}
    pinning = False
    reissue = set()
    claims: dict[str, tuple[int, dict[str, int]]] = {}

    def open_named(name: str) -> dict[str, Any]:
        data = cache.get(name, listing[name])
        fresh = data is None
        if data is None:
            data = fetch(name)
        dev, seq, kind = parsed[name]
        if dev in cuts and name not in pinned.get(dev, set()) and not pinning:
            raise Skip(f"manifest segment {name} of removed member {dev} is not on the chain "
                       "its removal recorded; refused")
        try:
            payload = opener(name, dev, seq, data)
        except KeyGone as exc:
            if exc.kek in lim.ended:
                keyless.setdefault(dev, set()).add(seq)
            raise
        if (payload.get("device"), payload.get("seq"), payload.get("kind")) != (
                dev, seq, {"d": "delta", "s": "snapshot"}[kind]):
            raise IntegrityError(f"manifest segment {name} does not match its name")
        _check_segment(name, payload)
        if fresh:
            cache.put(name, data)
        heads_hash[name] = hashlib.sha256(data).hexdigest()
        return payload

    pinning = True
    for dev, (seq, digest) in sorted(cuts.items()):
        pinned[dev] = _pinned(dev, seq, digest, parsed, open_named, heads_hash)
    pinning = False
    with state.transaction():
        consumed = state.consumed()
        rebuilt = not consumed  # a fresh state (verify's, a lost one): read from the remote
        clamped = late(state.ctx, limit)
        if clamped:
            consumed = {}
            clamp_own(state, lim)
        snaps: dict[str, dict[str, Any]] = {}
        for name, (_dev, _seq, kind) in sorted(parsed.items()):
            if kind == "s" and name not in consumed:
                _open_or_skip(name, open_named, snaps, held, skip_log)
        # a clamped state records no segment, so our own snapshot is read again, not taken
        # for a torn one: a rebuild from the remote would lose the late versions it just
        # kept, which no snapshot may hold (a removed target's refused deltas; U4)
        if not clamped and not _still_valid(consumed, parsed, listing, snaps, device):
            state.reset()
            consumed, rebuilt = {}, True
            for name, (_dev, _seq, kind) in sorted(parsed.items()):
                if kind == "s" and name not in snaps and name not in held:
                    _open_or_skip(name, open_named, snaps, held, skip_log)
        for name, (_size, sha, _c) in consumed.items():
            if name in listing:
                heads_hash[name] = sha
        for name, payload in sorted(snaps.items()):
            ctx = raw = dict(payload["ctx"])  # checked by open_named, as the rest
            paths = payload["paths"]
            kept = payload["attic"]
            rc = carriers_of(payload)
            _known_devices(name, ctx, kept, rc, lim.known, paths)
            if late(ctx, limit):
                skip_log.append(f"manifest segment {name} holds writes of a removed member "
                                "past its removal; they are moved to the history")
                ctx = clamp_ctx(ctx, limit)
                paths, kept, rc = clamp_snapshot(paths, kept, rc, time_of(payload), lim)
            claim = ctx.get(device, 0)
            if written is not None and claim > written and late(raw, limit):
                ctx = {**ctx, device: 0}  # a late word, and suspect anywhere (raises.py)
                held_dots = None
            elif written is not None and claim > written and parsed[name][0] != device:
                skip_log.append(
                    f"manifest segment {name} claims {claim} segments of this device, which "
                    f"wrote {written}: a planted version vector (remove device "
                    f"{parsed[name][0]} if it is not yours); this device keeps its versions "
                    "and writes them again")
                claims[name] = (claim, raw)
                ctx = {**ctx, device: 0}  # its word about our writes counts for nothing
                held_dots = {d for sibs in paths.values() for d in sibs}
            else:
                held_dots = None
            with _naming(name):
                # at a clamp, every snapshot's observed-remove runs again: a version it
                # revived that a clean snapshot covers without holding was removed honestly,
                # and must not come back beside the current one (review round 12, AA3)
                if clamped or not state.dominates(ctx) or _lifts(
                        ctx, state.raises.takeable(state.cuts)):
                    state.merge_snapshot(ctx, paths.items(), kept, time_of(payload),
                                         f"{parsed[name][0]}:{parsed[name][1]}", rc, raw)
                elif kept:
                    state.merge_snapshot({}, (), kept, time_of(payload),  # history only
                                         carriers=rc)
            state.mark_consumed(name, listing[name], heads_hash[name], ctx)
            if held_dots is not None:
                reissue |= {(p, d) for p, d in state.dots()
                            if d.startswith(device + ":") and d not in held_dots}

        _read_again(state, parsed, consumed, limit, open_named, listing, heads_hash, skip_log)
        pending: dict[str, dict[int, str]] = {}
        for name, (dev, seq, kind) in parsed.items():
            if kind == "d" and seq > state.ctx.get(dev, 0) and name not in consumed:
                if dev in limit and seq > limit[dev]:
                    skip_log.append(f"manifest segment {name} was written by removed member "
                                    f"{dev} after its removal; refused")
                    continue
                pending.setdefault(dev, {})[seq] = name
        progress = True
        waits: dict[str, dict[str, int]] = {}  # what a delta that cannot apply yet waits on
        while progress:
            progress = False
            for dev in sorted(pending):
                nxt = state.ctx.get(dev, 0) + 1
                found = pending[dev].get(nxt)
                if found is None:
                    continue
                try:
                    payload = open_named(found)
                except Skip as exc:
                    skip_log.append(str(exc))
                    pending[dev] = {}
                    continue
                for kind in ("d", "s"):  # the writer's own previous segment, if we opened it
                    before = heads_hash.get(segment_name(dev, nxt - 1, kind))
                    if before is not None and payload.get("prev") not in (None, before):
                        raise HistoryError(f"manifest segment {found} does not follow "
                                           f"{segment_name(dev, nxt - 1, kind)}: a segment "
                                           "was replaced" + REPUBLISH_HINT)
                deps = dict(payload["deps"])
                _same_history(found, payload.get("dh"), deps, heads_hash)
                deps = clamp_ctx(deps, limit)
                if not state.dominates({d: s for d, s in deps.items() if d != dev}):
                    waits[dev] = deps
                    continue
                with _naming(found):
                    state.apply_delta(dev, nxt, payload["ops"], firm(deps, payload))
                state.mark_consumed(found, listing[found], heads_hash[found])
                del pending[dev][nxt]
                progress = True
        if stuck := {dev: rest for dev, rest in pending.items()
                     if rest and not any(dev == got[0] for h in held if (got := parse_name(h)))}:
            gone = cover.first_missing(stuck, waits, state.ctx)
            raise HistoryError(cover.missing(segment_name(*gone, "d"), refused))
        for dev, seq in seen.items():
            if state.ctx.get(dev, 0) < seq and state.ctx.get(dev, 0) + 1 in keyless.get(dev, ()):
                # only a chain that stops right at the unreadable segment, and the vector
                # stored as seen stays (review round 9, X5)
                state.short[dev] = seq
                skip_log.append(f"device {dev}'s manifest is read up to "
                                f"{state.ctx.get(dev, 0)} of {seq}: the rest is under a key a "
                                "re-encryption ended, until its writer writes it again")
            elif state.ctx.get(dev, 0) < seq:
                raise HistoryError(
                    f"the remote manifest is older than one this device has seen (device {dev} "
                    f"at {state.ctx.get(dev, 0)}, seen {seq}): rollback or deleted manifest"
                    + REPUBLISH_HINT)
        if rebuilt and state.cuts:
            _own_reach(state, seen, skip_log)
        state.forget_consumed(n for n in consumed if n not in listing)
    own = max([seq for dev, seq, _k in parsed.values() if dev == device] + [0])
    deltas = sum(1 for _d, _s, k in parsed.values() if k == "d")
    newest: dict[str, tuple[int, str]] = {}
    for name, digest in heads_hash.items():
        dev, seq, _k = parsed[name]
        if seq > newest.get(dev, (-1, ""))[0]:
            newest[dev] = (seq, digest)
    cache.prune(parsed)
    bases = {**{n: c for n, (_s, _h, c) in consumed.items() if c is not None},
             **{n: p["ctx"] for n, p in snaps.items()}}
    return Loaded(state, dict(listing), own, deltas, {d: h for d, (_s, h) in newest.items()},
                  sorted(reissue), claims, keyless, refused,
                  bool(refused) and cover.uncovered(parsed, bases, state.ctx, limit))


def _own_reach(state: State, seen: dict[str, int], log: list[str]) -> None:
    """Step 4 on a rebuild once a removal shows: the merged vector may reach ``seen`` only
    through a snapshot that took in a removed member's inflated claim during a lag, and such
    a snapshot stays listed while it answers for a suspect stretch. So what the rebuild read
    from each writer itself (its own words, and the highest dot of an entry it signed) must
    reach ``seen`` too; where it does not, the shortfall is reported (a lagging compaction
    may have deleted the writer's deltas honestly, so it is not failed; review round 11,
    Z2)."""
    own = state.seen()
    short = [d for d, q in seen.items() if state.ctx.get(d, 0) >= q > own.get(d, 0)]
    for dev in short:
        signed = [int(d.partition(":")[2]) for (d,) in state.db.execute(
            "SELECT dot FROM entries WHERE dot LIKE ? UNION SELECT dot FROM attic "
            "WHERE dot LIKE ?", (dev + ":%", dev + ":%"))]
        reach = max([own.get(dev, 0), *signed])
        if reach < seen[dev]:
            log.append(f"device {dev}'s manifest is read from its own segments up to {reach} "
                       f"of {seen[dev]}; only a snapshot that carried a removed member's word "
                       f"covers the rest: if {dev} wrote more, the remote is hiding it")


def claim_floor(stored: dict[str, Any] | None, floor: int, loaded: Loaded
                ) -> tuple[dict[str, Any], int]:
    """The claims on this device's writes that still count, by the snapshot that made each,
    and the floor they set for its next seq. A claim taken in during a lag stops counting
    once a removal shows that its snapshot covers a late write: every reader treats what it
    raised as suspect, so this device need not number past it (a claim near 10^12 would
    leave it none; review round 10, Y1 (c))."""
    claims = {n: (int(c), dict(raw)) for n, (c, raw) in (stored or {}).items()}
    if floor > max((c for c, _raw in claims.values()), default=0):
        claims[""] = (floor, {})  # a floor with no claim recorded (older local state)
    claims.update(loaded.claims)
    kept = {n: (c, raw) for n, (c, raw) in claims.items() if not late(raw, loaded.state.cuts)}
    return kept, max((c for c, _raw in kept.values()), default=0)


def _lifts(ctx: dict[str, int], suspect: dict[str, list[tuple[int, int]]]) -> bool:
    """Does a snapshot cover part of a stretch a late word lifted (raises.py)? Then its
    rows are read although this device's vector covers it."""
    return any(ctx.get(dev, 0) > lo for dev, stretches in suspect.items()
               for lo, _hi in stretches)


def _read_again(state: State, parsed: dict[str, tuple[str, int, str]],
                consumed: dict[str, tuple[int, str, dict[str, int] | None]],
                limit: dict[str, int], open_named: Callable[[str], dict[str, Any]],
                listing: dict[str, int], heads_hash: dict[str, str], skip_log: list[str]
                ) -> None:
    """Deltas in a stretch a late word lifted, which this device never applied, are
    applied now, in order: the late snapshot's vector kept them out (review round 8,
    W2 (c)). A version this device holds as removed stays removed (State.apply_delta)."""
    suspect = state.raises.takeable(state.cuts)
    if not suspect:
        return
    for name, (dev, seq, kind) in sorted(parsed.items(), key=lambda item: item[1][:2]):
        if kind != "d" or name in consumed or seq > state.ctx.get(dev, 0):
            continue
        if not in_stretch(f"{dev}:{seq}", suspect) or (dev in limit and seq > limit[dev]):
            continue
        try:
            payload = open_named(name)
        except Skip as exc:
            skip_log.append(str(exc))
            continue
        with _naming(name):
            state.apply_delta(dev, seq, payload["ops"],
                              firm(clamp_ctx(dict(payload["deps"]), limit), payload))
        state.mark_consumed(name, listing[name], heads_hash[name])


def _known_devices(name: str, ctx: dict[str, int], kept: dict[str, dict[str, dict[str, Any]]],
                   rc: dict[str, dict[str, int]], known: frozenset[str] | None,
                   paths: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Every device a snapshot's vectors, removers and content sources (``cs``) name is one
    the chain ever named: a removed member's made-up ids would make "two removers of one
    device" no bound at all (review round 8, W5 (b)), and a made-up source, void-added
    later, a time bomb (round 13, BB3)."""
    if known is None:
        return
    named = {*ctx, *(d for v in rc.values() for d in v), *(c.partition(":")[0] for c in rc)}
    named |= {r.partition(":")[0] for rows in kept.values() for row in rows.values()
              for r in row.get("rb") or ()}
    named |= {str(e["cs"]).partition(":")[0] for sibs in paths.values() for e in sibs.values()
              if "cs" in e}
    named |= {str(row["e"]["cs"]).partition(":")[0] for rows in kept.values()
              for row in rows.values() if "cs" in row["e"]}
    strange = sorted(named - known)
    if strange:
        raise IntegrityError(f"manifest segment {name} names device {strange[0]}, which no "
                             "commit on the chain names")


@contextmanager
def _naming(name: str) -> Iterator[None]:
    """An entry that fails its checks is reported with the segment that carried it."""
    try:
        yield
    except HistoryError:
        raise
    except IntegrityError as exc:
        raise named(f"manifest segment {name}", exc) from exc


def _open_or_skip(name: str, open_named: Callable[[str], dict[str, Any]],
                  snaps: dict[str, dict[str, Any]], held: set[str], log: list[str]) -> None:
    try:
        snaps[name] = open_named(name)
    except Skip as exc:
        held.add(name)
        log.append(str(exc))


def _pinned(dev: str, seq: int, digest: str | None, parsed: dict[str, tuple[str, int, str]],
            open_named: Callable[[str], dict[str, Any]], hashes: dict[str, str]) -> set[str]:
    """The removed member's segments its removal vouches for: the one with the recorded hash,
    then back along each one's ``prev``. Anything else of it is refused, so it cannot slip in
    a forged snapshot under a lower sequence number."""
    out: set[str] = set()
    expect = digest
    while expect is not None and seq > 0:
        names = [n for n in (segment_name(dev, seq, "d"), segment_name(dev, seq, "s"))
                 if n in parsed]
        match = None
        for name in names:
            try:
                payload = open_named(name)
            except Skip:
                continue
            if hashes.get(name) == expect:
                match = name
                break
        if match is None:
            break  # compacted away: an honest snapshot covers it
        out.add(match)
        prev = payload.get("prev")
        expect = prev if isinstance(prev, str) else None
        seq -= 1
    return out


def _same_history(name: str, raw: object, deps: dict[str, int], heads_hash: dict[str, str]
                  ) -> None:
    """Dependencies name segment hashes: if the writer saw another segment under a name we
    applied, the provider showed us two histories (a fork)."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise IntegrityError(f"manifest segment {name} has malformed dependencies")
    for dev, digest in raw.items():
        seq = deps.get(dev)
        if seq is None or not isinstance(digest, str):
            raise IntegrityError(f"manifest segment {name} has malformed dependencies")
        for kind in ("d", "s"):
            mine = heads_hash.get(segment_name(dev, seq, kind))
            if mine is not None and mine != digest:
                raise HistoryError(f"fork: manifest segment {name} depends on a "
                                   f"{segment_name(dev, seq, kind)} other than the one this "
                                   "device applied; the provider shows devices different "
                                   "histories" + REPUBLISH_HINT)


def _still_valid(consumed: dict[str, tuple[int, str, dict[str, int] | None]],
                 parsed: dict[str, tuple[str, int, str]], listing: dict[str, int],
                 snaps: dict[str, dict[str, Any]], device: str) -> bool:
    """Can the recorded state be reused? Only if every segment it was built from is either
    still listed, unchanged, or covered by a listed snapshot (compaction deleted it).

    A snapshot of our own that the state does not record means we were killed between
    uploading it and recording it; its entries may have been rewritten in place (rotation),
    which a merge would not prefer, so the state is rebuilt from the remote instead.
    """
    if any(parsed[name][0] == device for name in snaps):
        return False
    cover = [c for n, (_s, _h, c) in consumed.items() if c is not None and n in listing]
    cover += [dict(p["ctx"]) for p in snaps.values()]
    for name, (size, _sha, _c) in consumed.items():
        if name in listing:
            if listing[name] != size:
                return False
            continue
        got = parse_name(name)
        if got is None or not any(c.get(got[0], 0) >= got[1] for c in cover):
            return False
    return True


def reissue_ops(state: State, todo: list[tuple[str, str]], skip: set[str]
                ) -> list[Op]:
    """Review round 2, N11: another writer's vector claimed more of our writes than we made,
    so readers that took it in think they hold versions of ours they never got. Each such
    version of ours (``todo``, from :class:`Loaded`), still live, is written again under a dot
    past the claim (same content, same writer: a manifest-only change); a path the commit
    writes anyway (``skip``) needs none."""
    ops: list[Op] = []
    for path, dot in todo:
        entry = state.entry(path, dot)
        if entry is not None and path not in skip:
            ops.append({"p": path, "e": cast(Entry, {k: v for k, v in entry.items()
                                                      if k != "sg"}), "rm": [dot]})
    return ops


def written(recorded: int | None, segments: dict[str, int], device: str) -> int | None:
    """The highest seq ``device`` wrote: its own record, or a listed segment of its own above
    it (a state restored from a backup). None when it never recorded one (a clone)."""
    if recorded is None:
        return None
    listed = [got[1] for n in segments if (got := parse_name(n)) and got[0] == device]
    return max([int(recorded), *listed])
