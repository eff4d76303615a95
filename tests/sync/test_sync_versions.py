"""Which versions a push replaces (issue 8, items 8, 11 and 12), with two devices on a real
local rclone remote: a delete is never undone by an identical sibling, and a concurrent edit
this device never saw is never replaced silently."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import cg, cg_json, share


def entries(folder: Path) -> list[Path]:
    """What the user sees in the folder: everything but cloudguard's own marker folder."""
    return sorted(p for p in folder.iterdir() if p.name != ".cloudguard")


def test_a_delete_after_identical_concurrent_edits_stays_deleted(local_remote: str,
                                                                  tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("draft")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "doc.txt").write_text("final")  # the same edit on both devices, pushed at once
    (b / "doc.txt").write_text("final")
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert sorted(p.name for p in entries(a)) == ["doc.txt"]  # no conflict copy
    (a / "doc.txt").unlink()
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert not (a / "doc.txt").exists()
    assert not (b / "doc.txt").exists()
    got = cg_json("status", "--folder", str(b))
    assert (got["to_push"], got["to_pull"], got["files"]) == ([], [], 0)


def test_an_edit_does_not_replace_a_concurrent_edit_it_never_saw(local_remote: str,
                                                                 tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("draft")
    share(local_remote, a, b, tmp_path / "kit.json")
    (b / "doc.txt").write_text("b's edit")
    cg("push", "--folder", str(b))
    (a / "doc.txt").write_text("a's edit")  # a has not pulled b's edit
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(a))
    cg("pull", "--folder", str(b))
    texts = sorted(p.read_text() for p in entries(a))
    assert texts == ["a's edit", "b's edit"], texts
    assert sorted(p.read_text() for p in entries(b)) == texts


def test_a_touch_does_not_win_over_a_concurrent_real_edit(local_remote: str,
                                                          tmp_path: Path) -> None:
    """Device a only touches the file (a newer mtime, same content); b edits it. b's content
    keeps the name; a's old content is the conflict copy, named after its writer."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("original")
    share(local_remote, a, b, tmp_path / "kit.json", names=("alpha", "beta"))
    (b / "doc.txt").write_text("beta's real edit")
    os.utime(b / "doc.txt", (1_000_000_000, 1_000_000_000))  # and an old clock at that
    cg("push", "--folder", str(b))
    os.utime(a / "doc.txt")  # touch: now
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert (a / "doc.txt").read_text() == "beta's real edit"
    copies = [p for p in entries(a) if p.name != "doc.txt"]
    assert len(copies) == 1 and "alpha" in copies[0].name, copies
    assert copies[0].read_text() == "original"
    assert sorted(p.name for p in entries(b)) == sorted(p.name for p in entries(a))


def test_a_conflict_copy_names_the_writer_not_the_resolver(local_remote: str,
                                                           tmp_path: Path) -> None:
    """Three devices: a and b edit at once; c resolves the conflict first. The copy names
    the device whose edit it holds, and a conflicted folder gets a real date."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.mkdir()
    (a / "doc.txt").write_text("original")
    share(local_remote, a, b, tmp_path / "kit.json", names=("alpha", "beta"))
    cg("clone", local_remote, str(c), "--key-file", str(tmp_path / "kit.json"),
       "--name", "gamma")
    (a / "doc.txt").write_text("alpha's edit")
    (b / "doc.txt").write_text("beta's edit")
    (a / "thing").mkdir()  # a folder here, a file there
    (b / "thing").write_text("a file")
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(c))  # c resolves and pushes the resolution
    cg("push", "--folder", str(c))
    cg("pull", "--folder", str(a))
    names = sorted(p.name for p in entries(a))
    copies = [n for n in names if "conflict" in n]
    assert len(copies) == 2, names
    assert not any("gamma" in n for n in copies), names
    assert not any("1970" in n for n in copies), names


def test_a_renamed_folder_is_moved_without_an_upload(local_remote: str, tmp_path: Path) -> None:
    """Issue 9, item 5: a folder rename with a big file in it uploads < 1 MiB, and the other
    device gets the same tree; the old path stays in the version history."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "reports").mkdir(parents=True)
    big = os.urandom(6 * 1024 * 1024)
    (a / "reports" / "big.bin").write_bytes(big)
    (a / "reports" / "small.txt").write_text("small")
    (a / "same-size.bin").write_bytes(os.urandom(len(big)))  # a size twin: not a rename
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "reports").rename(a / "archive 2026")
    (a / "dup.txt").write_text("small")  # same content as a vanished file, only one can be it
    got = cg_json("push", "--folder", str(a))
    assert got["bytes_uploaded"] < 1024 * 1024, got
    assert got["renamed"] == {"reports/big.bin": "archive 2026/big.bin",
                              "reports/small.txt": "archive 2026/small.txt"}
    assert got["deleted"] == ["reports"]
    cg("pull", "--folder", str(b))
    assert (b / "archive 2026" / "big.bin").read_bytes() == big
    assert (b / "dup.txt").read_text() == "small"
    assert not (b / "reports").exists()
    assert len(cg_json("history", "reports/big.bin", "--folder", str(b))["versions"]) == 1
    cg("verify", "--read-data", "--folder", str(b))


def test_an_edit_that_keeps_size_and_mtime_is_pushed(local_remote: str, tmp_path: Path) -> None:
    """Issue 9, item 3: the same size and a restored mtime (a tool that preserves mtimes, or
    an edit in the same second) still moves ctime, so the edit is pushed, as git would."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    doc = a / "doc.txt"
    doc.write_text("version A")
    share(local_remote, a, b, tmp_path / "kit.json")
    before = doc.stat()
    doc.write_text("version B")  # same length
    os.utime(doc, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (doc.stat().st_size, doc.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    got = cg_json("push", "--folder", str(a))
    assert got["uploaded"] == ["doc.txt"], got
    cg("pull", "--folder", str(b))
    assert (b / "doc.txt").read_text() == "version B"


def test_a_racily_clean_row_is_hashed_again(local_remote: str, tmp_path: Path) -> None:
    """A file synced within moments of its last change is stored as racily clean (ctime 0):
    the next push hashes it instead of trusting the stat, refreshes the row once the file has
    settled, and uploads nothing."""
    from cloudguard import state

    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("fresh")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))

    def row() -> state.IndexRow:
        index = state.Index(state.find_binding(str(a)).dir / "index.db")
        try:
            return index.rows()["doc.txt"]
        finally:
            index.close()

    assert row().ctime == 0  # written right after the file was: racy
    time.sleep(2.1)
    got = cg_json("push", "--folder", str(a))
    assert got["uploaded"] == [] and got["updated"] == [], got
    assert row().ctime == (a / "doc.txt").stat().st_ctime_ns


def test_a_fresh_clone_does_not_let_old_local_copies_take_the_names(
        local_remote: str, tmp_path: Path) -> None:
    """Issue 8, item 11: cloning into a folder that holds older copies. A copy whose content is
    a version the vault kept is simply replaced; an unknown one moves aside as a conflict copy;
    the vault's version keeps the name either way."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "plan.txt").write_text("plan v1")
    (a / "notes.txt").write_text("notes from the vault")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    (a / "plan.txt").write_text("plan v2")
    cg("push", "--folder", str(a))
    cg("key", "export", str(tmp_path / "kit.json"), "--folder", str(a), "--choose-passphrase")
    b.mkdir()
    (b / "plan.txt").write_text("plan v1")  # an old copy, say from a backup
    (b / "notes.txt").write_text("notes typed here")  # not a version the vault knows
    cg("clone", local_remote, str(b), "--key-file", str(tmp_path / "kit.json"))
    assert (b / "plan.txt").read_text() == "plan v2"
    assert (b / "notes.txt").read_text() == "notes from the vault"
    copies = [p for p in entries(b) if "conflict" in p.name]
    assert [p.read_text() for p in copies] == ["notes typed here"], copies
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "plan.txt").read_text() == "plan v2"
    assert (a / "notes.txt").read_text() == "notes from the vault"


def test_a_re_clone_after_lost_state_does_not_bring_deleted_files_back(
        local_remote: str, tmp_path: Path) -> None:
    import shutil

    from cloudguard import state

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "keep.txt").write_text("keep")
    (a / "old.txt").write_text("deleted later")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "old.txt").unlink()
    cg("push", "--folder", str(a))
    shutil.rmtree(state.find_binding(str(b)).dir)  # b's local state is lost
    cg("clone", local_remote, str(b), "--key-file", str(tmp_path / "kit.json"))
    assert not (b / "old.txt").exists()
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert not (a / "old.txt").exists()
    assert (a / "keep.txt").read_text() == "keep"
