"""Conflict resolutions that a removed member's late write took part in (review round 12,
AA2). A resolution is an honest device's dot, so without more it would keep a late write's
content live for good: as the copy of the loser, or at the path itself when the late write
won (its Lamport time is what the removed member signed). Each version a resolution writes
names, in its signed ``cf``, every dot the conflict held (and those its siblings' own ``cf``
named: a resolution of a resolution). Once a removal shows, a version whose ``cf`` names a
late dot is treated like a late version: it goes to the history and never comes back, and as
a remover it is late, so what it replaced comes back (format.md, "Writer rules").
"""

from __future__ import annotations

from typing import Any

from .moves import late_dot

FIELD = "cf"
MAX_DOTS = 4096  # one path's chain of resolutions, each naming the ones before


def dots(entry: dict[str, Any]) -> list[str]:
    raw = entry.get(FIELD)
    return raw.split(",") if isinstance(raw, str) and raw else []


def named(siblings: dict[str, dict[str, Any]]) -> str:
    """The ``cf`` of a resolution of ``siblings``: deterministic, so that two devices resolving
    one conflict write the same versions."""
    out: set[str] = set(siblings)
    for entry in siblings.values():
        out.update(dots(entry))
    return ",".join(sorted(out))


def names_later(dot: str, entry: dict[str, Any]) -> bool:
    """Does ``cf`` name a dot of the version's own writer at or past the version itself? A
    resolution names versions it saw, so never one of its writer's later pushes: a member
    must not plant its own future (late) dot so that its removal would undo its honest work
    and what honest devices built on it."""
    dev, _, seq = dot.partition(":")
    return any(d.partition(":")[0] == dev and (not d.partition(":")[2].isdigit() or int(
        d.partition(":")[2]) >= int(seq)) for d in dots(entry))


def poisoned(entry: dict[str, Any] | None, cuts: dict[str, int]) -> bool:
    """Did a removed member's late write take part in the conflict this version resolved?"""
    return bool(cuts) and entry is not None and any(late_dot(d, cuts) for d in dots(entry))

