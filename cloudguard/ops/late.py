"""``restore --late-of MEMBER``: a removed member's late versions back in one command.

Why: a removed member (a thief with an old device key) can sign a backdated removal of an
honest member B with cutoff 0. Removals win, so B is out and every dot of B is late: B's
versions move to the history, its edits roll back and its deletes come back on every device,
and ``restore --before`` skips late versions by design (review round 5, T2). Restoring B's
work one ``--version`` at a time does not scale (review round 6, U4). This module picks, for
every path, the version that the member-wide restore writes back; history.py writes it.

The rule (docs/format.md, "Version history"): for each path, MEMBER's newest late version
(the highest seq of MEMBER's kept late dots there) is restored unless a non-late dot has
replaced it since, that is unless

1. one of its removers (``rb``) is a non-late delta dot (not a carrier: a snapshot that only
   passed a drop on): an honest member replaced or deleted that very version, having seen it;
2. a non-late version of the path (current or kept) with other content states a later push
   time (``pt``): an honest member wrote the path after it (the same content is a restore);
3. a non-late version of the path was deleted after that push time by a non-late dot that is
   no version of the path: an honest member deleted the path after it.

Where MEMBER's own later dot (no version: a delete) removed its newest late version, MEMBER
deleted the path: that is reported, never written back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..manifest import late_dot, resolutions
from ..results import LateMember, LateRemovals, Removal, ReplacedSince
from ..session import Session

if TYPE_CHECKING:
    from .history import Version


def writer(dot: str) -> str:
    return dot.partition(":")[0]


def _seq(dot: str) -> int:
    return int(dot.partition(":")[2] or 0)


def member(s: Session, given: str) -> str:
    """The member id that ``given`` names: an id, a name as ``device list`` shows it, or the
    start of an id (at least four characters), matching exactly one member."""
    view = s.ring.view
    known = {*view.members, *view.removed}
    s.ring.learn_names(known)
    if given in known:
        rid = given
    else:
        named = sorted(r for r in known if view.names.get(r) == given)
        if not named:
            named = sorted(r for r in known if len(given) >= 4 and r.startswith(given))
        if len(named) > 1:
            raise UsageError(f"{given} names {len(named)} devices ({', '.join(named)}): give "
                             "its id (cloudguard device list)")
        if not named:
            raise UsageError(f"no device or recovery slot is named {given} or has that id (see "
                             "cloudguard device list)")
        rid = named[0]
    if rid not in view.removed:
        raise UsageError(f"{given} is not removed: none of its versions is late")
    return rid


def removals(s: Session, rid: str) -> LateRemovals:
    """What made ``rid``'s dots late: each removal (who signed it, its cutoff, challenged or
    counting), or a void add that alone brought it in (a ghost)."""
    view = s.ring.view
    found = view.removals_of(rid)
    s.ring.learn_names({c.signer for c, _ch in found})
    rows = [Removal(commit=c.name, by=s.ring.name_of(c.signer), by_id=c.signer,
                    cutoff=c.removed[rid].seq, challenged=challenged)
            for c, challenged in found]
    return LateRemovals(late_of=LateMember(id=rid, name=s.ring.name_of(rid)), removals=rows,
                        counting=any(not r.challenged for r in rows),
                        ghost=rid in view.ghosts and not rows, cutoff=view.removed[rid].seq)


def describe(info: LateRemovals) -> str:
    """One line naming the removals, for the question and the refusal."""
    who = f"{info.late_of.name} ({info.late_of.id})"
    if info.ghost:
        return f"{who} was brought in only by an add that a removal voided"
    parts = [f"removed by {r.by} in {r.commit} with cutoff {r.cutoff} ("
             + ("challenged" if r.challenged else "counting") + ")"
             for r in info.removals]
    return f"{who} was " + "; ".join(parts)


def confirm(s: Session, info: LateRemovals, yes: bool) -> None:
    """A member with a counting removal (an honest member removed it), or a ghost (only a void
    add vouched for it), may be a thief: its late versions are written back only once the
    user agrees (``--yes``, or a terminal to ask on)."""
    if not (info.counting or info.ghost) or yes:
        return
    what = (f"{describe(info)}: its late versions may be a thief's writes, and the next "
            "push makes them current on every device")
    if s.ui.confirm is None:
        raise UsageError(f"{what}; nothing was restored: no terminal to confirm on, pass "
                         "--yes to restore them")
    if not s.ui.confirm(f"{what}. Restore them?"):
        raise UsageError(f"{what}; nothing was restored")


def pick(found: dict[str, list[Version]], rid: str, removers: dict[tuple[str, str], Any],
         cuts: dict[str, int], carriers: Iterable[str] = ()
         ) -> tuple[dict[str, Version], list[ReplacedSince], list[str]]:
    """(path -> version to write back, versions replaced since, paths ``rid`` deleted).
    ``carriers``: dots of snapshots that only passed a drop on (manifest/carriers.py)."""
    passed = set(carriers)
    chosen: dict[str, Version] = {}
    since: list[ReplacedSince] = []
    deleted: list[str] = []
    for path, vs in sorted(found.items()):
        # its own dots, and an honest resolution's copy of its content (``cs``, round 13 BB1)
        mine = [v for v in vs if v.late and writer(resolutions.source(v.dot, v.entry)) == rid]
        if not mine:
            continue
        newest = max(mine, key=lambda v: (_seq(resolutions.source(v.dot, v.entry)), _seq(v.dot)))
        rb = removers.get((path, newest.dot)) or []
        if any(writer(d) == rid and late_dot(d, cuts) and d not in passed for d in rb) and not \
                _honest(rb, cuts, passed):
            deleted.append(path)
            continue
        by = _replaced_since(newest, vs, removers, cuts, passed)
        if by is not None:
            since.append(ReplacedSince(path=path, version=newest.dot, since=by))
        else:
            chosen[path] = newest
    return chosen, since, deleted


def _honest(rb: list[str], cuts: dict[str, int], passed: set[str]) -> str | None:
    """The first remover that is an honest member's own delta, if any."""
    return next((d for d in rb if not late_dot(d, cuts) and d not in passed), None)


def _replaced_since(v: Version, vs: list[Version], removers: dict[tuple[str, str], Any],
                    cuts: dict[str, int], passed: set[str]) -> str | None:
    """The non-late dot that replaced ``v`` since (rules 1 to 3 above), or None."""
    by = _honest(removers.get((v.path, v.dot)) or [], cuts, passed)
    if by is not None:
        return by
    for w in vs:
        if not w.late and w.pushed > v.pushed and not _same(w, v):
            return w.dot
    here = {w.dot for w in vs}
    for w in vs:
        gone = _honest(removers.get((w.path, w.dot)) or [], cuts, passed)
        if (not w.late and w.replaced is not None and w.replaced > v.pushed and gone
                and gone not in here):
            return gone
    return None


def _same(one: Version, two: Version) -> bool:
    """Same content: a copy of ``two`` written back (by a restore) does not replace it."""
    return all(one.entry.get(k) == two.entry.get(k) for k in ("t", "h", "l"))


def removers(rows: Iterable[tuple[str, dict[str, dict[str, Any]]]]
             ) -> dict[tuple[str, str], Any]:
    """(path, dot) -> who removed that kept version (``rb``, a list; None: unknown)."""
    return {(p, d): row.get("rb") for p, kept in rows for d, row in kept.items()}
