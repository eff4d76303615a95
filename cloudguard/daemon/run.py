"""``cloudguard daemon run``: serve every bound folder of this CLOUDGUARD_HOME, one worker
each, in the foreground (what the systemd unit runs). SIGTERM or SIGINT stops it within a few
seconds; whatever was in flight is finished by the next start's rescan, as after a kill."""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from .. import lock
from ..errors import CloudguardError, PassphraseNeeded, UsageError
from ..ignore import Ignore
from ..session import unlock
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
    stop = stop or threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    locked = [b for b in bindings if not _unlocked(b)]  # asks once on a terminal
    record = lock.register("daemon")
    def worker_for(binding: Binding) -> FolderWorker:
        """Its [folder."..."] section over [daemon]; a caller's timing wins (tests)."""
        own = config.for_folder(binding.folder)
        return FolderWorker(binding, stop, timing or own.timing, intervals or own.intervals,
                            Ignore(own.ignore), allow_exposed, own.limits, log_paths)

    workers = [worker_for(b) for b in bindings]

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
            unlocked.set()
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

    unlocked = threading.Event()
    status_thread = control.serve(handle, stop)
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
        while not stop.is_set():  # a stopped folder waits for `daemon resume`
            if unlocked.wait(1.0) or locked:
                unlocked.clear()
                for binding in [b for b in locked if _unlocked(b)]:
                    locked.remove(binding)
                    next(w for w in workers if w.binding is binding).start()
                    log.info("unlocked %s", binding.folder if log_paths else binding.id)
                if not locked:
                    control.notify("STATUS=serving")
    finally:
        stop.set()
        for worker in workers:
            worker._wake.set()
        for worker in workers:
            worker.join(timeout=STOP_WITHIN / max(1, len(workers)))
        record.unlink(missing_ok=True)
        control.notify("STOPPING=1")
        status_thread.join(timeout=1)
    return 0 if all(w.status.state != "stopped" for w in workers) else 1
