"""Version history (issue 8, item 5): replaced and deleted versions stay restorable for the
folder's keep_days, on every device, and garbage collection keeps what history names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import cg, cg_json, cg_proc, share

from cloudguard.errors import UsageError
from cloudguard.ops import history


def _tick() -> None:
    """Versions are timed in whole seconds: let one pass between phases."""
    time.sleep(1.1)


def test_restore_undoes_an_encrypted_and_pushed_folder_on_every_device(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ransomware rewrites every file and deletes one; the daemon (here: push) syncs it to
    every device. A restore to before the attack brings all of it back, everywhere."""
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")  # garbage goes at once: history must hold
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "report.docx").write_text("report v1")
    (a / "sub").mkdir()
    (a / "sub" / "budget.xlsx").write_text("budget v1")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "report.docx").write_text("report v2, the real one")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    _tick()
    good = int(time.time())
    _tick()
    (a / "report.docx").write_text("ENCRYPTED BY RANSOMWARE")
    (a / "sub" / "budget.xlsx").unlink()
    (a / "ransom-note.txt").write_text("pay us")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert not (b / "sub" / "budget.xlsx").exists()
    versions = cg_json("history", "report.docx", "--folder", str(b))["versions"]
    assert [v["current"] for v in versions] == [False, False, True]
    assert all(v["pushed"] for v in versions)
    got = cg_json("restore", "--before", time.strftime("%Y-%m-%dT%H:%M:%S",
                                                       time.localtime(good)),
                  "--folder", str(b))
    assert got["restored"] == ["report.docx", "sub/budget.xlsx"]
    assert got["not_present_then"] == ["ransom-note.txt"]
    assert (b / "report.docx").read_text() == "report v2, the real one"
    assert (b / "sub" / "budget.xlsx").read_text() == "budget v1"
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "report.docx").read_text() == "report v2, the real one"
    assert (a / "sub" / "budget.xlsx").read_text() == "budget v1"
    # the attacked version is history now, restorable in turn
    after = cg_json("history", str(a / "report.docx"), "--folder", str(a))["versions"]
    assert len(after) == 4 and after[-1]["current"]
    cg("verify", "--read-data", "--folder", str(a))


def test_restore_one_version_and_refuse_unpushed_changes(local_remote: str, tmp_path: Path
                                                         ) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "notes.txt").write_text("first")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "notes.txt").write_text("second")
    cg("push", "--folder", str(a))
    first = cg_json("history", "notes.txt", "--folder", str(a))["versions"][0]
    assert not first["current"] and first["replaced"]
    (a / "notes.txt").write_text("third, never pushed")
    out = cg_proc("restore", "notes.txt", "--version", first["version"], "--folder", str(a))
    assert out.returncode == 1 and "never pushed" in out.stderr, out.stderr
    assert (a / "notes.txt").read_text() == "third, never pushed"
    cg("restore", "notes.txt", "--version", first["version"], "--force", "--folder", str(a))
    assert (a / "notes.txt").read_text() == "first"
    bad = cg_proc("restore", "notes.txt", "--version", "ffffffffffffffff:9", "--folder", str(a))
    assert bad.returncode == 2 and "no version ffffffffffffffff:9" in bad.stderr
    both = cg_proc("restore", "notes.txt", "--folder", str(a))
    assert both.returncode == 2 and "--before TIME or --version ID" in both.stderr
    outside = cg_proc("history", "/etc/passwd", "--folder", str(a))
    assert outside.returncode == 2 and "is not inside" in outside.stderr


def test_history_keeps_objects_until_keep_days_then_collects_them(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    a = tmp_path / "a"
    a.mkdir()
    (a / "big.bin").write_bytes(b"x" * 300_000)
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    objects = set((Path(local_remote) / "data").iterdir())
    (a / "big.bin").write_bytes(b"y" * 300_000)
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(a))  # a second run's garbage collection
    assert objects <= set((Path(local_remote) / "data").iterdir())
    assert cg_json("settings", "--folder", str(a))["keep_days"] == 30
    cg("settings", "--keep-days", "0", "--folder", str(a))
    _tick()  # kept versions are timed in whole seconds: the replacement is now in the past
    (a / "other.txt").write_text("a push that collects")
    cg("push", "--folder", str(a))
    assert not objects & set((Path(local_remote) / "data").iterdir())
    assert len(cg_json("history", "big.bin", "--folder", str(a))["versions"]) == 1
    cg("verify", "--read-data", "--folder", str(a))
    bad = cg_proc("settings", "--keep-days", "-1", "--folder", str(a))
    assert bad.returncode == 2 and "--keep-days -1" in bad.stderr


def test_reencrypt_drops_history_on_every_device(local_remote: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """History holds content under DEKs that a removed member could unwrap: a re-encryption's
    signed commit ends it on every device at once, and no other device's snapshot brings it
    back. It is forgotten (and its objects collected) ``keep_days`` after a device first saw
    the commit, so a commit that turns void later ends nothing (review round 6, U2)."""
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "doc.txt").write_text("v2")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert len(cg_json("history", "doc.txt", "--folder", str(b))["versions"]) == 2
    data = Path(local_remote) / "data"
    before = set(os.listdir(data))
    _tick()  # v1 left before the second A saw the commit (one that left later is listed)
    cg("key", "rotate", "--reencrypt", "--folder", str(a))
    assert len(cg_json("history", "doc.txt", "--folder", str(a))["versions"]) == 1
    cg("pull", "--folder", str(b))
    assert len(cg_json("history", "doc.txt", "--folder", str(b))["versions"]) == 1
    (b / "doc.txt").write_text("v3")
    cg("push", "--folder", str(b))  # b's snapshot, if any, must not resurrect it
    cg("pull", "--folder", str(a))
    rows = cg_json("history", "doc.txt", "--folder", str(a))["versions"]
    assert [r["current"] for r in rows] == [False, True]
    cg("verify", "--read-data", "--folder", str(a))
    held = before & set(os.listdir(data))
    assert held, "v1's object went before keep_days: a void re-encryption could not undo it"
    cg("settings", "--keep-days", "0", "--folder", str(a))
    (a / "doc.txt").write_text("v4")
    cg("push", "--folder", str(a))  # keep_days after the commit: forgotten, then collected
    assert not before & set(os.listdir(data))
    cg("verify", "--read-data", "--folder", str(a))


def test_parse_time_accepts_iso_and_ago_and_names_a_bad_value() -> None:
    assert history.parse_time("2h", now=10_000) == 10_000 - 7200
    assert history.parse_time("2026-12-01T10:00:00+00:00") == 1796119200
    with pytest.raises(UsageError, match="--before 'yesterday' is not a time"):
        history.parse_time("yesterday")


def test_a_bad_keep_days_in_the_binding_names_the_setting(local_remote: str,
                                                          tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    made = cg_json("init", str(a), "--remote", local_remote)
    meta = next(Path(os.environ["CLOUDGUARD_HOME"]).glob("**/binding.json"))
    data = json.loads(meta.read_text())
    data["keep_days"] = "forever"
    meta.write_text(json.dumps(data))
    out = cg_proc("status", "--folder", str(a))
    assert out.returncode == 1 and "keep_days = 'forever'" in out.stderr, (made, out.stderr)


def test_a_version_from_before_a_rotation_restores_on_another_device(
        local_remote: str, tmp_path: Path) -> None:
    """Kept versions stay wrapped under the KEK they were pushed under; a rotation (without
    re-encryption) leaves them readable by every current member."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "plan.txt").write_text("old plan")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "plan.txt").write_text("new plan")
    cg("push", "--folder", str(a))
    cg("key", "rotate", "--folder", str(a))
    (a / "plan.txt").write_text("newest plan")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    rows = cg_json("history", "plan.txt", "--folder", str(b))["versions"]
    assert len(rows) == 3
    cg("restore", "plan.txt", "--version", rows[0]["version"], "--folder", str(b))
    assert (b / "plan.txt").read_text() == "old plan"


def test_restore_refuses_a_folder_without_its_marker(local_remote: str, tmp_path: Path
                                                     ) -> None:
    """A restore writes into the folder: like pull, it never fills an unmounted mount point."""
    import shutil

    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    shutil.rmtree(a)
    a.mkdir()
    out = cg_proc("restore", "--before", "1s", "--force", "--folder", str(a))
    assert out.returncode == 1 and "marker" in out.stderr, out.stderr
    assert list(a.iterdir()) == []
