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
