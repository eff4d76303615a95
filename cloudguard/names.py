"""File names that are not valid UTF-8, in a manifest that is.

Linux names are bytes; the manifest, the index and JSON hold text. Python hands a name's
undecodable bytes over as lone surrogates (U+DC80..U+DCFF, ``surrogateescape``), which no
UTF-8 encoder accepts. A manifest path writes each such byte as ESC followed by its two hex
digits, and a literal ESC as ESC ESC, so every name on disk has exactly one manifest path
and back (docs/format.md, "Paths"). ESC is U+241B SYMBOL FOR ESCAPE: visible in messages,
and rare enough in real names that doubling it costs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

ESC = "\u241b"
_HEX = re.compile("[89a-f][0-9a-f]")  # an undecodable byte is 0x80 or above


def from_disk(name: str) -> str:
    """The manifest form of a name (or relative path) as ``os`` returns it."""
    if name.isascii():
        return name
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"{ESC}{code - 0xDC00:02x}")
        elif ch == ESC:
            out.append(ESC + ESC)
        else:
            out.append(ch)
    return "".join(out)


def to_disk(path: str) -> str:
    """The name ``os`` functions take for a manifest path; ValueError if it is malformed."""
    if ESC not in path:
        return path
    out: list[str] = []
    i, end = 0, len(path)
    while i < end:
        ch = path[i]
        if ch != ESC:
            out.append(ch)
            i += 1
        elif path[i + 1:i + 2] == ESC:
            out.append(ESC)
            i += 2
        elif _HEX.fullmatch(path[i + 1:i + 3]):
            out.append(chr(0xDC00 + int(path[i + 1:i + 3], 16)))
            i += 3
        else:
            raise ValueError(f"malformed escape in {path!r}")
    return "".join(out)


def local(folder: Path, rel: str) -> Path:
    """Where manifest path ``rel`` lives under ``folder``."""
    return folder / to_disk(rel) if rel else folder
