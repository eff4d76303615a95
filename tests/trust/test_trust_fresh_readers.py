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
from test_trust_conflicts import LATE, _texts, x_removed
from test_trust_late_restore import b_taken_out

from cloudguard import format as fmt
from cloudguard import manifest as mf
from cloudguard import session as cg_session
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


def _both_edit_and_all_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                            provider: Provider, lagging: dict[str, bytes], a: Dev, b: Dev,
                            e: Dev) -> dict[str, str]:
    """A edits paper.txt; B, shown ``lagging`` (X's late rewrite, not the removal), edits over
    X's version. Every reader (a fresh device, E, A, B) holds both edits and no LATE; returns
    what the recovery script restores."""
    assert a.run("pull").exit_code == 0
    a.write("paper.txt", "A's concurrent edit")
    assert a.run("push").exit_code == 0
    with provider.showing(lagging):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
        b.write("paper.txt", "B's edit over X's")
        assert b.run("push").exit_code == 0
    restored = _texts(script_restores(a, remote, tmp_path))
    d = _fresh_device(monkeypatch, tmp_path, remote, a)
    for reader in (d, e, a, b):
        got = reader.run("pull")
        assert got.exit_code == 0, got.output
        held = _texts(reader.folder)
        assert "A's concurrent edit" in held.values(), (reader.name, held)
        assert "B's edit over X's" in held.values(), (reader.name, held)
        assert LATE not in held.values(), (reader.name, held)
    return restored


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


def test_a_late_op_cannot_hide_an_honest_edit_it_never_saw(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 20, JJ1. X, removed, rewrites paper.txt late, and its op there also names
    in ``rm`` the dots A will write next (segment names make them predictable). A edits
    paper.txt; lagging B applies X's delta and edits over X's version without having seen
    A's edit. A reader that never applied X's delta (A, E, a fresh device, the script) reads
    X's op when B's removes X's dot (II2): it must count only what X had seen (its deps),
    or A's edit leaves every such reader's live tree, no conflict copy, no word."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    a.write("other.txt", "A's other file")  # A rewraps and compacts; E takes that snapshot
    assert a.run("push").exit_code == 0
    assert e.run("pull").exit_code == 0
    nxt = 1 + max(int(n.split("-")[-1].split(".")[0]) for n in _segments(local_remote)
                  if n.startswith(a.rid + "-"))
    future = [f"{a.rid}:{n}" for n in range(nxt, nxt + 6)]
    real = cg_session.Session.commit

    def naming_more(self: cg_session.Session, ops: list[Any]) -> Any:
        for op in ops:  # X's own client, its real key: its op also names A's future dots
            if op["p"] == "paper.txt":
                op["rm"] = [*op.get("rm", []), *future]
        return real(self, ops)

    with provider.showing(before) as late:
        monkeypatch.setattr(cg_session.Session, "commit", naming_more)
        x.write("paper.txt", LATE)
        x.cg("push")
        monkeypatch.setattr(cg_session.Session, "commit", real)
    restored = _both_edit_and_all_read(monkeypatch, tmp_path, local_remote, provider,
                                       {**before, **late}, a, b, e)
    assert "A's concurrent edit" in restored.values(), restored
    assert LATE not in restored.values(), restored


def test_a_late_op_cannot_hide_an_honest_edit_by_forging_its_deps(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 21, KK1. JJ1's bound counted what X's deps cover, and X signs its deps.
    X's late op names A's next dots and its deps claim them; X then compacts, so lagging B
    takes X's version through the late snapshot and never checks the delta's deps (the
    provider keeps the delta listed). A edits paper.txt, B edits over X's version. A reader
    that never took X's segments must count only what B, the honest editor, had seen too."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    a.write("other.txt", "A's other file")  # A rewraps and compacts; E takes that snapshot
    assert a.run("push").exit_code == 0
    assert e.run("pull").exit_code == 0
    nxt = 1 + max(int(n.split("-")[-1].split(".")[0]) for n in _segments(local_remote)
                  if n.startswith(a.rid + "-"))
    real = mf.delta_payload

    def forged(device: str, seq: int, deps: dict[str, int], prev: Any, ops: list[Any],
               dh: Any = None) -> Any:
        for op in ops:  # X's own client, its real key: it names A's next dots and claims them
            if op["p"] == "paper.txt":
                op["rm"] = [*op.get("rm", []), *(f"{a.rid}:{n}" for n in range(nxt, nxt + 6))]
        return real(device, seq, {**deps, a.rid: nxt + 5}, prev, ops, dh)

    with provider.showing(before) as late:
        monkeypatch.setattr(mf, "delta_payload", forged)
        x.write("paper.txt", LATE)
        x.cg("push")
        monkeypatch.setattr(mf, "delta_payload", real)
        name = mf.segment_name(x.rid, max(int(n.split("-")[-1].split(".")[0]) for n in
                                          _segments(local_remote)
                                          if n.startswith(x.rid + "-")), "d")
        kept = provider.get(name)
        compact(x)  # X's late snapshot covers its delta, which the compaction deletes
    late[name] = kept  # the provider lists it again: X signed it
    provider.put(name, kept)
    restored = _both_edit_and_all_read(monkeypatch, tmp_path, local_remote, provider,
                                       {**before, **late}, a, b, e)
    assert "A's concurrent edit" in restored.values(), restored


def test_what_a_late_edit_replaced_of_another_writer_leaves_every_reader_alike(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """II2 where the version the late edit replaced is not the honest editor's own: lagging B
    applied X's late rewrite of A's paper.txt and edits over it. B holds A's text in the
    history only; so must a reader that refused X's delta (B's delta names, in dh, the A
    segment it had applied: firm), a fresh device and the script."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
    with provider.showing({**before, **late}):
        assert b.run("pull").exit_code == 0
        assert (b.folder / "paper.txt").read_text() == LATE
        b.write("paper.txt", "B's edit over X's")
        assert b.run("push").exit_code == 0
    restored = _texts(script_restores(a, local_remote, tmp_path))
    d = _fresh_device(monkeypatch, tmp_path, local_remote, a)
    for reader in (d, e, a, b):
        got = reader.run("pull")
        assert got.exit_code == 0, got.output
        held = _texts(reader.folder)
        assert held == restored, (reader.name, held, restored)
    assert sorted(restored.values()).count("B's edit over X's") == 1, restored
    assert "original" not in (restored.get(k) for k in restored if k.startswith("paper")), \
        restored
