"""Writes of a member taken out only by challenged removals (or brought in only by a void
add), past its cutoff, that no snapshot covered: refused everywhere, so without this no state
would name them, and once garbage collection's hold ended their blobs would go. They are read
(signature checked, as any segment) into the history as late versions: never live, never
forgotten by ``keep_days``, restored by naming them (review round 5, T6; round 6, U5). Such a
member may be a removed member answering its removal as well as an honest target, so what is
kept per member is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from ..chain import Skip
from ..errors import IntegrityError
from .clamp import MAX_KEPT
from .crdt import State, Vouch
from .entry import Entry
from .loading import Opener
from .moves import LOCATION_FIELDS
from .segments import _check_segment, parse_name


def keep_refused(state: State, listing: Iterable[str], fetch: Callable[[str], bytes],
                 opener: Opener, members: Iterable[str], cutoffs: dict[str, int],
                 vouch: Vouch, log: list[str], ghosts: dict[str, str] | None = None) -> int:
    """Read each member's refused segments not read before; returns the versions kept.
    ``ghosts``: members only void adds brought in, with the signer of the first; they count
    against one bound with it (review round 8, W5 (a))."""
    names = set(listing) - {n for (n,) in state.db.execute("SELECT name FROM late_read")}
    total = 0
    group = ghosts or {}
    members = sorted(set(members))
    for dev in members:
        cut = cutoffs.get(dev, 0)
        mates = {m for m in members if group.get(m, m) == group.get(dev, dev)}
        kept = sum(state.db.execute("SELECT COUNT(*) FROM attic WHERE dot LIKE ?",
                                    (f"{m}:%",)).fetchone()[0] for m in mates)
        added = 0
        for seq, name, payload in _refused(names, dev, cut, fetch, opener,
                                           lambda e: log.append(f"{e}; not kept in the history")):
            if kept + added >= MAX_KEPT:
                log.append(f"member {dev} was taken out and wrote more than {MAX_KEPT} versions "
                           "after its cutoff; the rest are not kept")
                break
            state.vouch = vouch
            try:
                with state.transaction():
                    for path, entry in _own(payload, dev, seq, cut):
                        state.to_attic(path, f"{dev}:{entry[0]}", entry[1], int(time.time()),
                                       checked=False)
                        added += 1
                    state.db.execute("INSERT OR IGNORE INTO late_read VALUES (?)", (name,))
            except IntegrityError as exc:
                log.append(f"manifest segment {name}: {exc}; not kept in the history")
            finally:
                state.vouch = None
        if added:
            log.append(f"{added} versions that member {dev} wrote after it was taken out are "
                       "kept in the history as late (cloudguard history, restore)")
        total += added
    return total


def _refused(names: set[str], dev: str, cut: int, fetch: Callable[[str], bytes],
             opener: Opener, failed: Callable[[Exception], object] = lambda _e: None
             ) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(seq, name, checked payload) of ``dev``'s listed segments past its cutoff, in order;
    one that does not open or check goes to ``failed`` and is passed over."""
    todo = sorted((got[1], n) for n in names
                  if (got := parse_name(n)) and got[0] == dev and got[1] > cut)
    for seq, name in todo:
        try:
            payload = opener(name, dev, seq, fetch(name))
            _check_segment(name, payload)
        except (IntegrityError, Skip) as exc:
            failed(exc)
            continue
        yield seq, name, payload


def _own(payload: dict[str, Any], dev: str, seq: int, cut: int
         ) -> Iterable[tuple[str, tuple[int, Entry]]]:
    """The files and links the segment's writer itself wrote past its cutoff: a delta's new
    versions, or a snapshot's versions with the writer's own late dots (not others': a late
    snapshot speaks for no one else)."""
    if payload.get("kind") == "delta":
        for op in payload.get("ops") or ():
            entry: Entry | None = op.get("e")
            if isinstance(entry, dict) and entry.get("t") in ("f", "l"):
                yield op["p"], (seq, entry)
        return
    for path, sibs in (payload.get("paths") or {}).items():
        for dot, entry in sibs.items():
            who, _, n = dot.partition(":")
            if who == dev and int(n) > cut and entry.get("t") in ("f", "l"):
                yield path, (int(n), entry)


def adopt_places(state: State, listing: Iterable[str], fetch: Callable[[str], bytes],
                 opener: Opener, cutoffs: dict[str, int], listed: Callable[[str], bool],
                 matches: Callable[[Entry], bool], log: list[str]) -> int:
    """A version whose object is gone takes the place that a removed member's refused segment
    moved it to, if that object is listed. A re-encryption deletes the objects it moved away
    from at once, and an honest retirement of its writer that races it makes those moves late
    (review round 7, V1): without this, every reader that did not apply them names deleted
    objects. Only the place is taken, only for a version no listed object holds, and only once
    the blob there has been read and ``matches`` its signed hash: a removed member's reloc to
    junk, with the real object hidden by the provider, must not replace the real place for
    good (garbage collection would then delete it). Nothing is read otherwise."""
    if not cutoffs:
        return 0  # no removed member: no refused segment to take a place from
    missing = {o for o in state.live_objects() if not listed(o)}
    if not missing:
        return 0
    names = set(listing)
    adopted = 0
    for dev, cut in sorted(cutoffs.items()):
        for _seq, _name, payload in _refused(names, dev, cut, fetch, opener):
            with state.transaction():
                for path, dot, loc in _places(payload):
                    if listed(str(loc.get("o"))):
                        adopted += _adopt(state, path, dot, loc, missing, matches)
    if adopted:
        log.append(f"{adopted} versions whose objects are gone take the place a removed "
                   "member's re-encryption moved them to")
    return adopted


def _places(payload: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """(path, dot, location) of every move a segment states: a delta's ``reloc``s, or the
    places of a snapshot's versions."""
    if payload.get("kind") == "delta":
        for op in payload.get("ops") or ():
            for dot, loc in (op.get("reloc") or {}).items():
                yield op["p"], dot, loc
        return
    for path, sibs in (payload.get("paths") or {}).items():
        for dot, entry in sibs.items():
            yield path, dot, {k: entry[k] for k in LOCATION_FIELDS if k in entry}


def _adopt(state: State, path: str, dot: str, loc: dict[str, Any], missing: set[str],
           matches: Callable[[Entry], bool]) -> int:
    def placed(entry: Entry) -> Entry:
        """The version at ``loc``, with no move record: the place before is gone, and a late
        mover in ``rd`` would be a dot the clamped vector no longer covers (refused)."""
        return cast(Entry, {k: v for k, v in entry.items()
                            if k not in LOCATION_FIELDS and k not in ("pl", "rd", "rt")} | loc)

    live = state.siblings(path).get(dot)
    if live is not None:
        if str(live.get("o")) not in missing or not matches(placed(live)):
            return 0
        state.put_entry(path, dot, placed(live))
        return 1
    count = 0
    for _p, _d, kept, gone in state._kept(path, dot):
        if str(kept.get("o")) in missing and matches(placed(kept)):
            state.to_attic(path, dot, placed(kept), gone)
            count += 1
    return count
