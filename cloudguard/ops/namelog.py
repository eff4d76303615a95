"""Name operations staged with the versions (issue 12): a mount's unlink, rmdir, rename, chmod
and utimens are rows of the staged journal (state.Index, table ``staged``), in order with
the staged versions, folders and symlinks, and are committed in their delta
(:func:`~cloudguard.ops.write.commit_staged`). A row is durable against a killed process as
soon as it is written, as a staged version is.

A row is an entry (``t`` f, d or l: a version, a folder, a symlink) or an operation (``op``):

- ``rm``: the path itself goes (a file, or a folder the mount found empty); never what
  another device put under it meanwhile;
- ``mv`` with ``to``: the path and everything under it move; what was at ``to`` itself is
  replaced;
- ``x``: permission bits; a folder with no entry of its own gets one;
- ``m``: modification time (ns); a folder has no time of its own.

:func:`changes` says what one row does to a view of the vault. The engine replays the journal
with it at commit, the mount replays what is not committed yet over each view it serves
(mount/tree.py): both see the same result.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from ..errors import UsageError
from ..manifest.entry import Entry

Row = dict[str, Any]  # a staged row: a version (an entry) or a name operation (``op``)


class View(Protocol):
    """The vault's entries by relative path, as a row is replayed over them."""

    def get(self, path: str, /) -> Entry | None: ...

    def under(self, path: str, /) -> list[str]:
        """The paths strictly under ``path`` that have an entry."""
        ...


def rm() -> Row:
    return {"op": "rm"}


def mv(to: str) -> Row:
    return {"op": "mv", "to": to}


def mode(bits: int) -> Row:
    return {"op": "x", "x": bits & 0o777}


def mtime(ns: int) -> Row:
    return {"op": "m", "m": ns}


def changes(view: View, path: str, row: Row, drafts: bool = False
            ) -> dict[str, Entry | None]:
    """What ``row`` (staged for ``path``) does to ``view``: path -> its new entry (None: it
    goes). Paths are relative (``a/b``). ``drafts``: the view lacks the versions staged and
    not committed (a mount shows them from its drafts), so a rename of nothing there still
    replaces its target; in the vault, a rename of what is gone meanwhile (another device
    deleted it) leaves the target as it is."""
    op = row.get("op")
    if op is None:  # a version, a symlink or a folder
        if row.get("t") == "d" and view.get(path) is not None:
            return {}  # a folder that is there by now (or a file from elsewhere) stays
        return {path: cast(Entry, row)}
    here = view.get(path)
    if op == "rm":
        return {} if here is None else {path: None}
    if op == "mv":
        to = str(row["to"])
        if to == path or to.startswith(path + "/") or path.startswith(to + "/"):
            return {}  # the mount refuses these; a row never moves a folder into itself
        moved = [p for p in [path, *view.under(path)] if view.get(p) is not None]
        if not moved and not drafts:
            return {}
        out: dict[str, Entry | None] = {} if view.get(to) is None else {to: None}
        for old in moved:
            out[old] = None
            out[to + old[len(path):]] = view.get(old)
        return out
    if op == "x":
        bits = int(row["x"]) & 0o777
        if here is None:  # a folder known only by what is in it gets an entry of its own
            return {path: {"t": "d", "x": bits}} if view.under(path) else {}
        if here.get("t") == "l" or here.get("x") == bits:
            return {}
        return {path: {**here, "x": bits}}
    if op == "m":
        if here is None or here.get("t") == "d" or here.get("m") == row["m"]:
            return {}
        return {path: {**here, "m": int(row["m"])}}
    raise UsageError(f"a staged operation this version does not know: {op!r}")
