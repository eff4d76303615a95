"""status and ranged reads: what differs between the folder and the vault, and
reading one file of the vault without the folder.
"""

from __future__ import annotations

import time

import msgspec

from .. import format as fmt
from .. import reader as readers
from .. import remotes, sync
from ..errors import (
    GuardError,
    UsageError,
)
from ..results import Exposure, Reencryption, StatusCounts, StatusResult
from ..session import UI, Session, session
from ..state import (
    check_marker,
)
from .common import _counts, _scan
from .pull import _pull_plan
from .push import _push_plan
from .rotate import _exposure


def status(folder: str | None, ui: UI | None = None) -> StatusResult:
    with session(folder, ui, scan=True) as s:
        try:
            check_marker(s.binding)
        except GuardError as exc:
            s.ui.warn(str(exc))
        _lost_note(s)
        local = _scan(s)
        up, _rows = _push_plan(s, local)
        down, _remote, _n = _pull_plan(s, local)
        return StatusResult(
            folder=s.binding.folder, remote=remotes.redact(s.binding.remote),
            vault=s.binding.vault_id,
            device=s.binding.device, epoch=s.ring.head.epoch,
            vault_code=fmt.vault_code(s.binding.vault_id),
            files=s.state.count_files(), exposed=exposure(s),
            reencryption=unfinished(s),
            to_push=sorted([i.path for i in up.upload] + [i.path for i, _ in up.put]
                           + [r.path for r in up.delete]),
            to_pull=sorted([d for d, _t, _e in down.download + down.make + down.meta]
                           + [r.path for r in down.delete]),
            conflicts=down.conflicts, unreadable=sorted(s.unreadable), late=sorted(up.late),
            in_sync=not (up.upload or up.put or up.delete or down.download or down.make
                         or down.meta or down.delete or s.unreadable or up.late),
            counts=StatusCounts(
                to_push=_counts([*("f" for _ in up.upload), *(i.kind for i, _ in up.put),
                                 *(r.kind for r in up.delete)]),
                to_pull=_counts([*("f" for _ in down.download),
                                 *(str(e.get("t")) for _d, _t, e in down.make + down.meta),
                                 *(r.kind for r in down.delete)]),
                push_deletes=_counts(r.kind for r in up.delete),
                pull_deletes=_counts(r.kind for r in down.delete)),
        )


LOST_DAYS = 7  # how long status repeats that a commit had to drop staged versions


def _lost_note(s: Session) -> None:
    """Staged versions a commit dropped (no key opens them any more, ops/write._lost): a
    mount runs unattended, so status says so too, for a week after the last."""
    from .write import LOST

    note = s.index.get_meta(LOST, None)
    if not isinstance(note, dict) or time.time() - float(note.get("at", 0)) > LOST_DAYS * 86400:
        return
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(note["at"])))
    s.ui.warn(f"{int(note.get('files', 0))} staged version(s) of a mount of this vault could "
              f"not be committed (last on {when}): a re-encryption deleted the key they were "
              "written under and this device's key does not open them; their paths keep "
              "their last committed version (the audit log has the write-lost record)")


def unfinished(s: Session) -> Reencryption | None:
    """A re-encryption left half done (ops.rekey keeps the record), typed for the results."""
    from . import rekey

    half = rekey.unfinished(s)
    return None if half is None else msgspec.convert(half, Reencryption)


def exposure(s: Session) -> list[Exposure]:
    """Files a removed member could read, per member (ops.rotate counts them)."""
    return msgspec.convert(_exposure(s), list[Exposure])


def open_reader(folder: str | None, path: str,
                cache: readers.ChunkCache | None = None) -> readers.FileReader:
    """The vault's current version of ``path``, read by byte ranges (``.read(offset, n)``)
    without downloading the file or writing plaintext anywhere; the folder is not touched.
    The reader outlives the session: it holds the version's entry and key, not the lock."""
    with session(folder) as s:
        sibs = s.state.siblings(sync.check_rel_path(path))
        if not sibs:
            raise UsageError(f"{path}: not in the vault")
        _dot, entry = sync.newest(sibs)
        if entry.get("t") != "f":
            raise UsageError(f"{path}: not a file in the vault")
        return readers.FileReader(s.transport, entry, s.ring.kek, cache, path)
