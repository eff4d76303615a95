"""Which verified commits count, and the view a device builds from them.

Normative text: docs/format.md, "Void commits", "Authority rules" and "Races, equivocation and
the head". Every decision here depends only on the commits given (never on a local anchor or
the order of a listing), so all devices that see the same commits decide alike, and a merge's
verifier reproduces the merge's member set from the merge's own ancestry. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .chain import (
    Commit,
    Cutoff,
    MemberKeys,
    commit_name,
    decode_commit,
    parse_name,
    verify_sig,
)
from .errors import IntegrityError


def _union(commits: dict[str, Commit], challenged: Iterable[Commit] = (),
           every: dict[str, Commit] | None = None
           ) -> tuple[dict[str, MemberKeys], dict[str, Cutoff], set[str]]:
    """Two-phase set over commits: once removed, never a member; the earliest cutoff wins.

    Only a genesis or an add brings a member in, and only a remove takes one out with its
    cutoff: every other commit's ``members`` and ``removed`` are claims, checked but never
    used, so a member added on a void branch is not, even where an honest commit built on
    that branch repeats it (review round 3, R4). A ``challenged`` removal (void, attacked by
    another) takes its target out too: removals win (review round 4, S2), and its cutoff
    counts like any other. The third value is the members that
    only challenged removals took out, which devices report. ``every`` holds the parents (void
    ones too)."""
    every = commits if every is None else every
    added: dict[str, MemberKeys] = {}
    cuts: dict[str, list[Cutoff]] = {}
    firm: set[str] = set()
    for c in commits.values():
        for rid, keys in _brought_in(c, every).items():
            if added.setdefault(rid, keys) != keys:
                raise IntegrityError(f"{c.name}: member {rid} has two different keys")
    for c, counts in [*((c, True) for c in commits.values()), *((c, False) for c in challenged)]:
        if c.action != "remove":
            continue
        for rid in _fresh(c, every):
            cuts.setdefault(rid, []).append(c.removed[rid])
            if counts:
                firm.add(rid)
    # the lowest cutoff over every removal, counting or challenged: it only ever falls, so a
    # late dot stays late (a precedence of counting removals let a lagging remover raise it
    # and make a removed member's late writes live: review round 6, U3)
    removed = {rid: _earliest(found) for rid, found in cuts.items()}
    return {r: k for r, k in added.items() if r not in removed}, removed, set(removed) - firm


def _ghosts(view: View) -> dict[str, Cutoff]:
    """Members that only a void add brought in (an add by a member another removal took out,
    or an honest race of an add and a removal of its signer; review round 4, S6). They are
    out, as if removed with cutoff 0: their dots are checked under the keys that add gave
    them, every segment they wrote is refused, and honest snapshots' copies of their versions
    are clamped into the history, where any member restores them. Not part of any merge's
    member set (its verifiers count removals only)."""
    every = {**view.voided, **view.commits}
    out: dict[str, Cutoff] = {}
    # the first add of a rid (by position, then id) fixes its keys on every device alike
    # (review round 5, T7)
    for c in sorted(view.voided.values(), key=lambda c: (c.pos, c.id)):
        for rid, keys in _brought_in(c, every).items():
            if rid not in view.members and rid not in view.removed:
                out.setdefault(rid, Cutoff(keys.s, 0, None))
    return out


def _brought_in(c: Commit, every: dict[str, Commit]) -> dict[str, MemberKeys]:
    """The members a commit adds: all of a genesis, the new one of an add, none otherwise."""
    if c.action == "genesis":
        return c.members
    if c.action != "add":
        return {}
    parent = every.get(c.parent) if c.parent else None
    return {r: k for r, k in c.members.items() if parent is None or r not in parent.members}


def _fresh(c: Commit, every: dict[str, Commit]) -> set[str]:
    """The rids a commit removes that its parent had not removed."""
    parent = every.get(c.parent) if c.parent else None
    return set(c.removed) - set(parent.removed if parent else {})


def _closure(starts: Iterable[Commit], commits: dict[str, Commit]) -> set[str]:
    """Ancestry through parents and through every tip a merge names."""
    out: set[str] = set()
    todo = list(starts)
    while todo:
        for a in _ancestry(todo.pop(), commits):
            if a.id not in out:
                out.add(a.id)
                todo += [commits[m] for m in a.merges if m in commits]
    return out


def merge_members(view: View, parent: Commit, tips: Iterable[str]
                  ) -> tuple[dict[str, MemberKeys], dict[str, Cutoff]]:
    """The member set a merge on ``parent`` taking in ``tips`` must carry: what its verifiers
    compute from its own ancestry (format.md), so writer and readers agree by construction."""
    every = {**view.voided, **view.commits}
    return _merged(every, [parent, *(every[t] for t in tips)])


def _merged(every: dict[str, Commit], starts: list[Commit]
            ) -> tuple[dict[str, MemberKeys], dict[str, Cutoff]]:
    scope = {cid: every[cid] for cid in _closure(starts, every)}
    void, challenged = _void(scope)
    members, removed, _only = _union({cid: c for cid, c in scope.items() if cid not in void},
                                     [scope[cid] for cid in challenged], scope)
    return members, removed


def _earliest(cuts: list[Cutoff]) -> Cutoff:
    """The lowest cutoff wins. Two removals naming different segments at that seq mean the
    removed member showed its removers two histories: neither is vouched, and its writes
    count up to the seq before (every device decides alike, whatever order it lists)."""
    low = min(c.seq for c in cuts)
    at = {c.hash for c in cuts if c.seq == low}
    if len(at) == 1:
        return next(c for c in cuts if c.seq == low)
    return Cutoff(cuts[0].s, low - 1, None)


@dataclass
class View:
    """Every commit this device verified, the head it writes under, and the KEKs it holds."""

    vault_id: str
    commits: dict[str, Commit]
    head: Commit
    members: dict[str, MemberKeys]  # merged view: ever added minus removed
    removed: dict[str, Cutoff]
    keks: dict[str, bytes] = field(default_factory=dict)  # commitment -> KEK
    names: dict[str, str] = field(default_factory=dict)
    head_history: dict[str, bytes] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    deferred: list[str] = field(default_factory=list)
    void: list[str] = field(default_factory=list)
    challenged: set[str] = field(default_factory=set)  # void removals that still remove
    contested: set[str] = field(default_factory=set)  # members only those took out
    ghosts: dict[str, Cutoff] = field(default_factory=dict)  # brought in by void adds only
    voided: dict[str, Commit] = field(default_factory=dict)  # still name KEKs of segments

    def ancestry(self, commit: Commit) -> list[Commit]:
        return _ancestry(commit, self.commits)

    def find(self, commit_id: str) -> Commit | None:
        """A verified commit, void or not: a segment may name either (format.md)."""
        return self.commits.get(commit_id) or self.voided.get(commit_id)

    def must_find(self, commit_id: str) -> Commit:
        found = self.find(commit_id)
        if found is None:
            raise KeyError(commit_id)
        return found

    def _reach(self, start: Commit, commits: dict[str, Commit] | None = None) -> set[str]:
        """``start``'s ancestry and every branch a merge in it took in."""
        return _closure([start], self.commits if commits is None else commits)

    def covered(self) -> set[str]:
        """Commits the head builds on: its ancestry and every branch a merge in it took in.
        A concurrent merge that took in nothing more and handed its KEK to exactly the head's
        members is covered too, so two devices merging at once do not merge for ever."""
        out = self._reach(self.head)
        for c in self.commits.values():
            if (c.id not in out and c.action == "merge"
                    and set(c.members) == set(self.head.members)
                    and self._reach(c) - {c.id} <= out):
                out.add(c.id)
        return out

    def builds_on(self, later: str, earlier: str) -> bool:
        """Does commit ``later`` cover ``earlier`` (its ancestry, merged branches included)?
        Void commits count here: segments written under them are still read."""
        every = {**self.voided, **self.commits}
        return later == earlier or (later in every and earlier in self._reach(every[later],
                                                                               every))

    @property
    def needs_merge(self) -> bool:
        """Any branch the head does not cover needs a merge under a new KEK: a racing add
        must not put the head back on a KEK that a racing rotation retired."""
        if set(self.commits) - self.covered():
            return True
        # the head's slots went to members the merged view does not hold (a branch that
        # counted for its writer turned out void here): merge before encrypting under it
        return set(self.head.members) != set(self.members)

    @property
    def cutoffs(self) -> dict[str, int]:
        """Each removed member's cutoff seq: its dots above it are late (format.md, "Writer
        rules")."""
        return {rid: cut.seq for rid, cut in self.removed.items()}

    def introducers(self) -> dict[str, str]:
        """For each member only void adds brought in (a ghost), the signer of its first void
        add: a removed member's void adds are free commits, so their versions count against
        the signer's bound, not one each (review round 8, W5 (a))."""
        every = {**self.voided, **self.commits}
        out: dict[str, str] = {}
        for c in sorted(self.voided.values(), key=lambda c: (c.pos, c.id)):
            for rid in _brought_in(c, every):
                if rid in self.ghosts:
                    out.setdefault(rid, c.signer)
        return out

    def vouched(self) -> dict[str, int]:
        """For each member a counting removal took out, the highest cutoff such a removal
        records: its dots up to there are writes an honest remover applied, even when a
        removed member's backdated removal lowered the cutoff below them (review round 8,
        W3). Members only challenged removals or void adds took out have none."""
        every = {**self.voided, **self.commits}
        out: dict[str, int] = {}
        for c in self.commits.values():
            if c.action == "remove":
                for rid in _fresh(c, every):
                    out[rid] = max(out.get(rid, 0), c.removed[rid].seq)
        return out

    def ended(self, counting: Callable[[Commit], bool] = lambda _c: True) -> frozenset[str]:
        """Generations (KEK commitments) whose history a re-encryption ended: those of every
        commit, void or not, that a non-void commit that started one builds on, and of every
        concurrent branch that gave a member now out a slot, however high its epoch (review
        round 7, V2 (b); round 8, W4). So only a current member ends history, and a
        removed member's backdated one stops counting once its removal shows (format.md
        "Version history"; review round 6, U2). ``counting``: which of those commits count
        (garbage collection: the ones this device saw ``keep_days`` ago)."""
        starts = [c for c in self.commits.values() if c.reencrypt and counting(c)]
        return frozenset(k for r in starts for k in self.ended_by(r))

    def ended_by(self, r: Commit) -> set[str]:
        """The generations re-encrypting commit ``r`` ends: every commit it builds on, and
        every concurrent branch that gave a member now out a slot (two honest re-encryptions
        racing must not end each other's history; review round 8, W4)."""
        every = {**self.voided, **self.commits}
        mine, out_now = self._reach(r, every), set(self.removed)
        return {c.kek for c in every.values() if r.id not in self._reach(c, every)
                and (c.id in mine or set(c.members) & out_now)}

    def merge_tips(self, skip: frozenset[str] = frozenset()) -> list[str]:
        """What a merge on the head takes in: every branch tip it does not cover, and every
        challenged removal its ancestry does not name. A challenged removal is void (no tip),
        but its target is out, and the merge's verifiers see that only from the merge's own
        ancestry (review round 4, S2). ``skip``: signers whose branches stay out."""
        covered = self.covered()
        parents = {c.parent for c in self.commits.values()}
        tips = {c.id for c in self.commits.values()
                if c.id not in covered and c.id not in parents and c.signer not in skip}
        named = _closure([self.head], {**self.voided, **self.commits})
        return sorted(tips | (self.challenged - named))

    def removals_of(self, rid: str) -> list[tuple[Commit, bool]]:
        """The removals that took ``rid`` out, each with whether it is challenged (void, yet
        it still removes): what ``restore --late-of`` names (review round 6, U4)."""
        every = {**self.voided, **self.commits}
        found = [(c, False) for c in self.commits.values()]
        found += [(every[cid], True) for cid in sorted(self.challenged) if cid in every]
        return sorted(((c, challenged) for c, challenged in found
                       if c.action == "remove" and rid in _fresh(c, every)),
                      key=lambda item: (item[0].pos, item[0].id))

    def signer_key(self, rid: str) -> bytes | None:
        if rid in self.members:
            return self.members[rid].s
        cut = self.removed.get(rid)
        return cut.s if cut else None

    def exposed_to(self) -> dict[str, list[str]]:
        """KEK commitment -> removed members who held that KEK (or a later one wrapping it)."""
        out: dict[str, list[str]] = {}
        for rid in self.removed:
            spans = [c for c in self.commits.values() if rid in c.members]
            if not spans:
                continue
            last = max(c.pos for c in spans)
            for c in self.commits.values():
                if c.pos <= last:
                    out.setdefault(c.kek, [])
                    if rid not in out[c.kek]:
                        out[c.kek].append(rid)
        return out


def verify(vault_id: str, listing: Iterable[str], fetch: Callable[[str], bytes],
           known: set[str], descriptor: str, tolerate: frozenset[str] = frozenset()) -> View:
    """Verify every listed commit whose parent is verified, from the genesis forward."""
    names = {n: p for n in listing if (p := parse_name(n)) is not None and not p[2]
             and (p[0] > 0 or p[1] == vault_id)}  # another vault's genesis is not ours
    listed = {p[1] for p in names.values()}
    lost = sorted(known - listed)
    if lost:
        raise IntegrityError(f"commit {lost[0][:16]}... that this device verified is gone from "
                             "keys/: the remote was rolled back or a commit was deleted")
    genesis_name = commit_name(0, vault_id)
    if genesis_name not in names:
        raise IntegrityError(f"{genesis_name}: the genesis commit of vault {vault_id} is "
                             "missing (wrong remote, or it was deleted)")
    decoded: dict[str, Commit] = {}
    for name in sorted(names, key=lambda n: names[n][0]):
        try:
            commit = decode_commit(fetch(name), name, vault_id)
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: invalid commit") from exc
        decoded[commit.id] = commit
    genesis = decoded[vault_id]
    _check_genesis(genesis, descriptor)
    verified: dict[str, Commit] = {genesis.id: genesis}
    waiting = {cid: c for cid, c in decoded.items() if cid != vault_id}
    progress = True
    while progress:
        progress = False
        for cid, c in sorted(waiting.items(), key=lambda item: item[1].pos):
            if c.parent not in verified or any(m not in verified for m in c.merges):
                continue
            try:
                _check(c, verified[c.parent], verified, descriptor)
            except IntegrityError as exc:
                raise IntegrityError(f"{c.name}: invalid commit ({exc})") from exc
            verified[cid] = c
            del waiting[cid]
            progress = True
    void, challenged = _void(verified)
    voided = {cid: verified.pop(cid) for cid in void}
    members, removed, contested = _union(verified, [voided[cid] for cid in challenged],
                                         {**voided, **verified})
    children: dict[str, list[Commit]] = {}
    for c in verified.values():
        if c.parent:
            children.setdefault(c.parent, []).append(c)
    for kids in children.values():
        signers: dict[str, Commit] = {}
        for kid in kids:
            other = signers.setdefault(kid.signer, kid)
            # a removed member's word counts for nothing: its two children stop nobody (N3)
            if other is not kid and kid.signer not in tolerate and kid.signer not in removed:
                raise IntegrityError(f"equivocation: member {kid.signer} signed both "
                                     f"{other.name} and {kid.name} on one parent; remove it "
                                     f"from another device (cloudguard device remove "
                                     f"{kid.signer}), which voids one of them")
    view = View(vault_id, verified, head_of(verified, children, genesis), members, removed,
                deferred=sorted(c.name for c in waiting.values()))
    view.challenged, view.contested = challenged, contested
    view.voided = voided
    view.ghosts = _ghosts(view)
    view.removed = {**view.ghosts, **view.removed}
    view.void = sorted(decoded[cid].name for cid in void)
    return view


def _void(verified: dict[str, Commit]) -> tuple[set[str], set[str]]:
    """(void commits, challenged removals); depends only on the commits given.

    A removal ``r`` of member M attacks every commit ``c`` signed by M that ``r`` does not
    build on, and every commit whose signer was brought in, directly or through further adds,
    by such a commit of M: a member that a removed member added on a branch from the past signs
    nothing. Removals win (review round 4, S2): every removal attacks, attacked or not, and an
    attacked commit is void. A removal that another attacks is *challenged*: void, yet it still
    takes its target out. Two concurrent removals are symmetric in the chain (a thief's
    backdated answer looks like an honest race), so sparing one side would spare the other,
    and a counting removal that voided its target's removals brought a revoked kit back.
    """
    reach = {cid: _closure([c], verified) for cid, c in verified.items()}

    def introduced(c: Commit) -> set[str]:
        """``c`` and the commits that brought its signer in, back to the genesis."""
        out: set[str] = set()
        todo = [c]
        while todo:
            x = todo.pop()
            if x.id in out:
                continue
            out.add(x.id)
            todo += [verified[a] for a in reach[x.id]
                     if a != x.id and x.signer in _brought_in(verified[a], verified)]
        return out

    unsigned = {cid for cid, c in verified.items() if c.action != "genesis" and not any(
        c.signer in _brought_in(verified[a], verified) for a in reach[cid])}
    removals = {c.id: _fresh(c, verified) for c in verified.values()
                if c.action == "remove" and c.id not in unsigned}
    chains = {cid: introduced(c) for cid, c in verified.items()}
    attacked = {cid for cid in verified
                if any(verified[x].signer in gone and x not in reach[r]
                       for r, gone in removals.items() for x in chains[cid])}
    challenged = {r for r in removals if r in attacked}
    return unsigned | attacked, challenged


def head_of(commits: dict[str, Commit], children: dict[str, list[Commit]],
            genesis: Commit) -> Commit:
    """The tip with the highest epoch, then position, then lowest id (review round 3, R5):
    a stale or void branch never becomes the head, so a merge on it never falls below the
    epoch floor."""
    tips = [c for c in commits.values() if not children.get(c.id)] or [genesis]
    return min(tips, key=lambda c: (-c.epoch, -c.pos, c.id))


def _check_genesis(c: Commit, descriptor: str) -> None:
    if (len(c.members) != 1 or c.removed or c.signer not in c.members
            or c.members[c.signer].kind != "device" or c.descriptor != descriptor):
        raise IntegrityError(f"{c.name}: invalid genesis commit")
    try:
        verify_sig(c.members[c.signer].s, b"cloudguard/v2/commit", c.body, c.sig)
    except IntegrityError as exc:
        raise IntegrityError(f"{c.name}: bad signature") from exc


def _ancestry(c: Commit, verified: dict[str, Commit]) -> list[Commit]:
    out = []
    current: Commit | None = c
    while current is not None:
        out.append(current)
        current = verified.get(current.parent) if current.parent else None
    return out


def _check(c: Commit, parent: Commit, verified: dict[str, Commit], descriptor: str) -> None:
    """The authority rules of format.md; the message names the broken one."""
    if c.pos != parent.pos + 1:
        raise IntegrityError("wrong position")
    signer = parent.members.get(c.signer)
    if signer is None:
        raise IntegrityError(f"signer {c.signer} is not a member of the parent")
    verify_sig(signer.s, b"cloudguard/v2/commit", c.body, c.sig)
    if c.descriptor != descriptor:
        raise IntegrityError("descriptor hash differs")
    ever: set[str] = set()
    kek_seen: set[str] = set()
    for a in _ancestry(parent, verified):
        ever |= set(a.members) | set(a.removed)
        kek_seen.add(a.kek)
    for tip in c.merges:  # a merge's KEK is new to the branches it takes in too
        kek_seen |= {a.kek for a in _ancestry(verified[tip], verified)}
    same_keys = c.kek == parent.kek and c.epoch == parent.epoch
    # a merge's epoch is above every branch it takes in, so it is never below the floor (R5)
    top = max([parent.epoch, *(verified[t].epoch for t in c.merges)])
    new_key = c.kek not in kek_seen and c.epoch == top + 1
    if c.action == "add":
        added = set(c.members) - set(parent.members)
        if (len(added) != 1 or set(parent.members) - set(c.members) or c.removed != parent.removed
                or added & ever or not same_keys):
            raise IntegrityError("not a valid add")
        if any(parent.members[r] != c.members[r] for r in parent.members):
            raise IntegrityError("an add changed a member's keys")
        if signer.kind == "kit" and c.members[next(iter(added))].kind != "device":
            raise IntegrityError("a kit may add only a device")
        return
    if signer.kind != "device":
        raise IntegrityError(f"a kit may not {c.action}")
    if not new_key:
        raise IntegrityError("a new KEK and the next epoch are required")
    if c.action == "rotate":
        if c.members != parent.members or c.removed != parent.removed:
            raise IntegrityError("a rotation changed members")
    elif c.action == "remove":
        gone = set(parent.members) - set(c.members)
        if (len(gone) != 1 or set(c.members) - set(parent.members)
                or set(c.removed) != set(parent.removed) | gone
                or any(c.removed[r] != parent.removed[r] for r in parent.removed)):
            raise IntegrityError("not a valid removal")
        rid = next(iter(gone))
        if c.removed[rid].s != parent.members[rid].s:
            raise IntegrityError("the removal names another key")
    elif c.action == "merge":
        members, removed = _merged(verified, [parent, *(verified[t] for t in c.merges)])
        if c.members != members or c.removed != removed:
            raise IntegrityError("the merge does not equal the merged member set")


