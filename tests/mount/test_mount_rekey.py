"""A running mount and a re-encryption run by another process (issue 12): the mount's stager
holds the head KEK it was given at its last commit; a `key rotate --reencrypt` elsewhere
publishes a new head and deletes the old key objects. Versions staged after that (under the
old KEK) must be re-wrapped under the new head before they are committed, or they land
wrapped under a key no one can open any more."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg, cg_proc, share
from test_mount import mounted

pytestmark = [pytest.mark.fuse,  # under CI=true a skip is a failure (conftest.py)
              pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")]


def _segments(remote: str) -> set[Path]:
    return set((Path(remote) / "m").glob("*.d"))


def _wait_for_commit(remote: str, before: set[Path]) -> None:
    deadline = time.monotonic() + 60
    while not _segments(remote) - before:
        assert time.monotonic() < deadline, "the mount committed nothing"
        time.sleep(0.1)


@pytest.mark.parametrize("where", ["same-device", "other-device"])
def test_a_reencryption_by_another_process_loses_nothing_the_mount_writes(
        local_remote: str, tmp_path: Path, where: str) -> None:
    """Write in the mount (committed), re-encrypt from a separate CLI process (this device's
    binding, or another device's), then write, rewrite and close more and unmount: every
    file reads back on another device, and verify --read-data passes on both."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "old.txt").write_text("from before")
    share(local_remote, a, b, kit)
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log") as proc:
        before = _segments(local_remote)
        (mnt / "first.txt").write_bytes(b"first " * 1000)
        _wait_for_commit(local_remote, before)  # the stager now holds the head's KEK
        rekey = cg_proc("key", "rotate", "--reencrypt", "--folder",
                        str(a if where == "same-device" else b))
        assert rekey.returncode == 0, rekey.stderr
        (mnt / "second.txt").write_bytes(b"second " * 1000)  # staged under the old KEK
        with open(mnt / "first.txt", "ab") as fh:
            fh.write(b"more")
        (mnt / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        big = (mnt / "big.bin").read_bytes()
        assert proc.poll() is None
    assert proc.returncode == 0, (tmp_path / "mount.log").read_text()
    log = (tmp_path / "mount.log").read_text()
    assert "failed" not in log, log
    for folder in (b, a):
        cg("pull", "--folder", str(folder))
        assert (folder / "first.txt").read_bytes() == b"first " * 1000 + b"more"
        assert (folder / "second.txt").read_bytes() == b"second " * 1000
        assert (folder / "big.bin").read_bytes() == big
        assert (folder / "old.txt").read_text() == "from before"
        cg("verify", "--read-data", "--folder", str(folder))


def _stage_then_reencrypt_elsewhere(a: Path, b: Path, v1: bool = False) -> None:
    """A mount killed with ``staged.txt`` staged (and not committed); then device B runs a
    re-encryption that ends the key generation it was wrapped under. ``v1``: the row is as
    journal version 1 left it (no local wrap), as an older cloudguard wrote it."""
    import io

    from cloudguard.api import Vault
    from cloudguard.state import JOURNAL_KEY

    with Vault(str(a)) as v:
        v.stage_version("staged.txt", io.BytesIO(b"staged"), 6)
    if v1:
        from cloudguard.state import find_binding

        db = find_binding(str(a)).dir / "index.db"
        con = sqlite3.connect(db)
        for row, entry in con.execute("SELECT id, e FROM staged").fetchall():
            old = {k: v for k, v in json.loads(entry).items() if k != "lk"}
            con.execute("UPDATE staged SET e = ? WHERE id = ?", (json.dumps(old), row))
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (JOURNAL_KEY, "1"))
        con.commit()
        con.close()
    cg("key", "rotate", "--reencrypt", "--folder", str(b))


def test_a_staged_version_whose_key_generation_ended_is_recovered_from_its_local_wrap(
        local_remote: str, tmp_path: Path) -> None:
    """A mount killed with a version staged, then a re-encryption on another device deletes
    the key it was wrapped under: no process holds that KEK any more. The journal's local
    wrap of its DEK (under a key of this device's own secret) recovers it: the next commit
    re-wraps it under the new head, and it reads back on the other device."""
    import io

    from cloudguard import audit
    from cloudguard.api import Vault

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "old.txt").write_text("from before")
    share(local_remote, a, b, kit)
    _stage_then_reencrypt_elsewhere(a, b)
    with Vault(str(a)) as v:
        v.stage_version("later.txt", io.BytesIO(b"later"), 5)
        v.commit()
    events = [json.loads(line)["event"] for line in audit.log_path().read_text().splitlines()]
    assert "write-lost" not in events
    with Vault(str(a)) as v:
        assert v.commit() == []  # nothing left staged
    cg("pull", "--folder", str(b))
    with Vault(str(b)) as v:
        assert "lk" not in v.files()["staged.txt"]  # the local wrap never leaves this device
    assert (b / "staged.txt").read_text() == "staged"
    assert (b / "later.txt").read_text() == "later"
    cg("verify", "--read-data", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "staged.txt").read_text() == "staged"
    cg("verify", "--read-data", "--folder", str(a))


def test_a_reencryption_on_this_device_keeps_a_staged_version_whose_key_ended(
        local_remote: str, tmp_path: Path) -> None:
    """As above, and then this device re-encrypts too before the mount commits: the
    re-encryption re-wraps the staged version from its local wrap (no key of the ring opens
    it any more) instead of failing, and the version is committed and read."""
    from cloudguard.api import Vault

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "old.txt").write_text("from before")
    share(local_remote, a, b, kit)
    _stage_then_reencrypt_elsewhere(a, b)
    cg("key", "rotate", "--reencrypt", "--folder", str(a))
    with Vault(str(a)) as v:
        assert v.commit() == ["staged.txt"]
    cg("pull", "--folder", str(b))
    assert (b / "staged.txt").read_text() == "staged"
    cg("verify", "--read-data", "--folder", str(b))


def test_a_version_journal_1_staged_whose_key_is_gone_everywhere_is_refused_not_landed(
        local_remote: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The case no local wrap recovers: a row of journal version 1 (an older cloudguard's,
    no local wrap) whose key a re-encryption ended. That version is never committed
    unreadable: it leaves the journal with a warning, in the audit log, the log and
    ``cloudguard status``, and a version staged after it is committed (it used to hold up
    every later commit)."""
    import io
    import logging

    from cloudguard import audit
    from cloudguard.api import Vault

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "old.txt").write_text("from before")
    share(local_remote, a, b, kit)
    _stage_then_reencrypt_elsewhere(a, b, v1=True)
    with caplog.at_level(logging.WARNING, logger="cloudguard"), Vault(str(a)) as v:
        v.stage_version("later.txt", io.BytesIO(b"later"), 5)
        v.commit()
    lost = [json.loads(line) for line in audit.log_path().read_text().splitlines()]
    assert [r["files"] for r in lost if r["event"] == "write-lost"] == [1]
    said = [r.getMessage() for r in caplog.records if r.name.startswith("cloudguard")]
    assert any("1 staged version" in m for m in said), said
    assert not any("staged.txt" in m for m in said), said  # the log names no file
    out = cg_proc("status", "--folder", str(a))
    assert out.returncode == 0 and "1 staged version" in out.stderr, out.stderr
    with Vault(str(a)) as v:
        v.commit()  # nothing left staged
    cg("pull", "--folder", str(b))
    assert not (b / "staged.txt").exists()
    assert (b / "later.txt").read_text() == "later"
    cg("verify", "--read-data", "--folder", str(b))
