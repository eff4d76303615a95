"""Review round 17 (docs/reviews/trust-round-17.md): a lagging device's copy of a removed
member's late write is never pushed as its own (round 16, EE3), but honest content that a
late write happened to hold too is: reverts, undeletes, restores, empty files, links (FF1),
and a pull never replaces an honest local edit because its content matches a late one
(FF2). The reviewer's runs, each with the recovery script where it matters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import (  # noqa: F401
    Dev,
    Provider,
    compact,
    provider,
    script_restores,
)
from test_trust_conflicts import LATE, _texts, x_removed
from test_trust_lag_carries import _pull_all

from cloudguard import session as session_mod

__all__ = ["provider"]

FIRST = "A's first draft"


def _x_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
               provider: Provider) -> tuple[list[Dev], dict[str, bytes]]:
    """As x_removed, with content no other file holds (make_vault's doc.txt holds
    "original")."""
    return x_removed(monkeypatch, tmp_path, remote, provider, FIRST)


def _push(dev: Dev) -> dict[str, Any]:
    got = dev.run("push", "--json")
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def _late_touch_or_copy(x: Dev, b: Dev, provider: Provider, before: dict[str, bytes],
                        how: str) -> None:
    """X's one late write: a chmod of A's file (same content), or a new file holding a copy
    of A's content. The provider shows it to B during a lag; B pulls it, then sees the
    removal and compacts (as maintenance would), so every device holds the late version in
    its history (devices that saw the removal first never take a late delta in)."""
    with provider.showing(before) as late:
        if how == "chmod":
            os.chmod(x.folder / "paper.txt", 0o600)
        else:
            x.write("copy.txt", FIRST)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
    assert b.run("pull").exit_code == 0
    compact(b)


@pytest.mark.parametrize("act", ["revert", "undelete"])
@pytest.mark.parametrize("how", ["chmod", "copy"])
def test_an_honest_revert_to_content_a_late_write_held_is_pushed(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str, act: str) -> None:
    """X touches (or copies) A's paper.txt late. Everyone sees the removal. A's user edits
    paper.txt, then goes back to the original text (an undo; or deletes the file and takes
    it back from the trash). That is A's own honest content."""
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    _late_touch_or_copy(x, b, provider, before, how)
    _pull_all([a, b, e])
    if act == "revert":
        a.write("paper.txt", "A's second text")
    else:
        (a.folder / "paper.txt").unlink()
    _push(a)
    a.write("paper.txt", FIRST)  # the user goes back to the first text
    got = _push(a)
    out = _pull_all([b, e, a])
    restored = _texts(script_restores(a, local_remote, tmp_path))
    assert out["b"].get("paper.txt") == FIRST, (got.get("late"), out, restored)


def test_a_restore_before_of_content_a_late_write_held_is_pushed(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with cloudguard's own `restore --before`: the folder gets the old version,
    and the push that should send it refuses it as late."""
    import time
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    _late_touch_or_copy(x, b, provider, before, "chmod")
    _pull_all([a, b, e])
    time.sleep(2)
    then = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    time.sleep(2)
    a.write("paper.txt", "A's second text")
    _push(a)
    _pull_all([b, e])
    assert a.run("restore", "paper.txt", "--before", then).exit_code == 0
    assert (a.folder / "paper.txt").read_text() == FIRST
    pushed = _push(a)
    out = _pull_all([b, e])
    assert out["b"].get("paper.txt") == FIRST, (pushed.get("late"), out)


def test_an_empty_file_is_pushed_after_a_late_empty_file(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X writes one empty file late. Every empty file an honest user makes later (an
    __init__.py, a .gitkeep) is refused while no live version is empty."""
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("x.txt", "")
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
    _pull_all([a, b, e])
    compact(b)
    _pull_all([a, e])
    b.write("__init__.py", "")
    got = _push(b)
    out = _pull_all([a, e])
    assert "__init__.py" in out["a"], (got.get("late"), out)


def test_a_pull_keeps_an_honest_revert_to_content_a_late_write_held(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As FF1; A's user goes back to the original text while B edits paper.txt. A pulls
    (before a push, or after the refused push): a local edit against a remote one is a
    clash, and both should be kept. The late rule calls A's edit untouched."""
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    _late_touch_or_copy(x, b, provider, before, "chmod")
    _pull_all([a, b, e])
    a.write("paper.txt", "A's second text")
    _push(a)
    _pull_all([b, e])
    a.write("paper.txt", FIRST)  # A's user reverts, not pushed yet
    b.write("paper.txt", "B's edit")
    _push(b)
    assert a.run("pull").exit_code == 0
    texts = _texts(a.folder)
    assert FIRST in texts.values(), texts  # expected: A's edit kept (a conflict)


def test_a_pull_keeps_an_honest_revert_without_a_late_write(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Control for FF2: no late write of X; the same user actions keep A's revert."""
    (a, b, e, x), _before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    _pull_all([a, b, e])
    a.write("paper.txt", "A's second text")
    _push(a)
    _pull_all([b, e])
    a.write("paper.txt", FIRST)
    b.write("paper.txt", "B's edit")
    _push(b)
    assert a.run("pull").exit_code == 0
    texts = _texts(a.folder)
    assert FIRST in texts.values(), texts


def test_a_new_link_to_a_target_a_late_link_held_is_pushed(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X makes one link late (a common target). An honest user's later link to the same
    target is refused while no live link has it."""
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        os.symlink("../shared/notes", x.folder / "x-link")
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
    _pull_all([a, b, e])
    compact(b)
    _pull_all([a, e])
    os.symlink("../shared/notes", a.folder / "my-link")
    got = _push(a)
    _pull_all([b, e])
    assert (b.folder / "my-link").is_symlink(), got.get("late")


def _strip_cs(monkeypatch: pytest.MonkeyPatch) -> None:
    """X's client leaves out the cs its own carries would name."""
    monkeypatch.setattr(session_mod.mf.resolutions, "stamp", lambda _s, _o: None)


@pytest.mark.parametrize("act", ["rename", "delete", "chmod"])
def test_a_late_touch_naming_no_source_then_an_honest_action(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """X chmods A's file late and names no source; lagging B renames, deletes or chmods it.
    The delete must stand (EE4); the rename and chmod must lose nothing."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        os.chmod(x.folder / "paper.txt", 0o755)
        with monkeypatch.context() as m:
            _strip_cs(m)
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
    views = [tuple(sorted(v.items())) for v in got.values()] + [tuple(sorted(restored.items()))]
    assert len(set(views)) == 1, (got, restored)
    for v in [*got.values(), restored]:
        if act == "delete":
            assert "original" not in {t for p, t in v.items() if p != "doc.txt"}, v
        else:  # A's file is somewhere, X's content nowhere but where it held A's
            assert "original" in {t for p, t in v.items() if p != "doc.txt"}, v


def test_a_late_copy_open_in_an_office_program_is_never_pushed_as_the_devices_own(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 20, JJ2. Lagging B pulls X's late rewrite of paper.txt and its user opens
    it in LibreOffice (the lock file beside it). The removal shows and B pulls: the office
    rule (land the remote version as a conflict copy) must not drop the late row, or B's
    next push sends X's text as B's edit. The pull keeps the row and says so; after the file
    is closed, a pull replaces it."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
    lock = b.folder / ".~lock.paper.txt#"
    lock.write_text("b,user,host,01.01.2026 10:00,file:///home/b/.config/libreoffice/4;")
    got = b.run("pull")
    assert got.exit_code == 0, got.output
    assert "paper.txt holds a removed member's late content" in got.output, got.output
    assert (b.folder / "paper.txt").read_text() == LATE  # the open file is left alone
    lock.unlink()  # closed without saving
    got = b.run("push")
    assert got.exit_code == 0, got.output
    held = _pull_all([a, e, b])
    held["script"] = _texts(script_restores(a, local_remote, tmp_path))
    assert all(LATE not in v.values() for v in held.values()), held
    assert held["b"]["paper.txt"] == held["a"]["paper.txt"] != LATE, held
