"""pull end to end against a real local remote: conflicts keep both versions, concurrent
pushes lose nothing, deletions propagate and local edits survive (moved from test_vault.py)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import cg, cg_json, share, tree


def test_conflicts_keep_both_versions(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("base")
    share(local_remote, a, b, kit)
    (a / "doc.txt").write_text("edit from a")
    (b / "doc.txt").write_text("edit from b, longer")
    cg("push", "--folder", str(a))
    pulled = cg_json("pull", "--folder", str(b))
    assert len(pulled["conflicts"]) == 1
    assert (b / "doc.txt").read_text() == "edit from b, longer"
    copy = b / pulled["conflicts"][0]
    assert copy.read_text() == "edit from a" and "(conflict " in copy.name
    assert copy.name.endswith(".txt")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert tree(a) == tree(b)


def test_concurrent_pushes_lose_nothing(local_remote: str, tmp_path: Path) -> None:
    """Both devices push without pulling: both versions survive, one as a conflict copy."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("base")
    share(local_remote, a, b, kit)
    (a / "doc.txt").write_text("version A")
    (b / "doc.txt").write_text("version B")
    (a / "only-a.txt").write_text("a")
    (b / "only-b.txt").write_text("b")
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    cg("pull", "--folder", str(b))
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    for side in (a, b):
        contents = sorted(p.read_text() for p in side.iterdir() if p.name != ".cloudguard")
        assert contents == ["a", "b", "version A", "version B"], side
    assert tree(a) == tree(b)


def test_deletions_propagate_and_local_edits_survive(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    for name in ("gone.txt", "kept.txt", "edited.txt"):
        (a / name).write_text(name)
    share(local_remote, a, b, kit)
    os.unlink(a / "gone.txt")
    os.unlink(a / "edited.txt")
    cg("push", "--folder", str(a))
    (b / "edited.txt").write_text("edited on b before the pull")
    cg("pull", "--folder", str(b))
    assert not (b / "gone.txt").exists()
    assert (b / "edited.txt").read_text() == "edited on b before the pull"
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "edited.txt").read_text() == "edited on b before the pull"
