"""The namespace a mount serves: the vault's entries by path, folders and their children,
stable inode numbers, and which paths differ between two views (what a poll invalidates)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def _ino(path: str) -> int:
    """Stable inode numbers (use_ino) from the path; 1 is the root."""
    if path == "/":
        return 1
    return int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:8],
                          "big") >> 2 | 2


@dataclass
class Tree:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # "/a/b" -> entry
    children: dict[str, set[str]] = field(default_factory=lambda: {"/": set()})

    @classmethod
    def of(cls, view: dict[str, dict[str, Any]]) -> Tree:
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

    def with_dir(self, path: str, mode: int) -> Tree:
        """This view and one more, empty folder (a copy: a view is never changed in place,
        other threads may be reading it)."""
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        children = {**self.children, parent: self.children.get(parent, set()) | {name},
                    path: set()}
        return Tree({**self.entries, path: {"t": "d", "x": mode & 0o777}}, children)

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def changed(self, new: Tree) -> set[str]:
        """Paths whose entry or listing differs between this view and ``new``."""
        out = {p for p in self.entries.keys() | new.entries.keys()
               if self.entries.get(p) != new.entries.get(p)}
        out |= {p for p in self.children.keys() | new.children.keys()
                if self.children.get(p) != new.children.get(p)}
        return out
