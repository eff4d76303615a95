"""The rcd transport (one long-lived ``rclone rcd`` on a unix socket) behaves like the
process transport on every kind of real remote: listings, whole small objects, ranged reads,
deletes, missing objects; and it leaves no rclone behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudguard.rcd import RcdTransport
from cloudguard.transport import MissingObject, RcloneTransport


def test_rcd_matches_the_process_transport(remote: str) -> None:
    proc = RcloneTransport(remote)
    proc.ensure_root()
    rcd = RcdTransport(remote)
    try:
        blob = os.urandom(300_000)
        rcd.put_bytes("m/big-object", blob)
        rcd.put_bytes("m/dev-00000001.d", b"segment")
        proc.put_bytes("keys/00000000-x", b"commit")
        assert {n: o.size for n, o in rcd.list().items()} == \
            {n: o.size for n, o in proc.list().items()} == {
                "m/big-object": 300_000, "m/dev-00000001.d": 7, "keys/00000000-x": 6}
        assert set(rcd.list("m/")) == {"m/dev-00000001.d", "m/big-object"}
        assert rcd.list("nothing/") == {}
        assert rcd.get_bytes("m/big-object") == proc.get_bytes("m/big-object") == blob
        with rcd.reader("m/big-object", offset=100_000, count=70_000) as stream:
            assert stream.read() == blob[100_000:170_000]
        with rcd.reader("m/big-object", offset=299_990) as stream:
            assert stream.read() == blob[299_990:]
        assert rcd.get_many(["m/dev-00000001.d", "keys/00000000-x", "gone"]) == {
            "m/dev-00000001.d": b"segment", "keys/00000000-x": b"commit"}
        assert rcd.get_matching(["/keys/*", "/nothing.json"]) == \
            proc.get_matching(["/keys/*", "/nothing.json"]) == {"keys/00000000-x": b"commit"}
        with pytest.raises(MissingObject):
            rcd.get_bytes("data/none")
        rcd.delete(["m/dev-00000001.d", "never/there"])
        assert set(proc.list()) == {"m/big-object", "keys/00000000-x"}
    finally:
        rcd.close()


def test_the_socket_is_private_and_nothing_outlives_close(local_remote: str) -> None:
    rcd = RcdTransport(local_remote)
    sock_dir = Path(rcd._sock).parent
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700
    pid = rcd._proc.pid
    rcd.close()
    assert rcd._proc.poll() is not None and not sock_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_rcd_dies_with_a_killed_owner(local_remote: str, tmp_path: Path) -> None:
    """A daemon killed with SIGKILL must not leave an rclone serving the remote, and the next
    start removes the socket folder it left (only a dead owner's)."""
    pid_file, dir_file = tmp_path / "pid", tmp_path / "dir"
    code = ("import sys, time; from cloudguard.rcd import RcdTransport; "
            f"t = RcdTransport({local_remote!r}); "
            f"open({str(dir_file)!r}, 'w').write(str(t._dir)); "
            f"open({str(pid_file)!r}, 'w').write(str(t._proc.pid)); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and owner.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as fh:  # a zombie waiting for init counts as gone
            if fh.read().split()[2] == "Z":
                break
        assert time.monotonic() < deadline, "rclone rcd outlived its owner"
        time.sleep(0.05)
    left = Path(dir_file.read_text())
    assert left.is_dir()  # nothing closed it: the next start removes it
    live = left.parent / "cloudguard-rcd-live"  # a running owner's (this process) stays
    live.mkdir()
    (live / "owner").write_text(str(os.getpid()))
    young = left.parent / "cloudguard-rcd-young"  # one being made (no owner file yet) stays
    young.mkdir()
    rcd = RcdTransport(local_remote)
    try:
        assert not left.exists() and live.is_dir() and young.is_dir()
        assert (Path(rcd._sock).parent / "owner").read_text() == str(os.getpid())
    finally:
        rcd.close()


def test_calls_from_several_threads_at_once(local_remote: str) -> None:
    """A session lists and fetches on two threads at once (http.client is not thread-safe)."""
    from concurrent.futures import ThreadPoolExecutor

    rcd = RcdTransport(local_remote)
    try:
        for i in range(20):
            rcd.put_bytes(f"m/seg-{i}", bytes([i]) * 100)
        with ThreadPoolExecutor(8) as pool:
            lists = list(pool.map(lambda _i: len(rcd.list("m/")), range(40)))
            gets = list(pool.map(lambda i: rcd.get_bytes(f"m/seg-{i % 20}"), range(40)))
        assert lists == [20] * 40
        assert gets == [bytes([i % 20]) * 100 for i in range(40)]
    finally:
        rcd.close()


def test_a_deep_cloudguard_home_still_gets_a_socket(local_remote: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A unix socket path holds at most 108 bytes; a deep CLOUDGUARD_HOME must not break it."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("CLOUDGUARD_HOME", str(deep))
    rcd = RcdTransport(local_remote)
    try:
        assert len(rcd._sock) < 108 and stat.S_IMODE(Path(rcd._sock).parent.stat().st_mode) \
            == 0o700
        rcd.put_bytes("m/x", b"x")
        assert rcd.get_bytes("m/x") == b"x"
    finally:
        rcd.close()


@pytest.mark.usefixtures("socket_paths_too_long")
def test_rcd_starts_where_home_and_tmpdir_are_too_long_for_a_socket(local_remote: str) -> None:
    """A unix socket path holds at most 108 bytes: with a long CLOUDGUARD_HOME and a long
    TMPDIR (the crash campaign has both) the socket goes to /tmp, not nowhere."""
    rcd = RcdTransport(local_remote)
    try:
        rcd.put_bytes("m/x", b"x")
        assert rcd.get_bytes("m/x") == b"x"
        assert len(rcd._sock.encode()) < 108 and rcd._sock.startswith("/tmp/")
    finally:
        rcd.close()


def test_connections_of_finished_threads_are_closed(local_remote: str) -> None:
    """Every session starts short-lived threads (its listing and fetches), and each thread
    gets a connection of its own: kept for ever, two sockets leaked per session, and a mount
    that opened 10,000 files died of EMFILE (found by scripts/bench_mount.py)."""
    import threading

    transport = RcdTransport(local_remote)

    def sockets() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except FileNotFoundError:  # the listing's own descriptor
                continue
        return count

    try:
        transport.put_bytes("a", b"x")
        before = sockets()
        for _ in range(60):
            worker = threading.Thread(target=lambda: transport.list())
            worker.start()
            worker.join()
        assert transport.get_bytes("a") == b"x"
        assert sockets() <= before + 2
    finally:
        transport.close()


def test_a_transport_that_does_not_wait_starts_on_the_first_call(local_remote: str) -> None:
    """wait=False (the daemon): construction returns while rclone starts; the first calls,
    from several threads at once, wait for it, then all work."""
    import threading

    RcloneTransport(local_remote).ensure_root()
    rcd = RcdTransport(local_remote, wait=False)
    try:
        got: list[object] = []
        threads = [threading.Thread(target=lambda: got.append(rcd.list())) for _ in range(3)]
        for thread in threads:
            thread.start()
        rcd.put_bytes("m/one", b"x")
        for thread in threads:
            thread.join(timeout=20)
        assert len(got) == 3 and rcd.failed is None
        assert set(rcd.list()) == {"m/one"}
    finally:
        rcd.close()


def test_a_failed_start_is_every_calls_error(local_remote: str, tmp_path: Path) -> None:
    """An rclone that dies at once: with wait=False the first call says it did not start,
    and so does every later one (``failed``); nothing is left behind."""
    from cloudguard.errors import TransportError

    inner = RcloneTransport(local_remote)
    inner.binary = "/bin/false"
    rcd = RcdTransport(local_remote, inner, wait=False)
    sock_dir = Path(rcd._sock).parent
    with pytest.raises(TransportError, match="rclone rcd did not start"):
        rcd.list()
    assert rcd.failed is not None
    with pytest.raises(TransportError, match="rclone rcd did not start"):
        rcd.get_bytes("m/x")
    assert not sock_dir.exists()
    rcd.close()  # again: harmless
    with pytest.raises(TransportError, match="rclone rcd did not start"):
        RcdTransport(local_remote, inner)  # waiting (the default): the constructor says so
