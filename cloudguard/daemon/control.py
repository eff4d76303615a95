"""Controlling a running daemon: its status socket, start and stop, systemd.

The daemon answers on ``CLOUDGUARD_HOME/run/daemon.sock`` (0600, in a 0700 folder) with one
JSON document per connection: every folder's state. Nothing secret is in it, but paths and
errors are, so only this user may read it. ``start`` runs ``daemon run`` detached; ``stop``
sends SIGTERM to the registered daemon. ``install`` writes a systemd user unit of
``Type=notify`` (READY=1 once keys are unlocked, before the first rescan) that restarts on
failure and carries no secret in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import msgspec

from ..errors import CloudguardError, UsageError
from ..lock import SERVICE, run_dir
from ..procs import ours, running
from ..results import DaemonDone, DaemonStarted, DaemonStatus, DaemonStopped, UnitResult
from ..settings import settings

SOCKET = "daemon.sock"
UNIT = SERVICE  # lock.py stops it by this name


def socket_path(create: bool = False) -> Path:
    """``CLOUDGUARD_HOME/run/daemon.sock``; when that path is too long for a unix socket
    (108 bytes), a 0700 folder of ours named after the home in the runtime folder, /tmp, or
    the temp folder, the first whose path fits and that can be made. /tmp comes before TMPDIR
    so that a daemon and a client with different TMPDIRs (the crash campaign's spool) meet at
    the same socket. Only the daemon makes that folder (``create``): a client takes the first
    that exists, and leaves none behind."""
    here = run_dir() / SOCKET
    if _fits(here):
        return here
    tag = hashlib.sha256(str(run_dir().resolve()).encode()).hexdigest()[:16]
    folders = [Path(base) / f"cloudguard-{os.getuid()}-{tag}"
               for base in (os.environ.get("XDG_RUNTIME_DIR"), "/tmp", tempfile.gettempdir())
               if base]
    folders = [f for f in folders if _fits(f / SOCKET)]
    if not folders:
        raise CloudguardError("no folder with a path short enough for the daemon's status "
                              "socket (CLOUDGUARD_HOME, XDG_RUNTIME_DIR, /tmp and TMPDIR are "
                              "all too long)")
    for folder in folders:
        try:
            folder.mkdir(mode=0o700) if create else folder.lstat()
        except FileExistsError:
            pass
        except OSError:
            continue  # not there (a client), or a runtime folder gone or not ours to write
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise CloudguardError(f"{folder} is not a private folder of this user; remove it")
        return folder / SOCKET
    if create:
        raise CloudguardError(f"cannot make a folder for the daemon's status socket: tried "
                              f"{', '.join(map(str, folders))}")
    return folders[0] / SOCKET  # no daemon has made one: nothing answers there


def _fits(path: Path) -> bool:
    return len(str(path).encode()) < 100


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]]
          ) -> Callable[[float], None]:
    """Answer requests (one JSON document each way per connection) until the returned
    ``finish(timeout)`` is called, which wakes the loop at once and waits for it (no timeout
    polls: an idle daemon sleeps). The socket is 0600 from birth."""
    path = socket_path(create=True)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(4)
    woken, wake = os.pipe()

    def loop() -> None:
        try:
            while True:
                ready, _w, _x = select.select([server.fileno(), woken], [], [])
                if woken in ready:
                    return
                conn, _addr = server.accept()
                with conn:
                    conn.settimeout(5)
                    try:
                        request = json.loads(_read_all(conn) or b"{}")
                        if not isinstance(request, dict):
                            raise ValueError("not an object")
                        answer = handle(request)
                    except (OSError, ValueError) as exc:
                        answer = {"error": f"bad request: {exc}"}
                    with suppress(OSError):
                        conn.sendall(json.dumps(answer, sort_keys=True).encode())
        finally:
            server.close()
            os.close(woken)
            path.unlink(missing_ok=True)
            if path.parent != run_dir():  # our fallback folder in /tmp or the runtime folder
                with suppress(OSError):
                    path.parent.rmdir()

    thread = threading.Thread(target=loop, name="cloudguard-status", daemon=True)
    thread.start()

    def finish(timeout: float) -> None:
        with suppress(OSError):
            os.write(wake, b"x")
        os.close(wake)
        thread.join(timeout)

    return finish


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request(command: dict[str, Any]) -> dict[str, Any] | None:
    """Ask the running daemon; None when none answers."""
    path = socket_path()
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(json.dumps(command).encode())
            conn.shutdown(socket.SHUT_WR)
            raw = _read_all(conn)
    except OSError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def query() -> dict[str, Any] | None:
    """The running daemon's status, or None when none answers."""
    return request({"cmd": "status"})


def status() -> DaemonStatus:
    """``cloudguard daemon status``: the running daemon's report, typed."""
    got = query()
    if got is None:
        return DaemonStatus(running=False)
    return msgspec.convert({**got, "running": True}, DaemonStatus)


def command(cmd: str, folder: str | None = None, accept_deletes: bool = False,
            accept_changes: bool = False) -> DaemonDone:
    """``daemon pause`` or ``resume`` of ``folder`` (None: every folder); the daemon's
    refusal (a folder it does not serve, or one that is locked) is a usage error."""
    got = request({"cmd": cmd, "accept_deletes": accept_deletes,
                   "accept_changes": accept_changes,
                   **({"folder": os.path.abspath(folder)} if folder else {})})
    if got is None:
        raise CloudguardError("the daemon is not running (cloudguard daemon start)")
    if "error" in got:
        raise UsageError(str(got["error"]))
    return msgspec.convert(got, DaemonDone)


_NOTIFY: list[str] = []


def take_notify_socket() -> None:
    """Keep systemd's socket for ourselves and out of the environment (sd_notify's
    unset_environment): rclone speaks sd_notify too, and its READY=1 is not ours."""
    target = os.environ.pop("NOTIFY_SOCKET", None)
    if target:
        _NOTIFY[:] = [target]


def notify(message: str) -> None:
    """sd_notify: tell systemd (Type=notify) about the service; nothing without it."""
    target = _NOTIFY[0] if _NOTIFY else None
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            pass  # a service manager that went away must not stop the daemon


def _daemon_pids() -> list[int]:
    pids = []
    for record in run_dir().glob("daemon-*.json"):
        try:
            doc = json.loads(record.read_text())
            pid, start = int(doc["pid"]), doc.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            pid, start = 0, None
        if not ours(pid, start):  # gone, or its pid reused since a hard kill: never signal that
            record.unlink(missing_ok=True)
            continue
        pids.append(pid)
    return pids


def start(log: Path) -> DaemonStarted:
    if _daemon_pids():
        raise UsageError("the daemon is already running (cloudguard daemon status)")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cloudguard", "daemon", "run"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    deadline = time.monotonic() + 30
    while query() is None:
        if proc.poll() is not None:
            raise CloudguardError(f"the daemon exited at start (code {proc.returncode}); see "
                                  f"{log}")
        if time.monotonic() > deadline:
            raise CloudguardError(f"the daemon did not answer within 30 s; see {log}")
        time.sleep(0.1)
    return DaemonStarted(pid=proc.pid, log=str(log))


def stop(timeout: float = 10.0) -> DaemonStopped:
    pids = _daemon_pids()
    for pid in pids:
        with suppress(ProcessLookupError):  # exited since the look
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return DaemonStopped(stopped=pids)


def unit_text(home: Path | None) -> str:
    exec_start = shlex.join([sys.executable, "-m", "cloudguard", "daemon", "run"])
    env = f"Environment=CLOUDGUARD_HOME={home}\n" if home else ""
    return f"""[Unit]
Description=cloudguard: encrypt bound folders and keep them in sync
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
ExecStart={exec_start}
{env}Restart=on-failure
RestartSec=5
TimeoutStopSec=10
# No secret ever goes in this file or the environment: the OS keyring unlocks the keys, or
# (file keystore) a systemd credential named cloudguard-passphrase, which the daemon finds
# in $CREDENTIALS_DIRECTORY, e.g.
#   LoadCredentialEncrypted=cloudguard-passphrase:/etc/credstore.encrypted/cloudguard
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=default.target
"""


def install(print_only: bool) -> UnitResult:
    home = settings().home
    text = unit_text(home)
    if print_only:
        return UnitResult(unit=text, path=None)
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    path = config / "systemd" / "user" / UNIT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for args in (["daemon-reload"], ["enable", "--now", UNIT]):
        proc = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise CloudguardError(f"systemctl --user {' '.join(args)} failed: "
                                  f"{proc.stderr.strip() or proc.stdout.strip()} (the unit is "
                                  f"written to {path})")
    return UnitResult(unit=text, path=str(path))
