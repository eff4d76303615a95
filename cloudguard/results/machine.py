"""This machine: the daemon, unlock and lock, the audit log, and the settings."""

from __future__ import annotations

from typing import Any, Literal

from .base import Result

# --- the daemon ----------------------------------------------------------------------------


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


class DaemonFolder(Result, forbid_unknown_fields=False):
    """A folder as ``daemon status`` shows it: the daemon's FolderState as reported, its queue
    and whether its worker lives (unknown keys dropped, as in :class:`DaemonView`)."""

    folder: str
    state: str
    why: str
    queue: int
    last_push: float | None
    last_pull: float | None
    last_error: str
    extra: dict[str, Any]  # what the worker adds as it goes: key age, watching, low disk
    alive: bool


class DaemonStatus(Result, omit_defaults=True, forbid_unknown_fields=False):
    """``cloudguard daemon status``. With no daemon running, ``running`` (false) is the only
    key: ``pid`` and ``folders`` are left out, not null (what it always printed)."""

    running: bool
    pid: int | None = None
    folders: list[DaemonFolder] | None = None


class DaemonDone(Result, forbid_unknown_fields=False):
    """``daemon pause`` and ``daemon resume``: the daemon's report once it acted."""

    done: Literal["pause", "resume"]
    pid: int
    folders: list[DaemonFolder]


class DaemonStarted(Result):
    """``cloudguard daemon start``: it answers on its socket."""

    pid: int
    log: str


class DaemonStopped(Result):
    """``cloudguard daemon stop``: the pids sent SIGTERM (empty: none was running)."""

    stopped: list[int]


class UnitResult(Result):
    """``cloudguard daemon install``: the systemd user unit, and where it was installed (None
    with ``--print``)."""

    unit: str
    path: str | None


# --- keys, the audit log, settings ---------------------------------------------------------


class UnlockResult(Result):
    """``cloudguard unlock``: the folders whose device keys were opened."""

    unlocked: list[str]
    daemon: bool  # a running daemon was told (it takes them from the kernel keyring)


class LockResult(Result):
    """``cloudguard lock``: any ``problems`` make the exit code 1."""

    stopped: list[int]  # pids of the daemon and mounts
    unmounted: list[str]
    keyring_locked: bool
    problems: list[str]


class LogVerifyResult(Result):
    """``cloudguard log --verify``: a broken chain raises (exit 3), so ``ok`` is always true."""

    ok: bool
    records: int


# ``cloudguard log`` prints the audit records as they are: each event carries fields of its
# own (audit.record's keywords), which a Struct would drop, so a record stays a dict.
AuditRecord = dict[str, Any]


class FolderSettings(Result):
    """The daemon's effective settings, for every folder or one (config.toml): the fields of
    schedule.Timing, worker.Intervals and worker.Limits, and the ignore patterns."""

    quiet_closed: float  # seconds
    quiet_open: float
    max_wait: float
    min_interval: float
    max_paths: int
    poll: float
    rescan: float
    backoff_first: float
    backoff_max: float
    rotation_days: float
    ignore: list[str]
    bandwidth: str | None  # rclone's --bwlimit; None: no limit
    min_free_mb: float
    log_level: str


class EnvironmentSettings(Result):
    """The CLOUDGUARD_* variables as read (settings.Settings), as text; None: unset, the
    default applies."""

    home: str | None
    keystore: str | None
    rclone: str | None
    stall_seconds: str | None
    gc_grace: str | None
    mass_delete_share: str | None
    mass_delete_files: str | None
    mass_change_share: str | None
    rotate_days: str | None
    lock_wait: str | None
    key_cache_seconds: str | None


class ConfigResult(Result):
    """``cloudguard config show``."""

    config_file: str
    daemon: FolderSettings
    folders: dict[str, FolderSettings]  # a [folder."PATH"] section's, under its resolved path
    environment: EnvironmentSettings


__all__ = [
    "AuditRecord", "ConfigResult", "DaemonDone", "DaemonFolder", "DaemonStarted",
    "DaemonStatus", "DaemonStopped", "DaemonView", "EnvironmentSettings", "FolderSettings",
    "LockResult", "LogVerifyResult", "UnitResult", "UnlockResult",
]
