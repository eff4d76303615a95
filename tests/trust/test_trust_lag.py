"""A device that writes while it has not seen a re-encryption (a lag or a freeze), under a
key the re-encryption then deleted. Played like tests/trust/test_trust_attacks.py: every device has
its own CLOUDGUARD_HOME, and the test is the provider showing one device an older remote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_trust_attacks import (
    Provider,
    make_vault,
    provider,  # noqa: F401 (a fixture)
    script_restores,
)
from test_trust_removers import paper_everywhere

__all__ = ["provider"]


def test_a_push_made_while_a_reencryption_was_hidden_stops_no_one_and_goes_up_again(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A removes X with `--reencrypt`, which deletes the old key object. B, kept from seeing
    that, pushes b.txt under the old key. No device can open that segment any more: it used
    to be an integrity failure (exit 3) on every device for good. Now readers wait for it,
    and B, once it sees the re-encryption, uploads b.txt again from its folder under the
    current key."""
    a, b, c, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                                  "a", "b", "c", "x")
    old = provider.objects()
    got = a.run("device", "remove", x.rid, "--reencrypt")
    assert got.exit_code == 0, got.output
    with provider.showing(old):
        b.write("b.txt", "B while lagging")
        assert b.run("push").exit_code == 0
    got = c.run("pull")
    assert got.exit_code == 0, got.output
    assert "cannot open any more" in got.output and b.rid in got.output
    got = b.run("push")
    assert got.exit_code == 0, got.output
    assert "b.txt: its key went with a re-encryption" in got.output
    for dev in (c, a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        assert (dev.folder / "b.txt").read_text() == "B while lagging", dev.name
        assert (dev.folder / "paper.txt").read_text() == "original", dev.name
    assert b.json("verify", "--read-data")["ok"]
    assert (script_restores(a, local_remote, tmp_path) / "b.txt").read_text() == \
        "B while lagging"


def test_two_reencryptions_at_once_keep_each_others_history(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W4: A and B each run `key rotate --reencrypt`, B not seeing A's. No
    member is out, so neither ends the history under the other's key: after the merge, the
    version replaced by the next edit is still in the history on both devices."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    a.write("paper.txt", "first")
    a.cg("push")
    b.cg("pull")
    old = provider.objects()
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    with provider.showing(old):
        got = b.run("key", "rotate", "--reencrypt")
        assert got.exit_code == 0, got.output
    for dev in (a, b, a):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
    a.write("paper.txt", "second")
    assert a.run("push").exit_code == 0
    for dev in (a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        versions = dev.json("history", "paper.txt")["versions"]
        texts = []
        for v in (v for v in versions if not v["current"]):
            got = dev.run("restore", "paper.txt", "--version", v["version"], "--force")
            assert got.exit_code == 0, got.output
            texts.append((dev.folder / "paper.txt").read_text())
        assert "first" in texts, (dev.name, versions, texts)
        dev.write("paper.txt", "second")  # as it was, for the next device's check
        assert dev.run("push").exit_code == 0


def test_a_snapshot_under_a_key_a_reencryption_ended_is_no_rollback_and_is_written_again(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """B, kept from seeing A's `device remove X --reencrypt`, compacts: its snapshot is sealed
    under the key the re-encryption deleted, and it wrote no version of its own. No one can
    read that snapshot. B's own `verify` (a fresh rebuild) used to call that a rollback
    (exit 3) until B's next compaction; it now says what it is, and B's next push writes a
    snapshot under the current key, which everyone reads."""
    a, b, c, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                                  "a", "b", "c", "x")
    old = provider.objects()
    got = a.run("device", "remove", x.rid, "--reencrypt")
    assert got.exit_code == 0, got.output
    with provider.showing(old) as by_b:
        from test_trust_attacks import compact
        compact(b)
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    got = b.run("verify")
    assert got.exit_code == 0, got.output
    assert "a re-encryption ended" in got.output
    got = b.run("push")
    assert got.exit_code == 0, got.output
    for dev in (b, c, a):
        got = dev.run("verify")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        assert "a re-encryption ended" not in got.output, dev.name
        assert (dev.folder / "paper.txt").read_text() == "original"
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"
