"""The pure plans under hypothesis, and whole operations on the in-memory transport (issue 10,
item 4): fast, no rclone, faults injected at the transport boundary."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import PASSPHRASE
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudguard import sync, vault
from cloudguard.errors import TransportError
from cloudguard.held import use_transport
from cloudguard.memtransport import MemoryTransport
from cloudguard.state import find_binding

NAMES = st.text(alphabet="abcdef", min_size=1, max_size=3)
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
OLD = 1_000_000_000  # an old ctime: rows are not racily clean


def _tree(paths: list[str]) -> dict[str, sync.LocalItem]:
    """Files at ``paths`` (a path that is a parent of another becomes a folder)."""
    items: dict[str, sync.LocalItem] = {}
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            items[parent] = sync.LocalItem(parent, "d", mode=0o755)
    for path in paths:
        if path not in items:
            items[path] = sync.LocalItem(path, "f", len(path), 10**18 + len(path), 0o644, "",
                                         OLD, 1 + hash(path) % 10**6)
    return items


def _sha(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def _entry(item: sync.LocalItem) -> dict[str, Any]:
    if item.kind == "d":
        return {"t": "d", "x": item.mode}
    return {"t": "f", "s": item.size, "m": item.mtime, "x": item.mode, "h": _sha(item.path)}


@settings(max_examples=60, deadline=None)
@given(st.lists(PATHS, min_size=1, max_size=12, unique=True), st.data())
def test_plans_do_nothing_when_in_sync_and_exactly_the_deletes_when_not(
        paths: list[str], data: st.DataObject) -> None:
    local = _tree(paths)
    rows = {p: sync.row_from(item, f"dev:{i + 1}", _sha(p) if item.kind == "f" else "")
            for i, (p, item) in enumerate(sorted(local.items()))}
    remote = {p: (rows[p].dot, _entry(item)) for p, item in local.items()}
    push = sync.plan_push(local, rows, remote, _sha)
    assert push.changes == 0 and not push.adopt
    pull = sync.plan_pull(local, rows, remote, _sha, {})
    assert pull.changes == 0 and not pull.conflicts
    # files deleted here: the push deletes exactly them (nothing else moves)
    files = sorted(p for p, i in local.items() if i.kind == "f")
    gone = data.draw(st.lists(st.sampled_from(files), unique=True, max_size=len(files)))
    after = {p: i for p, i in local.items() if p not in gone}
    push = sync.plan_push(after, rows, remote, _sha)
    assert sorted(r.path for r in push.delete) == sorted(gone)
    assert not push.upload and not push.renamed
    # the same files deleted on the remote: the pull deletes exactly them here
    remote_after = {p: v for p, v in remote.items() if p not in gone}
    pull = sync.plan_pull(local, rows, remote_after, _sha, {})
    assert sorted(r.path for r in pull.delete) == sorted(gone) and not pull.download


class Faulty(MemoryTransport):
    """A memory store whose Nth call of one method fails as a dead network would."""

    def __init__(self, inner: MemoryTransport, method: str, nth: int) -> None:
        super().__init__(inner.objects, inner.remote)
        self.method, self.left = method, nth

    def _tick(self, method: str) -> None:
        if method == self.method:
            self.left -= 1
            if self.left == 0:
                raise TransportError(f"injected failure of {method}")

    def put_bytes(self, name: str, data: bytes) -> None:
        self._tick("put_bytes")
        super().put_bytes(name, data)

    @contextmanager
    def writer(self, name: str, size: int | None = None) -> Iterator[IO[bytes]]:
        self._tick("writer")
        with super().writer(name, size) as out:
            yield out


def test_operations_on_the_memory_transport_and_an_injected_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", PASSPHRASE)
    remote = f"memory:{tmp_path.name}"
    a = tmp_path / "a"
    a.mkdir()
    (a / "one.txt").write_text("one")
    (a / "sub").mkdir()
    (a / "sub" / "two.txt").write_text("two")
    vault.init_vault(str(a), remote)
    got = vault.push(str(a))
    assert sorted(got.uploaded) == ["one.txt", "sub/two.txt"]
    store = MemoryTransport.named(remote)
    assert any(n.startswith("data/") for n in store.objects)
    assert not any(b"one" == d for d in store.objects.values())  # ciphertext only
    # the segment upload fails: the push fails with a transport error, nothing is half-done,
    # and the next push finishes the job
    (a / "one.txt").write_text("one, edited")
    binding = find_binding(str(a))
    use_transport(binding, Faulty(store, "put_bytes", 1))
    try:
        with pytest.raises(TransportError, match="injected"):
            vault.push(str(a))
    finally:
        use_transport(binding, None)
    assert vault.status(str(a)).to_push == ["one.txt"]
    vault.push(str(a))
    assert vault.status(str(a)).to_push == []
    assert vault.open_reader(str(a), "one.txt").read(0, 100) == b"one, edited"
    assert vault.verify(str(a), read_data=True).ok


def test_a_big_file_streams_beside_the_small_ones_and_one_segment_commits_all(
        tmp_path: Path) -> None:
    """Issue 9 item 8: the spooled small files start uploading before the big file is
    streamed (its exact size announced), and the whole push commits one delta segment, not
    one per uploaded batch."""
    import os

    remote = f"memory:{tmp_path.name}"
    a = tmp_path / "a"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(sync.uploader.STREAM_ABOVE + 12345))
    for i in range(20):
        (a / f"small{i:02}.txt").write_text(f"small {i}")
    vault.init_vault(str(a), remote)
    store = MemoryTransport.named(remote)
    before = {n for n in store.objects if n.startswith("m/")}
    got = vault.push(str(a))
    assert len(got.uploaded) == 21 and got.objects == 2, got
    assert len({n for n in store.objects if n.startswith("m/")} - before) == 1
    assert vault.open_reader(str(a), "big.bin").read(0, 5) == (a / "big.bin").read_bytes()[:5]
    assert vault.verify(str(a), read_data=True).ok
