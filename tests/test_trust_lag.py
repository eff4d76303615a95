"""A device that writes while it has not seen a re-encryption (a lag or a freeze), under a
key the re-encryption then deleted. Played like tests/test_trust_attacks.py: every device has
its own CLOUDGUARD_HOME, and the test is the provider showing one device an older remote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_trust_attacks import (
    Provider,
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
