"""Carriers: the snapshots through whose merge a device learned that a version was removed,
with the version vector each had. A removal that reached an honest device only through a
removed member's late write leaves no late remover in a row: the honest snapshot that dropped
the version is what the row names. Its vector still covers the late write, so the revival
walk takes such a carrier as late (format.md "Version history"; review round 6, U1).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

_SCHEMA = ("CREATE TABLE IF NOT EXISTS carriers (dot TEXT PRIMARY KEY, ctx TEXT NOT NULL) "
           "WITHOUT ROWID")


def tainted(ctx: dict[str, int], limit: dict[str, int]) -> bool:
    """Does a carrier's vector cover a write past a removed member's cutoff?"""
    return any(ctx.get(dev, 0) > seq for dev, seq in limit.items())


def late_carrier(dot: str, rb: Iterable[str], carriers: dict[str, dict[str, int]],
                 limit: dict[str, int]) -> bool:
    """Is ``dot``, one of a kept version's removers ``rb``, a carrier judged late by its
    vector? Only a carrier that named no remover of the version is: one that did is judged by
    the removers it named, which sit beside it in ``rb`` (review round 7, V5 (a)); its vector
    covers them, as a snapshot's history names only removers it saw."""
    ctx = carriers.get(dot)
    if ctx is None or not tainted(ctx, limit):
        return False
    return not any(other != dot and _covers(ctx, other) for other in rb)


def clamped(carriers: dict[str, dict[str, int]], limit: dict[str, int]
            ) -> dict[str, dict[str, int]]:
    """Carrier vectors with a removed member's writes past its cutoff left out, as a clamped
    version vector leaves them: once a clamp has revived what a late carrier dropped, the
    carrier is honest, and no later clamp revives its drops again (review round 7, V5 (c))."""
    return {dot: {d: min(s, limit[d]) if d in limit else s for d, s in ctx.items()}
            for dot, ctx in carriers.items()}


def _covers(ctx: dict[str, int], dot: str) -> bool:
    device, _, seq = dot.partition(":")
    return seq.isdigit() and int(seq) <= ctx.get(device, 0)


class Carriers:
    """A join of {dot: version vector}: the same carrier seen twice keeps, per device, the
    higher seq (an honest carrier's vector never changes; a lie can only make it later, which
    revives more, never less)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.execute(_SCHEMA)

    def note(self, found: dict[str, dict[str, int]]) -> None:
        for dot, ctx in found.items():
            row = self.db.execute("SELECT ctx FROM carriers WHERE dot = ?", (dot,)).fetchone()
            had: dict[str, int] = json.loads(row[0]) if row else {}
            joined = {d: max(had.get(d, 0), ctx.get(d, 0)) for d in {*had, *ctx}}
            if row is None or joined != had:
                self.db.execute("INSERT OR REPLACE INTO carriers VALUES (?, ?)",
                                (dot, json.dumps(joined, sort_keys=True)))

    def of(self, dots: Iterable[str]) -> dict[str, dict[str, int]]:
        """The vectors of those of ``dots`` that are carriers (a snapshot's ``rc``)."""
        out: dict[str, dict[str, int]] = {}
        for dot in sorted(set(dots)):
            row = self.db.execute("SELECT ctx FROM carriers WHERE dot = ?", (dot,)).fetchone()
            if row is not None:
                out[dot] = json.loads(row[0])
        return out

    def everything(self) -> dict[str, dict[str, int]]:
        return {d: json.loads(c) for d, c in self.db.execute("SELECT dot, ctx FROM carriers")}

    def keep_only(self, named: set[str]) -> None:
        """Forget carriers no kept version names any more."""
        gone = [(d,) for (d,) in self.db.execute("SELECT dot FROM carriers") if d not in named]
        self.db.executemany("DELETE FROM carriers WHERE dot = ?", gone)
