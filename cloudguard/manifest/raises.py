"""Raises: which snapshot lifted this device's version vector over each stretch of seqs.

A version vector that covers a dot with no row says the version was seen and removed. A
removed member's late snapshot can lift a lagging device's vector over an honest write it
never held: the write is then kept out of that device for good, and its snapshots, clean
once the removal shows, drop it on every device (review round 8, W2 (c); round 3, N11). So
each stretch a snapshot merge lifted is recorded with that snapshot and its own vector. Once
a removal shows, a stretch lifted by a late snapshot, or by one whose vector covers a late
write (it may carry the late snapshot's word), is *suspect*: a version in it that arrives is
taken, its delta is read again, and this device's own snapshots do not claim it
(:meth:`Raises.honest`). A snapshot's word about its own writer's seqs is its writer's own,
never suspect unless the writer is late. A stretch an honest snapshot covers later is
cleared: that snapshot's rows and vector now answer for it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from .carriers import tainted
from .moves import late_dot

_SCHEMA = ("CREATE TABLE IF NOT EXISTS raises (device TEXT NOT NULL, lo INTEGER NOT NULL, "
           "hi INTEGER NOT NULL, src TEXT NOT NULL, ctx TEXT NOT NULL, "
           "PRIMARY KEY (device, hi)) WITHOUT ROWID")
# stretches kept per device; older ones count as honest (as before these records existed)
MAX_PER_DEVICE = 256

Row = tuple[str, int, int, str, str]
Stretches = dict[str, list[tuple[int, int]]]


def suspect_row(device: str, src: str, raw: dict[str, int], cuts: dict[str, int]) -> bool:
    if late_dot(src, cuts):
        return True
    return device != src.partition(":")[0] and tainted(raw, cuts)


def in_stretch(dot: str, stretches: Stretches) -> bool:
    device, _, seq = dot.partition(":")
    n = int(seq)
    return any(lo < n <= hi for lo, hi in stretches.get(device, ()))


class Raises:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.execute(_SCHEMA)

    def note(self, src: str, raw: dict[str, int], before: dict[str, int],
             after: dict[str, int]) -> None:
        """``src`` (a snapshot's dot, with its vector ``raw``) lifted the vector from
        ``before`` to ``after``."""
        for device, hi in after.items():
            lo = before.get(device, 0)
            if hi > lo:
                self.db.execute("INSERT OR REPLACE INTO raises VALUES (?, ?, ?, ?, ?)",
                                (device, lo, hi, src, json.dumps(raw, sort_keys=True)))
                self.db.execute(
                    "DELETE FROM raises WHERE device = ? AND hi NOT IN (SELECT hi FROM raises "
                    "WHERE device = ? ORDER BY hi DESC LIMIT ?)", (device, device, MAX_PER_DEVICE))

    def suspect(self, cuts: dict[str, int]) -> Stretches:
        """The stretches a late word lifted, by device (none while no removal shows)."""
        if not cuts:
            return {}
        out: Stretches = {}
        for device, lo, hi, src, raw in self.rows():
            if suspect_row(device, src, json.loads(raw), cuts):
                out.setdefault(device, []).append((lo, hi))
        return out

    def vouched(self, ctx: dict[str, int], cuts: dict[str, int]) -> None:
        """An honest snapshot with vector ``ctx`` was merged: it answers for the suspect
        stretches it covers."""
        for device, stretches in self.suspect(cuts).items():
            upto = ctx.get(device, 0)
            for lo, hi in stretches:
                if upto >= hi:
                    self.db.execute("DELETE FROM raises WHERE device = ? AND hi = ?",
                                    (device, hi))
                elif upto > lo:
                    self.db.execute("UPDATE raises SET lo = ? WHERE device = ? AND hi = ?",
                                    (upto, device, hi))

    def honest(self, ctx: dict[str, int], cuts: dict[str, int]) -> dict[str, int]:
        """``ctx`` without the suspect stretches: what this device's snapshots may claim."""
        out = dict(ctx)
        for device, stretches in self.suspect(cuts).items():
            if device in out:
                out[device] = min(out[device], *(lo for lo, _hi in stretches))
        return out

    def rows(self) -> list[Row]:
        return [(str(d), int(lo), int(hi), str(s), str(c)) for d, lo, hi, s, c in
                self.db.execute("SELECT device, lo, hi, src, ctx FROM raises")]

    def restore(self, rows: Iterable[Row]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO raises VALUES (?, ?, ?, ?, ?)", list(rows))

    def clear(self) -> None:
        self.db.execute("DELETE FROM raises")

