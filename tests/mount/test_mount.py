"""The mounted vault (issue 12), read-only slice: a real FUSE mount served by `cloudguard mount`
in a subprocess; files read whole and by ranges, folders listed, changes refused, no plaintext
written under CLOUDGUARD_HOME, and a killed mount leaves no dead mount point."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import CLOUDGUARD, cg, cg_json, cg_proc

pytestmark = [pytest.mark.fuse,  # under CI=true a skip is a failure (conftest.py)
              pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")]

MARKER = b"PLAINTEXT-MARKER-7d1f"


@contextmanager
def mounted(folder: Path, mountpoint: Path, log: Path, *extra: str
            ) -> Iterator[subprocess.Popen[bytes]]:
    mountpoint.mkdir()
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLOUDGUARD, "mount", str(mountpoint), "--folder", str(folder),
                                 *extra],
                                env={**os.environ}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.05)
        yield proc
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_read_only_mount_serves_the_vault(local_remote: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub" / "deeper").mkdir(parents=True)
    rng = random.Random(3)
    big = MARKER + rng.randbytes(5 * 1024 * 1024 + 123)
    (folder / "big.bin").write_bytes(big)
    (folder / "sub" / "note.txt").write_bytes(MARKER + b" a note")
    (folder / "sub" / "deeper" / "empty.txt").write_bytes(b"")
    os.symlink("sub/note.txt", folder / "link")
    os.chmod(folder / "sub" / "note.txt", 0o600)
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log", "--read-only") as proc:
        assert sorted(os.listdir(mnt)) == ["big.bin", "link", "sub"]
        assert sorted(os.listdir(mnt / "sub")) == ["deeper", "note.txt"]
        assert (mnt / "big.bin").read_bytes() == big
        assert (mnt / "sub" / "note.txt").read_bytes() == MARKER + b" a note"
        assert (mnt / "sub" / "deeper" / "empty.txt").read_bytes() == b""
        assert os.readlink(mnt / "link") == "sub/note.txt"
        st = os.stat(mnt / "sub" / "note.txt")
        assert st.st_size == len(MARKER) + 7 and st.st_mode & 0o777 == 0o600
        assert st.st_ino == os.stat(mnt / "sub" / "note.txt").st_ino  # stable
        with open(mnt / "big.bin", "rb") as fh:
            for _ in range(20):
                off = rng.randrange(len(big))
                assert os.pread(fh.fileno(), 4096, off) == big[off:off + 4096]
        for change in (lambda: (mnt / "new.txt").write_text("x"),
                       lambda: (mnt / "big.bin").write_bytes(b"x"),
                       lambda: os.mkdir(mnt / "d"),
                       lambda: os.unlink(mnt / "sub" / "note.txt"),
                       lambda: os.rename(mnt / "big.bin", mnt / "b2")):
            with pytest.raises(OSError) as err:
                change()
            assert err.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "nope")
        assert proc.poll() is None
        assert cg_json("status", "--folder", str(folder))["mounts"] == [str(mnt)]
        assert f"mounted at {mnt}" in cg("status", "--folder", str(folder)).output
    assert cg_json("status", "--folder", str(folder))["mounts"] == []
    home = Path(os.environ["CLOUDGUARD_HOME"])
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert MARKER not in path.read_bytes(), path  # plaintext never reached the disk


def test_a_killed_mount_leaves_no_dead_mount_point(local_remote: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        assert (mnt / "a.txt").read_text() == "a"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _still_mounted(mnt):  # ismount says False while the dead mount is there
            assert time.monotonic() < deadline, "auto_unmount did not remove the dead mount"
            time.sleep(0.05)
        assert os.listdir(mnt) == []


def _still_mounted(path: Path) -> bool:
    try:
        os.listdir(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # served by a process that is gone
            return True
        raise
    return os.path.ismount(path)


def test_the_draft_matches_a_plain_buffer() -> None:
    """Random writes, truncates and reads against a bytearray, over a base version."""
    import tempfile

    from cloudguard.mount.draft import CHUNK, Draft

    rng = random.Random(11)
    base_data = rng.randbytes(3 * CHUNK + 999)

    class Base:
        def read(self, offset: int, n: int) -> bytes:
            return base_data[offset:offset + n]

    with tempfile.TemporaryDirectory() as spool:
        draft = Draft(Base(), len(base_data), Path(spool))  # type: ignore[arg-type]
        model = bytearray(base_data)
        for _ in range(300):
            op = rng.random()
            if op < 0.55:
                off = rng.randrange(len(model) + CHUNK)
                data = rng.randbytes(rng.randrange(1, 2 * CHUNK))
                draft.write(off, data)
                if off > len(model):
                    model += bytes(off - len(model))
                model[off:off + len(data)] = data
            elif op < 0.7:
                length = rng.randrange(len(model) + CHUNK)
                draft.truncate(length)
                model = model[:length] if length < len(model) else \
                    model + bytes(length - len(model))
            else:
                off = rng.randrange(len(model) + 10)
                n = rng.randrange(1, 3 * CHUNK)
                assert draft.read(off, n) == bytes(model[off:off + n])
            assert draft.size == len(model)
        stream = draft.stream()
        whole = b"".join(iter(lambda: stream.read(50_000), b""))
        assert whole == bytes(model)
        assert os.listdir(spool) == []  # the spool file has no name
        draft.close()


def test_writing_through_the_mount(local_remote: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "old.txt").write_text("old content")
    (a / "edit.bin").write_bytes(b"0" * 200_000)
    from helpers import share

    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log"):
        (mnt / "new.txt").write_bytes(MARKER + b" new")
        with open(mnt / "edit.bin", "r+b") as fh:
            fh.seek(100_000)
            fh.write(b"XYZ")
        os.mkdir(mnt / "folder")
        (mnt / "folder" / "inside.txt").write_text("inside")
        os.rename(mnt / "old.txt", mnt / "folder" / "renamed.txt")
        (mnt / "gone.txt").write_text("short-lived")
        os.unlink(mnt / "gone.txt")
        tmp = mnt / ".save.tmp"  # an editor's atomic save through the mount
        tmp.write_text("saved atomically")
        os.rename(tmp, mnt / "new.txt")
        assert (mnt / "new.txt").read_text() == "saved atomically"
        assert sorted(os.listdir(mnt)) == ["edit.bin", "folder", "new.txt"]
    cg("pull", "--folder", str(b))
    files = {str(p.relative_to(b)): p.read_bytes() for p in b.rglob("*")
             if p.is_file() and ".cloudguard" not in p.relative_to(b).parts}
    expected_edit = b"0" * 100_000 + b"XYZ" + b"0" * 99_997
    assert files == {"new.txt": b"saved atomically", "edit.bin": expected_edit,
                     "folder/inside.txt": b"inside", "folder/renamed.txt": b"old content"}
    home = Path(os.environ["CLOUDGUARD_HOME"])
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert MARKER not in path.read_bytes(), path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()
            and ".cloudguard" not in p.relative_to(root).parts}


def test_real_programs_on_the_mount(local_remote: str, tmp_path: Path) -> None:
    """cp -a of a tree in and out (byte for byte), tar x of an archive, sed -i, vim, a rename
    over an open file, SQLite in WAL mode from one process and from two at once, and two
    handles appending to one file."""
    import shutil
    import tarfile

    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(30):
        (tree / "a" / "b" / f"f{i}.bin").write_bytes(os.urandom(500 + 97 * i))
    (tree / "top.txt").write_text("top")
    archive = tmp_path / "src.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="src")
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        subprocess.run(["cp", "-a", str(tree), str(mnt / "copied")], check=True)
        subprocess.run(["tar", "xf", str(archive), "-C", str(mnt)], check=True)
        (mnt / "sed.txt").write_text("sed v1\n")
        subprocess.run(["sed", "-i", "s/v1/v2/", str(mnt / "sed.txt")], check=True)
        if shutil.which("vim"):
            (mnt / "vim.txt").write_text("line one\n")
            subprocess.run(["vim", "-E", "-s", "-u", "NONE", "-N", "-c", "%s/one/two/", "-c",
                            "wq", str(mnt / "vim.txt")], check=True, stdin=subprocess.DEVNULL)
            assert (mnt / "vim.txt").read_text() == "line two\n"
        (mnt / "held.txt").write_text("old held")
        with open(mnt / "held.txt", "rb") as held:  # a rename over an open file
            (mnt / "incoming.txt").write_text("new held")
            os.rename(mnt / "incoming.txt", mnt / "held.txt")
            assert held.read() == b"old held"
        assert (mnt / "held.txt").read_text() == "new held"
        import sqlite3  # WAL mode (shared mmap of -shm), one process; two: see issue 12 note
        con = sqlite3.connect(str(mnt / "app.db"))
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        for i in range(60):
            with con:
                con.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        con = sqlite3.connect(str(mnt / "app.db"))
        assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 60
        con.close()
        # two processes writing one database at once share one draft: nothing is lost. The
        # database is made WAL first: two connections racing to switch the journal mode get
        # SQLITE_BUSY without a retry, on any file system.
        con = sqlite3.connect(str(mnt / "two.db"))
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE u (k INTEGER PRIMARY KEY, v TEXT)")
        con.commit()
        con.close()
        script = ("import sqlite3, sys\n"
                  "c = sqlite3.connect(sys.argv[1], timeout=60)\n"
                  "for i in range(30):\n"
                  "    with c:\n"
                  "        c.execute('INSERT INTO u (v) VALUES (?)', (sys.argv[2] + str(i),))\n"
                  "c.close()\n")
        writers = [subprocess.Popen([sys.executable, "-c", script, str(mnt / "two.db"), tag])
                   for tag in "xy"]
        try:
            codes = [w.wait(timeout=180) for w in writers]
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        assert codes == [0, 0]
        con = sqlite3.connect(str(mnt / "two.db"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM u").fetchone()[0] == 60
        con.close()
        with open(mnt / "shared.log", "w") as first, open(mnt / "shared.log", "a") as second:
            first.write("from the first\n")
            first.flush()
            second.write("from the second\n")
            second.flush()
        assert (mnt / "shared.log").read_text() == "from the first\nfrom the second\n"
        out = tmp_path / "out"
        subprocess.run(["cp", "-a", str(mnt / "copied"), str(out)], check=True)
        assert _files(out) == _files(tree)
        assert _files(mnt / "src") == _files(tree)
        assert (mnt / "sed.txt").read_text() == "sed v2\n"


def test_other_devices_changes_show_at_once_despite_the_kernel_cache(
        local_remote: str, tmp_path: Path) -> None:
    """The kernel keeps names and attributes for 10 s (fewer callbacks); after a poll brings
    another device's changes, the mount invalidates exactly those paths, so a changed size and
    a deleted file show within the poll interval, not 10 s later."""
    from helpers import share

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "report.txt").write_text("short")
    (a / "gone.txt").write_text("to be deleted")
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log", "--poll", "0.3"):
        assert os.stat(mnt / "report.txt").st_size == 5  # now cached by the kernel
        assert os.stat(mnt / "gone.txt").st_size == 13
        (b / "report.txt").write_text("a much longer report")
        (b / "gone.txt").unlink()
        cg("push", "--folder", str(b))
        started = time.monotonic()
        while os.stat(mnt / "report.txt").st_size != 20:
            assert time.monotonic() - started < 5, "the cached size outlived the poll"
            time.sleep(0.1)
        assert (mnt / "report.txt").read_text() == "a much longer report"
        while (mnt / "gone.txt").exists():
            assert time.monotonic() - started < 5, "the deleted file outlived the poll"
            time.sleep(0.1)


@pytest.mark.slow
def test_a_server_that_stops_answering_is_eio_within_the_deadline(tmp_path: Path) -> None:
    """A remote that accepts connections and never answers (a hung server, a dead link)
    turns a read on the mount into EIO after --deadline seconds, never a hung program."""
    import socket
    import threading

    from servers import _port_open, free_port, rclone_binary, rclone_env

    port = free_port()
    remote = f":webdav,url='http://127.0.0.1:{port}',vendor=rclone:data"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.bin").write_bytes(os.urandom(300_000))
    server = subprocess.Popen([rclone_binary(), "serve", "webdav", str(tmp_path / "root"),
                               "--addr", f"127.0.0.1:{port}"], env=rclone_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _port_open(port):
            assert time.monotonic() < deadline, "the WebDAV server did not start"
            time.sleep(0.05)
        cg("init", str(folder), "--remote", remote)
        cg("push", "--folder", str(folder))
        mnt = tmp_path / "mnt"
        with mounted(folder, mnt, tmp_path / "mount.log", "--deadline", "2", "--poll", "3600"):
            assert os.stat(mnt / "a.bin").st_size == 300_000  # from the manifest, no fetch
            server.terminate()
            server.wait(timeout=10)
            hole = socket.socket()  # accepts, reads, never answers
            hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hole.bind(("127.0.0.1", port))
            hole.listen(16)
            held: list[socket.socket] = []
            stop = threading.Event()

            def swallow() -> None:
                hole.settimeout(0.2)
                while not stop.is_set():
                    try:
                        held.append(hole.accept()[0])
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=swallow, daemon=True)
            thread.start()
            try:
                started = time.monotonic()
                with pytest.raises(OSError) as err:
                    (mnt / "a.bin").read_bytes()
                assert err.value.errno == errno.EIO
                assert time.monotonic() - started < 15, "the read outlived its deadline"
            finally:
                stop.set()
                thread.join(timeout=5)
                for conn in held:
                    conn.close()
                hole.close()
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


def test_a_burst_of_saves_is_one_commit_and_reads_back_at_once(local_remote: str,
                                                                tmp_path: Path) -> None:
    """Each close or fsync stages its version (ciphertext durable on local disk) and the
    file reads back new at once; the staged versions go up in one delta once writes pause,
    and another device gets every one of them."""
    from helpers import share

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "seed.txt").write_text("seed")
    share(local_remote, a, b, tmp_path / "kit.json")
    segments = lambda: set((Path(local_remote) / "m").glob("*.d"))  # noqa: E731
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log"):
        before = segments()
        for i in range(20):
            with open(mnt / f"f{i:02}.txt", "w") as fh:
                fh.write(f"version {i}")
                fh.flush()
                os.fsync(fh.fileno())  # what SQLite does at every commit
            assert (mnt / f"f{i:02}.txt").read_text() == f"version {i}"  # from the draft
        assert sorted(os.listdir(mnt))[:2] == ["f00.txt", "f01.txt"]  # listed before commit
        deadline = time.monotonic() + 30
        while cg_json("status", "--folder", str(b))["to_pull"] != [f"f{i:02}.txt"
                                                                for i in range(20)]:
            assert time.monotonic() < deadline, "the staged versions were never committed"
            time.sleep(0.3)
        assert len(segments() - before) <= 3, "one delta per save instead of one per burst"
    cg("pull", "--folder", str(b))
    assert all((b / f"f{i:02}.txt").read_text() == f"version {i}" for i in range(20))


def test_a_version_staged_before_a_kill_is_committed_at_the_next_mount(
        local_remote: str, tmp_path: Path) -> None:
    """close() stages; a kill -9 before the idle commit loses nothing: the next mount commits
    what was staged (ciphertext and journal were on local disk)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        (mnt / "saved.txt").write_text("staged, then the mount died")
        proc.kill()  # at once: the commit waits for a second of quiet
        proc.wait(timeout=10)
    assert cg_json("status", "--folder", str(folder))["to_pull"] == []  # not committed yet
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):
        assert (mnt / "saved.txt").read_text() == "staged, then the mount died"
    assert cg_json("status", "--folder", str(folder))["to_pull"] == ["saved.txt"]


def test_symlinks_made_through_the_mount(local_remote: str, tmp_path: Path) -> None:
    """Issue 12: symlink and readlink. A link made on the mount is stored, never followed
    (its target may point anywhere, even outside), lists as a link, refuses a taken name,
    and arrives on another device as the same link, a target that is not UTF-8 included."""
    from helpers import share

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("the document")
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    odd = os.fsdecode(b"caf\xe9.txt")  # a target that is not UTF-8
    with mounted(a, mnt, tmp_path / "mount.log"):
        os.symlink("doc.txt", mnt / "near")
        os.symlink("/etc/passwd", mnt / "outside")
        os.symlink(odd, mnt / "odd")
        assert os.readlink(mnt / "near") == "doc.txt"
        assert (mnt / "near").read_text() == "the document"  # the kernel follows it, we do not
        assert os.path.islink(mnt / "outside") and os.readlink(mnt / "outside") == "/etc/passwd"
        assert os.fsencode(os.readlink(mnt / "odd")) == b"caf\xe9.txt"
        with os.scandir(mnt) as it:
            assert {e.name for e in it if e.is_symlink()} == {"near", "outside", "odd"}
        with pytest.raises(FileExistsError):
            os.symlink("elsewhere", mnt / "doc.txt")
    cg("pull", "--folder", str(b))
    assert os.readlink(b / "near") == "doc.txt"
    assert os.readlink(b / "outside") == "/etc/passwd"
    assert os.fsencode(os.readlink(b / "odd")) == b"caf\xe9.txt"


def test_unmount_returns_once_the_staged_versions_are_committed(local_remote: str,
                                                                tmp_path: Path) -> None:
    """`cloudguard unmount` unmounts, then waits for the mount to upload and commit what it
    staged: when it returns, another device can pull the last save at once."""
    from helpers import share

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "seed.txt").write_text("seed")
    share(local_remote, a, b, tmp_path / "kit.json")
    mnt = tmp_path / "mnt"
    with mounted(a, mnt, tmp_path / "mount.log") as proc:
        (mnt / "last.bin").write_bytes(os.urandom(3 << 20))  # staged, not yet committed
        got = cg_proc("unmount", str(mnt))
        assert got.returncode == 0, got.stderr
        assert not os.path.ismount(mnt)
        assert proc.wait(timeout=30) == 0
    assert cg_json("status", "--folder", str(b))["to_pull"] == ["last.bin"]
    cg("pull", "--folder", str(b))
    assert (b / "last.bin").stat().st_size == 3 << 20
