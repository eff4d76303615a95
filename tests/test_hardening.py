"""Local hardening (issue 7, item 8): what a planted file, a forged mode or an oversized or
deeply nested object on the remote can make this device do. Each case is refused or
neutralised, and names the object it refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from helpers import cg

from cloudguard.state import write_private


def test_write_private_ignores_a_symlink_planted_at_the_old_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "binding.json"
    (tmp_path / "binding.json.tmp").symlink_to(victim)
    write_private(target, b"new state")
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and target.read_bytes() == b"new state"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binding.json", "binding.json.tmp",
                                                          "victim"]


def test_kit_export_is_not_redirected_by_a_planted_symlink(local_remote: str,
                                                           tmp_path: Path) -> None:
    a, kit, victim = tmp_path / "a", tmp_path / "kit.json", tmp_path / "victim.txt"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    victim.write_text("someone else's file")
    os.symlink(victim, tmp_path / "kit.json.tmp")
    cg("key", "export", str(kit), "--folder", str(a))
    assert victim.read_text() == "someone else's file"
    assert not kit.is_symlink() and b"recovery-kit" in kit.read_bytes()
    assert stat.S_IMODE(kit.stat().st_mode) == 0o600
