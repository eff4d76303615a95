"""The mount against models (issue 12), on real mounts.

* A Hypothesis state machine runs open, writes at offsets, truncates, renames, unlinks,
  fsyncs, closes and reads on the mount and on a plain folder under tmp at once and compares
  what each returns (data, sizes, listings, the errno of a failure); after an unmount and a
  remount every example's files are still as the plain folder has them.
* An fsx-like run: seeded random reads, writes and truncates at any offset, mmap reads and
  MAP_SHARED writes (msync), fsyncs and closes on a few files, checked against an in-memory
  model; then the same with a ``kill -9`` of the mount midway, during an fsync of a big write:
  after the remount every file is its last closed or fsynced version, and the one being
  fsynced is its old or its new version, never a mix.

fsx and fsstress (xfstests) are not packaged in Debian 12, nor is pjdfstest; these tests are
their small, self-contained counterparts (tests/mount/test_mount_posix.py has the POSIX cases).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_mount import mounted

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")]

NAMES = ("a", "b", "c")
FLAGS = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_CREAT,
         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_CREAT | os.O_APPEND,
         os.O_RDWR | os.O_CREAT | os.O_EXCL)
OFFSETS = st.one_of(st.integers(0, 300), st.integers(0, 200_000),
                    st.sampled_from([65_535, 65_536, 131_072]))
LENGTHS = st.one_of(st.integers(0, 100), st.integers(1, 140_000))


def outcome(fn: Callable[[], object]) -> object:
    try:
        return ("ok", fn())
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in sorted(os.listdir(root))}


def test_a_state_machine_on_the_mount_and_a_plain_folder(local_remote: str,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    ref, mnt = tmp_path / "ref", tmp_path / "mnt"
    ref.mkdir()
    examples = itertools.count()

    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            where = f"ex{next(examples):03}"
            self.roots = (ref / where, mnt / where)
            for root in self.roots:
                os.mkdir(root)
            self.fds: list[tuple[int, int]] = []  # (plain folder's, mount's)

        def both(self, fn: Callable[[int], object]) -> object:
            want, got = outcome(lambda: fn(0)), outcome(lambda: fn(1))
            assert want == got, f"plain folder {want!r}, mount {got!r}"
            return got

        @precondition(lambda self: len(self.fds) < 4)
        @rule(name=st.sampled_from(NAMES), flags=st.sampled_from(FLAGS))
        def open(self, name: str, flags: int) -> None:
            fds = [outcome(lambda r=r: os.open(r / name, flags, 0o644)) for r in self.roots]
            kinds = [fd[0] if isinstance(fd, tuple) else fd for fd in fds]
            for fd in fds:
                if isinstance(fd, tuple) and kinds[0] != kinds[1]:
                    os.close(int(fd[1]))  # type: ignore[call-overload]
            assert kinds[0] == kinds[1], f"open: plain folder {fds[0]!r}, mount {fds[1]!r}"
            if isinstance(fds[0], tuple) and isinstance(fds[1], tuple):
                self.fds.append((int(fds[0][1]), int(fds[1][1])))  # type: ignore[call-overload]

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3))
        def close(self, i: int) -> None:
            pair = self.fds.pop(i % len(self.fds))
            self.both(lambda side: os.close(pair[side]))

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3), offset=OFFSETS, length=LENGTHS, seed=st.integers(0, 99))
        def pwrite(self, i: int, offset: int, length: int, seed: int) -> None:
            pair = self.fds[i % len(self.fds)]
            data = random.Random(seed).randbytes(length)
            self.both(lambda side: os.pwrite(pair[side], data, offset))

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3), length=LENGTHS, seed=st.integers(0, 99))
        def write(self, i: int, length: int, seed: int) -> None:
            pair = self.fds[i % len(self.fds)]
            data = random.Random(seed).randbytes(length)
            self.both(lambda side: os.write(pair[side], data))

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3), offset=OFFSETS, size=LENGTHS)
        def pread(self, i: int, offset: int, size: int) -> None:
            pair = self.fds[i % len(self.fds)]
            self.both(lambda side: os.pread(pair[side], size, offset))

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3), length=OFFSETS)
        def ftruncate(self, i: int, length: int) -> None:
            pair = self.fds[i % len(self.fds)]
            self.both(lambda side: os.ftruncate(pair[side], length))

        @precondition(lambda self: self.fds)
        @rule(i=st.integers(0, 3))
        def fsync(self, i: int) -> None:
            pair = self.fds[i % len(self.fds)]
            self.both(lambda side: os.fsync(pair[side]))

        @rule(name=st.sampled_from(NAMES), length=OFFSETS)
        def truncate(self, name: str, length: int) -> None:
            self.both(lambda side: os.truncate(self.roots[side] / name, length))

        @rule(old=st.sampled_from(NAMES), new=st.sampled_from(NAMES))
        def rename(self, old: str, new: str) -> None:
            self.both(lambda side: os.rename(self.roots[side] / old, self.roots[side] / new))

        @rule(name=st.sampled_from(NAMES))
        def unlink(self, name: str) -> None:
            self.both(lambda side: os.unlink(self.roots[side] / name))

        @invariant()
        def same_files(self) -> None:
            want, got = snapshot(self.roots[0]), snapshot(self.roots[1])
            assert {n: len(d) for n, d in want.items()} == {n: len(d) for n, d in got.items()}
            assert want == got
            for name in want:
                assert os.stat(self.roots[0] / name).st_size == \
                    os.stat(self.roots[1] / name).st_size

        def teardown(self) -> None:
            for pair in self.fds:
                for fd in pair:
                    os.close(fd)
            self.same_files()

    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(Model, settings=settings(
            max_examples=15, stateful_step_count=30, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))
        assert proc.poll() is None
    runs = sorted(os.listdir(ref))
    assert len(runs) >= 15
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):  # durable: all of it, after a remount
        assert sorted(os.listdir(mnt)) == runs
        for run in runs:
            assert snapshot(mnt / run) == snapshot(ref / run), run


# --- fsx ------------------------------------------------------------------------------------


class Fsx:
    """Seeded random operations on a few files, each held open, against bytearrays; the
    version each file last had at a close or fsync is what must survive."""

    def __init__(self, root: Path, seed: int, files: int = 3) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.names = [f"fsx{i}.bin" for i in range(files)]
        self.model = {n: bytearray(self.rng.randbytes(self.rng.randrange(1, 150_000)))
                      for n in self.names}
        for name in self.names:
            (root / name).write_bytes(self.model[name])
        self.durable = {n: bytes(m) for n, m in self.model.items()}
        self.fds = {n: os.open(root / n, os.O_RDWR) for n in self.names}
        self.ops = 0

    def step(self) -> None:
        rng, name = self.rng, self.rng.choice(self.names)
        model, fd = self.model[name], self.fds[name]
        op = rng.random()
        self.ops += 1
        if op < 0.25:
            off, data = rng.randrange(len(model) + 70_000), rng.randbytes(rng.randrange(1, 90_000))
            assert os.pwrite(fd, data, off) == len(data)
            model[len(model):] = bytes(max(0, off - len(model)))
            model[off:off + len(data)] = data
        elif op < 0.45:
            off, n = rng.randrange(len(model) + 10), rng.randrange(1, 100_000)
            assert os.pread(fd, n, off) == bytes(model[off:off + n]), (name, off, n)
        elif op < 0.55:
            length = rng.randrange(200_000)
            os.ftruncate(fd, length)
            model[length:] = b""
            model[len(model):] = bytes(length - len(model))
        elif op < 0.65 and model:
            with mmap.mmap(fd, len(model), mmap.MAP_SHARED, mmap.PROT_READ) as mm:
                off = rng.randrange(len(model))
                n = rng.randrange(1, 50_000)
                assert mm[off:off + n] == bytes(model[off:off + n]), (name, "mmap", off, n)
            self.durable[name] = bytes(model)  # see below
        elif op < 0.78 and model:
            with mmap.mmap(fd, len(model), mmap.MAP_SHARED) as mm:
                off = rng.randrange(len(model))
                data = rng.randbytes(min(rng.randrange(1, 40_000), len(model) - off))
                mm[off:off + len(data)] = data
                mm.flush()  # msync
            model[off:off + len(data)] = data
            # Python's mmap dups the descriptor and closes the dup with the map: a close(2),
            # which the mount answers as every close, by staging the file's version
            self.durable[name] = bytes(model)
        elif op < 0.88:
            os.fsync(fd)
            self.durable[name] = bytes(model)
        elif op < 0.95:
            os.close(fd)
            self.durable[name] = bytes(model)
            self.fds[name] = os.open(self.root / name, os.O_RDWR)
        else:
            assert os.stat(self.root / name).st_size == len(model)

    def close(self) -> None:
        for name, fd in self.fds.items():
            os.close(fd)
            self.durable[name] = bytes(self.model[name])


@pytest.mark.parametrize("kill", [False, True], ids=["clean", "kill-9-midway"])
def test_fsx_with_mmap_against_a_model(local_remote: str, tmp_path: Path, kill: bool) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    mnt = tmp_path / "mnt"
    steps = 160
    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        fsx = Fsx(mnt, seed=12)
        for _ in range(steps // 2 if kill else steps):
            fsx.step()
        # every file is re-read whole through a fresh handle: the model and the mount agree.
        # The mount stages a file's version at the close of any of its handles (every handle
        # of a file shares one draft), so this close is one of the file's saves too.
        for name in fsx.names:
            assert (mnt / name).read_bytes() == bytes(fsx.model[name]), name
            fsx.durable[name] = bytes(fsx.model[name])
        for _ in range(steps // 4):
            fsx.step()
        if not kill:
            fsx.close()
        else:
            # the kill lands while a big write is being fsynced (its version being staged)
            victim = fsx.names[0]
            assert any(fsx.model[n] != fsx.durable[n] for n in fsx.names[1:]), \
                "no file has unsaved changes at the kill: the seed tests nothing"
            old = fsx.durable[victim]
            new = bytearray(fsx.model[victim])
            big = fsx.rng.randbytes(3 * 1024 * 1024)
            new[len(new):] = big
            syncing = threading.Event()

            def write_and_sync() -> None:
                os.write(fsx.fds[victim], b"")  # the handle is valid
                os.pwrite(fsx.fds[victim], big, len(fsx.model[victim]))
                syncing.set()
                try:
                    os.fsync(fsx.fds[victim])
                except OSError:
                    pass  # the mount died under it
            writer = threading.Thread(target=write_and_sync)
            writer.start()
            assert syncing.wait(timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            writer.join(timeout=30)
            assert not writer.is_alive()
            deadline = time.monotonic() + 10
            while os.path.ismount(mnt):
                assert time.monotonic() < deadline, "auto_unmount did not remove the mount"
                time.sleep(0.05)
            for fd in fsx.fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):
        assert sorted(os.listdir(mnt)) == fsx.names
        for name in fsx.names:
            got = (mnt / name).read_bytes()
            if kill and name == victim:
                assert got in (old, bytes(new)), (name, len(got), len(old), len(new))
            else:
                assert got == fsx.durable[name], (name, len(got), len(fsx.durable[name]))
    assert fsx.ops >= steps // 2
