"""A read-only, dict-like view of a manifest state's live entries (path -> siblings), for
code written against plain dicts; every lookup goes to the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .crdt import Siblings, State


class Paths:
    """Read-only, dict-like view of path -> siblings over the database."""

    def __init__(self, state: State) -> None:
        self._state = state

    def __getitem__(self, path: str) -> Siblings:
        sibs = self._state.siblings(path)
        if not sibs:
            raise KeyError(path)
        return sibs

    def get(self, path: str, default: Siblings | None = None) -> Siblings | None:
        return self._state.siblings(path) or default

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._state.has_path(path)

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._state.db.execute(
            "SELECT DISTINCT path FROM entries ORDER BY path")])

    def __len__(self) -> int:
        return int(self._state.db.execute(
            "SELECT COUNT(DISTINCT path) FROM entries").fetchone()[0])

    def items(self) -> Iterator[tuple[str, Siblings]]:
        return self._state.items()

    def values(self) -> Iterator[Siblings]:
        return (sibs for _p, sibs in self._state.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Paths):
            return dict(self.items()) == dict(other.items())
        if isinstance(other, dict):
            return dict(self.items()) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
