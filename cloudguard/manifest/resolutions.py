"""Conflict resolutions that carry a removed member's late write (review round 12, AA2;
round 13, BB1). A resolution is an honest device's dot, so without more it would keep a late
write's content live for good: as the copy of the loser, or at the path itself when the late
write won (its Lamport time is what the removed member signed). Each version a resolution
writes names, in its signed ``cs``, the dot that first pushed the content it carries (its
sibling's own ``cs`` if it has one: a resolution of a resolution). Once a removal shows, a
version whose ``cs`` is a late dot holds that late content under an honest dot: it is treated
like a late version (to the history, kept there, never revived), and as a remover it is late,
so what it replaced comes back. A version carrying honest content stays live, whatever else
the conflict held: only the late content leaves (format.md, "Writer rules").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final, cast

from .entry import Entry, Op
from .moves import late_dot
from .types import DOT

FIELD: Final = "cs"  # Final: a literal, so the Entry TypedDict takes it as its key


def source(dot: str, entry: Entry, state: Any = None) -> str:
    """The dot that first pushed ``entry``'s content. With ``state``, an inherited ``cs`` is
    believed only where this device holds that version with the same content: a removed
    member could name an honest dot as the source of its late content (review round 15,
    DD1); otherwise the carried version names ``dot`` itself."""
    raw = entry.get(FIELD)
    if not isinstance(raw, str):
        return dot
    if state is None or held(state, raw, content_tag(entry)) is not None:
        return raw
    return dot


def held(state: Any, dot: str, tag: str) -> Entry | None:
    """The version ``dot`` as this device holds it (live or in the history), if it holds
    content ``tag``: a dot alone is a writer's claim, its content is what binds it."""
    for table in ("entries", "attic"):
        for (raw,) in state.db.execute(f"SELECT e FROM {table} WHERE dot = ?", (dot,)):
            entry: Entry = json.loads(raw)
            if content_tag(entry) == tag:
                return entry
    return None


def saw(entry: Entry, device: str, seq: int, deps: dict[str, int]) -> bool:
    """A resolution carries content it had seen: its ``cs`` is covered by the delta's ``deps``
    or is an earlier push of its own writer (review round 13, BB3: a dot of a device made up
    now, void-added later, would be a time bomb)."""
    raw = entry.get(FIELD)
    if not isinstance(raw, str):
        return True
    if DOT.match(raw) is None:
        return False
    dev, _, seq_cs = raw.partition(":")
    return int(seq_cs) < seq if dev == device else int(seq_cs) <= deps.get(dev, 0)


def poisoned(entry: Entry | None, cuts: dict[str, int]) -> bool:
    """Does this version carry a removed member's late content under another dot?"""
    raw = entry.get(FIELD) if entry is not None else None
    return bool(cuts) and isinstance(raw, str) and DOT.match(raw) is not None and late_dot(
        raw, cuts)


def late_version(dot: str, entry: Entry, cuts: dict[str, int]) -> bool:
    """A late write, or a version carrying one's content under another dot (review round
    12, AA2): neither is ever live again once the removal shows."""
    return late_dot(dot, cuts) or poisoned(entry, cuts)


def stamp(state: Any, ops: list[Op]) -> None:
    """Every version a push carries over from another dot (a rename, a metadata-only change,
    which keep the content's ``lc``) names that content's first dot, as a resolution's do: a
    late write renamed or touched during a lag must not live on under an honest dot (review
    round 14, CC2). A file's source is the live version whose blob it shares. A folder or
    link has no blob: its source is a live version this same push removes with the same
    kind, target, writer and causal time (a chmod in place, a moved link, a folder the mount
    renamed), or a late link's target, or a late folder an honest chmod made an edit of,
    would live on under an honest dot (review round 15, DD2). Only a source this device's
    vector covers counts: a carry out of the history after a clamp would name a dot its
    deps no longer cover (round 15, DD3)."""
    removed: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] | None = None

    def removed_by_push() -> dict[tuple[Any, ...], tuple[str, dict[str, Any]]]:
        """The folders and links this push removes, read once (only if one is carried)."""
        nonlocal removed
        if removed is None:
            removed = {}
            for op in ops:
                for d in op.get("rm") or ():
                    for (raw,) in state.db.execute(
                            "SELECT e FROM entries WHERE path = ? AND dot = ?",
                            (op["p"], str(d))):
                        had = json.loads(raw)
                        if had.get("t") in ("d", "l"):
                            removed.setdefault(_carried_as(had), (str(d), had))
        return removed

    for op in ops:
        entry = op.get("e")
        if entry is None or "reloc" in op or "lc" not in entry or FIELD in entry:
            continue
        found: tuple[str, dict[str, Any]] | None = None
        if entry.get("t") == "f" and isinstance(entry.get("o"), str):
            found = next(((dot, had) for dot, raw in state.db.execute(
                "SELECT dot, e FROM entries WHERE o = ?", (entry["o"],))
                if (had := json.loads(raw)).get("a") == entry.get("a")
                and had.get("h") == entry.get("h")), None)
        elif entry.get("t") in ("d", "l"):
            found = removed_by_push().get(_carried_as(entry))
        if found is not None:
            src = source(found[0], cast(Entry, found[1]), state)
            dev, _, seq = src.partition(":")
            if state.ctx.get(dev, 0) >= int(seq):
                entry[FIELD] = src


def _carried_as(entry: Entry) -> tuple[Any, ...]:
    """What a folder or link keeps when carried: kind, target, writer and causal time."""
    return tuple(entry.get(k) for k in ("t", "l", "lc", "wb"))


def carry(entry: Entry, **changes: Any) -> Entry:
    """A version carried over from another (a rename, a metadata-only change), without the
    source's ``cs``: that is its writer's claim, a removed member's lie if the source is late
    (review round 16, EE1); the push's :func:`stamp` names the source, believed only where
    this device holds what it names."""
    return cast(Entry, {**{k: v for k, v in entry.items() if k != FIELD}, **changes})


def content_tag(entry: Entry) -> str:
    """What a version is, as text (its kind, hash and link target): one key for every layer
    that asks whether two versions hold the same content (conflicts, carries, removers)."""
    return f"={entry.get('t')}|{entry.get('h')}|{entry.get('l')}"


def carried(versions: Iterable[tuple[str, Entry]], cuts: dict[str, int]
            ) -> set[tuple[str, str]]:
    """(dot, the dot whose content it carries) of every carried version, and (dot, content)
    of every carried version that is poisoned: a remover that carried the late version's
    content elsewhere moved it, it did not delete it (CC2), and one that moved a version's
    content into a poisoned version (a source it took for a late copy of the same content)
    is undone with it, so that version comes back."""
    out: set[tuple[str, str]] = set()
    for dot, e in versions:
        if isinstance(e.get(FIELD), str):
            out.add((dot, str(e[FIELD])))
            if poisoned(e, cuts):
                out.add((dot, content_tag(e)))
    return out
