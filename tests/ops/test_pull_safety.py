"""Issue 8, pull side: a pull never loses a user's edit, never stops on one bad path, and
lands type, mode and mtime changes. Two or three devices, each its own CLOUDGUARD_HOME,
against a real local rclone remote; an edit racing the pull is injected between its plan and
its execution (``after_plan``); a full disk is a real 4 MiB tmpfs (needs root, else skipped).
The pure plan is tested at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import cg, tree

from cloudguard import keys, sync
from cloudguard.cli import main
from cloudguard.ops import pull as pull_op
from cloudguard.state import IndexRow


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

    def run_pull_push(self) -> None:
        """A sync round, whatever the pull's exit code (1 when a path could not land)."""
        self.use()
        CliRunner().invoke(main, ["pull", "--folder", str(self.folder)], catch_exceptions=False)
        self.cg("push")


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


# --- item 6: file <-> folder <-> symlink changes propagate; an error never stops a pull -----


def in_sync(*devs: Dev) -> None:
    for dev in devs:
        st = dev.json("status")
        assert not st["to_push"] and not st["to_pull"], (dev.folder.name, st)
    first = tree(devs[0].folder)
    for dev in devs[1:]:
        assert tree(dev.folder) == first, dev.folder.name


def test_file_becomes_folder_and_back(local_remote: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"x": "a file", "other.txt": "o"})
    os.unlink(a / "x")
    (a / "x").mkdir()
    (a / "x" / "inner.txt").write_text("inside")
    (a / "unrelated.txt").write_text("arrives too")
    a.cg("push")
    pulled = b.json("pull")
    assert pulled["conflicts"] == [] and (b / "x" / "inner.txt").read_text() == "inside"
    assert (b / "unrelated.txt").read_text() == "arrives too"
    in_sync(a, b)
    # and back: the folder becomes a file again
    os.unlink(b / "x" / "inner.txt")
    (b / "x").rmdir()
    (b / "x").write_text("a file again")
    b.cg("push")
    a.cg("pull")
    assert (a / "x").read_text() == "a file again"
    in_sync(a, b)


def test_file_becomes_symlink_and_back(local_remote: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"x": "a file", "t.txt": "target"})
    os.unlink(a / "x")
    os.symlink("t.txt", a / "x")
    a.cg("push")
    assert b.json("pull")["conflicts"] == []
    assert os.readlink(b / "x") == "t.txt"
    in_sync(a, b)
    assert a.json("pull")["conflicts"] == [] and b.json("pull")["conflicts"] == []
    os.unlink(b / "x")
    (b / "x").write_text("file again")
    b.cg("push")
    assert a.json("pull")["conflicts"] == []
    in_sync(a, b)


def test_folder_becomes_symlink(local_remote: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"d/in.txt": "in", "t.txt": "t"})
    os.unlink(a / "d" / "in.txt")
    (a / "d").rmdir()
    os.symlink("t.txt", a / "d")
    a.cg("push")
    assert b.json("pull")["conflicts"] == []
    assert os.readlink(b / "d") == "t.txt"
    in_sync(a, b)


def test_edited_file_where_a_folder_arrives_moves_aside(local_remote: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"x": "a file"})
    os.unlink(a / "x")
    (a / "x").mkdir()
    (a / "x" / "inner.txt").write_text("inside")
    a.cg("push")
    (b / "x").write_text("edited on b")
    pulled = b.json("pull")
    assert [(b / c).read_text() for c in pulled["conflicts"]] == ["edited on b"]
    assert (b / "x" / "inner.txt").read_text() == "inside"
    b.cg("push")
    a.cg("pull")
    in_sync(a, b)


def test_folder_with_new_files_where_a_file_arrives(local_remote: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"d/in.txt": "in"})
    os.unlink(a / "d" / "in.txt")
    (a / "d").rmdir()
    (a / "d").write_text("now a file")
    a.cg("push")
    (b / "d" / "new.txt").write_text("new on b")
    pulled = b.json("pull")
    assert [(b / c).read_text() for c in pulled["conflicts"]] == ["now a file"]
    assert (b / "d" / "new.txt").read_text() == "new on b"
    assert not (b / "d" / "in.txt").exists()
    b.cg("push")
    a.cg("pull")
    in_sync(a, b)


def test_folder_filled_during_the_pull_is_kept(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote removes folder e, or turns folder d into a file, while the user saves a
    file inside: the folder stays with the file, the remote file lands as a conflict copy."""
    a, b = devices(monkeypatch, tmp_path, local_remote, {"e/old.txt": "o", "d/in.txt": "i"})
    for name in ("e", "d"):
        os.unlink(a / name / os.listdir(a / name)[0])
        (a / name).rmdir()
    (a / "d").write_text("d is a file now")
    a.cg("push")

    def save() -> None:
        (b / "e" / "saved.txt").write_text("saved during the pull")
        (b / "d" / "saved.txt").write_text("saved during the pull too")

    after_plan(monkeypatch, save)
    pulled = b.json("pull")
    assert (b / "e" / "saved.txt").exists() and (b / "d" / "saved.txt").exists()
    assert not (b / "e" / "old.txt").exists() and not (b / "d" / "in.txt").exists()
    assert [(b / c).read_text() for c in pulled["conflicts"]] == ["d is a file now"]
    b.cg("push")
    a.cg("pull")
    in_sync(a, b)
    assert (a / "e" / "saved.txt").read_text() == "saved during the pull"


def test_error_on_one_path_does_not_stop_the_pull(local_remote: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder arrives where b has a file it cannot move aside (the conflict name is taken by
    a link it must not follow): that path is reported, everything else lands, exit 1."""
    a, b = devices(monkeypatch, tmp_path, local_remote, {"ok.txt": "base"})
    (a / "blocked").mkdir()
    (a / "blocked" / "in.txt").write_text("in")
    (a / "ok.txt").write_text("edited on a")
    (a / "new.txt").write_text("new")
    a.cg("push")
    (b / "blocked").write_text("b's own file")
    real = sync.move_aside

    def failing(folder: Path, rel: str, name: str, expect: sync.LocalItem) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sync, "move_aside", failing)
    result = b.cg("pull", code=1)
    monkeypatch.setattr(sync, "move_aside", real)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("cloudguard: error:")]
    assert errors and all("blocked" in ln for ln in errors), result.stderr
    assert (b / "ok.txt").read_text() == "edited on a" and (b / "new.txt").read_text() == "new"
    assert (b / "blocked").read_text() == "b's own file"
    b.cg("pull")  # nothing in the way any more: the rest arrives
    assert (b / "blocked" / "in.txt").read_text() == "in"


# --- item 7: a path too long for this device is skipped, the rest arrives -------------------


def test_path_too_long_for_a_deeper_root_is_skipped(local_remote: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, = devices(monkeypatch, tmp_path, local_remote, {"small.txt": "s"}, count=1)
    room = 4000 - len(str(a.folder))  # a's own path stays under PATH_MAX (4096)
    parts = ["p" * 200] * (room // 201)
    deep = a.folder.joinpath(*parts)
    deep.mkdir(parents=True)
    (deep / "far.txt").write_text("far away")
    (a / "near.txt").write_text("near")
    a.cg("push")
    deeper = tmp_path / ("q" * 200) / ("q" * 200)
    deeper.mkdir(parents=True)
    b = Dev(monkeypatch, deeper, "b")  # b's root is 400 bytes deeper: past PATH_MAX there
    b.home.rmdir()  # SQLite refuses a path over 512 bytes: the state stays higher up
    b.home = tmp_path / "home-b"
    b.home.mkdir(mode=0o700)
    b.use()
    cg("clone", local_remote, str(b.folder), "--key-file", str(tmp_path / "kit.json"),
       code=1)
    assert (b / "near.txt").read_text() == "near" and (b / "small.txt").read_text() == "s"
    result = b.cg("pull", code=1)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("cloudguard: error:")]
    assert lines and all("too long for this device" in ln for ln in lines), result.stderr
    b.cg("push")  # what did not arrive is not deleted
    a.cg("pull")
    assert (deep / "far.txt").read_text() == "far away"


def test_three_devices_file_and_folder_at_once(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """a turns folder d into a file while c adds d/y.txt: the merged remote holds a file d
    and a file d/y.txt. b lands what it can, names the path it cannot, exits 1; once c has
    resolved the clash (a conflict copy), all three converge with nothing lost."""
    a, b, c = devices(monkeypatch, tmp_path, local_remote, {"d/x.txt": "x", "k.txt": "k"}, 3)
    os.unlink(a / "d" / "x.txt")
    (a / "d").rmdir()
    (a / "d").write_text("d is a file now")
    (a / "k.txt").write_text("k edited")
    a.cg("push")
    (c / "d" / "y.txt").write_text("added on c")
    c.cg("push")
    result = b.cg("pull", code=1)  # the file d lands; d/y.txt cannot, and says so
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("cloudguard: error:")]
    assert len(errors) == 1 and "skipped d/y.txt" in errors[0], result.stderr
    assert (b / "d").read_text() == "d is a file now"
    assert (b / "k.txt").read_text() == "k edited"
    for _round in range(2):
        for dev in (c, a, b):
            dev.run_pull_push()
    in_sync(a, b, c)
    texts = sorted(p.read_text() for p in a.folder.rglob("*")
                   if p.is_file() and ".cloudguard" not in p.parts)
    assert texts == ["added on c", "d is a file now", "k edited"]


# --- item 13: a full disk stops the pull with one line, and nothing is left ---------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def no_space_setup(mp: pytest.MonkeyPatch, tmp_path: Path, remote: str, small: Path
                   ) -> tuple[Dev, Dev]:
    a, = devices(mp, tmp_path, remote, {"small.txt": "s"}, count=1)
    b = Dev(mp, small, "b")
    b.home.rmdir()  # the state stays off the small disk: only the folder is on it
    b.home = tmp_path / "home-b"
    b.home.mkdir(mode=0o700)
    b.use()
    cg("clone", remote, str(b.folder), "--key-file", str(tmp_path / "kit.json"))
    return a, b


def test_disk_full_is_refused_before_anything_lands(local_remote: str, tmp_path: Path,
                                                    small_fs: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = no_space_setup(monkeypatch, tmp_path, local_remote, small_fs)
    (a / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (a / "more.txt").write_text("more")
    a.cg("push")
    before = tree(b.folder)
    result = b.cg("pull", code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough space" in lines[0] and "5.0 MiB" in lines[0], lines
    assert str(b.folder) in lines[0]
    assert tree(b.folder) == before  # nothing partial, no temp file
    os.unlink(a / "big.bin")
    a.cg("push")
    b.cg("pull")
    assert (b / "more.txt").read_text() == "more"


def test_disk_filling_up_during_the_pull_frees_what_was_staged(
        local_remote: str, tmp_path: Path, small_fs: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The space check passes, then another program fills the disk: ENOSPC while staging."""
    a, b = no_space_setup(monkeypatch, tmp_path, local_remote, small_fs)
    for name in ("one.bin", "two.bin", "three.bin"):
        (a / name).write_bytes(os.urandom(900 * 1024))
    a.cg("push")
    before = tree(b.folder)
    filler = small_fs / "filler"
    real = pull_op._check_space

    def then_fill(s: Any, downloads: Any) -> None:
        real(s, downloads)
        free = shutil.disk_usage(small_fs).free
        filler.write_bytes(b"\0" * (free - 1024 * 1024))  # room for one file, not three

    monkeypatch.setattr(pull_op, "_check_space", then_fill)
    result = b.cg("pull", code=1)
    monkeypatch.setattr(pull_op, "_check_space", real)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough space" in lines[0] and "2.6 MiB" in lines[0], lines
    assert tree(b.folder) == before  # the staged files are freed, nothing partial
    filler.unlink()
    b.cg("pull")
    assert (b / "three.bin").read_bytes() == (a / "three.bin").read_bytes()


# --- item 9: mode and mtime changes alone are applied, folder modes too ---------------------


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_chmod_and_touch_are_pulled(local_remote: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"run.sh": "#!/bin/sh\n", "d/f": "f"})
    os.chmod(a / "run.sh", 0o755)
    os.utime(a / "run.sh", ns=(1_600_000_000_000_000_000,) * 2)
    os.chmod(a / "d", 0o2750)  # setgid is never synced
    a.cg("push")
    st = b.json("status")
    assert st["to_pull"] == ["d", "run.sh"], st  # not "in sync" while modes differ
    pulled = b.json("pull")
    assert sorted(pulled["updated"]) == ["d", "run.sh"] and pulled["downloaded"] == []
    assert mode(b / "run.sh") == 0o755
    assert (b / "run.sh").stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert mode(b / "d") == 0o750
    in_sync(a, b)
    assert mode(a / "d") & 0o777 == mode(b / "d")


def test_local_metadata_change_is_kept_and_pushed(local_remote: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides chmod the same file: b's own change stays and goes up next; nobody says
    "in sync" until the modes agree."""
    a, b = devices(monkeypatch, tmp_path, local_remote, {"f.txt": "same"})
    os.chmod(a / "f.txt", 0o755)
    a.cg("push")
    os.chmod(b / "f.txt", 0o600)
    b.cg("pull")
    assert mode(b / "f.txt") == 0o600
    assert b.json("status")["to_push"] == ["f.txt"]
    b.cg("push")
    a.cg("pull")
    assert mode(a / "f.txt") == 0o600
    in_sync(a, b)


# --- the pure plan: every kind change, both ways ----------------------------------------


def _loc(path: str, kind: str, ctime: int = 5) -> sync.LocalItem:
    if kind == "d":
        return sync.LocalItem(path, "d", mode=0o755)
    if kind == "l":
        return sync.LocalItem(path, "l", mtime=1, target="t", ctime=ctime, ino=7)
    return sync.LocalItem(path, "f", 1, 1, 0o644, "", ctime, 7)


def _synced_row(loc: sync.LocalItem, dot: str = "d:1") -> IndexRow:
    return sync.row_from(loc, dot, "h-" + loc.path if loc.kind == "f" else "")


def _remote(kind: str) -> dict[str, Any]:
    if kind == "d":
        return {"t": "d", "x": 0o755}
    if kind == "l":
        return {"t": "l", "l": "other", "m": 2}
    return {"t": "f", "s": 2, "m": 2, "x": 0o644, "h": "new"}


@pytest.mark.parametrize("old,new", [(o, n) for o in "fdl" for n in "fdl" if o != n])
def test_plan_type_change_of_an_untouched_path_lands_without_conflict(old: str, new: str
                                                                      ) -> None:
    loc = _loc("x", old)
    plan = sync.plan_pull({"x": loc}, {"x": _synced_row(loc)}, {"x": ("e:1", _remote(new))},
                          lambda p: "h-" + p, {})
    landed = [d for d, _t, _e in plan.download + plan.make]
    assert landed == ["x"] and not plan.conflicts and not plan.skipped and not plan.aside
    assert [r.path for r in plan.delete] == ([] if "d" not in (old, new) else ["x"])


@pytest.mark.parametrize("old,new", [(o, n) for o in "fl" for n in "fdl" if o != n])
def test_plan_type_change_over_an_edited_path_keeps_both(old: str, new: str) -> None:
    """Edited: a file with its size and mtime kept (only ctime and content tell), a link
    pointing elsewhere."""
    loc = _loc("x", old, ctime=6)._replace(target="elsewhere" if old == "l" else "")
    plan = sync.plan_pull({"x": loc}, {"x": _synced_row(_loc("x", old))},
                          {"x": ("e:1", _remote(new))}, lambda p: "edited", {}, me="me")
    assert not plan.delete and len(plan.conflicts) == 1
    if new == "d":  # the user's file moves aside, the folder takes the name
        assert plan.aside == [("x", plan.conflicts[0])] and "(conflict " in plan.conflicts[0]
        assert [d for d, _t, _e in plan.make] == ["x"]
    else:  # the remote version lands under a conflict name
        assert [d for d, _t, _e in plan.download + plan.make] == plan.conflicts


def test_plan_folder_with_user_content_is_not_replaced_by_a_file() -> None:
    folder, inner = _loc("x", "d"), _loc("x/in", "f")
    index = {"x": _synced_row(folder), "x/in": _synced_row(inner)}
    remote = {"x": ("e:1", _remote("f"))}
    clean = sync.plan_pull({"x": folder, "x/in": inner}, index, remote, lambda p: "h-" + p, {})
    assert sorted(r.path for r in clean.delete) == ["x", "x/in"] and not clean.conflicts
    new = _loc("x/new", "f")
    busy = sync.plan_pull({"x": folder, "x/in": inner, "x/new": new}, index, remote,
                          lambda p: "h-" + p, {})
    assert [r.path for r in busy.delete] == ["x/in"] and len(busy.conflicts) == 1
    assert [d for d, _t, _e in busy.download] == busy.conflicts


def test_plan_moved_ctime_or_inode_with_the_synced_content_is_no_edit() -> None:
    """A remount (FAT renumbers inodes), a chmod and back, a new hard link: the content is
    what was synced, so the remote delete or edit applies; read once, however many checks."""
    row = _synced_row(_loc("x", "f"))
    moved = _loc("x", "f", ctime=99)._replace(ino=123)
    reads: list[str] = []

    def hasher(p: str) -> str:
        reads.append(p)
        return "h-" + p

    gone = sync.plan_pull({"x": moved}, {"x": row}, {}, hasher, {})
    assert [r.path for r in gone.delete] == ["x"]
    edited = sync.plan_pull({"x": moved}, {"x": row}, {"x": ("e:1", _remote("f"))}, hasher, {})
    assert [d for d, _t, _e in edited.download] == ["x"] and not edited.conflicts
    assert reads == ["x", "x"]  # once per plan
    changed = sync.plan_pull({"x": moved}, {"x": row}, {}, lambda p: "other", {})
    assert not changed.delete and changed.forget == ["x"]


def test_plan_metadata_only_changes() -> None:
    loc = _loc("f", "f")
    row = _synced_row(loc)
    chmod = {"t": "f", "s": 1, "m": 1, "x": 0o755, "h": "h-f"}
    plan = sync.plan_pull({"f": loc}, {"f": row}, {"f": ("e:1", chmod)}, lambda p: "h-" + p, {})
    assert [p for p, _d, _e in plan.meta] == ["f"] and not plan.adopt
    mine = loc._replace(mode=0o600, ctime=9)  # the user changed the mode too: theirs stays
    plan = sync.plan_pull({"f": mine}, {"f": row}, {"f": ("e:1", chmod)}, lambda p: "h-" + p, {})
    assert [p for p, _d, _e in plan.restate] == ["f"] and not plan.meta
    folder = _loc("d", "d")
    plan = sync.plan_pull({"d": folder}, {"d": _synced_row(folder)},
                          {"d": ("e:1", {"t": "d", "x": 0o700})}, lambda p: "h-" + p, {})
    assert [p for p, _d, _e in plan.meta] == ["d"]


def test_chmod_there_and_touch_here_both_survive(local_remote: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = devices(monkeypatch, tmp_path, local_remote, {"f.txt": "same"})
    os.chmod(a / "f.txt", 0o755)
    a.cg("push")
    os.utime(b / "f.txt", ns=(1_500_000_000_000_000_000,) * 2)
    b.cg("pull")
    assert mode(b / "f.txt") == 0o755
    assert (b / "f.txt").stat().st_mtime_ns == 1_500_000_000_000_000_000
    b.cg("push")
    a.cg("pull")
    assert (a / "f.txt").stat().st_mtime_ns == 1_500_000_000_000_000_000
    in_sync(a, b)
