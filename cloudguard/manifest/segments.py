"""Manifest segments: names, payloads, the local segment cache, and the
checks every decoded payload passes before it is applied.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from msgspec import UNSET

from ..errors import IntegrityError
from ..keys import now_iso
from ..state import write_private
from . import resolutions, types
from .crdt import State
from .entry import Entry, Op
from .moves import LOCATION_FIELDS

PREFIX = "m/"


_NAME = re.compile(r"^m/([0-9a-f]{16})-([0-9]{12})\.([ds])\Z")


def segment_name(device: str, seq: int, kind: str) -> str:
    return f"{PREFIX}{device}-{seq:012d}.{kind}"


MAX_SEQ = 10**12 - 1  # the most a segment name's 12 digits hold


def parse_name(name: str) -> tuple[str, int, str] | None:
    match = _NAME.match(name)
    if not match:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


class SegmentCache:
    """Ciphertext of segments we already fetched; names are immutable, so caching is safe."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name.replace("/", "_")

    def has(self, name: str, size: int) -> bool:
        try:
            return self.path(name).stat().st_size == size
        except OSError:
            return False

    def get(self, name: str, size: int) -> bytes | None:
        path = self.path(name)
        try:
            if path.stat().st_size == size:
                return path.read_bytes()
        except OSError:
            return None
        return None

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path(name), data)

    def prune(self, keep: Iterable[str]) -> None:
        wanted = {self.path(n).name for n in keep}
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name not in wanted:
                    child.unlink(missing_ok=True)


def applied_hash(consumed: dict[str, tuple[int, str, dict[str, int] | None]], device: str,
                 seq: int) -> str | None:
    """The SHA-256 of segment ``device``:``seq`` (delta or snapshot) as this state applied
    it, if it did: what a delta's ``dh`` and a removal's cutoff name."""
    for kind in ("d", "s"):
        got = consumed.get(segment_name(device, seq, kind))
        if got is not None:
            return got[1]
    return None


def firm(deps: dict[str, int], payload: dict[str, Any]) -> dict[str, int]:
    """What a delta's writer had applied itself: its ``deps`` where ``dh`` names the segment
    (a snapshot's vector can lift a lagging device's over seqs it never held, and a removed
    member's late snapshot can claim any; review round 21, KK1)."""
    dh = payload.get("dh")
    return {d: s for d, s in deps.items() if isinstance(dh, dict) and d in dh}


def time_of(payload: dict[str, Any]) -> int:
    """A segment's time (unix seconds): when the versions it replaced joined the history. A
    time in the future counts as now: a writer's clock must not keep history, or objects,
    for ever (review round 3, R7)."""
    try:
        written = int(datetime.fromisoformat(str(payload.get("created"))).timestamp())
    except ValueError as exc:
        raise IntegrityError("manifest segment has a malformed time") from exc
    return min(written, int(time.time()))


def carriers_of(payload: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A checked snapshot's ``rc``: the version vector of each carrier its history names."""
    rc: dict[str, dict[str, int]] = payload.get("rc", {})
    return rc


_DOT = types.DOT


def check_entry(entry: object) -> Entry:
    """Entries come from a keyholder, but a reader still refuses anything malformed."""
    try:
        msgspec.convert(entry, types.Entry, strict=True)
    except msgspec.ValidationError as exc:
        raise IntegrityError(f"manifest entry is malformed ({exc})") from exc
    return entry  # type: ignore[return-value]  # checked


def _legacy_removers(attic: object) -> None:
    """A history row's ``rb`` before adda486 was one dot as a string: read as a list."""
    if type(attic) is not dict:
        return
    for rows in attic.values():
        if type(rows) is dict:
            for row in rows.values():
                if type(row) is dict and type(row.get("rb")) is str:
                    legacy = row.pop("rb")
                    if legacy:
                        row["rb"] = [legacy]


# what a shape error is about, by where msgspec found it (the first that matches)
_WHAT = (
    (re.compile(r"\$\.paths\[\.\.\.\]\[\.\.\.\]|\]\.e\b"), "manifest entry is malformed"),
    (re.compile(r"\$\.ops\["), "manifest op is malformed"),
    (re.compile(r"\$\.ops\b|field `ops`"), "manifest delta is malformed"),
    (re.compile(r"\$\.attic\b"), "manifest snapshot has a malformed history"),
    (re.compile(r"\$\.rc\b"), "manifest snapshot has malformed carriers"),
    (re.compile(r"\$\.(ctx|deps)\b"), "manifest version vector is malformed"),
    (re.compile(r"field `(ctx|deps)`"), "manifest segment has no version vector"),
    (re.compile(r"\$\.created\b|field `created`"), "manifest segment has a malformed time"),
    (re.compile(r"\$\.dh\b"), "manifest segment has malformed dependencies"),
    (re.compile(r"\$\.paths\b|field `paths`"), "manifest snapshot is malformed"),
)


def _shape_error(exc: msgspec.ValidationError) -> IntegrityError:
    said = str(exc)
    what = next((w for pattern, w in _WHAT if pattern.search(said)), "manifest delta is malformed"
                if "delta" in said else "manifest segment is malformed")
    return IntegrityError(f"{what} ({said})")


def _check_segment(name: str, payload: dict[str, Any]) -> None:
    """Validate a segment's payload as soon as it is opened, so an error names the segment:
    its shape by decoding it into :mod:`.types` (the typed copy is dropped: the payload as
    stored is what signatures cover and what the state takes), then what the shape cannot
    say. Each segment is checked once, so :func:`load` reads its payload as it is."""
    try:
        if payload.get("kind") == "snapshot":
            _legacy_removers(payload.get("attic"))
        try:
            seg = types.segment(payload)
        except msgspec.ValidationError as exc:
            raise _shape_error(exc) from exc
        time_of(payload)
        if isinstance(seg, types.Snapshot):
            if seg.ctx.get(seg.device) != seg.seq:
                # a late snapshot that hid itself from the vector would carry no taint
                raise IntegrityError("its version vector does not name its own seq")
            if payload.get("attic") is None:
                payload["attic"] = {}
            # a floor (before a89cc32) is read as nothing: only the chain ends history now
            # (review round 6, U2), and what an old floor dropped is not in the snapshot
            payload.pop("floor", None)
            payload.pop("fb", None)
            _check_moves(payload, seg.ctx, time_of(payload))
            _check_removers(seg)
        elif not all(resolutions.saw(op["e"], seg.device, seg.seq, seg.deps)
                     for op in payload["ops"] if op.get("e") is not None):
            raise IntegrityError("a resolution carries content its writer had not seen")
    except IntegrityError as exc:
        raise IntegrityError(f"manifest segment {name}: {exc}") from exc


def _check_moves(payload: dict[str, Any], ctx: dict[str, int], until: int) -> None:
    """Moves a snapshot carries (review round 3, R6 (c)): a move its writer had not seen is
    planted, and a move's time is never later than the snapshot (a time in the future would
    keep the old place, and its object, for ever). On the payload's dicts, not the typed copy:
    a time is lowered where the state takes it (and writers check what they write with it)."""
    entries = [e for sibs in payload["paths"].values() for e in sibs.values()]
    entries += [r["e"] for rows in (payload.get("attic") or {}).values() for r in rows.values()]
    for entry in entries:
        rd = entry.get("rd")
        if rd is None:
            continue
        for dot in rd:
            device, _, seq = dot.partition(":")
            if int(seq) > ctx.get(device, 0):
                raise IntegrityError("manifest entry names a move its writer never saw")
        if entry["rt"] > until:
            entry["rt"] = until


# How many removers of one device a kept version may name: the delta that removed it, and a
# snapshot of the same device that dropped it (review round 7, V3)
MAX_REMOVERS_PER_DEVICE = 2


def _check_removers(snap: types.Snapshot) -> None:
    """A history row names the deltas and snapshots that removed the version (``rb``): one its
    writer had not seen is planted (review round 4, S10), as a move is: after that writer's
    removal it would bring back versions a user deleted on purpose. The checks are on the
    snapshot as written, before any clamp. A row names at most two removers of one device,
    and ``rc`` holds only carriers the history names, each with a vector its writer had seen:
    otherwise a removed member's snapshot could make every device's state grow without bound,
    or make an honest carrier late for ever (review round 7, V3, V5 (b))."""
    ctx = snap.ctx
    named: set[str] = set()
    for rows in (snap.attic or {}).values():
        for row in rows.values():
            if row.rb is UNSET:
                continue
            per_device: dict[str, int] = {}
            for remover in row.rb:
                device, _, seq = remover.partition(":")
                if int(seq) > ctx.get(device, 0):
                    raise IntegrityError("manifest history names a removal its writer never "
                                         "saw")
                per_device[device] = per_device.get(device, 0) + 1
                if per_device[device] > MAX_REMOVERS_PER_DEVICE:
                    raise IntegrityError("manifest history names more than "
                                         f"{MAX_REMOVERS_PER_DEVICE} removers of one device "
                                         "for one version")
            named.update(row.rb)
    for dot, vector in snap.rc.items():
        if dot not in named:
            raise IntegrityError("manifest snapshot gives the vector of a carrier its history "
                                 "does not name")
        if any(seq > ctx.get(device, 0) for device, seq in vector.items()):
            raise IntegrityError("manifest snapshot gives a carrier a vector its writer never "
                                 "saw")


def check_ops(ops: object) -> list[Op]:
    """Ops (a delta's, or ones about to be written) that have the shape of OP."""
    try:
        msgspec.convert(ops, list[types.Op], strict=True)
    except msgspec.ValidationError as exc:
        raise IntegrityError(f"manifest op is malformed ({exc})") from exc
    return ops  # type: ignore[return-value]  # checked


def delta_payload(device: str, seq: int, deps: dict[str, int], prev: str | None,
                  ops: list[Op], dh: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    return {"kind": "delta", "device": device, "seq": seq, "deps": deps, "dh": dh or {},
            "prev": prev, "created": now_iso(), "ops": ops}


def snapshot_json(device: str, seq: int, state: State, prev: str | None = None,
                  listed: Callable[[str], bool] | None = None) -> Iterator[bytes]:
    """The whole state with ``device`` at ``seq`` as compact, key-sorted JSON text, one path
    at a time, so a snapshot of 100,000 entries is never held as objects or as text; the
    caller records that seq once uploaded. ``prev`` (the writer's previous segment's hash)
    chains snapshots like deltas. ``listed``: is this data object on the remote (None:
    unknown, so a move the vector leaves out is never undone in the snapshot)."""
    def dump(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

    ctx = {**state.honest(), device: seq}  # never a stretch a late word lifted (raises.py)
    named: set[str] = set()  # filled while the attic streams; "rc" comes after it

    def carriers() -> Iterator[tuple[str, dict[str, int]]]:
        for dot, vector in state.carriers.of(named).items():  # never past what we saw
            yield dot, {d: min(s, ctx.get(d, 0)) for d, s in vector.items()}

    streamed = {"attic": _seen_removers(state.attic_rows(), ctx, named, listed),
                "paths": _seen_moves(state.items(), ctx, listed), "rc": carriers()}
    fields: dict[str, Any] = {
        "kind": "snapshot", "device": device, "seq": seq, "ctx": ctx,
        "prev": prev, "created": now_iso(), **streamed}
    for i, key in enumerate(sorted(fields)):
        yield (b"{" if i == 0 else b",") + dump(key) + b":"
        if key in streamed:
            yield b"{"
            for j, (path, value) in enumerate(fields[key]):
                yield (b"," if j else b"") + dump(path) + b":" + dump(value)
            yield b"}"
        else:
            yield dump(fields[key])
    yield b"}"


def _seen_removers(rows: Iterator[tuple[str, dict[str, dict[str, Any]]]], ctx: dict[str, int],
                   named: set[str], listed: Callable[[str], bool] | None = None
                   ) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """A kept version's removers that the vector does not cover are left out (readers refuse
    such a remover as planted, _check_removers): a clamp can leave one behind, a late version
    removed by a later late dot of its writer (a member that a backdated removal took out
    edited a file twice; review round 6, U4). The removers written go to ``named``."""
    for path, kept in rows:
        out: dict[str, dict[str, Any]] = {}
        for d, row in kept.items():
            seen = _latest(r for r in row.get("rb") or () if _covers(ctx, r))
            out[d] = {k: v for k, v in row.items() if k != "rb"} | ({"rb": seen} if seen else {})
            out[d]["e"] = _moves_seen(out[d]["e"], ctx, listed)
            named.update(seen)
        yield path, out


def _seen_moves(paths: Iterator[tuple[str, dict[str, Any]]], ctx: dict[str, int],
                listed: Callable[[str], bool] | None = None
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, sibs in paths:
        yield path, {d: _moves_seen(e, ctx, listed) for d, e in sibs.items()}


def _moves_seen(entry: dict[str, Any], ctx: dict[str, int],
                listed: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """An entry's moves that the written vector does not cover are left out (readers refuse
    them as planted, _check_moves): a vector that leaves out a suspect stretch (raises.py) may
    not cover a move this device applied there. Such a move may be a removed member's, which
    readers could no longer undo once its dot is no longer named, so the entry goes back to
    the place before its first recorded move (``pl``) when that object is listed: a reader
    holding a newer place keeps it (the location max-register), and one that has none gets a
    place no late mover chose (review round 10, Y5). Otherwise the place stays; only the
    record of the move goes, and with no move left, the kept place before it too."""
    rd = entry.get("rd")
    if not rd or all(_covers(ctx, d) for d in rd):
        return entry
    before = entry.get("pl")
    if listed is not None and isinstance(before, dict) and listed(str(before.get("o"))):
        return {k: v for k, v in entry.items()
                if k not in LOCATION_FIELDS and k not in ("pl", "rd", "rt")} | before
    seen = [d for d in rd if _covers(ctx, d)]
    if seen:
        return {**entry, "rd": seen}
    return {k: v for k, v in entry.items() if k not in ("pl", "rd", "rt")}


def _latest(dots: Iterable[str]) -> list[str]:
    """At most MAX_REMOVERS_PER_DEVICE dots of each device, its latest, sorted."""
    by_device: dict[str, list[int]] = {}
    for dot in dots:
        device, _, seq = dot.partition(":")
        by_device.setdefault(device, []).append(int(seq))
    return sorted(f"{d}:{s}" for d, seqs in by_device.items()
                  for s in sorted(set(seqs))[-MAX_REMOVERS_PER_DEVICE:])


def _covers(ctx: dict[str, int], dot: str) -> bool:
    device, _, seq = dot.partition(":")
    return int(seq or 0) <= ctx.get(device, 0)


def snapshot_payload(device: str, seq: int, state: State, prev: str | None = None
                     ) -> dict[str, Any]:
    """:func:`snapshot_json` as one dict (tests and small states)."""
    parsed: dict[str, Any] = json.loads(b"".join(snapshot_json(device, seq, state, prev)))
    return parsed


def doomed(names: Iterable[str], own: str, claimed: dict[str, int],
           consumed: dict[str, tuple[int, str, dict[str, int] | None]]) -> list[str]:
    """The segments a snapshot with vector ``claimed`` replaces: each one whose seq it covers,
    except a snapshot whose own vector reaches past ``claimed`` (a suspect stretch left out
    of it): that one still answers for the rest, so readers need it."""
    out = []
    for name in names:
        parsed = parse_name(name)
        if not parsed or name == own or parsed[1] > claimed.get(parsed[0], 0):
            continue
        ctx = consumed.get(name, (0, "", None))[2]
        if parsed[2] == "s" and ctx and any(s > claimed.get(d, 0) for d, s in ctx.items()):
            continue
        out.append(name)
    return out
