"""The shapes of a manifest segment's payload (format.md, "Manifest payloads") as msgspec
Structs, with the short wire names: decoding a payload into them is its shape check, done in
C, where a hand-written check took a second per 100,000 entries. A field that may be absent
is ``UNSET`` (never a default that would be written back: the stored bytes are what the
signatures cover, so nothing here is encoded again). What a shape cannot say (a move's three
fields together, a file's fields, the dots of a resolution) is checked in ``__post_init__``,
whose ValueError msgspec reports as a ValidationError; what needs the segment's vector
(moves and removers a writer never saw) stays in segments.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

DOT_PATTERN = r"^[0-9a-f]{16}:[0-9]{1,12}\Z"
DOT = re.compile(DOT_PATTERN)

Dot = Annotated[str, Meta(pattern=DOT_PATTERN)]
ObjectId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}\Z")]
Writer = Annotated[str, Meta(pattern=r"^[0-9a-f]{16}\Z")]
Unsigned = Annotated[int, Meta(ge=0)]
Vector = dict[str, Unsigned]  # VV: {device: highest seq seen}


class PlacedBefore(Struct, forbid_unknown_fields=True, gc=False):
    """An entry's ``pl``: where its blob was before its first recorded move (any of the
    location fields, ``o`` and ``a`` at least)."""

    o: ObjectId
    a: Unsigned
    r: Unsigned | UnsetType = UNSET
    om: str | UnsetType = UNSET
    n: Unsigned | UnsetType = UNSET
    i: str | UnsetType = UNSET
    k: str | UnsetType = UNSET
    g: str | UnsetType = UNSET
    w: str | UnsetType = UNSET


class Location(Struct, forbid_unknown_fields=True, gc=False):
    """A ``reloc`` target: the same blob moved (``o``, ``a``, ``r``, ``om``), or the content
    encrypted anew under a fresh DEK (also ``n``, ``i``, ``k``, ``g``, ``w``, all five)."""

    o: ObjectId
    a: Unsigned
    r: Unsigned
    om: str | UnsetType = UNSET
    n: Unsigned | UnsetType = UNSET
    i: str | UnsetType = UNSET
    k: str | UnsetType = UNSET
    g: str | UnsetType = UNSET
    w: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        rekeyed = (self.n, self.i, self.k, self.g, self.w)
        if any(v is UNSET for v in rekeyed) and any(v is not UNSET for v in rekeyed):
            raise ValueError("a re-encrypted location needs n, i, k, g and w")


class Entry(Struct, forbid_unknown_fields=True, gc=False):
    """A version (format.md, "ENTRY fields"); ``sg`` is required, unknown fields refused."""

    t: Literal["f", "d", "l"]
    sg: str
    s: Unsigned | UnsetType = UNSET
    m: int | UnsetType = UNSET  # may be < 0 (before 1970)
    x: Unsigned | UnsetType = UNSET
    h: str | UnsetType = UNSET
    o: str | UnsetType = UNSET
    a: Unsigned | UnsetType = UNSET
    n: Unsigned | UnsetType = UNSET
    i: str | UnsetType = UNSET
    k: str | UnsetType = UNSET
    g: str | UnsetType = UNSET
    w: str | UnsetType = UNSET
    l: str | UnsetType = UNSET  # noqa: E741  (the wire name)
    r: Unsigned | UnsetType = UNSET
    om: str | UnsetType = UNSET
    pt: Unsigned | UnsetType = UNSET
    lc: Unsigned | UnsetType = UNSET
    wb: Writer | UnsetType = UNSET
    cs: Dot | UnsetType = UNSET  # the first dot of the content a carried version holds
    rd: list[Dot] | UnsetType = UNSET
    rt: Unsigned | UnsetType = UNSET
    pl: PlacedBefore | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.rd is not UNSET or self.rt is not UNSET or self.pl is not UNSET:
            # a moved blob: all three; every move raises r, so a place kept from before one
            # is lower (review round 4, S5)
            if (self.rd is UNSET or not self.rd or self.rt is UNSET or self.pl is UNSET
                    or _or0(self.pl.r) >= _or0(self.r)):
                raise ValueError("malformed move")
        if self.t == "f" and (
                UNSET in (self.a, self.n, self.i, self.k, self.g, self.h)
                or self.o is UNSET or _OBJECT_ID.match(self.o) is None):
            raise ValueError("a file needs o, a, n, i, k, g and h")


_OBJECT_ID = re.compile(r"^[0-9a-f]{32}\Z")


def _or0(value: int | UnsetType) -> int:
    return 0 if value is UNSET else value


class Op(Struct, gc=False):
    """A delta's op: a new version (or a delete, ``e`` null) with the dots it replaces, or
    moves of existing dots (``reloc``)."""

    p: str
    e: Entry | None = None
    rm: list[Dot] = []
    reloc: dict[Dot, Location] | None = None


class Kept(Struct, forbid_unknown_fields=True, gc=False):
    """A history row: the version, when it left (``g``) and who removed it (``rb``: sorted,
    distinct, never empty)."""

    e: Entry
    g: Unsigned
    rb: list[Dot] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.rb is not UNSET and (not self.rb or self.rb != sorted(set(self.rb))):
            raise ValueError("malformed rb")


class Delta(Struct, tag_field="kind", tag="delta"):
    device: str
    seq: int
    deps: Vector
    ops: list[Op]
    created: str
    prev: str | None = None
    dh: dict[str, str] | None = None


class Snapshot(Struct, tag_field="kind", tag="snapshot"):
    device: str
    seq: int
    ctx: Vector
    paths: dict[str, dict[Dot, Entry]]
    created: str
    prev: str | None = None
    attic: dict[str, dict[Dot, Kept]] | None = None
    rc: dict[Dot, Vector] = {}


Segment = Delta | Snapshot


def segment(payload: object) -> Delta | Snapshot:
    """``payload`` as a delta or a snapshot (by its ``kind``), or a ValidationError."""
    seg: Delta | Snapshot = msgspec.convert(payload, Segment, strict=True)
    return seg
