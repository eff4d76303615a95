"""Issue 8, pull side: a pull never loses a user's edit, never stops on one bad path, and
lands type, mode and mtime changes. Two devices, each its own CLOUDGUARD_HOME, against a
real local rclone remote."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import cg

from cloudguard import keys, sync


def after_plan(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once, between the pull's plan and its execution: the user's edit that
    races the pull, injected deterministically."""
    real = sync.plan_pull
    done: list[bool] = []

    def wrapped(*args: Any, **kwargs: Any) -> sync.PullPlan:
        plan = real(*args, **kwargs)
        if not done:
            done.append(True)
            time.sleep(0.05)  # past the kernel's coarse ctime tick
            action()
        return plan

    monkeypatch.setattr(sync, "plan_pull", wrapped)


def same_size_same_mtime(path: Path, text: str) -> None:
    """An edit that keeps size and mtime (as some tools do): only ctime tells."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Dev:
    """One device: its own CLOUDGUARD_HOME and folder."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path, name: str) -> None:
        self.mp = mp
        self.home = root / f"home-{name}"
        self.home.mkdir(mode=0o700)
        self.folder = root / name

    def __truediv__(self, rel: str) -> Path:
        return self.folder / rel

    def use(self) -> None:
        self.mp.setenv("CLOUDGUARD_HOME", str(self.home))
        keys.drop_cached_keys()

    def cg(self, *args: str, code: int = 0) -> Result:
        self.use()
        return cg(*args, "--folder", str(self.folder), code=code)

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.cg(*args, "--json", code=code).stdout)


def devices(mp: pytest.MonkeyPatch, tmp_path: Path, remote: str, files: dict[str, str],
            count: int = 2) -> list[Dev]:
    """Device a makes the vault from ``files`` and pushes; the others clone it with a kit."""
    devs = [Dev(mp, tmp_path, name) for name in "abc"[:count]]
    a = devs[0]
    a.folder.mkdir()
    for name, text in files.items():
        (a / name).parent.mkdir(parents=True, exist_ok=True)
        (a / name).write_text(text)
    a.use()
    cg("init", str(a.folder), "--remote", remote, "--name", "a")
    a.cg("push")
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    for dev in devs[1:]:
        dev.use()
        cg("clone", remote, str(dev.folder), "--key-file", str(kit), "--name", dev.folder.name)
    return devs


# --- item 3: an edit during a pull is never deleted or replaced -----------------------------


def test_edit_during_pull_survives_the_remote_delete(local_remote: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"doc.txt": "base", "other.txt": "x"})
    os.unlink(a / "doc.txt")
    os.unlink(a / "other.txt")
    a.cg("push")
    after_plan(monkeypatch, lambda: (b / "doc.txt").write_text("edited during the pull"))
    result = b.cg("pull")
    assert (b / "doc.txt").read_text() == "edited during the pull"
    assert not (b / "other.txt").exists()
    assert "kept doc.txt" in result.stderr
    b.cg("push")
    a.cg("pull")
    assert (a / "doc.txt").read_text() == "edited during the pull"


def test_edit_keeping_size_and_mtime_survives_the_remote_delete(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"doc.txt": "base"})
    os.unlink(a / "doc.txt")
    a.cg("push")
    time.sleep(0.05)
    same_size_same_mtime(b / "doc.txt", "BASE")
    b.cg("pull")
    assert (b / "doc.txt").read_text() == "BASE"
    b.cg("push")
    a.cg("pull")
    assert (a / "doc.txt").read_text() == "BASE"


def test_edit_during_pull_is_not_replaced(local_remote: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"doc.txt": "base"})
    (a / "doc.txt").write_text("remote edit")
    a.cg("push")
    after_plan(monkeypatch, lambda: same_size_same_mtime(b / "doc.txt", "BASE"))
    result = b.cg("pull")
    assert (b / "doc.txt").read_text() == "BASE"
    assert "doc.txt changed during the pull" in result.stderr
    pulled = b.json("pull")  # now a plain conflict: both kept
    assert [(b / c).read_text() for c in pulled["conflicts"]] == ["remote edit"]
    assert (b / "doc.txt").read_text() == "BASE"


def test_file_created_where_a_symlink_lands_is_kept(local_remote: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"doc.txt": "base"})
    os.symlink("doc.txt", a / "link")
    a.cg("push")
    after_plan(monkeypatch, lambda: (b / "link").write_text("mine"))
    b.cg("pull")
    assert not (b / "link").is_symlink() and (b / "link").read_text() == "mine"
    pulled = b.json("pull")
    assert [os.readlink(b / c) for c in pulled["conflicts"]] == ["doc.txt"]
    assert (b / "link").read_text() == "mine"
