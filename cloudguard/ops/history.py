"""Version history: every replaced or deleted version stays on the remote for the folder's
``keep_days``, and ``restore`` brings any of them back.

Why: without it, restoring an old backup over the folder, or ransomware encrypting it, and then
one push, replaces the real versions on every device for good. The history is part of the
replicated manifest (format.md, "Version history"), so any device can restore what another
device's push replaced, and garbage collection keeps the objects it names.

A restore only writes the chosen versions into the folder, as the user's own edits: the next
push makes them current everywhere, and the versions they replace join the history in turn.
A local file with changes that were never pushed is not overwritten without ``--force``.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec

from .. import names, sync
from ..errors import FileChangedError, IntegrityError, UsageError
from ..manifest import Entry, resolutions
from ..results import HistoryResult, HistoryVersion, LateRestoreResult, RestoreResult
from ..session import UI, Session, session
from . import late
from .common import _audited, _late, _late_row, _log, _scan
from .pull import _stage

_AGO = re.compile(r"^(\d+)([smhd])\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KINDS: dict[str, Literal["file", "folder", "symlink"]] = {
    "f": "file", "d": "folder", "l": "symlink"}


@dataclass
class Version:
    path: str
    dot: str
    entry: Entry
    pushed: int  # unix seconds; 0 for a version pushed before history kept times
    replaced: int | None  # None: a current version
    late: bool = False  # written past its writer's removal cutoff: kept, never current
    ended: bool = False  # under a key a re-encryption ended: listed for keep_days at most

    def current_at(self, when: int) -> bool:
        """A late version (a removed member's late write, or a version of a member that a
        removed member's backdated removal took out) is never current at any time: its
        writer chose its ``pt``, so a restore by time would bring it back as an honest
        member's write (review round 5, T2). It is restored only by naming it."""
        return not self.late and self.pushed <= when and (
            self.replaced is None or self.replaced > when)

    def shown(self, labels: dict[str, str]) -> HistoryVersion:
        """As ``history`` lists it: the writer by name (``labels``), times as text."""
        device = self.dot.partition(":")[0]
        kind = _KINDS[str(self.entry.get("t"))]
        return HistoryVersion(
            path=self.path, version=self.dot, kind=kind,
            size=int(self.entry.get("s", 0)) if kind == "file" else None,
            device=labels.get(device, device), pushed=_iso(self.pushed),
            replaced=_iso(self.replaced) if self.replaced is not None else None,
            current=self.replaced is None, late=self.late, ended=self.ended)


def _iso(when: int | None) -> str | None:
    if not when:
        return None
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, now: float | None = None) -> int:
    """``2026-12-01T10:00`` (local time unless it names a zone), or ``90m``/``2h``/``3d`` ago."""
    got = _AGO.match(text.strip())
    if got:
        return int((now if now is not None else time.time())
                   - int(got.group(1)) * _UNIT[got.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageError(f"--before {text!r} is not a time: give 2026-12-01T10:00 or 3h, 2d "
                         "(ago)") from exc
    return int(moment.timestamp())


def versions(s: Session, path: str | None = None) -> list[Version]:
    """Current and kept versions, of one path or of all, oldest first per path."""
    out: list[Version] = []
    if path is None:
        for p, sibs in s.state.items():
            out += [Version(p, d, e, int(e.get("pt", 0)), None) for d, e in sibs.items()]
    else:
        out += [Version(path, d, e, int(e.get("pt", 0)), None)
                for d, e in s.state.siblings(path).items()]
    cuts = s.ring.view.cutoffs
    out += [Version(p, d, e, int(e.get("pt", 0)), gone,
                    resolutions.late_version(d, e, cuts),  # late content too (BB1)
                    str(e.get("w", e.get("g"))) in s.state.ended)
            for p, d, e, gone in s.state.attic(path)]
    return sorted(out, key=lambda v: (v.path, v.pushed, v.replaced is None, v.replaced or 0))


def history(folder: str | None, path: str, ui: UI | None = None) -> HistoryResult:
    with session(folder, ui) as s:
        rel = _rel(s, path)
        found = versions(s, rel)
        if not found:
            raise UsageError(f"{rel}: no version of it is current or kept (keep_days = "
                             f"{s.binding.keep_days})")
        labels = s.labels()
        return HistoryResult(path=rel, keep_days=s.binding.keep_days,
                             versions=[v.shown(labels) for v in found])


def _rel(s: Session, path: str) -> str:
    """A path as the manifest names it: relative to the folder, given either way."""
    given = Path(path)
    if given.is_absolute():
        try:
            given = given.relative_to(s.folder)
        except ValueError as exc:
            raise UsageError(f"{path} is not inside {s.folder}") from exc
    rel = given.as_posix().strip("/")
    if rel in ("", "."):
        raise UsageError("give a path inside the folder")
    return sync.check_rel_path(rel)


def restore(folder: str | None, paths: list[str], before: str | None = None,
            version: str | None = None, force: bool = False, ui: UI | None = None,
            late_of: str | None = None, yes: bool = False
            ) -> RestoreResult | LateRestoreResult:
    """Write the versions current at ``before``, the one ``version``, or the newest late
    versions of the removed member ``late_of`` (ops/late.py) into the folder."""
    if sum(x is not None for x in (before, version, late_of)) != 1:
        raise UsageError("give exactly one of --before TIME or --version ID or --late-of "
                         "MEMBER")
    if version is not None and len(paths) != 1:
        raise UsageError("--version restores one path: give exactly one")
    if yes and late_of is None:
        raise UsageError("--yes only confirms --late-of")
    when = parse_time(before) if before is not None else None
    with _audited("restore", folder), session(folder, ui, scan=True, guard=True) as s:
        result: RestoreResult | LateRestoreResult
        if late_of is not None:
            result = _restore_late(s, paths, late_of, force, yes)
        else:
            result = _restore(s, paths, when, version, force)
        _log(s, "restore", restored=len(result.restored), refused=len(result.refused),
             **({"late_of": result.late_of.id} if isinstance(result, LateRestoreResult)
                else {}))
        return result


def _found(s: Session, wanted: list[str]) -> dict[str, list[Version]]:
    """Every version of the paths ``wanted`` and under them (all paths: none wanted)."""
    found: dict[str, list[Version]] = {}
    for v in versions(s):
        if not wanted or any(v.path == w or v.path.startswith(w + "/") for w in wanted):
            found.setdefault(v.path, []).append(v)
    missing = [w for w in wanted if w not in found and not any(
        f.startswith(w + "/") for f in found)]
    if missing:
        raise UsageError(f"{missing[0]}: no version of it is current or kept")
    return found


def _restore_late(s: Session, paths: list[str], given: str, force: bool, yes: bool
                  ) -> LateRestoreResult:
    """``restore --late-of``: the removals are named first, and a member that may be a thief
    is asked about before anything is read or written."""
    rid = late.member(s, given)
    info = late.removals(s, rid)
    late.confirm(s, info, yes)
    s.ui.warn(late.describe(info))
    found = _found(s, [_rel(s, p) for p in paths])
    chosen, since, deleted = late.pick(found, rid, late.removers(s.state.attic_rows()),
                                       s.ring.view.cutoffs, s.state.carriers.everything())
    restored, unchanged, refused = _apply(s, chosen, force)
    return LateRestoreResult(**msgspec.structs.asdict(info), restored=restored,
                             unchanged=unchanged, refused=refused, replaced_since=since,
                             deleted_by_member=deleted)


def _restore(s: Session, paths: list[str], when: int | None, dot: str | None, force: bool
             ) -> RestoreResult:
    wanted = [_rel(s, p) for p in paths]
    chosen: dict[str, Version] = {}
    absent: list[str] = []
    if dot is not None:
        pick = next((v for v in versions(s, wanted[0]) if v.dot == dot), None)
        if pick is None:
            raise UsageError(f"{wanted[0]}: no version {dot} is current or kept (see "
                             f"cloudguard history {wanted[0]})")
        chosen[pick.path] = pick
    else:
        assert when is not None
        for path, vs in sorted(_found(s, wanted).items()):
            live = [v for v in vs if v.current_at(when)]
            if live:
                chosen[path] = max(live, key=lambda v: (v.pushed, v.dot))
            else:
                absent.append(path)
    restored, unchanged, refused = _apply(s, chosen, force)
    return RestoreResult(restored=restored, unchanged=unchanged, refused=refused,
                         not_present_then=sorted(absent),
                         before=_iso(when) if when is not None else None, version=dot)


def _apply(s: Session, chosen: dict[str, Version], force: bool
           ) -> tuple[list[str], list[str], list[str]]:
    """Write ``chosen`` into the folder: a path already as chosen is left, and one with
    local changes never pushed (or a folder in the way) is kept unless ``force``. Returns
    (restored, unchanged, refused)."""
    local = _scan(s)
    rows = s.index.rows()
    hashed = functools.cache(lambda p: sync.hash_file(names.local(s.folder, p)))
    late = _late(s, hashed)  # hashes a path at most once, whichever asks first
    same: list[str] = []
    refused: list[str] = []
    todo: list[Version] = []
    for path, v in chosen.items():
        loc = local.get(path)
        if loc is not None and sync.entry_matches(loc, v.entry,
                                                  functools.partial(hashed, path)):
            if loc.kind != "f" or loc.mode == int(v.entry.get("x", loc.mode)):
                same.append(path)
                continue
        row = rows.get(path)
        # a copy of a removed member's late write, only touched here, is no change of ours
        unsynced = loc is not None and loc.kind != "d" and (
            row is None or sync.dirty(loc, row) and not late(loc, row))
        if unsynced and not force:
            refused.append(path)
            continue
        if loc is not None and loc.kind == "d" and v.entry.get("t") != "d":
            refused.append(path)  # never replace a folder (and what is in it) by a file
            continue
        todo.append(v)
    written, changed = _write(s, todo, local)
    for path in [*written, *same]:  # what is there now is restored, not the late copy
        row = rows.get(path)  # its row named: the next push sends it (review round 18, GG2)
        if row is not None and _late_row(s, row):
            s.index.remove(path)
    refused += changed
    if refused:
        s.ui.warn(f"kept {len(refused)} path(s) with changes that were never pushed (or a "
                  f"folder in the way), e.g. {refused[0]}; --force overwrites them")
    return written, sorted(same), sorted(refused)


def _write(s: Session, todo: list[Version], local: dict[str, sync.LocalItem]
           ) -> tuple[list[str], list[str]]:
    """Folders first, then files (authenticated into temp files, then renamed), then links.
    Nothing is renamed into place until every file is authenticated, and a path the user
    changed since the scan is left alone (returned second)."""
    for v in sorted((v for v in todo if v.entry.get("t") == "d"), key=lambda v: v.path):
        sync.make_dir(s.folder, v.path, int(v.entry.get("x", 0o700)))
    files = [(v.path, v.entry) for v in todo if v.entry.get("t") == "f"]
    staged: list[sync.Staged] = []
    created: list[Path] = []
    failures: list[str] = []
    total = sum(int(e.get("s", 0)) for _p, e in files)
    try:
        with s.ui.progress("restore", total) as advance:
            for obj, items in sync.group_by_object(files).items():
                for dest, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                    try:
                        if reader is None:
                            raise IntegrityError(str(err))
                        staged.append(_stage(s, dest, entry, reader, created))
                        advance(int(entry.get("s", 0)))
                    except IntegrityError as exc:
                        failures.append(f"{dest}: {exc}")
    except BaseException:
        sync.discard(staged, created)
        raise
    if failures:
        sync.discard(staged, created)
        raise IntegrityError("integrity failure, nothing was restored: " + "; ".join(failures))
    changed: list[str] = []
    for item in staged:
        try:
            sync.commit_staged(s.folder, item, local.get(item.dest))
        except FileChangedError:
            changed.append(item.dest)
    for v in todo:
        if v.entry.get("t") == "l":
            try:
                sync.make_link(s.folder, v.path, str(v.entry.get("l", "")), local.get(v.path))
            except FileChangedError:
                changed.append(v.path)
    return sorted(v.path for v in todo if v.path not in changed), changed

