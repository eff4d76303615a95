"""manifest/cover.py (review round 20, II1): whether a reader that holds nothing reaches every
honest write a device holds, past a removed member's late snapshot."""

from __future__ import annotations

from cloudguard.manifest import cover

A, B, X = "a" * 16, "b" * 16, "c" * 16


def _parsed(*names: tuple[str, int, str]) -> dict[str, tuple[str, int, str]]:
    return {f"m/{dev}-{seq:012d}.{kind}": (dev, seq, kind) for dev, seq, kind in names}


def test_a_late_snapshot_is_one_past_its_writers_cutoff() -> None:
    parsed = _parsed((B, 3, "s"), (B, 1, "s"), (A, 5, "d"), (X, 2, "d"))
    assert cover.late_snapshots(parsed, {B: 1}) == [f"m/{B}-000000000003.s"]
    assert cover.late_snapshots(parsed, {}) == []


def test_honest_writes_only_a_late_snapshot_covered_are_uncovered() -> None:
    """B's late snapshot replaced A's segments 1 to 4; A's 5 is listed: a fresh reader has no
    base below it, whatever the late snapshot's vector says."""
    parsed = _parsed((B, 3, "s"), (A, 5, "d"))
    late_ctx = {f"m/{B}-000000000003.s": {A: 4, B: 3}}
    assert cover.uncovered(parsed, late_ctx, {A: 5}, {B: 0})


def test_an_honest_snapshot_or_an_unbroken_run_of_deltas_covers_them() -> None:
    parsed = _parsed((B, 3, "s"), (A, 6, "s"), (A, 7, "d"), (A, 8, "d"))
    ctx = {f"m/{B}-000000000003.s": {A: 4}, f"m/{A}-000000000006.s": {A: 6}}
    assert not cover.uncovered(parsed, ctx, {A: 8}, {B: 0})
    gap = _parsed((A, 6, "s"), (A, 8, "d"))  # A's 7 is gone: a gap no reader crosses
    assert cover.uncovered(gap, {f"m/{A}-000000000006.s": {A: 6}}, {A: 8}, {B: 0})
    deltas = _parsed((A, 1, "d"), (A, 2, "d"))  # never compacted: the deltas alone
    assert not cover.uncovered(deltas, {}, {A: 2}, {})


def test_a_removed_members_own_writes_and_its_late_seqs_are_not_asked_for() -> None:
    """What a removed member wrote is vouched for by its removal (its pinned segments); and an
    honest snapshot's vector is clamped, so a late seq in it covers nothing."""
    parsed = _parsed((A, 2, "s"))
    assert not cover.uncovered(parsed, {f"m/{A}-000000000002.s": {A: 2, B: 9}}, {A: 2, B: 9},
                               {B: 1})
    assert cover.uncovered(parsed, {f"m/{A}-000000000002.s": {A: 1}}, {A: 2}, {B: 1})


def test_the_missing_segment_error_names_the_late_snapshot_when_there_is_one() -> None:
    late = f"m/{B}-000000000003.s"
    said = cover.missing(f"m/{A}-000000000001.d", [late])
    assert late in said and "removed member" in said and "\n" not in said
    plain = cover.missing(f"m/{A}-000000000001.d", [])
    assert "truncated or a segment was deleted" in plain
