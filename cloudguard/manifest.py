"""The encrypted manifest: an append-only log of segments per device, merged as a CRDT.

Why this shape (docs/design.md, "Manifest"):

* Every push writes one small *delta* segment ``m/<device>-<seq>.d``; nothing mutable is ever
  overwritten, so two devices pushing at once cannot erase each other.
* Each entry carries a *dot* ``device:seq`` naming the push that wrote it; each state carries a
  version vector ``ctx``. A delta removes only the dots its writer had seen, so concurrent edits
  of one path both survive as siblings (and become a conflict copy), never a lost update.
* A *snapshot* ``m/<device>-<seq>.s`` holds the whole state with its ``ctx``; segments it
  covers are deleted. Two snapshots merge losslessly (observed-remove map merge), so compaction
  races are safe.
* Each device remembers the highest ``ctx`` it has seen; a remote whose ``ctx`` is lower was
  rolled back, and a gap in a device's sequence is a deleted segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .chain import Skip
from .errors import REPUBLISH_HINT, HistoryError, IntegrityError
from .keys import now_iso
from .state import write_private

PREFIX = "m/"
_NAME = re.compile(r"^m/([0-9a-f]{16})-([0-9]{12})\.([ds])$")

Entry = dict[str, Any]
Siblings = dict[str, Entry]


def segment_name(device: str, seq: int, kind: str) -> str:
    return f"{PREFIX}{device}-{seq:012d}.{kind}"


def parse_name(name: str) -> tuple[str, int, str] | None:
    match = _NAME.match(name)
    if not match:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


def dot_of(device: str, seq: int) -> str:
    return f"{device}:{seq}"


def covered(dot: str, ctx: dict[str, int]) -> bool:
    device, _, seq = dot.partition(":")
    return int(seq) <= ctx.get(device, 0)


def newer_location(one: Entry, two: Entry) -> Entry:
    """A repack moves a blob without a new dot; the move with the higher ``r`` wins.

    A max-register, so the result is the same in any order and on every device. Ties (two
    devices repacking at once) go to the higher object id; the loser becomes garbage.
    """
    return max(one, two, key=lambda e: (int(e.get("r", 0)), str(e.get("o", "")),
                                        json.dumps(e, sort_keys=True)))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
    o TEXT, a INTEGER, n INTEGER, PRIMARY KEY (path, dot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ctx (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, ctx TEXT);
CREATE TABLE IF NOT EXISTS attic (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
    o TEXT, a INTEGER, n INTEGER, gone INTEGER NOT NULL, PRIMARY KEY (path, dot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""

# Objects that hold a blob someone may still read: current versions and the version history.
_HELD = "SELECT o, a, n FROM entries WHERE o IS NOT NULL UNION ALL " \
        "SELECT o, a, n FROM attic WHERE o IS NOT NULL"


def _dump(entry: Entry) -> str:
    return json.dumps(entry, separators=(",", ":"))


class State:
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
        self.ctx: dict[str, int] = {}
        self._read_ctx()
        self.paths = _Paths(self)

    @staticmethod
    def _connect(path: Path | None) -> sqlite3.Connection:
        if path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm inherit it
            db = sqlite3.connect(path, isolation_level=None)
        try:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
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
        self._depth = 1
        try:
            yield
            self.db.execute("DELETE FROM ctx")
            self.db.executemany("INSERT INTO ctx VALUES (?, ?)", list(self.ctx.items()))
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            self._read_ctx()
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

    # --- version history ----------------------------------------------------------------------

    @property
    def floor(self) -> int:
        """History replaced before this time (unix seconds) is gone for good: re-encryption
        sets it, so no device brings back content under keys a removed member knew."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'floor'").fetchone()
        return int(row[0]) if row else 0

    def raise_floor(self, when: int) -> None:
        if when > self.floor:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('floor', ?)", (when,))
            self.db.execute("DELETE FROM attic WHERE gone <= ?", (when,))

    def to_attic(self, path: str, dot: str, entry: Entry, gone: int) -> None:
        """Keep a replaced or deleted version. The same version reached two ways (a delta and
        a snapshot) keeps the earliest time, so every device converges."""
        floor = self.floor
        if floor and gone <= floor:
            return
        row = self.db.execute("SELECT e, gone FROM attic WHERE path = ? AND dot = ?",
                              (path, dot)).fetchone()
        if row is not None:
            entry = newer_location(json.loads(row[0]), entry)
            gone = min(gone, int(row[1]))
        is_file = entry.get("t") == "f"
        self.db.execute("INSERT OR REPLACE INTO attic VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (path, dot, _dump(entry), entry.get("o") if is_file else None,
                         entry.get("a") if is_file else None,
                         entry.get("n") if is_file else None, gone))

    def attic(self, path: str | None = None) -> Iterator[tuple[str, str, Entry, int]]:
        """(path, dot, entry, replaced at) of kept versions, of one path or of all."""
        query = "SELECT path, dot, e, gone FROM attic"
        rows = (self.db.execute(query + " WHERE path = ? ORDER BY gone", (path,))
                if path is not None else self.db.execute(query + " ORDER BY path, gone"))
        for p, d, e, g in rows:
            yield p, d, json.loads(e), int(g)

    def attic_payload(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for p, d, e, g in self.attic():
            out.setdefault(p, {})[d] = {"e": e, "g": g}
        return out

    def prune_attic(self, before: int) -> int:
        """Forget versions replaced before ``before``; their objects become garbage."""
        with self.transaction():
            return self.db.execute("DELETE FROM attic WHERE gone < ?", (before,)).rowcount

    def dominates(self, ctx: dict[str, int]) -> bool:
        return all(self.ctx.get(d, 0) >= s for d, s in ctx.items())

    # --- writing ----------------------------------------------------------------------------

    def put_entry(self, path: str, dot: str, entry: Entry) -> None:
        """Store ``entry`` under an existing or new dot (rotation rewrites entries in place)."""
        is_file = entry.get("t") == "f"
        self.db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                        (path, dot, _dump(entry), entry.get("o") if is_file else None,
                         entry.get("a") if is_file else None,
                         entry.get("n") if is_file else None))

    def _drop(self, path: str, dot: str) -> None:
        self.db.execute("DELETE FROM entries WHERE path = ? AND dot = ?", (path, dot))

    def apply_delta(self, device: str, seq: int, ops: list[dict[str, Any]], when: int = 0
                    ) -> None:
        """``when`` (the delta's time) is when the versions it replaces left: history keeps
        them from then on for the keep period."""
        dot = dot_of(device, seq)
        with self.transaction():
            for op in ops:
                path = op["p"]
                if not isinstance(path, str):
                    raise IntegrityError("manifest op is malformed")
                reloc = op.get("reloc") or {}
                rm = op.get("rm", [])
                sibs = self.siblings(path) if reloc or rm else {}
                for moved, loc in reloc.items():
                    if moved in sibs:
                        now = newer_location(sibs[moved], {**sibs[moved], **loc})
                        if now is not sibs[moved]:
                            sibs[moved] = now
                            self.put_entry(path, moved, now)
                    else:
                        for _p, _d, kept, gone in self._kept(path, moved):
                            self.to_attic(path, moved, {**kept, **loc}, gone)
                for old in rm:
                    if old in sibs:
                        self.to_attic(path, old, sibs.pop(old), when)
                        self._drop(path, old)
                entry = op.get("e")
                if entry is not None:
                    if not isinstance(entry, dict):
                        raise IntegrityError(f"manifest entry for {path!r} is malformed")
                    self.put_entry(path, dot, entry)
            self.ctx[device] = max(self.ctx.get(device, 0), seq)

    def _kept(self, path: str, dot: str) -> list[tuple[str, str, Entry, int]]:
        return [(path, dot, json.loads(e), int(g)) for e, g in self.db.execute(
            "SELECT e, gone FROM attic WHERE path = ? AND dot = ?", (path, dot))]

    def merge(self, other: State) -> None:
        self.merge_snapshot(other.ctx, other.items(), other.attic_payload(), other.floor)

    def merge_snapshot(self, ctx: dict[str, int], paths: Iterable[tuple[str, Siblings]],
                       attic: dict[str, dict[str, dict[str, Any]]] | None = None,
                       floor: int = 0, when: int = 0) -> None:
        """Observed-remove merge: a dot one side lacks but has seen was deleted there (and
        joins the history as of ``when``, the snapshot's time). Histories are unions."""
        with self.transaction():
            self.raise_floor(floor)
            for path, kept in (attic or {}).items():
                for dot, row in kept.items():
                    self.to_attic(path, dot, row["e"], int(row["g"]))
            empty = not self.ctx and not self.has_any()
            theirs_paths: set[str] = set()
            for path, theirs in paths:
                theirs_paths.add(path)
                mine = {} if empty else self.siblings(path)
                for dot in mine:
                    if dot not in theirs and covered(dot, ctx):
                        self.to_attic(path, dot, mine[dot], when)
                        self._drop(path, dot)
                for dot, entry in theirs.items():
                    if dot in mine:
                        if newer_location(mine[dot], entry) is not mine[dot]:
                            self.put_entry(path, dot, entry)
                    elif not covered(dot, self.ctx):
                        self.put_entry(path, dot, entry)
            if not empty:
                for path, dot, e in self.db.execute(
                        "SELECT path, dot, e FROM entries").fetchall():
                    if path not in theirs_paths and covered(dot, ctx):
                        self.to_attic(path, dot, json.loads(e), when)
                        self._drop(path, dot)
            for device, seq in ctx.items():
                self.ctx[device] = max(self.ctx.get(device, 0), seq)

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
            self.db.execute("DELETE FROM meta")
            self.ctx = {}


class _Paths:
    """Read-only, dict-like view of path -> siblings over the database."""

    def __init__(self, state: State) -> None:
        self._state = state

    def __getitem__(self, path: str) -> Siblings:
        sibs = self._state.siblings(path)
        if not sibs:
            raise KeyError(path)
        return sibs

    def get(self, path: str, default: Siblings | None = None) -> Siblings | None:
        return self._state.siblings(path) or default

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._state.has_path(path)

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._state.db.execute(
            "SELECT DISTINCT path FROM entries ORDER BY path")])

    def __len__(self) -> int:
        return int(self._state.db.execute(
            "SELECT COUNT(DISTINCT path) FROM entries").fetchone()[0])

    def items(self) -> Iterator[tuple[str, Siblings]]:
        return self._state.items()

    def values(self) -> Iterator[Siblings]:
        return (sibs for _p, sibs in self._state.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Paths):
            return dict(self.items()) == dict(other.items())
        if isinstance(other, dict):
            return dict(self.items()) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Loaded:
    state: State
    names: dict[str, int]  # segment name -> size
    own_seq: int  # highest seq this device has used on the remote
    deltas: int  # how many delta segments are stored (compaction trigger)
    heads: dict[str, str]  # device -> sha256 of its newest segment (for the prev chain)


class SegmentCache:
    """Ciphertext of segments we already fetched; names are immutable, so caching is safe."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name.replace("/", "_")

    def has(self, name: str, size: int) -> bool:
        try:
            return self.path(name).stat().st_size == size
        except OSError:
            return False

    def get(self, name: str, size: int) -> bytes | None:
        path = self.path(name)
        try:
            if path.stat().st_size == size:
                return path.read_bytes()
        except OSError:
            return None
        return None

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path(name), data)

    def prune(self, keep: Iterable[str]) -> None:
        wanted = {self.path(n).name for n in keep}
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name not in wanted:
                    child.unlink(missing_ok=True)


Opener = Callable[[str, str, int, bytes], dict[str, Any]]


def load(listing: dict[str, int], fetch: Callable[[str], bytes], opener: Opener,
         device: str, seen: dict[str, int], cache: SegmentCache,
         state: State | None = None, cutoffs: dict[str, tuple[int, str | None]] | None = None,
         skipped: list[str] | None = None) -> Loaded:
    """Bring ``state`` up to the segments listed on the remote and check for rollback.

    A persistent ``state`` already holds the merge of the segments it recorded; only new ones
    are opened and applied. If a recorded segment vanished without a listed snapshot covering
    it, or changed size, the state is rebuilt from every segment, which then reports the gap
    or rollback as a full load would. Any failure leaves ``state`` as it was.

    ``opener`` checks a segment's writer and signature and decrypts it (chain.accept_segment);
    a segment it skips (deferred, or by a removed member past its ``cutoffs``) is treated as
    not listed, and its reason goes to ``skipped``. A removed member's segments count only on
    the ``prev`` chain that ends at the hash its removal recorded, and its writes past the
    cutoff are left out of every snapshot, dependency and stored vector (format.md, "Writer
    rules"). A state that holds such writes already is rebuilt.
    """
    state = state if state is not None else State()
    cuts = cutoffs or {}
    limit = {dev: seq for dev, (seq, _h) in cuts.items()}
    seen = _clamp(seen, limit)
    skip_log = skipped if skipped is not None else []
    held: set[str] = set()
    parsed: dict[str, tuple[str, int, str]] = {}
    for name in listing:
        got = parse_name(name)
        if got is not None:
            parsed[name] = got
    heads_hash: dict[str, str] = {}

    pinned: dict[str, set[str]] = {}
    pinning = False

    def open_named(name: str) -> dict[str, Any]:
        data = cache.get(name, listing[name])
        fresh = data is None
        if data is None:
            data = fetch(name)
        dev, seq, kind = parsed[name]
        if dev in cuts and name not in pinned.get(dev, set()) and not pinning:
            raise Skip(f"manifest segment {name} of removed member {dev} is not on the chain "
                       "its removal recorded; refused")
        payload = opener(name, dev, seq, data)
        if (payload.get("device"), payload.get("seq"), payload.get("kind")) != (
                dev, seq, {"d": "delta", "s": "snapshot"}[kind]):
            raise IntegrityError(f"manifest segment {name} does not match its name")
        _check_segment(name, payload)
        if fresh:
            cache.put(name, data)
        heads_hash[name] = hashlib.sha256(data).hexdigest()
        return payload

    pinning = True
    for dev, (seq, digest) in sorted(cuts.items()):
        pinned[dev] = _pinned(dev, seq, digest, parsed, open_named, heads_hash)
    pinning = False
    with state.transaction():
        consumed = state.consumed()
        if any(state.ctx.get(dev, 0) > seq for dev, seq in limit.items()):
            consumed = {}
            state.reset()  # it applied a removed member's late writes: rebuild without them
        snaps: dict[str, dict[str, Any]] = {}
        for name, (_dev, _seq, kind) in sorted(parsed.items()):
            if kind == "s" and name not in consumed:
                _open_or_skip(name, open_named, snaps, held, skip_log)
        if not _still_valid(consumed, parsed, listing, snaps, device):
            state.reset()
            consumed = {}
            for name, (_dev, _seq, kind) in sorted(parsed.items()):
                if kind == "s" and name not in snaps and name not in held:
                    _open_or_skip(name, open_named, snaps, held, skip_log)
        for name, (_size, sha, _c) in consumed.items():
            if name in listing:
                heads_hash[name] = sha
        for name, payload in sorted(snaps.items()):
            ctx = _ctx(payload.get("ctx"))
            paths = _paths(payload.get("paths"))
            kept = _attic(payload.get("attic"))
            if _late(ctx, limit):
                skip_log.append(f"manifest segment {name} holds writes of a removed member "
                                "past its removal; they are left out")
                ctx = _clamp(ctx, limit)
                paths = {p: {d: e for d, e in sibs.items() if not _late_dot(d, limit)}
                         for p, sibs in paths.items()}
                kept = {p: {d: r for d, r in rows.items() if not _late_dot(d, limit)}
                        for p, rows in kept.items()}
            if not state.dominates(ctx):
                state.merge_snapshot(ctx, paths.items(), kept, _floor(payload),
                                     time_of(payload))
            elif kept or _floor(payload) > state.floor:
                state.merge_snapshot({}, (), kept, _floor(payload))  # history only
            state.mark_consumed(name, listing[name], heads_hash[name], ctx)

        pending: dict[str, dict[int, str]] = {}
        for name, (dev, seq, kind) in parsed.items():
            if kind == "d" and seq > state.ctx.get(dev, 0) and name not in consumed:
                if dev in limit and seq > limit[dev]:
                    skip_log.append(f"manifest segment {name} was written by removed member "
                                    f"{dev} after its removal; refused")
                    continue
                pending.setdefault(dev, {})[seq] = name
        progress = True
        while progress:
            progress = False
            for dev in sorted(pending):
                nxt = state.ctx.get(dev, 0) + 1
                found = pending[dev].get(nxt)
                if found is None:
                    continue
                try:
                    payload = open_named(found)
                except Skip as exc:
                    skip_log.append(str(exc))
                    pending[dev] = {}
                    continue
                for kind in ("d", "s"):  # the writer's own previous segment, if we opened it
                    before = heads_hash.get(segment_name(dev, nxt - 1, kind))
                    if before is not None and payload.get("prev") not in (None, before):
                        raise HistoryError(f"manifest segment {found} does not follow "
                                           f"{segment_name(dev, nxt - 1, kind)}: a segment "
                                           "was replaced" + REPUBLISH_HINT)
                deps = _ctx(payload.get("deps"))
                _same_history(found, payload.get("dh"), deps, heads_hash)
                deps = _clamp(deps, limit)
                if not state.dominates({d: s for d, s in deps.items() if d != dev}):
                    continue
                state.apply_delta(dev, nxt, check_ops(payload.get("ops")), time_of(payload))
                state.mark_consumed(found, listing[found], heads_hash[found])
                del pending[dev][nxt]
                progress = True
        for dev, rest in pending.items():
            if rest and not any(dev == got[0] for h in held if (got := parse_name(h))):
                missing = segment_name(dev, state.ctx.get(dev, 0) + 1, "d")
                raise HistoryError(f"manifest segment {missing} is missing: the manifest "
                                   "was truncated or a segment was deleted" + REPUBLISH_HINT)
        for dev, seq in seen.items():
            if state.ctx.get(dev, 0) < seq:
                raise HistoryError(
                    f"the remote manifest is older than one this device has seen (device {dev} "
                    f"at {state.ctx.get(dev, 0)}, seen {seq}): rollback or deleted manifest"
                    + REPUBLISH_HINT)
        state.forget_consumed(n for n in consumed if n not in listing)
    own = max([seq for dev, seq, _k in parsed.values() if dev == device] + [0])
    deltas = sum(1 for _d, _s, k in parsed.values() if k == "d")
    newest: dict[str, tuple[int, str]] = {}
    for name, digest in heads_hash.items():
        dev, seq, _k = parsed[name]
        if seq > newest.get(dev, (-1, ""))[0]:
            newest[dev] = (seq, digest)
    cache.prune(parsed)
    return Loaded(state, dict(listing), own, deltas, {d: h for d, (_s, h) in newest.items()})


def _open_or_skip(name: str, open_named: Callable[[str], dict[str, Any]],
                  snaps: dict[str, dict[str, Any]], held: set[str], log: list[str]) -> None:
    try:
        snaps[name] = open_named(name)
    except Skip as exc:
        held.add(name)
        log.append(str(exc))


def _late(ctx: dict[str, int], limit: dict[str, int]) -> bool:
    return any(ctx.get(dev, 0) > seq for dev, seq in limit.items())


def _clamp(ctx: dict[str, int], limit: dict[str, int]) -> dict[str, int]:
    """A removed member's writes past its cutoff count as never seen: an honest device that
    applied them before it saw the removal must not launder them into everyone's state."""
    return {dev: min(seq, limit[dev]) if dev in limit else seq for dev, seq in ctx.items()}


def _late_dot(dot: str, limit: dict[str, int]) -> bool:
    dev, _, seq = dot.partition(":")
    return dev in limit and int(seq) > limit[dev]


def _pinned(dev: str, seq: int, digest: str | None, parsed: dict[str, tuple[str, int, str]],
            open_named: Callable[[str], dict[str, Any]], hashes: dict[str, str]) -> set[str]:
    """The removed member's segments its removal vouches for: the one with the recorded hash,
    then back along each one's ``prev``. Anything else of it is refused, so it cannot slip in
    a forged snapshot under a lower sequence number."""
    out: set[str] = set()
    expect = digest
    while expect is not None and seq > 0:
        names = [n for n in (segment_name(dev, seq, "d"), segment_name(dev, seq, "s"))
                 if n in parsed]
        match = None
        for name in names:
            try:
                payload = open_named(name)
            except Skip:
                continue
            if hashes.get(name) == expect:
                match = name
                break
        if match is None:
            break  # compacted away: an honest snapshot covers it
        out.add(match)
        prev = payload.get("prev")
        expect = prev if isinstance(prev, str) else None
        seq -= 1
    return out


def applied_hash(consumed: dict[str, tuple[int, str, dict[str, int] | None]], device: str,
                 seq: int) -> str | None:
    """The SHA-256 of segment ``device``:``seq`` (delta or snapshot) as this state applied
    it, if it did: what a delta's ``dh`` and a removal's cutoff name."""
    for kind in ("d", "s"):
        got = consumed.get(segment_name(device, seq, kind))
        if got is not None:
            return got[1]
    return None


def _same_history(name: str, raw: object, deps: dict[str, int], heads_hash: dict[str, str]
                  ) -> None:
    """Dependencies name segment hashes: if the writer saw another segment under a name we
    applied, the provider showed us two histories (a fork)."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise IntegrityError(f"manifest segment {name} has malformed dependencies")
    for dev, digest in raw.items():
        seq = deps.get(dev)
        if seq is None or not isinstance(digest, str):
            raise IntegrityError(f"manifest segment {name} has malformed dependencies")
        for kind in ("d", "s"):
            mine = heads_hash.get(segment_name(dev, seq, kind))
            if mine is not None and mine != digest:
                raise HistoryError(f"fork: manifest segment {name} depends on a "
                                   f"{segment_name(dev, seq, kind)} other than the one this "
                                   "device applied; the provider shows devices different "
                                   "histories" + REPUBLISH_HINT)


def _still_valid(consumed: dict[str, tuple[int, str, dict[str, int] | None]],
                 parsed: dict[str, tuple[str, int, str]], listing: dict[str, int],
                 snaps: dict[str, dict[str, Any]], device: str) -> bool:
    """Can the recorded state be reused? Only if every segment it was built from is either
    still listed, unchanged, or covered by a listed snapshot (compaction deleted it).

    A snapshot of our own that the state does not record means we were killed between
    uploading it and recording it; its entries may have been rewritten in place (rotation),
    which a merge would not prefer, so the state is rebuilt from the remote instead.
    """
    if any(parsed[name][0] == device for name in snaps):
        return False
    cover = [c for n, (_s, _h, c) in consumed.items() if c is not None and n in listing]
    cover += [_ctx(p.get("ctx")) for p in snaps.values()]
    for name, (size, _sha, _c) in consumed.items():
        if name in listing:
            if listing[name] != size:
                return False
            continue
        got = parse_name(name)
        if got is None or not any(c.get(got[0], 0) >= got[1] for c in cover):
            return False
    return True


def time_of(payload: dict[str, Any]) -> int:
    """A segment's time (unix seconds): when the versions it replaced joined the history."""
    try:
        return int(datetime.fromisoformat(str(payload.get("created"))).timestamp())
    except ValueError as exc:
        raise IntegrityError("manifest segment has a malformed time") from exc


def _floor(payload: dict[str, Any]) -> int:
    raw = payload.get("floor", 0)
    if type(raw) is not int or raw < 0:
        raise IntegrityError("manifest snapshot has a malformed history floor")
    return raw


def _attic(raw: object) -> dict[str, dict[str, dict[str, Any]]]:
    """A snapshot's version history: {path: {dot: {"e": entry, "g": replaced at}}}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise IntegrityError("manifest snapshot has a malformed history")
    for rows in raw.values():
        if not isinstance(rows, dict):
            raise IntegrityError("manifest snapshot has a malformed history")
        for dot, row in rows.items():
            if (not isinstance(dot, str) or not _DOT.match(dot) or not isinstance(row, dict)
                    or set(row) != {"e", "g"} or type(row["g"]) is not int or row["g"] < 0):
                raise IntegrityError("manifest snapshot has a malformed history")
            check_entry(row["e"])
    return raw


def _ctx(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise IntegrityError("manifest segment has no version vector")
    out: dict[str, int] = {}
    for k, v in raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise IntegrityError("manifest version vector is malformed")
        out[str(k)] = v
    return out


_DOT = re.compile(r"^[0-9a-f]{16}:[0-9]{1,12}$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{32}$")
_WRITER = re.compile(r"^[0-9a-f]{16}$")
_FIELD_TYPES: dict[str, type] = {
    "t": str, "s": int, "m": int, "x": int, "h": str, "o": str, "a": int, "n": int,
    "i": str, "k": str, "g": str, "w": str, "l": str, "r": int, "om": str, "pt": int,
    "lc": int, "wb": str,
}
_FILE_FIELDS = frozenset(("o", "a", "n", "i", "k", "g", "h"))
_UNSIGNED = frozenset(("s", "x", "a", "n", "r", "pt", "lc"))


def check_entry(entry: object) -> Entry:
    """Entries come from a keyholder, but a reader still refuses anything malformed.

    Runs once per entry per load (100,000 times in a big vault), hence the flat loop.
    """
    if type(entry) is not dict:
        raise IntegrityError("manifest entry is malformed")
    for key, value in entry.items():
        want = _FIELD_TYPES.get(key)
        if want is None or type(value) is not want or (
                key in _UNSIGNED and value < 0):  # type: ignore[operator]  # "m" may be < 0
            raise IntegrityError("manifest entry is malformed")
    writer = entry.get("wb")
    if writer is not None and not _WRITER.match(writer):
        raise IntegrityError("manifest entry is malformed")
    kind = entry.get("t")
    if kind == "f":
        if not _FILE_FIELDS <= entry.keys() or not _OBJECT_ID.match(entry["o"]):
            raise IntegrityError("manifest entry is malformed")
    elif kind not in ("d", "l"):
        raise IntegrityError("manifest entry is malformed")
    return entry


class _CheckedOps(list[dict[str, Any]]):
    """A delta's ops that :func:`_check_segment` validated already."""


class _CheckedPaths(dict[str, Siblings]):
    """A snapshot's paths that :func:`_check_segment` validated already."""


def _check_segment(name: str, payload: dict[str, Any]) -> None:
    """Validate a segment's payload as soon as it is opened, so an error names the segment;
    the parts that pass are marked, and :func:`check_ops` and :func:`_paths` (which
    :func:`load` calls on them) do not check them a second time (100,000 entries take a
    second)."""
    try:
        time_of(payload)
        if payload.get("kind") == "snapshot":
            _ctx(payload.get("ctx"))
            payload["paths"] = _CheckedPaths(_paths(payload.get("paths")))
            _attic(payload.get("attic"))
            _floor(payload)
        else:
            _ctx(payload.get("deps"))
            payload["ops"] = _CheckedOps(check_ops(payload.get("ops")))
    except IntegrityError as exc:
        raise IntegrityError(f"manifest segment {name}: {exc}") from exc


def check_ops(ops: object) -> list[dict[str, Any]]:
    if isinstance(ops, _CheckedOps):
        return ops
    if not isinstance(ops, list):
        raise IntegrityError("manifest delta is malformed")
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("p"), str):
            raise IntegrityError("manifest op is malformed")
        if op.get("e") is not None:
            check_entry(op["e"])
        rm = op.get("rm", [])
        if not isinstance(rm, list) or not all(isinstance(d, str) and _DOT.match(d) for d in rm):
            raise IntegrityError("manifest op is malformed")
        reloc = op.get("reloc") or {}
        if not isinstance(reloc, dict) or not all(
                isinstance(d, str) and _DOT.match(d) and _location(loc)
                for d, loc in reloc.items()):
            raise IntegrityError("manifest op is malformed")
    return ops


_REKEYED = frozenset(("n", "i", "k", "g", "w"))


def _location(loc: object) -> bool:
    """A ``reloc`` location: a blob moved as it is (``o``, ``a``, ``r``, ``om``), or a blob
    encrypted anew under a fresh DEK (also ``n``, ``i``, ``k``, ``g``, ``w``, all five): what
    re-encryption and repair write."""
    if not isinstance(loc, dict):
        return False
    keys = set(loc) - {"om"}
    if keys != {"o", "a", "r"} and keys != {"o", "a", "r"} | _REKEYED:
        return False
    if not isinstance(loc["o"], str) or _OBJECT_ID.match(loc["o"]) is None:
        return False
    if not isinstance(loc.get("om", ""), str):
        return False
    if not all(type(loc[k]) is int and loc[k] >= 0 for k in ("a", "r", "n") if k in loc):
        return False
    return all(type(loc[k]) is str for k in ("i", "k", "g", "w") if k in loc)


def _paths(raw: object) -> dict[str, Siblings]:
    if isinstance(raw, _CheckedPaths):
        return raw
    if not isinstance(raw, dict):
        raise IntegrityError("manifest snapshot is malformed")
    for sibs in raw.values():
        if not isinstance(sibs, dict) or not all(
                isinstance(d, str) and _DOT.match(d) for d in sibs):
            raise IntegrityError("manifest snapshot is malformed")
        for entry in sibs.values():
            check_entry(entry)
    return raw


def delta_payload(device: str, seq: int, deps: dict[str, int], prev: str | None,
                  ops: list[dict[str, Any]], dh: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    return {"kind": "delta", "device": device, "seq": seq, "deps": deps, "dh": dh or {},
            "prev": prev, "created": now_iso(), "ops": ops}


def snapshot_payload(device: str, seq: int, state: State, prev: str | None = None
                     ) -> dict[str, Any]:
    """The whole state with ``device`` at ``seq``; the caller records that seq once uploaded.
    ``prev`` (the writer's previous segment's hash) chains snapshots like deltas."""
    return {"kind": "snapshot", "device": device, "seq": seq, "ctx": {**state.ctx, device: seq},
            "prev": prev, "created": now_iso(), "paths": dict(state.items()),
            "attic": state.attic_payload(), "floor": state.floor}
