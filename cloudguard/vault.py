"""The library API: init, clone, push, pull, status, verify and key management.

Each operation opens a :class:`Session` (folder lock, index, remote listing, device key, key
ring, merged manifest with rollback checks), does its work and returns a plain dict that the CLI
prints or dumps as JSON.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from . import audit, chain, folding, limits, remotes, sync, trust
from . import format as fmt
from . import keys as keymod
from . import manifest as mf
from . import passphrase as passphrases
from . import reader as readers
from .chain import Secret
from .errors import (
    CloudguardError,
    FileChangedError,
    GuardError,
    IntegrityError,
    Interrupted,
    KeyStoreError,
    TransportError,
    UsageError,
    named,
)
from .keys import DeviceKey, now_iso
from .state import (
    MAX_KEEP_DAYS,
    Binding,
    Index,
    IndexRow,
    check_marker,
    check_unbound,
    find_binding,
    folder_lock,
    remove_marker,
    signature,
    write_marker,
)
from .transport import MissingObject, RcloneTransport, Transport

T = TypeVar("T")

DESCRIPTOR = "cloudguard.json"
COMPACT_AFTER = 32  # delta segments before a snapshot replaces them
REPACK_BELOW = 0.5  # live fraction under which a pack is rewritten


@dataclass
class UI:
    """How the library talks to a person; the CLI supplies rich progress bars, tests nothing."""

    warn: Callable[[str], None] = lambda _m: None
    progress: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] = (
        lambda _d, _t: nullcontext(lambda _n: None))
    # asks a yes/no question on a terminal; None (scripts, --json, tests): the answer is no
    confirm: Callable[[str], bool] | None = None


def gc_grace() -> float:
    raw = os.environ.get("CLOUDGUARD_GC_GRACE", "86400")
    try:
        return float(raw)
    except ValueError as exc:
        raise UsageError(f"CLOUDGUARD_GC_GRACE={raw!r} is not a number of seconds") from exc


# --- descriptor ---------------------------------------------------------------------------


def make_descriptor(padding: str) -> bytes:
    doc = {"cloudguard": "vault", "format": fmt.VERSION, "chunk_size": fmt.CHUNK_SIZE,
           "padding": padding, "created": now_iso(), "salt": os.urandom(16).hex()}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def parse_descriptor(raw: bytes, where: str) -> dict[str, Any]:
    doc = fmt.parse_json(raw, f"{where}: the vault descriptor {DESCRIPTOR}")
    if not isinstance(doc, dict) or doc.get("cloudguard") != "vault":
        raise IntegrityError(f"{where}: not a cloudguard vault descriptor")
    if doc.get("format") != fmt.VERSION:
        raise CloudguardError(f"{where}: vault format {doc.get('format')!r} is unknown to this "
                              f"cloudguard (knows {fmt.VERSION}); upgrade cloudguard")
    if doc.get("chunk_size") != fmt.CHUNK_SIZE or doc.get("padding") not in ("padme", "none"):
        raise IntegrityError(f"{where}: the vault descriptor has altered parameters")
    return doc


def descriptor_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# --- sessions -----------------------------------------------------------------------------


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
    unreadable: list[str] = field(default_factory=list)  # paths the last scan could not read

    @property
    def folder(self) -> Path:
        return Path(self.binding.folder)

    @property
    def state(self) -> mf.State:
        return self.loaded.state

    def labels(self) -> dict[str, str]:
        return {rid: self.ring.name_of(rid) for rid in self.ring.view.members}

    def next_seq(self) -> int:
        own = self.binding.device
        return max(self.loaded.own_seq, self.state.ctx.get(own, 0)) + 1

    def write_segment(self, kind: str, payload_for: Callable[[int], dict[str, Any]]
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
        self.loaded.heads[self.binding.device] = digest
        self.listing[name] = len(blob)
        if kind == "d":
            self.loaded.deltas += 1
        self.committed.append(name)
        return name, seq, digest

    def commit(self, ops: list[dict[str, Any]]) -> str:
        """Upload one delta segment: the commit point of a push."""
        own = self.binding.device
        deps = dict(self.state.ctx)
        prev = self.loaded.heads.get(own)
        consumed = self.state.consumed()
        dh = {dev: digest for dev, at in deps.items()  # fork consistency: name it by hash
              if (digest := mf.applied_hash(consumed, dev, at)) is not None}
        now = int(time.time())
        lamport = sum(self.state.ctx.values()) + 1  # grows along every causal chain
        for op in ops:
            if op.get("e") is not None and "reloc" not in op:
                entry = op["e"]
                entry["pt"] = now  # when this version was pushed: what restore goes by
                # new content gets its writer and causal time; a metadata-only change or a
                # conflict copy keeps those of the content it carries (sync.resolve_siblings)
                entry.setdefault("lc", lamport)
                entry.setdefault("wb", own)
        made: list[dict[str, Any]] = []

        def payload(seq: int) -> dict[str, Any]:
            made.append(mf.delta_payload(own, seq, deps, prev, ops, dh))
            return made[-1]

        name, seq, digest = self.write_segment("d", payload)
        with self.state.transaction():
            self.state.apply_delta(own, seq, ops, mf.time_of(made[-1]))
            self.state.mark_consumed(name, self.listing[name], digest)
        self.index.set_meta("seen", self.state.ctx)
        self.index.set_meta("pending_segment", None)
        return mf.dot_of(own, seq)

    def snapshot(self) -> str:
        """Replace every segment the state covers by one snapshot, then delete them."""
        own = self.binding.device
        prev = self.loaded.heads.get(own)
        name, seq, digest = self.write_segment(
            "s", lambda seq: mf.snapshot_payload(own, seq, self.state, prev))
        with self.state.transaction():
            self.state.ctx[own] = seq
            self.state.mark_consumed(name, self.listing[name], digest, dict(self.state.ctx))
        self.index.set_meta("seen", self.state.ctx)
        self.index.set_meta("pending_segment", None)
        doomed = []
        for other in list(self.listing):
            parsed = mf.parse_name(other)
            if parsed and other != name and parsed[1] <= self.state.ctx.get(parsed[0], 0):
                doomed.append(other)
        self.transport.delete(doomed)
        for other in doomed:
            self.listing.pop(other, None)
        with self.state.transaction():
            self.state.forget_consumed(doomed)
        self.loaded.deltas = 0
        return name


def _transport(binding: Binding) -> Transport:
    return RcloneTransport(binding.remote)


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


def _device_key(binding: Binding) -> DeviceKey:
    return DeviceKey(binding.keystore, binding.key_account, binding.dir / "device.key")


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
            guard: bool = False) -> Iterator[Session]:
    """``refetch`` ignores every local cache (segments and merged state), so verify
    re-authenticates every segment and rebuilds the manifest from them. ``scan`` starts
    scanning the folder at once, for operations that will (:func:`_scan`). ``guard`` (push,
    pull) refuses a folder without its marker before anything else happens."""
    binding = find_binding(folder)
    with folder_lock(binding):
        if guard:
            check_marker(binding)
        prescan = (_start_scan(Path(binding.folder))
                   if scan and Path(binding.folder).is_dir() else None)
        index = Index(binding.dir / "index.db")
        try:
            if refetch:
                with tempfile.TemporaryDirectory(dir=binding.dir) as scratch:
                    state = mf.State()
                    try:
                        yield _open(binding, index, ui or UI(), Path(scratch), state, prescan,
                                    tolerate)
                    finally:
                        state.close()
            else:
                state = mf.State(binding.dir / "manifest.db")
                try:
                    yield _open(binding, index, ui or UI(), binding.dir / "segments", state,
                                prescan, tolerate)
                finally:
                    state.close()
        finally:
            index.close()
            if prescan is not None:
                with suppress(Exception):
                    prescan()  # never leave it reading the folder after we let go


def _open(binding: Binding, index: Index, ui: UI, cache_dir: Path, state: mf.State,
          prescan: Callable[[], Scanned] | None = None,
          tolerate: frozenset[str] = frozenset()) -> Session:
    if not Path(binding.folder).is_dir():
        raise UsageError(f"the bound folder {binding.folder} does not exist any more")
    transport = _transport(binding)
    # rclone costs ~50 ms a process to start: list the remote and fetch the descriptor and key
    # slots in two processes at once, while the device key is read from the keyring
    early = _start_fetch(transport)
    try:
        me = _device_key(binding).load()
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
            trust.merge_if_needed(ring, transport, index, ui.warn)
            _recover_torn_segment(index, transport, listing, ring)
            seen = index.get_meta("seen", {})
            segs = {n: s for n, s in listing.items() if n.startswith(mf.PREFIX)}
            skipped: list[str] = []

            cutoffs = {rid: (cut.seq, cut.hash) for rid, cut in ring.view.removed.items()
                       if cut.seq != chain.UNLIMITED}
            loaded = mf.load(segs, fetch, _opener(ring, index), binding.device, seen, cache, state,
                             cutoffs, skipped)
            for reason in skipped:
                ui.warn(reason)
            _finish_deletions(index, transport, listing, loaded)
            break
        except MissingObject:
            if attempt == 2:
                raise
            time.sleep(0.5)  # another device compacted while we listed; list again
    index.set_meta("seen", loaded.state.ctx)
    _note_interrupted(index, binding)
    if not binding.enrolled:
        binding.enrolled = True
        binding.save()
    return Session(binding, transport, index, me, ring, loaded, listing, ui, cache)


def _note_interrupted(index: Index, binding: Binding) -> None:
    from . import rekey

    rekey.note_interrupted(index, binding)


def _opener(ring: trust.Ring, index: Index) -> mf.Opener:
    """Writer rules (chain.accept_segment), plus: a writer's heads only move forward along
    the chain, and a segment written under an older KEK marks the state for re-wrapping."""
    heads: dict[str, tuple[int, str]] = {}

    def opener(name: str, dev: str, seq: int, data: bytes) -> dict[str, Any]:
        payload = chain.accept_segment(ring.view, name, dev, seq, data, ring.kek_of)
        written = ring.view.find(fmt.segment_head(data)[1])
        if written is None:  # accept_segment has skipped such a segment already
            raise IntegrityError(f"manifest segment {name} names no verified commit")
        before = heads.get(dev)
        if before is not None and before[0] == seq - 1 and not ring.view.builds_on(
                written.id, before[1]):
            raise IntegrityError(f"fork: manifest segment {name} names a head that does not "
                                 "build on its writer's previous one")
        heads[dev] = (seq, written.id)
        if written.kek != ring.head.kek:  # a frozen or racing writer: re-wrap later
            index.set_meta("rewrap_needed", True)
        return payload
    return opener


def listing_descriptor(fetch: Callable[[str], bytes], listing: dict[str, int], remote: str
                       ) -> bytes:
    if DESCRIPTOR not in listing:
        raise IntegrityError(f"{remote}: the vault descriptor {DESCRIPTOR} is missing (wrong "
                             "remote, or it was deleted)")
    return fetch(DESCRIPTOR)


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


# --- init and clone -----------------------------------------------------------------------


def _new_binding(folder: Path, remote: str, vault_id: str, padding: str, name: str | None
                 ) -> Binding:
    return Binding(id=Binding.new_id(), folder=str(folder), remote=remote, vault_id=vault_id,
                   device=keymod.new_member_id(), device_name=name or socket.gethostname(),
                   keystore=keymod.choose_keystore(), padding=padding)


def _check_folder(folder: str) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
    if not path.is_dir():
        raise UsageError(f"{folder} is not a folder")
    resolved = path.resolve()
    check_unbound(resolved)
    return resolved


def _check_apart(folder: str, transport: RcloneTransport) -> None:
    """Refuse a local remote inside the folder (every push would encrypt the vault into
    itself) and a folder inside a local remote (its plaintext would sit among the remote's
    objects, where a sync client or a backup of the remote takes it)."""
    root = transport.local_root()
    if root is None:
        return
    path = Path(folder).expanduser().resolve()
    root = root.resolve()
    where = transport.remote if str(root) == transport.remote else f"{transport.remote} ({root})"
    if root.is_relative_to(path):
        raise UsageError(f"the remote {where} is inside the folder {path}: every push would "
                         "encrypt the vault into itself; choose a remote outside the folder")
    if path.is_relative_to(root):
        raise UsageError(f"the folder {path} is inside the local remote {where}: its plaintext "
                         "would sit in the remote; choose a folder outside the remote")


def _check_exposed(folder: str, allow: bool) -> list[str]:
    """A folder that another sync client uploads keeps no secret, whatever we encrypt: refused
    before anything is made unless ``allow`` (--allow-exposed); then the findings are returned
    for the result."""
    from . import doctor as checks

    path = Path(folder).expanduser().resolve()
    found = [f for f in checks.exposure(path, Path.home()) if f.level == "error"]
    if found and not allow:
        more = f" ({len(found) - 1} more: cloudguard doctor)" if len(found) > 1 else ""
        raise UsageError(f"{found[0].message}; {found[0].fix}, or pass --allow-exposed to "
                         f"accept it{more}")
    return [f.message for f in found]


def init_vault(folder: str, remote: str, padding: str = "padme", name: str | None = None,
               allow_exposed: bool = False) -> dict[str, Any]:
    if padding not in ("padme", "none"):
        raise UsageError(f"--padding {padding!r}: use padme or none")
    transport = RcloneTransport(remote)
    _check_apart(folder, transport)
    exposed = _check_exposed(folder, allow_exposed)
    path = _check_folder(folder)
    existing = transport.list()
    if DESCRIPTOR in existing:
        raise UsageError(f"{remotes.redact(transport.remote)} already holds a cloudguard "
                         "vault; use cloudguard clone")
    if existing:
        raise UsageError(f"{remotes.redact(transport.remote)} is not empty; give an empty folder "
                         "or bucket path")
    secret = Secret.generate()
    rid = keymod.new_member_id()
    device_name = name or socket.gethostname()
    descriptor = make_descriptor(padding)
    kek = chain.new_kek()
    genesis, data, keyobj = chain.build(None, "", secret, rid, "genesis",
                                        {rid: secret.public("device")}, {}, kek, 1,
                                        {rid: device_name}, {}, descriptor_hash(descriptor),
                                        now_iso())
    vault_id = genesis.id
    binding = Binding(id=Binding.new_id(), folder=str(path), remote=transport.remote,
                      vault_id=vault_id, device=rid, device_name=device_name,
                      keystore=keymod.choose_keystore(), padding=padding)
    _device_key(binding).create(secret)
    transport.ensure_root()
    transport.put_bytes(DESCRIPTOR, descriptor)
    trust.write(transport, None, genesis, data, keyobj)
    binding.save()
    write_marker(binding)
    index = Index(binding.dir / "index.db")
    index.set_meta("verified", [vault_id])
    index.set_meta("wrapped_under", genesis.kek)  # nothing to re-wrap in a new vault
    index.close()
    audit.record("init", vault=vault_id, device=binding.device)
    return {"folder": str(path), "remote": remotes.redact(transport.remote), "vault": vault_id,
            "vault_code": fmt.vault_code(vault_id), "device": binding.device,
            "keystore": binding.keystore, "exposed": exposed}


def clone_vault(remote: str, folder: str, kit: str | None = None, name: str | None = None,
                ui: UI | None = None, vault_code: str | None = None,
                allow_exposed: bool = False) -> dict[str, Any]:
    """Bind a folder to an existing vault; on any failure, undo the binding and the key."""
    exposed = _check_exposed(folder, allow_exposed)
    existed = Path(folder).expanduser().exists()
    path = _check_folder(folder)
    made: list[Binding] = []
    try:
        # one shape whether enrolled at once (a kit: the first pull's keys) or requested
        none: dict[str, Any] = {
            "downloaded": [], "updated": [], "deleted": [], "conflicts": [], "skipped": [],
            "errors": [], "fingerprint": None,
            "unreadable": [],
            "counts": {k: _counts(()) for k in ("downloaded", "made", "deleted")}}
        return {**none, **_clone(remote, path, kit, name, ui, made, vault_code),
                "exposed": exposed}
    except BaseException:
        for binding in made:
            if binding.enrolled or kit is not None:
                remove_marker(binding)
                _forget_binding(binding)
        if not existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def _forget_binding(binding: Binding) -> None:
    _device_key(binding).delete()
    shutil.rmtree(binding.dir, ignore_errors=True)


def _code(text: str) -> str:
    return text.strip().upper().replace(" ", "").replace("-", "")


def _find_vault(listing: dict[str, int], remote: str, wanted: str | None,
                vault_code: str | None) -> str:
    """The vault id is the genesis id; a new device takes it from a recovery kit, or checks
    it in full against the vault code the user read on an enrolled device."""
    geneses = sorted(p[1] for n in listing if (p := chain.parse_name(n)) and p[0] == 0
                     and not p[2])
    if wanted is not None:
        if wanted not in geneses:
            raise IntegrityError(f"{remote} does not hold vault {wanted} (its genesis commit "
                                 "is missing)")
        return wanted
    if vault_code is None:
        raise UsageError("give the vault code shown by 'cloudguard device list' on an enrolled "
                         "device (--vault-code): it proves this is your vault, not a copy "
                         "made by the provider")
    matching = [g for g in geneses if _code(fmt.vault_code(g)) == _code(vault_code)]
    if not matching:
        raise IntegrityError(f"{remote} holds no vault with code {vault_code}: wrong remote, "
                             "or the provider shows a fake vault")
    return matching[0]


# What a vault leaves on its remote. A remote with none of them was never a vault (a wrong name
# or path: exit 1); one with some but a missing or bad descriptor or chain is exit 3.
_VAULT_PREFIXES = (chain.KEYS_PREFIX, mf.PREFIX, sync.DATA_PREFIX, keymod.ENROLL_PREFIX)


def _holds_vault(listing: dict[str, int]) -> bool:
    return DESCRIPTOR in listing or any(n.startswith(_VAULT_PREFIXES) for n in listing)


def _clone(remote: str, path: Path, kit: str | None, name: str | None, ui: UI | None,
           made: list[Binding], vault_code: str | None) -> dict[str, Any]:
    transport = RcloneTransport(remote)
    _check_apart(str(path), transport)
    listing = {n: o.size for n, o in transport.list().items()}
    if not _holds_vault(listing):
        raise CloudguardError(f"no vault at {transport.remote}: it holds no {DESCRIPTOR} and "
                              "no vault objects; check the remote name and path")
    raw = listing_descriptor(transport.get_bytes, listing, transport.remote)
    doc = parse_descriptor(raw, transport.remote)
    opened = None
    if kit is not None:  # the kit's passphrase first: this device's new one is asked after
        opened = keymod.read_kit(Path(kit), keymod.get_passphrase(
            f"the recovery kit {kit}", var=keymod.KIT_PASSPHRASE_VAR))
    vault_id = _find_vault(listing, transport.remote, opened.vault if opened else None,
                           vault_code)
    binding = _new_binding(path, transport.remote, vault_id, str(doc.get("padding", "padme")),
                           name)
    made.append(binding)
    me = _device_key(binding).create()
    if opened is None:
        binding.enrolled = False
        request = chain.make_request(vault_id, binding.device, binding.device_name, now_iso(),
                                     me)
        fp = chain.read_request(request).fingerprint
        transport.put_bytes(f"{keymod.ENROLL_PREFIX}{binding.device}", request)
        binding.save()
        write_marker(binding)
        index = Index(binding.dir / "index.db")
        index.set_meta("fingerprint", fp)
        index.close()
        return {"folder": str(path), "vault": vault_id, "enrolled": False,
                "fingerprint": fp, "device": binding.device}
    warn = (ui or UI()).warn
    anchor = [n for n in listing if (p := chain.parse_name(n)) and p[1] == opened.anchor
              and not p[2]]
    if not anchor:
        raise IntegrityError(f"{kit}: the commit that added this kit ({opened.anchor[:16]}...) "
                             "is gone from the remote: rolled back or deleted")
    try:
        ring = trust.open_ring(vault_id, listing, transport.get_bytes, descriptor_hash(raw),
                               opened.rid, opened.secret, None, warn)
    except KeyStoreError as exc:  # its message is for a device (approve, removed)
        raise KeyStoreError(f"{kit}: this recovery kit is no longer a member of the vault (it "
                            "was removed, so it cannot enrol a device); use a current kit, or "
                            "enrol by approval: cloudguard clone REMOTE FOLDER --vault-code "
                            "CODE") from exc
    if opened.anchor not in ring.view.commits:
        raise IntegrityError(f"{kit}: the commit that added this kit is not in the vault's "
                             "verified chain")
    if ring.head.members.get(opened.rid) is None:
        raise KeyStoreError(f"{kit}: this recovery kit was removed from the vault; use a "
                            "current kit, or enrol by approval: cloudguard clone REMOTE FOLDER "
                            "--vault-code CODE")
    _add_member(transport, None, ring, binding.device, me.public("device"), binding.device_name)
    binding.save()
    write_marker(binding)
    index = Index(binding.dir / "index.db")
    index.set_meta("verified", sorted(ring.view.commits))
    index.close()
    made.clear()  # enrolled: from here on the binding stands, even if the first pull fails
    result = pull(str(path), ui)
    result.update({"folder": str(path), "vault": vault_id, "enrolled": True,
                   "device": binding.device})
    return result


def _add_member(transport: Transport, index: Index | None, ring: trust.Ring, rid: str,
                keys: chain.MemberKeys, name: str) -> chain.Commit:
    """An add commit on the head: same KEK, one more member with its own slot."""
    if rid in ring.view.members or rid in ring.view.removed or any(
            rid in c.members for c in ring.view.commits.values()):
        raise UsageError(f"member id {rid} already exists in this vault; refused")
    members = {**ring.head.members, rid: keys}
    return trust.change(ring, transport, index, "add", members=members,
                        removed=dict(ring.head.removed), new_key=False, names={rid: name})


# --- push ---------------------------------------------------------------------------------


def _resolve(s: Session) -> list[str]:
    """The conflict copies made of concurrent versions (a list, as pull reports them)."""
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


def _counts(kinds: Iterable[str]) -> dict[str, int]:
    """Files, folders and links apart: "updated 42" must not call 40 folders files."""
    out = {"files": 0, "folders": 0, "links": 0}
    for kind in kinds:
        out[{"d": "folders", "l": "links"}.get(kind, "files")] += 1
    return out


def _scan(s: Session) -> dict[str, sync.LocalItem]:
    """The folder as it is now: the scan started with the session, if nothing since could have
    changed it, else a fresh one."""
    if s.prescan is not None:
        items, warnings, unreadable = s.prescan()
        s.prescan = None  # used once
        for warning in warnings:
            s.ui.warn(warning)
    else:
        unreadable = []
        items = sync.scan(s.folder, s.ui.warn, unreadable)
    s.unreadable = unreadable
    sync.clear_staging(s.folder)  # temp files of a pull that was killed; we hold the lock
    if folding.folds(s.folder):  # the disk's spelling of a manifest path is that path
        items = folding.alias(items, [p for p, _d in s.state.dots()])
    return items


def _hasher(folder: Path) -> Callable[[str], str]:
    return lambda rel: sync.hash_file(folder / rel)


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


def push(folder: str | None, dry_run: bool = False, ui: UI | None = None,
         allow_mass_delete: bool = False) -> dict[str, Any]:
    """``result["unreadable"]`` lists paths that could not be read: they kept their last
    synced state, and the CLI exits 1 after the rest was pushed."""
    with _audited("push", folder), session(folder, ui, scan=True, guard=True) as s:
        _warn_exposed(s)
        result = _push(s, dry_run, allow_mass_delete)
        if not dry_run:
            _log(s, "push", files=len(result["uploaded"]) + len(result["updated"]),
                 deleted=len(result["deleted"]), objects=result.get("object_ids", []),
                 segments=s.committed)
        return result


def _warn_exposed(s: Session) -> None:
    """A sync client around the folder (found since init, or allowed there) is named on every
    push; only around it: the scan already reads the inside."""
    from . import doctor as checks

    for f in checks.exposure(s.folder, Path.home(), inside=False):
        if f.level == "error":
            s.ui.warn(f"{f.message} ({f.fix}; cloudguard doctor)")


def _push_plan(s: Session, local: dict[str, sync.LocalItem]
               ) -> tuple[sync.PushPlan, dict[str, IndexRow]]:
    """Only what differs from the index needs a look: whole rows for those paths alone."""
    sigs = s.index.signatures()
    changed = {p: item for p, item in local.items()
               if sigs.get(p) != signature(item.kind, item.size, item.mtime, item.mode,
                                           item.target, item.ctime, item.ino)}
    # a path the scan could not read is not gone: it keeps its last synced state
    gone = [p for p in sigs if p not in local
            and not (s.unreadable and sync.under(p, s.unreadable))]
    rows = s.index.rows_for([*changed, *gone])
    return sync.plan_push(changed, rows, sync.LazyView(s.state), _safe_hasher(s.folder),
                          s.state.version), rows


def _safe_hasher(folder: Path) -> Callable[[str], str]:
    """A file that cannot be read matches nothing: it is then uploaded, which reports it."""
    def digest(rel: str) -> str:
        try:
            return sync.hash_file(folder / rel)
        except OSError:
            return ""
    return digest


def _mass_delete_limits() -> tuple[float, int]:
    """The mass-delete thresholds: CLOUDGUARD_MASS_DELETE_PERCENT and _FILES, if set."""
    share, most = sync.MASS_DELETE_SHARE, sync.MASS_DELETE_FILES
    raw = os.environ.get("CLOUDGUARD_MASS_DELETE_PERCENT")
    if raw is not None:
        try:
            share = float(raw) / 100
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1:
            raise UsageError(f"CLOUDGUARD_MASS_DELETE_PERCENT={raw!r} is not a percentage "
                             "from 0 to 100")
    raw = os.environ.get("CLOUDGUARD_MASS_DELETE_FILES")
    if raw is not None:
        if not raw.isdigit():
            raise UsageError(f"CLOUDGUARD_MASS_DELETE_FILES={raw!r} is not a number of files")
        most = int(raw)
    return share, most


def _mass_delete(s: Session, plan: sync.PushPlan) -> GuardError | None:
    """The refusal a push deleting a large part of the folder gets, or None."""
    deleting = sum(1 for row in plan.delete  # a renamed file is not deleted
                   if row.kind != "d" and row.path not in plan.renamed)
    if not deleting:
        return None  # the common push: no count of the index needed
    total = s.index.count_files()
    share, most = _mass_delete_limits()
    if not sync.mass_delete(deleting, total, share, most):
        return None
    what = (f"push would delete {deleting} of the {total} files in {s.folder} "
            f"(more than {share:.0%} or {most} files)")
    return GuardError(f"{what}; nothing was pushed. If that is right, run push "
                      "--allow-mass-delete", "mass-delete", folder=str(s.folder),
                      deleting=deleting, files=total, percent=round(share * 100, 2),
                      max_files=most, question=f"{what}. Delete them everywhere?")


def _check_mass_delete(s: Session, plan: sync.PushPlan, allow: bool) -> None:
    """Ask before a push deletes a large part of the folder; without a terminal, refuse."""
    refusal = None if allow else _mass_delete(s, plan)
    if refusal is None:
        return
    question = str(refusal.details.pop("question"))
    if s.ui.confirm is not None and s.ui.confirm(question):
        return
    raise refusal


def _push(s: Session, dry_run: bool, allow_mass_delete: bool = False) -> dict[str, Any]:
    conflicts = [] if dry_run else _resolve(s)
    local = _scan(s)
    plan, index_rows = _push_plan(s, local)
    # a dry run has every key a push has (what it would do; nothing uploaded)
    result: dict[str, Any] = {
        "uploaded": [i.path for i in plan.upload], "updated": [i.path for i, _ in plan.put],
        "deleted": [r.path for r in plan.delete if r.path not in plan.renamed],
        "renamed": dict(sorted(plan.renamed.items())), "dry_run": dry_run,
        "conflicts": conflicts, "unreadable": sorted(s.unreadable),
        "skipped": [], "bytes_uploaded": 0, "objects": 0, "object_ids": [],
        "mass_delete": False,
        "counts": {"uploaded": _counts("f" for _ in plan.upload),
                   "updated": _counts(i.kind for i, _ in plan.put),
                   "deleted": _counts(r.kind for r in plan.delete
                                      if r.path not in plan.renamed)}}
    if dry_run:
        result["mass_delete"] = _mass_delete(s, plan) is not None  # push would ask first
        return result
    _check_mass_delete(s, plan, allow_mass_delete)
    _collect_pending(s)
    _rewrap_stale(s)
    total = sum(i.size for i in plan.upload)
    with s.index.transaction():
        for loc, dot, sha in plan.adopt:
            s.index.put(sync.row_from(loc, dot, sha))

    def landed(entries: dict[str, dict[str, Any]], objects: list[str]) -> None:
        """Each uploaded batch is committed as soon as it is on the remote."""
        _commit_ops(s, _replacing(s, entries, index_rows), local, objects)

    with s.ui.progress("push", total) as advance:
        up = sync.upload(s.folder, plan.upload, s.transport, s.binding.dir / "spool",
                         s.ring.head_kek, s.ring.head.kek, s.binding.padding != "none",
                         s.index.add_pending, s.ui.warn, advance, landed)
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
    result["uploaded"] = sorted(up.paths)
    result["counts"]["uploaded"] = _counts("f" for _ in up.paths)
    result["skipped"] = up.skipped
    result["unreadable"] = sorted({*s.unreadable, *up.unreadable})
    result["bytes_uploaded"] = up.bytes_out
    result["objects"] = len(up.objects)
    result["object_ids"] = [n[len(sync.DATA_PREFIX):] for n in up.objects]
    _maintain(s)
    return result


def _replacing(s: Session, entries: dict[str, dict[str, Any]], rows: dict[str, IndexRow]
               ) -> list[dict[str, Any]]:
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
    same = sync.content_key(base)
    return sorted({row.dot} | {d for d, e in sibs.items() if sync.content_key(e) == same},
                  key=sync.dot_key)


def _commit_ops(s: Session, ops: list[dict[str, Any]], local: dict[str, sync.LocalItem],
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


def _collect_pending(s: Session) -> None:
    """Objects we uploaded in a run that crashed before its commit are garbage: delete them,
    and the spool files such a run left behind."""
    shutil.rmtree(s.binding.dir / "spool", ignore_errors=True)
    pending = s.index.pending()
    if not pending:
        return
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    stale = pending - live
    if stale:
        s.transport.delete(stale)
    with s.index.transaction():
        s.index.clear_pending(s.index.pending())


def _maintain(s: Session) -> None:
    """Compaction, repacking and garbage collection after a successful commit. Versions
    replaced longer than ``keep_days`` ago leave the history first, so their objects are
    garbage too."""
    s.state.prune_attic(int(time.time()) - s.binding.keep_days * 86400)
    if s.loaded.deltas >= COMPACT_AFTER:
        s.snapshot()
    _repack(s)
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    # rclone's temp names of a killed upload ("<name>.<hex>.partial") are garbage too
    stored = {n for n in s.listing if n.startswith(sync.DATA_PREFIX) or (
        n.startswith((mf.PREFIX, chain.KEYS_PREFIX)) and n.endswith(".partial"))}
    mine = s.index.pending()
    now = time.time()
    seen = s.index.orphans()
    orphans = {n: seen.get(n, now) for n in stored - live - mine}
    doomed = {n for n, first in orphans.items() if now - first >= gc_grace()}
    if doomed:
        s.transport.delete(doomed)
    with s.index.transaction():
        s.index.set_orphans({n: t for n, t in orphans.items() if n not in doomed})


def _repack(s: Session) -> bool:
    """Copy live blobs of mostly-dead packs, as they are, into a fresh pack."""
    victims: list[str] = []
    for object_id, (live, lowest) in s.state.usage().items():
        size = s.listing.get(sync.DATA_PREFIX + object_id)
        if not size or lowest == 0:
            continue  # a stand-alone object, or unknown
        if live < REPACK_BELOW * size:
            victims.append(object_id)
    if not victims:
        return False
    moves = [(p, d, e) for p, d, e in s.state.in_objects(victims) if e.get("t") == "f"]
    new_id = fmt.new_object_id()
    name = sync.DATA_PREFIX + new_id
    s.index.add_pending(name)
    new_entries: dict[tuple[str, str], dict[str, Any]] = {}
    with s.transport.writer(name) as raw:
        out = sync.ObjectWriter(raw, md5=not s.transport.local)
        pos = out.write(fmt.pack_header(os.urandom(16)))
        groups = sync.group_by_object([(f"{p}\x00{d}", e) for p, d, e in moves])
        for obj, items in groups.items():
            for key, entry, reader, err in sync.read_blobs(s.transport, obj, items):
                if reader is None:
                    raise err or IntegrityError(obj)
                data_len = int(entry["n"])
                copied = 0
                while copied < data_len:
                    block = reader.read(min(1024 * 1024, data_len - copied))
                    if not block:
                        raise IntegrityError(f"{obj} is shorter than the manifest says")
                    out.write(block)
                    copied += len(block)
                path, _, dot = key.partition("\x00")
                new_entries[(path, dot)] = {**entry, "o": new_id, "a": pos}
                pos += data_len
        if s.binding.padding != "none":
            sync.write_filler(out)
            pos = out.count
    digest = out.md5()
    ops = [{"p": path, "reloc": {dot: {"o": new_id, "a": entry["a"], "om": digest,
                                       "r": int(entry.get("r", 0)) + 1}}}
           for (path, dot), entry in new_entries.items()]
    s.commit(ops)
    s.index.clear_pending({name})
    s.listing[name] = pos
    # The old packs are now unreferenced; the garbage collector deletes them after the grace
    # period, so a concurrent push that still points at them keeps working meanwhile.
    return True


def settings(folder: str | None, keep_days: int | None = None) -> dict[str, Any]:
    """The folder's settings; a change is checked before it is saved."""
    binding = find_binding(folder)
    if keep_days is not None:
        with folder_lock(binding):
            if not 0 <= keep_days <= MAX_KEEP_DAYS:
                raise UsageError(f"--keep-days {keep_days} is not from 0 to {MAX_KEEP_DAYS}")
            binding.keep_days = keep_days
            binding.save()
    return {"folder": binding.folder, "keep_days": binding.keep_days}


def mark(folder: str | None) -> dict[str, Any]:
    """(Re)write the folder marker: the user says this folder, as it is, is the bound one."""
    binding = find_binding(folder)
    with folder_lock(binding):
        if not Path(binding.folder).is_dir():
            raise UsageError(f"the bound folder {binding.folder} does not exist")
        path = write_marker(binding)
    audit.record("mark", vault=binding.vault_id, device=binding.device, folder_id=binding.id)
    return {"folder": binding.folder, "marker": str(path)}


# --- pull ---------------------------------------------------------------------------------


def pull(folder: str | None, ui: UI | None = None) -> dict[str, Any]:
    with _audited("pull", folder), session(folder, ui, scan=True, guard=True) as s:
        result = _pull(s)
        result["unreadable"] = sorted(s.unreadable)
        _log(s, "pull", files=len(result["downloaded"]), deleted=len(result["deleted"]),
             conflicts=len(result["conflicts"]), errors=len(result["errors"]) or None)
        return result


def _pull_plan(s: Session, local: dict[str, sync.LocalItem]) -> tuple[
        sync.PullPlan, dict[str, tuple[str, dict[str, Any]]], int]:
    """Only paths whose remote dot differs from the one last synced need a look: their
    entries and index rows are read, nothing else is (a big vault stays cheap to pull)."""
    heads = sync.heads(s.state)
    known = s.index.dots()
    # never .cloudguard (ours), nor what the scan could not read: that waits, as it was
    held = [*s.unreadable, sync.MARKER_DIR]
    wanted = {p: d for p, d in heads.items() if known.get(p) != d and not sync.under(p, held)}
    gone = [p for p in known if p not in heads and not sync.under(p, held)]
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
    plan = sync.plan_pull(local, rows, remote, _hasher(s.folder), s.labels(),
                          lambda p: p in local or p in heads or p in known, s.binding.device,
                          first, kept)
    return plan, remote, len(heads)


def _pull(s: Session) -> dict[str, Any]:
    """Stage every download (nothing lands unless all authenticate), then land path by path:
    moves aside, deletes (deepest first), folders, files, links. An error on one path is
    reported in ``errors`` (one line naming it) and the rest still arrives."""
    resolved = _resolve(s)
    local = _scan(s)
    plan, remote, _n = _pull_plan(s, local)
    _check_space(s, plan.download)
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
    kinds = {r.path: r.kind for r in plan.delete}
    return {"downloaded": sorted(written), "updated": updated, "deleted": deleted,
            "conflicts": sorted(resolved + plan.conflicts), "skipped": plan.skipped,
            "errors": errors,
            "counts": {"downloaded": _counts("f" for _ in written),
                       "made": _counts(str(e.get("t")) for _d, _t, e in plan.make),
                       "deleted": _counts(kinds.get(p, "f") for p in deleted)}}


def _around_folder(s: Session, plan: sync.PullPlan, dest: str, dot: str,
                   entry: dict[str, Any]) -> str:
    """Where a file or link lands: ``dest``, or a conflict name if a folder is still there (the
    user filled it during the pull, so it was kept). The index then holds the remote version
    at ``dest``, so the next push puts the folder in its place."""
    try:
        if dest in plan.conflicts or not stat.S_ISDIR(os.lstat(s.folder / dest).st_mode):
            return dest
    except OSError:  # nothing there, or a file where a parent folder should be
        return dest
    writer = dot.partition(":")[0]
    labels = s.labels()
    name = sync.conflict_name(dest, int(entry.get("m", 0)), labels.get(writer, writer[:8]),
                              lambda p: os.path.lexists(s.folder / p) or p in plan.conflicts)
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


def _stage_all(s: Session, downloads: list[tuple[str, str, dict[str, Any]]],
               errors: list[str]) -> list[tuple[sync.Staged, str, dict[str, Any]]]:
    """Every download decrypted into a temp file. Any integrity failure: nothing is kept and
    exit 3; a full disk: nothing is kept and one line saying how much space is needed; any
    other error on one file: that file is reported in ``errors``, the others go on."""
    failures: list[str] = []
    staged: list[tuple[sync.Staged, str, dict[str, Any]]] = []
    created: list[Path] = []
    total = sum(int(e.get("s", 0)) for _d, _t, e in downloads)
    dots = {d: t for d, t, _e in downloads}
    fetch: list[tuple[str, dict[str, Any]]] = []
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
                             "re-uploads lost or damaged objects")
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


def _check_space(s: Session, downloads: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Every download is staged beside the files it replaces, so all of it must fit at once;
    refused before anything is fetched."""
    needed = sum(int(e.get("s", 0)) for _d, _t, e in downloads)
    free = _free_bytes(s.folder) if needed else None
    if free is not None and needed > free:
        raise _no_space(s, needed)


def _stage(s: Session, dest: str, entry: dict[str, Any], reader: fmt.Reader,
           created: list[Path]) -> sync.Staged:
    dek, file_id = sync.dek_of(entry, s.ring.kek)

    def fill(fh: Any) -> None:
        fmt.decrypt_blob(reader, fh, dek, file_id, str(entry.get("h", "")))
        fmt.expect_end(reader)

    return sync.stage(s.folder, dest, fill, int(entry.get("x", 0o600)), int(entry.get("m", 0)),
                      created)


def _landed_row(s: Session, dest: str, dot: str, entry: dict[str, Any]) -> IndexRow:
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


# --- status and verify --------------------------------------------------------------------


def status(folder: str | None, ui: UI | None = None) -> dict[str, Any]:
    with session(folder, ui, scan=True) as s:
        try:
            check_marker(s.binding)
        except GuardError as exc:
            s.ui.warn(str(exc))
        local = _scan(s)
        up, _rows = _push_plan(s, local)
        down, _remote, _n = _pull_plan(s, local)
        return {
            "folder": s.binding.folder, "remote": remotes.redact(s.binding.remote),
            "vault": s.binding.vault_id,
            "device": s.binding.device, "epoch": s.ring.head.epoch,
            "vault_code": fmt.vault_code(s.binding.vault_id),
            "files": s.state.count_files(), "exposed": _exposure(s),
            "reencryption": _unfinished(s),
            "to_push": sorted([i.path for i in up.upload] + [i.path for i, _ in up.put]
                              + [r.path for r in up.delete]),
            "to_pull": sorted([d for d, _t, _e in down.download + down.make + down.meta]
                              + [r.path for r in down.delete]),
            "conflicts": down.conflicts, "unreadable": sorted(s.unreadable),
            "counts": {
                "to_push": _counts([*("f" for _ in up.upload), *(i.kind for i, _ in up.put),
                                    *(r.kind for r in up.delete)]),
                "to_pull": _counts([*("f" for _ in down.download),
                                    *(str(e.get("t")) for _d, _t, e in down.make + down.meta),
                                    *(r.kind for r in down.delete)]),
                "push_deletes": _counts(r.kind for r in up.delete),
                "pull_deletes": _counts(r.kind for r in down.delete)},
        }


def _unfinished(s: Session) -> dict[str, Any] | None:
    from . import rekey

    return rekey.unfinished(s)


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


def verify(folder: str | None, read_data: bool = False, ui: UI | None = None
           ) -> dict[str, Any]:
    with _audited("verify", folder), session(folder, ui, refetch=True) as s:
        result = _verify(s, read_data)
        _log(s, "verify", read_data=read_data, files=result["files"],
             objects=result["objects"])
        return result


def _verify(s: Session, read_data: bool) -> dict[str, Any]:
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
                             "still match")
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    unreferenced = sorted(n for n in s.listing if n.startswith(sync.DATA_PREFIX) and n not in live)
    if authenticate:
        checked_how = "data"
    elif hashed == len(groups):
        checked_how = "md5"
    else:  # WebDAV and others keep no hash: a flipped byte keeps the size
        checked_how = "sizes" if hashed == 0 else "md5 and sizes"
    return {"files": len(files), "objects": len(groups), "read_data": authenticate,
            "hash_checked": hashed, "authenticated": checked, "unreferenced": unreferenced,
            "checked": checked_how, "ok": True}


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def _authenticate(s: Session, entry: dict[str, Any], reader: fmt.Reader | None,
                  err: Exception | None) -> None:
    """Read one blob to its end and check it, writing nothing: what verify --read-data and
    repair ask of every file. Raises IntegrityError naming nothing (callers add the path)."""
    if reader is None:
        raise IntegrityError(str(err))
    dek, file_id = sync.dek_of(entry, s.ring.kek)
    fmt.decrypt_blob(reader, _Null(), dek, file_id, str(entry.get("h")))
    fmt.expect_end(reader)


# --- keys and devices ---------------------------------------------------------------------


def key_list(folder: str | None) -> list[dict[str, Any]]:
    """One row per KEK epoch on the head's ancestry: when it started, and whether current."""
    with session(folder) as s:
        now = time.time()
        out = []
        half = _unfinished(s)
        for c in reversed(s.ring.view.ancestry(s.ring.head)):
            if c.action in ("add",):
                continue
            out.append({"epoch": c.epoch, "commit": c.id, "action": c.action,
                        "created": c.created,
                        "age_days": round((now - _epoch(c.created)) / 86400, 1),
                        "current": c.kek == s.ring.head.kek,
                        "reencryption": half if half and half["epoch"] == c.epoch else None})
        return out


def key_export(folder: str | None, path: str, name: str | None = None,
               choose: bool = False) -> dict[str, Any]:
    """The kit's passphrase is generated (and returned, to be shown once) unless choose."""
    target = Path(path).expanduser()
    if target.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    with session(folder) as s:
        passphrase = (keymod.get_passphrase(
            f"the recovery kit {path}", confirm=True,
            hint="or leave out --choose-passphrase to get a generated one",
            var=keymod.KIT_PASSPHRASE_VAR)
            if choose else passphrases.generate())
        secret = Secret.generate()
        rid = keymod.new_member_id()
        commit = _add_member(s.transport, s.index, s.ring, rid, secret.public("kit"),
                             name or f"kit {target.name}")
        try:
            keymod.write_kit(target, s.binding.vault_id, rid, commit.id, secret, passphrase)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        s.index.set_meta("kit_exported", now_iso())
        _log(s, "key-export", kit_id=rid)
        return {"kit": str(target), "id": rid, "passphrase": None if choose else passphrase}


def device_list(folder: str | None) -> dict[str, Any]:
    with session(folder) as s:
        members = [{"id": rid, "kind": keys.kind, "name": s.ring.name_of(rid),
                    "this_device": rid == s.binding.device}
                   for rid, keys in sorted(s.ring.view.members.items())]
        s.ring.learn_names(s.ring.view.removed)
        removed = [{"id": rid, "name": s.ring.name_of(rid), "cutoff": cut.seq}
                   for rid, cut in sorted(s.ring.view.removed.items())]
        return {"vault": s.binding.vault_id, "vault_code": fmt.vault_code(s.binding.vault_id),
                "members": members, "removed": removed, "pending": _pending(s)}


def _pending(s: Session) -> list[dict[str, Any]]:
    """Enrolment requests waiting on the remote; one that does not verify, or is for another
    vault or under another name, is listed with its problem (never approvable)."""
    out: list[dict[str, Any]] = []
    for name in sorted(n for n in s.listing if n.startswith(keymod.ENROLL_PREFIX)):
        rid = name[len(keymod.ENROLL_PREFIX):]
        row: dict[str, Any] = {"id": rid, "name": None, "fingerprint": None, "created": None,
                               "problem": None}
        try:
            req = chain.read_request(s.transport.get_bytes(name, limits.MAX_ENROLMENT))
        except IntegrityError:
            row["problem"] = f"{name} is not a valid enrolment request"
            out.append(row)
            continue
        row.update(name=req.name, fingerprint=req.fingerprint, created=req.created)
        if req.vault != s.binding.vault_id or req.rid != rid:
            row["problem"] = f"{name} is for another vault or under another name"
        out.append(row)
    return out


Confirm = Callable[[dict[str, Any]], bool]


def device_reject(folder: str | None, wanted: str, confirm: Confirm | None = None
                  ) -> dict[str, Any]:
    """Delete a pending enrolment request, chosen by its fingerprint (or, for one that does not
    verify and so has none, its id), once ``confirm`` agrees."""
    with session(folder) as s:
        for row in _pending(s):
            if wanted.strip().lower() == row["id"] or (
                    row["fingerprint"] and _code(row["fingerprint"]) == _code(wanted)):
                if confirm is not None and not confirm(row):
                    raise CloudguardError(f"not rejected: enrolment request {row['id']} stays")
                s.transport.delete([keymod.ENROLL_PREFIX + row["id"]])
                _log(s, "device-reject", rejected=row["id"])
                return {"rejected": row["id"], "name": row["name"],
                        "fingerprint": row["fingerprint"]}
        raise UsageError(f"no pending enrolment request has fingerprint or id {wanted} (see "
                         "cloudguard device list)")


def device_approve(folder: str | None, fp: str, ui: UI | None = None,
                   confirm: Confirm | None = None) -> dict[str, Any]:
    """``confirm`` sees the verified request (name, fingerprint, id) before anything is
    written; the CLI asks the person, or refuses without a terminal unless --yes."""
    wanted = _code(fp)
    with session(folder, ui) as s:
        refused: list[str] = []  # not a request at all: tampering, reported if nothing matches
        for name in sorted(n for n in s.listing if n.startswith(keymod.ENROLL_PREFIX)):
            try:
                req = chain.read_request(s.transport.get_bytes(name, limits.MAX_ENROLMENT))
            except IntegrityError as exc:
                s.ui.warn(f"ignored malformed enrolment request {name}")
                refused.append(str(named(name, exc)) if str(exc) else f"{name}: malformed")
                continue
            if _code(req.fingerprint) != wanted:
                continue
            if req.vault != s.binding.vault_id or name != keymod.ENROLL_PREFIX + req.rid:
                raise IntegrityError(f"{name}: the enrolment request with fingerprint {fp} is "
                                     "for another vault or under another name; refused")
            shown = {"id": req.rid, "name": req.name, "fingerprint": req.fingerprint,
                     "created": req.created}
            if confirm is not None and not confirm(shown):
                raise CloudguardError(f"not approved: {req.name} ({req.fingerprint}) stays "
                                      "pending; cloudguard device reject removes the request")
            _add_member(s.transport, s.index, s.ring, req.rid, req.keys, req.name)
            s.transport.delete([name])
            _log(s, "device-approve", approved=req.rid)
            return {"approved": req.rid, "name": req.name, "fingerprint": req.fingerprint,
                    "vault_code": fmt.vault_code(s.binding.vault_id)}
        if refused:
            raise IntegrityError(f"no valid pending enrolment request has fingerprint {fp}; "
                                 "refused: " + "; ".join(refused))
        raise UsageError(f"no pending enrolment request has fingerprint {fp}")


def device_remove(folder: str | None, rid: str, reencrypt: bool = False,
                  ui: UI | None = None) -> dict[str, Any]:
    if rid == find_binding(folder).device:
        raise UsageError("a device cannot remove itself (it would know the next key); "
                         "remove it from another device")
    with _audited("device-remove", folder, every=True), \
            session(folder, ui, tolerate=frozenset({rid})) as s:
        if rid not in s.ring.head.members:
            raise UsageError(f"no device or recovery slot has id {rid} (see cloudguard device "
                             "list)")
        if len(s.ring.head.members) == 1:
            raise UsageError("refusing to remove the last member: nobody could sign again")
        result = _rotate(s, reencrypt, remove=rid)
        _log(s, "device-remove", removed=rid, reencrypt=reencrypt)
        return result


def key_rotate(folder: str | None, reencrypt: bool = False, ui: UI | None = None
               ) -> dict[str, Any]:
    with _audited("rotate", folder, every=True), session(folder, ui) as s:
        result = _rotate(s, reencrypt, remove=None)
        _log(s, "rotate", reencrypt=reencrypt, deleted=result["deleted_objects"],
             resumed=result.get("resumed"))
        return result


def _cutoff(s: Session, rid: str) -> chain.Cutoff:
    """The last segment of ``rid`` that we applied: readers accept nothing of it after this."""
    seq = s.state.ctx.get(rid, 0)
    digest = mf.applied_hash(s.state.consumed(), rid, seq)
    return chain.Cutoff(s.ring.head.members[rid].s, seq, digest)


def _rewrap(s: Session, kek: bytes, commitment: str) -> None:
    for path, sibs in list(s.state.items()):
        for dot, entry in sibs.items():
            if "k" in entry and entry.get("g") != commitment:
                try:
                    dek, file_id = sync.dek_of(entry, s.ring.kek)
                except IntegrityError as exc:
                    raise named(path, exc) from exc
                entry["k"] = fmt.b64(fmt.wrap_dek(kek, dek, file_id))
                entry["g"] = commitment
                s.state.put_entry(path, dot, entry)


def _rewrap_stale(s: Session) -> None:
    """Entries a device wrote under an older KEK (it was frozen, or raced a rotation) move
    to the head's KEK: that limits, but does not undo, what a removed member could read."""
    head = s.ring.head.kek
    if s.index.get_meta("wrapped_under") == head and not s.index.get_meta("rewrap_needed"):
        return
    stale = any("k" in e and e.get("g") != head for _p, sibs in s.state.items()
                for e in sibs.values())
    if stale:
        with s.state.transaction():
            _rewrap(s, s.ring.head_kek, head)
            s.snapshot()
    s.index.set_meta("wrapped_under", head)
    s.index.set_meta("rewrap_needed", None)


def _exposure(s: Session) -> list[dict[str, Any]]:
    """Files whose DEK a removed member could unwrap: the DEK was first wrapped (``w``) under
    a KEK it held. Re-wrapping does not change that; only re-encryption does."""
    exposed = s.ring.view.exposed_to()
    if not exposed:
        return []
    s.ring.learn_names(s.ring.view.removed)
    counts: dict[str, int] = {}
    for _path, sibs in s.state.items():
        for entry in sibs.values():
            for rid in exposed.get(str(entry.get("w", entry.get("g"))), []):
                counts[rid] = counts.get(rid, 0) + 1
    return [{"removed": rid, "name": s.ring.name_of(rid), "files": n}
            for rid, n in sorted(counts.items())]


def _rotate(s: Session, reencrypt: bool, remove: str | None) -> dict[str, Any]:
    """A new KEK in a signed commit, wrapped to the remaining members; DEKs re-wrapped, or
    content redone (:mod:`cloudguard.rekey`, which also resumes an interrupted run).

    Order keeps every crash recoverable: the commit (with its key object), then the re-wrapped
    entries in a snapshot, or the re-encrypted content in committed batches, then deletions.
    """
    from . import rekey

    _resolve(s)
    _collect_pending(s)  # objects of an earlier run that was killed before its commit
    started = rekey.intent(s.index)
    if started is not None and not rekey.landed(s, started):
        s.index.set_meta(rekey.INTENT, None)  # killed before its new key was published
        started = None
    if reencrypt and remove is None and started is not None:
        return rekey.run(s, started, resumed=True)
    members = {r: k for r, k in s.ring.head.members.items() if r != remove}
    removed = dict(s.ring.head.removed)
    if remove is not None:
        # a snapshot of ours covers the member's writes up to the cutoff before the removal
        # lands, so no reader ever needs the removed member's own segments again
        s.snapshot()
        removed[remove] = _cutoff(s, remove)
    s.ring.all_keks()  # every older KEK, for the history (and the re-wrap below)
    intent = rekey.begin(s, remove, started) if reencrypt else None
    commit = trust.change(s.ring, s.transport, s.index, "remove" if remove else "rotate",
                          members=members, removed=removed, new_key=True, names={},
                          reencrypt=reencrypt)
    if intent is not None:
        rekey.published(s, intent, commit)
        return rekey.run(s, intent, resumed=False)
    new_kek = s.ring.head_kek
    # The entries change in place; until the snapshot that commits them is uploaded, a
    # failure must leave the local state as it was, so all of it is one transaction.
    with s.state.transaction():
        _rewrap(s, new_kek, commit.kek)
        s.snapshot()
    s.index.set_meta("wrapped_under", commit.kek)
    return {"epoch": commit.epoch, "commit": commit.id, "reencrypted": False,
            "removed": remove, "resumed": False, "files": 0, "deleted_objects": 0}


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


__all__ = ["UI", "clone_vault", "device_approve", "device_list", "device_reject", "device_remove",
           "doctor", "init_vault", "key_export", "key_list", "key_rotate", "pull", "push",
           "status", "verify"]


# --- doctor -------------------------------------------------------------------------------

_KNOWN = re.compile(r"^(cloudguard\.json|keys/[0-9]{8}-[0-9a-f]{64}(\.k)?|"
                    r"m/[0-9a-f]{16}-[0-9]{12}\.[ds]|"
                    r"data/[0-9a-f]{32}|enroll/[0-9a-f]{16})$")


def doctor(folder: str | None, check_remote: bool = False) -> dict[str, Any]:
    """Run every check on one bound folder (or all of them); ``ok`` is False on any error."""
    from . import doctor as checks

    if folder is not None or _binding_id(None) is not None:
        bindings = [find_binding(folder)]
    else:
        bindings = checks.all_bindings()
    findings: list[checks.Finding] = []
    if not bindings:
        findings.append(checks.Finding("warning", "folders", "no folder is bound on this "
                                       "machine", "run: cloudguard init or clone"))
    findings += checks.check_permissions(bindings)
    for binding in bindings:
        findings += checks.check_exposure(binding, Path.home())
        findings += checks.check_sharing(binding)
        try:
            check_marker(binding)
            findings.append(checks.Finding("ok", "folder-marker",
                                           f"{binding.folder} carries its marker"))
        except GuardError as exc:
            findings.append(checks.Finding(
                "error", "folder-marker", str(exc),
                f"mount the disk or move the folder back; or: cloudguard mark -C "
                f"{binding.folder}"))
        try:
            with session(binding.folder) as s:
                now = time.time()
                ages = [(c.epoch, (now - _epoch(c.created)) / 86400)
                        for c in s.ring.view.ancestry(s.ring.head) if c.action != "add"]
                recovery = any(k.kind == "kit" for k in s.ring.head.members.values())
                had_kit = any(k.kind == "kit" for c in s.ring.view.commits.values()
                              for k in c.members.values())
                for row in _exposure(s):
                    findings.append(checks.Finding(
                        "warning", "exposure", f"{row['files']} files were readable by removed "
                        f"member {row['name']} ({row['removed']}) and still are to its copies",
                        "cloudguard key rotate --reencrypt gives them new keys"))
                half = _unfinished(s)
                if half is not None:
                    findings.append(checks.Finding(
                        "error", "reencryption", f"the re-encryption to key epoch "
                        f"{half['epoch']} started {half['started']} was interrupted: "
                        f"{half['files_left']} files are still under older keys"
                        + (f" that removed member {half['removed']} could read"
                           if half["removed"] else ""), half["fix"]))
                findings += checks.check_keys(ages, recovery, checks.policy_days(),
                                              kit_removed=had_kit and not recovery)
                if check_remote:
                    findings += _doctor_remote(s)
                _log(s, "doctor", remote=check_remote,
                     errors=sum(1 for f in findings if f.level == "error"))
        except CloudguardError as exc:
            level = "error"
            findings.append(checks.Finding(level, "vault", f"{binding.folder}: {exc}",
                                           "see the message; cloudguard verify for details"))
    errors = [f for f in findings if f.level == "error"]
    return {"ok": not errors, "errors": len(errors),
            "warnings": sum(1 for f in findings if f.level == "warning"),
            "findings": checks.findings_json(findings)}


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _doctor_remote(s: Session) -> list[Any]:
    from .doctor import Finding

    out: list[Finding] = []
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    for name in sorted(s.listing):
        if not _KNOWN.match(name):
            out.append(Finding("error", "remote-stray",
                               f"{remotes.redact(s.binding.remote)}/{name} is not a cloudguard "
                               "object (plaintext uploaded by another tool?)",
                               f"inspect and delete it: rclone deletefile "
                               f"'{remotes.redact(s.binding.remote)}/{name}'"))
            continue
        if name.startswith(sync.DATA_PREFIX):
            with s.transport.reader(name, count=4) as stream:
                magic = stream.read(4)
            if magic not in (fmt.BLOB_MAGIC, fmt.PACK_MAGIC):
                out.append(Finding("error", "remote-stray", f"{name} does not hold cloudguard "
                                   "ciphertext", f"inspect and delete {name}"))
            elif name not in live:
                out.append(Finding("warning", "remote-unreferenced", f"{name} is referenced by "
                                   "no manifest (a crashed or running push; collected after "
                                   "the grace period)", "cloudguard push collects it later"))
    if not out:
        out.append(Finding("ok", "remote", f"all {len(s.listing)} objects on the remote are "
                           "cloudguard ciphertext referenced by the manifest"))
    return out
