"""Review round 6, U4: a member that a removed member's backdated removal takes out gets its
work back in one command, and a re-encryption does not end it.

Played like tests/trust/test_trust_attacks.py: every device has its own CLOUDGUARD_HOME, and the
test is the provider, forging a removed member's backdated removal with its real key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import (
    Dev,
    Provider,
    backdated_removal,
    compact,
    make_vault,
    provider,  # noqa: F401 (a fixture)
    pulled_everywhere,
    vault_id_of,
    x_edits_late,
    x_removed_by_a,
)

__all__ = ["provider"]


def b_taken_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                p: Provider, retired: bool = False,
                after_b: Callable[[Dev], None] | None = None) -> tuple[Dev, Dev, Dev, Dev]:
    """A removes X. B then edits A's doc.txt twice, writes its own notes.txt, edits
    shared.txt (which A edits again over B's version) and deletes gone.txt. X signs, on the
    parent of its removal, a removal of B with cutoff 0: challenged, yet B is out and every
    dot of B is late (``retired``: A removed B first, counting). C looks on. ``after_b``
    runs on B after its pushes (a compaction, say)."""
    a, b, x, c = make_vault(monkeypatch, tmp_path, remote, "a", "b", "x", "c")
    vid = vault_id_of(a)
    a.cg("device", "remove", x.rid)
    view = p.view(vid)
    parent, xs = view.commits[str(view.head.parent)], x.secret()
    a.write("shared.txt", "A's first")
    a.write("gone.txt", "A's file that B deletes")
    a.write("kept.txt", "A's file that A edits after the rollback")
    assert a.run("push").exit_code == 0
    b.cg("pull")
    b.write("doc.txt", "B's first edit")
    b.write("notes.txt", "B's own notes")
    b.write("shared.txt", "B's edit that A replaces")
    b.write("kept.txt", "B's edit, replaced by A after the rollback")
    assert b.run("push").exit_code == 0
    b.write("doc.txt", "B's newest edit")
    (b.folder / "gone.txt").unlink()
    assert b.run("push").exit_code == 0
    if after_b is not None:
        after_b(b)
    a.cg("pull")
    assert (a.folder / "doc.txt").read_text() == "B's newest edit"
    a.write("shared.txt", "A's edit over B's")
    assert a.run("push").exit_code == 0
    c.cg("pull")
    if retired:  # A retires B first, honestly: a counting removal vouching for all B wrote
        a.cg("device", "remove", b.rid)
    backdated_removal(p, view, parent, xs, x.rid, b.rid)
    return a, b, x, c


def test_a_member_taken_out_by_a_backdated_removal_gets_its_work_back(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """B's edits roll back on A and its delete comes back. ``restore --late-of B`` brings
    back B's newest version of every path, except where an honest member wrote since (A's
    edit over B's, before the attack, and A's edit of a rolled-back file after it), names
    the challenged removal, asks nothing, and the push makes it current everywhere."""
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    got = a.run("pull")
    assert got.exit_code == 0, got.output
    assert (a.folder / "doc.txt").read_text() == "original", "B's edit did not roll back"
    assert not (a.folder / "notes.txt").exists()
    assert (a.folder / "gone.txt").read_text() == "A's file that B deletes"
    assert (a.folder / "shared.txt").read_text() == "A's edit over B's"
    assert (a.folder / "kept.txt").read_text() == "A's file that A edits after the rollback"
    a.write("kept.txt", "A's edit after the rollback")
    assert a.run("push").exit_code == 0
    before = a.run("restore", "doc.txt", "--before", "1s")
    assert (a.folder / "doc.txt").read_text() == "original", before.output
    result = a.json("restore", "--late-of", "b")
    assert result["late_of"]["id"] == b.rid and result["late_of"]["name"] == "b"
    assert result["counting"] is False
    assert [(r["challenged"], r["cutoff"]) for r in result["removals"]] == [(True, 0)]
    assert sorted(result["restored"]) == ["doc.txt", "notes.txt"]
    assert sorted(r["path"] for r in result["replaced_since"]) == ["kept.txt", "shared.txt"]
    assert (a.folder / "doc.txt").read_text() == "B's newest edit"
    assert (a.folder / "notes.txt").read_text() == "B's own notes"
    assert (a.folder / "shared.txt").read_text() == "A's edit over B's"
    assert (a.folder / "kept.txt").read_text() == "A's edit after the rollback"
    assert a.run("push").exit_code == 0
    history = a.json("history", "doc.txt")["versions"]
    assert history[-1]["current"] and history[-1]["device"] == "a", history
    # a second run finds everything as restored
    again = a.json("restore", "--late-of", b.rid)
    assert again["restored"] == [] and sorted(again["unchanged"]) == ["doc.txt", "notes.txt"]
    pulled_everywhere([a, c], "doc.txt", "B's newest edit", local_remote, tmp_path)
    assert (c.folder / "notes.txt").read_text() == "B's own notes"


def test_a_snapshot_carries_the_late_versions_of_a_member_taken_out(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A compacts after the clamp: its snapshot carries B's late versions (B's second edit
    of doc.txt replaced its first, a removal by a dot that the clamped vector does not
    cover), and C, which takes the snapshot in, restores them too."""
    a, _b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    compact(a)
    got = c.run("pull")
    assert got.exit_code == 0, got.output
    assert (c.folder / "doc.txt").read_text() == "original"
    result = c.json("restore", "--late-of", "b")
    assert sorted(result["restored"]) == ["doc.txt", "kept.txt", "notes.txt"]
    assert (c.folder / "doc.txt").read_text() == "B's newest edit"


def test_restore_late_of_keeps_a_local_change(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file changed locally and never pushed is not overwritten without --force."""
    a, _b, _x, _c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    a.write("doc.txt", "A's unpushed change")
    got = a.run("restore", "--late-of", "b")
    assert got.exit_code == 1, got.output
    assert (a.folder / "doc.txt").read_text() == "A's unpushed change"
    assert (a.folder / "notes.txt").read_text() == "B's own notes"
    forced = a.run("restore", "--late-of", "b", "doc.txt", "--force")
    assert forced.exit_code == 0, forced.output
    assert (a.folder / "doc.txt").read_text() == "B's newest edit"


def test_restore_late_of_a_really_removed_member_asks_first(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X, removed by A (a counting removal), edits paper.txt late; frozen B applies it and
    compacts. Those may be a thief's writes: ``restore --late-of X`` names A's removal and
    refuses without a terminal unless --yes."""
    (a, b, x), frozen = x_edits_late(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(frozen):
        b.cg("pull")
        compact(b)
    assert a.run("pull").exit_code == 0
    assert (a.folder / "paper.txt").read_text() == "original"
    refused = a.run("restore", "--late-of", x.rid)
    assert refused.exit_code == 2, refused.output
    assert "--yes" in refused.output and "removed by a" in refused.output
    assert (a.folder / "paper.txt").read_text() == "original"
    got = a.run("restore", "--late-of", "x", "--yes", "--json")
    assert got.exit_code == 0, got.output
    result = json.loads(got.stdout)
    assert result["counting"] is True and result["restored"] == ["paper.txt"]
    assert [(r["by"], r["challenged"]) for r in result["removals"]] == [("a", False)]
    assert (a.folder / "paper.txt").read_text() == "rewritten by the removed device"
    # a re-encryption keeps no late version of a member an honest one removed, and says so
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    assert "forgets the versions of 1 files" in got.output and "keeps" not in got.output
    assert not [v for v in a.json("history", "paper.txt")["versions"] if v["late"]]


def test_restore_late_of_a_member_that_is_not_removed_is_refused(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    (a, b, _x), *_rest = x_removed_by_a(monkeypatch, tmp_path, local_remote, provider)
    got = a.run("restore", "--late-of", "b")
    assert got.exit_code == 2 and "not removed" in got.output, got.output
    got = a.run("restore", "--late-of", "nobody")
    assert got.exit_code == 2 and "no device" in got.output, got.output
    got = a.run("restore", "--late-of", "b", "--version", "a:1", "doc.txt")
    assert got.exit_code == 2, got.output


def test_reencryption_keeps_the_late_versions_of_a_member_only_challenged_removals_took_out(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard response to a thief, ``key rotate --reencrypt``, must not end the work of
    the member the thief took out: B's late versions are re-encrypted and kept, on A and on
    a device that pulls afterwards, and still restore (their old objects are gone)."""
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    data = {n for n in provider.objects() if n.startswith("data/")}
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    assert "keeps the late versions of 4 files" in got.output and "forgets" not in got.output
    late = [v for v in a.json("history", "notes.txt")["versions"] if v["late"]]
    assert late, "the re-encryption forgot B's late versions"
    assert not data & {n for n in provider.objects() if n.startswith("data/")}, \
        "old ciphertext stayed"
    pulled = c.run("pull")
    assert pulled.exit_code == 0, pulled.output
    assert [v for v in c.json("history", "notes.txt")["versions"] if v["late"]]
    for dev in (a, c):  # names were sealed under the old keys, which went: the id
        result = dev.json("restore", "--late-of", b.rid[:8])
        assert sorted(result["restored"]) == ["doc.txt", "kept.txt", "notes.txt"], dev.name
        assert (dev.folder / "notes.txt").read_text() == "B's own notes"
        assert (dev.folder / "doc.txt").read_text() == "B's newest edit"


def test_the_question_comes_before_anything_is_restored() -> None:
    """On a terminal the user is asked; no means nothing restored, and a challenged-only
    removal asks nothing."""
    from types import SimpleNamespace

    import msgspec

    from cloudguard.errors import UsageError
    from cloudguard.ops import late
    from cloudguard.results import LateMember, LateRemovals, Removal
    from cloudguard.session import UI

    info = LateRemovals(late_of=LateMember(id="b" * 16, name="b"), ghost=False, counting=True,
                        cutoff=4, removals=[Removal(commit="keys/3", by="a", by_id="a" * 16,
                                                    cutoff=4, challenged=False)])
    asked: list[str] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False
    s: Any = SimpleNamespace(ui=UI(confirm=no))
    with pytest.raises(UsageError, match="nothing was restored"):
        late.confirm(s, info, False)
    assert "removed by a in keys/3 with cutoff 4 (counting)" in asked[0]
    s.ui = UI(confirm=lambda _q: True)
    late.confirm(s, info, False)
    s.ui = UI()
    late.confirm(s, info, True)
    late.confirm(s, msgspec.structs.replace(info, counting=False), False)  # challenged only
    with pytest.raises(UsageError, match="no terminal"):
        late.confirm(s, info, False)


def test_a_late_version_that_cannot_be_read_does_not_stop_a_reencryption(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W5 (c): the late versions of a member that only challenged removals
    took out are re-encrypted and kept; one whose blob is junk (a removed member's, or
    damaged) is left under its old key, ends with it, and is named. The re-encryption
    finishes: the old key objects and ciphertext must not stay readable for ever."""
    import os

    from cloudguard import vault

    a, b, _x, _c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    a.use()
    with vault.session(str(a.folder)) as s:
        live = {e["o"] for _p, sibs in s.state.items() for e in sibs.values() if "o" in e}
        late = {e["o"] for _p, d, e, _g in s.state.attic()
                if d.startswith(b.rid + ":") and "o" in e} - live
    assert late
    for o in late:
        provider.put(f"data/{o}", os.urandom(len(provider.get(f"data/{o}"))))
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    assert "could not be read" in got.output and "ends with the old keys" in got.output
    st = a.json("status")
    assert "reencryption" in st and st["reencryption"] is None, st
    assert (a.folder / "doc.txt").read_text() == "original"
    assert a.json("verify", "--read-data")["ok"]


def test_a_retired_members_work_is_kept_whole_when_a_thief_lowers_its_cutoff(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W3: A retires B honestly (a counting removal, which vouches for all of
    B's work); X, already removed, signs a backdated removal of B with cutoff 0, so every dot
    of B is late. B's vouched work is neither capped nor ended: a re-encryption re-encrypts
    and keeps it, and it still restores on every device."""
    a, b, _x, c = b_taken_out(monkeypatch, tmp_path, local_remote, provider, retired=True)
    assert a.run("pull").exit_code == 0
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    assert "keeps the late versions of" in got.output and "forgets" not in got.output
    assert [v for v in a.json("history", "notes.txt")["versions"] if v["late"]]
    pulled = c.run("pull")
    assert pulled.exit_code == 0, pulled.output
    for dev in (a, c):
        result = dev.json("restore", "--late-of", b.rid[:8], "--yes")
        assert "notes.txt" in result["restored"], (dev.name, result)
        assert (dev.folder / "notes.txt").read_text() == "B's own notes"
        assert (dev.folder / "doc.txt").read_text() == "B's newest edit"


def test_the_recovery_script_restores_the_history_and_a_taken_out_members_work(
        local_remote: str, provider: Provider, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7 (round 7, V1, the rest): without cloudguard, `--history DIR` writes every
    earlier version that can still be read, including the late versions of a member a
    backdated removal took out, which the current tree leaves out."""
    from test_trust_attacks import run_script

    a, b, _x, _c = b_taken_out(monkeypatch, tmp_path, local_remote, provider)
    assert a.run("pull").exit_code == 0
    for text in ("first", "second"):
        a.write("honest.txt", text)
        assert a.run("push").exit_code == 0
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, local_remote, tmp_path / "out", "--history", str(tmp_path / "h"))
    assert got.returncode == 0, got.stderr
    assert not (tmp_path / "out" / "notes.txt").exists()  # B's work is late: not current
    texts = {p.relative_to(tmp_path / "h").parent.as_posix(): [] for p in
             (tmp_path / "h").rglob("*") if p.is_file()}
    for p in (tmp_path / "h").rglob("*"):
        if p.is_file():
            texts[p.relative_to(tmp_path / "h").parent.as_posix()].append(p.read_text())
    assert "B's own notes" in texts["notes.txt"], texts
    assert {"B's first edit", "B's newest edit"} <= set(texts["doc.txt"]), texts
    assert texts["honest.txt"] == ["first"], texts
    assert (tmp_path / "out" / "honest.txt").read_text() == "second"
    assert "restored" in got.stdout and "earlier file versions" in got.stdout
    assert b.rid[:8] in " ".join(p.name for p in (tmp_path / "h" / "notes.txt").iterdir())
