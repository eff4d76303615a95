"""What several operations share: the audit record of each operation, the
folder scan with case-folding resolution, and counting what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from .. import audit, folding, sync
from .. import manifest as mf
from ..errors import (
    CloudguardError,
    IntegrityError,
    UsageError,
)
from ..names import from_disk, local
from ..results import Counts, Request
from ..session import Session
from ..state import (
    IndexRow,
    find_binding,
)

HEALED = "healed_over"  # index meta: every late snapshot this device has mended over


def _mend(s: Session) -> None:
    """A removed member's late snapshot that replaced honest segments leaves readers that hold
    nothing without a base (manifest/cover.py, II1): this device, which holds those writes,
    writes a snapshot of its own, once for each late snapshot it finds: a provider that shows
    one subset of them at a time must not make it write a snapshot at every run."""
    healed = set(s.index.get_meta(HEALED) or ())
    if s.loaded.uncovered and not healed.issuperset(s.loaded.late_snapshots):
        s.snapshot()
        s.index.set_meta(HEALED, sorted(healed.union(s.loaded.late_snapshots)))


def _resolve(s: Session) -> list[str]:
    """The conflict copies made of concurrent versions (a list, as pull reports them); first
    a snapshot where readers that hold nothing would have no base (_mend)."""
    _mend(s)
    ops = sync.resolve_siblings(s.state, s.labels())
    if ops:
        s.commit(ops)
    if folding.folds(s.folder):  # names this folder cannot hold apart get names of their own
        renamed = folding.resolve(s.state)
        if renamed:
            s.commit(renamed)
            s.ui.warn(f"{len(renamed) // 2} path(s) differ from others only by case or Unicode "
                      f"normalisation, which this folder cannot tell apart: renamed to "
                      f"'... ({folding.SUFFIX})' on every device")
    return sorted(op["p"] for op in ops if not op["rm"])


def _counts(kinds: Iterable[str]) -> Counts:
    """Files, folders and links apart: "updated 42" must not call 40 folders files."""
    return Counts.of(kinds)


def _scan(s: Session, scope: list[str] | None = None) -> dict[str, sync.LocalItem]:
    """The folder as it is now: the scan started with the session, if nothing since could have
    changed it, else a fresh one. With a ``scope``, only those paths (and their parents and
    contents)."""
    if scope is not None:
        unreadable: list[str] = []
        items = sync.scan_paths(s.folder, scope, s.ui.warn, unreadable)
    elif s.prescan is not None:
        items, warnings, unreadable = s.prescan()
        s.prescan = None  # used once
        for warning in warnings:
            s.ui.warn(warning)
    else:
        unreadable = []
        items = sync.scan(s.folder, s.ui.warn, unreadable)
    s.unreadable = unreadable
    if s.ignore is not None:
        ignore = s.ignore
        items = {p: item for p, item in items.items() if not ignore(p)}
    sync.clear_staging(s.folder)  # temp files of a pull that was killed; we hold the lock
    if folding.folds(s.folder):  # the disk's spelling of a manifest path is that path
        items = folding.alias(items, [p for p, _d in s.state.dots()])
    return items


def relative_paths(s: Session, paths: list[str], verb: str) -> list[str]:
    """Folder-relative paths; an absolute path must lie inside the folder."""
    root = s.folder.absolute()
    out: list[str] = []
    for raw in paths:
        given = Path(raw)
        if given.is_absolute():
            try:
                rel = given.relative_to(root).as_posix()
            except ValueError as exc:
                raise UsageError(f"{raw}: not inside the folder {root}") from exc
        else:
            rel = given.as_posix()
        rel = from_disk(rel)  # a name that is not UTF-8, as the manifest writes it
        if rel in ("", "."):
            raise UsageError(f"{raw}: the folder itself; {verb} it without paths")
        out.append(sync.check_rel_path(rel))
    return sorted(set(out))


def _hasher(folder: Path) -> Callable[[str], str]:
    return lambda rel: sync.hash_file(local(folder, rel))


def _log(s: Session, event: str, **fields: Any) -> None:
    audit.record(event, vault=s.binding.vault_id, device=s.binding.device,
                 epoch=s.ring.head.epoch, **fields)


@contextmanager
def _audited(event: str, folder: str | None, every: bool = False) -> Iterator[None]:
    """Integrity failures are logged too: they are what an audit is for. With ``every``, any
    failure or interrupt is (an operation that leaves work unfinished, like re-encryption)."""
    try:
        yield
    except IntegrityError:
        audit.record(event, ok=False, exit_code=IntegrityError.exit_code,
                     folder_id=_binding_id(folder))
        raise
    except BaseException as exc:
        if every and not isinstance(exc, UsageError):  # a usage error never started anything
            audit.record(event, ok=False, interrupted=True, error=type(exc).__name__,
                         exit_code=getattr(exc, "exit_code", 1), folder_id=_binding_id(folder))
        raise


def _binding_id(folder: str | None) -> str | None:
    try:
        return find_binding(folder).id
    except CloudguardError:
        return None


def _safe_hasher(folder: Path) -> Callable[[str], str]:
    """A file that cannot be read matches nothing: it is then uploaded, which reports it."""
    def digest(rel: str) -> str:
        try:
            return sync.hash_file(local(folder, rel))
        except OSError:
            return ""
    return digest


# Asked with the verified enrolment request before ``device approve`` or ``reject`` acts.
Confirm = Callable[[Request], bool]


def _late(s: Session, hasher: Callable[[str], str]
          ) -> Callable[[sync.LocalItem, IndexRow], bool]:
    """Does a local file or link still hold what this folder took from a removed member's
    late write (its synced row names a late version, same content)? Such a copy is never
    pushed as this device's, and a pull replaces it (review round 16, EE3; round 17, FF1:
    judged by what this folder itself received, never by content found in the history)."""
    def late(item: sync.LocalItem, row: IndexRow) -> bool:
        if item.kind != row.kind or not _late_row(s, row):
            return False
        if item.kind == "l":
            return item.target == row.target
        return item.size == row.size and hasher(item.path) == row.sha256
    return late


LATE_MOVED = "late_moved"  # index meta: paths a late copy was moved onto (round 19, HH2)


def late_moved(s: Session) -> list[str]:
    """Where a push moved a late copy's row: the pull looks at these paths even when the
    row's dot is the live one's (the late copy was moved onto a path its carrying push also
    wrote), or the copy would stay in the folder for good (review round 19, HH2)."""
    got = s.index.get_meta(LATE_MOVED, [])
    return [p for p in got if isinstance(p, str)] if isinstance(got, list) else []


def _late_row(s: Session, row: IndexRow) -> bool:
    """Does this index row name a removed member's late version (file or link)? The version
    is the one of the row's dot with the row's content, wherever it is: a late copy renamed
    here takes its row along, so renaming it again or changing its mode does not make it
    this device's (review round 18, GG1); and one dot names a whole push, so the version
    found at the row's path counts only with the row's content, or a late copy moved onto a
    path the same push wrote would be judged by that other version (round 19, HH1)."""
    cuts = s.state.cuts
    if not cuts or not row.dot or row.kind not in ("f", "l"):
        return False
    tag = mf.resolutions.content_tag(cast(mf.Entry, {
        "t": row.kind, "h": row.sha256 if row.kind == "f" else None,
        "l": row.target if row.kind == "l" else None}))
    entry = s.state.version(row.path, row.dot)
    if entry is None or mf.resolutions.content_tag(entry) != tag:
        entry = mf.resolutions.held(s.state, row.dot, tag)
    return entry is not None and mf.resolutions.late_version(row.dot, entry, cuts)
