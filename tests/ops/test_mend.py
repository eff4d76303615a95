"""ops/common._mend: when a device writes a snapshot so that readers holding nothing have a
base again (manifest/cover.py, review round 20, II1). A fake session: the rule alone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cloudguard.ops import common


class _Index:
    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        self.meta[key] = value


def _runs(listings: list[list[str]], uncovered: bool = True) -> int:
    """How many snapshots the device writes over runs that list these late snapshots."""
    written = []
    s = SimpleNamespace(index=_Index(), snapshot=lambda: written.append(1))
    for late in listings:
        s.loaded = SimpleNamespace(uncovered=uncovered, late_snapshots=late)
        common._mend(s)  # type: ignore[arg-type]
    return len(written)


def test_one_snapshot_for_each_late_snapshot_not_for_each_subset_shown() -> None:
    one, two = "m/x-000000000005.s", "m/x-000000000006.s"
    assert _runs([[one]]) == 1
    assert _runs([[one], [one], [one]]) == 1
    # a provider that shows one subset at a time gets no snapshot at every run
    assert _runs([[one, two], [one], [two], [one, two], [one]]) == 1
    assert _runs([[one], [one, two], [two]]) == 2  # a late snapshot not mended over before
    assert _runs([[one]], uncovered=False) == 0  # readers reach every honest write: nothing
