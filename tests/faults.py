"""A fault-injecting transport for tests (issue 10): it wraps the real one that a session
opens and fails chosen calls, so a test injects a network failure or an interrupt at the
seam where a session gets its transport, never inside the transport's own code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cloudguard import session as session_module
from cloudguard.transport import Transport


class Faulty:
    """Every call goes to ``inner``; ``fail`` decides, per method name and call number (from
    1), whether to raise instead. ``calls`` records (method, arguments) of every call."""

    def __init__(self, inner: Transport,
                 fail: Callable[[str, int, tuple[Any, ...]], BaseException | None]) -> None:
        self._inner = inner
        self._fail = fail
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._counts: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if not callable(real):
            return real

        def call(*args: Any, **kw: Any) -> Any:
            self._counts[name] = self._counts.get(name, 0) + 1
            self.calls.append((name, args))
            exc = self._fail(name, self._counts[name], args)
            if exc is not None:
                raise exc
            return real(*args, **kw)
        return call


def inject(monkeypatch: pytest.MonkeyPatch,
           fail: Callable[[str, int, tuple[Any, ...]], BaseException | None]) -> list[Faulty]:
    """Every transport a session opens from now on is wrapped; returns the wrappers made."""
    made: list[Faulty] = []
    real_open = session_module.open_transport

    def opening(remote: str) -> Transport:
        wrapped = Faulty(real_open(remote), fail)
        made.append(wrapped)
        return wrapped  # type: ignore[return-value]

    monkeypatch.setattr(session_module, "open_transport", opening)
    return made


def nth(method: str, n: int, exc: BaseException) -> Callable[[str, int, tuple[Any, ...]],
                                                            BaseException | None]:
    """Fail the ``n``-th call of ``method`` (per transport) with ``exc``."""
    return lambda name, count, _args: exc if name == method and count == n else None
