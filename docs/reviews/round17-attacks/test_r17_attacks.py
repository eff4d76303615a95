"""Review round 17: throwaway attack runs against f332348 and 4578107 (EE1-EE5 fixes).
test_FF<n> fails where finding FF<n> holds (the assert states the safe outcome);
test_holds_* pass.
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round17-attacks/<file>
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import (  # noqa: F401
    Provider,
    compact,
    make_vault,
    provider,
    script_restores,
)
from test_trust_conflicts import _texts, x_removed

from cloudguard import session as session_mod

__all__ = ["provider"]

FIRST = "A's first draft"


def _x_removed(monkeypatch, tmp_path, remote, provider):  # type: ignore[no-untyped-def]
    """As test_trust_conflicts.x_removed, with content no other file holds (make_vault's
    doc.txt holds "original")."""
    a, b, e, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "e", "x")
    a.write("paper.txt", FIRST)
    a.cg("push")
    for dev in (b, e, x):
        dev.cg("pull")
    before = provider.objects()
    a.cg("device", "remove", x.rid)
    return [a, b, e, x], before



def _pull_all(devs):  # type: ignore[no-untyped-def]
    out = {}
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        out[dev.name] = _texts(dev.folder)
    return out


def _push(dev):  # type: ignore[no-untyped-def]
    got = dev.run("push", "--json")
    print(dev.name, "push", got.exit_code, got.output[-400:])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def _late_touch_or_copy(x, b, provider, before, how):  # type: ignore[no-untyped-def]
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
def test_FF1_an_honest_revert_to_content_x_touched_late_is_never_pushed(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str, act: str) -> None:
    """X touches (or copies) A's paper.txt late. Everyone sees the removal. A's user edits
    paper.txt, then goes back to the original text (an undo; or deletes the file and takes
    it back from the trash). That is A's own honest content."""
    (a, b, e, x), before = _x_removed(monkeypatch, tmp_path, local_remote, provider)
    _late_touch_or_copy(x, b, provider, before, how)
    first = _pull_all([a, b, e])
    print("after removal", first)
    if act == "revert":
        a.write("paper.txt", "A's second text")
    else:
        (a.folder / "paper.txt").unlink()
    _push(a)
    print("mid", _pull_all([b, e]))
    a.write("paper.txt", FIRST)  # the user goes back to the first text
    got = _push(a)
    print("late list", got.get("late"))
    out = _pull_all([b, e, a])
    print(out)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", restored)
    assert out["b"].get("paper.txt") == FIRST, (got.get("late"), out, restored)


def test_FF1_restore_before_is_never_pushed(
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
    got = a.run("restore", "paper.txt", "--before", then)
    print("restore", got.exit_code, got.output[-300:])
    assert (a.folder / "paper.txt").read_text() == FIRST
    pushed = _push(a)
    out = _pull_all([b, e])
    print(pushed.get("late"), out)
    assert out["b"].get("paper.txt") == FIRST, (pushed.get("late"), out)


def test_FF1_an_empty_file_is_never_pushed(
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
    print(got.get("late"), out)
    assert "__init__.py" in out["a"], (got.get("late"), out)


def test_FF2_a_pull_replaces_an_honest_revert_without_a_conflict_copy(
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
    got = a.run("pull")
    print("a pull", got.exit_code, got.output[-400:])
    texts = _texts(a.folder)
    print(texts)
    assert FIRST in texts.values(), texts  # expected: A's edit kept (a conflict)


def test_FF2_control_without_a_late_write_the_revert_is_kept(
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
    print(texts)
    assert FIRST in texts.values(), texts


def test_FF1_a_new_link_to_a_target_x_linked_late_is_never_pushed(
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
    print(got.get("late"), [p.name for p in b.folder.iterdir()])
    assert (b.folder / "my-link").is_symlink(), got.get("late")


def _strip_cs(monkeypatch: pytest.MonkeyPatch) -> None:
    """X's client leaves out the cs its own carries would name."""
    real = session_mod.Session.commit

    def commit(self: Any, ops: list[dict[str, Any]]) -> str:
        real_stamp = session_mod.mf.resolutions.stamp
        session_mod.mf.resolutions.stamp = lambda _s, _o: None  # type: ignore[assignment]
        try:
            return real(self, ops)
        finally:
            session_mod.mf.resolutions.stamp = real_stamp  # type: ignore[assignment]
    monkeypatch.setattr(session_mod.Session, "commit", commit)


@pytest.mark.parametrize("act", ["rename", "delete", "chmod"])
def test_holds_x_touch_without_cs_then_honest_action(
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
    print(got, "script", restored)
    views = [tuple(sorted(v.items())) for v in got.values()] + [tuple(sorted(restored.items()))]
    assert len(set(views)) == 1, (got, restored)
    for v in [*got.values(), restored]:
        if act == "delete":
            assert "original" not in {t for p, t in v.items() if p != "doc.txt"}, v
        else:  # A's file is somewhere, X's content nowhere but where it held A's
            assert "original" in {t for p, t in v.items() if p != "doc.txt"}, v
