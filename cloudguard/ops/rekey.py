"""Re-encryption (``key rotate --reencrypt``, ``device remove --reencrypt``) that survives an
interruption and says so.

Why: re-encryption is what makes a revocation real, and it reads and rewrites every file. Done
as one all-or-nothing step, a kill (or a Ctrl-C, a dropped network) after the new key
generation was published left every file under the old keys, while ``doctor`` said ok. Here:

* the intent is recorded in the index before the new generation is published, and cleared
  only when the old ciphertext is deleted; ``status``, ``doctor`` and ``key list`` show it;
* re-encrypted blobs are committed in batches (``reloc`` ops that carry the new key fields,
  format.md), so a re-run skips every file whose DEK was first wrapped under the new
  generation or a later one, and finishes the rest;
* the audit log gets a record when the operation starts, when a failure ends it, and when a
  later run finds it was killed.

The intent is local: the device that started the re-encryption is the one that sees it and
finishes it (another device sees the exposure, not the unfinished run).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from .. import chain, sync, trust
from .. import format as fmt
from .. import manifest as mf
from ..errors import CloudguardError, IntegrityError, KeyStoreError, UsageError, named
from ..keys import now_iso
from ..session import INTENT, Session, intent
from . import localwrap
from .common import _log

BATCH_BYTES = 64 * 1024 * 1024  # re-encrypted ciphertext committed in one delta segment ...
BATCH_FILES = 1000  # ... or this many files, whichever comes first
after_batch: Callable[[int], None] | None = None  # tests: called after each committed batch

FIX = "cloudguard key rotate --reencrypt finishes it (files already done are not redone)"


def begin(s: Session, remove: str | None, earlier: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """Written before the new generation is published: a kill right after it is seen too.
    An ``earlier`` unfinished run that this one supersedes hands on its old objects."""
    _warn_clamped(s)
    started: dict[str, Any] = {"epoch": s.ring.head.epoch + 1, "commit": None,
                               "removed": remove, "started": now_iso(),
                               "old": list((earlier or {}).get("old", [])), "noted": False}
    s.index.set_meta(INTENT, started)
    _log(s, "reencrypt-start", epoch_to=started["epoch"], removed=remove)
    return started


def published(s: Session, started: dict[str, Any], commit: chain.Commit) -> None:
    s.state.ended = s.ring.view.ended()  # the commit ends the older history (format.md)
    s.state.ended_since = trust.ended_since(s.ring.view, s.index, time.time())
    started["commit"] = commit.id
    started["epoch"] = commit.epoch
    s.index.set_meta(INTENT, started)


def _fresh(s: Session, started: dict[str, Any]) -> set[str]:
    """Generations a removed member never held: every one the re-encryption's commit does not
    end (before it is published: its epoch and every later one). A concurrent branch that
    gave a member now out a slot is not fresh, however high its epoch (review round 7, V2
    (b); round 8, W4)."""
    found = s.ring.view.find(started["commit"]) if started.get("commit") else None
    if found is not None:
        ended = s.ring.view.ended_by(found)
        return {c.kek for c in [*s.ring.view.commits.values(), *s.ring.view.voided.values()]
                if c.kek not in ended}
    every = [*s.ring.view.commits.values(), *s.ring.view.voided.values()]
    return {c.kek for c in every if c.epoch >= int(started["epoch"])}


def _undone(s: Session, fresh: set[str]) -> list[tuple[str, str, mf.Entry]]:
    """Current file versions, and kept late ones of spared members (_spared), whose DEK was
    first wrapped under an older generation."""
    every = [*((p, d, e) for p, sibs in s.state.items() for d, e in sibs.items()),
             *((p, d, e) for p, d, e, _rb in _spared_late(s))]
    return [(p, d, e) for p, d, e in every
            if e.get("t") == "f" and str(e.get("w", e.get("g"))) not in fresh]


def _spared(s: Session) -> Callable[[str], bool]:
    """Late dots a re-encryption keeps: those of members no counting removal took out (only
    challenged ones, or only a void add brought them in), and those a counting removal
    vouched for (at or below its cutoff) that a backdated removal made late. A thief's
    backdated removal of an honest member must not end that member's work when the victims
    answer it with a re-encryption (review round 6, U4; round 8, W3); a counting removal's
    late versions past its cutoff may be a thief's writes, and go (after _warn_clamped)."""
    vouched = s.ring.view.vouched()

    def spared(dot: str) -> bool:
        dev, _, seq = dot.partition(":")
        return dev not in vouched or int(seq) <= vouched[dev]
    return spared


def _spared_late(s: Session) -> list[tuple[str, str, mf.Entry, Any]]:
    """(path, dot, entry, remover) of every kept late version a re-encryption keeps."""
    spared, cuts = _spared(s), s.ring.view.cutoffs
    return [(p, d, row["e"], row.get("rb")) for p, kept in s.state.attic_rows()
            for d, row in kept.items() if mf.late_dot(d, cuts) and spared(d)]


def landed(s: Session, started: dict[str, Any]) -> bool:
    """Did the new generation reach the remote? If not, the run never began for real."""
    if started.get("commit") in s.ring.view.commits:
        return True
    return s.ring.head.epoch >= int(started["epoch"]) and bool(_fresh(s, started))


def unfinished(s: Session) -> dict[str, Any] | None:
    """What ``status``, ``doctor`` and ``key list`` show about a re-encryption left half done."""
    started = intent(s.index)
    if started is None or not landed(s, started):
        return None
    fresh = _fresh(s, started)
    total = sum(1 for _p, sibs in s.state.items() for e in sibs.values() if e.get("t") == "f")
    total += sum(1 for _p, _d, e, _rb in _spared_late(s) if e.get("t") == "f")
    left = len(_undone(s, fresh))
    kept = sum(1 for _p, _d, e, _g in s.state.attic()
               if e.get("t") == "f" and str(e.get("w", e.get("g"))) not in fresh)
    return {"epoch": int(started["epoch"]), "commit": started.get("commit"),
            "removed": started.get("removed"), "started": started.get("started"),
            "files_left": left, "files_done": total - left, "kept_versions_left": kept,
            "fix": FIX}


def run(s: Session, started: dict[str, Any], resumed: bool) -> dict[str, Any]:
    """Re-encrypt what is not done yet, in committed batches; then drop the history (its
    blobs are under keys a removed member may know), snapshot, and delete old ciphertext and
    key objects."""
    if resumed:
        started["noted"] = False
        s.index.set_meta(INTENT, started)
        _log(s, "reencrypt-resume", epoch_to=started["epoch"], commit=started.get("commit"))
    fresh = _fresh(s, started)
    work = _undone(s, fresh)
    unread: set[tuple[str, str]] = set()
    try:
        redone = _reencrypt(s, started, work,
                            {(p, d) for p, d, _e, _rb in _spared_late(s)}, unread)
    except KeyboardInterrupt as exc:
        raise Unfinished(_left(s, fresh)) from exc
    except CloudguardError:
        s.ui.warn(_left(s, fresh))
        raise
    if [w for w in _undone(s, fresh) if (w[0], w[1]) not in unread]:
        raise IntegrityError("an entry was not re-encrypted (a concurrent push?); run "
                             "cloudguard key rotate --reencrypt again")
    deleted = _finish(s, started)
    s.index.set_meta(INTENT, None)
    return {"epoch": s.ring.head.epoch, "commit": s.ring.head.id, "reencrypted": True,
            "removed": started.get("removed"), "resumed": resumed, "files": redone,
            "deleted_objects": deleted}


def _warn_clamped(s: Session) -> None:
    """Versions a clamp moved into the history are kept until a re-encryption ends the
    history. Those of members that only challenged removals took out are re-encrypted and
    kept (_spared); say so, and say how many others it forgets before that happens, so that
    the user can restore what it needs."""
    cuts, spared = s.ring.view.cutoffs, _spared(s)
    late = [(path, dot) for path, dot, _e, _g in s.state.attic() if mf.late_dot(dot, cuts)]
    kept = {path for path, dot in late if spared(dot)}
    clamped = {path for path, dot in late if not spared(dot)}
    if kept:
        s.ui.warn(f"this re-encryption keeps the late versions of {len(kept)} files of members "
                  "that only challenged removals took out (e.g. "
                  f"{sorted(kept)[0]}; cloudguard restore --late-of MEMBER)")
    if not clamped:
        return
    what = (f"this re-encryption forgets the versions of {len(clamped)} files that removals "
            f"moved into the history (e.g. {sorted(clamped)[0]}); a removed member wrote "
            "them after its removal (cloudguard history, restore --late-of)")
    if s.ui.confirm is not None and not s.ui.confirm(f"{what}. Forget them?"):
        raise UsageError(f"{what}; nothing was re-encrypted")
    s.ui.warn(what)


class Unfinished(CloudguardError):
    """Interrupted (Ctrl-C): what is done is committed; the message says what is left."""


def _unread(s: Session, path: str, why: str, unread: set[tuple[str, str]], dot: str) -> None:
    unread.add((path, dot))
    s.ui.warn(f"{path}: a kept late version ({dot}) could not be read ({why}); it is not "
              "re-encrypted and ends with the old keys")


def _left(s: Session, fresh: set[str]) -> str:
    return (f"the re-encryption is unfinished: {len(_undone(s, fresh))} files are still under "
            f"older keys (files done so far are committed); {FIX}")


def _reencrypt(s: Session, started: dict[str, Any],
               work: list[tuple[str, str, mf.Entry]],
               late: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
               unread: set[tuple[str, str]] | None = None) -> int:
    """Fresh DEKs and file ids for every blob, streamed through memory: no plaintext on
    disk. Each batch is one delta segment of ``reloc`` ops: the dot (and so the version, its
    push time and its writer) stays, its blob and key fields change. A ``late`` version (kept
    history of a member a thief may have taken out) that cannot be read is left under its
    old key, where the re-encryption ends it, and named (``unread``): a removed member's junk
    must not keep a re-encryption from ever finishing (review round 8, W5 (c))."""
    padding = s.binding.padding != "none"
    kek, number = s.ring.head_kek, s.ring.head.kek
    groups = sync.group_by_object([(f"{p}\x00{d}", e) for p, d, e in work])
    ops: dict[str, dict[str, dict[str, Any]]] = {}
    objects: set[str] = set()
    old: set[str] = set()
    count = 0
    size = 0
    batches = 0

    def flush() -> None:
        nonlocal count, size, batches
        if not ops:
            return
        s.commit([{"p": p, "reloc": locs} for p, locs in sorted(ops.items())])
        s.index.clear_pending(set(objects))
        started["old"] = sorted(set(started["old"]) | old)
        s.index.set_meta(INTENT, started)
        ops.clear()
        objects.clear()
        old.clear()
        count = size = 0
        batches += 1
        if after_batch is not None:
            after_batch(batches)

    done = 0
    total = sum(int(e.get("s", 0)) for _p, _d, e in work)
    with s.ui.progress("re-encrypt", total) as advance:
        for obj, items in groups.items():
            new_id = fmt.new_object_id()
            name = sync.DATA_PREFIX + new_id
            s.index.add_pending(name)
            placed: dict[tuple[str, str], dict[str, Any]] = {}
            with s.transport.writer(name) as raw:
                out = sync.ObjectWriter(raw, md5=not s.transport.local)
                packed = len(items) > 1 or int(items[0][1]["a"]) != 0
                if packed:
                    out.write(fmt.pack_header(os.urandom(16)))
                with sync.blobs(s.transport, obj, items) as found:
                    for key, entry, reader, err in found:
                        path, _, dot = key.partition("\x00")
                        if reader is None and (path, dot) in late and unread is not None:
                            _unread(s, path, str(err), unread, dot)
                            continue
                        if reader is None:
                            raise IntegrityError(f"{path}: {err}")
                        try:
                            dek, file_id = sync.dek_of(entry, s.ring.kek)
                            source = _PlainStream(fmt.decrypt_blob_iter(reader, dek, file_id),
                                                  str(entry.get("h")))
                            offset = out.count
                            new_dek, new_fid = fmt.new_dek(), fmt.new_file_id()
                            info = fmt.encrypt_blob(source, out, new_dek, new_fid, int(entry["s"]),
                                                    padding)
                            source.finish()
                            fmt.expect_end(reader)
                        except IntegrityError as exc:
                            if (path, dot) in late and unread is not None:
                                _unread(s, path, str(exc), unread, dot)
                                continue
                            raise named(path, exc) from exc
                        placed[(path, dot)] = {
                            "o": new_id, "a": offset, "n": out.count - offset, "i": new_fid.hex(),
                            "k": fmt.b64(fmt.wrap_dek(kek, new_dek, new_fid)), "g": number,
                            "w": number, "r": int(entry.get("r", 0)) + 1}
                        advance(info.size)
                if packed and padding:
                    sync.write_filler(out)
            digest = out.md5()
            for (path, dot), loc in placed.items():
                ops.setdefault(path, {})[dot] = {**loc, "om": digest}
            objects.add(name)
            old.add(obj)
            count += len(placed)
            done += len(placed)
            size += out.count
            if count >= BATCH_FILES or size >= BATCH_BYTES:
                flush()
        flush()
    return done


def _finish(s: Session, started: dict[str, Any]) -> int:
    """Old ciphertext and older key objects go. The history under older keys (its DEKs were
    wrapped under keys a removed member may hold) ended when the commit was published: every
    device hides it at once and forgets it ``keep_days`` after it saw the commit."""
    _rewrap_staged(s)
    with s.state.transaction():
        s.state.forget_moves()  # where blobs were before: old ciphertext, which goes too
        live = {sync.DATA_PREFIX + o for o in s.state.unended_objects()}
        # a mount's staged versions wait for their commit: not garbage (as _collect_pending)
        staged = {sync.DATA_PREFIX + o for o in s.index.staged_objects()}
        fresh, covered = _fresh(s, started), s.ring.view.covered()
        keyobjs = {c.name + ".k" for c in s.ring.view.commits.values()
                   if c.kek not in fresh and c.id in covered}  # an unmerged branch keeps it
        doomed = ((set(started["old"]) | (s.index.pending() - live) | keyobjs) - live - staged
                  ) & set(s.listing)
        # written ahead: a kill after the snapshot leaves the deletions to the next session
        s.index.set_meta("pending_delete", {
            "after": mf.segment_name(s.binding.device, s.next_seq(), "s"),
            "names": sorted(doomed)})
        s.snapshot()
    s.index.set_meta("wrapped_under", s.ring.head.kek)
    s.transport.delete(doomed)
    for name in doomed:
        s.listing.pop(name, None)
    s.index.set_meta("pending_delete", None)
    with s.index.transaction():
        s.index.clear_pending(s.index.pending() - staged)
    return len(doomed)


def _rewrap_staged(s: Session) -> None:
    """A mount's staged versions (a commit still to come) carry DEKs wrapped under the key
    of the head they were staged at, which this re-encryption is about to delete: they move
    to the new head's key first, or their commit would land versions no one can read. Such
    a wrap was never on the remote, so the new key is also the first (``w``) they had. One
    whose key an earlier re-encryption (another device's) ended already comes from its local
    wrap (ops/localwrap.py); one that has none that opens is left to the commit (_rewrap)."""
    head = s.ring.head.kek
    local = localwrap.key(s.me, s.binding.vault_id, s.binding.device)
    with s.index.transaction():
        for row, _path, staged in s.index.staged():
            entry = cast(mf.Entry, staged)  # a version's row (a name operation has no "k")
            if "k" in entry and entry.get("g") != head:
                try:
                    dek, file_id = sync.dek_of(entry, s.ring.kek)
                except (IntegrityError, KeyStoreError):
                    opened = localwrap.unwrap(local, entry)
                    if opened is None:
                        continue  # unchanged: its key is gone already, whatever this does
                    dek, file_id = opened
                entry["k"] = fmt.b64(fmt.wrap_dek(s.ring.head_kek, dek, file_id))
                entry["g"] = entry["w"] = head
                s.index.replace_staged(row, entry)


class _PlainStream:
    """Adapts decrypted pieces to a reader, checking the plaintext hash at the end."""

    def __init__(self, pieces: Iterator[bytes], expected: str) -> None:
        self.pieces = pieces
        self.buffer = b""
        self.digest = hashlib.sha256()
        self.expected = expected
        self.done = False

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) < size):
            piece = next(self.pieces, None)
            if piece is None:
                self.done = True
                break
            self.digest.update(piece)
            self.buffer += piece
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def finish(self) -> None:
        if self.digest.hexdigest() != self.expected:
            raise IntegrityError("plaintext hash mismatch during re-encryption")
