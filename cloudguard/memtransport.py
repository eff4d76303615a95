"""An object store in memory, behind the same :class:`~cloudguard.transport.Transport`
protocol: fast unit tests of the operations, and faults injected at the boundary instead of
monkeypatching rclone. Remotes named ``memory:NAME`` open one of these (one store per name,
per process); integration tests keep using real rclone and real servers.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from . import limits
from .errors import TransportError
from .remotes import rclone_glob
from .transport import MissingObject, ObjectInfo

__all__ = ["MemoryTransport", "PREFIX"]

PREFIX = "memory:"
_STORES: dict[str, dict[str, bytes]] = {}
_GUARD = threading.Lock()


class MemoryTransport:
    local = False

    def __init__(self, store: dict[str, bytes] | None = None, remote: str = "memory:") -> None:
        self.objects = {} if store is None else store
        self.remote = remote
        self._lock = threading.Lock()

    @classmethod
    def named(cls, remote: str) -> MemoryTransport:
        """The store of ``memory:NAME`` in this process (made empty on first use)."""
        with _GUARD:
            store = _STORES.setdefault(remote[len(PREFIX):], {})
        return cls(store, remote)

    def list(self, prefix: str = "", with_hash: bool = False) -> dict[str, ObjectInfo]:
        with self._lock:
            items = [(n, d) for n, d in self.objects.items() if n.startswith(prefix)]
        return {n: ObjectInfo(n, len(d), {"md5": hashlib.md5(d).hexdigest()} if with_hash
                              else {}) for n, d in items}

    @contextmanager
    def writer(self, name: str, size: int | None = None) -> Iterator[IO[bytes]]:
        buffer = io.BytesIO()
        yield buffer  # whole or nothing: stored only when the writer closes cleanly
        if size is not None and buffer.tell() != size:
            raise TransportError(f"{name}: {buffer.tell()} bytes streamed, {size} announced")
        with self._lock:
            self.objects[name] = buffer.getvalue()

    @contextmanager
    def reader(self, name: str, offset: int = 0, count: int | None = None
               ) -> Iterator[IO[bytes]]:
        with self._lock:
            data = self.objects.get(name)
        if data is None:
            raise MissingObject(f"downloading {name}: object missing on the remote (memory)")
        end = len(data) if count is None else offset + count
        yield io.BytesIO(data[offset:end])

    def put_bytes(self, name: str, data: bytes) -> None:
        with self._lock:
            self.objects[name] = bytes(data)

    def get_bytes(self, name: str, limit: int | None = None) -> bytes:
        with self.reader(name) as stream:
            data = stream.read()
        limits.check(name, len(data), limits.cap(name) if limit is None else limit)
        return data

    def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        with self._lock:
            return {n: self.objects[n] for n in set(names) if n in self.objects}

    def get_matching(self, patterns: Sequence[str]) -> dict[str, bytes]:
        with self._lock:
            names = list(self.objects)
        globs = [rclone_glob(p) for p in patterns]
        wanted = [n for n in names if any(g.fullmatch(n) for g in globs)]
        return self.get_many(wanted)

    def put_files(self, folder: Path, names: Sequence[str], prefix: str,
                  progress: Callable[[int], None] | None = None) -> None:
        for name in names:
            data = (folder / name).read_bytes()
            self.put_bytes(prefix + name, data)
            (folder / name).unlink()
            if progress is not None:
                progress(len(data))

    def delete(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self.objects.pop(name, None)

    def ensure_root(self) -> None:
        return None

    def local_root(self) -> Path | None:
        return None

    def close(self) -> None:
        return None
