"""Suspect stretches (manifest/raises.py; format.md "Suspect stretches"; review round 8,
W2 (c)): a removed member's late vector covering a write it omits counts as seen and deleted
only until the removal shows."""

from __future__ import annotations

from typing import Any

import pytest

from cloudguard import manifest as mf
from cloudguard.errors import IntegrityError
from cloudguard.manifest.clamp import Limits, clamp_own

A, B, C, X = "a" * 16, "b" * 16, "c" * 16, "e" * 16
ENTRY: dict[str, Any] = {"t": "d"}


def _lagging() -> mf.State:
    """B held A:1 and A:2; X's late snapshot X:12 covers A:3, which it omits."""
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 1, [{"p": "one", "e": ENTRY, "rm": []}])
        state.apply_delta(A, 2, [{"p": "two", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 3, X: 12}, [("one", {f"{A}:1": ENTRY}),
                                             ("two", {f"{A}:2": ENTRY})], {}, 10, f"{X}:12")
    return state


def test_a_late_vector_keeps_a_write_out_only_until_the_removal_shows() -> None:
    state = _lagging()
    a_snapshot = [("one", {f"{A}:1": ENTRY}), ("two", {f"{A}:2": ENTRY}),
                  ("three", {f"{A}:3": ENTRY})]
    with state.transaction():  # the removal is hidden: X's word counts
        state.merge_snapshot({A: 4}, a_snapshot, {}, 10, f"{A}:4")
    assert state.entry("three", f"{A}:3") is None
    assert state.honest() == state.ctx
    clamp_own(state, Limits({X: 10}))  # the removal shows
    state.cuts = {X: 10}
    assert state.honest()[A] == 2  # what its snapshots may claim
    with state.transaction():
        state.merge_snapshot({A: 4}, a_snapshot, {}, 10, f"{A}:4")
    assert state.entry("three", f"{A}:3") is not None
    assert state.honest()[A] == 4  # A's own snapshot answers for the stretch now


def test_a_suspect_delta_is_applied_but_a_version_held_as_removed_stays_removed() -> None:
    state = _lagging()
    state.cuts = {X: 10}
    with state.transaction():
        state.to_attic("gone", f"{A}:3", ENTRY, 5, f"{C}:1")
        state.apply_delta(A, 3, [{"p": "gone", "e": ENTRY, "rm": []},
                                 {"p": "one", "e": ENTRY, "rm": [f"{A}:1"]}])
    assert state.entry("gone", f"{A}:3") is None
    assert state.entry("one", f"{A}:1") is None  # the rest of the delta applies
    assert state.entry("one", f"{A}:3") is not None


def test_a_hearsay_snapshot_drops_only_what_its_history_holds() -> None:
    state = mf.State()
    state.cuts = {X: 10}
    with state.transaction():
        for seq, path in ((1, "kept"), (2, "named")):
            state.apply_delta(A, seq, [{"p": path, "e": ENTRY, "rm": []}])
        # C, lagging, compacted with X's late write in its vector: it omits both
        state.merge_snapshot({A: 2, C: 5, X: 10}, [], {
            "named": {f"{A}:2": {"e": ENTRY, "g": 5, "rb": [f"{C}:4"]}}}, 10, f"{C}:5",
            raw={A: 2, C: 5, X: 11})
    assert state.entry("kept", f"{A}:1") is not None
    assert state.entry("named", f"{A}:2") is None


def test_a_writers_word_about_itself_is_never_suspect() -> None:
    """C's vector covers X's late write: what it says of A (and of X) is suspect, what it
    says of its own writes is not."""
    state = mf.State()
    state.cuts = {X: 10}
    with state.transaction():
        state.merge_snapshot({A: 4, C: 5, X: 10}, [], {}, 10, f"{C}:5",
                             raw={A: 4, C: 5, X: 11})
    assert state.honest() == {A: 0, C: 5, X: 0}


def test_a_snapshot_must_name_its_own_seq() -> None:
    from cloudguard.manifest.segments import _check_segment

    snap = {"kind": "snapshot", "device": X, "seq": 12, "ctx": {X: 10, A: 3},
            "created": "2024-01-01T00:00:00+00:00", "paths": {}, "attic": {}, "rc": {}}
    with pytest.raises(IntegrityError, match="does not name its own seq"):
        _check_segment("m/x", snap)
    _check_segment("m/x", {**snap, "ctx": {X: 12, A: 3}})


def test_a_snapshot_keeps_the_snapshots_that_answer_for_a_stretch_it_leaves_out() -> None:
    c_snap = mf.segment_name(C, 5, "s")
    names = [mf.segment_name(A, 2, "d"), mf.segment_name(A, 3, "d"), c_snap,
             mf.segment_name(C, 4, "s"), mf.segment_name(B, 7, "s")]
    consumed: dict[str, tuple[int, str, dict[str, int] | None]] = {
        c_snap: (1, "", {A: 3, C: 5}), mf.segment_name(C, 4, "s"): (1, "", {A: 2, C: 4})}
    got = mf.doomed(names, mf.segment_name(B, 7, "s"), {A: 2, B: 7, C: 5}, consumed)
    assert got == [mf.segment_name(A, 2, "d"), mf.segment_name(C, 4, "s")]


def test_a_flood_of_small_raises_never_pushes_a_suspect_stretch_out() -> None:
    """Review round 9, X1: X's late X:12 lifts A over 5..100, then 300 more snapshots lift
    it by one each. Past the cap the oldest stretches are coalesced, never dropped: the
    stretch X lifted is still suspect once the removal shows."""
    from cloudguard.manifest.raises import MAX_PER_DEVICE

    state = mf.State()
    with state.transaction():
        state.ctx[A] = 5
        state.merge_snapshot({A: 100, X: 12}, [], {}, 10, f"{X}:12")
        for i in range(MAX_PER_DEVICE + 44):
            state.merge_snapshot({A: 101 + i, X: 13 + i}, [], {}, 10, f"{X}:{13 + i}")
    assert state.db.execute("SELECT COUNT(*) FROM raises WHERE device = ?",
                            (A,)).fetchone()[0] <= MAX_PER_DEVICE
    state.cuts = {X: 11}
    assert state.honest()[A] == 5


def test_a_writers_own_delete_counts_though_its_vector_leaves_the_version_out() -> None:
    """Review round 9, X3: B deleted A:3 inside a stretch its snapshots do not claim; its
    snapshot's history names B's own delete, and that removes A:3 on a reader that still
    holds it."""
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 3, [{"p": "three", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 2, B: 9}, [], {
            "three": {f"{A}:3": {"e": ENTRY, "g": 5, "rb": [f"{B}:8"]}}}, 10, f"{B}:9")
    assert state.entry("three", f"{A}:3") is None
    assert dict(state.attic_rows())["three"][f"{A}:3"]["rb"] == [f"{B}:8", f"{B}:9"]


def _moved_in_a_stretch() -> mf.State:
    """A:1's blob moved by A:2 (22..) and by A:3 (33..); A:3 lies in a stretch X's late
    snapshot lifted, so B's snapshots leave it out of their vector."""
    blob = {"t": "f", "h": "0", "s": 1, "n": 100, "i": "0" * 32, "k": "x", "g": "ab" * 32,
            "o": "11" * 16, "a": 0, "r": 0}
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 1, [{"p": "f", "e": blob}])
        state.apply_delta(A, 2, [{"p": "f", "reloc": {f"{A}:1": {"o": "22" * 16, "a": 0,
                                                                  "r": 1}}}])
        state.merge_snapshot({A: 3, X: 12}, [("f", {f"{A}:1": state.entry("f", f"{A}:1")})],
                             {}, 10, f"{X}:12")
        state.cuts = {X: 10}
        state.apply_delta(A, 3, [{"p": "f", "reloc": {f"{A}:1": {"o": "33" * 16, "a": 0,
                                                                  "r": 2}}}])
    return state


def test_a_snapshot_leaving_a_stretch_out_leaves_out_the_moves_it_does_not_cover() -> None:
    """Its vector lowered, a snapshot would otherwise name a move past it, which every
    reader refuses as planted (a whole snapshot refused: exit 3 everywhere)."""
    from cloudguard.manifest.segments import _check_moves, snapshot_payload

    state = _moved_in_a_stretch()
    assert state.entry("f", f"{A}:1")["rd"] == [f"{A}:2", f"{A}:3"]
    payload = snapshot_payload(B, 1, state)
    assert payload["ctx"][A] == 2
    assert payload["paths"]["f"][f"{A}:1"]["rd"] == [f"{A}:2"]
    assert payload["paths"]["f"][f"{A}:1"]["o"] == "33" * 16
    _check_moves(payload, payload["ctx"], 10**12)  # what every reader checks


def _held_and_forgot() -> mf.State:
    """B took A:3 from X's late snapshot X:12 (a stretch X lifted), then applied C:1, which
    deleted it, and forgot it past keep_days: its forget floor for A is 3."""
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 1, [{"p": "one", "e": ENTRY, "rm": []}])
        state.apply_delta(A, 2, [{"p": "two", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 3, X: 12}, [("one", {f"{A}:1": ENTRY}),
                                             ("two", {f"{A}:2": ENTRY}),
                                             ("three", {f"{A}:3": ENTRY})], {}, 10, f"{X}:12")
        state.apply_delta(C, 1, [{"p": "three", "e": None, "rm": [f"{A}:3"]}])
    assert state.prune_attic(10**12) == 1
    assert state.raises.floor() == {A: 3}
    state.cuts = {X: 10}
    return state


def test_a_version_this_device_held_and_forgot_never_comes_back_through_a_suspect_stretch(
        ) -> None:
    """Review round 9, X2: a replay of an old snapshot holding A:3 live does not bring it
    back, though the stretch is suspect; a snapshot of A that covers A:3 and does not hold
    it clears A's stretch."""
    state = _held_and_forgot()
    with state.transaction():
        state.merge_snapshot({A: 3, X: 10}, [("three", {f"{A}:3": ENTRY})], {}, 10, f"{B}:9",
                             raw={A: 3, X: 12})  # a replay that carries the late word too
    assert state.entry("three", f"{A}:3") is None
    assert state.honest()[A] == 2  # still not claimed
    with state.transaction():
        state.merge_snapshot({A: 4, X: 12}, [], {}, 10, f"{A}:4", raw={A: 4, X: 12})
    assert state.honest()[A] == 4


def test_a_history_row_a_snapshot_stated_raises_no_forget_floor() -> None:
    """Review round 10, Y2: X's late snapshot covers A:3, omits it, and states a history row
    for it dated 1970. B takes the row in and forgets it at once; that must not raise B's
    floor, or A's own snapshot holding A:3 live would clear the stretch without B taking
    A:3, and B's next clean snapshot would drop A:3 on every device."""
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 1, [{"p": "one", "e": ENTRY, "rm": []}])
        state.apply_delta(A, 2, [{"p": "two", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 3, X: 12}, [("one", {f"{A}:1": ENTRY}),
                                             ("two", {f"{A}:2": ENTRY})], {
            "three": {f"{A}:3": {"e": ENTRY, "g": 0, "rb": [f"{X}:11"]}}}, 10, f"{X}:12")
    assert state.prune_attic(5) == 1
    assert state.raises.floor() == {}
    state.cuts = {X: 10}
    with state.transaction():
        state.merge_snapshot({A: 4}, [("three", {f"{A}:3": ENTRY})], {}, 10, f"{A}:4")
    assert state.entry("three", f"{A}:3") is not None
    assert state.honest()[A] == 4


def _kept_out_until_a_snapshot_covers_it_without_holding_it(state: mf.State) -> None:
    """A's snapshot holds A:3 live, which B keeps out: it does not clear B's stretch; C's
    snapshot, covering A:3 without holding it, does."""
    with state.transaction():
        state.merge_snapshot({A: 4}, [("three", {f"{A}:3": ENTRY})], {}, 10, f"{A}:4")
    assert state.entry("three", f"{A}:3") is None
    assert state.honest()[A] == 2
    with state.transaction():
        state.merge_snapshot({A: 4, C: 2}, [], {}, 10, f"{C}:2")
    assert state.honest()[A] == 4


def test_a_snapshot_holding_live_what_the_floor_keeps_out_does_not_clear_it() -> None:
    """Review round 10, Y2 (3): A's own snapshot holds A:3 live, which B held, saw deleted
    and forgot. B keeps it out (the floor), so A's snapshot does not answer for it on B:
    B's snapshots go on leaving A:3 out of their vector, so they never drop it elsewhere. A
    snapshot that covers A:3 without holding it does clear it."""
    state = _held_and_forgot()
    _kept_out_until_a_snapshot_covers_it_without_holding_it(state)


def test_the_vector_stored_as_seen_keeps_what_came_from_the_writer_itself() -> None:
    """Review round 10, Y3: B's stretch of A (2,3] is suspect; B then applies A:4 and A:5
    from A's own deltas. Its snapshots claim A only up to 2, but the vector it stores as
    seen keeps A:5, so a rebuild that hides A's deltas is a rollback (exit 3), not a quiet
    loss. Hearsay stays out of it: X's late claim about C does not count."""
    state = _lagging()
    clamp_own(state, Limits({X: 10}))
    state.cuts = {X: 10}
    with state.transaction():
        state.apply_delta(A, 4, [{"p": "four", "e": ENTRY, "rm": []}])
        state.apply_delta(A, 5, [{"p": "five", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 5, B: 3, C: 40, X: 10}, [], {}, 10, f"{B}:3",
                             raw={A: 5, B: 3, C: 40, X: 12})
    assert state.honest()[A] == 2
    assert state.seen()[A] == 5
    assert state.seen()[C] == 0  # B's hearsay about C
    assert state.seen()[B] == 3  # B's word about itself
    assert state.seen()[X] == 10


def test_a_move_the_written_vector_leaves_out_goes_back_to_the_place_before() -> None:
    """Review round 10, Y5: the move A:3 lies in a stretch B's snapshot leaves out. Written at
    A:3's place with no record of the move, readers would take it as B's word and could no
    longer undo it if A:3 turns out to be late. The snapshot writes the place before the
    first recorded move instead, when that object is listed; otherwise the place stays."""
    import json

    from cloudguard.manifest.segments import _check_moves, snapshot_json

    state = _moved_in_a_stretch()

    def written(listed: Any) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(b"".join(snapshot_json(B, 1, state, None, listed)))
        _check_moves(payload, payload["ctx"], 10**12)
        return dict(payload["paths"]["f"][f"{A}:1"])

    back = written(lambda _o: True)
    assert back["o"] == "11" * 16 and back.get("r", 0) == 0
    assert not {"rd", "pl", "rt"} & set(back)
    stays = written(lambda o: o != "11" * 16)  # the place before is gone: it stays
    assert stays["o"] == "33" * 16 and stays["rd"] == [f"{A}:2"]


def test_a_late_history_row_does_not_keep_the_current_version_out() -> None:
    """Review round 11, Z1: X's late snapshot keeps D's old A:3 live at P and states a row
    for A's edit A:50 with X's own late dot as its remover. At the clamp, the live A:3 does not
    stop A:50 coming back: A:3 was not written over A:50 (A:50 was written over it)."""
    edit: dict[str, Any] = {"t": "d", "x": 0o700}
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 3, [{"p": "P", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 150, X: 13}, [("P", {f"{A}:3": ENTRY})], {
            "P": {f"{A}:50": {"e": edit, "g": 10, "rb": [f"{X}:12"]}}}, 10, f"{X}:13")
    assert state.entry("P", f"{A}:50") is None
    clamp_own(state, Limits({X: 10}))
    state.cuts = {X: 10}
    assert state.entry("P", f"{A}:50") == edit


def test_a_row_whose_only_removers_are_late_is_not_held_as_removed() -> None:
    state = _lagging()
    with state.transaction():
        state.to_attic("P", f"{A}:3", ENTRY, 5, f"{X}:12")
        state.to_attic("Q", f"{A}:3", ENTRY, 5, f"{C}:1")
        state.to_attic("R", f"{A}:3", ENTRY, 5, f"{C}:1 {X}:12")
    state.cuts = {X: 10}
    assert not state._kept_here("P", f"{A}:3")
    assert state._kept_here("Q", f"{A}:3")
    assert not state._kept_here("R", f"{A}:3")  # X's word as a whole (round 12, AA1)


def test_a_snapshot_holding_live_what_is_held_as_removed_here_does_not_clear_it() -> None:
    """Review round 11, Z1: every version rule 4 keeps out stops the clearing, not only one
    under the floor; a snapshot that covers it without holding it clears."""
    state = _lagging()
    state.cuts = {X: 10}
    with state.transaction():
        state.to_attic("three", f"{A}:3", ENTRY, 5, f"{C}:1")
    _kept_out_until_a_snapshot_covers_it_without_holding_it(state)


def test_a_late_row_naming_an_honest_remover_does_not_stop_the_revival() -> None:
    """Review round 12, AA1: X's late row for A:50 names A:3, the older version still live,
    beside its own dot, so A:3 would look written over A:50. A remover list that names a late
    dot is X's word as a whole: A:50 comes back, and is not held as removed."""
    edit: dict[str, Any] = {"t": "d", "x": 0o700}
    state = mf.State()
    with state.transaction():
        state.apply_delta(A, 3, [{"p": "P", "e": ENTRY, "rm": []}])
        state.merge_snapshot({A: 150, X: 13}, [("P", {f"{A}:3": ENTRY})], {
            "P": {f"{A}:50": {"e": edit, "g": 10, "rb": [f"{A}:3", f"{X}:12"]}}}, 10,
            f"{X}:13")
    state.cuts = {X: 10}
    assert not state._kept_here("P", f"{A}:50")
    clamp_own(state, Limits({X: 10}))
    assert state.entry("P", f"{A}:50") == edit


def test_a_later_forget_does_not_keep_an_earlier_stretch_out() -> None:
    """Review round 11, Z4: X's late snapshot lifted A over 2..3, omitting A:3. B later held
    A:10 (from A's own delta), saw it deleted and forgot it. With one floor per device, A:10
    kept A:3 out of B for good; each stretch has its own floor, and nothing of this one was
    forgotten, so A's snapshot holding A:3 brings it."""
    state = _lagging()
    with state.transaction():
        state.apply_delta(A, 10, [{"p": "ten", "e": ENTRY, "rm": []}])
        state.apply_delta(C, 1, [{"p": "ten", "e": None, "rm": [f"{A}:10"]}])
    assert state.prune_attic(10**12) == 1
    assert state.raises.floor() == {}
    state.cuts = {X: 10}
    with state.transaction():
        state.merge_snapshot({A: 11}, [("three", {f"{A}:3": ENTRY})], {}, 10, f"{A}:11")
    assert state.entry("three", f"{A}:3") is not None
