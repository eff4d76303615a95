"""The clamp: what a device does with a removed member's writes past its cutoff ("late"),
once the removal shows. They leave the live state for the history, what they replaced or
removed comes back, and what a removed member with a counting removal may leave there is
bounded (format.md, "Writer rules", "Version history").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .attic import _generation_of
from .carriers import clamped as clamped_carriers
from .carriers import late_carrier
from .crdt import State
from .entry import Entry
from .moves import late_dot, removers, unmoved
from .resolutions import carried, content_tag, late_version, poisoned

# Late versions kept per removed member with a counting removal: a thief must not fill every
# history (review round 6, T6; round 7, V3). A member that only challenged removals took out
# (the honest target of a backdated removal) keeps all of its work.
MAX_KEPT = 20_000

Rows = dict[str, dict[str, dict[str, Any]]]
Live = dict[str, dict[str, Entry]]


@dataclass(frozen=True)
class Limits:
    """What the verified chain says about removed members, for a clamp."""

    cuts: dict[str, int] = field(default_factory=dict)  # removed member -> cutoff seq
    listed: Callable[[str], bool] = lambda _o: True  # is this data object on the remote?
    # generations a re-encryption ended: such a version never comes back (review round 7, V4)
    ended: frozenset[str] = frozenset()
    # members a counting removal took out, with the highest cutoff one records: their late
    # dots past it are capped at MAX_KEPT, and one whose key names no commit on the chain is
    # malformed (round 7, V3); dots up to it were vouched by an honest remover and are kept
    # like a victim's (round 8, W3). None: every removed member, from its cutoff.
    vouched: dict[str, int] | None = None
    # members only void adds brought in, with the signer of the first: capped with it (W5)
    ghosts: dict[str, str] = field(default_factory=dict)
    keks: frozenset[str] | None = None  # KEK commitments of every commit, void or not
    known: frozenset[str] | None = None  # every device any commit names (None: unchecked)
    # does the blob an entry names decrypt to its signed hash? (None: not checked)
    matches: Callable[[Entry], bool] | None = None

    def capped(self, dot: str) -> bool:
        dev, _, seq = dot.partition(":")
        if self.vouched is None or dev in self.ghosts:
            return late_dot(dot, self.cuts)
        return dev in self.vouched and int(seq) > self.vouched[dev]

    def group(self, dev: str) -> str:
        """Whose bound a member's late versions count against."""
        return self.ghosts.get(dev, dev)


def late(ctx: dict[str, int], limit: dict[str, int]) -> bool:
    return any(ctx.get(dev, 0) > seq for dev, seq in limit.items())


def clamp_ctx(ctx: dict[str, int], limit: dict[str, int]) -> dict[str, int]:
    """A removed member's writes past its cutoff count as never seen: an honest device that
    applied them before it saw the removal must not launder them into everyone's state."""
    return {dev: min(seq, limit[dev]) if dev in limit else seq for dev, seq in ctx.items()}


def clamp_own(state: State, lim: Limits) -> None:
    """This device applied a removed member's late writes before it saw the removal, or
    holds the writes of a member that a removed member's challenged removal took out. The
    state is rebuilt from its own clamped copy, as a snapshot would be: late versions go to
    the history (never away: the writes of an honest target of a backdated removal may be
    in no snapshot, review round 4, S4), what they replaced comes back, and every snapshot and
    delta is read again. Rare, so the copy is held in memory."""
    paths, kept, ctx = dict(state.items()), state.attic_payload(), dict(state.ctx)
    witnessed = state.db.execute("SELECT rw, path, dot FROM attic WHERE rw IS NOT NULL"
                                 ).fetchall()
    # kept versions an honest writer's own delta removed too, as this device read it: undoing
    # a late removal must not bring them back (review round 12, AA3 (b))
    stay = frozenset((p, d) for rw, p, d in witnessed
                     if any(state.honest_remover(p, r) for r in removers(rw)))
    live, history, rc = clamp_snapshot(paths, kept, state.carriers.everything(),
                                       int(time.time()), lim, stay)
    raised = state.raises.rows()  # which snapshot lifted the vector where: still true
    words = state.raises.words()  # and what each writer's own segments said
    own = state.db.execute("SELECT path, dot FROM attic WHERE own IS NOT NULL").fetchall()
    state.reset()
    state.raises.restore(raised)
    state.raises.restore_words(words)
    state.merge_snapshot(clamp_ctx(ctx, lim.cuts), live.items(), history, int(time.time()),
                         carriers=rc)
    state.db.executemany("UPDATE attic SET own = 1 WHERE path = ? AND dot = ?", own)
    state.db.executemany("UPDATE attic SET rw = ? WHERE path = ? AND dot = ?", witnessed)


def clamp_snapshot(paths: Live, kept: Rows, rc: dict[str, dict[str, int]], when: int,
                   lim: Limits, stay: frozenset[tuple[str, str]] = frozenset()
                   ) -> tuple[Live, Rows, dict[str, dict[str, int]]]:
    """A snapshot (or this device's own state) with late dots: its live versions, history
    and carriers as they are once the late writes are never seen. ``stay``: (path, dot) of
    kept versions that are not revived (this device saw an honest removal of them)."""
    moves = carried([*((d, e) for sibs in paths.values() for d, e in sibs.items()),
                     *((d, r["e"]) for rows in kept.values() for d, r in rows.items())],
                    lim.cuts)
    live, history = _clamped(paths, kept, lim, when)
    live, history = _revive(live, history, lim, paths, kept, rc, stay, moves)
    return live, _bounded(history, lim), clamped_carriers(rc, lim.cuts)


def _clamped(paths: Live, kept: Rows, lim: Limits, when: int) -> tuple[Live, Rows]:
    """Late versions leave the live state for the history, where they stay and are never
    live again (review round 4, S3, S4). Late moves of anyone's blob are undone, unless the
    place before is no longer listed."""
    limit = lim.cuts
    live = {p: {d: unmove_late(e, limit, lim.listed, lim.matches) for d, e in sibs.items()
                if not late_version(d, e, limit)} for p, sibs in paths.items()}
    history = {p: {d: {**r, "e": unmove_late(r["e"], limit, lim.listed)}
                   for d, r in rows.items()} for p, rows in kept.items()}
    for p, sibs in paths.items():
        for d, e in sibs.items():
            if late_version(d, e, limit):
                history.setdefault(p, {}).setdefault(
                    d, {"e": unmove_late(e, limit, lim.listed), "g": when})
    return live, history


def _bounded(history: Rows, lim: Limits) -> Rows:
    """A member with a counting removal keeps at most MAX_KEPT late versions past the cutoffs
    such removals vouch for, its earliest (by dot, then path), and none whose key names no
    commit on the chain, void or not: such a version is no one's honest work, and no
    re-encryption would ever end it (review round 7, V3)."""
    late_rows: dict[str, list[tuple[int, str, str]]] = {}
    for p, rows in history.items():
        for d in rows:
            dev, _, seq = d.partition(":")
            if late_dot(d, lim.cuts) and lim.capped(d):
                late_rows.setdefault(lim.group(dev), []).append((int(seq), p, d))
    drop: set[tuple[str, str]] = set()
    for found in late_rows.values():
        found.sort()
        if lim.keks is not None:
            keks = lim.keks
            bad = {(p, d) for _s, p, d in found
                   if (g := _generation_of(history[p][d]["e"])) is not None and g not in keks}
            drop |= bad
            found = [f for f in found if (f[1], f[2]) not in bad]
        drop |= {(p, d) for _s, p, d in found[MAX_KEPT:]}
    if not drop:
        return history
    return {p: kept for p, rows in history.items()
            if (kept := {d: r for d, r in rows.items() if (p, d) not in drop})}


def _revive(paths: Live, kept: Rows, lim: Limits, unclamped: Live, unclamped_kept: Rows,
            carriers: dict[str, dict[str, int]], stay: frozenset[tuple[str, str]],
            moves: set[tuple[str, str]]) -> tuple[Live, Rows]:
    """Versions that a removed member's late write sent to the history come back unless a version
    live at that path now was written over them (``descends``): clamping its edit must not turn
    it into a delete (review round 2, N5 (a)), nor its late snapshot's drops (round 3, R3), nor
    an honest snapshot's drops that only carried them (round 6, U1). For a late edit, only while
    the late writes that replaced them end at a late version still live in the snapshot, or at
    no version: an honest edit of a late version since (round 3, R10, as round 15 narrowed it)
    stands, while a late edit then a late delete (round 5, T1) does not. Late removers then
    leave every row: the writes are never seen, and the next snapshot's vector no longer covers
    them (S10). A version comes back whatever its place or key in this row: the row may be stale
    (a re-encryption moved the version and deleted its old object since, and ended its old key),
    and the location max-register then takes the freshest copy another device holds. Deciding
    by the stale row would drop the real, re-encrypted version everywhere, since an
    observed-remove merge settles towards the drop (review round 8, W1). A late snapshot can no
    longer name long-forgotten versions to a device that held them (round 7, V4: forgotten ones
    are not taken in); a fresh clone's revived version whose object no device holds is reported
    missing, not dropped."""
    limit = lim.cuts
    for path, rows in kept.items():
        now = paths.get(path, {})
        live = unclamped.get(path, {})
        gone = unclamped_kept.get(path, {})
        back = {d: r["e"] for d, r in rows.items() if not late_version(d, r["e"], limit)
                and (path, d) not in stay
                and late_removal(r.get("rb"), live, gone, limit, carriers, moves,
                                 content_tag(r["e"]))
                and not descends(r.get("rb"), now, rows, limit)}
        if back:
            paths[path] = {**now, **back}
            kept[path] = {d: r for d, r in rows.items() if d not in back}
    for rows in kept.values():
        for dot, row in rows.items():
            if any(late_dot(r, limit) for r in row.get("rb") or ()):
                honest = [r for r in row["rb"] if not late_dot(r, limit)]
                rows[dot] = {k: v for k, v in row.items() if k != "rb"} | (
                    {"rb": honest} if honest else {})
    return paths, kept


def descends(rb: object, live: dict[str, Any], gone: dict[str, dict[str, Any]],
             limit: dict[str, int]) -> bool:
    """Was a version live at the path written over this kept one, directly or through
    versions since replaced (its removers, followed through the history)? Only such a
    version stops a revival: another live version is concurrent with it (an older one a
    late snapshot kept live, or a new file), and a conflict keeps both (review round 11,
    Z1). A remover list that names a late dot is the removed member's word as a whole: it
    could name an honest dot beside its own (review round 12, AA1)."""
    def trusted(raw: object) -> list[str]:
        dots = [str(d) for d in raw] if isinstance(raw, list) else []
        return [] if any(late_dot(d, limit) for d in dots) else dots

    todo = trusted(rb)
    seen: set[str] = set()
    while todo:
        dot = todo.pop()
        if dot in live:
            return True
        if dot in seen or dot not in gone:
            continue
        seen.add(dot)
        todo += trusted(gone[dot].get("rb"))
    return False


def late_removal(rb: object, live: dict[str, Any], gone: dict[str, dict[str, Any]],
                 limit: dict[str, int], carriers: dict[str, dict[str, int]],
                 moves: set[tuple[str, str]] = set(),  # noqa: B006 (read only)
                 content: str = "") -> bool:
    """Did a late write remove this kept version? Its removers (``rb``: what this device saw)
    are walked: a late carrier, or an honest one that named no remover and whose vector
    covers a late write (carriers.late_carrier), is late; a late version that replaced it
    counts while it is still live, or has no row, or was itself removed by a late write
    (followed the same way, each dot once, so a cycle of late dots counts as late). One
    late remover is enough: the cost of a wrong revival is a deleted file back, against the
    loss of a real one (review round 6, U1). An honest or unknown remover revives nothing,
    but of a late version only an honest edit (still live, other content) stands: a delete or
    a metadata-only change of it brings back what it replaced (round 15, DD1, DD2)."""
    todo = [(str(d), rb, content) for d in rb] if isinstance(rb, list) else []
    seen: set[str] = set()
    while todo:
        dot, row, removed = todo.pop()
        if dot in seen:
            return True  # only late dots are followed: a late cycle
        seen.add(dot)
        if late_carrier(dot, row, carriers, limit):
            return True
        if poisoned(live.get(dot) or gone.get(dot, {}).get("e"), limit):
            return True  # a resolution of a conflict with a late write (AA2)
        if (dot, removed) in moves:
            return True  # it moved the late version's content elsewhere (a rename, CC2)
        if not late_dot(dot, limit):
            if late_dot(removed, limit) and _undoes(dot, gone.get(removed), live, gone,
                                                    content):
                return True
            continue
        if dot in live or dot not in gone:
            return True
        more = gone[dot].get("rb") or []
        todo += [(str(d), more, dot) for d in more]
    return False


def _undoes(dot: str, late: dict[str, Any] | None, live: dict[str, Entry],
            gone: dict[str, dict[str, Any]], content: str) -> bool:
    """Is honest ``dot``'s removal of a late version no removal of what that replaced?
    Where the late version held the kept content (a late touch), removing it removes that
    content (review round 16, EE4). Otherwise only an honest *edit* stands, judged by
    whether ``dot`` wrote a version at this path at all, live or since replaced, so a chain
    of edits stands in any delivery order (EE5): a delete, a rename away, or a version with
    the late content (a chmod, a touch) brings back what the late version replaced (round
    15, DD1, DD2)."""
    held: Entry | None = late.get("e") if isinstance(late, dict) else None
    if isinstance(held, dict) and content_tag(held) == content:
        return False
    mine: Entry | None = live.get(dot) if dot in live else (gone.get(dot) or {}).get("e")
    if not isinstance(mine, dict):
        return True
    return isinstance(held, dict) and content_tag(mine) == content_tag(held)


def unmove_late(entry: Entry, limit: dict[str, int], listed: Callable[[str], bool],
                matches: Callable[[Entry], bool] | None = None) -> Entry:
    """A blob moved by a removed member past its cutoff goes back where it was: the move kept
    no dot of its own, so clamping dots alone would keep it (review round 2, N4). Never to a
    place whose object is gone: a re-encryption deletes the old objects at once, and its
    writer may be taken out later by a removed member (S1) or an honest race; the current
    place stays (review round 7, V1), but only once its blob decrypts to the signed ``h``
    (``matches``, for live versions): a late move to junk while the provider hides the place
    before from this device must not become the place for good (review round 8, W6). A
    place that fails goes back to the place before, which a read then reports missing until
    it is listed again."""
    rd = entry.get("rd")
    is_late = isinstance(rd, list) and any(late_dot(str(d), limit) for d in rd)
    if not is_late:
        return entry
    back = unmoved(entry)
    if back.get("o") is None or listed(str(back["o"])):
        return back
    if matches is not None and not matches(entry):
        return back
    # stays; the move record goes with its place (a late dot in ``rd`` would be one the
    # clamped vector no longer covers, which readers refuse as planted)
    return cast(Entry, {k: v for k, v in entry.items() if k not in ("pl", "rd", "rt")})
