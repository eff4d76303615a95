"""The pure plans: which version a path shows, conflicts, and what a push or
a pull has to do. No I/O beyond the hasher callback.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

from ..errors import CloudguardError
from ..manifest import Entry, State, resolutions
from ..manifest.entry import Op
from ..state import IndexRow
from .scanning import (
    LocalItem,
    check_rel_path,
    dirty,
    entry_matches,
    meta_differs,
    row_from,
    synced,
)


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


def resolve_siblings(state: State, labels: dict[str, str]) -> list[Op]:
    """Ops that turn concurrent versions of one path into the path plus conflict copies.

    Deterministic, so every device computes the same resolution; if two devices both write it,
    the copies are identical and collapse on the next merge.
    """
    ops: list[Op] = []
    chosen: set[str] = set()
    for path in state.conflicted():
        sibs = state.siblings(path)
        distinct = {resolutions.content_tag(e) for e in sibs.values()}
        if len(distinct) < 2:
            continue
        order = sorted(sibs.items(), key=_precedence)
        winner_dot, winner = order[-1]
        # each version names whose content it carries, so a late write's is undone (AA2)
        ops.append({"p": path, "e": {**winner, resolutions.FIELD: resolutions.source(
            winner_dot, winner, state)}, "rm": sorted(sibs)})
        seen = {resolutions.content_tag(winner)}
        for dot, entry in order[:-1]:
            if resolutions.content_tag(entry) in seen:
                continue
            seen.add(resolutions.content_tag(entry))
            device = str(entry.get("wb") or dot.partition(":")[0])  # who wrote this content
            when = int(entry.get("m") or int(entry.get("pt", 0)) * 10**9)  # folders: no mtime
            name = conflict_name(path, when, labels.get(device, device[:8]),
                                 lambda p: state.has_path(p) or p in chosen)
            chosen.add(name)
            ops.append({"p": name, "e": {**entry, resolutions.FIELD: resolutions.source(
                dot, entry, state)}, "rm": []})
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


MASS_DELETE_SHARE = 0.5  # a push deleting more than this share of the files asks first ...


MASS_DELETE_FILES = 1000  # ... as does one deleting more than this many


MASS_DELETE_FLOOR = 10  # fewer deletions than this never ask: a small folder stays usable


def mass_delete(deleting: int, total: int, share: float = MASS_DELETE_SHARE,
                most: int = MASS_DELETE_FILES) -> bool:
    """Whether deleting ``deleting`` of ``total`` files is too many to do without asking."""
    if deleting > most:
        return True
    return deleting >= MASS_DELETE_FLOOR and deleting > share * total


@dataclass
class PushPlan:
    upload: list[LocalItem] = field(default_factory=list)  # content to encrypt
    put: list[tuple[LocalItem, Entry | None]] = field(default_factory=list)  # dirs, links, meta
    delete: list[IndexRow] = field(default_factory=list)
    adopt: list[tuple[LocalItem, str, str]] = field(default_factory=list)  # (item, dot, sha)
    renamed: dict[str, str] = field(default_factory=dict)  # old path -> new (also in delete)
    late: list[str] = field(default_factory=list)  # a removed member's late content: not sent
    # old path -> new: a late copy renamed here; its row moves with it (nothing is sent)
    late_moves: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return len(self.upload) + len(self.put) + len(self.delete)


def plan_push(local: dict[str, LocalItem], index: dict[str, IndexRow],
              remote: Mapping[str, tuple[str, Entry]], hasher: Callable[[str], str],
              synced: Callable[[str, str], Entry | None] = lambda _p, _d: None,
              late: Callable[[LocalItem, IndexRow], bool] = lambda _i, _r: False
              ) -> PushPlan:
    """Only paths that changed since the last sync touch ``remote`` (which may be lazy).

    ``synced`` finds the version a row was synced from (current or kept in the history): a
    file whose content is still that version's, while another device replaced it, only had
    its metadata changed here. It is pushed as that old content with new metadata, so it
    keeps the old content's causal time and loses to the real edit (a ``touch`` never wins).
    A file or link that still holds what this folder took from a removed member's late write
    (``late``: its row names a late version), here or renamed, is not sent at all: not as a
    carry, not as this device's own (review round 16, EE3)."""
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
        if row is not None and late(loc, row):
            plan.late.append(path)
            continue
        if rem is not None and entry_matches(loc, rem[1], functools.partial(hasher, path)):
            entry = rem[1]
            if meta_differs(loc, entry):
                plan.put.append((loc, resolutions.carry(entry, x=loc.mode) if loc.kind == "d"
                                 else resolutions.carry(entry, m=loc.mtime, x=loc.mode)))
            else:
                plan.adopt.append((loc, rem[0], str(entry.get("h", ""))))
        elif loc.kind == "f":
            base = synced(path, row.dot) if row is not None and row.sha256 else None
            if (row is not None and rem is not None and base is not None
                    and base.get("t") == "f" and base.get("h") == row.sha256
                    and hasher(path) == row.sha256):
                plan.put.append((loc, resolutions.carry(base, m=loc.mtime, x=loc.mode)))
            else:
                plan.upload.append(loc)
        else:
            plan.put.append((loc, None))
    _pair_renames(plan, hasher, synced, late)
    return plan


def _pair_renames(plan: PushPlan, hasher: Callable[[str], str],
                  synced: Callable[[str, str], Entry | None],
                  late: Callable[[LocalItem, IndexRow], bool]) -> None:
    """A new file with the size and content of a vanished one is that file, moved: it is put
    under its new path with the old blob (no upload), and the old path is deleted. Only files
    whose size matches a vanished one are hashed, so an ordinary push reads nothing more."""
    _pair_links(plan, synced, late)
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
        if rows and late(loc, rows[0]):
            _late_move(plan, rows.pop(0), loc.path)
            continue
        base = synced(rows[0].path, rows[0].dot) if rows else None
        if rows and base is not None and base.get("t") == "f" and base.get(
                "h") == rows[0].sha256:
            plan.put.append((loc, resolutions.carry(base, m=loc.mtime, x=loc.mode)))
            plan.renamed[rows.pop(0).path] = loc.path
            continue
        keep.append(loc)
    plan.upload = keep


def _late_move(plan: PushPlan, row: IndexRow, new: str) -> None:
    """A late copy renamed here: nothing is sent, and its row follows it, so the next push
    still knows it and a pull removes it (the late write is in the history)."""
    plan.late.append(new)
    plan.late_moves[row.path] = new
    plan.delete = [r for r in plan.delete if r.path != row.path]


def _pair_links(plan: PushPlan, synced: Callable[[str, str], Entry | None],
                late: Callable[[LocalItem, IndexRow], bool]) -> None:
    """A new link with the target of a vanished one is that link, moved: it keeps the old
    version's content fields, so the push names where its target came from (``cs``) and a
    removed member's late link renamed during a lag is undone with it (review round 15,
    DD2)."""
    gone: dict[str, list[IndexRow]] = {}
    for row in plan.delete:
        if row.kind == "l":
            gone.setdefault(row.target, []).append(row)
    put: list[tuple[LocalItem, Entry | None]] = []
    for loc, entry in plan.put:
        rows = gone.get(loc.target) if entry is None and loc.kind == "l" else None
        if rows and late(loc, rows[0]):
            _late_move(plan, rows.pop(0), loc.path)
            continue
        base = synced(rows[0].path, rows[0].dot) if rows else None
        if rows and base is not None and base.get("t") == "l" and base.get("l") == loc.target:
            entry = resolutions.carry(base, m=loc.mtime)
            plan.renamed[rows.pop(0).path] = loc.path
        put.append((loc, entry))
    plan.put = put


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
    # a removed member's late content open in an office program: its late row stays, so no
    # push takes it as this device's, and a pull after it is closed replaces it (round 20, JJ2)
    held_open: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.download) + len(self.make) + len(self.delete) + len(self.meta)


def plan_pull(local: dict[str, LocalItem], index: dict[str, IndexRow],
              remote: dict[str, tuple[str, Entry]], hasher: Callable[[str], str],
              labels: dict[str, str], taken: Callable[[str], bool] | None = None,
              me: str = "local", first: bool = False,
              kept: Mapping[str, set[str]] | None = None,
              busy: Callable[[str], bool] | None = None,
              late: Callable[[LocalItem, IndexRow], bool] = lambda _i, _r: False
              ) -> PullPlan:
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

    ``busy``: is this file open in an office program (its lock file is there)? Its save
    would overwrite whatever lands, so a remote change lands as a conflict copy instead.
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
            if loc is not None and (synced(loc, row, local_hash) or late(loc, row)):
                plan.delete.append(row)
            else:
                plan.forget.append(path)
            continue
        dot, entry = rem
        # a late copy moved onto a path its carrying push also wrote has the live dot and
        # other content: the version there replaces it, as any late copy (round 19, HH2)
        if row is not None and row.dot == dot and not (loc is not None and late(loc, row)):
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
                    merged = cast(Entry, {
                        **entry, "x": entry.get("x") if loc.mode == row.mode else loc.mode,
                        "m": entry.get("m") if loc.mtime == row.mtime else loc.mtime})
                    if meta_differs(loc, merged):
                        plan.meta.append((path, dot, merged))
            continue
        land = plan.download if kind == "f" else plan.make
        if kind == "f" and loc.kind == "f" and busy is not None and busy(path):
            if row is not None and late(loc, row):
                plan.held_open.append(path)
                continue
            name = conflict(path, int(entry.get("m", 0)), dot.partition(":")[0])
            land.append((name, dot, entry))
            plan.forget.append(path)
            continue
        # a removed member's late content, only touched here (a chmod), is no edit: the
        # version that comes back replaces it (review round 16, EE3)
        untouched = row is not None and (synced(loc, row, local_hash) or late(loc, row))
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
