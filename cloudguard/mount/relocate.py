"""A version read through the mount that follows a re-encryption.

Why: a re-encryption (``key rotate --reencrypt``, ``device remove --reencrypt``, run by any
process or device) moves every current version to a new blob under a new key and deletes the
old blobs and key objects. The mount learns of it at its next poll (15 s); until then the
entry it serves names a deleted blob and a KEK nobody can open, so an open failed (EIO), and
so did the next read of a file open across the re-encryption, and a draft's unchanged
chunks, which come from the version it was opened on. Here a failed open or read refreshes
the served view once and, when the path now holds the same content (size and SHA-256) under
another blob or key, carries on from it. A file renamed since it was opened (in the mount or
on another device) is no longer at its path: then any served file with that content will do,
since equal signed SHA-256 means equal bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..errors import CloudguardError
from ..manifest.entry import Entry
from ..reader import FileReader

_SAME = ("s", "h")  # what a relocation keeps
_MOVED = ("o", "a", "k", "g", "i")  # what it changes


def relocated(old: Entry, new: Entry | None) -> bool:
    """Is ``new`` the content of ``old`` under another blob or key (a re-encryption)?"""
    return (new is not None and new.get("t") == "f"
            and all(new.get(k) == old.get(k) for k in _SAME)
            and any(new.get(k) != old.get(k) for k in _MOVED))


def relocation(old: Entry, path: str,
               entries: Mapping[str, Entry]) -> Entry | None:
    """The version now holding ``old``'s content: at ``path`` if it is there, else at any
    path (the file was renamed), else None."""
    if relocated(old, entries.get(path)):
        return entries[path]
    return next((e for e in entries.values() if relocated(old, e)), None)


class Following:
    """A reader of ``entry`` (shown at ``path``) that, when a read fails, asks ``refresh``
    for the served entries (after reloading the view) and reads the relocated version
    instead, once per relocation."""

    def __init__(self, entry: Entry, path: str,
                 open_entry: Callable[[Entry], FileReader],
                 refresh: Callable[[], Mapping[str, Entry]]) -> None:
        self.entry, self.path = entry, path
        self._open, self._refresh = open_entry, refresh
        self.reader = self._first()

    def _first(self) -> FileReader:
        try:
            return self._open(self.entry)
        except CloudguardError:
            if not self._follow():
                raise
            return self._open(self.entry)

    def _follow(self) -> bool:
        new = relocation(self.entry, self.path, self._refresh())
        if new is None:
            return False
        self.entry = new
        return True

    def read(self, offset: int, n: int) -> bytes:
        try:
            return self.reader.read(offset, n)
        except CloudguardError:
            if not self._follow():
                raise
        self.reader = self._open(self.entry)
        return self.reader.read(offset, n)
