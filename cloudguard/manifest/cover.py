"""Can a reader that holds nothing reach every honest write this device holds? (format.md,
"Writer rules", review round 20, II1.)

A snapshot deletes the segments it covers. When a backdated removal later makes its writer's
segments late, every reader refuses that snapshot, and a reader that never held the vault (a
fresh device, the recovery script) then has no base for the honest segments it replaced:
it stops at "segment missing" and reads nothing. Devices that held the vault before still
have those writes; one of them writes a snapshot of its own, so the remote has a base again.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import REPUBLISH_HINT
from .clamp import clamp_ctx

__all__ = ["first_missing", "late_snapshots", "missing", "uncovered"]

Parsed = Mapping[str, tuple[str, int, str]]  # segment name -> (device, seq, "d" or "s")


def late_snapshots(parsed: Parsed, limit: Mapping[str, int]) -> list[str]:
    """The listed snapshots written by a removed member past its cutoff: every reader refuses
    them, whatever they covered."""
    return sorted(name for name, (dev, seq, kind) in parsed.items()
                  if kind == "s" and dev in limit and seq > limit[dev])


def uncovered(parsed: Parsed, snapshot_ctx: Mapping[str, Mapping[str, int]],
              held: Mapping[str, int], limit: dict[str, int]) -> bool:
    """Whether some honest member's writes up to ``held`` (this device's vector) are on the
    remote only through refused segments: no snapshot a fresh reader accepts covers them and
    the member's listed deltas do not start right after. ``snapshot_ctx``: the vector of each
    listed snapshot read (by name). Only asked when a late snapshot is listed."""
    cover: dict[str, int] = {}
    for name, ctx in snapshot_ctx.items():
        dev, seq, kind = parsed.get(name, ("", 0, "d"))
        if kind != "s" or dev in limit and seq > limit[dev]:
            continue
        for writer, n in clamp_ctx(dict(ctx), limit).items():
            cover[writer] = max(cover.get(writer, 0), n)
    deltas: dict[str, set[int]] = {}
    for dev, seq, kind in parsed.values():
        if kind == "d":
            deltas.setdefault(dev, set()).add(seq)
    for writer, have in held.items():
        if writer in limit:
            continue  # a removed member's own segments are vouched for by its removal
        reach = cover.get(writer, 0)
        while reach + 1 in deltas.get(writer, ()):
            reach += 1
        if reach < have:
            return True
    return False


def first_missing(pending: Mapping[str, Mapping[int, str]], waits: Mapping[str, Mapping[str, int]],
                  ctx: Mapping[str, int]) -> tuple[str, int]:
    """(writer, seq) of the segment to name when deltas can never apply: a writer's next one
    that is not listed, else one a waiting delta depends on. Naming the waiting delta, which
    is there, would send a user looking for the wrong object."""
    for dev in sorted(pending):
        if pending[dev] and ctx.get(dev, 0) + 1 not in pending[dev]:
            return dev, ctx.get(dev, 0) + 1
    for dev in sorted(waits):
        for writer, seq in sorted(waits[dev].items()):
            if writer != dev and seq > ctx.get(writer, 0) and not pending.get(writer):
                return writer, ctx.get(writer, 0) + 1
    dev = min(d for d in pending if pending[d])
    return dev, ctx.get(dev, 0) + 1


def missing(name: str, refused: list[str]) -> str:
    """The error of a reader whose next segment is gone: where a late snapshot is listed,
    that is likely what replaced it, and a member's next run mends it."""
    if refused:
        return (f"manifest segment {name} is missing; the snapshot that replaced it may be "
                f"{refused[0]}, written by a removed member after its removal (refused): a "
                "pull or push by a current member that holds the vault writes a snapshot of "
                "its own")
    return (f"manifest segment {name} is missing: the manifest was truncated or a segment "
            "was deleted" + REPUBLISH_HINT)
