"""A reader that joins after a backdated removal (a fresh device, the recovery script) reads
the vault as the devices that watched it happen do (II1, II2; round 19's HH4).

Played like tests/trust/test_trust_attacks.py: every device has its own CLOUDGUARD_HOME, and
the test is the provider, forging X's backdated removal of B with X's real key
(test_trust_late_restore.b_taken_out). The layout of the remote is decided, never left to
chance: whether B's push compacts depends on which of two copies of a rewrapped entry it
keeps, a tie broken by random key bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import cg
from test_trust_attacks import (
    Dev,
    Provider,
    compact,
    provider,  # noqa: F401 (a fixture)
    run_script,
    script_restores,
    vault_id_of,
)
from test_trust_conflicts import _texts
from test_trust_late_restore import b_taken_out

from cloudguard import format as fmt
from cloudguard.manifest import attic

__all__ = ["provider"]


def _no_chance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies of one version that differ only in their key wrap (A's rewrap at its
    rotation, B's older copy): B keeps the one it is handed, so its first push finds nothing
    under an old key and does not compact."""
    real = attic.newer_location

    def newer(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
        if (one.get("r", 0), one.get("o")) == (two.get("r", 0), two.get("o")):
            return two
        return real(one, two)

    monkeypatch.setattr(attic, "newer_location", newer)


def _segments(remote: str) -> list[str]:
    return sorted(os.listdir(Path(remote) / "m"))


def _fresh_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                  approver: Dev) -> Dev:
    """D enrols now, approved by ``approver``, and pulls."""
    d = Dev(monkeypatch, tmp_path, "d")
    code = fmt.vault_code(vault_id_of(approver))
    d.use()
    req = json.loads(cg("clone", remote, str(d.folder), "--vault-code", code, "--name", "d",
                        "--json").stdout)
    d.rid = req["device"]
    approver.cg("device", "approve", req["fingerprint"], "--yes")
    return d


def test_a_late_snapshot_that_was_the_only_base_is_replaced_by_a_members_next_pull(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """II1: B compacted (its snapshot replaced A's first segments), then X's backdated
    removal made every segment of B late. A reader that never held the vault refuses B's
    snapshot and has no base for A's later segments: the script says why in one line
    (exit 3). A's next pull writes a snapshot of its own; after it a fresh device and the
    script read what A and C hold."""
    _no_chance(monkeypatch)
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider, after_b=compact)
    segs = _segments(local_remote)
    assert f"{b.rid}-000000000003.s" in segs  # B's snapshot replaced A's first segments
    assert [n for n in segs if n.startswith(a.rid)] == [f"{a.rid}-000000000005.d"], segs
    kit = tmp_path / "kit.json"
    c.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, local_remote, tmp_path / "early")
    assert got.returncode == 3, got.stderr
    assert b.rid in got.stderr and "after its removal" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    for dev in (c, a, c):
        got_pull = dev.run("pull")
        assert got_pull.exit_code == 0, got_pull.output
    held = _texts(c.folder)
    assert held == _texts(a.folder)
    assert held["shared.txt"] == "A's edit over B's" and "notes.txt" not in held
    assert _texts(script_restores(c, local_remote, tmp_path, kit)) == held
    d = _fresh_device(monkeypatch, tmp_path, local_remote, a)
    got_pull = d.run("pull")
    assert got_pull.exit_code == 0, got_pull.output
    assert _texts(d.folder) == held
    before = _segments(local_remote)
    for dev in (a, c, a):  # healed once: no snapshot at every run
        assert dev.run("pull").exit_code == 0
    assert _segments(local_remote) == before


def test_a_fresh_reader_keeps_out_what_an_honest_edit_of_a_late_version_replaced(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """II2 (round 19's HH4, which is not the script's alone): A's edit of B's shared.txt
    removed B's version, which had replaced "A's first". Devices that applied B's delta keep
    "A's first" in the history (an honest edit of a late version stands); a reader that
    never applies B's late delta saw A's edit remove nothing and kept "A's first" live as
    a conflict copy. A fresh device and the script now read what A and C hold."""
    _no_chance(monkeypatch)
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    segs = _segments(local_remote)
    assert not any(n.startswith(b.rid) and n.endswith(".s") for n in segs), segs
    for dev in (c, a, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
    held = _texts(c.folder)
    assert held == _texts(a.folder)
    assert held["shared.txt"] == "A's edit over B's"
    assert "A's first" not in held.values()
    assert _texts(script_restores(c, local_remote, tmp_path)) == held
    d = _fresh_device(monkeypatch, tmp_path, local_remote, a)
    got = d.run("pull")
    assert got.exit_code == 0, got.output
    assert _texts(d.folder) == held
