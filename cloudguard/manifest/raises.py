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

# floor: the highest seq in the stretch of a version this device held live, removed and
# then forgot (the history's keep_days): a replay of old segments must not bring it back.
# One per stretch: a device-wide floor let a later forget keep an earlier stretch's
# versions out for good (review round 11, Z4)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS raises (device TEXT NOT NULL, lo INTEGER NOT NULL, "
           "hi INTEGER NOT NULL, src TEXT NOT NULL, ctx TEXT NOT NULL, "
           "floor INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, hi)) WITHOUT ROWID")
# per device, the highest of its seqs this device applied from its own delta or snapshot:
# the device's own word, which a rollback check may count on (review round 10, Y3)
_WORDS = "CREATE TABLE IF NOT EXISTS words (device TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
# stretches kept per device; past it the oldest two are coalesced (never dropped)
MAX_PER_DEVICE = 256

Row = tuple[str, int, int, str, str, int]
Stretches = dict[str, list[tuple[int, int]]]


def suspect_row(device: str, src: str, raw: dict[str, int], cuts: dict[str, int]) -> bool:
    """``src``: one snapshot's dot, or (a stretch coalesced past the cap) the JSON vector of
    the highest seq each coalesced source had, which has no writer of its own."""
    if src.startswith("{"):
        return tainted(json.loads(src), cuts) or tainted(raw, cuts)
    if late_dot(src, cuts):
        return True
    return device != src.partition(":")[0] and tainted(raw, cuts)


def _as_vector(src: str) -> dict[str, int]:
    if src.startswith("{"):
        return {d: int(s) for d, s in json.loads(src).items()}
    dev, _, seq = src.partition(":")
    return {dev: int(seq)}


def _join(one: dict[str, int], two: dict[str, int]) -> dict[str, int]:
    return {d: max(one.get(d, 0), two.get(d, 0)) for d in {*one, *two}}


def in_stretch(dot: str, stretches: Stretches) -> bool:
    device, _, seq = dot.partition(":")
    n = int(seq)
    return any(lo < n <= hi for lo, hi in stretches.get(device, ()))


class Raises:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # suspect() by the cutoffs it was asked for, until the stretches change: a load asks
        # once per snapshot and a merge several times (each a query and JSON decoding)
        self._suspect: tuple[dict[str, int], Stretches] | None = None
        db.execute(_SCHEMA)
        if "floor" not in {r[1] for r in db.execute("PRAGMA table_info(raises)")}:
            db.execute("ALTER TABLE raises ADD COLUMN floor INTEGER NOT NULL DEFAULT 0")
        db.execute(_WORDS)

    def word(self, device: str, seq: int) -> None:
        self.db.execute("INSERT INTO words VALUES (?, ?) ON CONFLICT (device) DO UPDATE "
                        "SET seq = max(seq, excluded.seq)", (device, seq))

    def words(self) -> dict[str, int]:
        return {str(d): int(s) for d, s in self.db.execute("SELECT device, seq FROM words")}

    def restore_words(self, words: dict[str, int]) -> None:
        for device, seq in words.items():
            self.word(device, seq)

    def seen(self, honest: dict[str, int], ctx: dict[str, int],
             cuts: dict[str, int] | None = None) -> dict[str, int]:
        """What a rebuild must reach: ``honest``, raised to each device's own word (never
        hearsay, so a late word's claim is not in it: review round 9, X4 (a)). Lowered to
        ``honest`` alone, the stored vector would let the provider hide what this device
        read from a writer itself, for as long as a stretch stays suspect (round 10, Y3).
        Never past a removed member's cutoff (``cuts``): its late writes are never applied
        again, so a rebuild could never reach them (round 11, Z3)."""
        out = dict(honest)
        for device, seq in self.words().items():
            if device in ctx:
                top = min(seq, ctx[device], (cuts or {}).get(device, seq))
                out[device] = max(out.get(device, 0), top)
        return out

    def forgot(self, dots: Iterable[str]) -> None:
        """This device forgot these versions, each of which left its own live state (never a
        row a snapshot's history stated: a late snapshot's fake row, forgotten at once, would
        raise the floor over honest writes; review round 10, Y2). Each raises the floor of the
        stretch it lies in, and no other's."""
        for dot in dots:
            dev, _, seq = dot.partition(":")
            if seq.isdigit():
                self.db.execute("UPDATE raises SET floor = max(floor, ?) WHERE device = ? "
                                "AND lo < ? AND hi >= ?", (int(seq), dev, int(seq), int(seq)))

    def floor(self) -> dict[str, int]:
        """The highest stretch floor per device (none: nothing forgotten in a stretch)."""
        return {str(d): int(s) for d, s in self.db.execute(
            "SELECT device, max(floor) FROM raises WHERE floor > 0 GROUP BY device")}

    def takeable(self, cuts: dict[str, int]) -> Stretches:
        """The suspect stretches above the forget floor: a version there is taken, and its
        delta applied. At or below it, a version may be one this device held and forgot, so
        it stays out, and a snapshot that holds it live does not clear it (:meth:`vouched`):
        this device's snapshots never claim it (review round 9, X2; round 10, Y2; the floor
        of each stretch: round 11, Z4)."""
        suspect = self.suspect(cuts)
        if not suspect:
            return {}
        floors = {(str(d), int(hi)): int(f) for d, hi, f in self.db.execute(
            "SELECT device, hi, floor FROM raises WHERE floor > 0")}
        out: Stretches = {}
        for device, stretches in suspect.items():
            kept = [(max(lo, low), hi) for lo, hi in stretches
                    if hi > (low := floors.get((device, hi), 0))]
            if kept:
                out[device] = kept
        return out

    def note(self, src: str, raw: dict[str, int], before: dict[str, int],
             after: dict[str, int]) -> None:
        """``src`` (a snapshot's dot, with its vector ``raw``) lifted the vector from
        ``before`` to ``after``."""
        for device, hi in after.items():
            lo = before.get(device, 0)
            if hi > lo:
                self._suspect = None
                self.db.execute("INSERT INTO raises (device, lo, hi, src, ctx) VALUES "
                                "(?, ?, ?, ?, ?) ON CONFLICT (device, hi) DO UPDATE SET "
                                "lo = excluded.lo, src = excluded.src, ctx = excluded.ctx",
                                (device, lo, hi, src, json.dumps(raw, sort_keys=True)))
                self._coalesce(device)

    def _coalesce(self, device: str) -> None:
        """Past the cap, the two oldest stretches of ``device`` become one: their union, with
        the join of their sources and vectors, suspect if either part was. A stretch is never
        dropped: a late snapshot could otherwise push its own out with a flood of small
        raises (review round 9, X1)."""
        rows = self.db.execute("SELECT lo, hi, src, ctx, floor FROM raises WHERE device = ? "
                               "ORDER BY hi LIMIT 3", (device,)).fetchall()
        count = self.db.execute("SELECT COUNT(*) FROM raises WHERE device = ?",
                                (device,)).fetchone()[0]
        if count <= MAX_PER_DEVICE or len(rows) < 2:
            return
        (lo1, hi1, src1, raw1, f1), (lo2, hi2, src2, raw2, f2) = rows[0], rows[1]
        src = json.dumps(_join(_as_vector(src1), _as_vector(src2)), sort_keys=True)
        raw = json.dumps(_join(json.loads(raw1), json.loads(raw2)), sort_keys=True)
        self.db.execute("DELETE FROM raises WHERE device = ? AND hi IN (?, ?)",
                        (device, hi1, hi2))
        self.db.execute("INSERT INTO raises VALUES (?, ?, ?, ?, ?, ?)",
                        (device, min(lo1, lo2), max(hi1, hi2), src, raw, max(f1, f2)))

    def changed(self) -> None:
        self._suspect = None

    def suspect(self, cuts: dict[str, int]) -> Stretches:
        """The stretches a late word lifted, by device (none while no removal shows)."""
        if not cuts:
            return {}
        if self._suspect is not None and self._suspect[0] == cuts:
            return {d: list(s) for d, s in self._suspect[1].items()}
        out: Stretches = {}
        for device, lo, hi, src, raw, _floor in self.rows():
            if suspect_row(device, src, json.loads(raw), cuts):
                out.setdefault(device, []).append((lo, hi))
        self._suspect = (dict(cuts), {d: list(s) for d, s in out.items()})
        return out

    def vouched(self, ctx: dict[str, int], cuts: dict[str, int],
                held_out: dict[str, int] | None = None) -> None:
        """An honest snapshot with vector ``ctx`` was merged: it answers for the suspect
        stretches it covers, up to (not including) the lowest seq per device it holds live
        that this device kept out under the forget floor (``held_out``)."""
        for device, stretches in self.suspect(cuts).items():
            upto = ctx.get(device, 0)
            if held_out and device in held_out:
                upto = min(upto, held_out[device] - 1)
            for lo, hi in stretches:
                if upto >= hi:
                    self._suspect = None
                    self.db.execute("DELETE FROM raises WHERE device = ? AND hi = ?",
                                    (device, hi))
                elif upto > lo:
                    self._suspect = None
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
        return [(str(d), int(lo), int(hi), str(s), str(c), int(f)) for d, lo, hi, s, c, f in
                self.db.execute("SELECT device, lo, hi, src, ctx, floor FROM raises")]

    def restore(self, rows: Iterable[Row]) -> None:
        self._suspect = None
        self.db.executemany("INSERT OR REPLACE INTO raises VALUES (?, ?, ?, ?, ?, ?)",
                            list(rows))

    def clear(self) -> None:
        self._suspect = None
        self.db.execute("DELETE FROM raises")
        self.db.execute("DELETE FROM words")  # a rebuild counts only what it reads again

