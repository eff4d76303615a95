"""Moves of a blob that keep the version's dot (a repack, a re-encryption): which of two
locations wins, and the previous location kept so that a late move can be undone
(format.md, "Moves"). Also who removed a kept version (``rb``), as a union. Pure functions
over entries; crdt.py stores what they decide.
"""

from __future__ import annotations

import json
from typing import Any, cast

from .entry import Entry

Raw = dict[str, Any]  # an entry's fields taken apart and put together again by name


def newer_location(one: Entry, two: Entry) -> Entry:
    """A repack moves a blob without a new dot; the move with the higher ``r`` wins.

    A max-register, so the result is the same in any order and on every device. Ties (two
    devices repacking at once) go to the higher object id; the loser becomes garbage.
    """
    return max(one, two, key=lambda e: (int(e.get("r", 0)), str(e.get("o", "")),
                                        json.dumps(e, sort_keys=True)))


def late_dot(dot: str, cutoffs: dict[str, int]) -> bool:
    """Is ``dot`` (``W:k``) past its writer's removal cutoff: a write no reader makes live
    (format.md, "Writer rules")?"""
    dev, _, seq = dot.partition(":")
    return dev in cutoffs and int(seq) > cutoffs[dev]


def removers(raw: str | None) -> set[str]:
    """The dots of a kept version's ``rb`` as stored (space-separated)."""
    return set(raw.split()) if raw else set()


def join_remover(one: str | None, two: str | None) -> str | None:
    """Who removed a kept version, as a join: the union of every delta that removed it and
    every snapshot whose merge dropped it (a carrier), so a late remover is never hidden
    behind a disagreement (review round 6, U1). None: unknown. Commutative, associative and
    idempotent, so every device ends with the same value."""
    both = removers(one) | removers(two)
    return " ".join(sorted(both)) if both else None


# What a move changes: where the blob is, and (re-encryption) its key fields.
LOCATION_FIELDS = ("o", "a", "r", "om", "n", "i", "k", "g", "w")
_MOVE_FIELDS = ("rd", "rt", "pl")


def _where(entry: Entry) -> tuple[Any, Any, Any]:
    """(o, a, n) of a file's blob; none for folders and links."""
    if entry.get("t") != "f":
        return None, None, None
    return entry.get("o"), entry.get("a"), entry.get("n")


def _was(entry: Entry) -> tuple[Any, Any, Any]:
    """(o, a, n) of where a moved file's blob was before its last move (``pl``)."""
    before = entry.get("pl")
    if entry.get("t") != "f" or not isinstance(before, dict):
        return None, None, None
    return before.get("o"), before.get("a"), before.get("n", entry.get("n"))


def moved(entry: Entry, loc: dict[str, Any], dot: str, when: int) -> Entry:
    """``entry`` moved to ``loc`` by the push ``dot`` at ``when``. The location before the
    first move still remembered is kept (``pl``) with the dots of every move since (``rd``), so
    that if any of them was made by a member removed before it, the blob goes back to a place
    none of them chose (review round 3, R6 (a): two late moves must not leave the first one's
    object as the place to go back to)."""
    base = {k: v for k, v in entry.items() if k not in _MOVE_FIELDS}
    before = entry.get("pl")
    if isinstance(before, dict) and isinstance(entry.get("rd"), list):
        return cast(Entry, {**base, **loc, "rd": [*entry["rd"], dot], "rt": when,
                            "pl": before})
    return cast(Entry, {**base, **loc, "rd": [dot], "rt": when,
                        "pl": {k: base[k] for k in LOCATION_FIELDS if k in base}})


def carried(mine: Entry, theirs: Entry, by: str, when: int) -> Entry:
    """``theirs`` (from the snapshot ``by``) wins the location max-register over an entry we
    hold. Its place and key fields are taken, never its move fields: ``pl``, ``rd`` and ``rt``
    are unsigned, and a snapshot that planted a ``pl`` could make the revert of a late move
    point a version at an object its writer chose (review round 4, S5). So ``pl`` stays the
    place we held (ours, or where we had the blob), ``rd`` is the union with the snapshot's
    dot added as a mover, so that if its writer is a removed member past its cutoff the blob
    goes back to where we had it (review round 3, R3). A rewrap (same object, offset and move
    count: only key fields differ, and key commitment checks those) is not a move."""
    base: Raw = {k: v for k, v in theirs.items() if k not in _MOVE_FIELDS}
    had = cast(Raw, mine)
    kept = {k: had[k] for k in _MOVE_FIELDS if k in had}
    if all(mine.get(k) == theirs.get(k) for k in ("o", "a", "r")):
        return cast(Entry, {**base, **kept})
    if isinstance(mine.get("pl"), dict) and isinstance(mine.get("rd"), list):
        pl, rd = mine["pl"], list(mine["rd"])
    else:
        pl, rd = {k: had[k] for k in LOCATION_FIELDS if k in had}, []
    if int(pl.get("r", 0)) >= int(theirs.get("r", 0)):
        return cast(Entry, base)  # two moves at one count (concurrent repacks): none lower
    moves = theirs.get("rd")
    for dot in [*(moves if isinstance(moves, list) else []), by]:
        if dot not in rd:
            rd.append(dot)
    return cast(Entry, {**base, "rd": rd, "rt": when, "pl": pl})


def unmoved(entry: Entry) -> Entry:
    """``entry`` back at the location it had before its last move."""
    if not entry.get("pl"):
        return entry
    base: Raw = {k: v for k, v in entry.items()
                 if k not in _MOVE_FIELDS and k not in LOCATION_FIELDS}
    base.update(entry["pl"])
    return cast(Entry, base)
