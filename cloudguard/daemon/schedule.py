"""When a dirty path is pushed: one scheduler on the monotonic clock, not a thread per path.

A path goes quiet for ``quiet_closed`` after a close-after-write (an editor's save) and for
``quiet_open`` after a write without a close (a file still being written). A path that never
goes quiet is pushed ``max_wait`` after it first became dirty; a busy path at most once every
``min_interval``, so an autosave every second does not make a version every second. The queue
is bounded: past ``max_paths`` dirty paths it collapses into one rescan of the folder. Pure:
the clock is injected, so the rules are tested without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timing:
    quiet_closed: float = 0.3
    quiet_open: float = 2.0
    max_wait: float = 30.0
    min_interval: float = 10.0
    max_paths: int = 10_000


@dataclass
class _Dirty:
    first: float
    last: float
    closed: bool


@dataclass
class Scheduler:
    timing: Timing = field(default_factory=Timing)
    now: Callable[[], float] = time.monotonic
    _dirty: dict[str, _Dirty] = field(default_factory=dict)
    _pushed: dict[str, float] = field(default_factory=dict)  # path -> when last handed out
    _rescan: bool = False

    def touched(self, path: str, closed: bool = False) -> None:
        """An event at ``path`` (relative; "" is the folder itself)."""
        now = self.now()
        if self._rescan:
            return  # the whole folder is looked at anyway
        got = self._dirty.get(path)
        if got is None:
            if len(self._dirty) >= self.timing.max_paths:
                self.rescan()
                return
            self._dirty[path] = _Dirty(now, now, closed)
        else:
            got.last = now
            got.closed = closed

    def rescan(self) -> None:
        """Look at the whole folder next (start-up, overflow, a full queue, a resume)."""
        self._rescan = True
        self._dirty.clear()

    def _ready_at(self, path: str, d: _Dirty) -> float:
        quiet = self.timing.quiet_closed if d.closed else self.timing.quiet_open
        ready = min(d.last + quiet, d.first + self.timing.max_wait)
        pushed = self._pushed.get(path)
        if pushed is not None:
            ready = max(ready, pushed + self.timing.min_interval)
        return ready

    def next_deadline(self) -> float | None:
        if self._rescan:
            return self.now()
        if not self._dirty:
            return None
        return min(self._ready_at(p, d) for p, d in self._dirty.items())

    def due(self) -> tuple[bool, list[str]]:
        """(rescan the whole folder?, paths to push now); both are taken off the queue."""
        now = self.now()
        if self._rescan:
            self._rescan = False
            return True, []
        ready = sorted(p for p, d in self._dirty.items() if self._ready_at(p, d) <= now)
        for path in ready:
            del self._dirty[path]
            self._pushed[path] = now
        for path in [p for p, t in self._pushed.items() if now - t > self.timing.min_interval]:
            del self._pushed[path]
        return False, ready

    def again(self, paths: list[str], closed: bool = False) -> None:
        """Paths a push could not settle (still changing, or it failed): back on the queue."""
        for path in paths:
            self.touched(path, closed)

    def __len__(self) -> int:
        return len(self._dirty)

    @property
    def rescan_pending(self) -> bool:
        return self._rescan


@dataclass
class Recent:
    """How many files the daemon's own pushes touched in the last ``span`` seconds.

    The mass-delete guard of one push sees only that push; a folder emptied a few files per
    quiet period would slip under it. The worker hands this count to the next push."""

    span: float = 300.0
    now: Callable[[], float] = time.monotonic
    _events: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, count: int) -> None:
        if count > 0:
            self._events.append((self.now(), count))

    def total(self) -> int:
        cutoff = self.now() - self.span
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()
        return sum(n for _, n in self._events)

    def clear(self) -> None:
        self._events.clear()


@dataclass
class Jumps:
    """A suspend or a wall-clock step, which neither inotify nor the monotonic clock shows:
    the machine slept (CLOCK_BOOTTIME ran ahead of CLOCK_MONOTONIC) or someone set the clock
    (the wall clock moved against the monotonic one). Either calls for a rescan and a poll:
    files may have changed while events were not read, and mtimes compared with the old clock
    may mislead. Pure: the clocks are injected."""

    boot: Callable[[], float] = field(
        default=lambda: time.clock_gettime(time.CLOCK_BOOTTIME))
    mono: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    slept_after: float = 5.0  # seconds of suspend that count
    stepped_after: float = 60.0  # seconds of clock step that count
    _base: tuple[float, float] | None = None

    def _offsets(self) -> tuple[float, float]:
        mono = self.mono()
        return self.boot() - mono, self.wall() - mono

    def check(self) -> str | None:
        """"resume", "clock step" or None, since the last call."""
        now = self._offsets()
        base, self._base = self._base, now
        if base is None:
            return None
        if now[0] - base[0] > self.slept_after:
            return "resume"
        if abs(now[1] - base[1]) > self.stepped_after:
            return "clock step"
        return None
