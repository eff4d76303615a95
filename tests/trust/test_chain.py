"""The chain's pure rules on commits built in memory (no rclone): concurrent merges."""

from __future__ import annotations

import pytest

from cloudguard import chain, membership
from cloudguard.chain import Commit, MemberKeys, Secret
from cloudguard.membership import View

DESCRIPTOR = "11" * 32
T = "2026-12-02T00:00:00Z"
A, B = "a" * 16, "b" * 16


class Lab:
    """A vault's commits and key objects in memory; each change is built on a chosen commit."""

    def __init__(self) -> None:
        self.secrets = {A: Secret.generate(), B: Secret.generate()}
        self.objects: dict[str, bytes] = {}
        genesis, data, keyobj = chain.build(None, "", self.secrets[A], A, "genesis",
                                            {A: self.keys(A)}, {}, chain.new_kek(), 1,
                                            {A: "a"}, {}, DESCRIPTOR, T)
        self.vault = genesis.id
        self.objects[genesis.name], self.objects[genesis.name + ".k"] = data, keyobj

    def keys(self, rid: str) -> MemberKeys:
        return self.secrets[rid].public("device")

    def view(self) -> View:
        return membership.verify(self.vault, list(self.objects), self.objects.__getitem__, set(),
                            DESCRIPTOR)

    def kek(self, view: View, commit: Commit, rid: str) -> bytes:
        return chain.open_keys(view, commit, self.objects[commit.name + ".k"], rid,
                               self.secrets[rid].x)

    def commit(self, on: Commit, signer: str, action: str, members: list[str],
               merges: list[str] | None = None, reencrypt: bool = False) -> Commit:
        view = self.view()
        view.head = view.find(on.id) or on
        same_key = action == "add"
        removed = dict(on.removed)
        if action == "merge":  # what its verifiers compute from its own ancestry
            removed = membership.merge_members(view, on, merges or [])[1]
        kek = self.kek(view, on, signer) if same_key else chain.new_kek()
        commit, data, keyobj = chain.build(
            view, self.vault, self.secrets[signer], signer, action,
            {r: self.keys(r) for r in members}, removed, kek,
            on.epoch if same_key else max([on.epoch, *(view.find(t).epoch  # type: ignore[union-attr]
                                                       for t in merges or [])]) + 1,
            {r: r[:1] for r in members}, {},
            DESCRIPTOR, T, merges, reencrypt)
        self.objects[commit.name], self.objects[commit.name + ".k"] = data, keyobj
        return commit


def test_only_a_verified_reencryption_commit_ends_history() -> None:
    """Review round 6, U2: the history a re-encryption ends is named by a signed commit, by
    epoch: every generation below the newest re-encrypting commit, and none on a commit that
    keeps the KEK (a void one ends nothing: test_trust_attacks)."""
    lab = Lab()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    rotate = lab.commit(add, A, "rotate", [A, B])
    assert lab.view().ended() == frozenset()
    with pytest.raises(chain.IntegrityError):
        lab.commit(rotate, A, "add", [A, B], reencrypt=True)  # an add keeps the KEK
    redo = lab.commit(rotate, B, "rotate", [A, B], reencrypt=True)
    view = lab.view()
    assert view.ended() == {c.kek for c in (view.head, add, rotate) if c.epoch < redo.epoch}
    assert redo.kek not in view.ended() and rotate.kek in view.ended()
    assert view.ended(lambda c: c.id != redo.id) == frozenset()  # not counted: ends nothing


def test_a_reencryption_ends_what_does_not_build_on_it_whatever_its_epoch() -> None:
    """Review round 7, V2 (b): A removes X and re-encrypts; B, which did not see it, rotated
    twice with X still a member, so its epochs are higher. X may hold those KEKs, so they are
    ended too. What builds on the re-encryption (a merge of both branches, and later) is
    not."""
    x = "c" * 16
    lab = Lab()
    lab.secrets[x] = Secret.generate()
    add = lab.commit(lab.commit(lab.view().head, A, "add", [A, B]), A, "add", [A, B, x])
    out = remove(lab, add, A, x, 0, None, reencrypt=True)
    r1 = lab.commit(add, B, "rotate", [A, B, x])
    r2 = lab.commit(r1, B, "rotate", [A, B, x])
    assert r2.epoch > out.epoch
    view = lab.view()
    assert {r1.kek, r2.kek, add.kek} <= view.ended() and out.kek not in view.ended()
    merged = lab.commit(out, A, "merge", [A, B], [r2.id])
    later = lab.commit(merged, A, "rotate", [A, B])
    view = lab.view()
    assert {merged.kek, later.kek, out.kek}.isdisjoint(view.ended())
    assert {r1.kek, r2.kek} <= view.ended()
    assert view.ended_by(out) == {c.kek for c in (add, r1, r2)} | {
        c.kek for c in view.commits.values() if c.pos < add.pos}


def test_two_concurrent_reencryptions_do_not_end_each_others_history() -> None:
    """Review round 8, W4: two honest re-encryptions race (no member is out). Neither ends
    the other's generation; both end what they built on."""
    lab = Lab()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    one = lab.commit(add, A, "rotate", [A, B], reencrypt=True)
    two = lab.commit(add, B, "rotate", [A, B], reencrypt=True)
    view = lab.view()
    assert add.kek in view.ended()
    assert one.kek not in view.ended() and two.kek not in view.ended()


def test_concurrent_merges_that_change_nothing_more_do_not_merge_again() -> None:
    lab = Lab()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    r1 = lab.commit(add, A, "rotate", [A, B])
    r2 = lab.commit(add, B, "rotate", [A, B])
    view = lab.view()
    assert view.needs_merge  # a race: one rotation's branch is not covered by the head
    head, other = (r1, r2) if r1.id < r2.id else (r2, r1)
    assert view.head.id == head.id
    m1 = lab.commit(head, A, "merge", [A, B], [other.id])
    m2 = lab.commit(head, B, "merge", [A, B], [other.id])
    view = lab.view()
    assert {m1.id, m2.id} <= set(view.commits)
    assert view.head.id == min(m1.id, m2.id)
    # both took in the same branch and handed their KEK to the same members: no third merge
    assert not view.needs_merge


def test_a_concurrent_merge_to_other_members_is_merged_again() -> None:
    lab = Lab()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    r1 = lab.commit(add, A, "rotate", [A, B])
    r2 = lab.commit(add, B, "rotate", [A, B])
    head, other = (r1, r2) if r1.id < r2.id else (r2, r1)
    lab.commit(head, A, "merge", [A, B], [other.id])
    rotation = lab.commit(head, B, "rotate", [A, B])  # a sibling that is not a merge
    view = lab.view()
    assert rotation.id in view.commits and view.needs_merge


def remove(lab: Lab, on: Commit, signer: str, rid: str, seq: int, digest: str | None,
           reencrypt: bool = False) -> Commit:
    view = lab.view()
    view.head = view.find(on.id) or on
    members = [r for r in on.members if r != rid]
    removed = {**on.removed, rid: chain.Cutoff(on.members[rid].s, seq, digest)}
    commit, data, keyobj = chain.build(
        view, lab.vault, lab.secrets[signer], signer, "remove",
        {r: lab.keys(r) for r in members}, removed, chain.new_kek(), on.epoch + 1,
        {r: r[:1] for r in members}, {}, DESCRIPTOR, T, None, reencrypt)
    lab.objects[commit.name], lab.objects[commit.name + ".k"] = data, keyobj
    return commit


def test_two_removals_naming_different_segments_at_one_seq_vouch_neither() -> None:
    """The removed member showed its two removers two histories (issue 7 review N9): every
    device takes the seq before, vouching no segment, whatever order it lists the removals."""
    x = "c" * 16
    lab = Lab()
    lab.secrets[x] = Secret.generate()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    add_x = lab.commit(add, A, "add", [A, B, x])
    by_a = remove(lab, add_x, A, x, 7, "aa" * 32)
    by_b = remove(lab, add_x, B, x, 7, "bb" * 32)
    view = lab.view()
    assert {by_a.id, by_b.id} <= set(view.commits) and x not in view.members
    assert (view.removed[x].seq, view.removed[x].hash) == (6, None)
    cuts = [view.commits[by_a.id].removed[x], view.commits[by_b.id].removed[x]]
    assert membership._earliest(cuts) == membership._earliest(cuts[::-1])
    # one removal at a lower seq wins outright, with its hash
    low = chain.Cutoff(cuts[0].s, 5, "cc" * 32)
    assert membership._earliest([*cuts, low]) == membership._earliest([low, *cuts[::-1]]) == low
    # agreeing removals keep the hash they agree on
    assert membership._earliest([cuts[0], cuts[0]]) == cuts[0]


def test_a_cutoff_at_seq_0_naming_a_segment_is_an_invalid_commit() -> None:
    x = "c" * 16
    lab = Lab()
    lab.secrets[x] = Secret.generate()
    add_x = lab.commit(lab.view().head, A, "add", [A, x])
    with pytest.raises(chain.IntegrityError):  # the builder decodes what it built
        remove(lab, add_x, A, x, 0, "aa" * 32)
    good = remove(lab, add_x, A, x, 0, None)
    assert lab.view().removed[x].hash is None and good.id in lab.view().commits


def lab_with_x() -> tuple[Lab, Commit, str]:
    """A, B and X are members (``add_x``); X is the one to be removed."""
    x = "c" * 16
    lab = Lab()
    lab.secrets[x] = Secret.generate()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    return lab, lab.commit(add, A, "add", [A, B, x]), x


def test_a_removed_members_backdated_removal_still_takes_its_target_out() -> None:
    """X, removed by A, signs on the old parent a removal of B. Removals win (review round 4,
    S2): X's removal is challenged (void: no tip, no key), but B is out and B's later commits
    are void. The cost is availability, never a key: the merge leaves out both X and B."""
    lab, add_x, x = lab_with_x()
    by_a = remove(lab, add_x, A, x, 0, None)
    by_x = remove(lab, add_x, x, B, 0, None)
    b_rot = lab.commit(by_a, B, "rotate", [A, B])
    view = lab.view()
    assert by_x.id in view.voided and b_rot.id in view.voided
    assert view.challenged == {by_x.id} and view.contested == {B}
    assert set(view.members) == {A} and {x, B} <= set(view.removed)
    assert view.head.id == by_a.id and view.needs_merge  # by_a's slots went to B
    members, removed = membership.merge_members(view, view.head, view.merge_tips())
    assert set(members) == {A} and {x, B} <= set(removed)


def test_a_retirement_never_brings_back_a_kit_its_target_removed() -> None:
    """Review round 4, S2: A removes kit K, and the provider hides that from B; B retires A.
    B's removal attacks A's removal of K, but removals win: K stays out, and K's finder's add
    of T on the old parent (void through A's removal) stays void. Neither K nor T ever gets a
    slot: the merge is keyed to B alone."""
    k, t = "e" * 16, "f" * 16
    lab, base = members_lab(k)
    lab.secrets[t] = Secret.generate()
    a_rm_k = remove(lab, base, A, k, 0, None)
    b_rm_a = remove(lab, base, B, A, 0, None)
    k_add_t = lab.commit(base, k, "add", [*base.members, t])
    view = lab.view()
    assert view.challenged == {a_rm_k.id} and view.contested == {k}
    assert {a_rm_k.id, k_add_t.id} <= set(view.voided) and b_rm_a.id in view.commits
    assert set(view.members) == {B} and {A, k} <= set(view.removed)
    assert t not in view.members and set(view.ghosts) == {t}  # out, cutoff 0 (S6)
    members, _removed = membership.merge_members(view, view.head, view.merge_tips())
    assert set(members) == {B} and view.needs_merge  # b_rm_a's slots went to K
    merged = lab.commit(view.head, B, "merge", [B], view.merge_tips())
    view = lab.view()
    assert view.head.id == merged.id and set(view.head.members) == {B}
    assert not view.needs_merge


def test_an_honest_commit_built_on_a_void_one_stands_and_is_merged() -> None:
    """X, removed by A, rotates on the old parent; B, kept from seeing the removal, adds D on
    X's rotation. Only X's commit is void: B's add stands, D is a member, X is not, and the
    merge that takes B's branch in verifies (N2 (1)-(3))."""
    d = "d" * 16
    lab, add_x, x = lab_with_x()
    lab.secrets[d] = Secret.generate()
    by_a = remove(lab, add_x, A, x, 0, None)
    x_rot = lab.commit(add_x, x, "rotate", [A, B, x])
    b_add = lab.commit(x_rot, B, "add", [A, B, x, d])
    view = lab.view()
    assert x_rot.id in view.voided and b_add.id in view.commits
    assert set(view.members) == {A, B, d}
    # the head is the highest tip: B's add (by_a's epoch, one position further on)
    assert view.head.id == b_add.id and view.needs_merge
    assert membership.merge_members(view, view.head, [by_a.id]) == (view.members, view.removed)
    merged = lab.commit(b_add, A, "merge", [A, B, d], [by_a.id])
    view = lab.view()
    assert view.head.id == merged.id and not view.needs_merge
    assert set(view.head.members) == {A, B, d}


def test_a_member_added_only_by_a_void_commit_signs_nothing() -> None:
    """X, removed, adds E on the old parent; E's own commits are void too: E was never added
    by a commit that counts."""
    e = "e" * 16
    lab, add_x, x = lab_with_x()
    lab.secrets[e] = Secret.generate()
    remove(lab, add_x, A, x, 0, None)
    x_add = lab.commit(add_x, x, "add", [A, B, x, e])
    e_rot = lab.commit(x_add, e, "rotate", [A, B, x, e])
    view = lab.view()
    assert {x_add.id, e_rot.id} <= set(view.voided)
    assert e not in view.members and not view.needs_merge


def test_a_merge_counts_the_branches_an_earlier_merge_took_in() -> None:
    """A merge's check takes the ancestry of its parent and tips through earlier merges: an
    add that an earlier merge took in (not on any parent path) still counts."""
    c = "c" * 16
    lab = Lab()
    lab.secrets[c] = Secret.generate()
    add = lab.commit(lab.view().head, A, "add", [A, B])
    add_c = lab.commit(add, A, "add", [A, B, c])
    b_rot = lab.commit(add, B, "rotate", [A, B])
    m1 = lab.commit(b_rot, B, "merge", [A, B, c], [add_c.id])  # add_c only through merges
    r1 = lab.commit(m1, A, "rotate", [A, B, c])
    r2 = lab.commit(m1, B, "rotate", [A, B, c])
    m2 = lab.commit(r1, A, "merge", [A, B, c], [r2.id])  # its check once missed add_c
    view = lab.view()
    assert m2.id in view.commits and set(view.members) == {A, B, c}


def test_a_removal_on_a_void_branch_that_an_honest_commit_repeats() -> None:
    """Review round 3, R4: X, removed by A, removes B on the old parent; C, kept from seeing
    A's removal, rotates on X's commit, so C's commit repeats B in its cumulative `removed`.
    B is out through X's own removal (challenged, and removals win), never through C's claim;
    C's honest rotation stands, and the merge leaves out X and B."""
    c_rid = "d" * 16
    lab, add_x, x = lab_with_x()
    lab.secrets[c_rid] = Secret.generate()
    add_c = lab.commit(add_x, A, "add", [A, B, x, c_rid])
    by_a = remove(lab, add_c, A, x, 0, None)
    x_rm_b = remove(lab, add_c, x, B, 0, None)
    c_rot = lab.commit(x_rm_b, c_rid, "rotate", [A, x, c_rid])
    view = lab.view()
    assert x_rm_b.id in view.voided and c_rot.id in view.commits
    assert view.challenged == {x_rm_b.id} and B in view.removed and x in view.removed
    assert view.needs_merge and view.head.id == c_rot.id  # C's rotation: the highest epoch
    members, removed = membership.merge_members(view, view.head, [by_a.id])
    assert set(members) == {A, c_rid} and {B, x} <= set(removed)


def members_lab(*rids: str) -> tuple[Lab, Commit]:
    """A vault of A, B and the given rids, all added by A; returns the last add."""
    lab = Lab()
    head = lab.commit(lab.view().head, A, "add", [A, B])
    for rid in rids:
        lab.secrets[rid] = Secret.generate()
        head = lab.commit(head, A, "add", [*head.members, rid])
    return lab, head


def test_a_counter_removal_ejects_nobody_the_remover_approved_back_in() -> None:
    """Review round 3, R1. A approved D, D removed kit K (which the thief also holds), then A
    removed X. X answers on the commit before D's add with a removal of A, and adds its own T
    there. Removals win: every target is out, and nobody's word brings anyone back. K stays
    removed, T and D are not members, B carries on."""
    x, k, d, t = "c" * 16, "e" * 16, "d" * 16, "f" * 16
    lab, before = members_lab(x, k)
    lab.secrets[d], lab.secrets[t] = Secret.generate(), Secret.generate()
    add_d = lab.commit(before, A, "add", [*before.members, d])
    d_rm_k = remove(lab, add_d, d, k, 0, None)
    by_a = remove(lab, d_rm_k, A, x, 0, None)
    by_x = remove(lab, before, x, A, 0, None)
    add_t = lab.commit(before, x, "add", [*before.members, t])
    view = lab.view()
    assert view.challenged == {by_a.id, by_x.id, d_rm_k.id}
    assert {A, x, k} <= set(view.removed) and view.contested == {A, x, k}
    assert set(view.members) == {B}
    assert {add_d.id, add_t.id} <= set(view.voided)
    assert view.needs_merge
    members, removed = membership.merge_members(view, view.head, view.merge_tips())
    assert set(members) == {B} and {A, x, k} <= set(removed)


def test_two_removed_members_take_out_their_removers_with_the_cutoffs_stated() -> None:
    """Review round 3, R2: A removed X, B removed Y; X removes B and Y removes A on the old
    parent. All four removals are challenged and all four targets are out; each cutoff is the
    one its removal states (it clamps into the history, never away: see the loading tests),
    and no removal voids the kit's membership."""
    x, y, k = "c" * 16, "d" * 16, "e" * 16
    lab, base = members_lab(x, y, k)
    by_a = remove(lab, base, A, x, 3, None)
    by_b = remove(lab, by_a, B, y, 4, None)
    x_rm_b = remove(lab, base, x, B, 0, None)
    y_rm_a = remove(lab, base, y, A, 0, None)
    view = lab.view()
    assert view.challenged == {by_a.id, by_b.id, x_rm_b.id, y_rm_a.id}
    assert set(view.members) == {k} and view.contested == {A, B, x, y}
    assert (view.removed[x].seq, view.removed[A].seq) == (3, 0)


def test_a_second_removal_does_not_undo_a_challenged_one() -> None:
    """X answered A's removal with a removal of A; B, untouched by X, removes X too. Removals
    win: A stays out (X's answer is challenged, not undone), X is out firmly, and B is the
    only member. (Rounds 2-4 let B's removal "settle" this; that same rule brought back a
    kit a retired device had removed, review round 4, S2.)"""
    x = "c" * 16
    lab, base = members_lab(x)
    by_a = remove(lab, base, A, x, 2, None)
    by_x = remove(lab, base, x, A, 0, None)
    by_b = remove(lab, base, B, x, 2, None)  # B had not seen A's removal yet
    view = lab.view()
    assert view.challenged == {by_a.id, by_x.id} and by_b.id in view.commits
    assert set(view.members) == {B} and view.contested == {A}


def test_the_void_computation_has_one_answer_for_a_cycle_through_an_add() -> None:
    """Review round 3, R9: M adds P; S1 removes M without building on that add; S2 removes S1;
    P removes S2. One answer in any listing order: every removal is challenged, every target
    and P are out."""
    m, s1, s2, p = "c" * 16, "d" * 16, "e" * 16, "f" * 16
    lab, base = members_lab(m, s1, s2)
    lab.secrets[p] = Secret.generate()
    add_p = lab.commit(base, m, "add", [*base.members, p])
    r1 = remove(lab, base, s1, m, 0, None)
    r2 = remove(lab, base, s2, s1, 0, None)
    r3 = remove(lab, add_p, p, s2, 0, None)
    view = lab.view()
    assert view.challenged == {r1.id, r2.id, r3.id} and add_p.id in view.voided
    assert set(view.members) == {A, B}
    commits = {**view.commits, **view.voided}
    for order in (sorted(commits), sorted(commits, reverse=True)):
        assert membership._void({c: commits[c] for c in order}) == (
            set(view.voided), view.challenged)


def test_a_stale_branch_never_becomes_the_head_and_a_merge_is_above_every_tip() -> None:
    """Review round 3, R5: B comes back from weeks offline and rotates on an old parent. The
    head stays on the main chain (highest epoch), and the merge's epoch is above both."""
    lab, base = members_lab()
    main = base
    for _ in range(3):
        main = lab.commit(main, A, "rotate", [A, B])
    stale = lab.commit(base, B, "rotate", [A, B])
    view = lab.view()
    assert view.head.id == main.id and view.needs_merge
    merged = lab.commit(main, B, "merge", [A, B], [stale.id])
    assert merged.epoch == main.epoch + 1
    view = lab.view()
    assert view.head.id == merged.id and not view.needs_merge
    # a merge that claims its parent's epoch + 1 below a higher tip is invalid
    low = lab.commit(stale, A, "merge", [A, B], [main.id])
    assert low.epoch == main.epoch + 1  # the builder follows the rule; forge one that does not
    view = lab.view()
    forged, data, keyobj = chain.build(view, lab.vault, lab.secrets[A], A, "merge",
                                       {r: lab.keys(r) for r in (A, B)}, {}, chain.new_kek(),
                                       stale.epoch + 1, {A: "a", B: "b"}, {}, DESCRIPTOR, T,
                                       [main.id])
    assert forged.parent == view.head.id  # chain.build builds on the view's head
    lab.objects[forged.name], lab.objects[forged.name + ".k"] = data, keyobj
    with pytest.raises(chain.IntegrityError, match="next epoch"):
        lab.view()


def test_a_removed_members_two_children_of_one_parent_stop_nobody() -> None:
    """Review round 3, N3: X, removed, signs two rotations on one old parent. Both are void;
    no device stops at exit 3 over a removed member's equivocation."""
    x = "c" * 16
    lab, base = members_lab(x)
    remove(lab, base, A, x, 0, None)
    one = lab.commit(base, x, "rotate", [*base.members])
    two = lab.commit(base, x, "rotate", [*base.members])
    view = lab.view()
    assert {one.id, two.id} <= set(view.voided) and set(view.members) == {A, B}


def test_a_cutoff_only_ever_falls() -> None:
    """Review round 6, U3: the cutoff is the lowest over every removal, counting or
    challenged, so no later removal raises it and no late dot turns live again. The cost,
    stated in the threat model: X's backdated removal of laptop L, retired by A long ago
    with cutoff 800, lowers L's cutoff to 0 (L's writes go to the history)."""
    x, lap = "c" * 16, "d" * 16
    lab, base = members_lab(x, lap)
    retire = remove(lab, base, A, lap, 800, None)
    by_b = remove(lab, retire, B, x, 0, None)
    x_rm_l = remove(lab, base, x, lap, 0, None)
    view = lab.view()
    assert x_rm_l.id in view.challenged and {retire.id, by_b.id} <= set(view.commits)
    assert view.removed[lap].seq == 0 and lap not in view.contested
    # a challenged removal of X at 3, then a counting one at 9: X's cutoff stays 3
    y = "e" * 16
    lab, base = members_lab(x, y)
    first = remove(lab, base, A, x, 3, None)
    answer = remove(lab, base, x, A, 0, None)
    later = remove(lab, base, y, x, 9, None)
    view = lab.view()
    assert {first.id, answer.id} <= view.challenged and later.id in view.commits
    assert view.removed[x].seq == 3
