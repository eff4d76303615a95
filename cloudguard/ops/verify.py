"""verify: compare the manifest with the remote, and with --read-data
authenticate every blob as a pull would.
"""

from __future__ import annotations

from typing import Literal

from .. import format as fmt
from .. import manifest as mf
from .. import sync
from ..errors import (
    IntegrityError,
)
from ..results import VerifyResult
from ..session import UI, Session, session
from .common import _audited, _log


def verify(folder: str | None, read_data: bool = False, ui: UI | None = None
           ) -> VerifyResult:
    with _audited("verify", folder), session(folder, ui, refetch=True) as s:
        result = _verify(s, read_data)
        _log(s, "verify", read_data=read_data, files=result.files, objects=result.objects)
        return result


def _verify(s: Session, read_data: bool) -> VerifyResult:
    failures: list[str] = []
    files = [(p, e) for p, (_d, e) in sync.view(s.state).items() if e.get("t") == "f"]
    groups = sync.group_by_object(files)
    # On a local remote the "backend hash" is computed by reading every object anyway: read
    # and authenticate them instead (stronger, same cost); there is no MD5 recorded to compare.
    authenticate = read_data or s.transport.local
    stored = s.transport.list(sync.DATA_PREFIX, with_hash=not s.transport.local)
    hashed = 0
    for obj, items in groups.items():
        info = stored.get(obj)
        if info is None:
            failures += [f"{p}: object {obj} is missing" for p, _e in items]
            continue
        end = max(int(e["a"]) + int(e["n"]) for _p, e in items)
        if end > info.size or (len(items) == 1 and int(items[0][1]["a"]) == 0
                               and end != info.size):
            failures += [f"{p}: object {obj} has the wrong size" for p, _e in items]
            continue
        recorded = {str(e["om"]) for _p, e in items if e.get("om")}
        backend = info.hashes.get("md5") or info.hashes.get("MD5")
        if backend and len(recorded) == 1:
            hashed += 1
            if recorded != {backend.lower()}:
                failures += [f"{p}: object {obj} was altered (its MD5 differs from the "
                             "manifest)" for p, _e in items]
    checked = 0
    if authenticate and not failures:
        total = sum(int(e.get("s", 0)) for _p, e in files)
        with s.ui.progress("verify", total) as advance:
            for obj, items in groups.items():
                for path, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                    try:
                        _authenticate(s, entry, reader, err)
                        checked += 1
                        advance(int(entry.get("s", 0)))
                    except IntegrityError as exc:
                        failures.append(f"{path}: {exc}")
    if failures:
        raise IntegrityError("verify failed: " + "; ".join(failures[:20])
                             + (f" (and {len(failures) - 20} more)" if len(failures) > 20 else "")
                             + "; 'cloudguard repair' re-uploads them from local files that "
                             "still match", paths=sorted({f.split(": ", 1)[0] for f in failures}))
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    unreferenced = sorted(n for n in s.listing if n.startswith(sync.DATA_PREFIX) and n not in live)
    checked_how: Literal["data", "md5", "md5 and sizes", "sizes"]
    if authenticate:
        checked_how = "data"
    elif hashed == len(groups):
        checked_how = "md5"
    else:  # WebDAV and others keep no hash: a flipped byte keeps the size
        checked_how = "sizes" if hashed == 0 else "md5 and sizes"
    return VerifyResult(files=len(files), objects=len(groups), read_data=authenticate,
                        hash_checked=hashed, authenticated=checked, unreferenced=unreferenced,
                        checked=checked_how, ok=True)


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def _authenticate(s: Session, entry: mf.Entry, reader: fmt.Reader | None,
                  err: Exception | None) -> None:
    """Read one blob to its end and check it, writing nothing: what verify --read-data and
    repair ask of every file. Raises IntegrityError naming nothing (callers add the path)."""
    if reader is None:
        raise IntegrityError(str(err))
    dek, file_id = sync.dek_of(entry, s.ring.kek)
    fmt.decrypt_blob(reader, _Null(), dek, file_id, str(entry.get("h")))
    fmt.expect_end(reader)
