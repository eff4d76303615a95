"""Review round 18: throwaway attack runs against 2fe0dfa (EE3 judged by provenance).
test_GG<n> fails where finding GG<n> holds (the assert states the safe outcome);
test_holds_* pass.
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round18-attacks/<file>
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


def _lagging_b_has_late(x, b, provider, before):  # type: ignore[no-untyped-def]
    """X rewrites paper.txt late; the provider shows it to lagging B only."""
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE


@pytest.mark.parametrize("second", ["chmod", "rename", "none"])
def test_GG1_a_moved_late_copy_is_late_again(local_remote, provider, tmp_path,  # type: ignore[no-untyped-def]
                                              monkeypatch, second):
    """B's user renames X's late file; B's push refuses it and moves its row
    (late_moves). Before any pull, the user touches or renames it again and pushes: the
    row now names X's dot at a path where X wrote nothing, so `_late` finds no version and
    calls it honest. Safe outcome: X's late content reaches no other device."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _lagging_b_has_late(x, b, provider, before)
    os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
    first = _push(b)
    assert first["late"] == ["renamed.txt"], first
    if second == "chmod":
        os.chmod(b.folder / "renamed.txt", 0o600)
    elif second == "rename":
        os.rename(b.folder / "renamed.txt", b.folder / "final.txt")
    again = _push(b)
    got = _pull_all([a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    bad = [name for name, v in [*got.items(), ("script", restored)] if LATE in v.values()]
    assert not bad, (bad, got, again.get("late"), again.get("uploaded"))


def test_GG1_chmod_then_pull_forgets_the_row(local_remote, provider, tmp_path,  # type: ignore[no-untyped-def]
                                             monkeypatch):
    """As GG1, but the user's touch comes before a pull: the pull finds the moved row
    neither synced nor late, forgets it, and the next push sends X's content as B's."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _lagging_b_has_late(x, b, provider, before)
    os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
    assert _push(b)["late"] == ["renamed.txt"]
    os.chmod(b.folder / "renamed.txt", 0o600)
    assert b.run("pull").exit_code == 0
    again = _push(b)
    got = _pull_all([a, e, b])
    for name, v in got.items():
        assert LATE not in v.values(), (name, v, again.get("uploaded"))


def test_holds_restore_late_of_brings_back_an_honest_rename_of_the_members_file(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """X's backdated removal takes honest B out. A had renamed B's notes.txt before: A's
    carry names B's dot, so it is late too and rolls back; B's notes.txt was replaced by A's
    honest rename, so `restore --late-of b` skips it. Safe outcome: B's notes come back
    somewhere on A."""
    import test_trust_late_restore as tlr
    from test_trust_late_restore import b_taken_out
    orig = tlr.backdated_removal
    a_ref = {}

    def renamed_first(p, view, parent, xs, xid, bid):  # type: ignore[no-untyped-def]
        a = a_ref["a"]
        a.cg("pull")
        os.rename(a.folder / "notes.txt", a.folder / "notes-final.txt")
        assert a.run("push").exit_code == 0
        return orig(p, view, parent, xs, xid, bid)

    real_make = tlr.make_vault

    def make(*args, **kw):  # type: ignore[no-untyped-def]
        devs = real_make(*args, **kw)
        a_ref["a"] = devs[0]
        return devs
    monkeypatch.setattr(tlr, "make_vault", make)
    monkeypatch.setattr(tlr, "backdated_removal", renamed_first)
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    after_pull = _texts(a.folder)
    result = a.json("restore", "--late-of", "b")
    print("restore", result)
    texts = _texts(a.folder)
    print("GG2", after_pull, texts)
    assert "B's own notes" in texts.values(), (after_pull, texts, result.get("replaced_since"))


def test_holds_late_copy_moved_over_an_honest_file(local_remote, provider, tmp_path,  # type: ignore[no-untyped-def]
                                                  monkeypatch):
    """B's user moves X's late paper.txt over doc.txt: doc.txt is not pushed (its row now
    names X's dot) and the pull puts A's doc.txt and paper.txt back everywhere."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _lagging_b_has_late(x, b, provider, before)
    os.replace(b.folder / "paper.txt", b.folder / "doc.txt")
    got = _push(b)
    assert got["late"] == ["doc.txt"], got
    out = _pull_all([b, a, e])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for name, v in [*out.items(), ("script", restored)]:
        assert v == {"doc.txt": "original", "paper.txt": "original"}, (name, v)


def test_holds_an_edit_of_a_late_copy_against_a_concurrent_edit(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """B's row names X's late version; B's user edits it (other content) while A edits
    paper.txt too. B's pull keeps B's edit (a clash, not 'untouched')."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _lagging_b_has_late(x, b, provider, before)
    b.write("paper.txt", "B's own edit over X's")
    a.write("paper.txt", "A's concurrent edit")
    _push(a)
    assert b.run("pull").exit_code == 0
    assert "B's own edit over X's" in _texts(b.folder).values(), _texts(b.folder)


@pytest.mark.parametrize("force", [False, True])
def test_GG2_push_advice_restore_late_of_before_a_pull(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, force):
    """X's backdated removal takes honest B out. C holds B's notes.txt (row: B's dot) and
    its user chmods it; C's push refuses it as late and says `restore --late-of` brings it
    back as C's own. The user does as told, before any pull, and pushes again. Safe
    outcome: B's notes reach A as C's."""
    from test_trust_late_restore import b_taken_out
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    os.chmod(c.folder / "notes.txt", 0o600)
    first = _push(c)
    assert "notes.txt" in first["late"], first
    args = ["restore", "--late-of", "b", "--json"] + (["--force"] if force else [])
    got = c.run(*args)
    print("restore", got.exit_code, got.output[-800:])
    again = _push(c)
    assert a.run("pull").exit_code == 0
    print("again", json.dumps(again)[:700])
    assert c.run("pull").exit_code == 0
    print("C after pull", _texts(c.folder))
    assert (a.folder / "notes.txt").exists(), (again.get("late"), _texts(c.folder))


def _late_by_dot(s, hasher):  # type: ignore[no-untyped-def]
    """GG1's smallest fix, tried: a row whose version is not at its path (a moved late copy)
    is looked up by its dot and content."""
    from cloudguard import manifest as mf
    cuts = s.state.cuts

    def late(item, row):  # type: ignore[no-untyped-def]
        if not cuts or not row.dot or item.kind != row.kind or item.kind not in ("f", "l"):
            return False
        entry = s.state.version(row.path, row.dot)
        if entry is None:
            for (raw,) in s.state.db.execute(
                    "SELECT e FROM entries WHERE dot = ? UNION ALL "
                    "SELECT e FROM attic WHERE dot = ?", (row.dot, row.dot)):
                e = json.loads(raw)
                if e.get("t") == row.kind and (e.get("h") == row.sha256 if row.kind == "f"
                                               else e.get("l") == row.target):
                    entry = e
                    break
        if entry is None or not mf.resolutions.late_version(row.dot, entry, cuts):
            return False
        if item.kind == "l":
            return item.target == row.target
        return item.size == row.size and hasher(item.path) == row.sha256
    return late


@pytest.mark.parametrize("second", ["chmod", "rename"])
def test_GG1_fix_tried(local_remote, provider, tmp_path, monkeypatch, second):  # type: ignore[no-untyped-def]
    """GG1's runs with `_late` looking a moved row's version up by dot: they pass."""
    import cloudguard.ops.pull as pull_mod
    import cloudguard.ops.push as push_mod
    monkeypatch.setattr(push_mod, "_late", _late_by_dot)
    monkeypatch.setattr(pull_mod, "_late", _late_by_dot)
    test_GG1_a_moved_late_copy_is_late_again(local_remote, provider, tmp_path,
                                             monkeypatch, second)


def test_GG1_fix_tried_pull(local_remote, provider, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    import cloudguard.ops.pull as pull_mod
    import cloudguard.ops.push as push_mod
    monkeypatch.setattr(push_mod, "_late", _late_by_dot)
    monkeypatch.setattr(pull_mod, "_late", _late_by_dot)
    test_GG1_chmod_then_pull_forgets_the_row(local_remote, provider, tmp_path, monkeypatch)


def test_GG1_link(local_remote, provider, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """GG1 for a link: X's late link, renamed twice by lagging B's user (a push between)."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        os.symlink("../x-target", x.folder / "x-link")
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
    assert (b.folder / "x-link").is_symlink()
    os.rename(b.folder / "x-link", b.folder / "link2")
    first = _push(b)
    assert first["late"] == ["link2"], first
    os.rename(b.folder / "link2", b.folder / "link3")
    again = _push(b)
    _pull_all([a, e])
    links = [p.name for p in a.folder.iterdir() if p.is_symlink()]
    assert not links, (links, again.get("late"))
