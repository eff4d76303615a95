"""The base of every result, the counts they share, and the bytes ``--json`` prints."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec


class Result(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every result: keyword-only, and strict when decoded (a script's view)."""


class Counts(Result):
    """Files, folders and links apart: "updated 42" must not call 40 folders files."""

    files: int = 0
    folders: int = 0
    links: int = 0

    @staticmethod
    def of(kinds: Iterable[str]) -> Counts:
        """From entry kinds ("f", "d", "l"; anything else counts as a file)."""
        out = Counts()
        for kind in kinds:
            if kind == "d":
                out.folders += 1
            elif kind == "l":
                out.links += 1
            else:
                out.files += 1
        return out


def to_json(result: Any) -> str:
    """The text ``--json`` prints: indented, keys sorted, ASCII (what ``json.dumps`` always
    wrote). Not ``msgspec.json.encode``: it writes non-ASCII paths raw and floats such as
    1e-05 as 0.00001, and scripts compare these bytes."""
    return json.dumps(msgspec.to_builtins(result), indent=2, sort_keys=True)


def decode(data: bytes | str, kind: type[Result]) -> Any:
    """A result read back from ``--json`` output, strictly typed (what tests and scripts do)."""
    return msgspec.json.decode(data, type=kind, strict=True)


__all__ = ["Counts", "Result", "decode", "to_json"]
