"""A session: one operation's view of a vault, opened under the folder lock.

Opening lists the remote, reads the device key, verifies the key chain from this
device's anchor and merges the manifest with its rollback checks; every operation
in :mod:`cloudguard.ops` works on one. Torn commits of a killed run are finished
here, before anything else reads the state.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from . import audit, chain, held, limits, sync, trust
from . import format as fmt
from . import manifest as mf
from .chain import Secret
from .errors import (
    IntegrityError,
    KeyStoreError,
    UsageError,
)
from .layout import DESCRIPTOR, descriptor_hash, listing_descriptor, parse_descriptor
from .state import (
    Binding,
    Index,
    check_marker,
    find_binding,
    folder_lock,
)
from .transport import MissingObject, Transport, open_transport

T = TypeVar("T")


@dataclass
class UI:
    """How the library talks to a person; the CLI supplies rich progress bars, tests nothing."""

    warn: Callable[[str], None] = lambda _m: None
    progress: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] = (
        lambda _d, _t: nullcontext(lambda _n: None))
    # asks a yes/no question on a terminal; None (scripts, --json, tests): the answer is no
    confirm: Callable[[str], bool] | None = None


@dataclass
class Session:
    binding: Binding
    transport: Transport
    index: Index
    me: Secret
    ring: trust.Ring
    loaded: mf.Loaded
    listing: dict[str, int]
    ui: UI
    segment_cache: mf.SegmentCache
    committed: list[str] = field(default_factory=list)
    prescan: Callable[[], Scanned] | None = None
    early: sync.EarlyStreams | None = None  # a push's big files already going up
    unreadable: list[str] = field(default_factory=list)  # paths the last scan could not read
    ignore: Callable[[str], bool] | None = None  # paths a push never reads (ignore rules)

    @property
    def folder(self) -> Path:
        return Path(self.binding.folder)

    @property
    def state(self) -> mf.State:
        return self.loaded.state

    def labels(self) -> dict[str, str]:
        return {rid: self.ring.name_of(rid) for rid in self.ring.view.members}

    def next_seq(self) -> int:
        """Past every claim on our writes: a planted claim (N11) would make a lower seq look
        covered to every reader that took it in."""
        own = self.binding.device
        floor = int(self.index.get_meta("seq_floor", 0))
        seq = max(self.loaded.own_seq, self.state.ctx.get(own, 0), floor) + 1
        if seq > mf.MAX_SEQ:
            raise IntegrityError(f"this device has no segment number left: another device's "
                                 f"version vector claimed {seq - 1} of its writes; remove "
                                 "that device, and if this persists, enrol this folder again "
                                 "as a new device (format.md, \"Claims about this device\")")
        return seq

    def write_segment(self, kind: str,
                      payload_for: Callable[[int], dict[str, Any] | Iterator[bytes]]
                      ) -> tuple[str, int, str]:
        seq = self.next_seq()
        name = mf.segment_name(self.binding.device, seq, kind)
        head = self.ring.head  # the generation floor: only ever the newest verified KEK
        blob = fmt.seal_segment(self.ring.head_kek, head.pos, head.id, self.binding.vault_id,
                                name, payload_for(seq), self.me.s)
        self.index.set_meta("pending_segment", name)
        self.transport.put_bytes(name, blob)
        self.segment_cache.put(name, blob)  # a rebuild of the state then needs no download
        digest = hashlib.sha256(blob).hexdigest()
        self.loaded.own_seq = seq
        self.index.set_meta("written", max(seq, int(self.index.get_meta("written", 0))))
        self.loaded.heads[self.binding.device] = digest
        self.listing[name] = len(blob)
        if kind == "d":
            self.loaded.deltas += 1
        self.committed.append(name)
        return name, seq, digest

    def commit(self, ops: list[mf.Op]) -> str:
        """Upload one delta segment: the commit point of a push (of any write: versions of
        ours a planted claim hid ride along, see :meth:`reissue_ops`)."""
        own = self.binding.device
        ops = ops + self.reissue_ops({op["p"] for op in ops})
        deps = dict(self.state.ctx)
        prev = self.loaded.heads.get(own)
        consumed = self.state.consumed()
        dh = {dev: digest for dev, at in deps.items()  # fork consistency: name it by hash
              if (digest := mf.applied_hash(consumed, dev, at)) is not None}
        now = int(time.time())
        lamport = sum(self.state.ctx.values()) + 1  # grows along every causal chain
        mf.resolutions.stamp(self.state, ops)  # carried content names its first dot (CC2)
        for op in ops:
            entry = op.get("e")
            if entry is not None and "reloc" not in op:
                entry["pt"] = now  # when this version was pushed: what restore goes by
                # new content gets its writer and causal time; a metadata-only change or a
                # conflict copy keeps those of the content it carries (sync.resolve_siblings)
                entry.setdefault("lc", lamport)
                entry.setdefault("wb", own)
        made: list[dict[str, Any]] = []

        def payload(seq: int) -> dict[str, Any]:
            dot = mf.dot_of(own, seq)
            for op in ops:  # every version this push writes, signed by us (R3)
                if (version := op.get("e")) is not None:
                    mf.sign_entry(self.me.s, self.binding.vault_id, op["p"], dot, version)
            made.append(mf.delta_payload(own, seq, deps, prev, ops, dh))
            return made[-1]

        name, seq, digest = self.write_segment("d", payload)
        with self.state.transaction():
            self.state.apply_delta(own, seq, ops, deps)
            self.state.mark_consumed(name, self.listing[name], digest)
        self.index.set_meta("seen", self.state.seen())
        self.index.set_meta("pending_segment", None)
        self.index.set_meta("reissue", [])
        return mf.dot_of(own, seq)

    def reissue_ops(self, skip: set[str]) -> list[mf.Op]:
        return mf.reissue_ops(self.state, self.index.get_meta("reissue", []), skip)

    def snapshot(self) -> str:
        """Replace every segment the state covers by one snapshot, then delete them."""
        own = self.binding.device
        prev = self.loaded.heads.get(own)
        name, seq, digest = self.write_segment("s", lambda seq: mf.snapshot_json(
            own, seq, self.state, prev, lambda o: sync.DATA_PREFIX + o in self.listing))
        with self.state.transaction():
            self.state.ctx[own] = seq
            claimed = self.state.honest()  # what the snapshot covers (manifest/raises.py)
            self.state.mark_consumed(name, self.listing[name], digest, claimed)
        self.index.set_meta("seen", self.state.seen())
        self.index.set_meta("pending_segment", None)
        doomed = mf.doomed(self.listing, name, claimed, self.state.consumed())
        self.transport.delete(doomed)
        for other in doomed:
            self.listing.pop(other, None)
        with self.state.transaction():
            self.state.forget_consumed(doomed)
        self.loaded.deltas = 0
        return name


def _transport(binding: Binding) -> Transport:
    """A long-lived face's transport for ``binding`` (held.py), else a new one."""
    return held.held_transport(binding) or open_transport(binding.remote)


def _recover_torn_segment(index: Index, transport: Transport, listing: dict[str, int],
                          ring: trust.Ring) -> None:
    """A crash while uploading our own segment may leave half an object: it never committed."""
    name = index.get_meta("pending_segment")
    if not name:
        return
    if name in listing:
        try:
            data = transport.get_bytes(name)
            parsed = mf.parse_name(name)
            if parsed is None:
                raise IntegrityError()
            chain.accept_segment(ring.view, name, parsed[0], parsed[1], data, ring.kek_of)
        except (IntegrityError, MissingObject, chain.Skip):
            transport.delete([name])
            listing.pop(name, None)
    index.set_meta("pending_segment", None)


def _finish_deletions(index: Index, transport: Transport, listing: dict[str, int],
                      loaded: mf.Loaded) -> None:
    """A re-encryption killed between its commit and its deletions left the old ciphertext and
    key generations behind: delete them now. The intent is recorded before the commit; it only
    applies if the commit (its snapshot) landed; a torn one was removed above."""
    intent = index.get_meta("pending_delete")
    if not intent:
        return
    after = str(intent.get("after"))
    if after in listing:
        ctx = loaded.state.ctx
        covered = [n for n in listing if (p := mf.parse_name(n)) is not None and n != after
                   and p[1] <= ctx.get(p[0], 0)]
        live = {sync.DATA_PREFIX + o for o in loaded.state.live_objects()}
        doomed = sorted({n for n in intent.get("names", []) if n in listing and n not in live}
                        | set(covered))
        transport.delete(doomed)
        for name in doomed:
            listing.pop(name, None)
    index.set_meta("pending_delete", None)


def _in_background(work: Callable[[], T]) -> Callable[[], T]:
    """Start ``work`` on a thread now; calling the result waits for it and returns its value,
    or raises its exception on the caller's thread."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, work()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        ok, value = box[0]
        if not ok:
            raise value
        return cast(T, value)
    return result


Scanned = tuple[dict[str, sync.LocalItem], list[str], list[str]]  # items, warnings, unreadable


def _start_scan(folder: Path) -> Callable[[], Scanned]:
    """The folder scan, started as soon as the folder lock is held: it runs while the session
    mostly waits for rclone and the keyring, instead of after them."""
    warnings: list[str] = []
    unreadable: list[str] = []
    return _in_background(lambda: (sync.scan(folder, warnings.append, unreadable), warnings,
                                   unreadable))


@contextmanager
def session(folder: str | None, ui: UI | None = None, refetch: bool = False,
            scan: bool = False, tolerate: frozenset[str] = frozenset(),
            guard: bool = False, early: bool = False) -> Iterator[Session]:
    """``refetch`` ignores every local cache (segments and merged state), so verify
    re-authenticates every segment and rebuilds the manifest from them. ``scan`` starts
    scanning the folder at once, for operations that will (:func:`_scan`). ``guard`` (push,
    pull) refuses a folder without its marker before anything else happens. ``early`` (a
    push) streams big new files while the session opens (sync.early, ``Session.early``)."""
    binding = find_binding(folder)
    with folder_lock(binding):
        if guard:
            check_marker(binding)
        prescan = (_start_scan(Path(binding.folder))
                   if scan and Path(binding.folder).is_dir() else None)
        index = Index(binding.dir / "index.db")
        transport = _transport(binding)
        streams = (sync.EarlyStreams(Path(binding.folder), binding.dir, transport,
                                     binding.padding != "none", prescan)
                   if early and prescan is not None and not refetch else None)
        try:
            if refetch:
                with tempfile.TemporaryDirectory(dir=binding.dir) as scratch:
                    state = mf.State()
                    try:
                        yield _open(binding, index, ui or UI(), Path(scratch), state, prescan,
                                    tolerate, transport)
                    finally:
                        state.close()
            else:
                state = mf.State(binding.dir / "manifest.db")
                try:
                    opened = _open(binding, index, ui or UI(), binding.dir / "segments",
                                   state, prescan, tolerate, transport)
                    opened.early = streams
                    yield opened
                finally:
                    state.close()
        finally:
            if streams is not None:
                with suppress(Exception):
                    streams.close()
            index.close()
            if prescan is not None:
                with suppress(Exception):
                    prescan()  # never leave it reading the folder after we let go


def _open(binding: Binding, index: Index, ui: UI, cache_dir: Path, state: mf.State,
          prescan: Callable[[], Scanned] | None = None,
          tolerate: frozenset[str] = frozenset(), transport: Transport | None = None
          ) -> Session:
    if not Path(binding.folder).is_dir():
        raise UsageError(f"the bound folder {binding.folder} does not exist any more")
    transport = transport or _transport(binding)
    # rclone costs ~50 ms a process to start: list the remote and fetch the descriptor and key
    # slots in two processes at once, while the device key is read from the keyring
    early = _start_fetch(transport)
    try:
        me = held.unlocked(binding) or held.device_key(binding).load()
    except BaseException:
        for wait in early:
            with suppress(Exception):
                wait()
        raise
    try:
        opened = _load(binding, index, ui, transport, me, cache_dir, state, early, tolerate)
        opened.prescan = prescan
        return opened
    except KeyStoreError as exc:
        if binding.enrolled:
            raise
        fp = index.get_meta("fingerprint", "?")
        raise KeyStoreError(f"{binding.folder}: enrolment {fp} is not approved yet; run "
                            f"'cloudguard device approve {fp}' on an enrolled device") from exc


Early = tuple[Callable[[], dict[str, int]], Callable[[], dict[str, bytes]]]


def _start_fetch(transport: Transport) -> Early:
    """The listing and the small metadata objects (descriptor, key slots), each in its own
    rclone process, started together."""
    return (_in_background(lambda: {n: o.size for n, o in transport.list().items()}),
            _in_background(lambda: transport.get_matching(
                [f"/{DESCRIPTOR}", f"/{chain.KEYS_PREFIX}*"])))


def _load(binding: Binding, index: Index, ui: UI, transport: Transport,
          me: Secret, cache_dir: Path, state: mf.State,
          early: Early | None = None, tolerate: frozenset[str] = frozenset()) -> Session:
    """``tolerate``: members whose equivocation is let through, so that they can be removed
    (which voids their other commit)."""
    for attempt in range(3):
        try:
            if early is not None and attempt == 0:
                meta = early[1]()  # waited for first: it never raises a transport error
                listing = early[0]()
            else:
                listing, meta = {n: o.size for n, o in transport.list().items()}, {}
            trust.resend_pending(transport, index, listing)
            cache = mf.SegmentCache(cache_dir)
            applied = {n for n, (size, _h, _c) in state.consumed().items()
                       if listing.get(n) == size}
            fetch = _prefetch(transport, listing, cache, meta, applied)
            raw = listing_descriptor(fetch, listing, binding.remote)
            parse_descriptor(raw, binding.remote)
            ring = trust.open_ring(binding.vault_id, listing, fetch, descriptor_hash(raw),
                                   binding.device, me, index, ui.warn, binding.enrolled,
                                   tolerate)
            trust.merge_if_needed(ring, transport, index, ui.warn, tolerate)
            _recover_torn_segment(index, transport, listing, ring)
            seen = index.get_meta("seen", {})
            segs = {n: s for n, s in listing.items() if n.startswith(mf.PREFIX)}
            skipped: list[str] = []

            cutoffs = {rid: (cut.seq, cut.hash) for rid, cut in ring.view.removed.items()}
            verifier = mf.Verifier(binding.vault_id, ring.view.signer_key)
            matches = functools.partial(sync.blob_matches, transport, keks=ring.kek)
            state.keycheck = functools.partial(sync.true_key, transport, keks=ring.kek)
            state.placecheck = matches
            state.head_g = ring.head.kek
            state.ended_since = trust.ended_since(ring.view, index, time.time())
            loaded = mf.load(segs, fetch, trust.segment_opener(ring, index), binding.device,
                             seen, cache, state, cutoffs, skipped, verifier,
                             mf.written(index.get_meta("written", None), segs, binding.device),
                             (objects := {n[len(sync.DATA_PREFIX):] for n in listing
                                          if n.startswith(sync.DATA_PREFIX)}).__contains__,
                             limits := trust.limits(ring, matches))
            loaded.state.ended = limits.ended
            late = trust.late_opener(ring)
            mf.keep_refused(loaded.state, segs, fetch, late,
                            {*ring.view.contested, *ring.view.ghosts}, ring.view.cutoffs,
                            verifier, skipped, limits.ghosts)
            mf.adopt_places(loaded.state, segs, fetch, late, ring.view.cutoffs,
                            objects.__contains__, matches, skipped)
            mf.replaced_by_unseen(loaded.state, segs, fetch, late, skipped)
            for reason in skipped:
                ui.warn(reason)
            _finish_deletions(index, transport, listing, loaded)
            break
        except MissingObject:
            if attempt == 2:
                raise
            time.sleep(0.5)  # another device compacted while we listed; list again
    index.set_meta("seen", loaded.state.seen())
    claims, floor = mf.claim_floor(index.get_meta("seq_claims", None),  # N11: our next
                                   int(index.get_meta("seq_floor", 0)), loaded)  # segments
    index.set_meta("seq_claims", claims)  # go past a claim; push writes these again
    index.set_meta("seq_floor", floor)
    if loaded.claimed:
        index.set_meta("reissue", sorted({*map(tuple, index.get_meta("reissue", [])),
                                          *loaded.reissue}))
    note_interrupted(index, binding)
    if not binding.enrolled:
        binding.enrolled = True
        binding.save()
    return Session(binding, transport, index, me, ring, loaded, listing, ui, cache)


def _prefetch(transport: Transport, listing: dict[str, int], cache: mf.SegmentCache,
              have: dict[str, bytes] | None = None, applied: set[str] | None = None
              ) -> Callable[[str], bytes]:
    """Fetch the descriptor, key slots and uncached segments in one go; serve them once.

    ``have`` holds objects fetched already (beside the listing); any listed one it lacks, or
    whose size differs from the listing (it changed in between), is fetched again here.
    Segments the local state has ``applied`` are not needed (unless the state is rebuilt,
    when they are fetched one by one).
    """
    got = {n: d for n, d in (have or {}).items() if listing.get(n) == len(d)}
    wanted = [n for n in listing if n not in got and (
        n == DESCRIPTOR or n.startswith(chain.KEYS_PREFIX)
        or (n.startswith(mf.PREFIX) and n not in (applied or set())
            and not cache.has(n, listing[n]))) and listing[n] <= limits.cap(n)]
    got.update(transport.get_many(wanted))

    def fetch(name: str) -> bytes:
        data = got.pop(name, None)
        if data is None:
            limits.check(name, listing.get(name, 0))  # listed too big: refused unread
            data = transport.get_bytes(name)
        return data
    return fetch


# The re-encryption a device started and has not finished (ops.rekey): every session
# notes a killed one.
INTENT = "reencrypt"  # index meta: the re-encryption this device started and has not finished


def intent(index: Index) -> dict[str, Any] | None:
    got = index.get_meta(INTENT)
    return got if isinstance(got, dict) else None


def note_interrupted(index: Index, binding: Binding) -> None:
    """A session found the intent of a run that is not running (we hold the folder lock): it
    was killed. Recorded once per killed run."""
    started = intent(index)
    if started is None or started.get("noted"):
        return
    audit.record("reencrypt-interrupted", vault=binding.vault_id, device=binding.device,
                 epoch_to=started.get("epoch"), commit=started.get("commit"),
                 started=started.get("started"))
    started["noted"] = True
    index.set_meta(INTENT, started)
