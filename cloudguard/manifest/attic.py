"""The version history (the attic): replaced and deleted versions, their removers, and the
places blobs were moved from, which a removed member's late writes may need put back
(format.md, "Version history", "Moves")."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from .carriers import Carriers, late_carrier
from .entry import Entry
from .moves import _was, _where, join_remover, late_dot, newer_location, removers
from .raises import Raises
from .resolutions import poisoned


def _generation(raw: str) -> str | None:
    return _generation_of(json.loads(raw))


def _generation_of(entry: Entry) -> str | None:
    """The generation an entry's DEK was first wrapped under (what re-encryption ends)."""
    got = entry.get("w", entry.get("g"))
    return None if got is None else str(got)


def _dump(entry: Entry) -> str:
    return json.dumps(entry, separators=(",", ":"))


class History:
    """The attic half of :class:`~cloudguard.manifest.crdt.State`."""

    db: sqlite3.Connection
    ended: frozenset[str]
    ended_since: dict[str, int]
    raises: Raises
    cuts: dict[str, int]
    carriers: Carriers

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _check(self, path: str, dot: str, entry: Entry) -> None:
        raise NotImplementedError

    def _same_version(self, path: str, dot: str, had: Entry, entry: Entry) -> None:
        raise NotImplementedError

    keycheck: Callable[[Entry, Entry], Entry | None] | None
    placecheck: Callable[[Entry], bool] | None
    head_g: str | None

    def fresher(self, had: Entry, entry: Entry) -> Entry:
        """The location max-register (newer_location), except at one place (a rewrap: only
        key fields differ): a copy whose DEK does not open the blob loses to one whose does,
        and a copy that names another first generation (``w``) than the one held is not
        taken, whatever the tie-break says. A removed member's late snapshot could otherwise
        hand over a junk DEK, or a ``w`` that decides what a re-encryption ends, with no mover
        to undo it (review round 8, W7)."""
        if all(had.get(k) == entry.get(k) for k in ("r", "o")) and any(
                had.get(k) != entry.get(k) for k in ("a", "n", "i")):
            # one place, two blobs (review round 4, S5): one is junk, never the tie-break's
            # to choose; refusing the load instead let one honest snapshot that had taken a
            # removed member's copy stop every device for good (round 23, MM1)
            taken = self.placecheck is not None and self.placecheck(entry) and not (
                self.placecheck(had))
            return entry if taken else had
        won = newer_location(had, entry)
        if any(had.get(k) != entry.get(k) for k in ("o", "a", "r")):
            return won
        if had.get("w") != entry.get("w"):
            return had
        if self.keycheck is None or had.get("k") == entry.get("k"):
            return won
        # cannot tell (a blob the provider withholds now): keep the copy held, never the
        # tie-break's winner, which a removed member grinds (review round 22, LL2)
        return self.keycheck(had, entry) or self._under_head(had, entry) or had

    def _under_head(self, had: Entry, entry: Entry) -> Entry | None:
        """Of two good wraps of one DEK, the one under the head's KEK: the other would make
        this device's next push rewrap and write a snapshot for nothing (and a tie-break on
        random wrap bytes made that a coin toss after every rotation)."""
        if self.head_g is None or had.get("g") == entry.get("g"):
            return None
        return next((e for e in (had, entry) if e.get("g") == self.head_g), None)

    def _ended(self, entry: Entry, gone: int | None = None) -> bool:
        """Hidden from the history: ended by a re-encryption, and (``gone``: when it joined
        the history) there before the second this device first saw that re-encryption."""
        if not self.ended or (gen := _generation_of(entry)) not in self.ended:
            return False
        return gone is None or gen not in self.ended_since or gone < self.ended_since[gen]

    def to_attic(self, path: str, dot: str, entry: Entry, gone: int,
                 rb: str | None = None, checked: bool = True, own: bool = False,
                 rw: str | None = None) -> None:
        """Keep a replaced or deleted version. The same version reached two ways (a delta and
        a snapshot) keeps the latest time, so every device converges and no merge shortens
        history (review round 3, R7). ``checked``: False for a version that a segment states
        (its signature is checked unless this exact version is held already). ``rb``: the dots of
        the deltas that removed it and of the snapshots whose merge dropped it (None: unknown),
        joined with what is recorded (join_remover), so that a removed member's late edit can
        be undone (format.md "Version history"). ``own``: it leaves this device's live state
        now (a row a snapshot's history states is not: it may be a fake, review round 10,
        Y2); once set, it stays. ``rw``: the remover, when this device read that removal in
        its writer's own signed delta (never hearsay: ``witness``)."""
        row = self.db.execute("SELECT e, gone, rb, own, rw FROM attic "
                              "WHERE path = ? AND dot = ?", (path, dot)).fetchone()
        if row is not None:
            had = json.loads(row[0])
            self._same_version(path, dot, had, entry)
            entry = self.fresher(had, entry)
            gone = max(gone, int(row[1]))
            rb = join_remover(row[2], rb)
            own = own or bool(row[3])
            rw = join_remover(row[4], rw)
        elif checked is False:
            self._check(path, dot, entry)
        self.db.execute("INSERT OR REPLACE INTO attic (path, dot, e, o, a, n, gone, po, pa, pn, "
                        "rb, own, rw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (path, dot, _dump(entry), *_where(entry), gone, *_was(entry), rb,
                         1 if own else None, rw))

    def _kept_here(self, path: str, dot: str) -> bool:
        """Held as removed (rule 4 of "Suspect stretches"): in the history, with a remover
        that is no late write and no carrier judged late, or one whose own delta this device
        read (``rw``, AA3 (b)). A row whose only removers are late is X's word, like a history
        row a late snapshot states (review round 11, Z1)."""
        row = self.db.execute("SELECT rb, rw FROM attic WHERE path = ? AND dot = ?",
                              (path, dot)).fetchone()
        if row is None:
            return False
        if not self.cuts or any(self.honest_remover(path, r) for r in removers(row[1])):
            return True
        rb = sorted(removers(row[0]))
        if any(late_dot(r, self.cuts) for r in rb):
            return False  # the removed member's word as a whole (review round 12, AA1)
        vectors = self.carriers.of(rb)
        return any(not late_dot(r, self.cuts) and not late_carrier(r, rb, vectors, self.cuts)
                   for r in rb)

    def honest_remover(self, path: str, dot: str) -> bool:
        """A remover that is no late write and no version carrying late content (``cs``)."""
        if late_dot(dot, self.cuts):
            return False
        found = self.db.execute("SELECT e FROM entries WHERE path = ? AND dot = ? UNION ALL "
                                "SELECT e FROM attic WHERE path = ? AND dot = ?",
                                (path, dot, path, dot)).fetchone()
        return found is None or not poisoned(json.loads(found[0]), self.cuts)

    def witness(self, path: str, dot: str, by: str) -> None:
        """A delta of ``by``'s writer names ``dot``, which this device holds as removed
        already (a removed member's late write, learned first, removed it too): that honest
        removal is recorded, so undoing the late one does not bring the version back
        (review round 12, AA3 (b))."""
        row = self.db.execute("SELECT rw FROM attic WHERE path = ? AND dot = ?",
                              (path, dot)).fetchone()
        if row is not None:
            self.db.execute("UPDATE attic SET rw = ? WHERE path = ? AND dot = ?",
                            (join_remover(row[0], by), path, dot))

    def attic(self, path: str | None = None) -> Iterator[tuple[str, str, Entry, int]]:
        """(path, dot, entry, replaced at) of kept versions, of one path or of all; none that
        a re-encryption ended (``ended``), which its snapshots still carry for a while."""
        query = "SELECT path, dot, e, gone FROM attic"
        rows = (self.db.execute(query + " WHERE path = ? ORDER BY gone", (path,))
                if path is not None else self.db.execute(query + " ORDER BY path, gone"))
        for p, d, e, g in rows:
            entry = json.loads(e)
            # a removed member's late version was there for the re-encryption, which ended
            # it on purpose: hidden at once, whenever it joined the history
            if not self._ended(entry, None if late_dot(d, self.cuts) else int(g)):
                yield p, d, entry, int(g)

    def attic_payload(self) -> dict[str, dict[str, dict[str, Any]]]:
        return dict(self.attic_rows())

    def attic_rows(self, named: set[str] | None = None
                   ) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
        """The history as a snapshot carries it, one path at a time, in path order; the dots
        its rows name as removers are added to ``named``."""
        path: str | None = None
        rows: dict[str, dict[str, Any]] = {}
        for p, d, e, g, rb in self.db.execute(
                "SELECT path, dot, e, gone, rb FROM attic ORDER BY path, gone"):
            if p != path:
                if path is not None:
                    yield path, rows
                path, rows = p, {}
            row: dict[str, Any] = {"e": json.loads(e), "g": int(g)}
            if rb:
                row["rb"] = sorted(removers(rb))
                if named is not None:
                    named.update(row["rb"])
            rows[d] = row
        if path is not None:
            yield path, rows

    def prune_attic(self, before: int, cutoffs: dict[str, int] | None = None,
                    ended: frozenset[str] = frozenset()) -> int:
        """Forget versions replaced before ``before``, and the places blobs were moved from
        before then; their objects become garbage. Versions with a dot past its writer's
        ``cutoffs`` stay, and so do versions carrying such a dot's content (``cs``, review round
        13, BB1): a clamp is never a deletion (format.md, "Writer rules"), unless
        they are wrapped under an ``ended`` generation (a re-encryption that this device saw
        ``keep_days`` ago ended them). Nothing goes before it is ``keep_days`` old: a version
        replaced after the re-encryption under an older key is hidden, not lost at once
        (review round 7, V2 (a))."""
        cuts = cutoffs or {}
        with self.transaction():
            self.forget_moves(before)
            doomed = [(p, d, own) for p, d, e, own in self.db.execute(
                "SELECT path, dot, e, own FROM attic WHERE gone < ?", (before,)).fetchall()
                if not (late_dot(d, cuts) or '"cs"' in e and poisoned(json.loads(e), cuts))
                or _generation(e) in ended]  # late content is kept, under any dot (BB1)
            self.db.executemany("DELETE FROM attic WHERE path = ? AND dot = ?",
                                [(p, d) for p, d, _own in doomed])
            self.raises.forgot(d for _p, d, own in doomed if own)
            self.carriers.keep_only({d for (rb,) in self.db.execute(
                "SELECT rb FROM attic WHERE rb IS NOT NULL") for d in removers(rb)})
            return len(doomed)

    def forget_moves(self, before: int | None = None, objects: Iterable[str] | None = None
                     ) -> None:
        """Drop the previous locations of moves made before ``before``, or away from
        ``objects`` (neither: of every move)."""
        strip = "e = json_remove(e, '$.pl', '$.rd', '$.rt'), po = NULL, pa = NULL, pn = NULL"
        where = "po IS NOT NULL"
        args: list[Any] = []
        if before is not None:
            where += " AND json_extract(e, '$.rt') < ?"
            args.append(before)
        if objects is not None:
            ids = sorted(set(objects))
            if not ids:
                return
            where += f" AND po IN ({', '.join('?' * len(ids))})"
            args += ids
        with self.transaction():
            for table in ("entries", "attic"):
                self.db.execute(f"UPDATE {table} SET {strip} WHERE {where}", args)

    def _kept(self, path: str, dot: str) -> list[tuple[str, str, Entry, int]]:
        return [(path, dot, json.loads(e), int(g)) for e, g in self.db.execute(
            "SELECT e, gone FROM attic WHERE path = ? AND dot = ?", (path, dot))]
