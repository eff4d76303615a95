"""A running mount and a re-encryption run by another process (issue 12): the mount's stager
holds the head KEK it was given at its last commit; a `key rotate --reencrypt` elsewhere
publishes a new head and deletes the old key objects. Versions staged after that (under the
old KEK) must be re-wrapped under the new head before they are committed, or they land
wrapped under a key no one can open any more."""

from __future__ import annotations

import json
import os
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


def test_a_staged_version_whose_key_is_gone_everywhere_is_refused_not_landed(
        local_remote: str, tmp_path: Path) -> None:
    """A mount killed with a version staged, then a re-encryption on another device deletes
    the key it was wrapped under: no process holds that KEK any more, so that version is
    never committed unreadable. It leaves the journal with a warning naming it, and a
    version staged after it is committed (it used to hold up every later commit)."""
    import io

    from cloudguard.api import Vault

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "old.txt").write_text("from before")
    share(local_remote, a, b, kit)
    with Vault(str(a)) as v:
        v.stage_version("staged.txt", io.BytesIO(b"staged"), 6)
    cg("key", "rotate", "--reencrypt", "--folder", str(b))
    with Vault(str(a)) as v:
        v.stage_version("later.txt", io.BytesIO(b"later"), 5)
        v.commit()
    from cloudguard import audit

    lost = [json.loads(line) for line in audit.log_path().read_text().splitlines()]
    assert [r["files"] for r in lost if r["event"] == "write-lost"] == [1]
    with Vault(str(a)) as v:
        v.commit()  # nothing left staged
    cg("pull", "--folder", str(b))
    assert not (b / "staged.txt").exists()
    assert (b / "later.txt").read_text() == "later"
    cg("verify", "--read-data", "--folder", str(b))
