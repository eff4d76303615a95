"""The sync engine: scan, a pure plan, then an executor.

``plan_push`` and ``plan_pull`` compare three views (the folder on disk, the index of what was
last synced, and the merged remote manifest) without any I/O, so they can be tested exhaustively.
The executors then stream content through the format layer: plaintext only ever exists in the
user's folder (and in memory), and every file lands through temp-file + fsync + rename.

The sync engine: scan the folder, plan (pure), upload, read blobs, land files.

Everything is re-exported here, so callers say ``sync.X``.
"""

from __future__ import annotations

from .early import EarlyStreams
from .landing import (
    NotAFolder,
    Staged,
    apply_meta,
    clear_staging,
    commit_staged,
    discard,
    keep_staged,
    make_dir,
    make_link,
    move_aside,
    remove_local,
    reuse_staged,
    stage,
    temp_path,
)
from .plans import (
    MASS_DELETE_FILES,
    MASS_DELETE_FLOOR,
    MASS_DELETE_SHARE,
    LazyView,
    PullPlan,
    PushPlan,
    conflict_name,
    dot_key,
    heads,
    mass_delete,
    newest,
    plan_pull,
    plan_push,
    resolve_siblings,
    view,
    view_of,
)
from .reading import (
    DATA_PREFIX,
    blob_matches,
    blob_reader,
    blobs,
    dek_of,
    group_by_object,
    key_opens,
    read_blobs,
    true_key,
)
from .scanning import (
    MARKER_DIR,
    LocalItem,
    check_rel_path,
    dirty,
    entry_matches,
    hash_file,
    local_item,
    row_from,
    row_from_entry,
    scan,
    scan_paths,
    under,
)
from .uploader import PACK_THRESHOLD, ObjectWriter, _encrypt_one, upload, write_filler

__all__ = [
    "EarlyStreams",
    "DATA_PREFIX",
    "blob_matches",
    "true_key",
    "key_opens",
    "LazyView",
    "LocalItem",
    "MARKER_DIR",
    "MASS_DELETE_FILES",
    "MASS_DELETE_FLOOR",
    "MASS_DELETE_SHARE",
    "NotAFolder",
    "ObjectWriter",
    "PACK_THRESHOLD",
    "PullPlan",
    "PushPlan",
    "Staged",
    "_encrypt_one",
    "apply_meta",
    "blob_reader",
    "blobs",
    "check_rel_path",
    "clear_staging",
    "commit_staged",
    "conflict_name",
    "dek_of",
    "dirty",
    "discard",
    "dot_key",
    "entry_matches",
    "group_by_object",
    "hash_file",
    "heads",
    "keep_staged",
    "local_item",
    "make_dir",
    "make_link",
    "mass_delete",
    "move_aside",
    "newest",
    "plan_pull",
    "plan_push",
    "read_blobs",
    "remove_local",
    "resolve_siblings",
    "reuse_staged",
    "row_from",
    "row_from_entry",
    "scan",
    "scan_paths",
    "stage",
    "temp_path",
    "under",
    "upload",
    "view",
    "view_of",
    "write_filler",
]
