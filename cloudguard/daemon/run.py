"""``cloudguard daemon run``: serve every bound folder of this CLOUDGUARD_HOME, one worker
each, in the foreground (what the systemd unit runs). SIGTERM or SIGINT wakes it at once
(its main loop and status socket have no timer ticks), and it exits within STOP_WITHIN: each
worker finishes its push or pull, or is abandoned as a kill would abandon it, and the next
start's rescan finishes the work."""

from __future__ import annotations

import logging
import logging.handlers
import os
import select
import signal
import sys
import threading
import time
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from .. import lock, rclone_run
from ..errors import CloudguardError, PassphraseNeeded, UsageError
from ..held import unlock
from ..ignore import Ignore
from ..state import Binding, all_bindings, find_binding, home
from . import control
from .config import load as load_config
from .schedule import Timing
from .worker import FolderWorker, Intervals

log = logging.getLogger("cloudguard.daemon")

STOP_WITHIN = 2.5  # seconds the workers get after SIGTERM before the process exits


def _nested(bindings: list[Binding]) -> str | None:
    roots = sorted(Path(b.folder).resolve() for b in bindings)
    for outer, inner in zip(roots, roots[1:], strict=False):
        if inner == outer or outer in inner.parents:
            return f"{inner} is inside {outer}"
    return None


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_BYTES, LOG_KEPT = 1 << 20, 3  # CLOUDGUARD_HOME/log/daemon.log: 1 MiB, three old ones


def _log_file() -> None:
    """Besides stderr (journald under systemd), a rotating file only this user can read."""
    where = home() / "log"
    where.mkdir(mode=0o700, exist_ok=True)
    path = where / "daemon.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES,
                                                   backupCount=LOG_KEPT)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


class _Signals:
    """SIGTERM and SIGINT, noticed at once. The handler only writes a byte to a pipe, which
    wakes the main loop's wait: it may take no lock (the main thread, which it interrupts, may
    hold that very lock, as in an Event's wait)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._caught)

    def _caught(self, _sig: int, _frame: FrameType | None) -> None:
        with suppress(OSError):  # the pipe is full: a signal is waiting already
            os.write(self._write, b"!")

    def wait(self, timeout: float | None) -> bool:
        """Has a signal come (waiting up to ``timeout`` seconds; None: until one does)?"""
        return bool(select.select([self._read], [], [], timeout)[0])

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self._read)
        os.close(self._write)


def _finish(workers: list[FolderWorker]) -> None:
    """Each worker finishes what it is doing, within STOP_WITHIN for all; what is still
    running then is abandoned, as a kill would: its rclone processes are stopped, and the next
    start's rescan finds whatever it had not committed (a commit is one segment upload)."""
    deadline = time.monotonic() + STOP_WITHIN
    for worker in workers:
        if worker.is_alive():
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
    busy = [w.binding.id for w in workers if w.is_alive()]
    if busy:
        log.warning("stopping in the middle of a push or pull of %s; the next start "
                    "finishes it", ", ".join(busy))
        rclone_run.stop_all()


def _unlocked(binding: Binding) -> bool:
    """Unlock now if nothing needs asking (the keyring, a variable, a credential, a terminal,
    or a key that `cloudguard unlock` just left in the kernel keyring); else stay locked."""
    try:
        unlock(binding)
    except PassphraseNeeded:
        return False
    return True


def run(folders: list[str] | None = None, timing: Timing | None = None,
        intervals: Intervals | None = None, stop: threading.Event | None = None,
        allow_exposed: bool = False, log_paths: bool = False) -> int:
    control.take_notify_socket()
    config = load_config()
    bindings = ([find_binding(f) for f in folders] if folders
                else [b for b in all_bindings() if not b.mount_only])  # a mount's: no folder
    if not bindings:
        raise UsageError("no bound folder to serve; run cloudguard init or clone first")
    nested = _nested(bindings)
    if nested:
        raise UsageError(f"bound folders may not nest: {nested}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    _log_file()
    given, stop = stop is not None, stop or threading.Event()
    locked = [b for b in bindings if not _unlocked(b)]  # asks once on a terminal
    record = lock.register("daemon")
    def worker_for(binding: Binding) -> FolderWorker:
        """Its [folder."..."] section over [daemon]; a caller's timing wins (tests)."""
        own = config.for_folder(binding.folder)
        return FolderWorker(binding, stop, timing or own.timing, intervals or own.intervals,
                            Ignore(own.ignore), allow_exposed, own.limits, log_paths)

    workers = [worker_for(b) for b in bindings]
    unlocking = threading.Lock()

    def take_unlocked() -> None:
        """Start the workers of locked folders whose keys are at hand now (`cloudguard
        unlock` asks over the socket; while any is locked, the main loop also looks each
        second)."""
        with unlocking:
            for binding in [b for b in locked if _unlocked(b)]:
                if stop.is_set():
                    return
                locked.remove(binding)
                next(w for w in workers if w.binding is binding).start()
                log.info("unlocked %s", binding.folder if log_paths else binding.id)
            if not locked:
                control.notify("STATUS=serving")

    def report() -> dict[str, Any]:
        waiting = {b.id for b in locked}
        return {"pid": os.getpid(), "folders": [
            {**asdict(w.status), "queue": len(w.sched), "alive": w.is_alive()}
            | ({"state": "locked", "why": "run cloudguard unlock"}
               if w.binding.id in waiting else {})
            for w in workers]}

    def chosen(request: dict[str, Any]) -> list[int]:
        wanted = request.get("folder")
        if wanted is None:
            return list(range(len(workers)))
        target = find_binding(str(wanted)).id
        return [i for i, w in enumerate(workers) if w.binding.id == target]

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        """status, pause and resume; resume restarts a folder a guard or a failure stopped."""
        command = request.get("cmd")
        if command == "status":
            return report()
        if command == "unlock":  # `cloudguard unlock` put the keys in the kernel keyring
            take_unlocked()
            return report()
        if command not in ("pause", "resume"):
            return {"error": f"unknown command {command!r}"}
        try:
            picked = chosen(request)
        except CloudguardError as exc:
            return {"error": str(exc)}
        if not picked:
            return {"error": f"{request.get('folder')} is not served by this daemon"}
        for i in picked:
            worker = workers[i]
            if worker.binding in locked:
                return {"error": f"{worker.binding.folder} is locked: run cloudguard unlock"}
            if command == "pause":
                worker.paused = True
                worker._wake.set()
            elif worker.is_alive():
                worker.accept_deletes = bool(request.get("accept_deletes"))
                worker.accept_changes = bool(request.get("accept_changes"))
                worker.resume()
            else:  # stopped: a fresh worker rescans the folder from the start
                fresh = worker_for(worker.binding)
                fresh.accept_deletes = bool(request.get("accept_deletes"))
                fresh.accept_changes = bool(request.get("accept_changes"))
                workers[i] = fresh
                fresh.start()
        return {**report(), "done": command}

    finish_status = control.serve(handle)
    signalled = _Signals()
    try:
        # locked folders do not hold up READY: systemd would time the start out and restart
        control.notify("READY=1")
        if locked:
            names = ", ".join(b.folder for b in locked)
            control.notify(f"STATUS=locked: run cloudguard unlock ({names})")
            log.warning("locked: no passphrase for %d folder(s); waiting for `cloudguard "
                        "unlock`", len(locked))
        for worker in workers:
            if worker.binding not in locked:
                worker.start()
        log.info("serving %d folder(s)", len(workers) - len(locked))
        # nothing to do here but wait for a signal, which wakes this at once; while a folder
        # is locked, look for its key each second (and for a caller's stop: tests)
        while not stop.is_set() and not signalled.wait(1.0 if locked or given else None):
            if locked:
                take_unlocked()
        log.info("stopping")
    finally:
        stop.set()
        for worker in workers:
            worker._wake.set()
        _finish(workers)
        record.unlink(missing_ok=True)
        control.notify("STOPPING=1")
        finish_status(1.0)
        signalled.close()
    return 0 if all(w.status.state != "stopped" for w in workers) else 1
