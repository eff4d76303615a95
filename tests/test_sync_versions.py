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
