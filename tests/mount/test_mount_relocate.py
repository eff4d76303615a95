"""A file open in the mount across a re-encryption elsewhere (issue 12): its old blob and key
are gone, so a read fails until the mount follows the same content to its new blob
(mount/relocate.py). A file renamed since it was opened is no longer at its path; the mount
must still find it, by its content."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg, cg_proc, share
from test_mount import mounted

pytestmark = [pytest.mark.fuse,  # under CI=true a skip is a failure (conftest.py)
              pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")]


def test_relocation_prefers_the_path_then_any_file_with_the_content() -> None:
    from cloudguard.mount.relocate import relocation

    old = {"t": "f", "s": 3, "h": "abc", "o": "x1", "a": 0, "k": "w1", "g": 1, "i": "f1"}
    moved = {**old, "o": "x2", "k": "w2", "g": 2}
    other = {**moved, "o": "x3"}
    assert relocation(old, "/a", {"/a": moved, "/b": other}) is moved
    assert relocation(old, "/a", {"/b": other}) is other  # renamed since it was opened
    assert relocation(old, "/a", {"/a": old}) is None  # not moved: the failure stands
    assert relocation(old, "/a", {"/b": {**moved, "h": "def"}}) is None  # other content


@pytest.mark.parametrize("where", ["in-the-mount", "on-another-device"])
def test_a_file_renamed_while_open_is_read_across_a_reencryption(
        local_remote: str, tmp_path: Path, where: str) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    data = os.urandom(8 * 1024 * 1024 + 5)
    (a / "doc.bin").write_bytes(data)
    share(local_remote, a, b, kit)
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log", "--poll", "3600") as proc, \
            open(mnt / "doc.bin", "rb", buffering=0) as fh:
        assert fh.read(4096) == data[:4096]
        if where == "in-the-mount":
            before = set((Path(local_remote) / "m").glob("*.d"))
            os.rename(mnt / "doc.bin", mnt / "renamed.bin")
            deadline = time.monotonic() + 60
            while not set((Path(local_remote) / "m").glob("*.d")) - before:
                assert time.monotonic() < deadline, "the mount committed nothing"
                time.sleep(0.1)
            cg("pull", "--folder", str(b))
        else:
            cg("pull", "--folder", str(b))
            (b / "doc.bin").rename(b / "renamed.bin")
            cg("push", "--folder", str(b))
        rekey = cg_proc("key", "rotate", "--reencrypt", "--folder", str(b))
        assert rekey.returncode == 0, rekey.stderr
        fh.seek(6 * 1024 * 1024)
        assert fh.read(65536) == data[6 * 1024 * 1024:6 * 1024 * 1024 + 65536]
        assert proc.poll() is None
