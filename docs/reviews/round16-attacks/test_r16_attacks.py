"""Review round 16: throwaway attack runs against 010eb94 (R10 narrowed), ba9c76a, 1d13f48,
6f53591. test_EE<n> fails where finding EE<n> holds (the assert states the safe outcome);
test_holds_* pass.
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round16-attacks/<file>
(needs tests/trust and tests/format on sys.path; the conftest below adds them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_trust_attacks import Provider, compact, provider, script_restores  # noqa: F401
from test_trust_conflicts import LATE, _texts, x_removed

__all__ = ["provider"]


def _pull_all(devs):  # type: ignore[no-untyped-def]
    out = {}
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        out[dev.name] = _texts(dev.folder)
    return out


@pytest.mark.parametrize("how", ["chmod", "same-text"])
def test_EE4_an_honest_delete_of_a_file_x_touched_late_comes_back(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """X touches A's secret late (same content); lagging B's user deletes the secret."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        if how == "chmod":
            os.chmod(x.folder / "paper.txt", 0o600)
        else:
            x.write("paper.txt", "original")  # rewritten, same bytes
            os.utime(x.folder / "paper.txt", (1, 1))
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        (b.folder / "paper.txt").unlink()  # B's user deletes the secret
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    print(got)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all("paper.txt" not in t for t in got.values()), got  # expected: delete stands


@pytest.mark.parametrize("then", ["edit-edit", "edit-delete", "edit-rename"])
def test_EE5_late_edit_honest_edit_then_more(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """X edits late; lagging B's user writes over X's text (an honest edit), then edits
    again / deletes / renames its own edit."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        b.write("paper.txt", "B's own text")
        assert b.run("push").exit_code == 0
        if then == "edit-edit":
            b.write("paper.txt", "B's second text")
        elif then == "edit-delete":
            (b.folder / "paper.txt").unlink()
        else:
            os.rename(b.folder / "paper.txt", b.folder / "mine.txt")
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    print(got)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all("original" not in {t for p, t in v.items() if p != "doc.txt"}
               for v in got.values()), got


def test_EE6_x_touch_then_honest_rename_doubles_the_file(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X chmods A's file late (same blob and hash; X's push names A:2 as cs, which B
    believes); lagging B renames it. After the clamp: paper.txt back and renamed.txt too?"""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        os.chmod(x.folder / "paper.txt", 0o755)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    print(got)
    print("modes", {n: oct(os.stat(d.folder / "renamed.txt").st_mode)
                    for n, d in (("a", a), ("b", b), ("e", e))
                    if (d.folder / "renamed.txt").exists()})
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all(not ("paper.txt" in v and "renamed.txt" in v) for v in got.values()), got


@pytest.mark.parametrize("act", ["chmod", "rename"])
def test_EE3_touch_after_the_clamp_launders(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """Round 15's DD3 run at HEAD: B pulls X's late edit during the lag; its user chmods or
    renames the file offline; B's next push is its first load that sees the removal."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
    if act == "chmod":
        os.chmod(b.folder / "paper.txt", 0o600)
    else:
        os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
    got = b.run("push")
    print("push", got.exit_code, got.output)
    got = _pull_all([b, a, e, b])
    print(got)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all(LATE not in v.values() and v.get("paper.txt") == "original"
               for v in got.values()), got


@pytest.mark.parametrize("a_compacts", [False, True], ids=["a-delta", "a-snapshot"])
@pytest.mark.parametrize("b_compacts", [False, True], ids=["b-delta", "b-snapshot"])
def test_holds_honest_delete_twice_one_over_a_late_edit(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, a_compacts: bool, b_compacts: bool) -> None:
    """A deletes its own paper.txt after the removal; X edits it late; lagging B (not shown
    A's delete) deletes X's version. Both honest users deleted the file."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    (a.folder / "paper.txt").unlink()
    a.cg("push")
    if a_compacts:
        compact(a)
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        if b_compacts:
            compact(b)
    got = _pull_all([e, b, a, e, b])
    print(got)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all("paper.txt" not in v for v in got.values()), got
    assert "paper.txt" not in restored, restored


@pytest.mark.parametrize("second", ["delta", "snapshot"])
def test_EE5_order_edit_seen_then_delete_of_the_edit(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, second: str) -> None:
    """X edits late; lagging B edits over it and compacts; A and E read that (the honest
    edit stands). B, still lagging, then deletes its edit. Do devices and the script agree?"""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}) as by_b:
        assert b.run("pull").exit_code == 0
        b.write("paper.txt", "B's own text")
        assert b.run("push").exit_code == 0
        compact(b)
    first = _pull_all([a, e])
    print("after edit", first)
    with provider.showing({**before, **late, **by_b}):
        (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        if second == "snapshot":
            compact(b)
    got = _pull_all([a, e, b, a, e, b])
    print(got)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    views = [tuple(sorted(v.items())) for v in got.values()] + [tuple(sorted(restored.items()))]
    assert len(set(views)) == 1, (got, restored)


@pytest.mark.parametrize("hide", [True, False], ids=["hidden", "shown"])
def test_EE2_an_honest_snapshot_with_a_carry_in_a_suspect_stretch_is_refused(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, hide: bool) -> None:
    """6f53591 against rule 6: E writes f.txt and renames it (g.txt, cs = E's earlier dot).
    Lagging B, which also applied a late write of X, compacts. A reads E's writes only
    through B's (hearsay) snapshot (the provider hides E's deltas), so that stretch of E is
    suspect on A, and A's snapshot vector is lowered below it. A compacts."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("other.txt", LATE)
        x.cg("push")
    with provider.showing(before) as by_e:
        e.write("f.txt", "E's file")
        e.cg("push")
        os.rename(e.folder / "f.txt", e.folder / "g.txt")
        e.cg("push")
    e_deltas = [n for n in by_e if n.startswith(f"m/{e.rid}-") and n.endswith(".d")]
    with provider.showing({**before, **late, **by_e}):
        assert b.run("pull").exit_code == 0
        compact(b)
    with provider.hiding(*(e_deltas if hide else [])):
        got = a.run("pull")
        print("a pull", got.exit_code, got.output)
        compact(a)
        for dev in (b, e, a):
            got = dev.run("pull")
            print(dev.name, got.exit_code, got.output)
    codes = {}
    for dev in (b, e, a):
        got = dev.run("pull")
        codes[dev.name] = got.exit_code
        print(dev.name, got.exit_code, got.output)
    compact(a)  # A again, nothing hidden now
    for dev in (b, e):
        got = dev.run("pull")
        print("again", dev.name, got.exit_code, got.output)
    from test_trust_attacks import run_script
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, local_remote, tmp_path / "out")
    print("script", got.returncode, got.stderr[-300:])
    assert set(codes.values()) == {0}, codes


@pytest.mark.parametrize("b_compacts", [True, False], ids=["snapshot", "delta"])
def test_holds_revival_under_a_folder_the_honest_user_made(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, b_compacts: bool) -> None:
    """X edits paper.txt late; lagging B's user deletes it and makes a folder paper.txt with
    a file of B's in it. The narrowed R10 revives A's file at a path that is now a folder."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        (b.folder / "paper.txt").mkdir()
        b.write("paper.txt/notes.txt", "B's notes")
        assert b.run("push").exit_code == 0
        if b_compacts:
            compact(b)
    out = {}
    for dev in (b, a, e, b, a):
        got = dev.run("pull")
        out[dev.name] = (got.exit_code, _texts(dev.folder))
        print(dev.name, got.exit_code, got.output[-300:], _texts(dev.folder))
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert all(c == 0 and t.get("paper.txt/notes.txt") == "B's notes"
               for c, t in out.values()), out


def _fake_cs(monkeypatch: pytest.MonkeyPatch) -> None:
    """X's push names the dot it replaced as the source of its own (late) content."""
    from typing import Any

    from cloudguard import session as session_mod
    real = session_mod.Session.commit

    def commit(self: Any, ops: list[dict[str, Any]]) -> str:
        for op in ops:
            if op.get("e") is not None and op.get("rm"):
                op["e"]["cs"] = op["rm"][0]
        return real(self, ops)
    monkeypatch.setattr(session_mod.Session, "commit", commit)


@pytest.mark.parametrize("act", ["rename", "chmod", "delete"])
def test_EE1_dd1_rerun_fake_cs(local_remote: str, provider: Provider, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        with monkeypatch.context() as m:
            _fake_cs(m)
            x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        if act == "rename":
            os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
        elif act == "chmod":
            os.chmod(b.folder / "paper.txt", 0o600)
        else:
            (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print(got, "script", restored)
    for v in [*got.values(), restored]:
        assert v.get("paper.txt") == "original" and LATE not in v.values(), (got, restored)


@pytest.mark.parametrize("kind", ["link", "folder"])
def test_holds_dd2_rerun_kind_change_renamed(local_remote: str, provider: Provider, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        (x.folder / "paper.txt").unlink()
        if kind == "link":
            os.symlink("/ransom/pay-here", x.folder / "paper.txt")
        else:
            (x.folder / "paper.txt").mkdir()
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        os.rename(b.folder / "paper.txt", b.folder / "renamed")
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print(got, "script", restored)
    print({d.name: (os.readlink(d.folder / "renamed") if (d.folder / "renamed").is_symlink()
                    else (d.folder / "renamed").exists()) for d in (a, b, e)})
    for v in [*got.values(), restored]:
        assert v.get("paper.txt") == "original", (got, restored)
