"""The version history: history, restore, and restore --late-of (docs/format.md, "Version
history")."""

from __future__ import annotations

from typing import Literal

from .base import Result


class HistoryVersion(Result):
    """One current or kept version of a path."""

    path: str
    version: str  # its dot, for ``restore --version``
    kind: Literal["file", "folder", "symlink"]
    size: int | None  # None for all but files
    device: str  # the writer's name (its id when no commit this device opens names it)
    pushed: str | None  # None: pushed before history kept times
    replaced: str | None  # None: the current version
    current: bool
    late: bool  # written past its writer's removal cutoff: never current at any time
    ended: bool  # under a key a re-encryption ended (its object may be gone already)


class HistoryResult(Result):
    """``cloudguard history PATH``: oldest first."""

    path: str
    keep_days: int
    versions: list[HistoryVersion]


class RestoreResult(Result):
    """``cloudguard restore`` with ``--before`` or ``--version``; any ``refused`` path makes
    the exit code 1."""

    restored: list[str]
    unchanged: list[str]  # already as then
    refused: list[str]  # local changes never pushed (or a folder in the way); --force
    not_present_then: list[str]
    before: str | None
    version: str | None


class LateMember(Result):
    id: str
    name: str  # its id's start when no commit this device can open names it


class Removal(Result):
    """A removal that made a member's versions late."""

    commit: str
    by: str  # the signer's name
    by_id: str
    cutoff: int
    challenged: bool  # a removed member signed it, or an honest one challenged it


class LateRemovals(Result):
    """What made a member's versions late (ops/late.py): its removals, or only a void add (a
    ``ghost``). A counting removal or a ghost means its late versions may be a thief's
    writes, so ``restore --late-of`` asks first."""

    late_of: LateMember
    removals: list[Removal]
    counting: bool
    ghost: bool
    cutoff: int  # the cutoff in force


class ReplacedSince(Result):
    """A member's newest late version not written back: a member not removed replaced it."""

    path: str
    version: str
    since: str  # the dot that replaced it


class LateRestoreResult(LateRemovals):
    """``cloudguard restore --late-of MEMBER``: its removals, and what was written back."""

    restored: list[str]
    unchanged: list[str]
    refused: list[str]
    replaced_since: list[ReplacedSince]
    deleted_by_member: list[str]  # the member deleted these last: never re-applied
    before: None = None  # the keys of the other restore, always null here
    version: None = None


__all__ = [
    "HistoryResult", "HistoryVersion", "LateMember", "LateRemovals", "LateRestoreResult",
    "Removal", "ReplacedSince", "RestoreResult",
]
