"""The sync engine: scan, a pure plan, then an executor.

``plan_push`` and ``plan_pull`` compare three views (the folder on disk, the index of what was
last synced, and the merged remote manifest) without any I/O, so they can be tested exhaustively.
The executors then stream content through the format layer: plaintext only ever exists in the
user's folder (and in memory), and every file lands through temp-file + fsync + rename.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from . import format as fmt
from .errors import CloudguardError, FileChangedError, IntegrityError, Interrupted, TransportError
from .manifest import Entry, State
from .state import IndexRow
from .transport import MissingObject, Transport

PACK_THRESHOLD = 4 * 1024 * 1024  # files below this share pack objects
PACK_TARGET = 16 * 1024 * 1024
DATA_PREFIX = "data/"
# Only these mode bits are synced, stored or applied: setuid, setgid and sticky never are, so
# a manifest entry (from a removed device, say) cannot plant a setuid program in the folder.
PERMISSIONS = 0o777

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    return None


class LocalItem(NamedTuple):
    """A tuple, not a dataclass: a scan builds 100,000 of these and tuples are cheapest."""

    path: str
    kind: str  # "f" file, "d" folder, "l" symlink
    size: int = 0
    mtime: int = 0
    mode: int = 0
    target: str = ""
    ctime: int = 0  # files and links: status-change time and inode, which any edit changes
    ino: int = 0  # even one that keeps size and mtime (a pull checks them before replacing)


def scan(folder: Path, warn: Callable[[str], None],
         unreadable: list[str] | None = None) -> dict[str, LocalItem]:
    """Walk without following links; skip what cannot be synced, naming it.

    The folder's own ``.cloudguard`` (marker and staging) is never part of it. A path that
    cannot be read goes into ``unreadable`` instead of the result: it must never look deleted,
    so the caller keeps its last synced state. An unreadable folder root is an error.
    """
    if unreadable is None:
        unreadable = []
    items: dict[str, LocalItem] = {}
    stack = [""]
    is_lnk, is_dir, is_reg = stat.S_ISLNK, stat.S_ISDIR, stat.S_ISREG
    while stack:
        rel_dir = stack.pop()
        base = folder / rel_dir if rel_dir else folder
        prefix = f"{rel_dir}/" if rel_dir else ""
        try:
            with os.scandir(base) as listing:
                entries = list(listing)  # a read error part-way drops the whole folder
        except OSError as exc:
            if not rel_dir:
                raise CloudguardError(f"cannot read the folder {folder}: "
                                      f"{exc.strerror or exc}") from exc
            warn(f"cannot read folder {rel_dir}: {exc.strerror or exc}; kept its last synced "
                 "state")
            unreadable.append(rel_dir)
            items.pop(rel_dir, None)  # its mode too: what we see of it is not the truth
            continue
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if not rel_dir and name == MARKER_DIR:
                continue
            if not name.isascii():
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    warn(f"skipped {base / name!s}: the name is not valid UTF-8")
                    continue
            try:
                st = entry.stat(follow_symlinks=False)
                target = os.readlink(entry.path) if is_lnk(st.st_mode) else ""
            except OSError as exc:
                warn(f"cannot read {rel}: {exc.strerror or exc}; kept its last synced state")
                unreadable.append(rel)
                continue
            mode = st.st_mode
            if is_reg(mode):
                items[rel] = LocalItem(rel, "f", st.st_size, st.st_mtime_ns, mode & PERMISSIONS,
                                       "", st.st_ctime_ns, st.st_ino)
            elif is_dir(mode):
                items[rel] = LocalItem(rel, "d", mode=mode & PERMISSIONS)
                stack.append(rel)
            elif is_lnk(mode):
                items[rel] = LocalItem(rel, "l", mtime=st.st_mtime_ns, target=target,
                                       ctime=st.st_ctime_ns, ino=st.st_ino)
            else:
                warn(f"skipped {rel}: not a regular file, folder or symlink "
                     "(fifo, socket or device)")
    return items


def under(path: str, roots: list[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them."""
    return any(path == root or path.startswith(root + "/") for root in roots)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def check_rel_path(path: str) -> str:
    """A manifest path must stay inside the folder, whoever wrote it."""
    wrapped = f"/{path}/"
    if (not path or "//" in wrapped or "/./" in wrapped or "/../" in wrapped
            or "\x00" in path):
        raise IntegrityError(f"the manifest holds an unsafe path {path!r}")
    return path


def dirty(loc: LocalItem, row: IndexRow) -> bool:
    if loc.kind != row.kind:
        return True
    if loc.kind == "f":
        return (loc.size, loc.mtime, loc.mode) != (row.size, row.mtime, row.mode)
    if loc.kind == "l":
        return loc.target != row.target
    return loc.mode != row.mode  # a folder: its mode is synced too


def meta_differs(loc: LocalItem, entry: Entry) -> bool:
    """Same content, other metadata: a file's mode or mtime, a folder's mode."""
    mode = int(entry.get("x", 0)) & PERMISSIONS
    if loc.kind == "f":
        return (loc.mtime, loc.mode) != (entry.get("m"), mode)
    return loc.kind == "d" and loc.mode != mode


def synced(loc: LocalItem, row: IndexRow, local_hash: Callable[[], str] | None = None) -> bool:
    """``loc`` still holds what was last synced at its path: only such a path may a pull
    delete or replace. Not dirty, and for a file the same ctime and inode where the index
    recorded them: an edit that kept size and mtime still moved the ctime. Where they moved
    with size and mtime kept, the content decides (``local_hash`` against the synced SHA-256):
    a remount renumbers inodes on FAT and some network filesystems, and a chmod and back or a
    new hard link moves the ctime, none of which is an edit."""
    if dirty(loc, row):
        return False
    if loc.kind != "f" or (row.ctime and row.ctime == loc.ctime
                           and (not row.ino or row.ino == loc.ino)):
        return True  # (ctime 0: not recorded or racily clean, so the content decides)
    if not row.sha256 or local_hash is None:
        return False
    try:
        return local_hash() == row.sha256
    except OSError:  # unreadable: not known to be as synced, so kept
        return False


def entry_matches(loc: LocalItem, entry: Entry, local_hash: Callable[[], str]) -> bool:
    if loc.kind != entry.get("t"):
        return False
    if loc.kind == "f":
        return bool(loc.size == entry.get("s") and local_hash() == entry.get("h"))
    if loc.kind == "l":
        return loc.target == entry.get("l")
    return True


RACY_NS = 2_000_000_000  # a file changed this recently before its row is written


def row_from(loc: LocalItem, dot: str, sha: str) -> IndexRow:
    """A row for what was synced. A file whose last change (ctime) is within RACY_NS of now
    is *racily clean* (git's term): an edit in the same clock tick as our read would leave
    size, mtime and ctime alike, so its ctime is stored as 0, which makes the next push hash
    it again instead of trusting the stat."""
    ctime = loc.ctime
    if ctime and time.time_ns() - ctime < RACY_NS:
        ctime = 0
    return IndexRow(loc.path, loc.kind, loc.size, loc.mtime, loc.mode, sha, dot, loc.target,
                    ctime, loc.ino)


def row_from_entry(path: str, dot: str, entry: Entry) -> IndexRow:
    """What the index records after landing a manifest entry as it is."""
    return IndexRow(path, str(entry.get("t")), int(entry.get("s", 0)), int(entry.get("m", 0)),
                    int(entry.get("x", 0)) & PERMISSIONS, str(entry.get("h", "")), dot,
                    str(entry.get("l", "")))


# --- the remote view ----------------------------------------------------------------------


def content_key(entry: Entry) -> tuple[Any, ...]:
    return (entry.get("t"), entry.get("h"), entry.get("l"))


def dot_key(dot: str) -> tuple[int, str]:
    """Dots order by sequence number, then device: "d:10" comes after "d:9"."""
    device, _, seq = dot.partition(":")
    return int(seq), device


def conflict_name(path: str, when_ns: int, device: str,
                  taken: Callable[[str], bool] = lambda _p: False) -> str:
    """``NAME (conflict YYYY-MM-DD HHMMSS DEVICE).EXT``, numbered if that name is taken:
    two conflicts in one second must never share, and so overwrite, one copy."""
    head, _, base = path.rpartition("/")
    stem, ext = os.path.splitext(base)
    if not stem or len(ext.encode()) > 64:  # a huge "extension" is just part of the name
        stem, ext = base, ""
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime(when_ns / 1e9))
    label = "".join(c for c in device if c.isalnum() or c in "-_")[:24] or "device"
    for number in range(1, 10_000):
        extra = f" {number}" if number > 1 else ""
        suffix = f" (conflict {stamp} {label}{extra}){ext}"
        short = stem
        while len((short + suffix).encode()) > 255:
            short = short[:-1]
        name = f"{head}/{short}{suffix}" if head else f"{short}{suffix}"
        if not taken(name):
            return name
    raise CloudguardError(f"too many conflict copies of {path}")


def resolve_siblings(state: State, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Ops that turn concurrent versions of one path into the path plus conflict copies.

    Deterministic, so every device computes the same resolution; if two devices both write it,
    the copies are identical and collapse on the next merge.
    """
    ops: list[dict[str, Any]] = []
    chosen: set[str] = set()
    for path in state.conflicted():
        sibs = state.siblings(path)
        distinct = {content_key(e) for e in sibs.values()}
        if len(distinct) < 2:
            continue
        order = sorted(sibs.items(), key=_precedence)
        winner_dot, winner = order[-1]
        ops.append({"p": path, "e": winner, "rm": sorted(sibs)})
        seen = {content_key(winner)}
        for dot, entry in order[:-1]:
            if content_key(entry) in seen:
                continue
            seen.add(content_key(entry))
            device = str(entry.get("wb") or dot.partition(":")[0])  # who wrote this content
            when = int(entry.get("m") or int(entry.get("pt", 0)) * 10**9)  # folders: no mtime
            name = conflict_name(path, when, labels.get(device, device[:8]),
                                 lambda p: state.has_path(p) or p in chosen)
            chosen.add(name)
            ops.append({"p": name, "e": entry, "rm": []})
    return ops


def _precedence(item: tuple[str, Entry]) -> tuple[int, int, tuple[int, str]]:
    """Which concurrent version keeps the name: the content pushed with the most history seen
    (a Lamport time, which a metadata-only change or a slow clock cannot raise), then mtime,
    then the dot. Every device computes the same order."""
    dot, entry = item
    return int(entry.get("lc", 0)), int(entry.get("m", 0)), dot_key(dot)


def newest(sibs: dict[str, Entry]) -> tuple[str, Entry]:
    """The (dot, entry) a path shows: identical siblings collapse to the highest dot."""
    dot = max(sibs, key=dot_key)
    return dot, sibs[dot]


def view(state: State) -> dict[str, tuple[str, Entry]]:
    """One (dot, entry) per path; identical siblings collapse to the highest dot."""
    out: dict[str, tuple[str, Entry]] = {}
    for path, sibs in state.items():
        check_rel_path(path)
        out[path] = newest(sibs)
    return out


def heads(state: State) -> dict[str, str]:
    """path -> the dot :func:`view` would pick, from the dots alone (no entry is parsed)."""
    out: dict[str, str] = {}
    for path, dot in state.dots():
        have = out.get(path)
        if have is None or dot_key(dot) > dot_key(have):
            out[path] = dot
    return out


def view_of(state: State, wanted: dict[str, str]) -> dict[str, tuple[str, Entry]]:
    """:func:`view` for the paths in ``wanted`` (path -> dot from :func:`heads`) only."""
    out: dict[str, tuple[str, Entry]] = {}
    for path, dot in wanted.items():
        entry = state.entry(check_rel_path(path), dot)
        if entry is not None:
            out[path] = (dot, entry)
    return out


class LazyView(Mapping[str, tuple[str, Entry]]):
    """:func:`view`, one path at a time: a push only looks up the paths that changed here."""

    def __init__(self, state: State) -> None:
        self.state = state

    def __getitem__(self, path: str) -> tuple[str, Entry]:
        sibs = self.state.siblings(path)
        if not sibs:
            raise KeyError(path)
        return newest(sibs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.state.paths)

    def __len__(self) -> int:
        return len(self.state.paths)


# --- guards -------------------------------------------------------------------------------

MASS_DELETE_SHARE = 0.5  # a push deleting more than this share of the files asks first ...
MASS_DELETE_FILES = 1000  # ... as does one deleting more than this many
MASS_DELETE_FLOOR = 10  # fewer deletions than this never ask: a small folder stays usable


def mass_delete(deleting: int, total: int, share: float = MASS_DELETE_SHARE,
                most: int = MASS_DELETE_FILES) -> bool:
    """Whether deleting ``deleting`` of ``total`` files is too many to do without asking."""
    if deleting > most:
        return True
    return deleting >= MASS_DELETE_FLOOR and deleting > share * total


# --- plans --------------------------------------------------------------------------------


@dataclass
class PushPlan:
    upload: list[LocalItem] = field(default_factory=list)  # content to encrypt
    put: list[tuple[LocalItem, Entry | None]] = field(default_factory=list)  # dirs, links, meta
    delete: list[IndexRow] = field(default_factory=list)
    adopt: list[tuple[LocalItem, str, str]] = field(default_factory=list)  # (item, dot, sha)
    renamed: dict[str, str] = field(default_factory=dict)  # old path -> new (also in delete)

    @property
    def changes(self) -> int:
        return len(self.upload) + len(self.put) + len(self.delete)


def plan_push(local: dict[str, LocalItem], index: dict[str, IndexRow],
              remote: Mapping[str, tuple[str, Entry]], hasher: Callable[[str], str],
              synced: Callable[[str, str], Entry | None] = lambda _p, _d: None) -> PushPlan:
    """Only paths that changed since the last sync touch ``remote`` (which may be lazy).

    ``synced`` finds the version a row was synced from (current or kept in the history): a
    file whose content is still that version's, while another device replaced it, only had
    its metadata changed here. It is pushed as that old content with new metadata, so it
    keeps the old content's causal time and loses to the real edit (a ``touch`` never wins)."""
    plan = PushPlan()
    changed: list[str] = []
    for path, item in local.items():
        known = index.get(path)
        # the common case first: same kind, size, mtime and mode (and link target)
        if known is not None and (item[1:5] == known[1:5] and item.target == known.target
                                  or not dirty(item, known)):
            if (item.ctime, item.ino) == (known.ctime, known.ino) and (
                    known.ctime or item.kind == "d"):
                continue
            # ctime or inode moved (or the row was racily clean): the content decides, as
            # git does; unchanged content just refreshes the row
            if item.kind != "f" or hasher(path) == known.sha256:
                plan.adopt.append((item, known.dot, known.sha256))
                continue
        changed.append(path)
    changed += [path for path in index if path not in local]
    for path in sorted(changed):
        loc, row = local.get(path), index.get(path)
        if loc is None:
            if row is not None:
                plan.delete.append(row)
            continue
        rem = remote.get(path)
        if rem is not None and entry_matches(loc, rem[1], functools.partial(hasher, path)):
            entry = rem[1]
            if meta_differs(loc, entry):
                plan.put.append((loc, {**entry, "x": loc.mode} if loc.kind == "d"
                                 else {**entry, "m": loc.mtime, "x": loc.mode}))
            else:
                plan.adopt.append((loc, rem[0], str(entry.get("h", ""))))
        elif loc.kind == "f":
            base = synced(path, row.dot) if row is not None and row.sha256 else None
            if (row is not None and rem is not None and base is not None
                    and base.get("t") == "f" and base.get("h") == row.sha256
                    and hasher(path) == row.sha256):
                plan.put.append((loc, {**base, "m": loc.mtime, "x": loc.mode}))
            else:
                plan.upload.append(loc)
        else:
            plan.put.append((loc, None))
    _pair_renames(plan, hasher, synced)
    return plan


def _pair_renames(plan: PushPlan, hasher: Callable[[str], str],
                  synced: Callable[[str, str], Entry | None]) -> None:
    """A new file with the size and content of a vanished one is that file, moved: it is put
    under its new path with the old blob (no upload), and the old path is deleted. Only files
    whose size matches a vanished one are hashed, so an ordinary push reads nothing more."""
    gone: dict[tuple[int, str], list[IndexRow]] = {}
    for row in plan.delete:
        if row.kind == "f" and row.sha256:
            gone.setdefault((row.size, row.sha256), []).append(row)
    if not gone:
        return
    sizes = {size for size, _sha in gone}
    keep: list[LocalItem] = []
    for loc in plan.upload:
        rows = gone.get((loc.size, hasher(loc.path))) if loc.size in sizes else None
        base = synced(rows[0].path, rows[0].dot) if rows else None
        if rows and base is not None and base.get("t") == "f" and base.get(
                "h") == rows[0].sha256:
            plan.put.append((loc, {**base, "m": loc.mtime, "x": loc.mode}))
            plan.renamed[rows.pop(0).path] = loc.path
            continue
        keep.append(loc)
    plan.upload = keep


@dataclass
class PullPlan:
    download: list[tuple[str, str, Entry]] = field(default_factory=list)  # (dest, dot, entry)
    make: list[tuple[str, str, Entry]] = field(default_factory=list)  # dirs and links
    delete: list[IndexRow] = field(default_factory=list)
    adopt: list[tuple[LocalItem, str, Entry]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # (path, conflict name): the user's file or link where a folder arrives moves aside
    aside: list[tuple[str, str]] = field(default_factory=list)
    meta: list[tuple[str, str, Entry]] = field(default_factory=list)  # mode or mtime to apply
    # same content, both sides changed metadata: the index records the remote's entry, so
    # the next push sends the fields changed here (``meta`` applies the others)
    restate: list[tuple[str, str, Entry]] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.download) + len(self.make) + len(self.delete) + len(self.meta)


def plan_pull(local: dict[str, LocalItem], index: dict[str, IndexRow],
              remote: dict[str, tuple[str, Entry]], hasher: Callable[[str], str],
              labels: dict[str, str], taken: Callable[[str], bool] | None = None,
              me: str = "local", first: bool = False,
              kept: Mapping[str, set[str]] | None = None) -> PullPlan:
    """``index`` and ``remote`` may be cut down to the paths whose synced dot differs from the
    remote's (nothing happens to the others); ``taken`` then says which names exist at all,
    so a conflict copy never takes the name of a path left out.

    A type change (file, folder, symlink) lands like any other change where the local path is
    as last synced (a folder: with nothing of the user's inside); otherwise both are kept, one
    under a conflict name. ``me`` labels conflict copies of this device's own files.

    ``first``: this device has synced nothing yet (a fresh clone into a folder that holds
    files, or a re-clone after its local state was lost). Its files are then old copies, not
    edits: where one differs from the vault's version the vault's keeps the name and the
    local one moves aside as a conflict copy, or, if its content is a version the history
    (``kept``: path -> SHA-256s of replaced and deleted versions) still holds, it is simply
    replaced, or deleted where the vault deleted that path. Deleted files do not come back.
    """
    kept = kept or {}
    plan = PullPlan()
    exists = taken or (lambda p: p in local or p in remote or p in index)
    hashed: dict[str, str] = {}

    def hash_of(path: str) -> str:
        """Each local file is read at most once, however many checks ask."""
        if path not in hashed:
            hashed[path] = hasher(path)
        return hashed[path]

    def conflict(path: str, when: int, device: str) -> str:
        name = conflict_name(path, when, labels.get(device, device[:8]),
                             lambda p: exists(p) or p in plan.conflicts)
        plan.conflicts.append(name)
        return name

    def clean_below(path: str) -> bool:
        """Everything inside the local folder ``path`` is as synced and deleted remotely."""
        prefix = path + "/"
        return all(p in index and p not in remote
                   and synced(local[p], index[p], functools.partial(hash_of, p))
                   for p in local if p.startswith(prefix))

    for path in sorted(set(remote) | set(index)):
        loc, row, rem = local.get(path), index.get(path), remote.get(path)
        local_hash = functools.partial(hash_of, path)
        if rem is None:
            if row is None:
                continue
            if loc is not None and synced(loc, row, local_hash):
                plan.delete.append(row)
            else:
                plan.forget.append(path)
            continue
        dot, entry = rem
        if row is not None and row.dot == dot:
            continue
        kind = entry.get("t")
        if loc is None:
            (plan.download if kind == "f" else plan.make).append((path, dot, entry))
            continue
        if entry_matches(loc, entry, local_hash):
            if not meta_differs(loc, entry):
                plan.adopt.append((loc, dot, entry))
            elif row is None or synced(loc, row, local_hash):
                plan.meta.append((path, dot, entry))
            else:  # both sides changed metadata: each field from the side that changed it
                plan.restate.append((path, dot, entry))
                if loc.kind == "f":
                    merged = {**entry, "x": entry.get("x") if loc.mode == row.mode else loc.mode,
                              "m": entry.get("m") if loc.mtime == row.mtime else loc.mtime}
                    if meta_differs(loc, merged):
                        plan.meta.append((path, dot, merged))
            continue
        land = plan.download if kind == "f" else plan.make
        untouched = row is not None and synced(loc, row, local_hash)
        if untouched and loc.kind != "d" and kind != "d":  # file <-> symlink: replaced in place
            land.append((path, dot, entry))
        elif untouched and row is not None and (loc.kind != "d" or clean_below(path)):
            plan.delete.append(row)  # file or link -> folder, empty(ied) folder -> file or link
            land.append((path, dot, entry))
        elif kind == "d":  # the user's file or link where a folder arrives: both stay
            plan.aside.append((path, conflict(path, loc.mtime, me)))
            land.append((path, dot, entry))
        elif first and row is None and loc.kind == kind == "f":
            if hash_of(path) not in kept.get(path, set()):  # not a known version: keep it
                plan.aside.append((path, conflict(path, loc.mtime, me)))
            land.append((path, dot, entry))  # the vault's version keeps the name
        else:  # a true clash: the remote version lands as a conflict copy
            name = conflict(path, int(entry.get("m", 0)), dot.partition(":")[0])
            land.append((name, dot, entry))
            plan.forget.append(path)
    if first:  # local copies of versions the vault deleted go (the history still has them)
        for path in sorted(kept):
            loc = local.get(path)
            if (path not in remote and path not in index and loc is not None
                    and loc.kind == "f" and hash_of(path) in kept[path]):
                plan.delete.append(row_from(loc, "", hash_of(path)))
    return plan


# --- executors ----------------------------------------------------------------------------


class ThreadedHash:
    """A hash fed on a second thread (hashlib releases the GIL on large updates), so hashing
    a big file runs beside its encryption on the other core.

    Small updates are handed over in blocks of about 1 MiB: one queue hand-off per 4 KiB
    blob cost more than hashing it. The order of the data is kept.
    """

    _BLOCK = 1024 * 1024

    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name, usedforsecurity=False)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._small: list[bytes] = []
        self._small_len = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def _flush_small(self) -> None:
        if self._small:
            self._queue.put(b"".join(self._small))
            self._small, self._small_len = [], 0

    def update(self, data: bytes) -> None:
        if len(data) >= 64 * 1024:
            self._flush_small()
            self._queue.put(data)
        elif data:
            self._small.append(data)
            self._small_len += len(data)
            if self._small_len >= self._BLOCK:
                self._flush_small()

    def close(self) -> None:
        if self._thread.is_alive():
            self._flush_small()
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


class ObjectWriter:
    """Counts what goes into an object and hashes it (MD5, the hash most backends keep), so
    plain `verify` can compare the backend's own hash without downloading.

    Not for a local remote (``md5=False``, :meth:`md5` is then ""): there the backend's hash
    is computed by reading the whole object, so `verify` reads and authenticates it instead,
    and the MD5 (2 s of CPU per GiB here, the slowest step of a big push) would buy nothing.
    """

    def __init__(self, inner: IO[bytes], md5: bool = True) -> None:
        self.inner = inner
        self.count = 0
        self._md5 = ThreadedHash("md5") if md5 else None

    def write(self, data: bytes) -> int:
        self.inner.write(data)
        self.count += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        return len(data)

    def close(self) -> None:
        if self._md5 is not None:
            self._md5.close()

    def md5(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else ""


class _ProgressReader:
    def __init__(self, inner: IO[bytes], progress: Progress) -> None:
        self.inner = inner
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.progress(len(data))
        return data


@dataclass
class Uploaded:
    entries: dict[str, Entry]  # those not handed to ``landed``
    objects: list[str]
    skipped: list[str]
    bytes_out: int
    paths: list[str] = field(default_factory=list)  # every file uploaded
    unreadable: list[str] = field(default_factory=list)  # skipped on a read error


def pack_groups(items: list[LocalItem]) -> list[list[LocalItem]]:
    small = [i for i in items if i.size < PACK_THRESHOLD]
    large = [[i] for i in items if i.size >= PACK_THRESHOLD]
    groups: list[list[LocalItem]] = []
    current: list[LocalItem] = []
    total = 0
    for item in small:
        if current and total + item.size > PACK_TARGET:
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += item.size
    if current:
        groups.append(current)
    return groups + large


# A file deleted, or replaced by a link, since the scan: a change the next push sees, not an
# error (the others - EACCES, EIO, ... - keep its last synced version and fail the push)
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)

SPOOL_FLUSH = 96 * 1024 * 1024  # spooled ciphertext handed to rclone in one process
SPOOL_FLUSH_FILES = 20_000  # ... or this many files, whichever comes first
STREAM_ABOVE = 32 * 1024 * 1024  # bigger files go straight into rclone, never to disk


def _same_disk(spool: Path, transport: Transport) -> bool:
    """A local remote on the spool's filesystem takes spool files by rename: no copy, and no
    extra disk at all, so even a big file may be spooled there."""
    if not transport.local:
        return False
    root = Path(getattr(transport, "remote", ""))
    try:
        return os.stat(spool).st_dev == os.stat(root if root.exists() else root.parent).st_dev
    except OSError:
        return False


class _InFlight:
    """One spool batch uploading on a thread while the next one is encrypted: encryption
    overlaps the upload, and at most two batches (about 2 x SPOOL_FLUSH) sit on disk."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, work: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # handed to the main thread by wait()
                self.error = exc
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def upload(folder: Path, items: list[LocalItem], transport: Transport, spool: Path, kek: bytes,
           generation: str, padding: bool, register: Callable[[str], None],
           warn: Callable[[str], None], progress: Progress = _no_progress,
           landed: Callable[[dict[str, Entry], list[str]], None] | None = None) -> Uploaded:
    """Encrypt into spool files (ciphertext only) and let rclone move them in batches, one
    batch uploading while the next is encrypted; files over STREAM_ABOVE are encrypted
    straight into an rclone upload, so the disk never holds more than two batches.

    A spool file rather than a pipe for the rest: rclone can retry a file and knows its size
    (multipart uploads), one process moves many objects, and on the same filesystem a local
    remote receives it by rename. Each object is registered as pending before it is written.

    ``landed`` receives each full batch's entries and objects once they are on the remote
    (on this thread), so the caller can commit them: a huge first push then keeps its progress
    across a crash or an interrupt, and its entries are not all held in memory. Those entries
    are not kept in the result; the last batch's are (``entries``), so the caller commits them
    with its other changes in one segment.
    """
    result = Uploaded({}, [], [], 0)
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    stream_big = not _same_disk(spool, transport)
    batch: list[str] = []
    batch_bytes = 0
    batch_entries: dict[str, Entry] = {}
    flight = _InFlight()
    waiting: tuple[dict[str, Entry], list[str]] | None = None  # uploaded, not yet landed

    def land() -> None:
        """Hand the batch that finished uploading to the caller (on this thread: the caller
        commits to SQLite)."""
        nonlocal waiting
        flight.wait()
        if waiting is not None:
            entries, names = waiting
            waiting = None
            if landed is not None:
                landed(entries, [DATA_PREFIX + o for o in names])
            else:
                result.entries.update(entries)
            result.paths += list(entries)

    def send(entries: dict[str, Entry], names: list[str]) -> None:
        """The bar moves with the bytes rclone reports on the remote, not with encryption
        (which runs many times faster than most uplinks): plaintext sizes stand for them."""
        plain = sum(int(e.get("s", 0)) for e in entries.values())
        shown = 0

        def sent(count: int) -> None:
            nonlocal shown
            step = min(count, plain - shown)
            if step > 0:
                shown += step
                progress(step)

        transport.put_files(spool, names, DATA_PREFIX, sent)
        sent(plain)  # a local remote takes the batch by rename, moving no bytes

    def flush() -> None:
        nonlocal batch, batch_bytes, batch_entries, waiting
        land()
        entries, names = batch_entries, batch
        waiting = (entries, names)
        flight.start(lambda: send(entries, names))
        batch, batch_bytes, batch_entries = [], 0, {}

    try:
        for group in pack_groups(items):
            object_id = fmt.new_object_id()
            register(DATA_PREFIX + object_id)
            packed = len(group) > 1 or group[0].size < PACK_THRESHOLD
            if not packed and stream_big and group[0].size > STREAM_ABOVE:
                streamed = _stream_one(folder, group[0], object_id, transport, kek,
                                       generation, padding, warn, progress, result)
                if streamed is not None:
                    land()  # keep the order: an earlier batch lands first
                    if landed is not None:
                        landed({group[0].path: streamed}, [DATA_PREFIX + object_id])
                    else:
                        result.entries[group[0].path] = streamed
                    result.paths.append(group[0].path)
                continue
            entries, out = _spool_group(folder, group, object_id, spool / object_id,
                                        packed, transport, kek, generation, padding, warn,
                                        result)
            if out is None:
                continue
            batch_entries.update(entries)
            result.objects.append(DATA_PREFIX + object_id)
            result.bytes_out += out.count
            batch.append(object_id)
            batch_bytes += out.count
            if batch_bytes >= SPOOL_FLUSH or len(batch_entries) >= SPOOL_FLUSH_FILES:
                flush()
        land()
        if batch:  # the last batch: its entries go to the caller with its other changes
            send(batch_entries, batch)
            result.entries.update(batch_entries)
            result.paths += list(batch_entries)
    except BaseException as exc:
        try:
            flight.wait()  # never leave an upload running behind our back
        except BaseException:
            pass
        for name in batch:
            (spool / name).unlink(missing_ok=True)
        if waiting is not None:
            for name in waiting[1]:
                (spool / name).unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            kept = len(result.paths)
            raise Interrupted(
                f"interrupted: {kept} file(s) were committed on the remote before it and are "
                "kept; the rest were not uploaded (no spool file was left) and go up on the "
                "next push") from exc
        raise
    return result


def _spool_group(folder: Path, group: list[LocalItem], object_id: str, path: Path,
                 packed: bool, transport: Transport, kek: bytes, generation: str,
                 padding: bool, warn: Callable[[str], None], result: Uploaded
                 ) -> tuple[dict[str, Entry], ObjectWriter | None]:
    """One object into a spool file; (entries, writer), or (.., None) if nothing was kept."""
    entries: dict[str, Entry] = {}
    abandoned = False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as raw:
            out = ObjectWriter(raw, md5=not transport.local)
            try:
                if packed:
                    out.write(fmt.pack_header(os.urandom(16)))
                for item in group:
                    offset = out.count
                    entry = _encrypt_or_skip(folder, item, out, kek, generation, padding, warn,
                                             result)
                    if entry is None:
                        abandoned = not packed
                        continue  # in a pack, its partial blob stays as dead bytes
                    entry.update({"o": object_id, "a": offset, "n": out.count - offset})
                    entries[item.path] = entry
                if packed and padding:
                    write_filler(out)
            finally:
                out.close()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if abandoned or not entries:
        path.unlink()
        return {}, None
    digest = out.md5()
    if digest:
        for entry in entries.values():
            entry["om"] = digest
    return entries, out


def _stream_one(folder: Path, item: LocalItem, object_id: str, transport: Transport,
                kek: bytes, generation: str, padding: bool, warn: Callable[[str], None],
                progress: Progress, result: Uploaded) -> Entry | None:
    """A big file encrypted straight into an rclone upload: no disk, and the upload runs as
    fast as encryption feeds it. A file that changes meanwhile ends the upload; the object
    stays registered as pending, so the next run deletes whatever rclone left of it."""
    name = DATA_PREFIX + object_id
    try:
        with transport.writer(name) as raw:
            out = ObjectWriter(raw, md5=not transport.local)
            try:
                entry = _encrypt_or_skip(folder, item, out, kek, generation, padding, warn,
                                         result, progress)
            finally:
                out.close()
            if entry is None:
                raise _Abandon()
    except _Abandon:
        return None
    entry.update({"o": object_id, "a": 0, "n": out.count})
    digest = out.md5()
    if digest:
        entry["om"] = digest
    result.objects.append(name)
    result.bytes_out += out.count
    return entry


class _Abandon(Exception):
    """Ends a streamed upload whose file could not be read whole."""


def _encrypt_or_skip(folder: Path, item: LocalItem, out: ObjectWriter, kek: bytes,
                     generation: str, padding: bool, warn: Callable[[str], None],
                     result: Uploaded, progress: Progress = _no_progress) -> Entry | None:
    try:
        return _encrypt_one(folder, item, out, kek, generation, padding, progress)
    except (FileChangedError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in _GONE:
            warn(f"could not push {item.path}: {exc.strerror or exc}; kept its last synced "
                 "version")  # and reported: exit 1
            result.unreadable.append(item.path)
        else:
            warn(f"skipped {item.path}: it changed while it was read; it goes up on the next "
                 "push")
        result.skipped.append(item.path)
        return None


def write_filler(out: ObjectWriter) -> None:
    """Random bytes up to padme(size): a pack's size says no more than a file's does."""
    filler = fmt.padme(out.count) - out.count
    while filler > 0:
        step = min(filler, 1024 * 1024)
        out.write(os.urandom(step))
        filler -= step


def _encrypt_one(folder: Path, item: LocalItem, out: ObjectWriter, kek: bytes, generation: str,
                 padding: bool, progress: Progress) -> Entry:
    fd = os.open(folder / item.path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChangedError(item.path)
        dek, file_id = fmt.new_dek(), fmt.new_file_id()
        # a big file's SHA-256 runs on the other core, beside its encryption
        digest = ThreadedHash("sha256") if st.st_size >= PACK_THRESHOLD else None
        try:
            info = fmt.encrypt_blob(_ProgressReader(fh, progress), out, dek, file_id,
                                    st.st_size, padding, digest)
        finally:
            if digest is not None:
                digest.close()
        after = os.fstat(fd)
        if after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size:
            raise FileChangedError(item.path)
    return {"t": "f", "s": info.size, "m": st.st_mtime_ns, "x": st.st_mode & PERMISSIONS,
            "h": info.sha256, "i": file_id.hex(), "k": fmt.b64(fmt.wrap_dek(kek, dek, file_id)),
            "g": generation, "w": generation}


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
            pos = start
            for dest, entry in items:
                _obj, offset, length = blob_reader(entry)
                if offset < pos:
                    raise IntegrityError(f"overlapping blobs in {name}")
                _skip(stream, offset - pos)
                limited = fmt.read_blob_stream(stream, length)
                yield dest, entry, limited, None
                limited.read()  # drain what a failed decrypt left
                pos = offset + length
    except MissingObject as exc:
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


def safe_dir(folder: Path, rel_dir: str, created: list[Path] | None = None) -> Path:
    """Create parents without ever following a symlink out of the folder."""
    current = folder
    for part in [p for p in rel_dir.split("/") if p]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o700)
            if created is not None:
                created.append(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotAFolder(f"cannot write inside {current}: it is not a folder "
                             "(a symlink or file is in the way)")
    return current


class NotAFolder(CloudguardError):
    """A file or symlink stands where a folder must be."""


MARKER_DIR = ".cloudguard"  # the only name cloudguard writes in a folder; never synced
STAGING = "staging"  # MARKER_DIR/STAGING: where a pull writes files before renaming them
TEMP_NAME = re.compile(r"^[0-9a-f]{16}\.tmp$")
KEPT_NAME = re.compile(r"^ok-([0-9a-f]{64})$")  # an authenticated download kept for reuse
KEPT_FOR = 86400.0  # seconds an interrupted pull's authenticated downloads wait for the next


def _private_dir(path: Path) -> Path:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise CloudguardError(f"{path} is not a folder (cloudguard keeps its own files "
                                  "there); move it away and try again") from None
    return path


def staging_dir(folder: Path) -> Path:
    """The private folder where temp files live, inside the folder (so on its filesystem,
    and a rename from there is atomic) but under a name no user file can have."""
    return _private_dir(_private_dir(folder / MARKER_DIR) / STAGING)


def temp_path(folder: Path) -> Path:
    return staging_dir(folder) / f"{os.urandom(8).hex()}.tmp"


def clear_staging(folder: Path) -> list[Path]:
    """Delete what a killed pull left in the staging folder: only names we create there, so
    nothing that cloudguard did not write is ever removed. The caller holds the folder lock."""
    where = folder / MARKER_DIR / STAGING
    removed: list[Path] = []
    try:
        linked = os.path.islink(where.parent) or os.path.islink(where)
        names = [] if linked else os.listdir(where)  # never clean through a link
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for name in names:
        stale = TEMP_NAME.match(name) is not None
        if not stale and KEPT_NAME.match(name):
            try:
                stale = now - os.lstat(where / name).st_mtime > KEPT_FOR
            except OSError:
                continue
        if stale:
            (where / name).unlink(missing_ok=True)
            removed.append(where / name)
    return removed


def keep_staged(folder: Path, staged: Staged, sha256: str) -> None:
    """An interrupted pull keeps a download it authenticated, named by its plaintext SHA-256,
    so the next pull need not fetch it again (issue: a Ctrl-C at 105 of 524 MB restarted at
    0). Its mtime is reset: KEPT_FOR counts from now."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        staged.tmp.unlink(missing_ok=True)
        return
    kept = staged.tmp.with_name(f"ok-{sha256}")
    os.replace(staged.tmp, kept)
    os.utime(kept)


def reuse_staged(folder: Path, dest: str, sha256: str, size: int, mode: int, mtime: int
                 ) -> Staged | None:
    """A kept download of this content, checked again (its SHA-256 is read back, so a file
    planted there is never trusted), as a fresh temp file for ``dest``; None if there is none
    or it does not match (then it is deleted)."""
    kept = staging_dir(folder) / f"ok-{sha256}"
    try:
        st = os.lstat(kept)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or hash_file(kept) != sha256:
        kept.unlink(missing_ok=True)
        return None
    tmp = temp_path(folder)
    os.replace(kept, tmp)
    set_mode(tmp, mode)
    os.utime(tmp, ns=(mtime, mtime))
    return Staged(tmp, dest)


@dataclass
class Staged:
    """A verified, fsynced temp file waiting for its rename."""

    tmp: Path
    dest: str


def stage(folder: Path, dest: str, fill: Callable[[IO[bytes]], None], mode: int, mtime: int,
          created: list[Path]) -> Staged:
    """Write and fsync a temp file in the staging folder; on any error nothing is left."""
    check_rel_path(dest)
    head, _, _base = dest.rpartition("/")
    try:
        safe_dir(folder, head, created)
    except NotAFolder:
        pass  # a file or link that this pull replaces by a folder: made at commit time
    tmp = temp_path(folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        set_mode(tmp, mode)
        os.utime(tmp, ns=(mtime, mtime))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, dest)


# ``expect`` for a caller that has made its own checks and replaces whatever is there
ANYTHING = LocalItem("", "*")


def check_unchanged(folder: Path, rel: str, expect: LocalItem | None) -> None:
    """Right before a pull replaces or deletes ``rel``: it must still be exactly what the plan
    saw (``expect``, None for nothing), down to ctime and inode, or the user's edit would be
    lost. Raises :class:`FileChangedError`; the caller keeps the path as it is."""
    if expect is not ANYTHING and local_item(folder, rel) != expect:
        raise FileChangedError(rel)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def commit_staged(folder: Path, staged: Staged, expect: LocalItem | None = ANYTHING) -> None:
    target = folder / staged.dest
    try:
        if not _real_dir(target.parent):  # a file was in the way when it was staged
            safe_dir(folder, staged.dest.rpartition("/")[0])
        if os.path.isdir(target) and not os.path.islink(target):
            raise CloudguardError(f"cannot replace folder {staged.dest} with a file")
        check_unchanged(folder, staged.dest, expect)
    except BaseException:
        staged.tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(staged.tmp, target)
    except OSError as exc:
        staged.tmp.unlink(missing_ok=True)
        if exc.errno == errno.EXDEV:  # staged on the folder's filesystem, not this one's
            raise CloudguardError(f"cannot write {staged.dest}: it is on another filesystem "
                                  f"than {folder} (a mount point inside the folder)") from exc
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def discard(staged: list[Staged], created: list[Path]) -> None:
    for item in staged:
        item.tmp.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def make_link(folder: Path, dest: str, target: str,
              expect: LocalItem | None = ANYTHING) -> None:
    """Land a symlink, replacing only what the plan saw at ``dest`` (see check_unchanged)."""
    head, _, base = dest.rpartition("/")
    parent = safe_dir(folder, head)
    tmp = temp_path(folder)
    os.symlink(target, tmp)
    try:
        if os.path.isdir(parent / base) and not os.path.islink(parent / base):
            raise CloudguardError(f"cannot replace folder {dest} with a symlink")
        check_unchanged(folder, dest, expect)
        os.replace(tmp, parent / base)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_local(folder: Path, rel: str, expect: LocalItem) -> None:
    """Delete a file, link or empty folder that the remote deleted, only while it is still what
    the plan saw (see check_unchanged); a folder the user filled meanwhile fails to go."""
    now = local_item(folder, rel)
    if now is None:
        return  # gone already
    if now != expect:
        raise FileChangedError(rel)
    if expect.kind == "d":
        os.rmdir(folder / rel)
    else:
        os.unlink(folder / rel)


def move_aside(folder: Path, rel: str, name: str, expect: LocalItem) -> None:
    """Rename the user's file or link at ``rel`` to the conflict name ``name`` (a folder
    arrives at ``rel``), only while it is what the plan saw and ``name`` is free."""
    check_rel_path(name)
    check_unchanged(folder, rel, expect)
    if os.path.lexists(folder / name):
        raise CloudguardError(f"cannot move {rel} aside: {name} exists")
    os.rename(folder / rel, folder / name)


# What a file system without POSIX modes (FAT, exFAT, some FUSE and SMB mounts) answers a
# chmod with; the mode then is whatever its mount options say, and the index records that.
NO_MODES = frozenset({errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})


def set_mode(path: Path, mode: int) -> None:
    """chmod that a folder on a file system without modes survives; never setuid, setgid or
    sticky. EPERM counts as "no modes" because every path set here is one we just wrote."""
    try:
        os.chmod(path, mode & PERMISSIONS)
    except OSError as exc:
        if exc.errno not in NO_MODES:
            raise


def apply_meta(folder: Path, rel: str, expect: LocalItem | None, entry: Entry) -> None:
    """A remote mode or mtime change to a file or folder whose content already matches,
    applied only while the path is what the plan saw; never setuid, setgid or sticky."""
    check_unchanged(folder, rel, expect)
    path = folder / rel
    if "x" in entry:
        set_mode(path, int(entry["x"]))
    if entry.get("t") == "f" and "m" in entry:
        mtime = int(entry["m"])
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def make_dir(folder: Path, dest: str, mode: int) -> None:
    check_rel_path(dest)
    safe_dir(folder, dest)
    if mode:
        set_mode(folder / dest, mode)


def local_item(folder: Path, rel: str) -> LocalItem | None:
    try:
        st = os.lstat(folder / rel)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return LocalItem(rel, "l", mtime=st.st_mtime_ns, target=os.readlink(folder / rel),
                         ctime=st.st_ctime_ns, ino=st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        return LocalItem(rel, "d", mode=st.st_mode & PERMISSIONS)
    return LocalItem(rel, "f", st.st_size, st.st_mtime_ns, st.st_mode & PERMISSIONS, "",
                     st.st_ctime_ns, st.st_ino)
