"""The namespace a mount serves: the vault's entries by path, folders and their children,
stable inode numbers, and which paths differ between two views (what a poll invalidates)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..manifest.entry import Entry
from ..ops import namelog


def _ino(path: str) -> int:
    """Stable inode numbers (use_ino) from the path; 1 is the root."""
    if path == "/":
        return 1
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8],
                          "big") >> 2 | 2


@dataclass
class Tree:
    entries: dict[str, Entry] = field(default_factory=dict)  # "/a/b" -> entry
    children: dict[str, set[str]] = field(default_factory=lambda: {"/": set()})

    @classmethod
    def of(cls, view: dict[str, Entry]) -> Tree:
        tree = cls()
        for rel, entry in view.items():
            path = "/" + rel
            tree.entries[path] = entry
            parts = rel.split("/")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth]) if depth else "/"
                tree.children.setdefault(parent, set()).add(parts[depth])
            if entry.get("t") == "d":
                tree.children.setdefault(path, set())
        return tree

    def apply(self, changes: dict[str, Entry | None]) -> Tree:
        """This view with ``changes`` made (path -> its new entry, None: it goes), as a copy: a
        view is never changed in place, other threads may be reading it. A folder left with
        no entry and nothing in it goes, as :meth:`of` would leave it."""
        entries, children = dict(self.entries), dict(self.children)
        copied: set[str] = set()

        def kids(path: str) -> set[str]:
            if path not in copied or path not in children:  # (copied, then pruned)
                children[path] = set(children.get(path, ()))
                copied.add(path)
            return children[path]

        for path in sorted((p for p, e in changes.items() if e is None),
                           key=lambda p: p.count("/"), reverse=True):  # deepest first
            entries.pop(path, None)
            node = path
            while node != "/" and not children.get(node):
                entry = entries.get(node)
                if entry is not None and entry.get("t") == "d":
                    break  # an empty folder of its own
                children.pop(node, None)
                if entry is not None:
                    break  # a file, listed where it is
                parent, _, name = node.rpartition("/")
                node = parent or "/"
                if node in children:
                    kids(node).discard(name)
        for path, entry in changes.items():
            if entry is None:
                continue
            entries[path] = entry
            if entry.get("t") == "d":
                kids(path)
            elif not children.get(path, True):
                del children[path]  # an empty folder replaced by a file
            node = path
            while node != "/":
                parent, _, name = node.rpartition("/")
                parent = parent or "/"
                if name in children.get(parent, ()):
                    break  # listed, and so is everything above it
                kids(parent).add(name)
                node = parent
        return Tree(entries, children)

    def replayed(self, rows: list[tuple[str, dict[str, Any]]]) -> Tree:
        """This view with staged rows (relative path, row; ops/namelog.py) replayed in order:
        what the vault shows once they are committed."""
        tree = self
        for path, row in rows:
            got = namelog.changes(_Relative(tree), path, row, drafts=True)
            if got:
                tree = tree.apply({"/" + p: e for p, e in got.items()})
        return tree

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def changed(self, new: Tree) -> set[str]:
        """Paths whose entry or listing differs between this view and ``new``."""
        out = {p for p in self.entries.keys() | new.entries.keys()
               if self.entries.get(p) != new.entries.get(p)}
        out |= {p for p in self.children.keys() | new.children.keys()
                if self.children.get(p) != new.children.get(p)}
        return out


class _Relative:
    """A tree seen by relative paths (``a/b``), as ops/namelog.py replays a row over it."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def get(self, path: str) -> Entry | None:
        return self.tree.entries.get("/" + path)

    def under(self, path: str) -> list[str]:
        out: list[str] = []
        todo = ["/" + path]
        while todo:
            node = todo.pop()
            for name in self.tree.children.get(node, ()):
                child = node.rstrip("/") + "/" + name
                if child in self.tree.entries:
                    out.append(child[1:])
                todo.append(child)
        return sorted(out)
