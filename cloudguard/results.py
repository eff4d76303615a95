"""What the operations return and ``--json`` prints: one typed Struct per command.

This module is the schema of the results (docs/cli-json.md explains each command's fields in
prose; tests/test_results.py holds the two together, and decodes every command's real output
into its Struct with strict typing). The operations build these, the library API
(:mod:`cloudguard.api`, :mod:`cloudguard.vault`) returns them, and the faces read their
attributes: no result crosses a module as a loose dict any more.

Field names are the wire names, so a rename here is a change of the JSON every script reads.
:func:`to_json` writes the exact bytes the CLI always printed (see there why not
``msgspec.json.encode``). Pure data: imports nothing of cloudguard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

import msgspec


class Result(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every result: keyword-only, and strict when decoded (a script's view)."""


class Counts(Result):
    """Files, folders and links apart: "updated 42" must not call 40 folders files."""

    files: int = 0
    folders: int = 0
    links: int = 0

    @staticmethod
    def of(kinds: Iterable[str]) -> Counts:
        """From entry kinds ("f", "d", "l"; anything else counts as a file)."""
        out = Counts()
        for kind in kinds:
            if kind == "d":
                out.folders += 1
            elif kind == "l":
                out.links += 1
            else:
                out.files += 1
        return out


# --- push, pull, clone ---------------------------------------------------------------------


class PushCounts(Result):
    uploaded: Counts
    updated: Counts
    deleted: Counts


class PushResult(Result):
    """``cloudguard push``; a dry run has every field too (what it would do)."""

    uploaded: list[str]
    updated: list[str]  # folders, links, metadata-only changes, new paths of renames
    deleted: list[str]  # not the old paths of renamed files: those are in ``renamed``
    renamed: dict[str, str]  # old path -> new path, moved without an upload
    dry_run: bool
    conflicts: list[str]  # conflict copies made: two devices changed one file
    unreadable: list[str]  # kept as last synced; the CLI exits 1
    skipped: list[str]  # changed while read: pushed next time; the CLI exits 1
    bytes_uploaded: int
    objects: int
    object_ids: list[str]  # what the audit log records, to trace a push's ciphertext
    mass_delete: bool  # a dry run: the real push would ask first
    rewritten: int  # uploads replacing a synced file's content: the daemon's ransomware guard
    counts: PushCounts


class PullCounts(Result):
    downloaded: Counts
    made: Counts  # folders and links made
    deleted: Counts


class PullResult(Result):
    """``cloudguard pull``: everything else landed even when ``errors`` is not empty."""

    downloaded: list[str]
    updated: list[str]  # content matched; the mode or mtime was applied
    deleted: list[str]
    conflicts: list[str]
    skipped: list[str]
    errors: list[str]  # one line per path that could not land; the CLI exits 1
    unreadable: list[str]  # under folders the scan could not read: they wait
    counts: PullCounts


class InitResult(Result):
    """``cloudguard init``."""

    folder: str
    remote: str  # redacted: no secrets of a connection string
    vault: str
    vault_code: str  # what a new device checks before it trusts the vault
    device: str
    keystore: str
    exposed: list[str]  # other sync clients' folders around it (only with --allow-exposed)


class CloneResult(Result):
    """``cloudguard clone``: the first pull's fields when enrolled at once (a kit), else an
    enrolment request with empty lists, so the shape is the same either way."""

    folder: str
    vault: str
    enrolled: bool
    device: str
    fingerprint: str | None  # the request's, for ``device approve``; None with a kit
    downloaded: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    conflicts: list[str] = []
    skipped: list[str] = []
    errors: list[str] = []
    unreadable: list[str] = []
    exposed: list[str] = []
    counts: PullCounts = msgspec.field(
        default_factory=lambda: PullCounts(downloaded=Counts(), made=Counts(), deleted=Counts()))


# --- status --------------------------------------------------------------------------------


class Exposure(Result):
    """Files whose keys a removed member could unwrap: only a re-encryption renews them."""

    removed: str
    name: str
    files: int


class Reencryption(Result):
    """A re-encryption left half done: what is still under older keys, and how to finish."""

    epoch: int
    commit: str | None
    removed: str | None
    started: str | None
    files_left: int
    files_done: int
    kept_versions_left: int
    fix: str


class DaemonView(Result, forbid_unknown_fields=False):
    """What the running daemon reports of a folder (its FolderState, flattened). Unknown keys
    are dropped, not refused: a newer daemon must not break ``status``."""

    folder: str
    state: str  # starting, syncing, idle, paused, stopped, locked
    why: str
    queue: int
    last_push: float | None  # unix seconds
    last_pull: float | None
    last_error: str
    alive: bool
    key_age_days: float | None = None
    next_rotation_in_days: float | None = None  # None: not the device that rotates


class StatusCounts(Result):
    to_push: Counts
    to_pull: Counts
    push_deletes: Counts
    pull_deletes: Counts


class StatusResult(Result):
    """``cloudguard status``: what push and pull would do."""

    folder: str
    remote: str
    vault: str
    device: str
    epoch: int
    vault_code: str
    files: int
    exposed: list[Exposure]
    reencryption: Reencryption | None
    to_push: list[str]
    to_pull: list[str]
    conflicts: list[str]  # conflict copies a pull would make
    unreadable: list[str]
    in_sync: bool  # never with an unreadable path
    counts: StatusCounts
    daemon: DaemonView | None = None  # filled by the CLI, which asks the daemon
    mounts: list[str] = []  # filled by the CLI: where `cloudguard mount` serves this vault


# --- checks --------------------------------------------------------------------------------


class VerifyResult(Result):
    """``cloudguard verify``: a failure raises (exit 3), so ``ok`` is always true here."""

    files: int
    objects: int
    read_data: bool  # every blob authenticated (always on a local remote: same cost)
    hash_checked: int  # objects whose backend MD5 was compared
    authenticated: int
    unreferenced: list[str]  # objects no manifest entry names (maintenance collects them)
    checked: Literal["data", "md5", "md5 and sizes", "sizes"]
    ok: bool


class Finding(Result):
    level: Literal["error", "warning", "ok"]
    check: str
    message: str
    fix: str


class DoctorResult(Result):
    """``cloudguard doctor``: any error finding makes the exit code 1."""

    ok: bool
    errors: int
    warnings: int
    findings: list[Finding]


class Damage(Result):
    object: str  # the data object's id (its name without ``data/``)
    problem: str  # missing, the wrong size, altered, or why it did not authenticate


class Unrepairable(Result):
    """A version with no good copy anywhere: neither the folder nor its own blob."""

    path: str
    version: str
    current: bool  # the current version, not one of the history
    object: str
    problem: str
    reason: str


class RepairResult(Result):
    """``cloudguard repair``: anything ``unrepairable`` makes ``ok`` false and exit 3."""

    files: int
    damaged_objects: int
    damaged: list[Damage]
    repaired: list[str]  # re-encrypted from matching local files into new objects
    moved: list[str]  # copied out of a damaged object: their own blob still authenticates
    unrepairable: list[Unrepairable]
    ok: bool


class RepublishResult(Result):
    """``cloudguard repair --republish``: this device's verified state over a rolled-back or
    forked remote manifest (nothing written when it is neither)."""

    republished: bool
    reason: str | None  # the rollback or fork found
    snapshot: str | None
    files: int
    message: str


class RotateResult(Result):
    """``key rotate`` and ``device remove``: the new key generation."""

    epoch: int
    commit: str
    reencrypted: bool
    removed: str | None  # the member removed, for ``device remove``
    resumed: bool  # this run finished an interrupted re-encryption (no new epoch)
    files: int  # re-encrypted by this run
    deleted_objects: int


class KeyEpoch(Result):
    """A row of ``key list``: one KEK epoch on the head's ancestry."""

    epoch: int
    commit: str
    action: str
    created: str
    age_days: float  # how old the key is: the advice is to change keys often
    current: bool
    reencryption: Reencryption | None  # on the epoch an unfinished re-encryption goes to


class MarkResult(Result):
    folder: str
    marker: str


class SettingsResult(Result):
    folder: str
    keep_days: int  # how long replaced and deleted versions stay restorable


class UnlockResult(Result):
    """``cloudguard unlock``: the folders whose device keys were opened."""

    unlocked: list[str]
    daemon: bool  # a running daemon was told (it takes them from the kernel keyring)


# --- encoding ------------------------------------------------------------------------------


def to_json(result: Any) -> str:
    """The text ``--json`` prints: indented, keys sorted, ASCII (what ``json.dumps`` always
    wrote). Not ``msgspec.json.encode``: it writes non-ASCII paths raw and floats such as
    1e-05 as 0.00001, and scripts compare these bytes."""
    return json.dumps(msgspec.to_builtins(result), indent=2, sort_keys=True)


def decode(data: bytes | str, kind: type[Result]) -> Any:
    """A result read back from ``--json`` output, strictly typed (what tests and scripts do)."""
    return msgspec.json.decode(data, type=kind, strict=True)


__all__ = [
    "CloneResult", "Counts", "DaemonView", "Damage", "DoctorResult", "Exposure", "Finding",
    "InitResult", "KeyEpoch", "MarkResult", "PullCounts", "PullResult", "PushCounts",
    "PushResult", "Reencryption", "RepairResult", "RepublishResult", "Result", "RotateResult",
    "SettingsResult", "StatusCounts", "StatusResult", "UnlockResult", "Unrepairable",
    "VerifyResult", "decode", "to_json",
]
