"""The merged manifest state: entries by path and dot, the version vector, the
history attic; observed-remove merges and delta application, in SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import IntegrityError
from ..state import create_db_file
from .attic import History, _dump, _generation
from .carriers import Carriers, tainted
from .entry import Entry, Op
from .moves import (
    _was,
    _where,
    carried,
    late_dot,
    moved,
    newer_location,
)
from .paths import Paths
from .raises import Raises, in_stretch
from .resolutions import poisoned
from .signing import SIG_FIELD, content

Siblings = dict[str, Entry]
Vouch = Callable[[str, str, Entry], None]


def dot_of(device: str, seq: int) -> str:
    return f"{device}:{seq}"


def covered(dot: str, ctx: dict[str, int]) -> bool:
    device, _, seq = dot.partition(":")
    return int(seq) <= ctx.get(device, 0)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
    o TEXT, a INTEGER, n INTEGER, PRIMARY KEY (path, dot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ctx (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, ctx TEXT);
CREATE TABLE IF NOT EXISTS attic (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
    o TEXT, a INTEGER, n INTEGER, gone INTEGER NOT NULL, PRIMARY KEY (path, dot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS late_read (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""


# Objects that hold a blob someone may still read: current versions, the version history,
# and the place a blob was moved from (a move by a member whose removal turns out to come
# before it is undone, format.md "Moves").
_HELD = "SELECT o, a, n FROM entries WHERE o IS NOT NULL UNION ALL " \
        "SELECT o, a, n FROM attic WHERE o IS NOT NULL UNION ALL " \
        "SELECT po, pa, pn FROM entries WHERE po IS NOT NULL UNION ALL " \
        "SELECT po, pa, pn FROM attic WHERE po IS NOT NULL"

# the previous location of a moved blob, in columns (added to a state made before them)
_MOVE_COLUMNS = (("po", "TEXT"), ("pa", "INTEGER"), ("pn", "INTEGER"))
# who removed a kept version: the dot of the delta whose rm sent it to the history (none
# when an observed-remove merge did, or when two removals disagree)
# own: 1 when the version left this device's live state (its time is this device's clock):
# only such a version, once forgotten, raises the forget floor (raises.py; round 10, Y2)
_ATTIC_COLUMNS = (("rb", "TEXT"), ("own", "INTEGER"), ("rw", "TEXT"))
_MOVE_INDEXES = """
CREATE INDEX IF NOT EXISTS entries_po ON entries (po) WHERE po IS NOT NULL;
CREATE INDEX IF NOT EXISTS attic_po ON attic (po) WHERE po IS NOT NULL;
"""


class State(History):
    """The merged manifest, kept in SQLite so a push never has to hold or rebuild all of it.

    With a path, the state persists between runs together with the list of segments it was
    built from (``segments``), so each run applies only segments it has not seen yet
    (:func:`load`). Without one it lives in memory (tests, ``verify``'s fresh rebuild).
    Every change happens inside :meth:`transaction`; a failure rolls the state back to what
    it was, so it always equals the merge of exactly the segments it records.
    """

    def __init__(self, path: Path | None = None) -> None:
        try:
            self.db = self._connect(path)
        except sqlite3.DatabaseError:
            if path is None:
                raise
            # only a cache of what the remote holds: a damaged one is rebuilt from the remote
            for stale in (path, path.with_name(path.name + "-wal"),
                          path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            self.db = self._connect(path)
        self._depth = 0
        # checks the signature of every entry that enters from a segment (loading sets it;
        # a device's own pushes and rewraps need none)
        self.vouch: Vouch | None = None
        # of two copies at one place whose DEKs differ, the one whose DEK opens the blob
        # (sync.true_key; the session sets it; None: unchecked)
        self.keycheck: Callable[[Entry, Entry], Entry | None] | None = None
        # of two copies at one place that name two blobs, the one whose blob decrypts to its
        # signed ``h`` (sync.blob_matches; the session sets it; None: the one held stays)
        self.placecheck: Callable[[Entry], bool] | None = None
        # the head's KEK commitment: of two good wraps of one DEK, the one under it is kept
        self.head_g: str | None = None
        self.ctx: dict[str, int] = {}
        # generations whose history a re-encryption ended: hidden at once, forgotten after
        # keep_days (the session sets them from the verified chain; review round 6, U2)
        self.ended: frozenset[str] = frozenset()
        # when this device first saw each of those ended: a version that joined the history
        # later stays listed (attic.History.attic; review round 7, V2 (a))
        self.ended_since: dict[str, int] = {}
        self._read_ctx()
        self.paths = Paths(self)
        self.carriers = Carriers(self.db)
        self.raises = Raises(self.db)
        # removed members' cutoffs as the last load saw them (raises.py: suspect stretches)
        self.cuts: dict[str, int] = {}
        # device -> the seen seq the last load fell short of under an ended key (step 4)
        self.short: dict[str, int] = {}
        # (path, late dot, honest dot, the honest delta's deps): a delta removed a late version
        # this state never held (its delta was refused here); unseen.py looks at what that
        # late version replaced
        self.unseen: list[tuple[str, str, str, Mapping[str, int]]] = []

    @staticmethod
    def _connect(path: Path | None) -> sqlite3.Connection:
        if path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            create_db_file(path)  # never a descriptor of an open database (state.py)
            db = sqlite3.connect(path, isolation_level=None)
        try:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            for table in ("entries", "attic"):
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                more = _ATTIC_COLUMNS if table == "attic" else ()
                for column, kind in (*_MOVE_COLUMNS, *more):
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.executescript(_MOVE_INDEXES)
            db.execute("SELECT COUNT(*) FROM entries").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def _read_ctx(self) -> None:
        self.ctx = {d: int(s) for d, s in self.db.execute("SELECT device, seq FROM ctx")}

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Nested calls join the outer transaction; only the outermost commits."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self.raises.changed()  # another process may have written since
        self._depth = 1
        try:
            yield
            self.db.execute("DELETE FROM ctx")
            self.db.executemany("INSERT INTO ctx VALUES (?, ?)", list(self.ctx.items()))
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            self._read_ctx()
            self.raises.changed()
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # --- reading ----------------------------------------------------------------------------

    def siblings(self, path: str) -> Siblings:
        return {dot: json.loads(e) for dot, e in
                self.db.execute("SELECT dot, e FROM entries WHERE path = ?", (path,))}

    def has_path(self, path: str) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE path = ? LIMIT 1",
                               (path,)).fetchone() is not None

    def items(self) -> Iterator[tuple[str, Siblings]]:
        """Every path with its siblings, in path order, from one query."""
        path: str | None = None
        sibs: Siblings = {}
        for p, dot, e in self.db.execute("SELECT path, dot, e FROM entries ORDER BY path"):
            if p != path:
                if path is not None:
                    yield path, sibs
                path, sibs = p, {}
            sibs[dot] = json.loads(e)
        if path is not None:
            yield path, sibs

    def subtree(self, path: str) -> Iterator[tuple[str, Siblings]]:
        """``path`` and every path under it, with their siblings (a key range, not a scan)."""
        got: dict[str, Siblings] = {}
        for p, dot, e in self.db.execute(
                "SELECT path, dot, e FROM entries WHERE path = ? OR (path >= ? AND path < ?)",
                (path, path + "/", path + "0")):  # '0' follows '/'
            got.setdefault(p, {})[dot] = json.loads(e)
        return iter(sorted(got.items()))

    def dots(self) -> Iterator[tuple[str, str]]:
        """(path, dot) of every entry, without parsing any entry."""
        return iter(self.db.execute("SELECT path, dot FROM entries"))

    def entry(self, path: str, dot: str) -> Entry | None:
        row = self.db.execute("SELECT e FROM entries WHERE path = ? AND dot = ?",
                              (path, dot)).fetchone()
        return json.loads(row[0]) if row else None

    def version(self, path: str, dot: str) -> Entry | None:
        """One version, current or kept in the history."""
        found = self.entry(path, dot)
        if found is None:
            found = next((e for _p, _d, e, _g in self._kept(path, dot)), None)
        return found

    def count_files(self) -> int:
        return int(self.db.execute(
            "SELECT COUNT(DISTINCT path) FROM entries WHERE o IS NOT NULL").fetchone()[0])

    def conflicted(self) -> list[str]:
        """Paths with more than one version (concurrent writes), in path order."""
        return [r[0] for r in self.db.execute(
            "SELECT path FROM entries GROUP BY path HAVING COUNT(*) > 1 ORDER BY path")]

    def live_objects(self) -> set[str]:
        """Objects garbage collection keeps: current versions and the version history."""
        return {r[0] for r in self.db.execute(f"SELECT DISTINCT o FROM ({_HELD})")}

    def unended_objects(self) -> set[str]:
        """What a re-encryption keeps: the objects of current versions and of the history it
        did not end. Its deletions are not held (format.md "Version history")."""
        out = {r[0] for r in self.db.execute(
            "SELECT o FROM entries WHERE o IS NOT NULL UNION SELECT po FROM entries "
            "WHERE po IS NOT NULL")}
        for e, o, po in self.db.execute("SELECT e, o, po FROM attic"):
            if _generation(e) not in self.ended:
                out |= {o, po} - {None}
        return out

    def usage(self) -> dict[str, tuple[int, int]]:
        """Object id -> (live blob bytes, lowest offset): what repacking decides on."""
        return {o: (int(n), int(a)) for o, n, a in self.db.execute(
            f"SELECT o, SUM(n), MIN(a) FROM ({_HELD}) GROUP BY o")}

    def in_objects(self, objects: Iterable[str]) -> list[tuple[str, str, Entry]]:
        """(path, dot, entry) of every blob stored in one of ``objects``, history included
        (a repack that left a history blob behind would lose it)."""
        out: list[tuple[str, str, Entry]] = []
        for o in sorted(set(objects)):
            for table in ("entries", "attic"):
                out += [(p, d, json.loads(e)) for p, d, e in self.db.execute(
                    f"SELECT path, dot, e FROM {table} WHERE o = ? ORDER BY path, dot", (o,))]
        return out

    def dominates(self, ctx: dict[str, int]) -> bool:
        return all(self.ctx.get(d, 0) >= s for d, s in ctx.items())

    def honest(self) -> dict[str, int]:
        """The vector this device's snapshots claim: no stretch a late word lifted."""
        return self.raises.honest(self.ctx, self.cuts)

    def seen(self) -> dict[str, int]:
        """The vector this device stores as seen (format.md, "Reading the manifest" 4): a
        shortfall excused as under an ended key keeps what was seen (``short``)."""
        out = self.raises.seen(self.honest(), self.ctx, self.cuts)
        return {**out, **{d: max(s, out.get(d, 0)) for d, s in self.short.items()}}

    # --- writing ----------------------------------------------------------------------------

    def _check(self, path: str, dot: str, entry: Entry) -> None:
        if self.vouch is not None:
            self.vouch(path, dot, entry)

    def _same_version(self, path: str, dot: str, had: Entry, entry: Entry) -> None:
        """One dot, one content (format.md, "Entry signatures"): a copy that differs from
        the one held is checked, and a correctly signed different content is a fork."""
        if had.get(SIG_FIELD) == entry.get(SIG_FIELD) and content(had) == content(entry):
            return
        self._check(path, dot, entry)
        if content(had) != content(entry):
            raise IntegrityError(f"fork: two versions of manifest entry {dot} at one path, "
                                 "both signed by its writer")

    def put_entry(self, path: str, dot: str, entry: Entry) -> None:
        """Store ``entry`` under an existing or new dot (rotation rewrites entries in place)."""
        self.db.execute("INSERT OR REPLACE INTO entries (path, dot, e, o, a, n, po, pa, pn) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (path, dot, _dump(entry), *_where(entry), *_was(entry)))

    def _drop(self, path: str, dot: str) -> None:
        self.db.execute("DELETE FROM entries WHERE path = ? AND dot = ?", (path, dot))

    def apply_delta(self, device: str, seq: int, ops: list[Op],
                    deps: Mapping[str, int] | None = None) -> None:
        """The versions a delta replaces join the history as of this device's clock: a time
        the delta states could send them straight past ``keep_days`` (review round 3, R7).
        ``deps``, the delta's own, bound what a late version it removed may have replaced
        (unseen.py)."""
        dot = dot_of(device, seq)
        at = int(time.time())  # ours: a writer's clock could end the undo or the history
        # read again because a late word had lifted the vector over it (raises.py): a
        # version this device holds as removed stays removed
        again = seq <= self.ctx.get(device, 0)
        with self.transaction():
            for op in ops:
                path = op["p"]
                if not isinstance(path, str):
                    raise IntegrityError("manifest op is malformed")
                entry = op.get("e")
                if isinstance(entry, dict) and poisoned(entry, self.cuts):
                    self._check(path, dot, entry)  # it resolved a conflict with a late write:
                    self.to_attic(path, dot, entry, at)  # kept, and what it removed stays (AA2)
                    continue
                reloc = op.get("reloc") or {}
                rm = op.get("rm", [])
                sibs = self.siblings(path) if reloc or rm else {}
                for target, loc in reloc.items():
                    if target in sibs:
                        now = newer_location(sibs[target], moved(sibs[target], loc, dot, at))
                        if now is not sibs[target]:
                            sibs[target] = now
                            self.put_entry(path, target, now)
                    else:
                        for _p, _d, kept, gone in self._kept(path, target):
                            self.to_attic(path, target, moved(kept, loc, dot, at), gone)
                for old in rm:  # its writer's own word that it removed ``old`` (``rw``)
                    if old in sibs:
                        self.to_attic(path, old, sibs.pop(old), at, dot, own=True, rw=dot)
                        self._drop(path, old)
                    else:
                        self.witness(path, old, dot)
                        if late_dot(old, self.cuts):
                            self.unseen.append((path, old, dot, deps or {}))
                if entry is not None:
                    if not isinstance(entry, dict):
                        raise IntegrityError(f"manifest entry for {path!r} is malformed")
                    self._check(path, dot, entry)
                    if not (again and self._kept_here(path, dot)):
                        self.put_entry(path, dot, entry)
            self.ctx[device] = max(self.ctx.get(device, 0), seq)
            self.raises.word(device, seq)

    def merge(self, other: State) -> None:
        self.merge_snapshot(other.ctx, other.items(), other.attic_payload(),
                            carriers=other.carriers.everything())

    def merge_snapshot(self, ctx: dict[str, int], paths: Iterable[tuple[str, Siblings]],
                       attic: dict[str, dict[str, dict[str, Any]]] | None = None,
                       when: int = 0, by: str | None = None,
                       carriers: dict[str, dict[str, int]] | None = None,
                       raw: dict[str, int] | None = None) -> None:
        """Observed-remove merge: a dot one side lacks but has seen was deleted there (and
        joins the history as of now: this device's clock, never a time a segment states).
        Histories are unions of versions; their times are no later than ``when``, the
        snapshot's time.

        Who removed a version is what this device saw (review round 7, V4): for a version it
        drops or takes in from the history, ``by`` (the snapshot's own dot) and the removers
        that snapshot's history names for it; a version it already holds, live or kept, takes
        no remover from a snapshot,
        and one it has forgotten (its vector covers it) is not taken in again. If ``by``'s
        writer turns out to be a removed member past its cutoff, what it dropped and moved is
        undone (format.md, "Writer rules"). ``carriers``: the vectors of the carriers the
        history names (the snapshot's ``rc``); ``by`` is one too, with ``ctx``.

        ``raw``: the snapshot's vector as written, before a clamp (raises.py). One that
        covers a late write may carry a late snapshot's word: what it omits is dropped only
        where its history (clamped: what a late write removed came back) holds the version
        (review round 8, W2 (c)), and a version in a stretch a late word lifted is taken when
        it arrives.
        """
        now = int(time.time())
        kept = attic or {}
        with self.transaction():
            seen = dict(self.ctx)
            self.carriers.note({**(carriers or {}), **({by: ctx} if by else {})})
            empty = not self.ctx and not self.has_any()
            suspect = self.raises.suspect(self.cuts)
            take = self.raises.takeable(self.cuts)  # rule 4 before this snapshot clears any
            held_out: dict[str, int] = {}  # live there, kept out here (floor, held removed)
            hearsay = raw is not None and tainted(raw, self.cuts)

            def drop(path: str, dot: str, entry: Entry) -> None:
                if hearsay and dot not in kept.get(path, {}):
                    return  # only its vector says so (review round 8, W2 (c))
                named = (kept.get(path, {}).get(dot) or {}).get("rb") or []
                rb = {*named, *([by] if by else [])}
                self.to_attic(path, dot, entry, now, " ".join(sorted(rb)) or None, own=True)
                self._drop(path, dot)

            theirs_paths: set[str] = set()
            for path, theirs in paths:
                theirs_paths.add(path)
                mine = {} if empty else self.siblings(path)
                for dot in mine:
                    if dot not in theirs and covered(dot, ctx):
                        drop(path, dot, mine[dot])
                for dot, entry in theirs.items():
                    if dot in mine:
                        self._same_version(path, dot, mine[dot], entry)
                        if self.fresher(mine[dot], entry) is not mine[dot]:
                            self.put_entry(path, dot, carried(mine[dot], entry, by, now)
                                           if by else entry)
                    elif not covered(dot, self.ctx) or (
                            in_stretch(dot, take) and not self._kept_here(path, dot)):
                        self._check(path, dot, entry)
                        self.put_entry(path, dot, entry)
                    elif in_stretch(dot, suspect):  # kept out here: under the floor, or
                        dev, _, at = dot.partition(":")  # held as removed (round 11, Z1)
                        held_out[dev] = min(held_out.get(dev, int(at)), int(at))
            if not empty:
                for path, dot, e in self.db.execute(
                        "SELECT path, dot, e FROM entries").fetchall():
                    if path not in theirs_paths and covered(dot, ctx):
                        drop(path, dot, json.loads(e))
            writer = (by or "").partition(":")[0]
            for path, rows in kept.items():  # the writer's own removals, whatever its vector
                for dot, row in rows.items():  # leaves out (raises.honest; round 9, X3)
                    if writer and not covered(dot, ctx) and any(
                            r.partition(":")[0] == writer and covered(r, ctx)
                            for r in row.get("rb") or ()) and (
                            live := self.entry(path, dot)) is not None:
                        drop(path, dot, live)
            for path, rows in kept.items():
                for dot, row in rows.items():
                    if self.entry(path, dot) is not None:
                        continue  # live here: its own record decides
                    held = self.db.execute("SELECT 1 FROM attic WHERE path = ? AND dot = ?",
                                           (path, dot)).fetchone() is not None
                    if not held and covered(dot, seen) and not in_stretch(dot, take):
                        continue  # forgotten here (review round 7, V4)
                    # taken in: the removers it names, and this snapshot as its carrier (a
                    # late snapshot must not hand over a delete as honest; round 8, W2)
                    taken = {*(row.get("rb") or ()), *([by] if by else [])}
                    self.to_attic(path, dot, row["e"], min(int(row["g"]), when or now),
                                  None if held else " ".join(sorted(taken)) or None,
                                  checked=False)
            before = dict(self.ctx)
            for device, seq in ctx.items():
                self.ctx[device] = max(self.ctx.get(device, 0), seq)
            if by:
                self.raises.note(by, raw if raw is not None else ctx, before, self.ctx)
                writer, _, own = by.partition(":")  # its word about its own writes is its own
                self.raises.word(writer, int(own))
                self.raises.vouched(ctx if not hearsay else {writer: ctx.get(writer, 0)},
                                    self.cuts, held_out)

    def has_any(self) -> bool:
        return self.db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None

    # --- the segments this state was built from -----------------------------------------------

    def consumed(self) -> dict[str, tuple[int, str, dict[str, int] | None]]:
        return {n: (int(size), sha, json.loads(c) if c else None) for n, size, sha, c in
                self.db.execute("SELECT name, size, sha256, ctx FROM segments")}

    def mark_consumed(self, name: str, size: int, sha256: str,
                      ctx: dict[str, int] | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?)",
                        (name, size, sha256, json.dumps(ctx) if ctx is not None else None))

    def forget_consumed(self, names: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM segments WHERE name = ?", [(n,) for n in names])

    def reset(self) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM entries")
            self.db.execute("DELETE FROM segments")
            self.db.execute("DELETE FROM attic")
            self.db.execute("DELETE FROM late_read")  # refused.py reads them again
            self.db.execute("DELETE FROM carriers")
            self.raises.clear()
            self.db.execute("DELETE FROM meta")
            self.ctx = {}
