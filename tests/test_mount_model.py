"""The mount against a model (issue 12): a hypothesis state machine opens, writes at offsets,
reads, truncates, renames, unlinks, fsyncs and closes files on a real `cloudguard mount` and
on a plain reference folder, and every result, errno and file content must agree; after an
unmount and a remount the whole tree still matches. fsx and fsstress are not packaged in
Debian 12, so this model (with O_APPEND, O_TRUNC and O_EXCL opens and open handles held across
renames and unlinks) stands in for them."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from test_mount import mounted

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")

NAMES = ["a", "b", "d/c", "d/e", "d"]  # "d" is a folder: opening or renaming onto it fails
FLAGS = st.sampled_from([0, os.O_TRUNC, os.O_APPEND, os.O_EXCL, os.O_TRUNC | os.O_APPEND])


def _call(fn, *args):  # type: ignore[no-untyped-def]
    """A result or the errno, so that both sides compare alike."""
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("errno", exc.errno)


class MountModel(RuleBasedStateMachine):
    mount: Path
    ref: Path
    done: dict[str, int] = {}  # rule -> times it acted (the test checks the model did work)

    def __init__(self) -> None:
        super().__init__()
        self.fds: list[tuple[int, int]] = []  # (mount fd, reference fd)

    @initialize()
    def fresh_folders(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.m, self.r = self.mount / tag, self.ref / tag
        for root in (self.m, self.r):
            (root / "d").mkdir(parents=True)

    def teardown(self) -> None:
        for mfd, rfd in self.fds:
            os.close(mfd)
            os.close(rfd)

    @rule(name=st.sampled_from(NAMES), flags=FLAGS)
    def open_file(self, name: str, flags: int) -> None:
        if len(self.fds) >= 3:
            return
        how = os.O_RDWR | os.O_CREAT | flags
        got = [_call(os.open, str(root / name), how, 0o644) for root in (self.m, self.r)]
        assert [g[0] for g in got] == [got[1][0]] * 2 and (
            got[0][0] == "ok" or got[0] == got[1]), (name, flags, got)
        if got[0][0] == "ok":
            self.fds.append((got[0][1], got[1][1]))

    @rule(data=st.data(), offset=st.integers(0, 300_000), size=st.integers(1, 70_000))
    def write(self, data: st.DataObject, offset: int, size: int) -> None:
        if not self.fds:
            return
        mfd, rfd = data.draw(st.sampled_from(self.fds))
        payload = os.urandom(size)
        assert os.pwrite(mfd, payload, offset) == os.pwrite(rfd, payload, offset)
        self.done["write"] = self.done.get("write", 0) + 1

    @rule(data=st.data(), offset=st.integers(0, 400_000), size=st.integers(1, 140_000))
    def read(self, data: st.DataObject, offset: int, size: int) -> None:
        if not self.fds:
            return
        mfd, rfd = data.draw(st.sampled_from(self.fds))
        assert os.pread(mfd, size, offset) == os.pread(rfd, size, offset)
        self.done["read"] = self.done.get("read", 0) + 1

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 200_000))
    def truncate(self, name: str, size: int) -> None:
        got = [_call(os.truncate, str(root / name), size) for root in (self.m, self.r)]
        assert got[0] == got[1], (name, size, got)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def rename(self, src: str, dst: str) -> None:
        got = [_call(os.rename, str(root / src), str(root / dst)) for root in (self.m, self.r)]
        assert got[0] == got[1], (src, dst, got)
        self.done["rename " + got[0][0]] = self.done.get("rename " + got[0][0], 0) + 1

    @rule(name=st.sampled_from(NAMES))
    def unlink(self, name: str) -> None:
        got = [_call(os.unlink, str(root / name)) for root in (self.m, self.r)]
        assert got[0] == got[1], (name, got)

    @rule(data=st.data())
    def fsync(self, data: st.DataObject) -> None:
        if self.fds:
            mfd, rfd = data.draw(st.sampled_from(self.fds))
            os.fsync(mfd)
            os.fsync(rfd)

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        if self.fds:
            pair = data.draw(st.sampled_from(self.fds))
            self.fds.remove(pair)
            os.close(pair[0])
            os.close(pair[1])

    @invariant()
    def same_tree(self) -> None:
        if hasattr(self, "m"):
            assert _tree(self.m) == _tree(self.r)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every name under ``root``: a file's bytes, None for a folder."""
    out: dict[str, bytes | None] = {}
    for here, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(here, d), root)] = None
        for f in files:
            with open(os.path.join(here, f), "rb") as fh:
                out[os.path.relpath(os.path.join(here, f), root)] = fh.read()
    return out


def test_the_mount_behaves_as_a_plain_folder_and_keeps_it(local_remote: str,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    ref = tmp_path / "reference"
    ref.mkdir()
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        MountModel.mount, MountModel.ref = mnt, ref
        run_state_machine_as_test(MountModel, settings=settings(
            max_examples=25, stateful_step_count=40, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
        assert _tree(mnt) == _tree(ref)
    assert min(MountModel.done.get(k, 0) for k in ("write", "read", "rename ok")) >= 5, \
        MountModel.done
    shutil.rmtree(mnt)
    with mounted(folder, mnt, tmp_path / "mount2.log"):  # durable: the same after a remount
        assert _tree(mnt) == _tree(ref)
