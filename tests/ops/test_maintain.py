"""Maintenance that push runs (ops/maintain.py): compaction of the manifest segments and
garbage collection, seen by the other devices (moved from test_vault.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cg, share, tree


def test_local_manifest_state_follows_compaction_and_survives_damage(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each device keeps the merged manifest in CLOUDGUARD_HOME and applies only new segments.
    It must track another device's compactions (which delete segments it already applied),
    and a damaged or missing copy is rebuilt from the remote."""
    from cloudguard import manifest as mf
    from cloudguard.ops import maintain
    from cloudguard.state import find_binding

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "base.txt").write_text("base")
    share(local_remote, a, b, kit)
    monkeypatch.setattr(maintain, "COMPACT_AFTER", 2)
    for i in range(5):
        (a / f"f{i}.txt").write_text(f"version {i}")
        if i % 2:
            (a / "base.txt").write_text(f"base {i}")
        cg("push", "--folder", str(a))
        if i in (1, 3):
            cg("pull", "--folder", str(b))
            assert tree(a) == tree(b)
    assert any(p.suffix == ".s" for p in (Path(local_remote) / "m").iterdir())  # compacted
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    db = find_binding(str(b)).dir / "manifest.db"
    state = mf.State(db)
    recorded = dict(state.items())
    state.close()
    assert set(recorded) == {"base.txt", *(f"f{i}.txt" for i in range(5))}
    db.write_bytes(b"this is not a database" * 100)
    (a / "after.txt").write_text("after damage")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    db.unlink()
    (b / "from-b.txt").write_text("b again")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert tree(a) == tree(b)
    cg("verify", "--folder", str(b))
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_stray_partial_uploads_are_ignored_then_collected(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a killed upload leaves (rclone's ``NAME.<hex>.partial``) must not stop any device,
    and the garbage collector removes it after the grace period."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("one")
    share(local_remote, a, b, kit)
    root = Path(local_remote)
    segment = sorted((root / "m").iterdir())[-1]
    strays = [root / "m" / f"{segment.name}x.1a2b3c4d.partial",
              root / "keys" / "00000009.5e6f7a8b.partial"]
    for stray in strays:
        stray.write_bytes(segment.read_bytes()[:100])
    (a / "doc.txt").write_text("two")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    assert all(s.exists() for s in strays)  # within the grace period: left alone
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    (a / "doc.txt").write_text("three")
    cg("push", "--folder", str(a))
    assert not any(s.exists() for s in strays)
    cg("verify", "--folder", str(b))
