"""Reading blobs back: one ranged download per object, a reader per blob,
and the DEK of an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, suppress
from typing import IO

from .. import format as fmt
from ..errors import IntegrityError, TransportError
from ..manifest import Entry
from ..transport import MissingObject, Transport

DATA_PREFIX = "data/"


def blob_reader(entry: Entry) -> tuple[str, int, int]:
    try:
        return DATA_PREFIX + str(entry["o"]), int(entry["a"]), int(entry["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError("a manifest entry is malformed") from exc


def group_by_object(entries: list[tuple[str, Entry]]) -> dict[str, list[tuple[str, Entry]]]:
    groups: dict[str, list[tuple[str, Entry]]] = {}
    for dest, entry in entries:
        groups.setdefault(blob_reader(entry)[0], []).append((dest, entry))
    for items in groups.values():
        items.sort(key=lambda de: blob_reader(de[1])[1])
    return groups


def _again(transport: Transport, name: str, dest: str, entry: Entry, offset: int, length: int
           ) -> Generator[tuple[str, Entry, fmt.Reader | None, Exception | None], None, None]:
    """A blob the stream has passed already, read once more on its own."""
    with transport.reader(name, offset=offset, count=length) as again:
        limited = fmt.read_blob_stream(again, length)
        yield dest, entry, limited, None
        limited.read()


def read_blobs(transport: Transport, name: str, items: list[tuple[str, Entry]]
               ) -> Generator[tuple[str, Entry, fmt.Reader | None, Exception | None],
                              None, None]:
    """One ranged download per object; yields a limited reader per blob, in offset order.

    A missing object yields an error for each of its files instead of a reader.
    """
    start = blob_reader(items[0][1])[1]
    end = max(a + n for _o, a, n in (blob_reader(e) for _d, e in items))
    try:
        with transport.reader(name, offset=start, count=end - start) as stream:
            pos, last = start, (-1, -1)
            for dest, entry in items:
                _obj, offset, length = blob_reader(entry)
                if (offset, length) == last:  # one blob at two paths (a conflict copy of
                    yield from _again(transport, name, dest, entry, offset, length)  # a kept one)
                    continue
                if offset < pos:
                    raise IntegrityError(f"overlapping blobs in {name}")
                last = (offset, length)
                _skip(stream, offset - pos)
                limited = fmt.read_blob_stream(stream, length)
                yield dest, entry, limited, None
                limited.read()  # drain what a failed decrypt left
                pos = offset + length
    except MissingObject as exc:
        if isinstance(exc.__context__, GeneratorExit):
            return  # closed by its reader (the stream's end found the object gone): done
        for dest, entry in items:
            yield dest, entry, None, exc


@contextmanager
def blobs(transport: Transport, name: str, items: list[tuple[str, Entry]]
          ) -> Iterator[Iterator[tuple[str, Entry, fmt.Reader | None, Exception | None]]]:
    """:func:`read_blobs` for a caller that stops at the first integrity failure: the stream
    is closed at once, and if rclone itself failed (killed, network) its transport error
    (exit 1) is raised instead, since it explains the short or garbled data (not exit 3)."""
    gen = read_blobs(transport, name, items)
    try:
        yield gen
    except IntegrityError as exc:
        try:
            gen.close()
        except TransportError as failed:
            raise failed from exc
        raise
    finally:
        gen.close()


def _skip(stream: IO[bytes], count: int) -> None:
    while count > 0:
        got = stream.read(min(count, 1024 * 1024))
        if not got:
            return
        count -= len(got)


def dek_of(entry: Entry, keks: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    """``keks`` maps a KEK commitment (the entry's ``g``) to a KEK of a verified commit."""
    try:
        file_id = bytes.fromhex(str(entry["i"]))
        return fmt.unwrap_dek(keks(str(entry["g"])), fmt.unb64(entry["k"]), file_id), file_id
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError("a manifest entry is malformed") from exc


def true_key(transport: Transport, one: Entry, two: Entry, keks: Callable[[str], bytes]
             ) -> Entry | None:
    """Two copies of one version at one place may differ only in how the DEK is wrapped (a
    rewrap). When both unwrap here to different DEKs, one is junk (a removed member's late
    snapshot, review round 8, W7): the copy whose DEK opens its blob's header (the key
    commitment, one small ranged read) is returned. A copy whose wrap fails under a KEK this
    device holds is junk too, and loses to one that unwraps (round 21, KK2: else the
    tie-break on bytes the removed member grinds decided). None when both give one DEK (the
    usual rewrap: nothing read) or when this device cannot tell."""
    deks = [_dek_or_none(e, keks) for e in (one, two)]
    if deks.count(_JUNK) == 1 and None not in deks:
        return two if deks[0] == _JUNK else one
    if None in deks or _JUNK in deks or deks[0] == deks[1]:
        return None
    opens = [key_opens(transport, e, d) for e, d in zip((one, two), deks, strict=True)]
    if opens == [True, False]:
        return one
    if opens == [False, True]:
        return two
    return None


_JUNK = b""  # the wrap fails under a KEK this device holds


def _dek_or_none(entry: Entry, keks: Callable[[str], bytes]) -> bytes | None:
    """The DEK; ``_JUNK`` when the wrap fails under a KEK held here; None when not held."""
    try:
        kek = keks(str(entry.get("g")))
    except IntegrityError:
        return None
    try:
        return dek_of(entry, lambda _g: kek)[0]  # the KEK is looked up once
    except IntegrityError:
        return _JUNK


def key_opens(transport: Transport, entry: Entry, dek: bytes | None) -> bool | None:
    """Does ``dek`` open the key commitment of the blob ``entry`` names (None: cannot tell)."""
    if dek is None:
        return None
    try:
        with transport.reader(DATA_PREFIX + str(entry["o"]), offset=int(entry.get("a", 0)),
                              count=fmt.BLOB_HEADER_SIZE) as stream:
            fmt.open_blob_header(fmt.read_exact(stream, fmt.BLOB_HEADER_SIZE), dek,
                                 bytes.fromhex(str(entry["i"])))
        return True
    except (IntegrityError, KeyError, TypeError, ValueError):
        return False
    except (TransportError, MissingObject):
        return None


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def blob_matches(transport: Transport, entry: Entry, keks: Callable[[str], bytes]) -> bool:
    """Does the blob ``entry`` names decrypt, to its end, to the plaintext its signed ``h``
    names? Read before a place a removed member stated is taken (manifest/refused.py): a
    place that fails is never adopted, so no one's word can point a version at junk."""
    gen = None
    try:
        gen = read_blobs(transport, DATA_PREFIX + str(entry["o"]), [("", entry)])
        for _dest, found, reader, _err in gen:
            if reader is None:
                return False
            dek, file_id = dek_of(found, keks)
            fmt.decrypt_blob(reader, _Discard(), dek, file_id, str(found.get("h")))
            fmt.expect_end(reader)
        return True
    except (IntegrityError, TransportError, MissingObject, KeyError, ValueError):
        return False
    finally:  # its download stops here, not at garbage collection (round 24, NN3)
        if gen is not None:
            with suppress(IntegrityError, TransportError, MissingObject):
                gen.close()
