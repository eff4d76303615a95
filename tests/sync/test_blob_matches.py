"""sync.blob_matches closes the download it started (review round 24, NN3)."""

from __future__ import annotations

import gc
import io
import sys
from typing import Any

from cloudguard import sync
from cloudguard.transport import MissingObject


class _Stream(io.BytesIO):
    def __exit__(self, *exc: object) -> None:
        raise MissingObject("data/gone")  # rclone's copy failed: found when its reader closes


class _Gone:
    """A blob the provider stops serving: junk bytes, and the end of the stream finds the
    object missing (as rclone reports a failed copy when its reader closes)."""

    def reader(self, name: str, offset: int = 0, count: int | None = None) -> _Stream:
        return _Stream(b"\0" * (count or 0))


def test_a_failed_match_leaves_no_download_open() -> None:
    caught: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, caught.append
    try:
        entry = {"t": "f", "o": "11" * 16, "a": 0, "n": 200, "s": 1, "h": "00" * 32,
                 "i": "22" * 16, "k": "AAAA", "g": "g"}
        assert sync.blob_matches(_Gone(), entry, keks=lambda _g: b"\0" * 32) is False  # type: ignore[arg-type]
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert caught == []
