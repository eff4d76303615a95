"""Review round 12, AA2: a conflict an honest device resolved while it had not seen a removal
(a lag), between an honest version and a removed member's late one. The resolution is an
honest dot: without more, it would keep the late content live on every device for good (as a
conflict copy, or at the path itself with a forged Lamport time), where every other late write
goes to the history once the removal shows.

Played like tests/trust/test_trust_attacks.py: every device has its own CLOUDGUARD_HOME, and the
test is the provider, showing a device an older remote and handing on what it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import (
    Dev,
    Provider,
    compact,
    make_vault,
    provider,  # noqa: F401 (a fixture)
    script_restores,
)

from cloudguard import session as session_mod

__all__ = ["provider"]

LATE = "rewritten by the removed device"


def _texts(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*")
            if p.is_file() and ".cloudguard" not in p.parts}


def lamport_forger(monkeypatch: pytest.MonkeyPatch, lc: int) -> None:
    """X signs the Lamport time it likes: a low one loses the conflict (its content becomes
    the copy), a high one wins it (the honest version is moved aside)."""
    real = session_mod.Session.commit

    def commit(self: Any, ops: list[dict[str, Any]]) -> str:
        for op in ops:
            if op.get("e") is not None:
                op["e"]["lc"] = lc
        return real(self, ops)
    monkeypatch.setattr(session_mod.Session, "commit", commit)


def a_conflict_resolved_during_the_lag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       remote: str, provider: Provider, lc: int,
                                       compacts: bool = True) -> list[Dev]:
    """A edits paper.txt, then removes X. X, shown the remote from before A's edit, edits it
    late (its version and A's both replace the first: a conflict). B, kept from seeing the
    removal, pulls both, resolves the conflict, pushes and (``compacts``) compacts."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "c", "x")
    a.write("paper.txt", "original")
    a.cg("push")
    for dev in (b, c, x):
        dev.cg("pull")
    before = provider.objects()
    a.write("paper.txt", "A's edit")
    a.cg("push")
    edited = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        with monkeypatch.context() as m:
            lamport_forger(m, lc)
            x.cg("push")
    with provider.showing({**edited, **late}) as by_b:
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert LATE in _texts(b.folder).values()  # B's user sees X's write: the lag
        assert b.run("push").exit_code == 0
        if compacts:
            compact(b)
    kind = ".s" if compacts else ".d"
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(kind) for n in by_b)
    return [a, b, c]


@pytest.mark.parametrize("compacts", [True, False], ids=["snapshot", "delta"])
@pytest.mark.parametrize("lc", [1, 10**9], ids=["late-loses", "late-wins"])
def test_a_conflict_resolved_during_a_lag_does_not_keep_the_late_content_live(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, lc: int, compacts: bool) -> None:
    """Once the removal shows, the resolution is undone like the late write it resolved:
    paper.txt holds A's edit on every device, under its name, and no file anywhere holds X's
    content (it stays in the history, as every late write does). A and C never held X's
    write: they read the resolution from B's snapshot, or apply B's delta."""
    a, b, c = a_conflict_resolved_during_the_lag(monkeypatch, tmp_path, local_remote,
                                                 provider, lc, compacts)
    for dev in (b, a, c, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        texts = _texts(dev.folder)
        assert texts.get("paper.txt") == "A's edit", (dev.name, texts)
        assert LATE not in texts.values(), (dev.name, texts)
    for dev in (a, b, c):
        assert dev.json("verify")["ok"], dev.name
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert restored.get("paper.txt") == "A's edit" and LATE not in restored.values(), restored


D, E, F, B, X = ("d" * 16, "e" * 16, "f" * 16, "b" * 16, "c" * 16)


def _file(text: str, **more: object) -> dict[str, Any]:
    return {"t": "f", "h": text, **more}


def test_a_resolution_names_the_first_dot_of_the_content_it_carries() -> None:
    """A resolution of a resolution must still name the late write whose content it carries,
    or resolving the conflict twice would launder it (AA2); content it had not seen it cannot
    name (round 13, BB3)."""
    from cloudguard.manifest import resolutions

    assert resolutions.source(f"{D}:50", _file("d")) == f"{D}:50"
    assert resolutions.source(f"{B}:3", _file("x", cs=f"{X}:12")) == f"{X}:12"
    assert resolutions.poisoned(_file("x", cs=f"{X}:12"), {X: 11})
    assert not resolutions.poisoned(_file("x", cs=f"{X}:12"), {X: 12})
    assert not resolutions.poisoned(_file("x", cs=f"{X}:12"), {})
    assert not resolutions.poisoned(_file("d"), {X: 11})
    assert resolutions.saw(_file("x", cs=f"{X}:12"), B, 3, {X: 12})
    assert not resolutions.saw(_file("x", cs=f"{X}:12"), B, 3, {X: 11})
    assert not resolutions.saw(_file("x", cs=f"{B}:3"), B, 3, {})  # its own later push
    assert resolutions.saw(_file("x", cs=f"{B}:2"), B, 3, {})
    from cloudguard.errors import IntegrityError
    from cloudguard.manifest.segments import check_entry

    check_entry({"t": "d", "sg": "AAAA", "cs": f"{B}:2"})
    with pytest.raises(IntegrityError, match="malformed"):  # one dot, never a list
        check_entry({"t": "d", "sg": "AAAA", "cs": f"{B}:2,{B}:1"})


def test_the_clamp_undoes_a_resolution_of_a_resolution_of_a_late_write() -> None:
    """D:50 and X:12 (late) conflicted; B:3 resolved it (X's content won); F:5 then resolved
    B:3 against E's honest edit E:61, keeping X's content again. At the clamp both resolutions
    go to the history, and the honest versions they replaced, D:50 and E:61, come back (a
    conflict, resolved again)."""
    from cloudguard.manifest.clamp import Limits, clamp_snapshot

    p = "paper.txt"
    b3 = f5 = _file("x", cs=f"{X}:12")
    kept = {p: {f"{D}:50": {"e": _file("d"), "g": 1, "rb": [f"{B}:3"]},
                f"{X}:12": {"e": _file("x"), "g": 1, "rb": [f"{B}:3"]},
                f"{B}:3": {"e": b3, "g": 2, "rb": [f"{F}:5"]},
                f"{E}:61": {"e": _file("e"), "g": 2, "rb": [f"{F}:5"]}}}
    live, history, _rc = clamp_snapshot({p: {f"{F}:5": f5}}, kept, {}, 3,
                                        Limits(cuts={X: 11}))
    assert sorted(live[p]) == [f"{D}:50", f"{E}:61"]
    assert {f"{B}:3", f"{F}:5", f"{X}:12"} <= set(history[p])
    # with no removal, nothing moves
    live, history, _rc = clamp_snapshot({p: {f"{F}:5": f5}}, kept, {}, 3, Limits(cuts={X: 12}))
    assert sorted(live[p]) == [f"{F}:5"]


def test_a_resolution_that_kept_honest_content_stays_whoever_else_took_part() -> None:
    """Round 13, BB1: M and D conflicted long ago; E:60 kept D's content at the path and E:61
    is M's copy. A removed member's backdated removal of M (cutoff 0) makes M's dots late:
    M's content leaves the live state (kept in the history), D's content stays where it is,
    and nothing of either is forgotten."""
    from cloudguard.manifest.clamp import Limits, clamp_snapshot

    M = "a" * 16
    live, history, _rc = clamp_snapshot(
        {"p": {f"{E}:60": _file("d", cs=f"{D}:50")},
         "p (conflict m)": {f"{E}:61": _file("m", cs=f"{M}:40")}}, {}, {}, 3,
        Limits(cuts={M: 0}))
    assert live["p"] == {f"{E}:60": _file("d", cs=f"{D}:50")}
    assert not live.get("p (conflict m)") and f"{E}:61" in history["p (conflict m)"]


def test_a_resolution_an_honest_edit_replaced_since_stays_replaced() -> None:
    """E edited what B's resolution left at the path (E:61 replaces B:3): E's content stays,
    and D:50, written over through B:3, does not come back beside it."""
    from cloudguard.manifest.clamp import Limits, clamp_snapshot

    p = "paper.txt"
    kept = {p: {f"{D}:50": {"e": _file("d"), "g": 1, "rb": [f"{B}:3"]},
                f"{B}:3": {"e": _file("x", cs=f"{X}:12"), "g": 2,
                           "rb": [f"{E}:61"]}}}
    live, _history, _rc = clamp_snapshot({p: {f"{E}:61": _file("e")}}, kept, {}, 3,
                                         Limits(cuts={X: 11}))
    assert sorted(live[p]) == [f"{E}:61"]


def x_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
              provider: Provider, text: str = "original") -> tuple[list[Dev], dict[str, bytes]]:
    """A, B, E and X hold A's paper.txt (``text``); A removes X. Returns them and the remote
    from before the removal (what X and a lagging device are shown)."""
    a, b, e, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "e", "x")
    a.write("paper.txt", text)
    a.cg("push")
    for dev in (b, e, x):
        dev.cg("pull")
    before = provider.objects()
    a.cg("device", "remove", x.rid)
    return [a, b, e, x], before


@pytest.mark.parametrize("compacts", [True, False], ids=["snapshot", "delta"])
def test_a_late_delete_learned_first_does_not_bring_back_an_honestly_deleted_version(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, compacts: bool) -> None:
    """Review round 12, AA3 (b): X, removed, deletes paper.txt late, and lagging B learns of
    that first. E, honest, had deleted paper.txt too and then written a new one (and
    compacted, or not). Once the removal shows, the late delete is undone on B, which would
    bring the old version back beside E's new one. E's snapshot covers the old version without
    holding it (an honest delete), so the same load drops it again before any conflict is
    resolved; without a snapshot, B read E's delete in E's own delta, which it records (`rw`)
    and which keeps the version from coming back. No device gets a conflict copy of the
    deleted file."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        (x.folder / "paper.txt").unlink()
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert not (b.folder / "paper.txt").exists()
    with provider.showing(before) as by_e:
        (e.folder / "paper.txt").unlink()
        e.cg("push")
        e.write("paper.txt", "E's new paper")
        e.cg("push")
        if compacts:
            compact(e)
    with provider.showing({**before, **late, **by_e}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == "E's new paper"
    for dev in (b, a, e, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        texts = _texts(dev.folder)
        assert texts.get("paper.txt") == "E's new paper", (dev.name, texts)
        assert "original" not in {t for p, t in texts.items() if p.startswith("paper")}, (
            dev.name, texts)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert restored.get("paper.txt") == "E's new paper" and "original" not in {
        t for p, t in restored.items() if p.startswith("paper")}, restored


def test_an_honest_edit_racing_a_late_edit_keeps_the_old_version_out(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """AA1's cost, where the device read the honest edit itself: X, removed, edits paper.txt
    late and lagging B learns of it first; E, honest, edits paper.txt too, never having seen
    X's edit. B sees a conflict and resolves it during the lag. Once the removal shows, X's
    edit and B's resolution are undone; E's edit stays at paper.txt, and the original, which
    B read E's own delta replace, does not come back beside it."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
    with provider.showing(before) as by_e:
        e.write("paper.txt", "E's edit")
        e.cg("push")
    with provider.showing({**before, **late, **by_e}):
        assert b.run("pull").exit_code == 0
        assert LATE in _texts(b.folder).values() and "E's edit" in _texts(b.folder).values()
    for dev in (b, a, e, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        texts = _texts(dev.folder)
        assert texts.get("paper.txt") == "E's edit", (dev.name, texts)
        assert {t for p, t in texts.items() if p.startswith("paper")} == {"E's edit"}, (
            dev.name, texts)


def test_a_delta_whose_resolution_names_content_it_had_not_seen_is_refused() -> None:
    """Round 13, BB3: a ``cs`` the delta's ``deps`` do not cover (a device made up now and
    void-added later would turn the version late at will) is an integrity failure naming
    the segment."""
    from cloudguard.errors import IntegrityError
    from cloudguard.manifest.segments import _check_segment

    def delta(deps: dict[str, int], cs: str) -> dict[str, Any]:
        return {"kind": "delta", "device": B, "seq": 3, "deps": deps, "prev": None, "dh": {},
                "created": "2026-12-04T10:00:00Z",
                "ops": [{"p": "p", "e": {"t": "d", "sg": "AAAA", "cs": cs}, "rm": []}]}

    _check_segment("m/d", delta({X: 12}, f"{X}:12"))
    _check_segment("m/d", delta({}, f"{B}:2"))
    for deps, cs in (({X: 11}, f"{X}:12"), ({}, f"{B}:3"), ({X: 12}, f"{F}:1")):
        with pytest.raises(IntegrityError, match="m/d: a resolution carries content"):
            _check_segment("m/d", delta(deps, cs))


@pytest.mark.parametrize("act", ["rename", "chmod"])
def test_a_late_edit_renamed_or_touched_during_the_lag_is_undone_not_kept(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """Review round 14, CC2: X, removed, edits A's paper.txt late; lagging B renames the file
    (or changes its mode) and pushes. The renamed or touched version carries X's content
    under B's honest dot. Once the removal shows it goes to the history like X's own, and B's
    rename is no honest delete of X's version: A's paper.txt comes back on every device, and
    X's content is live nowhere."""
    import os

    (a, b, _e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        if act == "rename":
            os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
        else:
            os.chmod(b.folder / "paper.txt", 0o600)
        got = b.run("push")
        assert got.exit_code == 0, got.output
        compact(b)
    for dev in (b, a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        texts = _texts(dev.folder)
        assert texts.get("paper.txt") == "original", (dev.name, texts)
        assert LATE not in texts.values(), (dev.name, texts)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert restored.get("paper.txt") == "original" and LATE not in restored.values(), restored


@pytest.mark.parametrize("kind,act", [("link", "rename"), ("folder", "chmod"),
                                      ("folder", "rename")])
def test_a_late_link_or_folder_kept_during_the_lag_gives_back_what_it_replaced(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, kind: str, act: str) -> None:
    """Review round 15, DD2, and what the fix left: X replaces A's paper.txt late with a link
    (its target X's choice) or a folder; lagging B renames it, or changes the folder's mode in
    place. A chmod is no edit (the content is X's), so it stands no more than a delete: A's
    file comes back on every device and in the script. A moved link names its source (cs), so
    X's target leaves with X's version."""
    import os

    (a, b, _e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        (x.folder / "paper.txt").unlink()
        if kind == "link":
            os.symlink("pay-here.txt", x.folder / "paper.txt")
        else:
            (x.folder / "paper.txt").mkdir()
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").is_symlink() == (kind == "link")
        if act == "rename":
            os.rename(b.folder / "paper.txt", b.folder / "renamed")
        else:
            os.chmod(b.folder / "paper.txt", 0o700)
        got = b.run("push")
        assert got.exit_code == 0, got.output
        compact(b)
    for dev in (b, a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        paper = dev.folder / "paper.txt"
        assert paper.is_file() and not paper.is_symlink(), (dev.name, list(dev.folder.iterdir()))
        assert paper.read_text() == "original", dev.name
        links = [p for p in dev.folder.rglob("*") if p.is_symlink()]
        assert not links, (dev.name, links)  # X's target lives nowhere
    restored = script_restores(a, local_remote, tmp_path)
    assert (restored / "paper.txt").read_text() == "original"
    assert not [p for p in restored.rglob("*") if p.is_symlink()]


def test_a_touch_of_a_late_copy_of_honest_content_does_not_cost_the_file_it_replaced(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 15, DD1, where the fix left it: X's late paper.txt holds the bytes of A's q.txt
    and names q.txt's dot as its source, which every device believes (it holds that version
    with the same content). Lagging B's chmod carries that honest ``cs``, so the touched
    version is not late. It stands no more than a delete: A's paper.txt comes back (here as
    a conflict beside the copy), on every device and in the script."""
    import os

    from cloudguard import vault

    a, b, e, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "e", "x")
    a.write("paper.txt", "original")
    a.write("q.txt", "A's other file")
    a.cg("push")
    for dev in (b, e, x):
        dev.cg("pull")
    x.use()
    with vault.session(str(x.folder)) as s:
        (q_dot, _q), = s.state.siblings("q.txt").items()
    before = provider.objects()
    a.cg("device", "remove", x.rid)
    real = session_mod.Session.commit

    def commit(self: Any, ops: list[dict[str, Any]]) -> str:
        for op in ops:
            if op["p"] == "paper.txt" and op.get("e") is not None:
                op["e"]["cs"] = q_dot  # X names an honest source for its late content
        return real(self, ops)

    with provider.showing(before) as late:
        x.write("paper.txt", "A's other file")
        with monkeypatch.context() as m:
            m.setattr(session_mod.Session, "commit", commit)
            x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        os.chmod(b.folder / "paper.txt", 0o600)
        got = b.run("push")
        assert got.exit_code == 0, got.output
        compact(b)
    # the script first, from B's snapshot alone (the devices' pulls below resolve the
    # conflict and push it, which the script would then only follow)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert "original" in {t for p, t in restored.items() if p.startswith("paper")}, restored
    for dev in (b, a, e, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        texts = _texts(dev.folder)
        assert "original" in {t for p, t in texts.items() if p.startswith("paper")}, (
            dev.name, texts)


def test_a_touch_of_late_content_is_no_edit_of_it() -> None:
    """Round 15, DD1 at the clamp: X's late version names an honest source and holds the same
    content as it (a copy of A's other file), so B's touch of it carries an honest ``cs``.
    The touch changed no content: it stands no more than a delete, and A:2 comes back beside
    it (a conflict, no loss). An honest edit (new content) of the late version still stands."""
    from cloudguard.manifest.clamp import late_removal
    from cloudguard.manifest.resolutions import content_tag

    a2, b7, x12 = content_tag(_file("A's")), f"{B}:7", f"{X}:12"
    gone = {x12: {"e": _file("copy of q", cs="a" * 16 + ":5"), "g": 1, "rb": [b7]}}
    assert late_removal([x12], {b7: _file("copy of q", cs="a" * 16 + ":5")}, gone, {X: 11},
                        {}, set(), a2)
    assert not late_removal([x12], {b7: _file("B's edit")}, gone, {X: 11}, {}, set(), a2)


def test_a_rename_that_took_a_late_copy_of_the_same_content_for_its_source_is_undone() -> None:
    """X's late version X:12 points at A's blob with A's hash (identical siblings at P); B's
    rename to Q carries it and names X:12 as the source. At the clamp the renamed version is
    late, and the rename, which removed A:3 too, is undone for it: A:3 comes back at P."""
    from cloudguard.manifest.clamp import Limits, clamp_snapshot

    a3 = "a" * 16 + ":3"
    kept = {"p": {a3: {"e": _file("same"), "g": 1, "rb": [f"{B}:7"]},
                  f"{X}:12": {"e": _file("same"), "g": 1, "rb": [f"{B}:7"]}}}
    live, history, _rc = clamp_snapshot({"q": {f"{B}:7": _file("same", cs=f"{X}:12")}}, kept,
                                        {}, 3, Limits(cuts={X: 11}))
    assert sorted(live["p"]) == [a3]
    assert not live.get("q") and f"{B}:7" in history["q"]


def test_a_carried_source_is_believed_only_where_its_content_is_held() -> None:
    """Review round 15, DD1: X's late version names A:2 as its source while carrying other
    content. A device carrying it (a rename, a resolution) names X's dot instead, so the
    carried version is late once the removal shows; a source held with the same content
    is inherited."""
    from cloudguard.manifest import State, resolutions

    state = State()
    a2 = "a" * 16 + ":2"
    state.put_entry("p", a2, _file("honest"))
    assert resolutions.source(f"{X}:12", _file("late", cs=a2), state) == f"{X}:12"
    assert resolutions.source(f"{B}:7", _file("honest", cs=a2), state) == a2
    assert resolutions.source(f"{B}:7", _file("honest", cs=f"{E}:9"), state) == f"{B}:7"
