"""The encrypted manifest: an append-only log of segments per device, merged as a CRDT.

Why this shape (docs/design.md, "Manifest"):

* Every push writes one small *delta* segment ``m/<device>-<seq>.d``; nothing mutable is ever
  overwritten, so two devices pushing at once cannot erase each other.
* Each entry carries a *dot* ``device:seq`` naming the push that wrote it; each state carries a
  version vector ``ctx``. A delta removes only the dots its writer had seen, so concurrent edits
  of one path both survive as siblings (and become a conflict copy), never a lost update.
* A *snapshot* ``m/<device>-<seq>.s`` holds the whole state with its ``ctx``; segments it
  covers are deleted. Two snapshots merge losslessly (observed-remove map merge), so compaction
  races are safe.
* Each device remembers the highest ``ctx`` it has seen; a remote whose ``ctx`` is lower was
  rolled back, and a gap in a device's sequence is a deleted segment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import format as fmt
from .errors import IntegrityError
from .keys import KeyRing, now_iso
from .state import write_private

PREFIX = "m/"
_NAME = re.compile(r"^m/([0-9a-f]{16})-([0-9]{12})\.([ds])$")

Entry = dict[str, Any]
Siblings = dict[str, Entry]


def segment_name(device: str, seq: int, kind: str) -> str:
    return f"{PREFIX}{device}-{seq:012d}.{kind}"


def parse_name(name: str) -> tuple[str, int, str] | None:
    match = _NAME.match(name)
    if not match:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


def dot_of(device: str, seq: int) -> str:
    return f"{device}:{seq}"


def covered(dot: str, ctx: dict[str, int]) -> bool:
    device, _, seq = dot.partition(":")
    return int(seq) <= ctx.get(device, 0)


def newer_location(one: Entry, two: Entry) -> Entry:
    """A repack moves a blob without a new dot; the move with the higher ``r`` wins.

    A max-register, so the result is the same in any order and on every device. Ties (two
    devices repacking at once) go to the higher object id; the loser becomes garbage.
    """
    return max(one, two, key=lambda e: (int(e.get("r", 0)), str(e.get("o", "")),
                                        json.dumps(e, sort_keys=True)))


@dataclass
class State:
    ctx: dict[str, int] = field(default_factory=dict)
    paths: dict[str, Siblings] = field(default_factory=dict)

    def apply_delta(self, device: str, seq: int, ops: list[dict[str, Any]]) -> None:
        dot = dot_of(device, seq)
        for op in ops:
            path = op["p"]
            if not isinstance(path, str):
                raise IntegrityError()
            sibs = self.paths.setdefault(path, {})
            for moved, loc in (op.get("reloc") or {}).items():
                if moved in sibs:
                    sibs[moved] = newer_location(sibs[moved], {**sibs[moved], **loc})
            for old in op.get("rm", []):
                sibs.pop(old, None)
            entry = op.get("e")
            if entry is not None:
                if not isinstance(entry, dict):
                    raise IntegrityError()
                sibs[dot] = entry
            if not sibs:
                del self.paths[path]
        self.ctx[device] = max(self.ctx.get(device, 0), seq)

    def merge(self, other: State) -> None:
        """Observed-remove merge: a dot one side lacks but has seen was deleted there."""
        for path in set(self.paths) | set(other.paths):
            mine = self.paths.get(path, {})
            theirs = other.paths.get(path, {})
            keep: Siblings = {}
            for dot, entry in mine.items():
                if dot in theirs or not covered(dot, other.ctx):
                    keep[dot] = entry
            for dot, entry in theirs.items():
                if dot in mine:
                    keep[dot] = newer_location(mine[dot], entry)
                elif not covered(dot, self.ctx):
                    keep[dot] = entry
            if keep:
                self.paths[path] = keep
            else:
                self.paths.pop(path, None)
        for device, seq in other.ctx.items():
            self.ctx[device] = max(self.ctx.get(device, 0), seq)

    def dominates(self, ctx: dict[str, int]) -> bool:
        return all(self.ctx.get(d, 0) >= s for d, s in ctx.items())

    def objects(self) -> dict[str, list[Entry]]:
        """Live object id -> entries stored in it (for verify, repack and garbage collection)."""
        out: dict[str, list[Entry]] = {}
        for sibs in self.paths.values():
            for entry in sibs.values():
                if entry.get("t") == "f":
                    out.setdefault(str(entry["o"]), []).append(entry)
        return out


@dataclass
class Loaded:
    state: State
    names: dict[str, int]  # segment name -> size
    own_seq: int  # highest seq this device has used on the remote
    deltas: int  # how many delta segments are stored (compaction trigger)
    heads: dict[str, str]  # device -> sha256 of its newest segment (for the prev chain)


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


def load(listing: dict[str, int], fetch: Callable[[str], bytes], keyring: KeyRing,
         device: str, seen: dict[str, int], cache: SegmentCache) -> Loaded:
    """Rebuild the state from the segments listed on the remote and check for rollback."""
    parsed: dict[str, tuple[str, int, str]] = {}
    for name in listing:
        got = parse_name(name)
        if got is not None:
            parsed[name] = got

    def open_named(name: str) -> dict[str, Any]:
        data = cache.get(name, listing[name])
        fresh = data is None
        if data is None:
            data = fetch(name)
        try:
            payload = fmt.open_segment(keyring.kek(fmt.segment_generation(data)), name, data)
        except IntegrityError as exc:
            raise IntegrityError(f"manifest segment {name} failed authentication") from exc
        dev, seq, kind = parsed[name]
        if (payload.get("device"), payload.get("seq"), payload.get("kind")) != (
                dev, seq, {"d": "delta", "s": "snapshot"}[kind]):
            raise IntegrityError(f"manifest segment {name} does not match its name")
        if fresh:
            cache.put(name, data)
        heads_hash[name] = hashlib.sha256(data).hexdigest()
        return payload

    heads_hash: dict[str, str] = {}
    state = State()
    for name, (_dev, _seq, kind) in sorted(parsed.items()):
        if kind == "s":
            payload = open_named(name)
            snap = State(ctx=_ctx(payload.get("ctx")), paths=_paths(payload.get("paths")))
            state.merge(snap)

    pending: dict[str, dict[int, str]] = {}
    for name, (dev, seq, kind) in parsed.items():
        if kind == "d" and seq > state.ctx.get(dev, 0):
            pending.setdefault(dev, {})[seq] = name
    progress = True
    while progress:
        progress = False
        for dev in sorted(pending):
            nxt = state.ctx.get(dev, 0) + 1
            found = pending[dev].get(nxt)
            if found is None:
                continue
            payload = open_named(found)
            for kind in ("d", "s"):  # the writer's own previous segment, if we opened it
                before = heads_hash.get(segment_name(dev, nxt - 1, kind))
                if before is not None and payload.get("prev") not in (None, before):
                    raise IntegrityError(f"manifest segment {found} does not follow "
                                         f"{segment_name(dev, nxt - 1, kind)}: a segment was "
                                         "replaced")
            deps = _ctx(payload.get("deps"))
            if not state.dominates({d: s for d, s in deps.items() if d != dev}):
                continue
            state.apply_delta(dev, nxt, check_ops(payload.get("ops")))
            del pending[dev][nxt]
            progress = True
    for dev, rest in pending.items():
        if rest:
            missing = segment_name(dev, state.ctx.get(dev, 0) + 1, "d")
            raise IntegrityError(f"manifest segment {missing} is missing: the manifest was "
                                 "truncated or a segment was deleted")
    for dev, seq in seen.items():
        if state.ctx.get(dev, 0) < seq:
            raise IntegrityError(
                f"the remote manifest is older than one this device has seen (device {dev} at "
                f"{state.ctx.get(dev, 0)}, seen {seq}): rollback or deleted manifest")
    own = max([seq for dev, seq, _k in parsed.values() if dev == device] + [0])
    deltas = sum(1 for _d, _s, k in parsed.values() if k == "d")
    newest: dict[str, tuple[int, str]] = {}
    for name, digest in heads_hash.items():
        dev, seq, _k = parsed[name]
        if seq > newest.get(dev, (-1, ""))[0]:
            newest[dev] = (seq, digest)
    cache.prune(parsed)
    return Loaded(state, dict(listing), own, deltas, {d: h for d, (_s, h) in newest.items()})


def _ctx(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise IntegrityError("manifest segment has no version vector")
    out: dict[str, int] = {}
    for k, v in raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise IntegrityError("manifest version vector is malformed")
        out[str(k)] = v
    return out


_DOT = re.compile(r"^[0-9a-f]{16}:[0-9]{1,12}$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{32}$")
_FIELD_TYPES: dict[str, type] = {
    "t": str, "s": int, "m": int, "x": int, "h": str, "o": str, "a": int, "n": int,
    "i": str, "k": str, "g": int, "l": str, "r": int, "om": str,
}
_FILE_FIELDS = frozenset(("o", "a", "n", "i", "k", "g", "h"))
_UNSIGNED = frozenset(("s", "x", "a", "n", "g", "r"))


def check_entry(entry: object) -> Entry:
    """Entries come from a keyholder, but a reader still refuses anything malformed.

    Runs once per entry per load (100,000 times in a big vault), hence the flat loop.
    """
    if type(entry) is not dict:
        raise IntegrityError("manifest entry is malformed")
    for key, value in entry.items():
        want = _FIELD_TYPES.get(key)
        if want is None or type(value) is not want or (
                key in _UNSIGNED and value < 0):  # type: ignore[operator]  # "m" may be < 0
            raise IntegrityError("manifest entry is malformed")
    kind = entry.get("t")
    if kind == "f":
        if not _FILE_FIELDS <= entry.keys() or not _OBJECT_ID.match(entry["o"]):
            raise IntegrityError("manifest entry is malformed")
    elif kind not in ("d", "l"):
        raise IntegrityError("manifest entry is malformed")
    return entry


def check_ops(ops: object) -> list[dict[str, Any]]:
    if not isinstance(ops, list):
        raise IntegrityError("manifest delta is malformed")
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("p"), str):
            raise IntegrityError("manifest op is malformed")
        if op.get("e") is not None:
            check_entry(op["e"])
        rm = op.get("rm", [])
        if not isinstance(rm, list) or not all(isinstance(d, str) and _DOT.match(d) for d in rm):
            raise IntegrityError("manifest op is malformed")
        reloc = op.get("reloc") or {}
        if not isinstance(reloc, dict) or not all(
                isinstance(d, str) and _DOT.match(d) and isinstance(loc, dict)
                and set(loc) - {"om"} == {"o", "a", "r"} and isinstance(loc["o"], str)
                and _OBJECT_ID.match(loc["o"]) is not None
                and isinstance(loc.get("om", ""), str)
                and all(isinstance(loc[k], int) and not isinstance(loc[k], bool)
                        and loc[k] >= 0 for k in ("a", "r"))
                for d, loc in reloc.items()):
            raise IntegrityError("manifest op is malformed")
    return ops


def _paths(raw: object) -> dict[str, Siblings]:
    if not isinstance(raw, dict):
        raise IntegrityError("manifest snapshot is malformed")
    for sibs in raw.values():
        if not isinstance(sibs, dict) or not all(
                isinstance(d, str) and _DOT.match(d) for d in sibs):
            raise IntegrityError("manifest snapshot is malformed")
        for entry in sibs.values():
            check_entry(entry)
    return raw


def delta_payload(device: str, seq: int, deps: dict[str, int], prev: str | None,
                  ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "delta", "device": device, "seq": seq, "deps": deps, "prev": prev,
            "created": now_iso(), "ops": ops}


def snapshot_payload(device: str, seq: int, state: State) -> dict[str, Any]:
    return {"kind": "snapshot", "device": device, "seq": seq, "ctx": state.ctx,
            "created": now_iso(), "paths": state.paths}
