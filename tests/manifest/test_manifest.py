"""The manifest CRDT and the pure sync plans, without I/O."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import sign_entries
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudguard import format as fmt
from cloudguard import manifest as mf
from cloudguard import sync
from cloudguard.errors import IntegrityError
from cloudguard.state import IndexRow

PATHS = ["a", "b", "d/c"]
DEVICES = [f"{i:016x}" for i in (1, 2, 3)]


def simulate(seed: int, steps: int) -> tuple[list[tuple[str, int, dict[str, Any], list[Any]]],
                                             dict[str, mf.State]]:
    """Devices edit, push and merge at random; returns every delta written, in order."""
    rng = random.Random(seed)
    views = {d: mf.State() for d in DEVICES}
    log: list[tuple[str, int, dict[str, Any], list[Any]]] = []
    for _ in range(steps):
        dev = rng.choice(DEVICES)
        view = views[dev]
        if rng.random() < 0.4 and log:  # pull some prefix of the log
            for d, seq, deps, ops in log:
                if seq == view.ctx.get(d, 0) + 1 and view.dominates(
                        {k: v for k, v in deps.items() if k != d}):
                    view.apply_delta(d, seq, ops)
            continue
        path = rng.choice(PATHS)
        seen = sorted(view.paths.get(path, {}))
        entry = None if rng.random() < 0.3 else {"t": "f", "h": str(rng.random()), "m": 1}
        ops = [{"p": path, "e": entry, "rm": seen}]
        seq = view.ctx.get(dev, 0) + 1
        log.append((dev, seq, dict(view.ctx), ops))
        view.apply_delta(dev, seq, ops)
    return log, views


def replay(log: list[tuple[str, int, dict[str, Any], list[Any]]], rng: random.Random) -> mf.State:
    state = mf.State()
    pending = list(log)
    rng.shuffle(pending)
    while pending:
        for item in list(pending):
            d, seq, deps, ops = item
            if seq == state.ctx.get(d, 0) + 1 and state.dominates(
                    {k: v for k, v in deps.items() if k != d}):
                state.apply_delta(d, seq, ops)
                pending.remove(item)
    return state


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40))
def test_causal_orders_converge(seed: int, steps: int) -> None:
    log, _views = simulate(seed, steps)
    one = replay(log, random.Random(1))
    two = replay(log, random.Random(2))
    assert one.paths == two.paths and one.ctx == two.ctx


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40), st.integers(0, 40))
def test_snapshot_merge_equals_replay(seed: int, steps: int, cut: int) -> None:
    """Two snapshots of overlapping prefixes merge to the state of their union."""
    log, _ = simulate(seed, steps)
    full = replay(log, random.Random(0))
    rng = random.Random(seed)
    left = [e for e in log if rng.random() < 0.5]

    def closed(entries: list[Any]) -> mf.State:
        """A snapshot is causally closed: the chosen deltas plus what they depend on."""
        state = mf.State()
        progress = True
        while progress:
            progress = False
            for d, seq, deps, ops in log:
                if (d, seq) in {(e[0], e[1]) for e in entries} and seq == state.ctx.get(
                        d, 0) + 1 and state.dominates({k: v for k, v in deps.items() if k != d}):
                    state.apply_delta(d, seq, ops)
                    progress = True
        return state
    a = closed(left)
    b = closed(log[:cut])
    merged = mf.State()
    merged.merge(a)  # into an empty state: a copy
    assert merged.paths == a.paths and merged.ctx == a.ctx
    merged.merge(b)
    rest = [e for e in log if e[1] > merged.ctx.get(e[0], 0)]
    while rest:
        for item in list(rest):
            d, seq, deps, ops = item
            if seq == merged.ctx.get(d, 0) + 1 and merged.dominates(
                    {k: v for k, v in deps.items() if k != d}):
                merged.apply_delta(d, seq, ops)
                rest.remove(item)
    assert merged.paths == full.paths


def test_concurrent_writes_become_siblings_then_a_conflict_copy() -> None:
    state = mf.State()
    state.apply_delta(DEVICES[0], 1, [{"p": "doc.txt", "e": {"t": "f", "h": "0", "m": 1},
                                       "rm": []}])
    base = f"{DEVICES[0]}:1"
    state.apply_delta(DEVICES[1], 1, [{"p": "doc.txt", "e": {"t": "f", "h": "b", "m": 5},
                                       "rm": [base]}])
    state.apply_delta(DEVICES[2], 1, [{"p": "doc.txt", "e": {"t": "f", "h": "c", "m": 9},
                                       "rm": [base]}])
    assert len(state.paths["doc.txt"]) == 2
    ops = sync.resolve_siblings(state, {DEVICES[1]: "laptop"})
    assert ops[0]["e"]["h"] == "c"  # newest mtime stays
    assert ops[1]["e"]["h"] == "b" and ops[1]["p"].startswith("doc (conflict ")
    assert "laptop" in ops[1]["p"] and ops[1]["p"].endswith(".txt")


def test_identical_siblings_are_not_a_conflict() -> None:
    state = mf.State()
    for dev in DEVICES[:2]:
        state.apply_delta(dev, 1, [{"p": "x", "e": {"t": "f", "h": "same", "m": 1}, "rm": []}])
    assert sync.resolve_siblings(state, {}) == []
    assert len(sync.view(state)) == 1


def test_conflict_names_never_collide() -> None:
    first = sync.conflict_name("a/doc.txt", 0, "dev")
    second = sync.conflict_name("a/doc.txt", 0, "dev", lambda p: p == first)
    assert first != second and second.endswith(" 2).txt")
    state = mf.State()
    for i, dev in enumerate(DEVICES):
        state.apply_delta(dev, 1, [{"p": "x", "e": {"t": "f", "h": str(i), "m": 1}, "rm": []}])
    state.apply_delta(DEVICES[0], 2, [{"p": sync.conflict_name("x", 1, DEVICES[1][:8]),
                                       "e": {"t": "f", "h": "older copy", "m": 1}, "rm": []}])
    ops = sync.resolve_siblings(state, {})
    names = [op["p"] for op in ops]
    assert len(names) == len(set(names)) == 3  # the winner and two new, distinct copies


def test_conflict_name_keeps_255_bytes_and_extension() -> None:
    name = sync.conflict_name("dir/" + "é" * 120 + ".docx", 0, "dev")
    base = name.rpartition("/")[2]
    assert len(base.encode()) <= 255 and base.endswith(".docx") and name.startswith("dir/")
    assert sync.conflict_name(".bashrc", 0, "d").startswith(".bashrc (conflict 1970-01-01")


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\x00"])
def test_unsafe_manifest_paths_are_refused(bad: str) -> None:
    with pytest.raises(IntegrityError):
        sync.check_rel_path(bad)


def _row(path: str, dot: str, size: int = 1, mtime: int = 1, ctime: int = 7) -> IndexRow:
    return IndexRow(path, "f", size, mtime, 0o644, "h-" + path, dot, "", ctime, 9)


def _item(path: str, size: int = 1, mtime: int = 1, ctime: int = 7) -> sync.LocalItem:
    return sync.LocalItem(path, "f", size, mtime, 0o644, "", ctime, 9)


def _entry(path: str, h: str | None = None) -> dict[str, Any]:
    return {"t": "f", "s": 1, "m": 1, "x": 0o644, "h": h or "h-" + path}


def test_plan_push_cases() -> None:
    local = {"same": _item("same"), "changed": _item("changed", mtime=2), "new": _item("new"),
             "adopt": _item("adopt")}
    index = {"same": _row("same", "d:1"), "changed": _row("changed", "d:1"),
             "gone": _row("gone", "d:1")}
    remote = {"same": ("d:1", _entry("same")), "adopt": ("e:1", _entry("adopt", "h-adopt"))}
    plan = sync.plan_push(local, index, remote, lambda p: "h-" + p)
    assert [i.path for i in plan.upload] == ["changed", "new"]
    assert [r.path for r in plan.delete] == ["gone"]
    assert [a[0].path for a in plan.adopt] == ["adopt"]


def test_plan_push_hashes_a_moved_ctime_or_a_racily_clean_row() -> None:
    """Issue 9, item 3: ctime or inode moved with size and mtime kept, or a row stored racily
    clean (ctime 0): the content decides; unchanged content only refreshes the row."""
    local = {"touched": _item("touched", ctime=8), "racy": _item("racy"),
             "edited": _item("edited", ctime=8)}
    index = {"touched": _row("touched", "d:1"), "racy": _row("racy", "d:1", ctime=0),
             "edited": _row("edited", "d:1")}
    hashes = {"touched": "h-touched", "racy": "h-racy", "edited": "something else"}
    plan = sync.plan_push(local, index, {}, hashes.__getitem__)
    assert sorted(a[0].path for a in plan.adopt) == ["racy", "touched"]
    assert [i.path for i in plan.upload] == ["edited"]


def test_plan_pull_cases() -> None:
    local = {"clean": _item("clean"), "dirty": _item("dirty", mtime=9),
             "removed-remotely": _item("removed-remotely"), "untracked": _item("untracked")}
    index = {"clean": _row("clean", "d:1"), "dirty": _row("dirty", "d:1"),
             "removed-remotely": _row("removed-remotely", "d:1")}
    remote = {"clean": ("d:2", _entry("clean", "new")), "dirty": ("d:2", _entry("dirty", "n")),
              "fresh": ("d:2", _entry("fresh")), "untracked": ("d:2", _entry("u", "other"))}
    plan = sync.plan_pull(local, index, remote, lambda p: "h-" + p, {"d": "me"})
    dests = sorted(d for d, _t, _e in plan.download)
    assert "clean" in dests and "fresh" in dests and "dirty" not in dests
    assert len(plan.conflicts) == 2  # dirty and untracked keep the local version
    assert [r.path for r in plan.delete] == ["removed-remotely"]


_KEK = b"k" * 32
_SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(32))


class _Ring:
    """A stand-in for the verified chain: one KEK, one writer key for every device."""

    def kek(self, _commitment: object) -> bytes:
        return _KEK


def _ring() -> _Ring:
    return _Ring()


def _opener(name: str, _dev: str, _seq: int, data: bytes) -> dict[str, Any]:
    fmt.verify_segment(data, "v", name, fmt.public_bytes(_SIGNER))
    return fmt.open_segment(_KEK, "v", name, data)


def test_load_detects_gap_and_rollback(tmp_path: Path) -> None:
    ring = _ring()
    blobs: dict[str, bytes] = {}
    dev = DEVICES[0]
    for seq in (1, 2, 3):
        name = mf.segment_name(dev, seq, "d")
        payload = mf.delta_payload(dev, seq, {dev: seq - 1} if seq > 1 else {}, None,
                                   [{"p": f"f{seq}", "e": {"t": "d"}, "rm": []}])
        blobs[name] = _seal(ring, name, payload)
    listing = {n: len(b) for n, b in blobs.items()}
    cache = mf.SegmentCache(tmp_path / "c")
    loaded = mf.load(listing, blobs.__getitem__, _opener, dev, {}, cache)
    assert sorted(loaded.state.paths) == ["f1", "f2", "f3"]
    gap = dict(listing)
    del gap[mf.segment_name(dev, 2, "d")]
    with pytest.raises(IntegrityError, match="missing"):
        mf.load(gap, blobs.__getitem__, _opener, dev, {}, mf.SegmentCache(tmp_path / "d"))
    short = dict(listing)
    del short[mf.segment_name(dev, 3, "d")]
    with pytest.raises(IntegrityError, match="rollback"):
        mf.load(short, blobs.__getitem__, _opener, dev, {dev: 3}, mf.SegmentCache(tmp_path / "e"))


def _seal(ring: _Ring, name: str, payload: dict[str, Any]) -> bytes:
    return fmt.seal_segment(ring.kek(1), 0, "22" * 32, "v", name,
                            sign_entries(payload, _SIGNER, "v"), _SIGNER)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 30))
def test_incremental_load_equals_full_load(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                           steps: int) -> None:
    """The persistent state, fed only new segments run after run, always equals a fresh load
    of every segment, across concurrent deltas and compactions that delete covered ones."""
    rng = random.Random(seed)
    ring = _ring()
    tmp = tmp_path_factory.mktemp("inc")
    remote: dict[str, bytes] = {}
    views = {d: mf.State() for d in DEVICES}
    observer = mf.State(tmp / "manifest.db")
    cache = mf.SegmentCache(tmp / "segments")
    seen: dict[str, int] = {}
    for step in range(steps):
        dev = rng.choice(DEVICES)
        view = views[dev]
        listing = {n: len(b) for n, b in remote.items()}
        mf.load(listing, remote.__getitem__, _opener, dev, {}, mf.SegmentCache(tmp / dev),
                view)  # the writer catches up, incrementally too
        seq = max([s for d, s, _k in filter(None, map(mf.parse_name, remote)) if d == dev]
                  + [view.ctx.get(dev, 0)]) + 1
        if rng.random() < 0.2 and view.ctx:
            name = mf.segment_name(dev, seq, "s")
            remote[name] = _seal(ring, name, mf.snapshot_payload(dev, seq, view))
            view.ctx[dev] = seq
            for other in list(remote):
                got = mf.parse_name(other)
                if got and other != name and got[1] <= view.ctx.get(got[0], 0):
                    del remote[other]
        else:
            path = rng.choice(PATHS)
            entry = None if rng.random() < 0.3 else {"t": "f", "h": str(rng.random()), "m": 1,
                                                     "s": 1, "x": 0o644, "o": "ab" * 16,
                                                     "a": rng.randrange(3) * 100, "n": 100,
                                                     "i": "0" * 32, "k": "x", "g": "ab" * 32}
            ops = [{"p": path, "e": entry, "rm": sorted(view.paths.get(path, {}))}]
            name = mf.segment_name(dev, seq, "d")
            prev = [n for n in remote if (mf.parse_name(n) or ("", 0, ""))[:2] == (dev, seq - 1)]
            payload = mf.delta_payload(dev, seq, dict(view.ctx), hashlib.sha256(
                remote[prev[0]]).hexdigest() if prev else None, ops)
            payload["created"] = f"2026-12-02T00:00:{step:02d}Z"  # history keeps this time
            remote[name] = _seal(ring, name, payload)
            view.apply_delta(dev, seq, ops)
        if rng.random() < 0.6:
            listing = {n: len(b) for n, b in remote.items()}
            got = mf.load(listing, remote.__getitem__, _opener, "f" * 16, seen, cache, observer)
            seen = dict(got.state.ctx)
            fresh = mf.load(listing, remote.__getitem__, _opener, "f" * 16, {},
                            mf.SegmentCache(tmp / f"fresh{step}"))
            assert dict(observer.items()) == dict(fresh.state.items())
            assert observer.ctx == fresh.state.ctx
            assert observer.usage() == fresh.state.usage()
            # a version's time in the history is when each device applied its removal
            assert sorted((p, d, json.dumps(e, sort_keys=True)) for p, d, e, _g in
                          observer.attic()) == sorted(
                (p, d, json.dumps(e, sort_keys=True)) for p, d, e, _g in fresh.state.attic())
    observer.close()


def test_failed_load_leaves_the_persistent_state_as_it_was(tmp_path: Path) -> None:
    """A rollback caught on load must not replace the state: the next honest load goes on."""
    ring = _ring()
    dev = DEVICES[0]
    remote: dict[str, bytes] = {}
    state = mf.State(tmp_path / "manifest.db")
    cache = mf.SegmentCache(tmp_path / "c")
    for seq in (1, 2, 3):
        name = mf.segment_name(dev, seq, "d")
        remote[name] = _seal(ring, name, mf.delta_payload(
            dev, seq, {dev: seq - 1} if seq > 1 else {}, None,
            [{"p": f"f{seq}", "e": {"t": "d"}, "rm": []}]))
    listing = {n: len(b) for n, b in remote.items()}
    mf.load(listing, remote.__getitem__, _opener, "f" * 16, {}, cache, state)
    before = dict(state.items())
    older = {n: s for n, s in listing.items() if not n.endswith("3.d")}
    with pytest.raises(IntegrityError, match="rollback"):
        mf.load(older, remote.__getitem__, _opener, "f" * 16, {dev: 3}, cache, state)
    state.close()
    reopened = mf.State(tmp_path / "manifest.db")
    assert dict(reopened.items()) == before and reopened.ctx == {dev: 3}
    assert set(reopened.consumed()) == set(listing)
    got = mf.load(listing, remote.__getitem__, _opener, "f" * 16, {dev: 3}, cache, reopened)
    assert sorted(got.state.paths) == ["f1", "f2", "f3"]


def test_index_signatures_match_the_scan_and_old_indexes_gain_them(tmp_path: Path) -> None:
    """A push skips entries whose scan signature equals the index's; the two must agree for
    files, folders and links, differ after any change, and an index written before the
    column existed is filled in on open."""
    import os
    import sqlite3

    from cloudguard.state import Index, signature

    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "doc.txt").write_text("x")
    os.symlink("sub/doc.txt", folder / "link")
    items = sync.scan(folder, lambda _m: None)
    index = Index(tmp_path / "index.db")
    for item in items.values():  # settled rows (row_from stores a fresh file as racy)
        index.put(IndexRow(item.path, item.kind, item.size, item.mtime, item.mode, "h", "d:1",
                           item.target, item.ctime, item.ino))
    sigs = index.signatures()
    assert sigs == {p: signature(i.kind, i.size, i.mtime, i.mode, i.target, i.ctime, i.ino)
                    for p, i in items.items()}
    racy = sync.row_from(items["sub/doc.txt"], "d:1", "h")  # just written: hashed next time
    assert racy.ctime == 0
    assert index.rows_for(["link", "missing"]).keys() == {"link"}
    os.utime(folder / "sub" / "doc.txt", ns=(1, 2))
    again = sync.scan(folder, lambda _m: None)["sub/doc.txt"]
    assert signature(again.kind, again.size, again.mtime, again.mode, again.target, again.ctime,
                     again.ino) != sigs["sub/doc.txt"]
    index.close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE files (path TEXT PRIMARY KEY, kind TEXT, size INTEGER, "
                "mtime INTEGER, mode INTEGER, sha256 TEXT, dot TEXT, target TEXT)")
    old.execute("INSERT INTO files VALUES ('a', 'f', 3, -5, 420, 'h', 'd:1', '')")
    old.commit()
    old.close()
    migrated = Index(tmp_path / "old.db")
    assert migrated.signatures() == {"a": signature("f", 3, -5, 420, "")}
    migrated.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 200, 4096, 65535, 65536, 65552, 300_000]),
                max_size=40), st.integers(0, 2**32))
def test_object_writer_md5_matches_whatever_the_write_sizes(sizes: list[int], seed: int
                                                            ) -> None:
    """The MD5 recorded for `verify` batches small writes; it must still hash every byte in
    order, across mixes of small and chunk-sized writes."""
    import io

    rng = random.Random(seed)
    parts = [rng.randbytes(n) for n in sizes]
    sink = io.BytesIO()
    out = sync.ObjectWriter(sink)
    for part in parts:
        out.write(part)
    assert out.md5() == hashlib.md5(sink.getvalue()).hexdigest()
    assert sink.getvalue() == b"".join(parts) and out.count == len(sink.getvalue())


def test_plan_pull_on_changed_paths_only_equals_the_full_plan() -> None:
    """A pull plans only the paths whose remote dot differs from the synced one; with
    ``taken`` covering every name, the plan is the one the full inputs give, conflict names
    included (here the natural conflict name belongs to an unchanged, synced path)."""
    clash = sync.conflict_name("doc.txt", 1, "dev")
    local = {"doc.txt": _item("doc.txt", mtime=5), "same": _item("same"),
             "gone-remotely": _item("gone-remotely"), clash: _item(clash)}
    index = {"doc.txt": _row("doc.txt", "d:1"), "same": _row("same", "d:1"),
             "gone-remotely": _row("gone-remotely", "d:1"), clash: _row(clash, "d:1")}
    remote = {"doc.txt": ("d:2", _entry("doc.txt", "remote")), "same": ("d:1", _entry("same")),
              "new": ("d:3", _entry("new")), clash: ("d:1", _entry(clash))}
    hasher = lambda p: "h-" + p  # noqa: E731
    full = sync.plan_pull(local, index, remote, hasher, {"d": "dev"})
    wanted = {p for p, (dot, _e) in remote.items() if index.get(p, _row(p, "")).dot != dot}
    wanted |= {p for p in index if p not in remote}
    cut = sync.plan_pull(local, {p: r for p, r in index.items() if p in wanted},
                         {p: r for p, r in remote.items() if p in wanted}, hasher, {"d": "dev"},
                         lambda p: p in local or p in remote or p in index)
    assert cut == full
    assert full.conflicts and full.conflicts[0] != clash
    # the clash name deleted locally but still synced remotely: only ``taken`` knows it
    del local[clash]
    full = sync.plan_pull(local, index, remote, hasher, {"d": "dev"})
    cut_index = {p: r for p, r in index.items() if p in wanted}
    cut_remote = {p: r for p, r in remote.items() if p in wanted}
    assert sync.plan_pull(local, cut_index, cut_remote, hasher, {"d": "dev"},
                          lambda p: p in local or p in remote or p in index) == full
    blind = sync.plan_pull(local, cut_index, cut_remote, hasher, {"d": "dev"})
    assert blind.conflicts == [clash] != full.conflicts  # what ``taken`` prevents


def test_a_state_made_before_moves_were_kept_gains_their_columns(tmp_path: Path) -> None:
    """A state database from before "Moves" opens, and moves then keep the old place."""
    import sqlite3

    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE entries (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
            o TEXT, a INTEGER, n INTEGER, PRIMARY KEY (path, dot)) WITHOUT ROWID;
        CREATE TABLE attic (path TEXT NOT NULL, dot TEXT NOT NULL, e TEXT NOT NULL,
            o TEXT, a INTEGER, n INTEGER, gone INTEGER NOT NULL,
            PRIMARY KEY (path, dot)) WITHOUT ROWID;""")
    db.close()
    state = mf.State(path)
    entry = {"t": "f", "s": 5, "h": "11" * 32, "o": "22" * 16, "a": 16, "n": 50,
             "i": "33" * 16, "k": "kk", "g": "44" * 32}
    state.apply_delta("0123456789abcdef", 1, [{"p": "x", "e": entry}])
    state.apply_delta("0123456789abcdef", 2, [{"p": "x", "reloc": {
        "0123456789abcdef:1": {"o": "55" * 16, "a": 16, "r": 1, "om": ""}}}])
    assert state.live_objects() == {"22" * 16, "55" * 16}
    state.forget_moves(objects=["22" * 16])
    assert state.live_objects() == {"55" * 16}
    assert "pl" not in state.siblings("x")["0123456789abcdef:1"]
    state.close()


def test_the_remover_of_a_kept_version_joins_alike_in_any_order() -> None:
    """Where a device itself sees two removals of one version, "rb" joins them (review round
    6, U1): unknown yields, and both are kept, so a late one is never hidden; the join is the
    same in any order. (What a snapshot says about a version the device holds adds nothing:
    round 7, V4, test_a_held_version_takes_no_remover_from_a_snapshot...)"""
    import itertools

    names = [None, "aaaaaaaaaaaaaaaa:3", "bbbbbbbbbbbbbbbb:4"]
    for values in itertools.product(names, repeat=3):
        results = set()
        for order in itertools.permutations(values):
            got: str | None = None
            for value in order:
                got = mf.join_remover(got, value)
            results.add(got)
        assert len(results) == 1, values
    assert mf.join_remover(None, "aaaaaaaaaaaaaaaa:3") == "aaaaaaaaaaaaaaaa:3"
    assert mf.join_remover("bbbbbbbbbbbbbbbb:4", "aaaaaaaaaaaaaaaa:3") == \
        "aaaaaaaaaaaaaaaa:3 bbbbbbbbbbbbbbbb:4"
    state = mf.State()  # an observed-remove drop first, the named removal after: it is kept
    entry = {"t": "d"}
    state.to_attic("p", "aaaaaaaaaaaaaaaa:1", entry, 10)
    state.to_attic("p", "aaaaaaaaaaaaaaaa:1", entry, 12, "cccccccccccccccc:9")
    assert state.attic_payload()["p"]["aaaaaaaaaaaaaaaa:1"] == {
        "e": entry, "g": 12, "rb": ["cccccccccccccccc:9"]}  # the later time (R7)


def test_times_from_a_segment_never_lie_in_the_future() -> None:
    """Review round 3, R7: a writer's clock cannot keep history for ever."""
    import time

    now = int(time.time())
    future = {"created": "9999-01-01T00:00:00+00:00"}
    assert now <= mf.time_of(future) <= int(time.time())
    assert mf.time_of({"created": "2020-01-01T00:00:00+00:00"}) == 1_577_836_800


def test_a_snapshot_floor_ends_nothing_and_an_old_remover_reads_as_a_list() -> None:
    """Review round 6, U2: only a signed re-encryption commit ends history, so a snapshot's
    floor (the earlier design, which nothing binds to an honest re-encryption) is read as
    nothing; a remover written as one string (before the union) reads as a list of one
    (round 7, V8)."""
    from cloudguard.manifest.segments import _check_segment

    dev = "a" * 16
    row = {"e": {"t": "d", "sg": "x"}, "g": 5, "rb": f"{dev}:1"}
    snap = {"kind": "snapshot", "device": dev, "seq": 1, "ctx": {dev: 1},
            "created": "2024-01-01T00:00:00+00:00", "paths": {},
            "attic": {"p": {f"{dev}:1": row, f"{dev}:0": {**row, "rb": ""}}},
            "floor": 1_700_000_000, "fb": f"{dev}:1"}
    _check_segment("m/s", snap)
    assert "floor" not in snap and "fb" not in snap
    assert snap["attic"]["p"][f"{dev}:1"]["rb"] == [f"{dev}:1"]
    assert "rb" not in snap["attic"]["p"][f"{dev}:0"]


def test_every_move_since_the_kept_place_is_listed_and_any_late_one_goes_back() -> None:
    """Review round 3, R6 (a): X, removed with cutoff 10, moves a blob twice late. Going back
    "one move" would land on X's first object; the place before the first remembered move
    (kept with every move's dot) is where it goes, even after an honest move in between."""
    from cloudguard.manifest.clamp import unmove_late as _unmove_late

    a, x = "aaaaaaaaaaaaaaaa", "cccccccccccccccc"
    home = {"o": "11" * 16, "a": 0, "r": 0}
    entry = {"t": "f", "h": "0", "s": 1, "n": 100, "i": "0" * 32, "k": "x", "g": "ab" * 32,
             **home}
    state = mf.State()
    state.apply_delta(a, 1, [{"p": "f", "e": entry}])
    moves = [(a, 5, "22"), (x, 12, "33"), (x, 13, "44")]
    for n, (dev, seq, obj) in enumerate(moves, start=1):
        state.apply_delta(dev, seq, [{"p": "f", "reloc": {f"{a}:1": {
            "o": obj * 16, "a": 0, "r": n}}}])
    got = state.entry("f", f"{a}:1")
    assert got is not None
    assert got["rd"] == [f"{a}:5", f"{x}:12", f"{x}:13"] and got["o"] == "44" * 16
    assert {k: got["pl"][k] for k in ("o", "a", "r")} == home
    listed = {home["o"], "44" * 16}.__contains__
    back = _unmove_late(got, {x: 10}, listed)
    assert {k: back[k] for k in ("o", "a", "r")} == home and "rd" not in back
    assert _unmove_late(got, {x: 20}, listed) is got  # no move past a cutoff: stays
    # never back to a place whose object is gone (review round 7, V1)
    kept = _unmove_late(got, {x: 10}, {"44" * 16}.__contains__)
    assert kept["o"] == "44" * 16 and not {"pl", "rd", "rt"} & set(kept)  # no late mover left


def test_a_snapshot_cannot_plant_a_move_or_a_time_in_the_future() -> None:
    """Review round 3, R6 (c): a move whose dot the snapshot's writer never saw is planted
    (refused), and a move's time is never later than the snapshot."""
    from cloudguard.manifest.segments import _check_segment

    dev = "aaaaaaaaaaaaaaaa"
    moved = {"t": "d", "sg": "x", "rd": [f"{dev}:9"], "rt": 4_000_000_000, "r": 1,
             "pl": {"o": "11" * 16, "a": 0}}

    def snap(ctx: int) -> dict[str, Any]:
        return {"kind": "snapshot", "device": dev, "seq": ctx, "ctx": {dev: ctx},
                "created": "2024-01-01T00:00:00+00:00", "paths": {"p": {f"{dev}:1": dict(moved)}}}

    with pytest.raises(IntegrityError, match="never saw"):
        _check_segment("m/x", snap(8))
    ok = snap(9)
    _check_segment("m/x", ok)
    assert ok["paths"]["p"][f"{dev}:1"]["rt"] == 1_704_067_200


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(0, 40))
def test_a_streamed_snapshot_is_the_same_bytes_as_the_dict(seed: int, steps: int) -> None:
    """The snapshot a device writes is streamed one path at a time (memory stays flat with
    100,000 entries); its JSON text, and so the sealed segment, equals the whole dict's."""
    _log, views = simulate(seed, steps)
    state = views[DEVICES[0]]
    for i, (path, dot) in enumerate(list(state.dots())[:3]):  # some history too
        entry = state.entry(path, dot)
        assert entry is not None
        state.to_attic(path, dot, entry, 100 + i, "bbbbbbbbbbbbbbbb:1" if i % 2 else None)
    whole = mf.snapshot_payload(DEVICES[0], 7, state, "ab" * 32)
    text = b"".join(mf.snapshot_json(DEVICES[0], 7, state, "ab" * 32))
    whole["created"] = json.loads(text)["created"]  # the one field read from the clock
    assert text == json.dumps(whole, separators=(",", ":"), sort_keys=True).encode()
    signer = Ed25519PrivateKey.generate()
    args = (bytes(32), 3, "cd" * 32, "ef" * 32, "m/x")
    assert fmt.seal_segment(*args, whole, signer, nonce=bytes(12)) == fmt.seal_segment(
        *args, [text[:7], text[7:50], text[50:]], signer, nonce=bytes(12))


def test_a_snapshot_cannot_plant_a_remover() -> None:
    """Review round 4, S10: a history row whose remover (``rb``) the snapshot's writer never
    saw is planted (refused), like a move."""
    from cloudguard.manifest.segments import _check_segment

    dev, other = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"

    def snap(rb: list[str]) -> dict[str, Any]:
        row = {"e": {"t": "d", "sg": "x"}, "g": 5, "rb": rb}
        return {"kind": "snapshot", "device": dev, "seq": 3, "ctx": {dev: 3, other: 7},
                "created": "2024-01-01T00:00:00+00:00", "paths": {},
                "attic": {"p": {f"{dev}:1": row}}}

    with pytest.raises(IntegrityError, match="removal its writer never saw"):
        _check_segment("m/x", snap([f"{dev}:1", f"{other}:999999"]))
    _check_segment("m/x", snap([f"{dev}:1", f"{other}:7"]))
    for bad in ([], [f"{other}:7", f"{dev}:1"], [f"{dev}:1", f"{dev}:1"], 7, ["x:1"]):
        with pytest.raises(IntegrityError, match="malformed history"):  # a sorted union
            _check_segment("m/x", snap(bad))  # type: ignore[arg-type]


def test_a_malformed_payload_names_the_segment_and_what_is_wrong() -> None:
    """Payloads are checked by converting them into the Structs of manifest/types.py: a shape
    error is the integrity error naming the segment, the kind of object and where it is (the
    one-line error a user can act on), never a msgspec error."""
    from cloudguard.manifest.segments import _check_segment

    dev = "aaaaaaaaaaaaaaaa"
    entry = {"t": "f", "s": 1, "m": 1, "x": 0o644, "h": "00" * 32, "o": "22" * 16, "a": 0,
             "n": 100, "i": "33" * 16, "k": "k", "g": "g", "sg": "x"}

    def snap(**changed: Any) -> dict[str, Any]:
        return {"kind": "snapshot", "device": dev, "seq": 1, "ctx": {dev: 1},
                "created": "2024-01-01T00:00:00+00:00",
                "paths": {"p": {f"{dev}:1": {**entry, **changed}}}}

    _check_segment("m/x", snap())
    for changed, where in (({"s": True}, "paths"), ({"zz": 1}, "zz"), ({"t": "socket"}, "t"),
                           ({"o": "not an id"}, "a file needs"), ({"x": -1}, ">= 0")):
        with pytest.raises(IntegrityError, match="manifest segment m/x: manifest entry is "
                           f"malformed .*{where}"):
            _check_segment("m/x", snap(**changed))
    delta = {"kind": "delta", "device": dev, "seq": 1, "deps": {}, "created": "2024-01-01",
             "ops": [{"p": "p", "reloc": {f"{dev}:1": {"o": "22" * 16, "a": 0, "r": 1,
                                                       "n": 5}}}]}
    with pytest.raises(IntegrityError, match=r"manifest op is malformed .*\$\.ops\[0\]"):
        _check_segment("m/x", delta)


def test_a_kept_place_ranks_below_its_entry_and_one_place_holds_one_blob() -> None:
    """Review round 4, S5: a `pl` is the place before a move, and every move raises `r`, so a
    `pl` that does not rank below its entry is planted (it would win the max-register when a
    late move is undone); and two copies of one dot at one place (`r`, `o`) naming another
    offset, length or file id are not resolved by the tie-break: the copy whose blob decrypts
    to the version's content wins, else the one held stays (round 23, MM1: a refusal let one
    honest snapshot that took a removed member's copy stop every device)."""
    from cloudguard.manifest.segments import check_entry

    moved = {"t": "d", "sg": "x", "rd": ["aaaaaaaaaaaaaaaa:9"], "rt": 5, "r": 2,
             "pl": {"o": "11" * 16, "a": 0, "r": 1}}
    check_entry(moved)
    for planted in (1_000_000_000, 2):
        with pytest.raises(IntegrityError):
            check_entry({**moved, "pl": {**moved["pl"], "r": planted}})
    state = mf.State()
    signer = Ed25519PrivateKey.generate()
    dev = "aaaaaaaaaaaaaaaa"
    entry = {"t": "f", "s": 1, "m": 1, "x": 0o644, "h": "00" * 32, "o": "22" * 16, "a": 0,
             "n": 100, "i": "33" * 16, "k": "k", "g": "g", "r": 1}
    ops = [{"p": "f", "e": dict(entry), "rm": []}]
    sign_entries({"device": dev, "seq": 1, "ops": ops}, signer, "v" * 64)
    state.apply_delta(dev, 1, ops)
    held = state.entry("f", f"{dev}:1")
    assert held is not None
    state.merge_snapshot({dev: 1}, [("f", {f"{dev}:1": {**held, "a": 4096}})])
    assert state.entry("f", f"{dev}:1") == held  # cannot tell: the one held stays
    state.placecheck = lambda e: e.get("a") == 4096  # only the other copy's blob matches
    state.merge_snapshot({dev: 1}, [("f", {f"{dev}:1": {**held, "a": 4096}})])
    assert state.entry("f", f"{dev}:1") == {**held, "a": 4096}
    state.placecheck = lambda e: True  # both match (cannot be): the one held stays
    state.merge_snapshot({dev: 1}, [("f", {f"{dev}:1": held})])
    assert state.entry("f", f"{dev}:1") == {**held, "a": 4096}
    state.merge_snapshot({dev: 1}, [("f", {f"{dev}:1": {**held, "k": "rewrapped"}})])


def test_a_snapshot_never_plants_move_fields_on_an_entry_the_reader_holds() -> None:
    """Review round 4, S5 (2): ``pl``, ``rd`` and ``rt`` are unsigned. A snapshot that wins the
    location max-register gives its place and key fields, never its move fields: the place to
    go back to stays one this device held, and the snapshot's dot is recorded as a mover."""
    from cloudguard.manifest.moves import carried, unmoved

    mine = {"t": "f", "o": "a" * 32, "a": 0, "n": 10, "r": 0, "k": "K1", "sg": "s"}
    planted = {"o": "e" * 32, "a": 0, "n": 10, "r": 0}
    # equal place, other key fields (a rewrap) plus a planted move: keys taken, moves not
    theirs = {**mine, "k": "K2", "rd": ["X:9"], "rt": 5, "pl": planted}
    got = carried(mine, theirs, "X:9", 100)
    assert got["k"] == "K2" and "pl" not in got and "rd" not in got
    # a real move (higher r) with a planted pl: pl is where we had the blob
    theirs = {**mine, "o": "b" * 32, "r": 2, "rd": ["C:4", "X:9"], "rt": 5,
              "pl": {**planted, "r": 1}}
    got = carried(mine, theirs, "C:7", 100)
    assert got["pl"] == {k: mine[k] for k in ("o", "a", "r", "n", "k")}
    assert set(got["rd"]) == {"C:4", "X:9", "C:7"} and got["rt"] == 100
    assert unmoved(got)["o"] == mine["o"]
    # what we had recorded stays: our pl, our movers first
    held = {**mine, "o": "c" * 32, "r": 1, "rd": ["B:2"], "rt": 50,
            "pl": {k: mine[k] for k in ("o", "a", "r", "n", "k")}}
    got = carried(held, theirs, "C:7", 100)
    assert got["pl"] == held["pl"] and got["rd"][0] == "B:2"
    # two repacks at one move count: no lower place exists, so no malformed pl is made
    bare = {**mine, "o": "c" * 32, "r": 2}
    got = carried(bare, {**bare, "o": "d" * 32}, "C:7", 100)
    assert "pl" not in got and got["o"] == "d" * 32


def test_the_remover_walk_revives_on_any_late_remover_or_tainted_carrier() -> None:
    """Review rounds 5-6, T1 and U1: a kept version comes back when one of its removers is
    late: a late version still live or without a row, one removed by a late write in turn, a
    cycle of late dots (makeable by a late snapshot's unsigned rb), or a carrier snapshot
    whose vector covers a late write (an honest device that merged a late drop). An honest
    remover alone, or a clean carrier, stops it (round 3, R10)."""
    from cloudguard.manifest.clamp import late_removal as walk

    x, c = "c" * 16, "d" * 16
    limit = {x: 10}
    late11, late12, honest, carrier = f"{x}:11", f"{x}:12", f"{c}:5", f"{c}:50"
    assert walk([late11], {late11: {}}, {}, limit, {})  # the late edit is still live
    assert walk([late12], {}, {}, limit, {})  # a late delete: no version has its dot
    assert walk([late11], {}, {late11: {"rb": [late12]}}, limit, {})  # edit, then delete
    # an honest delete of the late edit brings back what it replaced (round 15, DD1/DD2);
    # an honest edit of it (still live) stands
    assert walk([late11], {}, {late11: {"rb": [honest]}}, limit, {})
    assert not walk([late11], {honest: {}}, {late11: {"rb": [honest]}}, limit, {})
    assert not walk([honest], {}, {}, limit, {}) and not walk(None, {}, {}, limit, {})
    assert walk([honest, late12], {}, {}, limit, {})  # one late remover is enough
    assert walk([late11], {}, {late11: {"rb": [late12]}, late12: {"rb": [late11]}}, limit, {})
    assert walk([carrier], {}, {}, limit, {carrier: {c: 50, x: 13}})  # it carried X:13
    assert not walk([carrier], {}, {}, limit, {carrier: {c: 50, x: 10}})  # a clean one
    assert walk([late11], {}, {late11: {"rb": [carrier]}}, limit, {carrier: {x: 12}})
    # round 7, V5 (a): a carrier that names the removers it saw is judged by them
    assert not walk([honest, carrier], {}, {}, limit, {carrier: {c: 50, x: 13}})
    assert walk([late12, carrier], {}, {}, limit, {carrier: {c: 50, x: 13}})


def test_a_clamp_revives_what_a_late_write_removed_and_no_honest_delete() -> None:
    """Review round 6, U1, on a device's own state: a version two honest devices removed (a
    delta and a snapshot: removers that disagreed and revived before) stays deleted when a
    clamp runs; one that an honest snapshot dropped while it carried a removed member's late
    write comes back, though no late dot is left in its row."""
    from cloudguard.manifest.clamp import Limits, clamp_own

    a, b, c, x = "a" * 16, "b" * 16, "c" * 16, "e" * 16
    state = mf.State()
    entry = {"t": "d"}
    with state.transaction():
        for path, seq in (("honest", 1), ("carried", 2), ("live", 3)):
            state.put_entry(path, f"{a}:{seq}", entry)
        state.merge_snapshot({a: 3, b: 5}, [("carried", {f"{a}:2": entry}),
                                            ("live", {f"{a}:3": entry})], {
            "honest": {f"{a}:1": {"e": entry, "g": 5, "rb": [f"{b}:4"]}}}, 10, f"{b}:5")
        state.merge_snapshot({a: 3, c: 60, x: 13}, [("live", {f"{a}:3": entry})], {}, 10,
                             f"{c}:60")  # C's snapshot had taken in X:13
    rows = dict(state.attic_rows())
    assert rows["honest"][f"{a}:1"]["rb"] == [f"{b}:4", f"{b}:5"]
    assert rows["carried"][f"{a}:2"]["rb"] == [f"{c}:60"]
    clamp_own(state, Limits({x: 10}))
    live = dict(state.items())
    assert set(live) == {"carried", "live"}, live
    assert f"{x}" not in " ".join(str(r.get("rb")) for rs in state.attic_payload().values()
                                  for r in rs.values())
    clean = mf.State()
    with clean.transaction():
        clean.put_entry("honest", f"{a}:1", entry)
        clean.merge_snapshot({a: 3, c: 60}, [], {}, 10, f"{c}:60")  # a clean carrier
        clean.ctx[x] = 13
    clamp_own(clean, Limits({x: 10}))
    assert not dict(clean.items())  # an honest snapshot's drop stays a drop


def test_a_clamp_revives_by_the_dot_and_the_freshest_copy_wins() -> None:
    """Review round 8, W1: the row a late removal left may be stale (its object deleted by a
    re-encryption, its key ended). The version comes back anyway, and the location
    max-register takes the re-encrypted copy when it arrives; deciding by the stale row
    would drop the real version everywhere."""
    from cloudguard.manifest.clamp import Limits, clamp_own

    a, c, x = "a" * 16, "c" * 16, "e" * 16
    stale = {"t": "f", "o": "11" * 16, "a": 0, "n": 9, "r": 0, "w": "old"}
    state = mf.State()
    with state.transaction():
        state.put_entry("f", f"{a}:1", stale)
        state.merge_snapshot({a: 1, c: 60, x: 13}, [], {}, 10, f"{c}:60")
    clamp_own(state, Limits({x: 10}, lambda _o: False, ended=frozenset({"old"})))
    assert dict(state.items())["f"] == {f"{a}:1": stale}
    fresh = {**stale, "o": "22" * 16, "r": 1, "w": "new"}
    state.merge_snapshot({a: 1}, [("f", {f"{a}:1": fresh})], {}, 10, f"{a}:1")
    got = dict(state.items())["f"][f"{a}:1"]
    assert (got["o"], got["w"]) == (fresh["o"], "new")


def test_a_held_version_takes_no_remover_from_a_snapshot_and_a_forgotten_one_stays_out(
        ) -> None:
    """Review round 7, V4: who removed a version is what this device saw. A snapshot's
    history gives no remover to a version the reader holds (live or kept), gives its own dot
    and the removers it names to a version its merge drops, and a version the reader has
    forgotten (its vector covers it) is not taken in again."""
    a, c, x = "a" * 16, "c" * 16, "e" * 16
    entry = {"t": "d"}
    state = mf.State()
    with state.transaction():
        state.put_entry("kept", f"{a}:1", entry)
        state.put_entry("live", f"{a}:2", entry)
        state.put_entry("dropped", f"{a}:3", entry)
        state.ctx[a] = 4
        state.apply_delta(c, 1, [{"p": "kept", "rm": [f"{a}:1"]}])
        claims = {"kept": {f"{a}:1": {"e": entry, "g": 5, "rb": [f"{c}:1", f"{x}:1"]}},
                  "live": {f"{a}:2": {"e": entry, "g": 5, "rb": [f"{x}:1"]}},
                  "dropped": {f"{a}:3": {"e": entry, "g": 5, "rb": [f"{c}:1"]}},
                  "forgotten": {f"{a}:4": {"e": entry, "g": 5, "rb": [f"{x}:1"]}},
                  "new": {f"{c}:9": {"e": entry, "g": 5, "rb": [f"{x}:1"]}}}
        state.merge_snapshot({a: 4, c: 9, x: 2}, [("live", {f"{a}:2": entry})], claims, 10,
                             f"{x}:2")
    rows = dict(state.attic_rows())
    assert rows["kept"][f"{a}:1"]["rb"] == [f"{c}:1"]
    assert "live" not in rows and state.entry("live", f"{a}:2") is not None
    assert rows["dropped"][f"{a}:3"]["rb"] == [f"{c}:1", f"{x}:2"]
    assert "forgotten" not in rows
    assert rows["new"][f"{c}:9"]["rb"] == [f"{x}:1", f"{x}:2"]  # and its carrier (W2)


def test_a_snapshots_carriers_and_removers_are_bounded() -> None:
    """Review round 7, V3 and V5 (b): a row names at most two removers of one device, and
    ``rc`` gives vectors only for carriers the history names, none past the writer's vector;
    a writer never writes what a reader refuses."""
    from cloudguard.manifest.segments import _check_segment, snapshot_payload

    dev, other = "a" * 16, "b" * 16

    def snap(rb: list[str], rc: dict[str, dict[str, int]]) -> dict[str, Any]:
        row = {"e": {"t": "d", "sg": "x"}, "g": 5, "rb": rb}
        return {"kind": "snapshot", "device": dev, "seq": 3, "ctx": {dev: 3, other: 7},
                "created": "2024-01-01T00:00:00+00:00", "paths": {},
                "attic": {"p": {f"{dev}:1": row}}, "rc": rc}

    _check_segment("m/x", snap([f"{other}:5", f"{other}:6"], {f"{other}:6": {other: 6}}))
    with pytest.raises(IntegrityError, match="more than 2 removers of one device"):
        _check_segment("m/x", snap([f"{other}:5", f"{other}:6", f"{other}:7"], {}))
    with pytest.raises(IntegrityError, match="carrier its history does not name"):
        _check_segment("m/x", snap([f"{other}:5"], {f"{other}:6": {other: 6}}))
    with pytest.raises(IntegrityError, match="vector its writer never saw"):
        _check_segment("m/x", snap([f"{other}:6"], {f"{other}:6": {other: 6, "f" * 16: 9}}))
    state = mf.State()
    with state.transaction():
        state.ctx.update({dev: 2, other: 7})
        state.to_attic("p", f"{dev}:1", {"t": "d", "sg": "x"}, 5,
                       f"{other}:4 {other}:5 {other}:6")
        state.carriers.note({f"{other}:6": {other: 6, "f" * 16: 9}})
    written = snapshot_payload(dev, 3, state)
    assert written["attic"]["p"][f"{dev}:1"]["rb"] == [f"{other}:5", f"{other}:6"]
    assert written["rc"] == {f"{other}:6": {other: 6, "f" * 16: 0}}
    _check_segment("m/x", written)


def test_a_clamp_leaves_no_carrier_late() -> None:
    """Review round 7, V5 (c): once a clamp has revived what a late carrier dropped, the
    carrier's vector is clamped too, so a later clamp does not revive its drops again."""
    from cloudguard.manifest.carriers import tainted
    from cloudguard.manifest.clamp import Limits, clamp_own

    a, c, x = "a" * 16, "c" * 16, "e" * 16
    entry = {"t": "d"}
    state = mf.State()
    with state.transaction():
        state.put_entry("carried", f"{a}:1", entry)
        state.merge_snapshot({a: 1, c: 60, x: 13}, [], {}, 10, f"{c}:60")
    clamp_own(state, Limits({x: 10}))
    assert set(dict(state.items())) == {"carried"}
    assert not any(tainted(v, {x: 10}) for v in state.carriers.everything().values())


def test_a_clamp_bounds_what_a_counted_removal_leaves_and_keeps_a_victims_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V3: a member with a counting removal keeps at most MAX_KEPT late
    versions (its earliest), and none whose key names no commit on the chain; a member that
    only challenged removals took out keeps all of its work."""
    from cloudguard.manifest import clamp as cl

    monkeypatch.setattr(cl, "MAX_KEPT", 2)
    x, v, a = "e" * 16, "f" * 16, "a" * 16
    good, forged, old = "k" * 64, "z" * 64, "o" * 64
    paths = {f"x{i}": {f"{x}:{i}": {"t": "f", "g": good, "o": "1" * 32}} for i in range(1, 5)}
    paths["forged"] = {f"{x}:9": {"t": "f", "g": forged, "o": "1" * 32}}
    paths["dir"] = {f"{x}:8": {"t": "d"}}
    paths |= {f"v{i}": {f"{v}:{i}": {"t": "f", "g": good, "o": "1" * 32}} for i in range(1, 5)}
    kept = {"ended": {f"{a}:1": {"e": {"t": "f", "g": old, "o": "1" * 32}, "g": 5,
                                 "rb": [f"{x}:7"]}}}
    lim = cl.Limits({x: 0, v: 0}, ended=frozenset({old}), vouched={x: 0},
                    keks=frozenset({good, old}))
    live, history, _rc = cl.clamp_snapshot(paths, kept, {}, 10, lim)
    assert f"{a}:1" in live["ended"]  # back by its dot; a fresher copy wins later (W1)
    late_x = sorted(d for rows in history.values() for d in rows if d.startswith(x))
    assert late_x == [f"{x}:1", f"{x}:2"]  # the earliest two; the forged key is gone
    late_v = sorted(d for rows in history.values() for d in rows if d.startswith(v))
    assert late_v == [f"{v}:{i}" for i in range(1, 5)]  # a victim keeps everything
    lim = cl.Limits({x: 0}, keks=frozenset({good}))  # vouched None: every removed member
    _live, history, _rc = cl.clamp_snapshot({"dir": paths["dir"]}, {}, {}, 10, lim)
    assert f"{x}:8" in history["dir"]  # no key to check: only the cap applies
    # round 8, W3: a backdated removal lowered retired L's cutoff to 0 below the 800 an honest
    # removal vouched for: L's dots up to 800 are kept whole, only those past it are capped
    ell = "d" * 16
    work = {f"l{i}": {f"{ell}:{i}": {"t": "f", "g": forged, "o": "1" * 32}}
            for i in (1, 2, 3, 799, 801, 802, 803)}
    lim = cl.Limits({ell: 0}, vouched={ell: 800}, keks=frozenset({good}))
    _live, history, _rc = cl.clamp_snapshot(work, {}, {}, 10, lim)
    assert sorted(int(d.partition(":")[2]) for rows in history.values() for d in rows) == [
        1, 2, 3, 799]  # past 800: forged keys, dropped


def test_a_snapshot_naming_a_device_no_commit_names_is_refused() -> None:
    """Review round 8, W5 (b): made-up device ids in a snapshot's vector, removers or carriers
    would make every per-device bound meaningless; such a snapshot is refused."""
    from cloudguard.manifest.loading import _known_devices

    dev, other, made_up = "a" * 16, "b" * 16, "f" * 16
    row = {"e": {"t": "d"}, "g": 5, "rb": [f"{other}:2"]}
    known = frozenset({dev, other})
    copy = {"t": "d", "cs": f"{other}:1"}
    _known_devices("m/s", {dev: 3, other: 2}, {"p": {f"{dev}:1": row}}, {}, known,
                   {"q": {f"{dev}:2": copy}})
    _known_devices("m/s", {made_up: 3}, {}, {}, None, {})  # not checked
    planted = {"t": "d", "cs": f"{made_up}:1"}  # round 13, BB3: a source void-added later
    for ctx, kept, rc, paths in (
            ({made_up: 1}, {}, {}, {}),
            ({dev: 3}, {"p": {f"{dev}:1": {**row, "rb": [f"{made_up}:1"]}}}, {}, {}),
            ({dev: 3}, {}, {f"{made_up}:1": {dev: 1}}, {}),
            ({dev: 3}, {}, {f"{dev}:1": {made_up: 1}}, {}),
            ({dev: 3}, {}, {}, {"q": {f"{dev}:2": planted}}),
            ({dev: 3}, {"p": {f"{dev}:1": {**row, "e": planted}}}, {}, {})):
        with pytest.raises(IntegrityError, match="no commit on the chain names"):
            _known_devices("m/s", ctx, kept, rc, known, paths)


def test_ghosts_count_against_the_bound_of_the_member_that_added_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W5 (a): each void add is a free commit for a removed member, so the
    versions of the members only its void adds brought in share its bound."""
    from cloudguard.manifest import clamp as cl

    monkeypatch.setattr(cl, "MAX_KEPT", 3)
    x, g1, g2 = "e" * 16, "1" * 16, "2" * 16
    paths = {f"{g}-{i}": {f"{g}:{i}": {"t": "f", "g": "k", "o": "1" * 32}}
             for g in (g1, g2) for i in (1, 2)}
    lim = cl.Limits({x: 0, g1: 0, g2: 0}, vouched={x: 0}, ghosts={g1: x, g2: x},
                    keks=frozenset({"k"}))
    _live, history, _rc = cl.clamp_snapshot(paths, {}, {}, 10, lim)
    assert sum(len(rows) for rows in history.values()) == 3


def test_a_shortfall_is_excused_only_where_the_chain_stops_at_an_ended_key(
        tmp_path: Path) -> None:
    """Review round 9, X5: one listed segment under a key a re-encryption ended excused the
    writer's whole shortfall, so the provider could hide readable segments below it. It is
    excused only when the first segment not read is that one, and the vector stored as seen
    keeps what was seen."""
    from cloudguard.chain import KeyGone
    from cloudguard.manifest.clamp import Limits

    ring = _ring()
    blobs: dict[str, bytes] = {}
    dev = DEVICES[0]
    for seq in range(1, 5):
        name = mf.segment_name(dev, seq, "d")
        payload = mf.delta_payload(dev, seq, {dev: seq - 1} if seq > 1 else {}, None,
                                   [{"p": f"f{seq}", "e": {"t": "d"}, "rm": []}])
        blobs[name] = _seal(ring, name, payload)
    ended = mf.segment_name(dev, 5, "s")  # its writer's snapshot, under the ended key
    blobs[ended] = b"sealed under a key no one holds"

    def opener(name: str, d: str, seq: int, data: bytes) -> dict[str, Any]:
        if name == ended:
            raise KeyGone(f"{name}: its key is gone", "ended")
        return _opener(name, d, seq, data)

    lim = Limits(ended=frozenset({"ended"}))
    listing = {n: len(b) for n, b in blobs.items()}
    skipped: list[str] = []
    loaded = mf.load(listing, blobs.__getitem__, opener, dev, {dev: 5},
                     mf.SegmentCache(tmp_path / "a"), skipped=skipped, limits=lim)
    assert loaded.state.ctx[dev] == 4
    assert any("re-encryption ended" in r for r in skipped)
    assert loaded.state.seen()[dev] == 5  # kept, reported until its writer writes again
    hidden = {n: s for n, s in listing.items()
              if n not in (mf.segment_name(dev, 3, "d"), mf.segment_name(dev, 4, "d"))}
    with pytest.raises(IntegrityError, match="rollback"):
        mf.load(hidden, blobs.__getitem__, opener, dev, {dev: 4},
                mf.SegmentCache(tmp_path / "b"), skipped=[], limits=lim)


def test_of_two_good_wraps_of_one_dek_the_one_under_the_head_is_kept() -> None:
    """A rewrap at a rotation gives one version two copies that differ only in their key wrap.
    Both open the blob (keycheck: None), so the copy under the head's KEK is kept, in either
    order: the other would make the next push rewrap and write a snapshot for nothing. The
    bytes are chosen so that the old tie-break (JSON of the wrap) would keep the old copy."""
    state = mf.State()
    state.keycheck = lambda _one, _two: None
    state.head_g = "aa" * 32
    base = {"t": "f", "o": "obj", "a": 0, "r": 0, "w": "ww", "h": "hh", "s": 1}
    old = {**base, "g": "zz" * 32, "k": "ff" * 40}
    new = {**base, "g": "aa" * 32, "k": "00" * 40}
    assert state.fresher(old, new) is new  # type: ignore[arg-type]
    assert state.fresher(new, old) is new  # type: ignore[arg-type]
    state.head_g = None  # cannot tell: the copy held stays, never the tie-break's (LL2)
    assert state.fresher(old, new) is old  # type: ignore[arg-type]
    assert state.fresher(new, old) is new  # type: ignore[arg-type]
    state.keycheck = None  # unchecked (no session): the max-register alone decides
    assert state.fresher(old, new) == state.fresher(new, old)


def test_a_missing_segment_is_named_not_the_delta_that_waits_on_it(tmp_path: Path) -> None:
    """B's first delta depends on A's, which is gone: the error names A's segment, which a
    user can look for, not B's, which is there."""
    ring = _ring()
    a, b = DEVICES[0], DEVICES[1]
    blobs: dict[str, bytes] = {}
    for dev, deps in ((a, {}), (b, {a: 1})):
        name = mf.segment_name(dev, 1, "d")
        payload = mf.delta_payload(dev, 1, deps, None, [{"p": dev, "e": {"t": "d"}, "rm": []}])
        blobs[name] = _seal(ring, name, payload)
    listing = {n: len(x) for n, x in blobs.items() if n != mf.segment_name(a, 1, "d")}
    with pytest.raises(IntegrityError) as got:
        mf.load(listing, blobs.__getitem__, _opener, DEVICES[2], {}, mf.SegmentCache(tmp_path))
    assert f"segment {mf.segment_name(a, 1, 'd')} is missing" in str(got.value), got.value


def test_a_late_ops_rm_counts_only_what_its_writer_had_seen() -> None:
    """Review round 20, JJ1: its own earlier dots and those its deps cover; malformed dots
    (a signed rm can hold anything) are dropped, never a traceback."""
    from cloudguard.manifest.unseen import _seen
    rm = ["a:1", "a:5", "b:2", "b:3", "b:\u00b2", 5, "c:1", "d:1"]
    assert _seen(rm, "a", 5, {"b": 2, "c": True, "d": "1"}) == ["a:1", "b:2"]
    assert _seen("a:1", "a", 5, {}) == []
