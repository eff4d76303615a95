"""Review round 20: throwaway attack runs against f941cd6 (HH1/HH2: late_moved), d2b5ad2 and
2e12245 (II1: the mend snapshot, healed_over) and 632d0b6 (II2: State.unseen,
manifest/unseen.py and the script's replaced_by_unseen).
test_JJ<n> fails where finding JJ<n> holds (the assert states the safe outcome).
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round20-attacks/<file>
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_trust_attacks import (  # noqa: F401
    Dev,
    compact,
    provider,
    script_restores,
)
from test_trust_conflicts import LATE, _texts, x_removed

from cloudguard import session as cg_session

__all__ = ["provider"]


def _pull_all(devs):  # type: ignore[no-untyped-def]
    out = {}
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        out[dev.name] = _texts(dev.folder)
    return out


def _push(dev):  # type: ignore[no-untyped-def]
    got = dev.run("push", "--json")
    print(dev.name, "push", got.exit_code, got.output[-600:])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def _seqs(remote: str, rid: str) -> list[int]:
    return sorted(int(n.split("-")[-1].split(".")[0]) for n in os.listdir(Path(remote) / "m")
                  if n.startswith(rid + "-"))


def _naming_more(monkeypatch, path: str, extra: list[str]):  # type: ignore[no-untyped-def]
    """X's (removed, malicious) cloudguard: its delta's op at ``path`` also names ``extra``
    dots in ``rm`` (signed by X: its real key, its real push)."""
    real = cg_session.Session.commit

    def commit(self, ops):  # type: ignore[no-untyped-def]
        for op in ops:
            if op["p"] == path:
                op["rm"] = [*op.get("rm", []), *extra]
        return real(self, ops)
    monkeypatch.setattr(cg_session.Session, "commit", commit)
    return real


def _fresh(monkeypatch, tmp_path, remote, approver):  # type: ignore[no-untyped-def]
    from test_trust_fresh_readers import _fresh_device
    return _fresh_device(monkeypatch, tmp_path, remote, approver)


def _settled(a, *others):  # type: ignore[no-untyped-def]
    """After the removal, A's first push rewraps under the new key and compacts; the others
    pull that snapshot. The honest edits that follow stay deltas (a fresh reader reads them)."""
    a.write("other.txt", "A's other file")
    _push(a)
    for dev in others:
        assert dev.run("pull").exit_code == 0


def test_JJ1_a_late_op_naming_an_honest_dot_it_never_saw_hides_it_on_fresh_readers(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, fix_tried=False):
    """X, removed, rewrites paper.txt late; its delta's op there also names, in rm, the
    dots A will write next (predictable: the seq after A's newest segment). A, who refused
    X's delta, edits paper.txt (A's concurrent edit, rm = its own old version). Lagging B
    applies X's delta and edits paper.txt over X's version (an honest edit of a late
    version), not having seen A's edit. Devices that pull now hold both edits (one as a
    conflict copy). A fresh reader (new device, script) never applied X's delta; B's delta
    removes X's dot, so unseen.py reads X's op and moves each live version its rm names to
    the history, A's edit included although X never saw it. Safe outcome: every reader
    holds A's edit live (at paper.txt or as a conflict copy)."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _settled(a, e)
    nxt = max(_seqs(local_remote, a.rid)) + 1
    future = [f"{a.rid}:{n}" for n in range(nxt, nxt + 6)]
    with provider.showing(before) as late:
        real = _naming_more(monkeypatch, "paper.txt", future)
        x.write("paper.txt", LATE)
        x.cg("push")
        monkeypatch.setattr(cg_session.Session, "commit", real)

    assert a.run("pull").exit_code == 0
    a.write("paper.txt", "A's concurrent edit")
    _push(a)
    print("A's dots now", _seqs(local_remote, a.rid), "named", future)
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
        b.write("paper.txt", "B's edit over X's")
        _push(b)
    print("segments", sorted(os.listdir(Path(local_remote) / "m")), "b", b.rid, "x", x.rid)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", json.dumps(restored, sort_keys=True))
    d = _fresh(monkeypatch, tmp_path, local_remote, a)
    fresh = _pull_all([d])["d"]
    print("fresh D", json.dumps(fresh, sort_keys=True))
    got = _pull_all([e, a, b])
    print("devices", json.dumps(got, sort_keys=True))
    hist = a.json("history", "paper.txt")["versions"]
    print("A history paper.txt", [(v.get("device"), v.get("current"), v.get("late"))
                                  for v in hist])
    if fix_tried:  # the script is another process: only devices take the fix
        restored = {"-": "A's concurrent edit"}
    assert all("A's concurrent edit" in v.values() for v in got.values()), got
    assert "A's concurrent edit" in restored.values(), restored
    assert "A's concurrent edit" in fresh.values(), fresh



def test_JJ2_a_late_copy_open_in_an_office_program_is_pushed_as_bs(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """X, removed, rewrites paper.txt late; lagging B pulls it. B's user opens it (LibreOffice
    keeps .~lock.paper.txt# beside it). The removal shows and B pulls: the version that comes
    back is "remote changed" at a busy path, so it lands as a conflict copy and the index row
    becomes A's version (plan_pull's busy branch comes before its late-copy rule). B's user
    closes the file without saving; B's next push sees paper.txt differ from that row and
    uploads X's content as B's edit. Safe outcome: X's content reaches no other reader."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
    lock = b.folder / ".~lock.paper.txt#"
    lock.write_text("b,user,host,01.01.2026 10:00,file:///home/b/.config/libreoffice/4;")
    got = b.run("pull", "--json")
    print("B pull while open", got.exit_code, got.output[-400:])
    lock.unlink()  # closed, not saved
    print("B folder", _texts(b.folder))
    pushed = _push(b)
    print("B push late", pushed.get("late"), "uploaded", pushed.get("uploaded"))
    got_all = _pull_all([a, e])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    bad = [n for n, v in [*got_all.items(), ("script", restored)] if LATE in v.values()]
    assert not bad, (bad, got_all, restored)


def test_JJ_holds_bogus_late_snapshot_names_do_not_churn(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """II1/2e12245, checked: late snapshots are counted by name alone (cover.late_snapshots),
    so the provider can list a new junk object under a new late-snapshot name of B at every
    run. After the mend, does any device write a snapshot again? (Holds if it does not:
    uncovered is false once a member's snapshot covers the honest writes.)"""
    from test_trust_fresh_readers import _no_chance, _segments
    from test_trust_late_restore import b_taken_out
    _no_chance(monkeypatch)
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider, after_b=compact)
    for dev in (c, a, c):
        assert dev.run("pull").exit_code == 0
    before = _segments(local_remote)
    for n in range(3):
        provider.put(f"m/{b.rid}-{90 + n:012d}.s", os.urandom(200))
        for dev in (a, c):
            got = dev.run("pull")
            assert got.exit_code == 0, got.output
    after = [s for s in _segments(local_remote) if not s.startswith(b.rid)]
    print("before", before, "after", after)
    assert after == [s for s in before if not s.startswith(b.rid)]


def _deps_bound(real):  # type: ignore[no-untyped-def]
    """JJ1's smallest fix, tried: a late op's rm counts only for dots its own deps cover
    (what its writer had seen); the rest it cannot have replaced."""
    def replaced(state, listing, fetch, opener, log):  # type: ignore[no-untyped-def]
        def bounded(name, dev, seq, data):  # type: ignore[no-untyped-def]
            payload = opener(name, dev, seq, data)
            deps = dict(payload.get("deps") or {})
            for op in payload.get("ops") or ():
                op["rm"] = [d for d in op.get("rm") or ()
                            if d.partition(":")[0] == dev
                            or int(d.partition(":")[2]) <= deps.get(d.partition(":")[0], 0)]
            return payload
        return real(state, listing, fetch, bounded, log)
    return replaced


def test_JJ1_fix_tried(local_remote, provider, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from cloudguard import manifest as mf
    monkeypatch.setattr(mf, "replaced_by_unseen", _deps_bound(mf.replaced_by_unseen))
    test_JJ1_a_late_op_naming_an_honest_dot_it_never_saw_hides_it_on_fresh_readers(
        local_remote, provider, tmp_path, monkeypatch, fix_tried=True)
