"""Which versions a push replaces (issue 8, items 8, 11 and 12), with two devices on a real
local rclone remote: a delete is never undone by an identical sibling, and a concurrent edit
this device never saw is never replaced silently."""

from __future__ import annotations

from pathlib import Path

from helpers import cg, cg_json, share


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
    assert sorted(p.name for p in a.iterdir()) == ["doc.txt"]  # no conflict copy
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
    texts = sorted(p.read_text() for p in a.iterdir())
    assert texts == ["a's edit", "b's edit"], texts
    assert sorted(p.read_text() for p in b.iterdir()) == texts
