"""One rclone process under watch: its JSON log read on a thread for progress counters and
errors, and a stall clock that kills it when nothing moves while we wait on it.

Why a module of its own: transport.py maps operations onto rclone commands; how one such
process is started, bounded and read is a concept of its own (issue 9 item 6).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

from .errors import TransportError
from .settings import settings

_IO_BUFFER = 1024 * 1024

_LOG_FLAGS = ["--use-json-log", "--stats=1s", "--stats-log-level=NOTICE"]
_COUNTERS = ("bytes", "listed", "checks", "deletes", "renames", "transfers")


# rclone processes running now: a daemon that stops in the middle of a push stops them too
_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every rclone process of ours still running (an abandoned transfer: a commit is a
    segment upload, which never happens after this, so nothing half-done is left committed)."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        with suppress(OSError):
            proc.kill()


def stall_seconds() -> float:
    """How long a transfer may move nothing before it is stopped (``CLOUDGUARD_STALL_SECONDS``,
    default 60): a server that dies mid-upload must end a push, not hang it for minutes."""
    return settings().stall_seconds


def _network_flags(stall: float) -> list[str]:
    """rclone's defaults wait long on a dead server (1 min to connect, 5 min idle, 10 low-level
    retries). These bound it; an RCLONE_* variable the user set wins."""
    out = []
    for flag, env, value in (("--contimeout", "RCLONE_CONTIMEOUT", "10s"),
                             ("--timeout", "RCLONE_TIMEOUT", f"{stall:g}s"),
                             ("--low-level-retries", "RCLONE_LOW_LEVEL_RETRIES", "3"),
                             ("--retries", "RCLONE_RETRIES", "2")):
        if env not in os.environ:
            out.append(f"{flag}={value}")
    return out


class _Watched:
    """One rclone process under watch. Its JSON log is read on a thread: progress counters
    (bytes moved, objects listed, ...) and error messages. While we wait on rclone (always,
    for a whole command; inside a read or write of its pipe, for a stream) and no counter
    moves for the stall time, it is killed: the caller then reports a stall, naming the
    remote, instead of hanging."""

    def __init__(self, args: list[str], stall: float, stdin: int | None = None,
                 stdout: int | None = None, waiting: bool = True,
                 progress: Callable[[int], None] | None = None) -> None:
        self.stall = stall
        self.progress = progress
        self.messages: list[str] = []
        self.moved = 0
        self.stalled = False
        self.waiting = waiting
        self._counters: tuple[object, ...] | None = None
        self._last = time.monotonic()
        self._done = threading.Event()
        try:
            self.proc = subprocess.Popen(args, stdin=stdin, stdout=stdout,
                                         stderr=subprocess.PIPE, bufsize=_IO_BUFFER)
        except OSError as exc:
            raise TransportError(f"cannot run rclone: {exc}") from exc
        with _RUNNING_LOCK:
            _RUNNING.add(self.proc)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        self._watchdog = threading.Thread(target=self._watch, daemon=True)
        self._watchdog.start()

    def touch(self) -> None:
        self._last = time.monotonic()

    @contextmanager
    def blocked(self) -> Iterator[None]:
        """We wait on rclone inside this block (a pipe read or write)."""
        self.touch()
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False
            self.touch()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            try:
                doc = json.loads(line)
            except ValueError:
                if line:
                    self.messages.append(line)
                continue
            if not isinstance(doc, dict):
                continue
            stats = doc.get("stats")
            if isinstance(stats, dict):
                counters = tuple(stats.get(k) for k in _COUNTERS)
                if counters != self._counters:
                    self._counters = counters
                    self.touch()
                moved = stats.get("bytes")
                if isinstance(moved, int) and moved > self.moved:
                    if self.progress is not None:
                        self.progress(moved - self.moved)
                    self.moved = moved
            elif doc.get("level") in ("error", "critical") or str(doc.get("msg", "")).startswith(
                    "Failed to"):
                self.messages.append(str(doc.get("msg", "")))

    def _watch(self) -> None:
        while not self._done.wait(0.25) and self.proc.poll() is None:
            if self.waiting and time.monotonic() - self._last > self.stall:
                self.stalled = True
                self.proc.kill()
                return

    def finish(self) -> int:
        """Wait for the process and its log; the exit code."""
        self.waiting = True
        self.touch()
        code = self.proc.wait()
        with _RUNNING_LOCK:
            _RUNNING.discard(self.proc)
        self._done.set()
        self._reader.join()
        self._watchdog.join()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def last_message(self, code: int) -> str:
        return self.messages[-1] if self.messages else f"exit code {code}"


class _WatchedPipe:
    """A pipe to or from rclone whose blocking calls count as waiting on it (the stall
    clock runs only then, so a slow consumer or producer on our side is no stall)."""

    def __init__(self, pipe: IO[bytes], run: _Watched) -> None:
        self._pipe = pipe
        self._run = run

    def read(self, size: int = -1) -> bytes:
        with self._run.blocked():
            return self._pipe.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        with self._run.blocked():
            return self._pipe.readinto(buffer)  # type: ignore[attr-defined, no-any-return]

    def write(self, data: bytes) -> int:
        with self._run.blocked():
            return self._pipe.write(data)

    def flush(self) -> None:
        with self._run.blocked():
            self._pipe.flush()

    def close(self) -> None:
        self._pipe.close()

    def fileno(self) -> int:
        return self._pipe.fileno()
