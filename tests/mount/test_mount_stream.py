"""The mount's fast paths (issue 12, benchmark): a file written from its start is sealed into
its blob as it is written (ops/blobstream.py), sequential reads read ahead, a local remote is
read from its files, mkdir is staged with the versions. The unit tests need no FUSE; the
mount tests check the same through a real mount, kill -9 included."""

from __future__ import annotations

import hashlib
import io
import os
import random
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import fuse_available
from helpers import cg, cg_json

from cloudguard import format as fmt
from cloudguard.errors import IntegrityError
from cloudguard.mount.draft import CHUNK, Draft
from cloudguard.ops import blobstream
from cloudguard.ops.blobstream import BlobStream
from cloudguard.transport import MissingObject

needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")


class Recording(fmt.BlobSealer):
    """Remembers every (index, final) sealed under its key: a pair twice reuses a nonce."""

    seen: list[set[tuple[int, bool]]] = []

    def __init__(self, dek: bytes, file_id: bytes) -> None:
        super().__init__(dek, file_id)
        self.pairs: set[tuple[int, bool]] = set()
        Recording.seen.append(self.pairs)

    def seal(self, index: int, data: bytes, final: bool) -> bytes:
        assert (index, final) not in self.pairs, f"nonce reused: chunk {index}, final {final}"
        self.pairs.add((index, final))
        return super().seal(index, data, final)


def _opened(blob: BlobStream) -> bytes:
    assert blob.path is not None
    out = io.BytesIO()
    info = blob.finish()
    fmt.decrypt_blob(io.BytesIO(blob.path.read_bytes()), out, blob.dek, blob.file_id,
                     info.sha256)
    return out.getvalue()


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK,
                                  (1 << 20) + 5, 9 * (1 << 20) + 3])
def test_a_stream_is_the_blob_encrypt_blob_makes(size: int, padding: bool,
                                                tmp_path: Path) -> None:
    """Written in pieces of every size, the finished stream is a blob of the format's exact
    length that decrypts (the final flag on its last chunk) to the content, with its hash."""
    rng = random.Random(size)
    plain = rng.randbytes(size)
    blob = BlobStream(tmp_path, padding, md5=True)
    pos = 0
    while pos < size:
        n = rng.choice([1, 4096, CHUNK, CHUNK + 1, 1 << 20])
        assert blob.write(pos, plain[pos:pos + n])
        pos += n
    assert blob.read(0, size + 10) == plain  # before it is finished, from file and memory
    info = blob.finish()
    assert (info.size, info.sha256) == (size, hashlib.sha256(plain).hexdigest())
    assert info.blob_len == fmt.blob_size(size, padding) == blob.path.stat().st_size  # type: ignore[union-attr]
    assert _opened(blob) == plain
    assert blob.read(0, size + 10) == plain  # after it, through the header
    assert blob.object_md5() == hashlib.md5(blob.path.read_bytes()).hexdigest()  # type: ignore[union-attr]
    assert not blob.write(size, b"more") and not blob.truncate(0)  # finished: read only
    blob.close()
    assert list(tmp_path.iterdir()) == []  # never staged: its file goes with it


def test_no_nonce_is_used_twice_and_drafts_match_a_buffer(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Random writes (mostly appends, some back into sealed chunks), truncates and reads on
    new drafts against a bytearray: the content always matches, a stream that is staged
    decrypts to it, and no (index, final) pair is ever sealed twice under one blob key."""
    monkeypatch.setattr(fmt, "BlobSealer", Recording)
    Recording.seen = []
    streamed = general = 0
    for seed in range(40):
        rng = random.Random(seed)
        spool = tmp_path / str(seed)
        spool.mkdir()
        pad = seed % 2 == 0
        draft = Draft(None, 0, spool, lambda at=spool, pad=pad: BlobStream(at, pad, False))
        model = bytearray()
        for _ in range(rng.randrange(1, 50)):
            op = rng.random()
            if op < 0.7:
                off = len(model) if rng.random() < 0.85 else rng.randrange(len(model) + CHUNK)
                data = rng.randbytes(rng.choice([1, 4096, CHUNK, CHUNK + 1, 1 << 20,
                                                 rng.randrange(1, 3 * CHUNK)]))
                draft.write(off, data)
                model[len(model):off] = bytes(max(0, off - len(model)))
                model[off:off + len(data)] = data
            elif op < 0.8:
                length = rng.randrange(len(model) + CHUNK) if rng.random() < 0.7 else 0
                draft.truncate(length)
                del model[length:]
                model += bytes(length - len(model))
            else:
                off, n = rng.randrange(len(model) + 10), rng.randrange(1, 3 * CHUNK)
                assert draft.read(off, n) == bytes(model[off:off + n])
            assert draft.size == len(model)
        blob = draft.sealing()
        if blob is not None:
            streamed += 1
            assert _opened(blob) == bytes(model)
            draft.staged_stream()
            assert draft.read(0, len(model) + 1) == bytes(model)  # reads on from the blob
            draft.write(len(model) // 2, b"after")  # a change after staging: general path
            model[len(model) // 2:len(model) // 2 + 5] = b"after"
        else:
            general += 1
        stream = draft.stream()
        assert b"".join(iter(lambda s=stream: s.read(50_000), b"")) == bytes(model)  # type: ignore[misc]
        draft.close()
        assert list(spool.iterdir()) == []
    assert streamed >= 10 and general >= 10, (streamed, general)
    assert sum(len(pairs) for pairs in Recording.seen) > 100


def test_a_failed_write_breaks_the_stream_and_the_draft_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half way (a full disk) may leave a sealed chunk on disk: the stream
    never seals that index again; the draft keeps its content and stages it afresh."""
    draft = Draft(None, 0, tmp_path, lambda: BlobStream(tmp_path, True, False))
    first = os.urandom(3 * CHUNK)
    draft.write(0, first)
    real = os.pwritev

    def full(*args: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(OSError):
        draft.write(len(first), os.urandom(2 * CHUNK))
    monkeypatch.setattr(os, "pwritev", real)
    blob = draft.blob
    assert blob is not None and not blob.usable
    assert not blob.write(len(first), b"x")
    with pytest.raises(OSError):
        blob.finish()
    assert draft.sealing() is None  # the general path: a new DEK and file id at staging
    more = os.urandom(CHUNK + 3)
    draft.write(len(first), more)
    assert draft.read(0, 10 * CHUNK) == first + more
    draft.close()


def test_a_failed_write_on_the_writer_thread_keeps_the_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big stream writes on a thread of its own: a write failing there keeps its sealed
    chunks in memory, the next write raises, and the draft stages the content afresh."""
    draft = Draft(None, 0, tmp_path, lambda: BlobStream(tmp_path, True, False))
    content = os.urandom(6 * (1 << 20))
    for off in range(0, len(content), 1 << 20):
        draft.write(off, content[off:off + (1 << 20)])
    real = os.pwritev

    def full(*args: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    more = os.urandom(3 * (1 << 20))
    with pytest.raises(OSError):  # the failure shows on a later write, at the latest
        for off in range(0, len(more), 1 << 20):
            draft.write(len(content) + off, more[off:off + (1 << 20)])
            draft.read(len(content) + off, 1)  # waits for the writer
    monkeypatch.setattr(os, "pwritev", real)
    assert draft.blob is not None and not draft.blob.usable
    assert draft.sealing() is None
    got = draft.read(0, draft.size)
    assert got == (content + more)[:draft.size] and draft.size >= len(content)
    stream = draft.stream()
    assert b"".join(iter(lambda: stream.read(1 << 20), b"")) == got
    draft.close()


def test_sweep_removes_only_dead_processes_streams(tmp_path: Path) -> None:
    live = BlobStream(tmp_path, True, False)
    live.write(0, os.urandom(3 * CHUNK))
    dead = tmp_path / f"{blobstream.PREFIX}999999999-{'0' * 32}"
    dead.write_bytes(b"ciphertext of a killed mount")
    other = tmp_path / "0123abcd"  # a staged object
    other.write_bytes(b"staged")
    assert blobstream.sweep(tmp_path) == 1
    assert not dead.exists() and other.exists() and live.path is not None and live.path.exists()
    live.close()


def test_a_local_remote_is_read_from_its_files(tmp_path: Path) -> None:
    """The rcd transport reads a plain local path's objects directly: exact ranges, a
    missing object is MissingObject, a name that climbs out or a symlink is refused."""
    from cloudguard.rcd import RcdTransport

    root = tmp_path / "store"
    (root / "data").mkdir(parents=True)
    body = os.urandom(300_000)
    (root / "data" / "abc").write_bytes(body)
    (tmp_path / "secret").write_bytes(b"not an object")
    (root / "data" / "link").symlink_to(tmp_path / "secret")
    transport = RcdTransport(str(root))
    try:
        with transport.reader("data/abc", offset=1000, count=70_000) as stream:
            assert fmt.read_exact(stream, 80_000) == body[1000:71_000]
        with transport.reader("data/abc") as stream:
            assert stream.read() == body
        with pytest.raises(MissingObject):
            with transport.reader("data/nope", offset=0, count=10):
                pass
        for bad in ("data/../../secret", "/etc/passwd", "data/link"):
            with pytest.raises(Exception, match="not an object|downloading"):
                with transport.reader(bad, offset=0, count=10) as stream:
                    stream.read()
    finally:
        transport.close()


def test_sequential_reads_read_ahead_and_random_ones_do_not(local_remote: str,
                                                            tmp_path: Path) -> None:
    from test_reader import Counting

    from cloudguard import reader, sync, vault

    folder = tmp_path / "docs"
    folder.mkdir()
    big = random.Random(3).randbytes(12 * 1024 * 1024 + 77)
    (folder / "big.bin").write_bytes(big)
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    with vault.session(str(folder)) as s:
        _dot, entry = sync.newest(s.state.siblings("big.bin"))
        counting = Counting(s.transport)
        f = reader.FileReader(counting, entry, s.ring.kek, path="big.bin")  # type: ignore[arg-type]
        middle = len(big) // 2
        assert f.read(middle, 4096) == big[middle:middle + 4096]
        assert counting.downloaded <= 256 * 1024  # one random read: no read ahead
        counting = Counting(s.transport)
        f = reader.FileReader(counting, entry, s.ring.kek, path="big.bin")  # type: ignore[arg-type]
        got = bytearray()
        for off in range(0, len(big), 128 * 1024):  # the kernel's request size
            got += f.read(off, 128 * 1024)
        assert got == big
        assert counting.requests <= len(big) // (1 << 20) + 8, counting.requests  # not 97
        assert counting.downloaded <= len(big) * 1.1  # each chunk once


@pytest.mark.fuse  # under CI=true a skip is a failure (conftest.py)
@needs_fuse
@pytest.mark.parametrize("kill", [False, True])
def test_big_writes_and_random_writes_read_back_exact(local_remote: str, tmp_path: Path,
                                                      kill: bool) -> None:
    """1 MiB writes read back byte for byte while open, after close (before and after the
    commit) and after a remount; random writes into the middle of a streamed file, an
    append and an O_TRUNC rewrite too. With kill -9: what was closed before is there, the
    file being rewritten when the kill landed is its old version, and the killed mount's
    stream files are swept by the next mount."""
    from test_mount import mounted

    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    rng = random.Random(5)
    big = rng.randbytes(5 * (1 << 20) + 12_345)
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        with open(mnt / "big.bin", "wb", buffering=0) as fh:
            for off in range(0, len(big), 1 << 20):
                fh.write(big[off:off + (1 << 20)])
            with open(mnt / "big.bin", "rb") as again:  # while it is still open
                assert again.read() == big
        assert (mnt / "big.bin").read_bytes() == big  # staged, maybe not committed
        model = bytearray(big)
        with open(mnt / "big.bin", "r+b", buffering=0) as fh:
            for _ in range(20):
                off, data = rng.randrange(len(model)), rng.randbytes(rng.randrange(1, 200_000))
                fh.seek(off)
                fh.write(data)
                model[off:off + len(data)] = data
        with open(mnt / "big.bin", "ab") as fh:
            fh.write(b"appended")
        model += b"appended"
        assert (mnt / "big.bin").read_bytes() == bytes(model)
        os.mkdir(mnt / "new")  # staged with the versions
        (mnt / "new" / "small.txt").write_bytes(b"small")
        assert sorted(os.listdir(mnt)) == ["big.bin", "new"]
        if kill:
            fh2 = open(mnt / "big.bin", "r+b", buffering=0)  # left open: the mount dies
            fh2.truncate(0)
            fh2.write(rng.randbytes(3 * (1 << 20)))  # half a new version, never closed
            proc.kill()
            proc.wait(timeout=10)
            with suppress(OSError):  # the mount is gone under it
                fh2.close()
    if kill:
        spool = next(Path(os.environ["CLOUDGUARD_HOME"]).rglob("staged"))
        assert list(spool.glob(blobstream.PREFIX + "*")), "the killed stream left no file"
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):
        assert (mnt / "big.bin").read_bytes() == bytes(model)
        assert (mnt / "new" / "small.txt").read_bytes() == b"small"
        if kill:
            assert not list(spool.glob(blobstream.PREFIX + "*"))  # swept
    to_pull = cg_json("status", "--folder", str(folder))["to_pull"]
    assert "big.bin" in to_pull and "new/small.txt" in to_pull
    cg("pull", "--folder", str(folder))
    assert (folder / "big.bin").read_bytes() == bytes(model)  # pull checks the hash


@pytest.mark.fuse
@needs_fuse
def test_one_big_unaligned_write_into_a_file_reads_back_after_remount(local_remote: str,
                                                                     tmp_path: Path) -> None:
    """One write() of 1 MiB + 17 bytes at an odd offset into a pushed file, and one across its
    end: the kernel passes each on in requests of up to 1 MiB (libfuse 3.14's default
    max_write; the first cut at the page edge), so one callback rewrites 16 chunks of a draft
    over a base version, partial at both ends. Exact while open, after a remount and a pull."""
    from test_mount import mounted

    folder = tmp_path / "docs"
    folder.mkdir()
    rng = random.Random(17)
    model = bytearray(rng.randbytes(3 * (1 << 20) + 5))
    (folder / "big.bin").write_bytes(model)
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        fd = os.open(mnt / "big.bin", os.O_RDWR)
        try:
            for off in (3 * CHUNK + 12_345, len(model) - 1_001):
                data = rng.randbytes((1 << 20) + 17)
                assert os.pwrite(fd, data, off) == len(data)
                model[off:off + len(data)] = data
            assert os.pread(fd, len(model) + 10, 0) == bytes(model)
        finally:
            os.close(fd)
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):
        assert (mnt / "big.bin").read_bytes() == bytes(model)
    cg("pull", "--folder", str(folder))
    assert (folder / "big.bin").read_bytes() == bytes(model)


@pytest.mark.fuse
@needs_fuse
def test_mkdir_is_staged_and_behaves(local_remote: str, tmp_path: Path) -> None:
    """A staged folder shows at once, refuses a second mkdir and a file of its name, can be
    removed while empty, and reaches the vault with the versions in one commit."""
    import errno

    from test_mount import mounted

    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        os.makedirs(mnt / "a" / "b" / "c")
        (mnt / "a" / "b" / "c" / "f.txt").write_text("deep")
        assert os.path.isdir(mnt / "a" / "b")
        with pytest.raises(FileExistsError):
            os.mkdir(mnt / "a")
        (mnt / "file").write_text("x")
        with pytest.raises(FileExistsError):
            os.mkdir(mnt / "file")
        os.mkdir(mnt / "empty")
        os.rmdir(mnt / "empty")
        assert not (mnt / "empty").exists()
        with pytest.raises(OSError) as err:
            os.rmdir(mnt / "a")
        assert err.value.errno == errno.ENOTEMPTY
        os.mkdir(mnt / "kept", 0o700)
        assert os.stat(mnt / "kept").st_mode & 0o777 == 0o700
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount2.log"):
        assert (mnt / "a" / "b" / "c" / "f.txt").read_text() == "deep"
        assert os.path.isdir(mnt / "kept") and not (mnt / "empty").exists()


def test_a_corrupted_spool_chunk_fails_the_read_not_silently(tmp_path: Path) -> None:
    """A sealed chunk changed on disk while the file is open fails authentication."""
    blob = BlobStream(tmp_path, True, False)
    blob.write(0, os.urandom(3 * CHUNK))
    assert blob.path is not None
    with open(blob.path, "r+b") as fh:
        fh.seek(fmt.BLOB_HEADER_SIZE + 10)
        fh.write(b"\xff")
    with pytest.raises(IntegrityError):
        blob.read(0, 10)
    blob.close()

