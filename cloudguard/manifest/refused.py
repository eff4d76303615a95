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
from collections.abc import Callable, Iterable
from typing import Any

from ..chain import Skip
from ..errors import IntegrityError
from .crdt import State, Vouch
from .loading import Opener
from .segments import _check_segment, parse_name

MAX_KEPT = 20_000  # late versions kept per such member: a thief must not fill every history


def keep_refused(state: State, listing: Iterable[str], fetch: Callable[[str], bytes],
                 opener: Opener, members: Iterable[str], cutoffs: dict[str, int],
                 vouch: Vouch, log: list[str]) -> int:
    """Read each member's refused segments not read before; returns the versions kept."""
    names = set(listing)
    done = {n for (n,) in state.db.execute("SELECT name FROM late_read")}
    total = 0
    for dev in sorted(set(members)):
        cut = cutoffs.get(dev, 0)
        todo = sorted((got[1], n) for n in names - done
                      if (got := parse_name(n)) and got[0] == dev and got[1] > cut)
        if not todo:
            continue
        kept = state.db.execute("SELECT COUNT(*) FROM attic WHERE dot LIKE ?",
                                (f"{dev}:%",)).fetchone()[0]
        added = 0
        for seq, name in todo:
            if kept + added >= MAX_KEPT:
                log.append(f"member {dev} was taken out and wrote more than {MAX_KEPT} versions "
                           "after its cutoff; the rest are not kept")
                break
            try:
                payload = opener(name, dev, seq, fetch(name))
                _check_segment(name, payload)
            except (IntegrityError, Skip) as exc:
                log.append(f"{exc}; not kept in the history")
                continue
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


def _own(payload: dict[str, Any], dev: str, seq: int, cut: int
         ) -> Iterable[tuple[str, tuple[int, dict[str, Any]]]]:
    """The files and links the segment's writer itself wrote past its cutoff: a delta's new
    versions, or a snapshot's versions with the writer's own late dots (not others': a late
    snapshot speaks for no one else)."""
    if payload.get("kind") == "delta":
        for op in payload.get("ops") or ():
            entry = op.get("e")
            if isinstance(entry, dict) and entry.get("t") in ("f", "l"):
                yield op["p"], (seq, entry)
        return
    for path, sibs in (payload.get("paths") or {}).items():
        for dot, entry in sibs.items():
            who, _, n = dot.partition(":")
            if who == dev and int(n) > cut and entry.get("t") in ("f", "l"):
                yield path, (int(n), entry)
