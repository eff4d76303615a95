"""Local state: where bindings live, and the per-folder SQLite index.

Everything lives under ``CLOUDGUARD_HOME`` (default: the platform's user data dir), never in the
plaintext folder. The index holds paths and metadata (like git's index) but no content and no
keys; the manifest segments cached next to it are ciphertext.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs

from .errors import CloudguardError, FolderBusy, GuardError, UnsupportedFormat, UsageError
from .settings import settings


def home() -> Path:
    explicit = settings().home
    if explicit is not None:
        root = explicit
    else:
        root = Path(platformdirs.user_data_dir("cloudguard"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def bindings_root() -> Path:
    path = home() / "folders"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


MAX_KEEP_DAYS = 3650


@dataclass
class Binding:
    """One plaintext folder bound to one vault on one remote, as this device."""

    id: str
    folder: str
    remote: str
    vault_id: str
    device: str
    device_name: str
    keystore: str
    padding: str
    enrolled: bool = True
    keep_days: int = 30  # how long replaced and deleted versions stay restorable
    # a folderless mount's membership (`cloudguard mount REMOTE MOUNTPOINT`): its folder is an
    # empty placeholder under CLOUDGUARD_HOME that nothing syncs (the daemon skips it)
    mount_only: bool = False

    def __post_init__(self) -> None:
        if type(self.keep_days) is not int or not 0 <= self.keep_days <= MAX_KEEP_DAYS:
            raise CloudguardError(f"binding {self.id}: keep_days = {self.keep_days!r} is not a "
                                  f"whole number of days from 0 to {MAX_KEEP_DAYS}")

    @property
    def dir(self) -> Path:
        return bindings_root() / self.id

    @property
    def key_account(self) -> str:
        return f"{self.vault_id}/{self.device}"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.dir / "binding.json", json.dumps(asdict(self), indent=1).encode())

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(8)


def create_db_file(path: Path) -> None:
    """A SQLite file, 0600 from birth (its -wal and -shm inherit the mode), made only when
    missing: opening and closing a descriptor of a database this process already has open
    drops every POSIX lock SQLite holds on it, so another process's last close checkpoints
    and deletes the WAL under the live connection ("database disk image is malformed": a
    mount's journal when a CLI command of the same folder exited)."""
    if path.exists():
        return
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def write_private(path: Path, data: bytes) -> None:
    """0600 from birth, atomic: local state reveals names, so it is never world-readable.

    The temp file gets a fresh name and is created exclusively (mkstemp: O_EXCL|O_NOFOLLOW):
    with a fixed name, a symlink planted there redirected the write (a kit export) elsewhere.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with suppress(OSError):  # mkstemp made it 0600; a FAT folder has no modes
                os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


MARKER = ".cloudguard"  # sync.MARKER_DIR: the folder marker, beside the staging folder
MARKER_FILE = "folder.json"


def _marker_path(folder: Path) -> Path:
    return folder / MARKER / MARKER_FILE


def write_marker(binding: Binding) -> Path:
    """Mark the bound folder as this binding's. It holds the binding id alone (a random local
    name, no vault, remote, device or key), so a marker copied from another folder is told
    apart and nothing about the vault leaks to whoever reads the folder."""
    folder = Path(binding.folder)
    where = folder / MARKER
    try:
        os.mkdir(where, 0o700)
    except FileExistsError:
        if not where.is_dir() or where.is_symlink():
            raise CloudguardError(f"{where} is in the way of cloudguard's folder marker; move "
                                  "it away and try again") from None
    doc = {"cloudguard": "folder marker: push and pull refuse to run without it",
           "binding": binding.id}
    write_private(where / MARKER_FILE, json.dumps(doc, indent=1).encode() + b"\n")
    return where / MARKER_FILE


def remove_marker(binding: Binding) -> None:
    """Undo :func:`write_marker` for a binding being forgotten (only if the marker is its)."""
    where = Path(binding.folder) / MARKER
    if marker_binding(Path(binding.folder)) != binding.id:
        return
    _marker_path(Path(binding.folder)).unlink(missing_ok=True)
    for empty in (where / "staging", where):
        with suppress(OSError):
            empty.rmdir()


def marker_binding(folder: Path) -> str | None:
    """The binding id the folder's marker names, None without a (readable) marker."""
    try:
        doc = json.loads(_marker_path(folder).read_bytes())
    except (OSError, ValueError):
        return None
    value = doc.get("binding") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def check_marker(binding: Binding) -> None:
    """Refuse to sync a folder that is not the one bound: a disk not mounted, or a folder moved
    away and replaced, would otherwise look like every file was deleted."""
    folder = Path(binding.folder)
    fix = (f"mount its disk or move the folder back; if {folder} is right as it is, run "
           f"'cloudguard mark -C {folder}'")
    if not folder.is_dir():
        raise GuardError(f"the bound folder {folder} does not exist: is its disk mounted? "
                         f"Nothing was changed; mount the disk or move the folder back",
                         "folder-missing", folder=str(folder))
    if not _marker_path(folder).exists():
        raise GuardError(f"{folder} has no cloudguard marker ({MARKER}/{MARKER_FILE}): is it "
                         f"the bound folder? Nothing was changed; {fix}", "marker-missing",
                         folder=str(folder))
    found = marker_binding(folder)
    if found != binding.id:
        raise GuardError(f"{folder}/{MARKER}/{MARKER_FILE} is not this folder's marker "
                         f"(unreadable, or copied from another cloudguard folder). Nothing was "
                         f"changed; {fix}", "marker-mismatch", folder=str(folder))


def all_bindings() -> list[Binding]:
    out: list[Binding] = []
    for child in sorted(bindings_root().iterdir()):
        meta = child / "binding.json"
        if meta.is_file():
            try:
                out.append(Binding(**json.loads(meta.read_text())))
            except (ValueError, TypeError) as exc:
                raise CloudguardError(f"{meta} is damaged: {exc}") from exc
    return out


def find_binding(folder: str | None) -> Binding:
    """Like git: the given folder, or the bound folder containing the working directory."""
    start = Path(folder).expanduser().resolve() if folder else Path.cwd().resolve()
    bindings = {Path(b.folder): b for b in all_bindings()}
    for candidate in (start, *start.parents):
        if candidate in bindings:
            return bindings[candidate]
    where = f"{folder}" if folder else f"{start} (or any parent)"
    raise UsageError(f"{where} is not a cloudguard folder; run cloudguard init or clone, or "
                     "pass --folder")


def check_unbound(folder: Path) -> None:
    for binding in all_bindings():
        bound = Path(binding.folder)
        if bound == folder or bound in folder.parents or folder in bound.parents:
            raise UsageError(f"{folder} overlaps the cloudguard folder {bound}")


class IndexRow(NamedTuple):
    """Field order matches :class:`cloudguard.sync.LocalItem` up to ``mode``: a push compares
    the slices ``[1:5]`` of both to skip unchanged files quickly."""

    path: str
    kind: str
    size: int
    mtime: int
    mode: int
    sha256: str
    dot: str
    target: str
    ctime: int = 0  # status-change time and inode when synced (0: not recorded); a pull
    ino: int = 0  # deletes or replaces a path only while both still match


_COLUMNS = "path, kind, size, mtime, mode, sha256, dot, target, ctime, ino"


def signature(kind: str, size: int, mtime: int, mode: int, target: str, ctime: int = 0,
              ino: int = 0) -> str:
    """What a push compares between the folder and the index to skip unchanged entries; equal
    signatures imply "not dirty" (sync.dirty), different ones get the full comparison.

    ctime and inode are in it, as in git's index: an edit that keeps size and mtime (same
    second, or a tool that restores mtimes) still moves ctime. A row stored with ctime 0 (not
    recorded, or racily clean: synced within moments of its last change) never matches, so
    the next push hashes that file again."""
    return f"{kind}:{size}:{mtime}:{mode}:{target}:{ctime}:{ino}"


JOURNAL_KEY = "journal_version"  # meta: the version of the staged-version journal's rows
# 2: a staged version's row also holds its DEK wrapped under a key of this device's own secret
# (``lk``, ops/localwrap.py); a row of 1 (none) is read as before and given one at a commit
JOURNAL_VERSION = 2


class Index:
    """SQLite in WAL mode: what was last synced, so changes on either side can be told apart."""

    def __init__(self, path: Path, threads: bool = False) -> None:
        """``threads``: one connection for several threads (the caller serialises its use)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_db_file(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=not threads,
                                  timeout=60 if threads else 5)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, kind TEXT, size INTEGER,
                mtime INTEGER, mode INTEGER, sha256 TEXT, dot TEXT, target TEXT, sig TEXT,
                ctime INTEGER NOT NULL DEFAULT 0, ino INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS pending (object TEXT PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS orphans (object TEXT PRIMARY KEY, first_seen REAL);
            CREATE TABLE IF NOT EXISTS staged (id INTEGER PRIMARY KEY AUTOINCREMENT,
                p TEXT NOT NULL, e TEXT NOT NULL);
            """
        )
        self._check_journal(path)
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(files)")]
        if "ino" not in columns:  # an index from before ctime and inode were recorded
            with self.transaction():
                self.db.execute("ALTER TABLE files ADD COLUMN ctime INTEGER NOT NULL DEFAULT 0")
                self.db.execute("ALTER TABLE files ADD COLUMN ino INTEGER NOT NULL DEFAULT 0")
        if "sig" not in columns:  # an index from before signatures: add and fill them
            with self.transaction():
                self.db.execute("ALTER TABLE files ADD COLUMN sig TEXT")
                for row in self.rows().values():
                    self.put(row)

    def _check_journal(self, path: Path) -> None:
        """The staged-version journal (table ``staged``, docs/format.md "Local state") carries
        its version: one written by a newer cloudguard is refused, never misread (a row
        misread could commit a version no one can open, or drop one a mount acknowledged)."""
        got = self.get_meta(JOURNAL_KEY)
        if got is not None and (type(got) is not int or not 1 <= got <= JOURNAL_VERSION):
            self.db.close()
            raise UnsupportedFormat(
                f"{path}: its staged-version journal is version {got!r}; this cloudguard "
                f"reads versions 1 to {JOURNAL_VERSION} (upgrade cloudguard)")
        if got != JOURNAL_VERSION:  # new, or an older version's: its rows read as they are,
            self.set_meta(JOURNAL_KEY, JOURNAL_VERSION)  # and an older cloudguard never
            # commits a row of this one (it would send its local wrap to the remote)

    def close(self) -> None:
        self.db.close()

    def add_staged(self, path: str, entry: Mapping[str, Any]) -> int:
        """A version staged (durable ciphertext in the spool), or a name operation
        (ops/namelog.py), not committed yet: one row, so a stage never rewrites the others
        and a commit drops only the rows it read. Its row id."""
        cur = self.db.execute("INSERT INTO staged (p, e) VALUES (?, ?)",
                              (path, json.dumps(entry)))
        return int(cur.lastrowid or 0)

    def staged_ids(self) -> set[int]:
        """The row ids of what is staged and not committed."""
        return {int(i) for (i,) in self.db.execute("SELECT id FROM staged")}

    def staged(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(row id, path, entry) of every staged version, oldest first."""
        return [(int(i), str(p), json.loads(e)) for i, p, e in
                self.db.execute("SELECT id, p, e FROM staged ORDER BY id")]

    def staged_objects(self) -> set[str]:
        """The object ids of staged versions: uploaded, or to be, for a commit still to come
        (a mount's), so no garbage collection may take them."""
        return {str(e["o"]) for _i, _p, e in self.staged() if "o" in e}

    def replace_staged(self, row: int, entry: Mapping[str, Any]) -> None:
        self.db.execute("UPDATE staged SET e = ? WHERE id = ?", (json.dumps(entry), row))

    def drop_staged(self, ids: list[int]) -> None:
        self.db.executemany("DELETE FROM staged WHERE id = ?", [(i,) for i in ids])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def rows(self) -> dict[str, IndexRow]:
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM files")
        make = IndexRow._make
        return {r[0]: make(r) for r in cur}

    def signatures(self) -> dict[str, str]:
        """path -> :func:`signature`: two strings a row, three times cheaper to read than
        whole rows, which a push of a big folder needs only for the paths that changed."""
        return dict(self.db.execute("SELECT path, sig FROM files"))

    def dots(self) -> dict[str, str]:
        """path -> the dot last synced: what a pull compares with the remote's."""
        return dict(self.db.execute("SELECT path, dot FROM files"))

    def count_files(self) -> int:
        """Synced files and symlinks (not folders): what the mass-delete guard compares."""
        return int(self.db.execute("SELECT COUNT(*) FROM files WHERE kind != 'd'").fetchone()[0])

    def rows_for(self, paths: Iterable[str]) -> dict[str, IndexRow]:
        wanted = list(paths)
        out: dict[str, IndexRow] = {}
        for start in range(0, len(wanted), 500):
            batch = wanted[start:start + 500]
            marks = ",".join("?" * len(batch))
            for r in self.db.execute(f"SELECT {_COLUMNS} FROM files WHERE path IN ({marks})",
                                     batch):
                out[r[0]] = IndexRow._make(r)
        return out

    def rows_under(self, paths: Iterable[str]) -> dict[str, IndexRow]:
        """Rows at ``paths`` and everything under them: a range on the primary key, so a
        push of a few paths reads what they hold, not the whole index."""
        out: dict[str, IndexRow] = {}
        for path in paths:
            out.update(self.rows_for([path]))
            for r in self.db.execute(f"SELECT {_COLUMNS} FROM files WHERE path >= ? AND path < ?",
                                     (path + "/", path + "0")):  # '0' follows '/'
                out[r[0]] = IndexRow._make(r)
        return out

    def put(self, row: IndexRow) -> None:
        self.db.execute(f"INSERT OR REPLACE INTO files ({_COLUMNS}, sig) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (*row, signature(row.kind, row.size, row.mtime, row.mode, row.target,
                                          row.ctime, row.ino)))

    def remove(self, path: str) -> None:
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def pending(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT object FROM pending")}

    def add_pending(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO pending VALUES (?)", (name,))

    def clear_pending(self, names: set[str]) -> None:
        self.db.executemany("DELETE FROM pending WHERE object = ?", [(n,) for n in names])

    def orphans(self) -> dict[str, float]:
        return {r[0]: r[1] for r in self.db.execute("SELECT object, first_seen FROM orphans")}

    def set_orphans(self, orphans: dict[str, float]) -> None:
        self.db.execute("DELETE FROM orphans")
        self.db.executemany("INSERT INTO orphans VALUES (?, ?)", list(orphans.items()))


_IN_PROCESS: dict[str, threading.Lock] = {}
_IN_PROCESS_GUARD = threading.Lock()


@contextmanager
def folder_lock(binding: Binding) -> Iterator[None]:
    """One cloudguard process per folder at a time; the daemon and a manual push must not race.
    Threads of one process (a mount's callbacks, a daemon's worker) take turns: an flock is
    held per open file, so a second session of the same process would be refused."""
    with _IN_PROCESS_GUARD:
        turn = _IN_PROCESS.setdefault(binding.id, threading.Lock())
    with turn, _flock(binding):
        yield


def lock_wait() -> float:
    """How long an operation waits for another process's operation on the same folder
    (``CLOUDGUARD_LOCK_WAIT`` seconds, default 600; 0 fails at once)."""
    return settings().lock_wait


@contextmanager
def _flock(binding: Binding) -> Iterator[None]:
    """Waits for another process's operation (the daemon's push, a mount's commit) rather than
    failing; says so once on a terminal."""
    binding.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    wait = lock_wait()
    fd = os.open(binding.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    raise FolderBusy(f"another cloudguard process is working on "
                                     f"{binding.folder} (waited {wait:g} s; "
                                     "CLOUDGUARD_LOCK_WAIT sets the wait)") from exc
                if not told and sys.stderr.isatty():
                    print(f"cloudguard: waiting for another cloudguard process working on "
                          f"{binding.folder}", file=sys.stderr)
                    told = True
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
