"""push: encrypt what changed in the folder, upload it, commit one delta segment.

The guards run before anything is uploaded: the folder marker, the mass-delete
limit, unreadable paths (never a delete).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from .. import audit, sync
from .. import manifest as mf
from ..errors import (
    GuardError,
    UsageError,
)
from ..results import MarkResult, PushCounts, PushResult, SettingsResult
from ..session import UI, Session, session
from ..settings import settings as env_settings
from ..state import (
    MAX_KEEP_DAYS,
    IndexRow,
    find_binding,
    folder_lock,
    signature,
    write_marker,
)
from .common import (
    LATE_MOVED,
    _audited,
    _counts,
    _late,
    _log,
    _resolve,
    _safe_hasher,
    _scan,
    late_moved,
    relative_paths,
)
from .maintain import _collect_pending, _maintain
from .rotate import _rewrap_stale


def push(folder: str | None, dry_run: bool = False, ui: UI | None = None,
         allow_mass_delete: bool = False, paths: list[str] | None = None,
         ignore: Callable[[str], bool] | None = None, deleted_before: int = 0,
         rewritten_before: int | None = None, allow_mass_change: bool = False
         ) -> PushResult:
    """``result.unreadable`` lists paths that could not be read: they kept their last
    synced state, and the CLI exits 1 after the rest was pushed.

    ``paths`` (relative to the folder, or absolute inside it) pushes only those paths and
    what is under them; the rest of the folder is not scanned (the daemon's push).
    ``ignore`` (cloudguard.ignore.Ignore) paths are never read nor uploaded, and a synced
    one that is ignored now keeps its synced state (an ignore rule never deletes).
    ``deleted_before``: files the caller deleted by its recent pushes (the daemon's window), so
    that deletes spread over many small pushes meet the same mass-delete guard as one push.
    ``rewritten_before`` (the daemon's, None for none): files its recent pushes rewrote; a push
    that would bring that past CLOUDGUARD_MASS_CHANGE_PERCENT of the folder (the ransomware
    pattern) is refused, unless ``allow_mass_change``."""
    whole = paths is None and ignore is None  # big new files may go up while it opens
    with _audited("push", folder), session(folder, ui, scan=paths is None, guard=True,
                                           early=whole and not dry_run) as s:
        _warn_exposed(s)
        s.ignore = ignore
        scope = None if paths is None else relative_paths(s, paths, "push")
        if not dry_run:
            _reissue(s)
        result = _push(s, dry_run, allow_mass_delete, scope, deleted_before,
                       None if allow_mass_change else rewritten_before)
        if not dry_run:
            _log(s, "push", files=len(result.uploaded) + len(result.updated),
                 deleted=len(result.deleted), objects=result.object_ids,
                 segments=s.committed)
        return result


def _reissue(s: Session) -> None:
    """Versions of ours a planted claim hid go up at the next push even if nothing else does
    (Session.reissue_ops; any commit takes them along)."""
    if s.reissue_ops(set()):
        s.commit([])
    else:
        s.index.set_meta("reissue", [])


def _warn_exposed(s: Session) -> None:
    """A sync client around the folder (found since init, or allowed there) is named on every
    push; only around it: the scan already reads the inside."""
    from .. import doctor as checks

    for f in checks.exposure(s.folder, Path.home(), inside=False):
        if f.level == "error":
            s.ui.warn(f"{f.message} ({f.fix}; cloudguard doctor)")


def _push_plan(s: Session, local: dict[str, sync.LocalItem], scope: list[str] | None = None
               ) -> tuple[sync.PushPlan, dict[str, IndexRow]]:
    """Only what differs from the index needs a look: whole rows for those paths alone.
    With a ``scope``, only rows at or under those paths count (what was not scanned is not
    gone)."""
    if scope is None:
        sigs = s.index.signatures()
    else:
        sigs = {p: signature(r.kind, r.size, r.mtime, r.mode, r.target, r.ctime, r.ino)
                for p, r in s.index.rows_under(scope).items()}
    changed = {p: item for p, item in local.items()
               if sigs.get(p) != signature(item.kind, item.size, item.mtime, item.mode,
                                           item.target, item.ctime, item.ino)}
    # a path the scan could not read is not gone: it keeps its last synced state
    gone = [p for p in sigs if p not in local
            and not (s.unreadable and sync.under(p, s.unreadable))
            and not (s.ignore is not None and s.ignore(p))]
    rows = s.index.rows_for([*changed, *gone])
    hasher = _safe_hasher(s.folder)
    return sync.plan_push(changed, rows, sync.LazyView(s.state), hasher, s.state.version,
                          _late(s, hasher)), rows


def _mass_delete_limits() -> tuple[float, int]:
    """The mass-delete thresholds: CLOUDGUARD_MASS_DELETE_PERCENT and _FILES."""
    got = env_settings()
    return got.mass_delete_share, got.mass_delete_files


def _mass_delete(s: Session, plan: sync.PushPlan, before: int = 0) -> GuardError | None:
    """The refusal a push deleting a large part of the folder gets, or None. ``before`` files
    were deleted by the caller's recent pushes: they count as deleted now, out of a folder
    that still held them."""
    deleting = sum(1 for row in plan.delete  # a renamed file is not deleted
                   if row.kind != "d" and row.path not in plan.renamed)
    if not deleting:
        return None  # the common push: no count of the index needed
    total = s.index.count_files() + before
    share, most = _mass_delete_limits()
    if not sync.mass_delete(deleting + before, total, share, most):
        return None
    recent = f", after {before} deleted in the last minutes" if before else ""
    what = (f"push would delete {deleting} of the {total} files in {s.folder}{recent} "
            f"(more than {share:.0%} or {most} files)")
    return GuardError(f"{what}; nothing was pushed. If that is right, run push "
                      "--allow-mass-delete", "mass-delete", folder=str(s.folder),
                      deleting=deleting, files=total, percent=round(share * 100, 2),
                      max_files=most, question=f"{what}. Delete them everywhere?")


def _check_mass_delete(s: Session, plan: sync.PushPlan, allow: bool, before: int = 0) -> None:
    """Ask before a push deletes a large part of the folder; without a terminal, refuse."""
    refusal = None if allow else _mass_delete(s, plan, before)
    if refusal is None:
        return
    question = str(refusal.details.pop("question"))
    if s.ui.confirm is not None and s.ui.confirm(question):
        return
    raise refusal


def _rewriting(plan: sync.PushPlan, rows: dict[str, IndexRow]) -> int:
    """Uploads that replace the content of a synced file (not new files, not renames)."""
    return sum(1 for item in plan.upload
               if (row := rows.get(item.path)) is not None and row.kind == "f")


def _check_mass_change(s: Session, plan: sync.PushPlan, rows: dict[str, IndexRow],
                       before: int) -> None:
    """The daemon's guard against the ransomware pattern: a large part of the folder rewritten
    within minutes stops the folder before any of this push goes up."""
    rewriting = _rewriting(plan, rows)
    if not rewriting:
        return
    total = s.index.count_files()
    share = env_settings().mass_change_share
    if not sync.mass_delete(rewriting + before, total, share, most=sys.maxsize):
        return  # the mass-delete rule by share (and floor); no cap on the number alone
    raise GuardError(f"push would rewrite {rewriting} of the {total} files in {s.folder}"
                     + (f", after {before} rewritten in the last minutes" if before else "")
                     + f" (more than {share:.0%}): the pattern of ransomware; nothing was "
                     "pushed", "mass-change", folder=str(s.folder), rewriting=rewriting,
                     files=total, percent=round(share * 100, 2))


def _push(s: Session, dry_run: bool, allow_mass_delete: bool = False,
          scope: list[str] | None = None, deleted_before: int = 0,
          rewritten_before: int | None = None) -> PushResult:
    conflicts = [] if dry_run else _resolve(s)
    local = _scan(s, scope)
    plan, index_rows = _push_plan(s, local, scope)
    # a dry run has every field a push has (what it would do; nothing uploaded)
    result = PushResult(
        uploaded=[i.path for i in plan.upload], updated=[i.path for i, _ in plan.put],
        deleted=[r.path for r in plan.delete if r.path not in plan.renamed],
        renamed=dict(sorted(plan.renamed.items())), dry_run=dry_run,
        conflicts=conflicts, unreadable=sorted(s.unreadable),
        skipped=[], late=list(plan.late), bytes_uploaded=0, objects=0, object_ids=[],
        mass_delete=False,
        rewritten=_rewriting(plan, index_rows),
        counts=PushCounts(uploaded=_counts("f" for _ in plan.upload),
                          updated=_counts(i.kind for i, _ in plan.put),
                          deleted=_counts(r.kind for r in plan.delete
                                          if r.path not in plan.renamed)))
    for path in plan.late:
        s.ui.warn(f"{path}: holds what a removed member wrote after its removal; not pushed, "
                  "and the next pull puts back what it replaced (cloudguard history; after "
                  "that pull, restore --late-of brings it back as this device's own)")
    if dry_run:
        result.mass_delete = (  # push would ask first
            _mass_delete(s, plan, deleted_before) is not None)
        return result
    _check_mass_delete(s, plan, allow_mass_delete, deleted_before)
    if rewritten_before is not None:
        _check_mass_change(s, plan, index_rows, rewritten_before)
    moved_onto = set(late_moved(s))
    for old, new in plan.late_moves.items():  # the late copy's row follows it (EE3)
        moved = index_rows[old]
        s.index.put(sync.row_from(local[new], moved.dot, moved.sha256))
        s.index.remove(old)
        moved_onto = (moved_onto - {old}) | {new}
    if plan.late_moves:
        s.index.set_meta(LATE_MOVED, sorted(moved_onto))
    _collect_pending(s)
    _upload_again(s, _rewrap_stale(s), plan, local, index_rows)
    total = sum(i.size for i in plan.upload)
    with s.index.transaction():
        for loc, dot, sha in plan.adopt:
            s.index.put(sync.row_from(loc, dot, sha))

    def landed(entries: dict[str, mf.Entry], objects: list[str]) -> None:
        """Each uploaded batch is committed as soon as it is on the remote."""
        _commit_ops(s, _replacing(s, entries, index_rows), local, objects)

    with s.ui.progress("push", total) as advance:
        up = sync.upload(s.folder, plan.upload, s.transport, s.binding.dir / "spool",
                         s.ring.head_kek, s.ring.head.kek, s.binding.padding != "none",
                         s.index.add_pending, s.ui.warn, advance, landed,
                         None if s.early is None else functools.partial(
                             s.early.take, kek=s.ring.head_kek, generation=s.ring.head.kek))
    ops = _replacing(s, up.entries, index_rows)  # the last batch
    for item, entry in plan.put:
        row = index_rows.get(item.path)
        if entry is None:
            entry = ({"t": "d", "x": item.mode} if item.kind == "d"
                     else {"t": "l", "l": item.target, "m": item.mtime})
        ops.append({"p": item.path, "e": entry, "rm": _based_on(s, row)})
    for row in plan.delete:
        ops.append({"p": row.path, "e": None, "rm": _based_on(s, row)})
    _commit_ops(s, ops, local, up.objects)
    result.uploaded = sorted(up.paths)
    result.counts.uploaded = _counts("f" for _ in up.paths)
    result.skipped = up.skipped
    result.unreadable = sorted({*s.unreadable, *up.unreadable})
    result.bytes_uploaded = up.bytes_out
    result.objects = len(up.objects)
    result.object_ids = [n[len(sync.DATA_PREFIX):] for n in up.objects]
    _maintain(s)
    return result


def _upload_again(s: Session, lost: dict[str, str], plan: sync.PushPlan,
                  local: dict[str, sync.LocalItem], rows: dict[str, IndexRow]) -> None:
    """Versions this device wrote while it had not seen a re-encryption, which deleted their
    key: no one can read them, but the folder holds what was synced as that dot, so it goes
    up again as a new version that replaces it."""
    planned = {i.path for i in plan.upload}
    for path, dot in sorted(lost.items()):
        row, item = rows.get(path), local.get(path)
        if row is not None and row.dot == dot and item is not None and item.kind == "f" \
                and path not in planned:
            plan.upload.append(item)
            s.ui.warn(f"{path}: its key went with a re-encryption this device had not seen; "
                      "it is uploaded again from the folder")
        elif path not in planned:
            s.ui.warn(f"{path}: its key went with a re-encryption this device had not seen, "
                      "and the folder no longer holds that version; it cannot be read")


def _replacing(s: Session, entries: dict[str, mf.Entry], rows: dict[str, IndexRow]
               ) -> list[mf.Op]:
    """Ops that put each entry in place of the version this device last synced there."""
    return [{"p": path, "e": entry, "rm": _based_on(s, rows.get(path))}
            for path, entry in entries.items()]


def _based_on(s: Session, row: IndexRow | None) -> list[str]:
    """The dots a local edit or delete replaces: the version this device synced, and every
    sibling of identical content (two devices pushed the same edit at once). A sibling of
    other content is a concurrent edit this device never saw: it stays, as a conflict."""
    if row is None:
        return []
    sibs = s.state.siblings(row.path)
    base = sibs.get(row.dot)
    if base is None:
        return [row.dot]
    same = mf.resolutions.content_tag(base)
    return sorted({row.dot} | {d for d, e in sibs.items() if mf.resolutions.content_tag(e) == same},
                  key=sync.dot_key)


def _commit_ops(s: Session, ops: list[mf.Op], local: dict[str, sync.LocalItem],
                objects: list[str]) -> None:
    """One delta segment, then the index rows it settles and the objects it makes live."""
    if not ops:
        return
    dot = s.commit(ops)
    with s.index.transaction():
        for op in ops:
            path, entry = op["p"], op["e"]
            if entry is None:
                s.index.remove(path)
                continue
            loc = local[path]
            if entry.get("t") == "f":  # as read; its ctime and inode if the scan saw the same
                same = loc[2:5] == (int(entry["s"]), int(entry["m"]), int(entry["x"]))
                loc = sync.LocalItem(path, "f", int(entry["s"]), int(entry["m"]),
                                     int(entry["x"]), "", loc.ctime if same else 0,
                                     loc.ino if same else 0)
            s.index.put(sync.row_from(loc, dot, str(entry.get("h", ""))))
        s.index.clear_pending(set(objects))


def settings(folder: str | None, keep_days: int | None = None) -> SettingsResult:
    """The folder's settings; a change is checked before it is saved."""
    binding = find_binding(folder)
    if keep_days is not None:
        with folder_lock(binding):
            if not 0 <= keep_days <= MAX_KEEP_DAYS:
                raise UsageError(f"--keep-days {keep_days} is not from 0 to {MAX_KEEP_DAYS}")
            binding.keep_days = keep_days
            binding.save()
    return SettingsResult(folder=binding.folder, keep_days=binding.keep_days)


def mark(folder: str | None) -> MarkResult:
    """(Re)write the folder marker: the user says this folder, as it is, is the bound one."""
    binding = find_binding(folder)
    with folder_lock(binding):
        if not Path(binding.folder).is_dir():
            raise UsageError(f"the bound folder {binding.folder} does not exist")
        path = write_marker(binding)
    audit.record("mark", vault=binding.vault_id, device=binding.device, folder_id=binding.id)
    return MarkResult(folder=binding.folder, marker=str(path))
