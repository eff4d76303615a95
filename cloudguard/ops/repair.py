"""``cloudguard repair``: ways out of exit 3 (docs/design.md, "Ways out of exit 3").

Why: ``verify`` finds objects the provider lost or damaged, and a rolled-back or forked
manifest stops every command, but neither said what to do, and nothing could fix them.

* :func:`repair` runs the checks of ``verify --read-data`` and gives every blob of a damaged
  object a new home in a new object: encrypted anew from the local file if its SHA-256 is
  still the manifest's ``h``, else copied as it is if it still authenticates. The new homes
  are committed with ``reloc`` ops (the versions, their dots and history stay); nothing on
  the remote is rewritten in place. What has neither is reported by path.
* :func:`republish` answers a manifest that is older than, or diverges from, what this device
  verified: after the user confirms, it publishes this device's own verified state as a new
  snapshot. It is never automatic, and it is audited (docs/threat-model.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from .. import format as fmt
from .. import manifest as mf
from .. import sync, trust
from ..errors import FileChangedError, HistoryError, IntegrityError, UsageError
from ..held import device_key
from ..layout import descriptor_hash, listing_descriptor, parse_descriptor
from ..names import local
from ..results import RepairResult, RepublishResult
from ..session import (
    UI,
    Session,
    _prefetch,
    _recover_torn_segment,
    _transport,
    session,
)
from ..state import Binding, Index, find_binding, folder_lock
from .common import _audited, _log
from .verify import _authenticate, _Null

Place = tuple[str, str, mf.Entry]  # path, dot, entry


def repair(folder: str | None, ui: UI | None = None) -> RepairResult:
    # refetch: every segment authenticated afresh, as verify does
    with _audited("repair", folder), session(folder, ui, refetch=True) as s:
        result = _repair(s)
        _log(s, "repair", damaged=result["damaged_objects"], repaired=len(result["repaired"]),
             moved=len(result["moved"]), unrepairable=len(result["unrepairable"]),
             segments=s.committed)
        return msgspec.convert(result, RepairResult)


def _inspect(s: Session) -> tuple[dict[str, str], int]:
    """What ``verify --read-data`` checks, object by object: object name -> what is wrong."""
    files = [(p, e) for p, (_d, e) in sync.view(s.state).items() if e.get("t") == "f"]
    groups = sync.group_by_object(files)
    stored = s.transport.list(sync.DATA_PREFIX, with_hash=not s.transport.local)
    bad: dict[str, str] = {}
    for obj, items in groups.items():
        info = stored.get(obj)
        if info is None:
            bad[obj] = "missing"
            continue
        end = max(int(e["a"]) + int(e["n"]) for _p, e in items)
        if end > info.size or (len(items) == 1 and int(items[0][1]["a"]) == 0
                               and end != info.size):
            bad[obj] = "wrong size"
            continue
        recorded = {str(e["om"]) for _p, e in items if e.get("om")}
        backend = info.hashes.get("md5") or info.hashes.get("MD5")
        if backend and len(recorded) == 1 and recorded != {backend.lower()}:
            bad[obj] = "altered (its MD5 differs from the manifest)"
    total = sum(int(e.get("s", 0)) for _p, e in files)
    with s.ui.progress("verify", total) as advance:
        for obj, items in groups.items():
            if obj in bad:
                continue
            for path, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                try:
                    _authenticate(s, entry, reader, err)
                    advance(int(entry.get("s", 0)))
                except IntegrityError as exc:
                    bad.setdefault(obj, f"{path} failed authentication ({exc})")
    return bad, len(files)


def _local_match(s: Session, path: str, entry: mf.Entry) -> tuple[bool, str]:
    """Is the local file the content the manifest names? (the size first, then SHA-256)"""
    full = local(s.folder, path)
    try:
        st = os.lstat(full)
    except OSError:
        return False, "no local copy"
    if not stat.S_ISREG(st.st_mode):
        return False, "no local copy (not a regular file here)"
    if st.st_size != int(entry.get("s", -1)) or sync.hash_file(full) != entry.get("h"):
        return False, "the local file has other content (edited since?)"
    return True, ""


class _Tee:
    """Copies what a blob reader yields into the new object while it is authenticated."""

    def __init__(self, inner: fmt.Reader, out: sync.ObjectWriter) -> None:
        self.inner = inner
        self.out = out

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        if data:
            self.out.write(data)
        return data


def _repair(s: Session) -> dict[str, Any]:
    bad, checked = _inspect(s)
    result: dict[str, Any] = {"files": checked, "damaged_objects": len(bad),
                              "damaged": [{"object": o[len(sync.DATA_PREFIX):], "problem": why}
                                          for o, why in sorted(bad.items())],
                              "repaired": [], "moved": [], "unrepairable": [], "ok": True}
    if not bad:
        return result
    places = s.state.in_objects(o[len(sync.DATA_PREFIX):] for o in bad)
    current = {(p, d) for p, d in s.state.dots()}
    from_local: list[Place] = []
    copy: list[Place] = []
    lost: dict[tuple[str, str], str] = {}
    where: dict[tuple[str, str], str] = {}
    for path, dot, entry in places:
        if entry.get("t") != "f":
            continue
        where[(path, dot)] = str(entry["o"])
        ok, why = _local_match(s, path, entry)
        if ok:
            from_local.append((path, dot, entry))
        elif bad[sync.DATA_PREFIX + str(entry["o"])] == "missing":
            lost[(path, dot)] = why
        else:
            copy.append((path, dot, entry))  # kept only if it authenticates on the way
            lost[(path, dot)] = why
    if from_local or copy:
        ops, name = _rehome(s, from_local, copy, lost, result)
        if ops:
            s.commit([{"p": p, "reloc": locs} for p, locs in sorted(ops.items())])
            s.index.clear_pending({name})
    # a damaged object is no place to go back to: it is not kept for undoing these moves
    s.state.forget_moves(objects=[o[len(sync.DATA_PREFIX):] for o in bad])
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    gone = sorted(o for o in bad if o not in live and o in s.listing)
    s.transport.delete(gone)  # damaged and referenced by nothing now
    for name in gone:
        s.listing.pop(name, None)
    result["unrepairable"] = [
        {"path": p, "version": d, "current": (p, d) in current, "object": where[(p, d)],
         "problem": bad[sync.DATA_PREFIX + where[(p, d)]], "reason": why}
        for (p, d), why in sorted(lost.items())]
    result["ok"] = not lost
    return result


def _rehome(s: Session, from_local: list[Place], copy: list[Place],
            lost: dict[tuple[str, str], str], result: dict[str, Any]
            ) -> tuple[dict[str, dict[str, dict[str, Any]]], str]:
    """One new pack: blobs encrypted anew from matching local files (fresh DEK and file id,
    under the head's KEK), and intact blobs copied byte for byte out of damaged objects."""
    padding = s.binding.padding != "none"
    new_id = fmt.new_object_id()
    name = sync.DATA_PREFIX + new_id
    s.index.add_pending(name)
    locs: dict[tuple[str, str], dict[str, Any]] = {}
    total = sum(int(e.get("s", 0)) for _p, _d, e in from_local + copy)
    with s.ui.progress("repair", total) as advance, s.transport.writer(name) as raw:
        out = sync.ObjectWriter(raw, md5=not s.transport.local)
        out.write(fmt.pack_header(os.urandom(16)))
        for path, dot, entry in from_local:
            offset = out.count
            item = sync.LocalItem(path, "f", int(entry["s"]), int(entry.get("m", 0)),
                                  int(entry.get("x", 0o600)))
            try:
                made = sync._encrypt_one(s.folder, item, out, s.ring.head_kek,
                                         s.ring.head.kek, padding, advance)
            except (OSError, IntegrityError, FileChangedError) as exc:
                lost[(path, dot)] = f"the local file could not be read again ({exc})"
                continue
            if made["h"] != entry["h"]:
                lost[(path, dot)] = "the local file changed while it was read"
                continue  # its bytes stay in the pack as dead bytes
            locs[(path, dot)] = {"o": new_id, "a": offset, "n": out.count - offset,
                                 "i": made["i"], "k": made["k"], "g": made["g"],
                                 "w": made["w"], "r": int(entry.get("r", 0)) + 1}
            result["repaired"].append(path)
        for obj, items in sync.group_by_object(
                [(f"{p}\x00{d}", e) for p, d, e in copy]).items():
            for key, entry, reader, _err in sync.read_blobs(s.transport, obj, items):
                path, _, dot = key.partition("\x00")
                if reader is None:
                    continue
                offset = out.count
                try:
                    tee = _Tee(reader, out)
                    dek, file_id = sync.dek_of(entry, s.ring.kek)
                    fmt.decrypt_blob(tee, _Null(), dek, file_id, str(entry.get("h")))
                    fmt.expect_end(tee)
                except IntegrityError:
                    continue  # stays lost; what was copied is dead bytes
                if out.count - offset != int(entry["n"]):
                    continue
                locs[(path, dot)] = {"o": new_id, "a": offset, "r": int(entry.get("r", 0)) + 1}
                lost.pop((path, dot), None)
                result["moved"].append(path)
                advance(int(entry.get("s", 0)))
        if padding:
            sync.write_filler(out)
    s.listing[name] = out.count
    digest = out.md5()
    ops: dict[str, dict[str, dict[str, Any]]] = {}
    for (path, dot), loc in locs.items():
        ops.setdefault(path, {})[dot] = {**loc, "om": digest}
    result["repaired"] = sorted(set(result["repaired"]))
    result["moved"] = sorted(set(result["moved"]))
    if not ops:
        s.transport.delete([name])
        s.listing.pop(name, None)
        s.index.clear_pending({name})
    return ops, name


# --- republish ------------------------------------------------------------------------------


def republish(folder: str | None, confirm: Callable[[str], bool], how: str,
              ui: UI | None = None) -> RepublishResult:
    """Publish this device's verified state over a rolled-back or forked remote manifest,
    after ``confirm`` (the user's explicit yes; ``how`` says how it was given, for the audit)."""
    ui = ui or UI()
    try:
        with session(folder, ui):
            return RepublishResult(
                republished=False, reason=None, snapshot=None, files=0,
                message="the remote manifest is not rolled back or forked: nothing to "
                        "republish")
    except HistoryError as exc:
        reason = str(exc).split("; if this device's copy")[0]
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; 'repair --republish' answers only a rolled-back, "
                             "truncated or forked manifest, not this (docs/design.md, \"Ways "
                             "out of exit 3\")") from exc
    binding = find_binding(folder)
    with _audited("republish", folder), folder_lock(binding), _parts(binding) as (index, state):
        s = _session_without_history(binding, index, state, ui)
        seen = index.get_meta("seen", {})
        if not state.dominates(mf.clamp_ctx(seen, s.ring.view.cutoffs)):  # as mf.load compares them
            raise IntegrityError(
                f"this device's own copy of the manifest is older than what it has seen "
                f"({reason}): it holds no complete verified state to republish; republish "
                "from another device, or clone again with a recovery kit")
        files = state.count_files()
        question = (
            f"The remote manifest does not match what this device verified:\n  {reason}\n"
            f"Republishing writes this device's own verified state ({files} files, as of its "
            "last sync) to the remote as a new snapshot. Changes that only other devices saw "
            "and that the remote no longer holds are not in it: run this on those devices "
            "too (their states merge); versions it replaces stay in the history. Do this only "
            "if you trust this device's copy. Republish?")
        if not confirm(question):
            _log(s, "republish", ok=False, declined=True, reason=reason)
            raise UsageError("not confirmed: nothing was published")
        name = s.snapshot()
        _log(s, "republish", reason=reason, confirmed=how, snapshot=name, files=files,
             seen=dict(seen))
    try:
        with session(folder, ui):  # what every command does next must now pass
            pass
    except HistoryError as exc:
        still = str(exc).split("; if this device's copy")[0]
        raise IntegrityError(
            f"republished this device's state as {name}, but the remote is still blocked: "
            f"{still}; the device that wrote those segments must run 'cloudguard repair "
            "--republish' too") from exc
    return RepublishResult(republished=True, reason=reason, snapshot=name, files=files,
                           message=f"republished this device's state as {name}")


@contextmanager
def _parts(binding: Binding) -> Iterator[tuple[Index, mf.State]]:
    index = Index(binding.dir / "index.db")
    try:
        state = mf.State(binding.dir / "manifest.db")
        try:
            yield index, state
        finally:
            state.close()
    finally:
        index.close()


def _session_without_history(binding: Binding, index: Index, state: mf.State, ui: UI
                             ) -> Session:
    """A session on this device's stored state (built only from segments it authenticated
    earlier, and left as it was by the load that failed), with the key chain verified as
    always; the remote's manifest segments are not applied."""
    transport = _transport(binding)
    me = device_key(binding).load()
    listing = {n: o.size for n, o in transport.list().items()}
    cache = mf.SegmentCache(binding.dir / "segments")
    segments = {n: size for n, size in listing.items() if n.startswith(mf.PREFIX)}
    fetch = _prefetch(transport, listing, cache, None, set(segments))
    raw = listing_descriptor(fetch, listing, binding.remote)
    parse_descriptor(raw, binding.remote)
    ring = trust.open_ring(binding.vault_id, listing, fetch, descriptor_hash(raw),
                           binding.device, me, index, ui.warn, binding.enrolled)
    trust.merge_if_needed(ring, transport, index, ui.warn)
    _recover_torn_segment(index, transport, listing, ring)
    own = binding.device
    used = [p[1] for n in segments if (p := mf.parse_name(n)) and p[0] == own]
    own_seq = max([*used, int(index.get_meta("seen", {}).get(own, 0)), state.ctx.get(own, 0)])
    heads = {}
    head = mf.applied_hash(state.consumed(), own, state.ctx.get(own, 0))
    if head is not None:
        heads[own] = head
    loaded = mf.Loaded(state, segments, own_seq, 0, heads)
    return Session(binding, transport, index, me, ring, loaded, listing, ui, cache)


__all__ = ["repair", "republish"]
