"""Ranged reads (issue 10, open_reader): only the chunks a read touches are downloaded and
decrypted, each chunk is authenticated on its own, and a chunk from elsewhere fails."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import cg

from cloudguard import format as fmt
from cloudguard import reader, sync, vault
from cloudguard.errors import IntegrityError


def _blob(size: int, padding: bool = True) -> tuple[bytes, bytes, bytes, bytes]:
    plain = os.urandom(size)
    dek, file_id = fmt.new_dek(), fmt.new_file_id()
    out = io.BytesIO()
    fmt.encrypt_blob(io.BytesIO(plain), out, dek, file_id, size, padding)
    return plain, out.getvalue(), dek, file_id


@pytest.mark.parametrize("size", [0, 1, fmt.CHUNK_SIZE - 1, fmt.CHUNK_SIZE, 3 * fmt.CHUNK_SIZE + 7,
                                  300_001])
def test_every_chunk_decrypts_on_its_own(size: int) -> None:
    plain, blob, dek, file_id = _blob(size)
    opened = fmt.open_blob(blob[:fmt.BLOB_HEADER_SIZE], dek, file_id)
    assert opened.blob_len == len(blob)
    got = b""
    for index in range(opened.chunks):
        off, length = opened.chunk_span(index)
        got += fmt.decrypt_chunk(opened, index, blob[off:off + length])
    assert got == plain


def test_a_chunk_from_another_place_or_blob_fails() -> None:
    _plain, blob, dek, file_id = _blob(5 * fmt.CHUNK_SIZE)
    opened = fmt.open_blob(blob[:fmt.BLOB_HEADER_SIZE], dek, file_id)
    off1, len1 = opened.chunk_span(1)
    off2, _len2 = opened.chunk_span(2)
    with pytest.raises(IntegrityError):  # chunk 2 offered as chunk 1
        fmt.decrypt_chunk(opened, 1, blob[off2:off2 + len1])
    _p, other, _d, _f = _blob(5 * fmt.CHUNK_SIZE)
    with pytest.raises(IntegrityError):  # chunk 1 of another version
        fmt.decrypt_chunk(opened, 1, other[off1:off1 + len1])
    last = opened.chunks - 1
    offl, lenl = opened.chunk_span(last)
    with pytest.raises(IntegrityError):  # the final chunk offered as a middle one
        fmt.decrypt_chunk(opened, last - 1, blob[offl:offl + lenl])
    with pytest.raises(IntegrityError):  # flipped bit
        bad = bytearray(blob[off1:off1 + len1])
        bad[5] ^= 1
        fmt.decrypt_chunk(opened, 1, bytes(bad))


class Counting:
    """A transport that counts what it downloads, and can hand out tampered bytes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.downloaded = 0
        self.requests = 0
        self.flip_at: int | None = None  # absolute object offset whose byte is flipped

    @contextmanager
    def reader(self, name: str, offset: int = 0, count: int | None = None
               ) -> Iterator[IO[bytes]]:
        self.requests += 1
        with self.inner.reader(name, offset=offset, count=count) as stream:
            data = stream.read()
        if self.flip_at is not None and offset <= self.flip_at < offset + len(data):
            pos = self.flip_at - offset
            data = data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:]
        self.downloaded += len(data)
        yield io.BytesIO(data)


def test_ranged_reads_download_only_the_chunks_asked_for(local_remote: str,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    rng = random.Random(7)
    big = rng.randbytes(24 * 1024 * 1024 + 12345)
    (folder / "big.bin").write_bytes(big)
    for i in range(5):
        (folder / f"small{i}.txt").write_bytes(rng.randbytes(3000 + i))
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    with vault.session(str(folder)) as s:
        counting = Counting(s.transport)
        _dot, entry = sync.newest(s.state.siblings("big.bin"))
        f = reader.FileReader(counting, entry, s.ring.kek, path="big.bin")  # type: ignore[arg-type]
        middle = len(big) // 2
        assert f.read(middle, 4096) == big[middle:middle + 4096]
        assert counting.downloaded <= 256 * 1024, counting.downloaded
        before = counting.requests
        assert f.read(middle + 100, 1000) == big[middle + 100:middle + 1100]  # from the cache
        assert counting.requests == before
        for _ in range(30):
            off = rng.randrange(len(big))
            n = rng.randrange(1, 300_000)
            assert f.read(off, n) == big[off:off + n]
        assert f.read(len(big) - 10, 100) == big[-10:]
        assert f.read(len(big), 10) == b""
        # a small file packed with others: its own offset in the pack
        _dot, small = sync.newest(s.state.siblings("small3.txt"))
        g = reader.FileReader(s.transport, small, s.ring.kek, path="small3.txt")
        assert g.read(0, 10_000) == (folder / "small3.txt").read_bytes()
        # tampering with one chunk: that read fails naming the object, others still work
        tampered = Counting(s.transport)
        obj, base, _n = sync.blob_reader(entry)
        tampered.flip_at = base + fmt.BLOB_HEADER_SIZE + 3 * (fmt.CHUNK_SIZE + fmt.TAG_SIZE) + 10
        h = reader.FileReader(tampered, entry, s.ring.kek, path="big.bin")  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match=obj.split("/")[-1]):
            h.read(3 * fmt.CHUNK_SIZE, 10)
        assert h.read(0, 10) == big[:10]
    r = vault.open_reader(str(folder), "small0.txt")
    assert r.read(0, 5) == (folder / "small0.txt").read_bytes()[:5]
    with pytest.raises(Exception, match="not in the vault"):
        vault.open_reader(str(folder), "nope.txt")
