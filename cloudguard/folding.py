"""Folders that fold names: macOS, Windows and SMB treat ``Report.txt`` and ``report.txt`` (and
the NFC and NFD spellings of ``é``) as one file, while the manifest, written by case-sensitive
devices too, may hold both.

Why two steps (docs/design.md, "Case-insensitive folders"):

* **Collisions** become names of their own, once, in the manifest, as Dropbox does with
  "(Case Conflict)": the first spelling in code-point order keeps the name, every other one
  (with everything under it, for a folder) moves to ``NAME (Case Conflict).EXT``. Every
  folding device computes the same ops, so two of them doing it at once collapse into one.
  Without this, two remote files land on one local file, and each pull overwrites the other.
* **Spellings**: on such a folder, a local name that folds like a manifest path *is* that
  path, whatever case the disk shows. Without this, a case-only rename elsewhere reads as "a
  new file and a deleted one" here, and the delete removes the file just written.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from .manifest import State, resolutions
from .manifest.entry import Op
from .sync import LocalItem, newest

SUFFIX = "Case Conflict"


def fold(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


def folds(folder: Path) -> bool:
    """Does this folder's filesystem fold case? Probed with a name already there (the folder
    marker, or any entry), so nothing is written: its other spelling is found by a lookup but
    not in the listing. Not by comparing inodes, which FUSE file systems without stable inode
    numbers (fusefat, many network mounts) give per spelling."""
    try:
        listed = os.listdir(folder)
    except OSError:
        return False
    present = set(listed)
    for name in sorted(present, key=lambda n: n != ".cloudguard"):
        other = name.swapcase()
        if other == name:
            continue
        if other in present:
            return False  # both spellings listed: the names are apart
        try:
            os.lstat(folder / other)
        except FileNotFoundError:
            return False
        except OSError:
            continue
        return True
    return False


def _renamed(prefix: str, base: str, taken: set[str]) -> str:
    """``prefix + "NAME (Case Conflict[ N]).EXT"``, the first one nothing folds to yet."""
    stem, ext = os.path.splitext(base)
    if not stem:
        stem, ext = base, ""
    for number in range(1, 10_000):
        extra = f" {number}" if number > 1 else ""
        name = f"{stem} ({SUFFIX}{extra}){ext}"
        while len(name.encode()) > 255:
            stem = stem[:-1]
            name = f"{stem} ({SUFFIX}{extra}){ext}"
        if fold(prefix + name) not in taken:
            return prefix + name
    raise ValueError(f"too many case conflicts of {prefix}{base}")


def resolve(state: State) -> list[Op]:
    """Ops that give every path a name no other path folds to (see the module docstring)."""
    paths = [p for p, _dot in state.dots()]
    moved: dict[str, str] = {}  # original -> new, for folders whose children follow
    taken: set[str] = set()
    ops: list[Op] = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        head, _, base = path.rpartition("/")
        new_head = moved.get(head, head) if head else ""
        target = f"{new_head}/{base}" if new_head else base
        if fold(target) in taken:
            target = _renamed(f"{new_head}/" if new_head else "", base, taken)
        taken.add(fold(target))
        if target != path:
            moved[path] = target
            sibs = state.siblings(path)
            _dot, entry = newest(sibs)
            ops.append({"p": target, "e": resolutions.carry(entry), "rm": []})
            ops.append({"p": path, "e": None, "rm": sorted(sibs)})
    return ops


def alias(local: dict[str, LocalItem], known: Iterable[str]) -> dict[str, LocalItem]:
    """Re-key local items under the manifest's spelling of the same folded name."""
    spelled = {fold(p): p for p in known}
    out: dict[str, LocalItem] = {}
    for path, item in local.items():
        want = spelled.get(fold(path), path)
        if want != path and want not in local:
            item = item._replace(path=want)
            path = want
        out[path] = item
    return out
