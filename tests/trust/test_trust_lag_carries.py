"""Review round 16: what a lagging honest device's carries, edits and deletes of a removed
member's late write do once the removal shows. Each test is one of the reviewer's runs
(docs/reviews/trust-round-16.md, EE1-EE6), with the devices, the provider and the recovery
script: every device and the script must agree, and no honest file may be lost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import Dev, Provider, compact, provider, run_script, script_restores
from test_trust_conflicts import LATE, _texts, x_removed

from cloudguard import session as session_mod

__all__ = ["provider"]


def _pull_all(devs: list[Dev]) -> dict[str, dict[str, str]]:
    out = {}
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        out[dev.name] = _texts(dev.folder)
    return out


def _fake_cs(monkeypatch: pytest.MonkeyPatch) -> None:
    """X's push names the dot it replaced as the source of its own (late) content."""
    real = session_mod.Session.commit

    def commit(self: Any, ops: list[dict[str, Any]]) -> str:
        for op in ops:
            if op.get("e") is not None and op.get("rm"):
                op["e"]["cs"] = op["rm"][0]
        return real(self, ops)
    monkeypatch.setattr(session_mod.Session, "commit", commit)


@pytest.mark.parametrize("act", ["rename", "chmod", "delete"])
def test_a_carry_of_a_late_version_never_keeps_the_source_the_removed_member_named(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """EE1: X's late edit names A's replaced version as its source (``cs``); lagging B
    renames, chmods or deletes it. A carry names the source itself (believed only where held
    with the same content), so X's content is live nowhere and A's file is back."""
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
    for v in [*got.values(), restored]:
        assert v.get("paper.txt") == "original" and LATE not in v.values(), (got, restored)


@pytest.mark.parametrize("hide", [True, False], ids=["hidden", "shown"])
def test_an_honest_snapshot_holding_a_carry_in_a_suspect_stretch_is_read_everywhere(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, hide: bool) -> None:
    """EE2: E renames its own file (g.txt names E's earlier dot). A reads E's writes only
    through lagging B's hearsay snapshot, so A's snapshot vector is lowered below that
    stretch of E (rule 6), while it holds g.txt live. Every device and the script read A's
    snapshot (a check of the snapshot's cs against its vector refused it for good)."""
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
        assert a.run("pull").exit_code == 0
        compact(a)
        for dev in (b, e):
            got = dev.run("pull")
            assert got.exit_code == 0, f"{dev.name}: {got.output}"
    got = _pull_all([b, e, a])
    compact(a)
    got = _pull_all([b, e])
    assert all(v.get("g.txt") == "E's file" and LATE not in v.values() for v in got.values())
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    done = run_script(kit, local_remote, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "g.txt").read_text() == "E's file"


@pytest.mark.parametrize("how", ["chmod", "same-text"])
def test_an_honest_delete_of_a_file_the_removed_member_only_touched_stands(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """EE4: X touches A's file late (same content); lagging B's user deletes it on purpose.
    The late version held the very content deleted: the delete stands everywhere."""
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
        (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        compact(b)
    got = _pull_all([b, a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert all("paper.txt" not in v for v in [*got.values(), restored]), (got, restored)


@pytest.mark.parametrize("then", ["edit-edit", "edit-delete", "edit-rename"])
def test_an_honest_edit_of_a_late_version_and_what_follows_it_stand(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """EE5: lagging B's user writes over X's late text, then edits, deletes or renames its own
    text. Its edit stands, and so does what follows: A's old version does not come back."""
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
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for v in [*got.values(), restored]:
        assert "original" not in {t for p, t in v.items() if p != "doc.txt"}, (got, restored)
        assert LATE not in v.values(), (got, restored)


@pytest.mark.parametrize("second", ["delta", "snapshot"])
def test_an_edit_then_its_delete_give_one_result_whatever_the_order_of_delivery(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, second: str) -> None:
    """EE5, order: A and E read B's edit of X's late version before B deletes its edit. They
    end where devices that read both at once end, and the script with them."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}) as by_b:
        assert b.run("pull").exit_code == 0
        b.write("paper.txt", "B's own text")
        assert b.run("push").exit_code == 0
        compact(b)
    _pull_all([a, e])
    with provider.showing({**before, **late, **by_b}):
        (b.folder / "paper.txt").unlink()
        assert b.run("push").exit_code == 0
        if second == "snapshot":
            compact(b)
    got = _pull_all([a, e, b, a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    views = {tuple(sorted(v.items())) for v in [*got.values(), restored]}
    assert len(views) == 1, (got, restored)
    assert "paper.txt" not in restored, restored


def test_a_late_touch_then_an_honest_rename_does_not_double_the_file(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EE6: X chmods A's file late (its push names A's dot, truly: same content); lagging B
    renames it. The rename moved A's content: it is not back at paper.txt beside it."""
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
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for v in [*got.values(), restored]:
        assert "original" in v.values() and not ("paper.txt" in v and "renamed.txt" in v), (
            got, restored)


@pytest.mark.parametrize("a_compacts", [False, True], ids=["a-delta", "a-snapshot"])
@pytest.mark.parametrize("b_compacts", [False, True], ids=["b-delta", "b-snapshot"])
def test_two_honest_deletes_one_of_them_over_a_late_edit_stay_deleted(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, a_compacts: bool, b_compacts: bool) -> None:
    """A deletes its paper.txt after the removal; X edits it late; lagging B deletes X's
    version. Both honest users deleted the file: it stays deleted."""
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
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert all("paper.txt" not in v for v in [*got.values(), restored]), (got, restored)


@pytest.mark.parametrize("b_compacts", [True, False], ids=["snapshot", "delta"])
def test_a_revival_where_the_honest_user_made_a_folder_keeps_both(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, b_compacts: bool) -> None:
    """X edits paper.txt late; lagging B's user deletes it and makes a folder paper.txt with
    a file in it. A's file comes back beside it as a conflict copy; B's notes stay."""
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
    got = _pull_all([b, a, e, b, a])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for v in [*got.values(), restored]:
        assert v.get("paper.txt/notes.txt") == "B's notes", (got, restored)
        assert "original" in {t for p, t in v.items() if p.startswith("paper")}, (got, restored)


@pytest.mark.parametrize("act", ["chmod", "rename"])
def test_a_late_file_touched_or_renamed_offline_is_not_pushed_as_this_devices(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """EE3: lagging B pulls X's late edit; offline, its user chmods or renames the file; B's
    next push is the first load that shows the removal. The file holds only X's late
    content: it is not pushed (as a carry it would have no source left to name, as new
    content it would be X's write under B's dot), B is told so, and the pull gives A's
    version back and removes a renamed copy (X's write stays in the history)."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
    kept = "renamed.txt" if act == "rename" else "paper.txt"
    if act == "chmod":
        os.chmod(b.folder / "paper.txt", 0o600)
    else:
        os.rename(b.folder / "paper.txt", b.folder / "renamed.txt")
    got = b.run("push")
    assert got.exit_code == 0, got.output
    assert f"{kept}: holds what a removed member wrote after its removal" in got.output
    if act == "rename":  # again: the copy's row followed it, so it is still not sent
        again = b.json("push")
        assert not again["uploaded"] and not again["updated"], again
    got = _pull_all([b, a, e, b])
    assert "holds what a removed member" not in b.run("push").output
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for name, v in [*got.items(), ("script", restored)]:
        assert v.get("paper.txt") == "original" and LATE not in v.values(), (name, v)


@pytest.mark.parametrize("second", ["chmod", "rename", "chmod-then-pull", "link"])
def test_a_moved_late_copy_stays_late_whatever_the_user_does_next(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, second: str) -> None:
    """Review round 18, GG1: B's user renames X's late file (or link); the push refuses it
    and its row follows it. Before any pull the user changes its mode, renames it again, or
    pulls after the chmod, and pushes again: the row still names X's version (found by dot
    and content, not by path), so X's late content reaches no other device."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    name = "x-link" if second == "link" else "paper.txt"
    with provider.showing(before) as late:
        if second == "link":
            os.symlink("../x-target", x.folder / name)
        else:
            x.write(name, LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
    os.rename(b.folder / name, b.folder / "renamed")
    status = b.json("status")
    assert status["late"] == ["renamed"] and not status["in_sync"], status
    assert "renamed" not in status["to_push"], status
    assert "late write, never pushed" in b.run("status").output
    assert b.json("push")["late"] == ["renamed"]
    if second in ("chmod", "chmod-then-pull"):
        os.chmod(b.folder / "renamed", 0o600)
    else:
        os.rename(b.folder / "renamed", b.folder / "final")
    if second == "chmod-then-pull":
        assert b.run("pull").exit_code == 0
    again = b.json("push")
    assert not again["uploaded"] and not again["updated"], again
    got = _pull_all([a, e, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for where, v in [*got.items(), ("script", restored)]:
        assert LATE not in v.values(), (where, v)
    for dev in (a, e, b):
        assert not [p for p in dev.folder.iterdir() if p.is_symlink()], dev.name


def test_restore_late_of_a_copy_the_push_refused_makes_it_this_devices(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 18, GG2: X's backdated removal takes honest B out; C's user had changed
    the mode of B's notes.txt, so C's push refuses it as late. `restore --late-of` (what the
    warning names), before any pull, makes it C's: the next push sends it and A gets it."""
    from test_trust_late_restore import b_taken_out

    a, _b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    os.chmod(c.folder / "notes.txt", 0o600)
    assert "notes.txt" in c.json("push")["late"]
    got = c.run("restore", "--late-of", "b", "--json")
    assert got.exit_code == 0, got.output
    assert "notes.txt" in c.json("push")["uploaded"]
    assert a.run("pull").exit_code == 0
    assert (a.folder / "notes.txt").exists()


def _b_carried_late_with_another_path(x: Dev, b: Dev, provider: Provider,
                                      before: dict[str, bytes]) -> None:
    """X rewrites paper.txt late; lagging B pulls it, renames it to b.txt and writes
    notes.txt in the same push: one dot for both, b.txt's naming X's as its source (cs)."""
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        os.rename(b.folder / "paper.txt", b.folder / "b.txt")
        b.write("notes.txt", "B's own notes")
        assert not b.json("push")["late"]


@pytest.mark.parametrize("second", ["none", "chmod", "rename"])
def test_a_late_copy_moved_onto_a_path_its_carrying_push_wrote_stays_late(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, second: str) -> None:
    """Review round 19, HH1/HH2: once the removal shows, B's user moves the late copy over
    notes.txt, which the same lag push wrote (same dot, other content). The row's version
    was found by path and dot alone, so it was B's honest notes: a chmod or a rename then
    sent X's content as B's (HH1); and the pull compared dots only, so B's folder kept X's
    text at notes.txt for good while status said in sync (HH2). Safe: X's content reaches no
    device, and B's pull puts B's notes back."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _b_carried_late_with_another_path(x, b, provider, before)
    os.replace(b.folder / "b.txt", b.folder / "notes.txt")
    assert b.json("push")["late"] == ["notes.txt"]
    if second == "none":
        status = b.json("status")
        assert not status["in_sync"] and "notes.txt" in status["to_pull"], status
    elif second == "chmod":
        os.chmod(b.folder / "notes.txt", 0o600)
    else:
        os.rename(b.folder / "notes.txt", b.folder / "final.txt")
    again = b.json("push")
    assert not again["uploaded"] and not again["updated"], again
    got = _pull_all([a, e, b, b])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    for where, v in [*got.items(), ("script", restored)]:
        assert LATE not in v.values(), (where, v)
        assert v.get("notes.txt") == "B's own notes", (where, v)
    assert b.json("status")["in_sync"]
