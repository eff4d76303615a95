"""Ignore rules in gitignore syntax (pathspec): editor and office temp and lock files are never
read, never uploaded. The user adds patterns in the folder's settings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pathspec

from .errors import UsageError

# Office lock/owner files, LibreOffice locks, vim swap and backup files, temp files, macOS and
# Windows folder litter, emacs locks.
DEFAULTS = ("~$*", ".~lock.*#", "*.swp", "*.swx", "*~", "*.tmp", ".DS_Store", "Thumbs.db",
            ".#*", ".goutputstream-*")


class Ignore:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.patterns = [*DEFAULTS, *extra]
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"ignore pattern is not valid gitignore syntax: {exc}") from exc

    def __call__(self, path: str) -> bool:
        """Is ``path`` (relative, ``/``-separated) ignored?"""
        return bool(path) and self._spec.match_file(path)

    def lock_for(self, path: str, exists: Iterable[str]) -> str | None:
        """The office lock file that says ``path`` is open in an editor, if one of
        ``exists`` is: a remote change to it must then arrive as a conflict copy."""
        candidates = set(lock_names(path))
        return next((c for c in exists if c in candidates), None)


def lock_names(path: str) -> tuple[str, ...]:
    """The lock files LibreOffice (``.~lock.NAME#``) and Microsoft Office (``~$NAME``, and
    ``~$`` over the first two letters of a long name) keep beside a document they have open."""
    head, _, base = path.rpartition("/")
    prefix = f"{head}/" if head else ""
    return (f"{prefix}.~lock.{base}#", f"{prefix}~${base}", f"{prefix}~${base[2:]}")


def open_in_office(folder: Path, path: str) -> bool:
    """Is ``path`` (the manifest's form) open in an office program, by its lock file?"""
    from .names import to_disk

    return any(os.path.lexists(folder / to_disk(name)) for name in lock_names(path))
