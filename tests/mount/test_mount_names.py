"""Name operations on the mount are batched (issue 12): unlink, rmdir, rename, chmod, utimens and
symlink are journal rows staged with the versions (ops/namelog.py), shown at once, committed
with them in one delta; a kill -9 leaves the journaled result, never half of one."""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import fuse_available
from helpers import cg, share

from cloudguard.mount.tree import Tree
from cloudguard.ops import namelog

needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")


class _Dict:
    """A plain dict of entries as a namelog.View: the reference the mount's tree must match."""

    def __init__(self) -> None:
        self.d: dict[str, dict[str, Any]] = {}

    def get(self, path: str) -> dict[str, Any] | None:
        return self.d.get(path)

    def under(self, path: str) -> list[str]:
        return sorted(p for p in self.d if p.startswith(path + "/"))


@pytest.mark.parametrize("seed", range(40))
def test_the_mounts_view_replays_rows_as_a_plain_dict_does(seed: int) -> None:
    """Tree.replayed (copy-on-write, folders kept and pruned as Tree.of would) gives exactly
    Tree.of of the entries namelog.changes leaves, for any rows, sensible or not."""
    rng = random.Random(seed)
    names = ["a", "b", "c"]

    def path() -> str:
        return "/".join(rng.choice(names) for _ in range(rng.randint(1, 3)))

    ref = _Dict()
    for _ in range(rng.randint(0, 12)):
        ref.d[path()] = rng.choice([{"t": "f", "s": rng.randint(0, 9), "x": 0o644, "m": 1},
                                    {"t": "d", "x": 0o755}])
    tree = Tree.of(dict(ref.d))
    rows = []
    for _ in range(30):
        kind = rng.choice(["f", "d", "l", "rm", "mv", "x", "m"])
        row = {"f": lambda: {"t": "f", "s": rng.randint(0, 9), "x": 0o600, "m": 2},
               "d": lambda: {"t": "d", "x": 0o700},
               "l": lambda: {"t": "l", "l": "target", "m": 3},
               "rm": namelog.rm,
               "mv": lambda: namelog.mv(path()),
               "x": lambda: namelog.mode(rng.choice([0o600, 0o755])),
               "m": lambda: namelog.mtime(rng.randint(0, 5))}[kind]()
        rows.append((path(), row))
    for drafts in (False, True):
        want = _Dict()
        want.d = dict(ref.d)
        for where, row in rows:
            for p, e in namelog.changes(want, where, row, drafts).items():
                if e is None:
                    want.d.pop(p, None)
                else:
                    want.d[p] = e
        expected = Tree.of(want.d)
        if drafts:
            got = tree.replayed(rows)
        else:  # the same rows through Tree.apply, with the vault's rule for a rename of nothing
            got = tree
            for where, row in rows:
                view = _Dict()
                view.d = {p[1:]: e for p, e in got.entries.items()}
                got = got.apply({"/" + p: e for p, e in
                                 namelog.changes(view, where, row).items()})
        assert got.entries == expected.entries
        assert got.children == expected.children
    assert tree.entries == Tree.of(dict(ref.d)).entries  # never changed in place


def _segments(remote: str) -> set[Path]:
    return set((Path(remote) / "m").glob("*.d"))


def _wait_for_commit(remote: str, before: set[Path], quiet: float = 2.5) -> set[Path]:
    """The delta segments written since ``before``, once none came for ``quiet`` seconds."""
    deadline = time.monotonic() + 60
    while not _segments(remote) - before:
        assert time.monotonic() < deadline, "nothing was committed"
        time.sleep(0.1)
    seen = _segments(remote)
    while True:
        time.sleep(quiet)
        now = _segments(remote)
        if now == seen:
            return now - before
        seen = now


@pytest.mark.fuse
@needs_fuse
def test_five_hundred_unlinks_and_renames_are_one_commit_each(local_remote: str,
                                                              tmp_path: Path) -> None:
    from test_mount import mounted

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    for i in range(1000):
        (a / "d" / f"f{i:04}").write_text(f"file {i}")
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log"):
        before = _segments(local_remote)
        for i in range(0, 1000, 2):
            os.unlink(mnt / "d" / f"f{i:04}")
        assert len(os.listdir(mnt / "d")) == 500  # gone at once
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "d" / "f0000")
        assert len(_wait_for_commit(local_remote, before)) == 1

        before = _segments(local_remote)
        os.mkdir(mnt / "e")
        for i in range(1, 1000, 2):
            os.rename(mnt / "d" / f"f{i:04}", mnt / "e" / f"g{i:04}")
            os.chmod(mnt / "e" / f"g{i:04}", 0o600)
            os.utime(mnt / "e" / f"g{i:04}", ns=(0, i * 10**9))
        os.rmdir(mnt / "d")
        assert sorted(os.listdir(mnt)) == ["e"] and len(os.listdir(mnt / "e")) == 500
        st = os.stat(mnt / "e" / "g0003")
        assert st.st_mode & 0o777 == 0o600 and st.st_mtime_ns == 3 * 10**9
        assert (mnt / "e" / "g0003").read_text() == "file 3"  # the moved entry reads
        assert len(_wait_for_commit(local_remote, before)) == 1
    cg("pull", "--folder", str(b))
    assert not (b / "d").exists()
    got = sorted(os.listdir(b / "e"))
    assert got == [f"g{i:04}" for i in range(1, 1000, 2)]
    st = os.stat(b / "e" / "g0999")
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime_ns == 999 * 10**9
    assert (b / "e" / "g0999").read_text() == "file 999"


@pytest.mark.fuse
@needs_fuse
def test_batched_names_keep_their_semantics(local_remote: str, tmp_path: Path) -> None:
    """Before any commit: a rename over an open file, a rename of a folder holding staged
    files, an unlink of an open file that is then written and closed, EEXIST, ENOTEMPTY,
    ENOENT; then after a remount, and on another device, the same."""
    from test_mount import mounted

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "dir").mkdir(parents=True)
    (a / "target.txt").write_text("old target")
    (a / "dir" / "in.txt").write_text("inside")
    (a / "gone.txt").write_text("to be unlinked while open")
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log"):
        reader = open(mnt / "target.txt", "rb")  # noqa: SIM115
        (mnt / "new.txt").write_text("new content")  # staged, not committed
        os.rename(mnt / "new.txt", mnt / "target.txt")
        assert reader.read() == b"old target"  # the open file keeps its content
        reader.close()
        assert (mnt / "target.txt").read_text() == "new content"
        assert not (mnt / "new.txt").exists()

        (mnt / "dir" / "staged.txt").write_text("staged in a folder")
        os.rename(mnt / "dir", mnt / "moved")
        assert sorted(os.listdir(mnt / "moved")) == ["in.txt", "staged.txt"]
        assert (mnt / "moved" / "in.txt").read_text() == "inside"
        assert (mnt / "moved" / "staged.txt").read_text() == "staged in a folder"

        with open(mnt / "gone.txt", "r+b") as fh:
            os.unlink(mnt / "gone.txt")
            fh.write(b"written after the unlink")
            fh.flush()
            os.fsync(fh.fileno())
            assert os.pread(fh.fileno(), 100, 0) == b"written after the unlinkn"
        assert not (mnt / "gone.txt").exists()

        os.mkdir(mnt / "full")
        (mnt / "full" / "x").write_text("x")
        os.mkdir(mnt / "empty")
        with pytest.raises(OSError) as err:
            os.rename(mnt / "empty", mnt / "full")
        assert err.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as err:
            os.rmdir(mnt / "full")
        assert err.value.errno == errno.ENOTEMPTY
        os.rename(mnt / "full", mnt / "empty")  # a folder over an empty one replaces it
        assert (mnt / "empty" / "x").read_text() == "x" and not (mnt / "full").exists()
        with pytest.raises(FileExistsError):
            os.mkdir(mnt / "target.txt")
        with pytest.raises(FileNotFoundError):
            os.rename(mnt / "nope", mnt / "nope2")
        with pytest.raises(FileNotFoundError):
            os.unlink(mnt / "gone.txt")
        with pytest.raises(FileNotFoundError):
            os.chmod(mnt / "gone.txt", 0o600)

        os.symlink("target.txt", mnt / "link")
        os.rename(mnt / "link", mnt / "link2")
        assert os.readlink(mnt / "link2") == "target.txt"
        (mnt / "tmp").write_text("made and removed in one batch")
        os.unlink(mnt / "tmp")
        os.chmod(mnt / "target.txt", 0o640)
        before = {p: _state(mnt / p) for p in ("target.txt", "moved", "empty", "link2")}
    spool = next(Path(os.environ["CLOUDGUARD_HOME"]).rglob("staged"))
    assert list(spool.iterdir()) == []  # the tmp file's object was dropped, never uploaded
    mnt.rmdir()
    with mounted(a, mnt, tmp_path / "mount2.log"):
        assert sorted(os.listdir(mnt)) == ["empty", "link2", "moved", "target.txt"]
        assert {p: _state(mnt / p) for p in before} == before
    cg("pull", "--folder", str(b))
    assert sorted(p.name for p in b.iterdir() if p.name != ".cloudguard") == \
        ["empty", "link2", "moved", "target.txt"]
    assert (b / "target.txt").read_text() == "new content"
    assert (b / "target.txt").stat().st_mode & 0o777 == 0o640
    assert (b / "moved" / "staged.txt").read_text() == "staged in a folder"
    assert (b / "empty" / "x").read_text() == "x"
    assert os.readlink(b / "link2") == "target.txt"


def _state(path: Path) -> Any:
    """What a path shows: content and mode, recursively for a folder."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return {p.name: _state(p) for p in path.iterdir()}
    return (path.read_bytes(), st.st_mode & 0o777)


def _script(root: Path) -> list[Callable[[], Any]]:
    """Saves, deletes, renames (over files and of folders), modes and folders, in an order a
    model can be taken after each step of."""
    steps: list[Callable[[], Any]] = []
    for i in range(12):
        d = root / f"d{i % 3}"
        steps += [
            lambda d=d: d.mkdir(exist_ok=True),
            lambda d=d, i=i: (d / f"f{i}").write_bytes(f"content {i} ".encode() * (i + 1) * 50),
            lambda i=i: (root / "base.txt").write_text(f"base {i}"),
            lambda d=d, i=i: os.rename(d / f"f{i}", root / "base.txt") if i % 2 else
            os.unlink(d / f"f{i}"),
            lambda i=i: os.chmod(root / "base.txt", 0o600 if i % 2 else 0o644),
            lambda i=i: (root / f"n{i}").write_text(f"n {i}"),
            lambda i=i: os.rename(root / f"n{i}", root / f"m{i}"),
            lambda i=i: os.unlink(root / f"m{i - 1}") if i else None,
        ]
        if i % 4 == 3:
            steps += [lambda i=i: os.rename(root / f"d{i % 3}", root / f"r{i}"),
                      lambda i=i: os.rename(root / f"r{i}", root / f"d{i % 3}")]
    return steps


@pytest.mark.fuse
@needs_fuse
@pytest.mark.parametrize("seed", range(1, 5))
def test_a_kill_during_name_operations_leaves_a_journaled_prefix(local_remote: str,
                                                                tmp_path: Path,
                                                                seed: int) -> None:
    """The mount is killed (-9) at a random moment of a run of saves, unlinks, renames and
    chmods. After the remount the vault shows the state after some step k of the run, never a
    mix and never a partial file: every step acknowledged before the kill is in (k >= the
    steps done; at most the one in flight besides), and another device pulls the same."""
    from test_mount import mounted

    ref = tmp_path / "ref"
    ref.mkdir()
    models = [_state(ref)]
    for step in _script(ref):
        step()
        models.append(_state(ref))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    done = 0
    with mounted(a, mnt, tmp_path / "mount.log") as proc:
        stop = threading.Event()

        def run() -> None:
            nonlocal done
            for step in _script(mnt):
                try:
                    step()
                except OSError:
                    return  # the mount is gone under it
                done += 1
                if stop.is_set():
                    return
        worker = threading.Thread(target=run)
        target = random.Random(seed).randrange(len(models) - 1)
        worker.start()
        while done < target and worker.is_alive():
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)  # the worker goes on: the kill lands in some step
        stop.set()
        worker.join(timeout=30)
        proc.wait(timeout=10)
        acked = done
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
    mnt.rmdir()
    with mounted(a, mnt, tmp_path / "mount2.log"):
        got = _state(mnt)
    steps = [k for k, model in enumerate(models) if model == got]
    assert steps, f"the remount shows no step's state ({acked} acknowledged)"
    assert any(acked <= k <= acked + 1 for k in steps), (acked, steps)
    cg("pull", "--folder", str(b))
    assert _state(b) == {**got, ".cloudguard": _state(b / ".cloudguard")}


def _commit_killed(folder: Path, patch: str) -> None:
    """Stage a rename of a.txt to b.txt and a new a.txt, then commit in a process that
    ``patch`` kills midway."""
    code = ("import io, os; from cloudguard.api import Vault; " + patch + "; "
            f"v = Vault({str(folder)!r}); v.stage_row('a.txt', {namelog.mv('b.txt')!r}); "
            "v.stage_version('a.txt', io.BytesIO(b'again'), 5); v.commit()")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, check=False,
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr


def _vault_with_a_file(folder: Path, remote: str) -> None:
    folder.mkdir()
    (folder / "a.txt").write_text("the file")
    cg("init", str(folder), "--remote", remote)
    cg("push", "--folder", str(folder))


def test_a_kill_after_the_segment_before_the_journal_drop_replays_nothing(
        local_remote: str, tmp_path: Path) -> None:
    """A commit killed after its delta landed and before its rows were dropped: the next
    commit must not replay them (the rename, replayed, would move the new a.txt over b.txt)."""
    from cloudguard.api import Vault

    folder = tmp_path / "docs"
    _vault_with_a_file(folder, local_remote)
    _commit_killed(folder, "from cloudguard import state; "
                           "state.Index.drop_staged = lambda *a: os._exit(9)")
    with Vault(str(folder)) as v:
        assert sorted(v.files()) == ["a.txt", "b.txt"]  # the delta landed
        assert v.commit() == []  # its rows are dropped, not replayed
        assert v.open_reader("b.txt").read(0, 100) == b"the file"
        assert v.open_reader("a.txt").read(0, 100) == b"again"


def test_a_kill_before_the_upload_then_a_push_of_that_segment_name_replays_the_rows(
        local_remote: str, tmp_path: Path) -> None:
    """Killed before its delta was uploaded, the commit's segment name is taken by the next
    push of this device; the rows are not mistaken for committed: they are replayed."""
    from cloudguard.api import Vault

    folder = tmp_path / "docs"
    _vault_with_a_file(folder, local_remote)
    _commit_killed(folder, "from cloudguard.rcd import RcdTransport; "
                           "RcdTransport.put_bytes = lambda *a: os._exit(9)")
    (folder / "c.txt").write_text("pushed meanwhile")
    cg("push", "--folder", str(folder))  # writes the segment the killed commit had named
    with Vault(str(folder)) as v:
        assert sorted(v.commit()) == ["a.txt", "b.txt"]
        assert sorted(v.files()) == ["a.txt", "b.txt", "c.txt"]
        assert v.open_reader("b.txt").read(0, 100) == b"the file"
        assert v.open_reader("a.txt").read(0, 100) == b"again"


def test_a_reencryption_after_a_killed_commit_keeps_the_staged_versions(
        local_remote: str, tmp_path: Path) -> None:
    """A commit killed before its delta was uploaded leaves staged versions whose objects are
    uploaded and pending. A `key rotate --reencrypt` then deleted every pending object, so
    the mount could never commit what it had acknowledged; it keeps staged ones, and the
    next commit lands them."""
    from cloudguard.api import Vault

    folder = tmp_path / "docs"
    _vault_with_a_file(folder, local_remote)
    _commit_killed(folder, "from cloudguard.rcd import RcdTransport; "
                           "RcdTransport.put_bytes = lambda *a: os._exit(9)")
    cg("key", "rotate", "--reencrypt", "--folder", str(folder))
    with Vault(str(folder)) as v:
        assert sorted(v.commit()) == ["a.txt", "b.txt"]
        assert v.open_reader("b.txt").read(0, 100) == b"the file"
        assert v.open_reader("a.txt").read(0, 100) == b"again"
    cg("verify", "--read-data", "--folder", str(folder))
