"""One worker per bound folder: inotify hints in, engine pushes and pulls out.

The watcher only says where to look; after the quiet period the worker hands those paths to
:meth:`cloudguard.api.Vault.push`, which compares them with the index (so an echo of the
worker's own pull, whose rows it committed first, does nothing). Every few seconds it asks
:meth:`~cloudguard.api.Vault.poll` whether other devices pushed, and pulls. A guard refusal or
an integrity failure stops this folder only; a transport failure backs off (with jitter,
capped) and keeps the queue.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import shutil
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .. import doctor
from ..api import Vault
from ..errors import CloudguardError, GuardError, IntegrityError
from ..ignore import Ignore
from ..names import from_disk
from ..results import PullResult, PushResult
from ..session import UI
from ..state import Binding
from . import desktop
from .schedule import Jumps, Recent, Scheduler, Timing
from .watching import coverage, fs_type, polled

log = logging.getLogger("cloudguard.daemon")

MARKER = ".cloudguard"


@dataclass(frozen=True)
class Intervals:
    poll: float = 15.0
    rescan: float = 600.0
    backoff_first: float = 2.0
    backoff_max: float = 300.0
    rotation_days: float = 30.0  # key age at which the lowest-id device rotates


@dataclass(frozen=True)
class Limits:
    """What a folder may take from the machine, and how much it says (config.toml)."""

    bandwidth: str | None = None  # rclone --bwlimit value; None: no limit
    min_free_mb: float = 0.0  # no pull while the folder's disk has less free
    log_level: str = "info"


@dataclass
class FolderState:
    """What ``cloudguard status`` shows of a folder the daemon serves."""

    folder: str
    state: str = "starting"  # syncing, idle, stopped
    why: str = ""
    queue: int = 0
    last_push: float | None = None
    last_pull: float | None = None
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


FALLBACK_RESCAN = 30.0  # seconds between full rescans of a folder that cannot be watched
POLL_WATCH = 5.0  # seconds between the polling watcher's looks on NFS, SMB and FUSE folders

# What the worker acts on. Asking the kernel for no more keeps opens and reads (ours too: a
# push reads every file it uploads) out of inotify, where watchdog turned each into a Python
# event only for _Hints to drop it: 20,000 of them slowed a first sync of 10,000 files.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent, DirDeletedEvent,
    FileMovedEvent, DirMovedEvent, FileClosedEvent]

def _give_back() -> None:
    """A rescan or a pull of a big vault allocates, then frees, a few hundred MiB of small
    objects; glibc keeps them until asked. A daemon runs for weeks: ask."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class _Overflow(logging.Handler):
    """Watchdog only logs a kernel queue overflow (events were lost): every worker then looks
    at its whole folder, so nothing is missed."""

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for worker in list(_LISTENING):
                log.warning("folder %s: inotify queue overflowed; rescanning",
                            worker.binding.id)
                worker.rescan()


_LISTENING: weakref.WeakSet[FolderWorker] = weakref.WeakSet()
for _name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
    logging.getLogger(_name).addHandler(_Overflow())


class _Hints(FileSystemEventHandler):
    def __init__(self, root: Path, worker: FolderWorker) -> None:
        self.root = str(root)
        self.worker = worker

    def _rel(self, path: str | bytes) -> str | None:
        text = os.fsdecode(path)
        if text == self.root:
            return ""
        if not text.startswith(self.root + os.sep):
            return None
        rel = text[len(self.root) + 1:].replace(os.sep, "/")
        if rel == MARKER or rel.startswith(MARKER + "/"):
            return None  # our own marker and staging folder
        return from_disk(rel)  # the manifest's form of a name that is not UTF-8

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)):
            return  # a folder's own "modified" only repeats the events of what is in it
        closed = isinstance(event, FileClosedEvent) or event.event_type in ("deleted", "moved")
        paths = [event.src_path]
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            paths.append(event.dest_path)
        for raw in paths:
            rel = self._rel(raw)
            if rel == "":
                self.worker.rescan()  # the folder itself was moved or deleted: look at all
            elif rel is not None:
                self.worker.hint(rel, closed)


class FolderWorker(threading.Thread):
    def __init__(self, binding: Binding, stop: threading.Event, timing: Timing | None = None,
                 intervals: Intervals | None = None, ignore: Ignore | None = None,
                 allow_exposed: bool = False, limits: Limits | None = None,
                 log_paths: bool = False) -> None:
        super().__init__(name=f"cloudguard-{binding.id}", daemon=True)
        self.binding = binding
        self.limits = limits or Limits()
        self._pull_owed = False  # the remote changed and no pull has taken it in yet
        self.log_paths = log_paths
        # one logger per folder, so its log_level is its own
        self.log = logging.getLogger(f"cloudguard.daemon.{binding.id}")
        self.log.setLevel(self.limits.log_level.upper())
        self.stop = stop
        self.intervals = intervals or Intervals()
        self.ignore = ignore or Ignore()
        self.sched = Scheduler(timing or Timing())
        self.jumps = Jumps()
        self.status = FolderState(binding.folder)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.vault: Vault | None = None
        self.paused = False
        self.accept_deletes = False  # the user confirmed the deletes a guard stopped (once)
        self.allow_exposed = allow_exposed
        self.deleted = Recent()  # files this worker's pushes deleted lately (mass-delete guard)
        self.rewritten = Recent()  # ... and rewrote (mass-change guard: ransomware)
        self.accept_changes = False  # the user confirmed the rewrites a guard stopped (once)

    def hint(self, rel: str, closed: bool) -> None:
        if rel and self.ignore(rel):
            return  # never looked at: an office lock, a swap file, a temp file
        with self._lock:
            self.sched.touched(rel, closed)
        self._wake.set()

    def resume(self) -> None:
        self.paused = False
        self.status.why = ""
        self._wake.set()

    def rescan(self) -> None:
        with self._lock:
            self.sched.rescan()
        self._wake.set()

    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # a worker never takes the daemon down
            self._stopped(f"{type(exc).__name__}: {exc}")
            self.log.exception("folder worker failed")

    def _rotate_if_due(self) -> None:
        """The advisories' "change keys often", unattended: past rotation_days the device
        with the lowest id rotates (two at once merge by the chain's sibling rule)."""
        assert self.vault is not None
        age, mine = self.vault.key_schedule()
        self.status.extra["key_age_days"] = round(age, 3)
        self.status.extra["next_rotation_in_days"] = round(
            max(0.0, self.intervals.rotation_days - age), 3) if mine else None
        if age < self.intervals.rotation_days or not mine:
            return
        got = self.vault.rotate()
        self.log.info("folder %s: rotated the key (it was %.1f days old): epoch %s",
                 self.binding.id, age, got.epoch)

    def _safe_from_other_clients(self, folder: Path) -> bool:
        """The advisories' first rule: never let another sync client upload the plaintext. A
        folder inside (or around) a Dropbox, OneDrive, Baidu Netdisk... folder is not served
        unless --allow-exposed; then each start says so in the log."""
        found = [f for f in doctor.exposure(folder, Path.home(), inside=False)
                 if f.level == "error"]
        if not found:
            return True
        if self.allow_exposed:
            for f in found:
                self.log.warning("folder %s: %s (served anyway: --allow-exposed)",
                                 self.binding.id, self._tell(f.message, "exposed to "
                                                             "another sync client"))
            return True
        self._stopped(f"{found[0].message}; {found[0].fix}, or run the daemon with "
                      "--allow-exposed")
        return False

    def _stopped(self, why: str) -> None:
        self.status.state, self.status.why = "stopped", why
        self.log.error("folder %s stopped: %s", self.binding.id, self._tell(why, "stopped"))
        desktop.notify(f"cloudguard stopped syncing {self.binding.folder}", why, urgent=True)

    def _conflicts(self, got: PushResult | PullResult) -> None:
        """Both sides changed a file: both versions are kept; say so on the desktop."""
        made = len(got.conflicts)
        if made:
            self.log.info("folder %s: %d conflict copies", self.binding.id, made)
            desktop.notify(f"cloudguard: {made} conflict cop{'y' if made == 1 else 'ies'} in "
                           f"{self.binding.folder}",
                           "A file was changed here and on another device; both versions are "
                           "kept side by side (NAME (conflict ...)).")

    def _tell(self, text: str, kind: str) -> str:
        """What the log may say: ``text`` may name files, so it goes there only with
        --log-paths; otherwise only its ``kind``, and `cloudguard status` has it in full."""
        if self.log_paths:
            return text
        return f"{kind} (details: cloudguard status; paths are logged only with --log-paths)"

    def _engine_warning(self, text: str) -> None:
        """The engine's warnings (a file changed while read, a dispute...) name files."""
        self.log.warning("folder %s: %s", self.binding.id, self._tell(text, "a warning"))

    def _room_to_pull(self) -> bool:
        """A pull writes new versions beside the old ones before it renames them into place:
        below min_free_mb it waits (and says so) rather than fill the disk."""
        free = shutil.disk_usage(self.binding.folder).free / (1024 * 1024) \
            if self.limits.min_free_mb > 0 else 0.0
        if self.limits.min_free_mb <= 0 or free >= self.limits.min_free_mb:
            if self.status.extra.pop("low_disk", None):
                self.status.last_error = ""
            return True
        why = (f"not pulling: {free:.0f} MiB free on the folder's disk, below min_free_mb = "
               f"{self.limits.min_free_mb:g}")
        if not self.status.extra.get("low_disk"):
            self.log.warning("folder %s: %s", self.binding.id, why)
        self.status.extra["low_disk"] = True
        self.status.last_error = why
        return False

    def _serve(self) -> None:
        folder = Path(self.binding.folder)
        if not self._safe_from_other_clients(folder):
            return
        # rclone starts while the watches are set up; the first push waits for it. The
        # watches are in place (observer.start returns after adding them) before that push's
        # scan reads any folder, so a change made during start-up is either seen by the scan
        # or reported by an event: never neither.
        self.vault = Vault(str(folder), UI(warn=self._engine_warning),
                           bandwidth=self.limits.bandwidth, wait=False)
        kind = fs_type(folder)
        polling = polled(kind)
        observer: Any = PollingObserver(timeout=POLL_WATCH) if polling else Observer()
        self.status.extra["watch"] = "polling" if polling else "inotify"
        if polling:
            self.log.info("folder %s is on %s: looking for changes every %.0f s (inotify "
                          "does not see other machines' changes there)", self.binding.id,
                          kind, POLL_WATCH)
        try:
            observer.schedule(_Hints(folder, self), str(folder), recursive=True,
                              event_filter=EVENTS)
            observer.start()
            self.status.extra["watching"] = True
            if not polling:
                self._check_coverage()
        except OSError as exc:  # ENOSPC: max_user_watches; EMFILE: max_user_instances
            observer = None
            self.intervals = replace(self.intervals,
                                     rescan=min(self.intervals.rescan, FALLBACK_RESCAN))
            self.status.extra["watching"] = False
            self.log.warning("folder %s: cannot watch it (%s); falling back to a full rescan every "
                        "%.0f s (raise fs.inotify.max_user_watches)", self.binding.id,
                        exc.strerror or exc, self.intervals.rescan)
        _LISTENING.add(self)
        try:
            self._loop()
        finally:
            _LISTENING.discard(self)
            if observer is not None:
                observer.stop()
                observer.join(timeout=2)
            self.vault.close()

    def _check_coverage(self) -> None:
        """watchdog drops, without a word, every subfolder watch the kernel refuses (ENOSPC:
        fs.inotify.max_user_watches): those folders are seen by rescans only, so rescan them
        often and say so."""
        held, total = coverage(Path(self.binding.folder))
        told = self.status.extra.get("watched")
        self.status.extra["watched"] = f"{held} of {total} folders"
        if held < total:
            self.intervals = replace(self.intervals,
                                     rescan=min(self.intervals.rescan, FALLBACK_RESCAN))
            if told != self.status.extra["watched"]:
                self.log.warning("folder %s: watching %d of %d folders (raise "
                                 "fs.inotify.max_user_watches); the rest is rescanned every "
                                 "%.0f s", self.binding.id, held, total, self.intervals.rescan)

    def _loop(self) -> None:
        assert self.vault is not None
        with self._lock:
            self.sched.rescan()  # whatever happened while we were not running
        now = time.monotonic()
        next_poll, next_rescan = now, now + self.intervals.rescan
        next_key_check = now
        backoff, retry_at = 0.0, 0.0
        self.jumps.check()
        while not self.stop.is_set():
            now = time.monotonic()
            jump = self.jumps.check()
            if jump:  # events may be lost, the remote may have moved on: look at everything
                self.log.info("folder %s: %s; rescanning and polling", self.binding.id, jump)
                with self._lock:
                    self.sched.rescan()
                next_poll, backoff, retry_at = now, 0.0, 0.0
            with self._lock:
                deadline = self.sched.next_deadline()
            wake_at = min(x for x in (deadline, next_poll, next_rescan) if x is not None)
            wake_at = max(wake_at, retry_at)
            if self.paused:
                self.status.state, self.status.why = "paused", "daemon pause"
                self._wake.wait()
                self._wake.clear()
                continue
            if wake_at > now:
                self.status.state = "idle" if not len(self.sched) else "syncing"
                self._wake.wait(timeout=wake_at - now)
                self._wake.clear()
                continue
            if now >= next_rescan:
                next_rescan = now + self.intervals.rescan
                with self._lock:
                    self.sched.rescan()
                if self.status.extra.get("watch") == "inotify" and self.status.extra["watching"]:
                    self._check_coverage()  # folders made since may have found no watch
            with self._lock:
                rescan, paths = self.sched.due()
                self.status.queue = len(self.sched)
            try:
                self.status.state = "syncing"
                if rescan or paths:
                    got = self.vault.push(None if rescan else paths, ignore=self.ignore,
                                          allow_mass_delete=self.accept_deletes,
                                          deleted_before=self.deleted.total(),
                                          rewritten_before=self.rewritten.total(),
                                          allow_mass_change=self.accept_changes)
                    gone = got.counts.deleted
                    self.log.info("folder %s: pushed %d, deleted %d", self.binding.id,
                             len(got.uploaded) + len(got.updated),
                             gone.files + gone.links)
                    if self.accept_deletes:
                        self.deleted.clear()  # confirmed: they no longer count against later
                    else:
                        self.deleted.add(gone.files + gone.links)
                    if self.accept_changes:
                        self.rewritten.clear()
                    else:
                        self.rewritten.add(got.rewritten)
                    self.accept_deletes = self.accept_changes = False
                    self.status.last_push = time.time()
                    self._conflicts(got)
                    if got.skipped:  # changed while read: look again when it settles
                        with self._lock:
                            self.sched.again([str(p) for p in got.skipped])
                    if rescan:
                        _give_back()
                if now >= next_key_check:
                    next_key_check = now + min(self.intervals.rescan,
                                               self.intervals.rotation_days * 86400 / 4)
                    self._rotate_if_due()
                if now >= next_poll:
                    next_poll = now + self.intervals.poll
                    if self.vault.poll():
                        self._pull_owed = True  # until a pull succeeds
                    if self._pull_owed and self._room_to_pull():
                        self._conflicts(self.vault.pull())
                        _give_back()
                        self._pull_owed = False
                        self.status.last_pull = time.time()
                backoff, retry_at = 0.0, 0.0
            except GuardError as exc:
                why = str(exc)
                if exc.code == "mass-delete":  # the CLI's advice does not fit a daemon
                    why = (why.split("; nothing was pushed")[0] + "; nothing was pushed. If "
                           f"that is right, run: cloudguard daemon resume {self.binding.folder}"
                           " --accept-deletes")
                elif exc.code == "mass-change":
                    why += (". If that is right, run: cloudguard daemon resume "
                            f"{self.binding.folder} --accept-changes")
                self._stopped(why)
                return
            except IntegrityError as exc:
                self._stopped(str(exc))
                return
            except CloudguardError as exc:
                if self.vault.broken:
                    raise  # rclone did not start: the folder stops, as no retry helps
                self.status.last_error = str(exc)
                backoff = min(self.intervals.backoff_max,
                              max(self.intervals.backoff_first, backoff * 2))
                retry_at = time.monotonic() + backoff * random.uniform(0.8, 1.2)
                self.log.warning("folder %s: %s; retrying in %.0f s", self.binding.id,
                                 self._tell(str(exc), type(exc).__name__), backoff)
                with self._lock:
                    if rescan:
                        self.sched.rescan()
                    else:
                        self.sched.again(paths, closed=True)
