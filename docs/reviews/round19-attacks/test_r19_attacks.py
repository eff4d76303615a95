"""Review round 19: throwaway attack runs against c9fc2b6/3dca382 (GG1: a late row's version
found by dot and content; GG2: restore drops a late row) and the two items earlier rounds
only read (pruning vs `_undoes`; the script vs devices that saw more).
test_HH<n> fails where finding HH<n> holds (the assert states the safe outcome);
test_HH3_run (prints the disagreement, asserts only the end state) and test_HH1_fix_tried[rename] pass.
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round19-attacks/<file>
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import json
import os

import pytest
from test_trust_attacks import (  # noqa: F401
    compact,
    provider,
    script_restores,
)
from test_trust_conflicts import LATE, _texts, x_removed

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


def _b_carried_late_with_another_path(x, b, provider, before, other):  # type: ignore[no-untyped-def]
    """X rewrites paper.txt late; lagging B pulls it and, still lagging, renames it to
    b.txt and (same push, same dot) writes ``other``: b.txt's version names X's dot as its
    source (cs), the other path's version is B's own honest write under the same dot."""
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        os.rename(b.folder / "paper.txt", b.folder / "b.txt")
        b.write(other, "B's own notes")
        pushed = _push(b)
        assert not pushed.get("late"), pushed


@pytest.mark.parametrize("second", ["chmod", "rename"])
def test_HH1_late_copy_moved_onto_a_path_its_dot_wrote(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, second):
    """Once the removal shows, B's user moves the late copy b.txt over notes.txt (written by
    the same lag push, so under the same dot). The push holds it as late and moves its row
    (notes.txt, B's lag dot, LATE). Then a chmod, or a second rename: `_late_row` looks the
    row's version up by path first, finds B's honest notes version (same dot, other
    content), and never asks the content. Safe outcome: X's late content reaches no device."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _b_carried_late_with_another_path(x, b, provider, before, "notes.txt")
    os.replace(b.folder / "b.txt", b.folder / "notes.txt")
    first = _push(b)
    assert first["late"] == ["notes.txt"], first
    if second == "chmod":
        os.chmod(b.folder / "notes.txt", 0o600)
    elif second == "rename":
        os.rename(b.folder / "notes.txt", b.folder / "final.txt")
    again = _push(b)
    got = _pull_all([a, e])  # B's own folder: HH2
    restored = _texts(script_restores(a, local_remote, tmp_path))
    bad = [name for name, v in [*got.items(), ("script", restored)] if LATE in v.values()]
    assert not bad, (bad, got, restored, again.get("late"), again.get("uploaded"))


def _late_row_by_content(s, row):  # type: ignore[no-untyped-def]
    """HH1's smallest fix, tried: the version found at the row's path counts only if it
    holds the row's content; else it is looked up by dot and content (as for a moved row)."""
    from cloudguard import manifest as mf
    from cloudguard.ops import common
    cuts = s.state.cuts
    if not cuts or not row.dot or row.kind not in ("f", "l"):
        return False
    tag = mf.resolutions.content_tag(
        {"t": row.kind, "h": row.sha256 if row.kind == "f" else None,
         "l": row.target if row.kind == "l" else None})
    entry = s.state.version(row.path, row.dot)
    if entry is None or mf.resolutions.content_tag(entry) != tag:
        entry = common._moved_version(s, row)
    return entry is not None and mf.resolutions.late_version(row.dot, entry, cuts)


@pytest.mark.parametrize("second", ["chmod", "rename"])
def test_HH1_fix_tried(local_remote, provider, tmp_path, monkeypatch, second):  # type: ignore[no-untyped-def]
    from cloudguard.ops import common
    monkeypatch.setattr(common, "_late_row", _late_row_by_content)
    test_HH1_late_copy_moved_onto_a_path_its_dot_wrote(local_remote, provider, tmp_path,
                                                       monkeypatch, second)


@pytest.mark.parametrize("fixed", [False, True], ids=["main", "HH1-fix"])
def test_HH2_late_copy_moved_over_its_own_dots_file_is_never_replaced(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, fixed):
    """HH1's control: the late copy is moved over notes.txt (same lag dot) and nothing more
    is done. The push holds it (late: notes.txt), but the pull then compares the row's dot
    with the live version's dot, finds them equal, and leaves X's content in B's folder at
    notes.txt for good, while every other device has B's notes there. Safe outcome: B's
    pull puts B's notes back (and status does not call B in sync meanwhile)."""
    from cloudguard.ops import common
    if fixed:
        monkeypatch.setattr(common, "_late_row", _late_row_by_content)
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _b_carried_late_with_another_path(x, b, provider, before, "notes.txt")
    os.replace(b.folder / "b.txt", b.folder / "notes.txt")
    assert _push(b)["late"] == ["notes.txt"]
    _pull_all([a, b, b])
    status = b.json("status")
    print("B status", {k: status.get(k) for k in ("late", "in_sync", "to_push", "to_pull")})
    assert (b.folder / "notes.txt").read_text() == "B's own notes", (
        _texts(b.folder), status.get("late"), status.get("in_sync"))


def _prune_all(dev):  # type: ignore[no-untyped-def]
    """The device's maintenance once keep_days have passed: every replaced honest version
    leaves its history (late content is kept, as prune_attic keeps it)."""
    import time

    from cloudguard import vault
    dev.use()
    with vault.session(str(dev.folder)) as s:
        n = s.state.prune_attic(int(time.time()) + 10, s.ring.view.cutoffs)
    print(dev.name, "pruned", n)


def test_HH3_run_pruning_before_a_backdated_removal(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """Part 2 (a), run: A's keep_days ran out (its history is pruned) before X's backdated
    removal of B; C kept everything. B's edits are late: C can revive what they replaced,
    A cannot. Do A, C and the script end on the same files (and which)?"""
    import test_trust_late_restore as tlr
    orig = tlr.backdated_removal
    devs = {}

    def pruned_first(p, view, parent, xs, xid, bid):  # type: ignore[no-untyped-def]
        _prune_all(devs["a"])
        return orig(p, view, parent, xs, xid, bid)

    real_make = tlr.make_vault

    def make(*args, **kw):  # type: ignore[no-untyped-def]
        made = real_make(*args, **kw)
        devs["a"] = made[0]
        return made
    monkeypatch.setattr(tlr, "make_vault", make)
    monkeypatch.setattr(tlr, "backdated_removal", pruned_first)
    a, b, _x, c = tlr.b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    rounds = [_pull_all([c, a]), _pull_all([c, a])]
    (tmp_path / "early").mkdir()
    early = _texts(script_restores(c, local_remote, tmp_path / "early"))
    print("script before any compaction", json.dumps(early, sort_keys=True))
    compact(c)
    compact(a)
    rounds.append(_pull_all([c, a, c]))
    restored = _texts(script_restores(c, local_remote, tmp_path))
    for i, r in enumerate(rounds):
        print("round", i, json.dumps(r, sort_keys=True))
    print("script", json.dumps(restored, sort_keys=True))
    for dev in (a, c):
        got = dev.run("history", "doc.txt", "--json")
        print(dev.name, "history doc.txt", got.exit_code, [
            (v.get("late"), v.get("current")) for v in json.loads(got.stdout).get("versions", [])]
            if got.exit_code == 0 else got.output[-200:])
    last = rounds[-1]
    assert last["a"] == last["c"] == restored, (rounds, restored)


def test_HH4_script_revives_a_replaced_version_devices_keep_out(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """Part 2 (b), run: X's backdated removal takes B out (no pruning anywhere). A's edit of
    shared.txt over B's (now late) edit stands on the devices, and A's first version does
    not come back. Safe outcome: the script restores what C's folder holds."""
    from test_trust_late_restore import b_taken_out
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    got = _pull_all([c, a, c])
    restored = _texts(script_restores(c, local_remote, tmp_path))
    print("C", json.dumps(got["c"], sort_keys=True))
    print("script", json.dumps(restored, sort_keys=True))
    assert restored == got["c"], (got, restored)
