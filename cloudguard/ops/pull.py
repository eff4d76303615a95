"""pull: bring the folder to the merged manifest without ever losing a local edit.

Everything is downloaded, authenticated and staged first; each path is then
replaced only while it is still what the plan saw.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path
from typing import Any

from .. import format as fmt
from .. import manifest as mf
from .. import sync
from ..errors import (
    CloudguardError,
    FileChangedError,
    IntegrityError,
    Interrupted,
    TransportError,
)
from ..ignore import open_in_office
from ..names import local
from ..results import PullCounts, PullResult
from ..session import UI, Session, session
from ..state import (
    IndexRow,
)
from .common import (
    LATE_MOVED,
    _audited,
    _counts,
    _hasher,
    _late,
    _late_row,
    _log,
    _resolve,
    _scan,
    late_moved,
    relative_paths,
)


def pull(folder: str | None, ui: UI | None = None, paths: list[str] | None = None
         ) -> PullResult:
    """``paths`` (relative to the folder, or absolute inside it): only those, what is under
    them and the folders above them are scanned and brought down; the rest waits."""
    with _audited("pull", folder), session(folder, ui, scan=paths is None, guard=True) as s:
        result = _pull(s, None if paths is None else relative_paths(s, paths, "pull"))
        result.unreadable = sorted(s.unreadable)
        _log(s, "pull", files=len(result.downloaded), deleted=len(result.deleted),
             conflicts=len(result.conflicts), errors=len(result.errors) or None)
        return result


def _pull_plan(s: Session, local: dict[str, sync.LocalItem], scope: list[str] | None = None
               ) -> tuple[sync.PullPlan, dict[str, tuple[str, mf.Entry]], int]:
    """Only paths whose remote dot differs from the one last synced need a look: their
    entries and index rows are read, nothing else is (a big vault stays cheap to pull).
    With a ``scope``, only paths at or under it, and the folders above it."""
    heads = sync.heads(s.state)
    known = s.index.dots()
    # never .cloudguard (ours), nor what the scan could not read: that waits, as it was
    held = [*s.unreadable, sync.MARKER_DIR]

    def looked_at(p: str) -> bool:
        if sync.under(p, held):
            return False
        return scope is None or sync.under(p, scope) or any(
            root.startswith(p + "/") for root in scope)

    onto = set(late_moved(s))  # a late copy moved onto a path with that very dot (HH2)
    wanted = {p: d for p, d in heads.items()
              if (known.get(p) != d or p in onto) and looked_at(p)}
    gone = [p for p in known if p not in heads and looked_at(p)]
    remote = sync.view_of(s.state, wanted)
    rows = s.index.rows_for([*wanted, *gone])
    first = not known  # nothing synced yet: the folder's files are old copies, not edits
    kept: dict[str, set[str]] = {}
    if first:
        for path in [p for p in local if p not in heads or p in wanted]:
            hashes = {str(e.get("h")) for _p, _d, e, _g in s.state.attic(path)
                      if e.get("t") == "f"}
            if hashes:
                kept[path] = hashes
    hasher = _hasher(s.folder)
    plan = sync.plan_pull(local, rows, remote, hasher, s.labels(),
                          lambda p: p in local or p in heads or p in known, s.binding.device,
                          first, kept, functools.partial(open_in_office, s.folder),
                          _late(s, hasher))
    return plan, remote, len(heads)


def _pull(s: Session, scope: list[str] | None = None) -> PullResult:
    """Stage every download (nothing lands unless all authenticate), then land path by path:
    moves aside, deletes (deepest first), folders, files, links. An error on one path is
    reported in ``errors`` (one line naming it) and the rest still arrives."""
    resolved = _resolve(s)
    local = _scan(s, scope)
    plan, remote, _n = _pull_plan(s, local, scope)
    _check_space(s, plan.download)
    for path in plan.held_open:
        s.ui.warn(f"{path} holds a removed member's late content and is open in an office "
                  "program: close it and pull again (until then it is not pushed)")
    errors: list[str] = []
    staged = _stage_all(s, plan.download, errors)
    expect = dict(local)  # what each path holds now, as far as this pull knows
    for path, name in plan.aside:
        try:
            sync.move_aside(s.folder, path, name, expect[path])
            expect.pop(path)
            s.index.remove(path)
        except FileChangedError:
            s.ui.warn(f"{path} changed during the pull; kept it, pull again")
        except (CloudguardError, OSError) as exc:
            errors.append(_path_error(path, exc))
    deleted = _delete_local(s, plan.delete, expect, errors)
    for dest, dot, entry in sorted(plan.make, key=lambda m: m[0]):
        if entry.get("t") == "d":
            try:
                sync.make_dir(s.folder, dest, int(entry.get("x", 0o700)))
                s.index.put(sync.row_from_entry(dest, dot, entry))
            except (CloudguardError, OSError) as exc:
                errors.append(_path_error(dest, exc))
    written: list[str] = []
    for item, dot, entry in staged:
        item.dest = _around_folder(s, plan, item.dest, dot, entry)
        try:
            sync.commit_staged(s.folder, item, expect.get(item.dest))
        except FileChangedError:
            s.ui.warn(f"{item.dest} changed during the pull; kept it, pull again for the "
                      "remote version")
            continue
        except (CloudguardError, OSError) as exc:
            errors.append(_path_error(item.dest, exc))
            continue
        written.append(item.dest)
        if item.dest not in plan.conflicts:
            s.index.put(_landed_row(s, item.dest, dot, entry))
    for dest, dot, entry in plan.make:
        if entry.get("t") == "l":
            dest = _around_folder(s, plan, dest, dot, entry)
            try:
                sync.make_link(s.folder, dest, str(entry.get("l", "")), expect.get(dest))
            except FileChangedError:
                s.ui.warn(f"{dest} changed during the pull; kept it, pull again for the "
                          "remote version")
                continue
            except (CloudguardError, OSError) as exc:
                errors.append(_path_error(dest, exc))
                continue
            link = sync.local_item(s.folder, dest)
            if link is not None and dest not in plan.conflicts:
                s.index.put(sync.row_from(link, dot, ""))
    updated: list[str] = []
    for path, dot, entry in plan.meta:
        try:
            sync.apply_meta(s.folder, path, expect.get(path), entry)
        except FileChangedError:
            s.ui.warn(f"{path} changed during the pull; kept it")
            continue
        except (CloudguardError, OSError) as exc:
            errors.append(_path_error(path, exc))
            continue
        updated.append(path)
        s.index.put(_landed_row(s, path, dot, entry))
    with s.index.transaction():
        for path, dot, entry in plan.restate:
            s.index.put(sync.row_from_entry(path, dot, entry))
        for loc, dot, entry in plan.adopt:
            s.index.put(sync.row_from(loc, dot, str(entry.get("h", ""))))
        for path in plan.forget:
            s.index.remove(path)
        for path in plan.forget:
            rem = remote.get(path)
            if rem is not None:  # conflict: remember the remote version, so ours replaces it
                s.index.put(sync.row_from_entry(path, rem[0], rem[1]))
    onto = late_moved(s)
    if onto:  # a late copy replaced or removed now needs no more looks
        rows = s.index.rows_for(onto)
        s.index.set_meta(LATE_MOVED, [p for p in onto
                                      if p in rows and _late_row(s, rows[p])])
    kinds = {r.path: r.kind for r in plan.delete}
    return PullResult(
        downloaded=sorted(written), updated=updated, deleted=deleted,
        conflicts=sorted(resolved + plan.conflicts), skipped=plan.skipped, errors=errors,
        unreadable=[],  # pull() fills it: the scan's
        counts=PullCounts(downloaded=_counts("f" for _ in written),
                          made=_counts(str(e.get("t")) for _d, _t, e in plan.make),
                          deleted=_counts(kinds.get(p, "f") for p in deleted)))


def _around_folder(s: Session, plan: sync.PullPlan, dest: str, dot: str,
                   entry: mf.Entry) -> str:
    """Where a file or link lands: ``dest``, or a conflict name if a folder is still there (the
    user filled it during the pull, so it was kept). The index then holds the remote version
    at ``dest``, so the next push puts the folder in its place."""
    try:
        if dest in plan.conflicts or not stat.S_ISDIR(os.lstat(local(s.folder, dest)).st_mode):
            return dest
    except OSError:  # nothing there, or a file where a parent folder should be
        return dest
    writer = dot.partition(":")[0]
    labels = s.labels()
    name = sync.conflict_name(dest, int(entry.get("m", 0)), labels.get(writer, writer[:8]),
                              lambda p: os.path.lexists(local(s.folder, p)) or p in plan.conflicts)
    plan.conflicts.append(name)
    s.index.put(sync.row_from_entry(dest, dot, entry))
    return name


def _path_error(path: str, exc: BaseException) -> str:
    """One line naming the path, for a pull that goes on with the others."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return (f"skipped {path}: the path is too long for this device (this folder is deeper "
                "than where it was made, or its filesystem allows shorter names); rename it on "
                "another device or move this folder up")
    if isinstance(exc, OSError):
        return f"skipped {path}: {exc.strerror or exc}"
    return f"skipped {path}: {exc}"


def _stage_all(s: Session, downloads: list[tuple[str, str, mf.Entry]],
               errors: list[str]) -> list[tuple[sync.Staged, str, mf.Entry]]:
    """Every download decrypted into a temp file. Any integrity failure: nothing is kept and
    exit 3; a full disk: nothing is kept and one line saying how much space is needed; any
    other error on one file: that file is reported in ``errors``, the others go on."""
    failures: list[str] = []
    staged: list[tuple[sync.Staged, str, mf.Entry]] = []
    created: list[Path] = []
    total = sum(int(e.get("s", 0)) for _d, _t, e in downloads)
    dots = {d: t for d, t, _e in downloads}
    fetch: list[tuple[str, mf.Entry]] = []
    for dest, dot, entry in downloads:  # what an interrupted pull authenticated already
        reused = sync.reuse_staged(s.folder, dest, str(entry.get("h", "")),
                                   int(entry.get("s", 0)), int(entry.get("x", 0o600)),
                                   int(entry.get("m", 0)))
        if reused is not None:
            staged.append((reused, dot, entry))
        else:
            fetch.append((dest, entry))
    try:
        with s.ui.progress("pull", total) as advance:
            advance(sum(int(e.get("s", 0)) for _st, _d, e in staged))
            for obj, items in sync.group_by_object(fetch).items():
                for dest, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                    try:
                        if reader is None:
                            raise IntegrityError(str(err))
                        staged.append((_stage(s, dest, entry, reader, created), dots[dest],
                                       entry))
                        advance(int(entry.get("s", 0)))
                    except IntegrityError as exc:
                        failures.append(f"{dest}: {exc}")
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        errors.append(_path_error(dest, exc))
                    except sync.NotAFolder as exc:
                        errors.append(_path_error(dest, exc))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, TransportError)):
            # authenticated downloads wait for the next pull instead of being fetched again
            for item, _d, entry in staged:
                sync.keep_staged(s.folder, item, str(entry.get("h", "")))
            sync.discard([], created)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(f"interrupted: {len(staged)} file(s) were downloaded and "
                                  "authenticated; nothing was written into the folder, and the "
                                  "next pull reuses them") from exc
            raise
        sync.discard([st for st, _d, _e in staged], created)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(s, total) from exc
        raise
    if failures:
        sync.discard([st for st, _d, _e in staged], created)
        raise IntegrityError("integrity failure, nothing was written: " + "; ".join(failures)
                             + "; 'cloudguard repair' on a device whose files still match "
                             "re-uploads lost or damaged objects",
                             paths=[f.split(": ", 1)[0] for f in failures])
    return staged


def _free_bytes(folder: Path) -> int | None:
    """None where the filesystem does not say (some FUSE mounts report no blocks at all)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize if st.f_blocks else None


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _no_space(s: Session, needed: int) -> CloudguardError:
    free = _free_bytes(s.folder) or 0
    return CloudguardError(
        f"not enough space for this pull in {s.folder}: it needs {_mib(needed)} and "
        f"{_mib(free)} is free; free {_mib(max(needed - free, 1))} more and pull again "
        "(nothing was written)")


def _check_space(s: Session, downloads: list[tuple[str, str, mf.Entry]]) -> None:
    """Every download is staged beside the files it replaces, so all of it must fit at once;
    refused before anything is fetched."""
    needed = sum(int(e.get("s", 0)) for _d, _t, e in downloads)
    free = _free_bytes(s.folder) if needed else None
    if free is not None and needed > free:
        raise _no_space(s, needed)


def _stage(s: Session, dest: str, entry: mf.Entry, reader: fmt.Reader,
           created: list[Path]) -> sync.Staged:
    dek, file_id = sync.dek_of(entry, s.ring.kek)

    def fill(fh: Any) -> None:
        fmt.decrypt_blob(reader, fh, dek, file_id, str(entry.get("h", "")))
        fmt.expect_end(reader)

    return sync.stage(s.folder, dest, fill, int(entry.get("x", 0o600)), int(entry.get("m", 0)),
                      created)


def _landed_row(s: Session, dest: str, dot: str, entry: mf.Entry) -> IndexRow:
    """The index row of a file just landed, with its ctime and inode: what a later pull checks
    before it deletes or replaces the file."""
    row = sync.row_from_entry(dest, dot, entry)
    now = sync.local_item(s.folder, dest)
    return row._replace(ctime=now.ctime, ino=now.ino) if now is not None else row


def _delete_local(s: Session, rows: list[IndexRow], expect: dict[str, sync.LocalItem],
                  errors: list[str]) -> list[str]:
    """Deepest first; a path the user changed since the plan is kept, and its index row goes,
    so the next push uploads it as a new version. ``expect`` loses each path deleted."""
    deleted: list[str] = []
    for row in sorted(rows, key=lambda r: r.path.count("/"), reverse=True):
        try:
            sync.remove_local(s.folder, row.path, expect[row.path])
            expect.pop(row.path)
            deleted.append(row.path)
            s.index.remove(row.path)
        except FileChangedError:
            s.ui.warn(f"kept {row.path}: it changed during the pull; the next push uploads it")
            s.index.remove(row.path)
        except FileNotFoundError:
            s.index.remove(row.path)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:  # kept as synced: the next pull tries again
                errors.append(_path_error(row.path, exc))
                continue
            s.ui.warn(f"kept folder {row.path}: it is not empty; the next push uploads it")
            s.index.remove(row.path)
    return deleted
