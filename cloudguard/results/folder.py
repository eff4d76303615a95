"""A folder's own commands: init, clone, push, pull, status, mark and settings."""

from __future__ import annotations

import msgspec

from .base import Counts, Result
from .machine import DaemonView

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
    late: list[str]  # a removed member's late content only: never pushed (a warning)
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


# --- status ------------------------------------------------------------------------------


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
    in_sync: bool  # never with an unreadable or a late path
    counts: StatusCounts
    late: list[str] = []  # hold a removed member's late content: push never sends them
    daemon: DaemonView | None = None  # filled by the CLI, which asks the daemon
    mounts: list[str] = []  # filled by the CLI: where `cloudguard mount` serves this vault


class MarkResult(Result):
    folder: str
    marker: str


class SettingsResult(Result):
    folder: str
    keep_days: int  # how long replaced and deleted versions stay restorable


__all__ = [
    "CloneResult", "Exposure", "InitResult", "MarkResult", "PullCounts", "PullResult",
    "PushCounts", "PushResult", "Reencryption", "SettingsResult", "StatusCounts",
    "StatusResult",
]
