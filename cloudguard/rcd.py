"""The object store through one long-lived ``rclone rcd``, for long-lived faces.

Every :class:`~cloudguard.transport.RcloneTransport` call starts an rclone process, 70-120 ms
each (docs/design.md, "Talking to rclone"): fine for a CLI run, too slow for a daemon that
pushes one file, or a mount that reads 4 KiB. :class:`RcdTransport` starts ``rclone rcd`` once
and talks HTTP to it over a unix socket in a 0700 folder (rc access is shell access, so never a
TCP port): listings, small objects, deletes and ranged reads (``--rc-serve`` answers Range
requests) cost a round trip, not a process. Whole-object semantics stay those of the process
transport: small objects are spooled and copied (``operations/copyfile``), never streamed.
Streamed and batched uploads go through the process transport, where one process start is
nothing beside the transfer.

The rclone child dies with the thread that started it (``PR_SET_PDEATHSIG``), so a killed
daemon leaves no rcd behind; :meth:`RcdTransport.close` stops it at once.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, cast

from . import remotes
from .errors import TransportError
from .procs import running
from .remotes import rclone_glob
from .transport import (
    MissingObject,
    ObjectInfo,
    RcloneTransport,
    read_capped,
    scratch_dir,
)

__all__ = ["RcdTransport"]

_PR_SET_PDEATHSIG = 1
try:  # resolved here, not in the child: between fork and exec nothing may load a library
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


OWNER = "owner"  # the pid of the process whose rclone rcd the folder is for
_UNOWNED_AGE = 3600.0  # a folder without an owner file (one being made) is left this long


def _sweep(where: Path) -> None:
    """Remove the socket folders of processes that died without closing (``kill -9``): each
    start cleans up after earlier ones, so /tmp does not fill with them. Only this user's
    folders whose owner is gone (or that have had no owner file for an hour) are touched."""
    now = time.time()
    for stale in where.glob("cloudguard-rcd-*"):
        try:
            info = stale.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            try:
                pid = int((stale / OWNER).read_text())
            except FileNotFoundError:
                if now - info.st_mtime < _UNOWNED_AGE:
                    continue
            else:
                if running(pid):
                    continue
            for child in stale.iterdir():
                child.unlink()
            stale.rmdir()
        except (OSError, ValueError):
            continue  # in use, changed meanwhile, or not ours to judge: left alone


def _socket_dir() -> Path:
    """A fresh 0700 folder for the socket: under CLOUDGUARD_HOME when its path is short
    enough for a unix socket (108 bytes), else in the runtime folder, the temp folder, or
    /tmp (a long TMPDIR must not keep the daemon or a mount from starting)."""
    for where in (str(scratch_dir()), os.environ.get("XDG_RUNTIME_DIR"),
                  tempfile.gettempdir(), "/tmp"):
        if not where or len(os.path.join(where, "cloudguard-rcd-12345678", "rc.sock")) >= 100:
            continue
        _sweep(Path(where))
        here = Path(tempfile.mkdtemp(prefix="cloudguard-rcd-", dir=where))
        if len(str(here / "rc.sock").encode()) < 100:
            (here / OWNER).write_text(str(os.getpid()))
            return here
        here.rmdir()
    raise TransportError("no folder with a path short enough for rclone rcd's unix socket "
                         "(CLOUDGUARD_HOME, XDG_RUNTIME_DIR, TMPDIR and /tmp are all too long)")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class RcdTransport:
    """The :class:`~cloudguard.transport.Transport` protocol over one ``rclone rcd``."""

    def __init__(self, remote: str, inner: RcloneTransport | None = None,
                 stall: float | None = None, wait: bool = True,
                 record: tuple[str, ...] = ()) -> None:
        """``wait=False``: rclone is started, not waited for; the first call waits until it
        answers (the daemon sets up its watches meanwhile). Its failure to start is then
        that call's error, and every later call's (:attr:`failed`). ``record``: the name
        prefixes whose writes and deletes :meth:`own_changes` reports."""
        self.inner = inner or RcloneTransport(remote, stall=stall)
        self.remote = self.inner.remote
        self.local = self.inner.local
        self.stall = self.inner.stall
        self._dir = _socket_dir()
        self._sock = str(self._dir / "rc.sock")
        self._log = self._dir / "rclone.log"
        with self._log.open("wb") as log:  # from this thread: the child dies with it
            self._proc = subprocess.Popen(
                [self.inner.binary, "rcd", "--rc-addr", f"unix://{self._sock}", "--rc-no-auth",
                 "--rc-serve", "--log-level", "NOTICE", *self.inner.extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 (one ctypes call, no locks)
        self._all: list[tuple[threading.Thread, _UnixConnection]] = []
        self._all_lock = threading.Lock()
        self._local = threading.local()  # http.client connections are not thread-safe: one each
        self._up = False  # rclone answered once
        self._up_lock = threading.Lock()
        self.failed: TransportError | None = None  # it did not start: every call says so
        self._deadline = time.monotonic() + 15
        self._record = record
        self._own: list[tuple[str, int | None]] = []
        self._own_lock = threading.Lock()
        if wait:
            self._started()

    def _started(self) -> None:
        """Wait (once, whichever thread comes first) until rclone answers its socket."""
        with self._up_lock:
            if self._up:
                return
            if self.failed is not None:
                raise TransportError(str(self.failed))
            while True:
                try:
                    self._call("rc/noop", {}, booting=True)
                    self._up = True
                    return
                except (OSError, http.client.HTTPException) as exc:
                    self._drop_connection()
                    if self._proc.poll() is not None or time.monotonic() > self._deadline:
                        self.failed = TransportError(
                            f"rclone rcd did not start: {self._last_log()}")
                        self.close()
                        raise TransportError(str(self.failed)) from exc
                    time.sleep(0.02)

    def own_changes(self) -> list[tuple[str, int | None]]:
        """What this transport wrote (name, size) or deleted (name, None) under the recorded
        prefixes since the last call, in order: a poll tells its own segments from other
        devices' by it."""
        with self._own_lock:
            got, self._own = self._own, []
        return got

    def _changed(self, name: str, size: int | None) -> None:
        if name.startswith(self._record):  # () matches nothing
            with self._own_lock:
                self._own.append((name, size))

    # --- plumbing ------------------------------------------------------------------------

    def _connection(self) -> _UnixConnection:
        conn: _UnixConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _UnixConnection(self._sock, self.stall)
            self._local.conn = conn
            with self._all_lock:  # threads come and go (a session's fetches, FUSE's workers):
                for thread, old in [t for t in self._all if not t[0].is_alive()]:
                    old.close()  # a dead thread's connection would hold its socket for ever
                    self._all.remove((thread, old))
                self._all.append((threading.current_thread(), conn))
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, booting: bool = False
                 ) -> http.client.HTTPResponse:
        if not self._up and not booting:
            self._started()
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                return conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                self._drop_connection()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _call(self, command: str, params: dict[str, Any], booting: bool = False
              ) -> dict[str, Any]:
        data = json.dumps(params).encode()
        resp = self._request("POST", "/" + command, data, {"Content-Type": "application/json"},
                             booting)
        raw = resp.read()
        try:
            doc = json.loads(raw or b"{}")
        except ValueError as exc:
            raise TransportError(f"rclone rcd answered {command} with malformed JSON") from exc
        if resp.status != 200:
            raise self._error(command, str(doc.get("error", raw[:200])))
        return doc if isinstance(doc, dict) else {}

    def _error(self, what: str, message: str) -> TransportError:
        shown = remotes.redact(self.remote)
        message = message.replace(self.remote, shown)
        if "not found" in message.lower():
            return MissingObject(f"{what}: object missing on the remote ({shown})")
        return TransportError(f"rclone failed on {what} at {shown}: {message}")

    def _last_log(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def _split(self, name: str) -> tuple[str, str]:
        """(fs, path inside it) for rc calls: the remote itself is the fs."""
        return self.remote, name

    # --- the Transport protocol -------------------------------------------------------------

    def list(self, prefix: str = "", with_hash: bool = False) -> dict[str, ObjectInfo]:
        fs, path = self._split(prefix.rstrip("/"))
        try:
            doc = self._call("operations/list", {
                "fs": fs, "remote": path,
                "opt": {"recurse": True, "filesOnly": True, "noModTime": True,
                        "noMimeType": True, "showHash": with_hash}})
        except MissingObject:
            return {}  # an empty or missing prefix lists nothing, as lsjson does
        out: dict[str, ObjectInfo] = {}
        for item in doc.get("list") or []:
            name = str(item["Path"])  # relative to the remote's root, prefix included
            out[name] = ObjectInfo(name=name, size=int(item["Size"]),
                                   hashes=dict(item.get("Hashes") or {}))
        return out

    def writer(self, name: str, size: int | None = None) -> Any:
        return self.inner.writer(name, size)

    @contextmanager
    def reader(self, name: str, offset: int = 0, count: int | None = None
               ) -> Iterator[IO[bytes]]:
        if count == 0:
            yield cast(IO[bytes], _Body(None))
            return
        if self.local:  # a plain path: the object is a file here, read without a round trip
            if self.failed is not None:  # an rcd that did not start fails every call alike
                raise TransportError(str(self.failed))
            with self._local_reader(name, offset, count) as body:
                yield body
            return
        quoted = urllib.parse.quote(f"[{self.remote}]/{name}", safe="/[]:")
        headers = {}
        if offset or count is not None:
            end = "" if count is None else str(offset + count - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        if not self._up:
            self._started()
        # a reader may be held while other calls run: a connection of its own
        conn = _UnixConnection(self._sock, self.stall)
        try:
            conn.request("GET", "/" + quoted, headers=headers)
            resp = conn.getresponse()
            if resp.status == 404:
                raise MissingObject(f"downloading {name}: object missing on the remote "
                                    f"({remotes.redact(self.remote)})")
            if resp.status not in (200, 206):
                raise self._error(f"downloading {name}", f"HTTP {resp.status} "
                                  f"{resp.read(200).decode(errors='replace')}")
            if (offset or count is not None) and resp.status != 206:
                raise TransportError(f"downloading {name}: the rcd ignored the byte range")
            yield cast(IO[bytes], _Body(resp))
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"downloading {name} from {remotes.redact(self.remote)}: "
                                 f"{exc}") from exc
        finally:
            conn.close()

    @contextmanager
    def _local_reader(self, name: str, offset: int, count: int | None) -> Iterator[IO[bytes]]:
        """A ranged read of a local remote's object straight from its file (what rclone's
        local backend would serve over HTTP: a sequential read of a mount ran at half speed
        through the extra hop). Object names are ours (hex under a prefix); a symlink is
        not followed."""
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise TransportError(f"downloading {name}: not an object name")
        try:
            fd = os.open(os.path.join(self.remote, *parts), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise MissingObject(f"downloading {name}: object missing on the remote "
                                f"({remotes.redact(self.remote)})") from None
        except OSError as exc:
            raise TransportError(f"downloading {name} from {remotes.redact(self.remote)}: "
                                 f"{exc}") from exc
        try:
            yield cast(IO[bytes], _FileRange(fd, offset, count))
        finally:
            os.close(fd)

    def put_bytes(self, name: str, data: bytes) -> None:
        """Whole or nothing under ``name``: spooled, then copied by rclone (as copyto)."""
        with tempfile.TemporaryDirectory(prefix="cloudguard-put-", dir=scratch_dir()) as tmp:
            spool = Path(tmp) / "object"
            fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            fs, path = self._split(name)
            self._call("operations/copyfile", {"srcFs": tmp, "srcRemote": "object",
                                               "dstFs": fs, "dstRemote": path})
        self._changed(name, len(data))

    def get_bytes(self, name: str, limit: int | None = None) -> bytes:
        return read_capped(self, name, limit)

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name in sorted(set(names)):
            with suppress(TransportError):
                out[name] = self.get_bytes(name)
        return out

    def get_matching(self, patterns: Sequence[str]) -> dict[str, bytes]:
        """As the process transport's (rclone ``--include`` globs), from one listing."""
        wanted = [rclone_glob(p) for p in patterns]
        names = [n for n in self.list() if any(w.fullmatch(n) for w in wanted)]
        return self.get_many(names)

    def put_files(self, folder: Path, names: Sequence[str], prefix: str,
                  progress: Callable[[int], None] | None = None) -> None:
        if len(names) > 8:  # a batch: one rclone copy with its parallel transfers wins
            self.inner.put_files(folder, names, prefix, progress)
            return
        for name in names:
            fs, path = self._split(prefix + name)
            size = (folder / name).stat().st_size
            self._call("operations/movefile", {"srcFs": str(folder), "srcRemote": name,
                                               "dstFs": fs, "dstRemote": path})
            (folder / name).unlink(missing_ok=True)
            if progress is not None:
                progress(size)

    def delete(self, names: Iterable[str]) -> None:
        for name in sorted(set(names)):
            fs, path = self._split(name)
            try:
                self._call("operations/deletefile", {"fs": fs, "remote": path})
            except MissingObject:
                continue  # already gone is what we wanted (and not our change)
            self._changed(name, None)

    def ensure_root(self) -> None:
        self.inner.ensure_root()

    def local_root(self) -> Path | None:
        return self.inner.local_root()

    def close(self) -> None:
        with self._all_lock:
            for _thread, conn in self._all:
                conn.close()
            self._all.clear()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        with suppress(OSError):
            for child in self._dir.iterdir():
                child.unlink()
            self._dir.rmdir()


class _Body:
    """An HTTP response body as the readable stream the engine expects."""

    def __init__(self, resp: http.client.HTTPResponse | None) -> None:
        self.resp = resp

    def read(self, size: int = -1) -> bytes:
        if self.resp is None:
            return b""
        return self.resp.read() if size < 0 else self.resp.read(size)

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()


class _FileRange:
    """``count`` bytes of a file from ``offset`` (all of the rest without a count)."""

    def __init__(self, fd: int, offset: int, count: int | None) -> None:
        self.fd, self.pos, self.left = fd, offset, count

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.left if self.left is not None else os.fstat(self.fd).st_size - self.pos
        if self.left is not None:
            size = min(size, self.left)
        data = os.pread(self.fd, max(size, 0), self.pos)
        self.pos += len(data)
        if self.left is not None:
            self.left -= len(data)
        return data

    def close(self) -> None:
        pass
