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

Everything is re-exported here, so callers say ``mf.X``.
"""

from __future__ import annotations

from . import resolutions
from .clamp import MAX_KEPT, Limits, clamp_ctx
from .crdt import State, dot_of
from .entry import Entry, Op
from .loading import Loaded, Opener, _pinned, claim_floor, load, reissue_ops, written
from .moves import join_remover, late_dot, moved, removers, unmoved
from .refused import adopt_places, keep_refused
from .segments import (
    MAX_SEQ,
    PREFIX,
    SegmentCache,
    applied_hash,
    check_ops,
    delta_payload,
    doomed,
    parse_name,
    segment_name,
    snapshot_json,
    snapshot_payload,
    time_of,
)
from .signing import Verifier
from .signing import sign as sign_entry
from .unseen import replaced_by_unseen

__all__ = [
    "resolutions",
    "Entry",
    "Op",
    "late_dot",
    "Verifier",
    "sign_entry",
    "Loaded",
    "MAX_SEQ",
    "Opener",
    "PREFIX",
    "SegmentCache",
    "State",
    "MAX_KEPT",
    "Limits",
    "clamp_ctx",
    "_pinned",
    "applied_hash",
    "check_ops",
    "delta_payload",
    "dot_of",
    "doomed",
    "join_remover",
    "keep_refused",
    "adopt_places",
    "replaced_by_unseen",
    "removers",
    "claim_floor",
    "load",
    "moved",
    "parse_name",
    "reissue_ops",
    "segment_name",
    "snapshot_json",
    "snapshot_payload",
    "time_of",
    "unmoved",
    "written",
]
