"""What a late version replaced, for a reader that never held the late version (review
round 20, II2; round 19's HH4).

A device that applied a removed member's late edit of a path before the removal showed, and
then an honest member's edit over it, keeps what the late edit replaced in the history: an
honest *edit* of a late version stands (format.md "Version history", clamp._undoes). A
reader that never applied the late delta (a fresh device, a device that saw the removal
first) sees the honest delta remove a version it does not hold, and what the late version
replaced stays live beside the honest edit, a conflict copy no other device shows. The
honest delta named the late dot; the late delta, read for this only, names what it
replaced; the same rule as the clamp's then decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..chain import Skip
from ..errors import IntegrityError
from .clamp import _undoes
from .crdt import State
from .loading import Opener
from .moves import late_dot
from .resolutions import content_tag
from .segments import _check_segment, segment_name

__all__ = ["replaced_by_unseen"]


def _seen(rm: Any, writer: str, seq: int, deps: Any) -> list[str]:
    """The dots of ``rm`` that the writer of delta ``writer:seq`` had seen: its own earlier
    ones and those its ``deps`` cover. Dot names are predictable, so a removed member could
    name an honest edit it never saw, and a reader would hide that edit (review round 20,
    JJ1). Its deps are its own word too, unchecked where a reader took its late snapshot
    instead of the delta: the honest editor's deps must cover the dot as well (round 21,
    KK1)."""
    if not isinstance(rm, list):
        return []
    deps = deps if isinstance(deps, dict) else {}
    kept = []
    for dot in rm:
        dev, _, k = dot.partition(":") if isinstance(dot, str) else ("", "", "")
        if not (k.isascii() and k.isdigit()):  # "²".isdigit(), and int() would raise
            continue
        if int(k) < seq if dev == writer else int(k) <= _int(deps.get(dev)):
            kept.append(dot)
    return kept


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def replaced_by_unseen(state: State, listing: Mapping[str, int],
                       fetch: Callable[[str], bytes], opener: Opener, log: list[str]) -> int:
    """Move to the history what each unseen late version replaced where an honest edit
    replaced that late version (``state.unseen``, filled by State.apply_delta); returns how
    many. The removal is recorded as the honest editor's: that is the edit that stands."""
    todo = list(state.unseen)
    state.unseen.clear()
    ops: dict[str, dict[str, dict[str, Any]]] = {}

    def op_of(late: str, path: str) -> dict[str, Any] | None:
        dev, _, seq = late.partition(":")
        name = segment_name(dev, int(seq), "d")
        if name not in ops:
            ops[name] = {}
            if name in listing:
                try:
                    payload = opener(name, dev, int(seq), fetch(name))
                    _check_segment(name, payload)
                except (IntegrityError, Skip) as exc:
                    log.append(f"{exc}; what it replaced stays as it is")
                else:
                    ops[name] = {op["p"]: {**op, "rm": _seen(op.get("rm"), dev, int(seq),
                                                           payload.get("deps"))}
                                 for op in payload.get("ops") or ()
                                 if isinstance(op, dict) and isinstance(op.get("p"), str)}
        return ops[name].get(path)

    moved = 0
    seen: set[tuple[str, str]] = set()
    now = int(time.time())
    with state.transaction():
        while todo:
            path, late, honest, deps = todo.pop()
            writer, _, at = honest.partition(":")
            if (path, late) in seen:
                continue
            seen.add((path, late))
            op = op_of(late, path)
            if op is None or not isinstance(op.get("e"), dict):
                continue
            live = state.siblings(path)
            gone = {d: {"e": e} for _p, d, e, _g in state.attic(path)}
            for old in op.get("rm") or ():
                if old == honest or not isinstance(old, str):
                    continue
                if old not in live:  # a chain of late edits: follow it
                    if late_dot(old, state.cuts):
                        todo.append((path, old, honest, deps))
                    continue
                if not _seen([old], writer, int(at), deps):
                    continue  # the honest editor never saw it: the late op's word alone (KK1)
                if late_dot(old, state.cuts) or _undoes(
                        honest, {"e": op["e"]}, live, gone, content_tag(live[old])):
                    continue  # a delete, rename away or touch of it: what it replaced stays
                state.to_attic(path, old, live.pop(old), now, honest, own=True, rw=honest)
                state._drop(path, old)
                moved += 1
    return moved
