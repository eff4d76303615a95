"""A manifest entry as the engine passes it around: the same dict that a segment's JSON
decodes to, typed for the checker (format.md, "Manifest payloads", ENTRY). The shape is
checked where bytes come in, by the Structs of types.py; from there on the consumers index
this TypedDict, whose keys are the short wire names, each said here in words.
"""

from __future__ import annotations

from typing import Any, Required, TypedDict

__all__ = ["Entry", "Op"]


class Entry(TypedDict, total=False):
    t: str  # kind: "f" file, "d" folder, "l" symlink
    sg: str  # the writer's Ed25519 signature over the version (signing.py)
    s: int  # plaintext size in bytes (files)
    m: int  # mtime in ns since 1970 (files, links)
    x: int  # mode bits (permissions)
    h: str  # SHA-256 of the plaintext, hex (files)
    o: str  # object id of the blob or pack under data/
    a: int  # offset of the blob in that object
    n: int  # blob length in bytes (ciphertext, padded)
    i: str  # the blob's file id, hex (the DEK's binding)
    k: str  # the DEK wrapped under a key generation, base64
    g: str  # the key generation (commitment) ``k`` is wrapped under
    w: str  # the first generation this version's DEK was wrapped under
    l: str  # noqa: E741  (wire name) symlink target
    r: int  # move count of the blob (repacks, re-encryptions)
    om: str  # MD5 of the object, hex (verify without download)
    pt: int  # a folder's time (conflict names)
    lc: int  # Lamport clock of the content (conflict order)
    wb: str  # the member that wrote the content (conflict names)
    cs: str  # the first dot of the content a carried version holds
    rd: list[str]  # dots of the moves since ``pl``
    rt: int  # time of the last move
    pl: dict[str, Any]  # where the blob was before its first remembered move
    lk: str  # local only (a staged version's journal row): the DEK under this device's key


class Op(TypedDict, total=False):
    """One change of a delta (format.md, OP): a new version of ``p`` (``e``; None: the path
    goes) replacing the versions ``rm`` names, or blobs of versions moved (``reloc``)."""

    p: Required[str]  # the path
    e: Entry | None  # the new version, or None (a delete)
    rm: list[str]  # the dots it replaces
    reloc: dict[str, dict[str, Any]]  # dot -> its blob's new location (a repack, a rekey)
