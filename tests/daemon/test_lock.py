"""cloudguard lock stops registered cloudguard processes and leaves others alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cg_json

from cloudguard import lock, procs
from cloudguard.daemon import control
from cloudguard.procs import ours, running, started


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


def _record(pid: int, start: int | None) -> Path:
    """What a daemon writes at start (lock.register), for process ``pid`` started at ``start``."""
    record = lock.run_dir() / f"daemon-{pid}.json"
    record.write_text(json.dumps({"pid": pid, "start": start, "kind": "daemon",
                                  "mountpoint": None}))
    return record


def test_lock_stops_registered_processes() -> None:
    proc = _sleeper()
    try:
        record = _record(proc.pid, started(proc.pid))
        result = cg_json("lock")
        assert result["stopped"] == [proc.pid]
        assert proc.wait(timeout=10) != 0
        assert not record.exists()
        assert cg_json("log")[-1]["event"] == "lock"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("argv", [(), ("/home/u/cloudguard/notes.txt",)],
                         ids=["any", "naming-cloudguard"])
@pytest.mark.parametrize("how", ["lock", "daemon-stop"])
def test_a_reused_pid_is_never_signalled(argv: tuple[str, ...], how: str) -> None:
    # a daemon killed hard left its record; its pid now names another program of this user,
    # perhaps one whose command line names cloudguard (review round 21, KK3)
    other = _sleeper(*argv)
    try:
        start = started(other.pid)
        assert start is not None
        for record in (_record(other.pid, start - 1), _record(other.pid, None)):
            if how == "lock":
                assert cg_json("lock")["stopped"] == []
            else:
                assert control.stop(timeout=1).stopped == []
            time.sleep(0.2)
            assert other.poll() is None and not record.exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.getuid() != 0, reason="starting another user's process needs root")
def test_a_record_without_a_start_names_a_process_that_runs_cloudguard_only() -> None:
    # written before records had a start (round 22, LL3): lock must still stop that daemon
    daemon = _sleeper()
    editor = _sleeper("/home/u/cloudguard/notes.txt", "cloudguard")
    try:
        daemon_argv = [b"python3", b"-m", b"cloudguard", b"daemon", b"run"]
        assert procs._runs_cloudguard(daemon_argv)
        assert procs._runs_cloudguard([b"/usr/local/bin/cloudguard", b"mount", b"x"])
        assert not procs._runs_cloudguard([b"vim", b"/home/u/cloudguard/notes.txt"])
        assert not procs._runs_cloudguard([b"cp", b"/home/u/cloudguard", b"/backup"])  # MM2
        assert procs._runs_cloudguard([b"/usr/bin/python3", b"-sP", b"/usr/bin/cloudguard",
                                       b"daemon", b"run"])  # a shebang's flags (MM2)
        assert not procs._runs_cloudguard([b"python3", b"-c", b"...", b"-m", b"cloudguard"])
        assert not ours(editor.pid, None) and not ours(daemon.pid, None)
        assert ours(daemon.pid, started(daemon.pid))
    finally:
        for proc in (daemon, editor):
            proc.kill()
            proc.wait()


def test_lock_stops_a_daemon_whose_record_has_no_start(tmp_path: Path) -> None:
    # its argv as an entry point's: python [flags] .../cloudguard daemon run
    script = tmp_path / "cloudguard"
    script.write_text("import time; time.sleep(120)\n")
    daemon = subprocess.Popen([sys.executable, "-s", str(script), "daemon", "run"])
    try:
        record = _record(daemon.pid, None)
        assert cg_json("lock")["stopped"] == [daemon.pid]
        assert daemon.wait(timeout=10) != 0 and not record.exists()
    finally:
        daemon.kill()
        daemon.wait()


def test_another_users_process_is_not_ours() -> None:
    sleep = shutil.which("sleep")
    assert sleep
    other = subprocess.Popen(["cloudguard-daemon", "120"], executable=sleep, user=65534, cwd="/")
    try:
        start = started(other.pid)
        assert running(other.pid) and start is not None and not ours(other.pid, start)
        assert ours(os.getpid(), started(os.getpid()))
    finally:
        other.kill()
        other.wait()


LOCK_IN_OWN_SESSION = r"""
import json, os, subprocess, sys
out = subprocess.run(["gnome-keyring-daemon", "--unlock", "--daemonize", "--components=secrets"],
                     input=b"pw", capture_output=True, check=True).stdout.decode()
for line in out.splitlines():
    key, _, value = line.partition("=")
    if key:
        os.environ[key] = value
import secretstorage
with secretstorage.dbus_init() as conn:
    collection = secretstorage.get_default_collection(conn)
    collection.create_item("probe", {"service": "cloudguard-test"}, b"secret")
    before = collection.is_locked()
result = subprocess.run([sys.executable, "-m", "cloudguard", "lock", "--keyring", "--json"],
                        capture_output=True, text=True, check=False)
with secretstorage.dbus_init() as conn:
    after = secretstorage.get_default_collection(conn).is_locked()
print(json.dumps({"before": before, "after": after, "code": result.returncode,
                  "result": json.loads(result.stdout or "null"), "stderr": result.stderr}))
"""


@pytest.mark.skipif(not (shutil.which("dbus-run-session")
                         and shutil.which("gnome-keyring-daemon")),
                    reason="needs dbus-run-session and gnome-keyring (scripts/test.sh installs "
                           "them)")
def test_lock_keyring_locks_the_secret_service(tmp_path: Path) -> None:
    """`lock --keyring` locks the default collection. It runs in a D-Bus session and
    gnome-keyring of its own, so the keyring the other tests share stays unlocked."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBUS_", "GNOME_KEYRING", "SSH_AUTH"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700)
    proc = subprocess.run(["dbus-run-session", "--", sys.executable, "-c", LOCK_IN_OWN_SESSION],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["before"] is False, report
    assert report["code"] == 0 and report["result"]["keyring_locked"] is True, report
    assert report["after"] is True, report


@pytest.mark.usefixtures("socket_paths_too_long")
def test_the_status_socket_is_found_where_home_and_tmpdir_are_too_long(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unix socket path holds at most 108 bytes. With a long CLOUDGUARD_HOME and a long
    TMPDIR (the crash campaign's; CI's pytest folders grow with its run counter) the daemon
    used to die at bind: the socket goes to /tmp, and a client with another TMPDIR finds it."""
    import tempfile

    from cloudguard.daemon import control
    finish = control.serve(lambda request: {"seen": request})
    path = control.socket_path()
    assert path.parent.parent == Path("/tmp") and len(str(path).encode()) < 108
    assert path.parent.stat().st_mode & 0o777 == 0o700
    try:
        monkeypatch.setenv("TMPDIR", str(tmp_path))  # the client's TMPDIR differs
        monkeypatch.setattr(tempfile, "tempdir", None)
        assert control.request({"cmd": "ping"}) == {"seen": {"cmd": "ping"}}
    finally:
        finish(5)
    assert not path.parent.exists()  # a stopped daemon leaves nothing in /tmp


@pytest.mark.usefixtures("socket_paths_too_long")
def test_a_client_finds_the_daemons_fallback_socket_and_makes_none_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime folder may be unusable for the daemon (here: a file in its way); the daemon
    then uses /tmp, and a client that asks must look there too, and make nothing anywhere."""
    from cloudguard.daemon import control
    runtime = tmp_path / "rt"
    runtime.write_text("not a folder")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert control.request({"cmd": "ping"}) is None  # no daemon: the client made nothing
    assert not [p for p in Path("/tmp").glob(f"cloudguard-{os.getuid()}-*")
                if p.name.endswith(control.socket_path().parent.name[-16:])]
    finish = control.serve(lambda request: {"seen": request})
    path = control.socket_path()
    try:
        assert path.parent.parent == Path("/tmp")
        assert control.request({"cmd": "ping"}) == {"seen": {"cmd": "ping"}}
    finally:
        finish(5)
    assert not path.parent.exists()
