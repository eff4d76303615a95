"""Every setting cloudguard reads from the environment, in one place, each checked.

A bad value is refused with one line naming the variable (exit 2), never silently replaced
by a default. Secrets (``CLOUDGUARD_PASSPHRASE`` and the kit's, and their ``_FILE`` forms)
are not settings: only :mod:`cloudguard.keys` reads them, when it needs them, and keeps them
nowhere. The daemon's own settings are in ``CLOUDGUARD_HOME/config.toml``
(:mod:`cloudguard.daemon.config`). rclone's ``RCLONE_*`` variables stay rclone's: every rclone
process inherits them.

Read once per process and then kept; a change of the environment (tests) is noticed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

VARIABLES = ("CLOUDGUARD_HOME", "CLOUDGUARD_KEYSTORE", "CLOUDGUARD_RCLONE",
             "CLOUDGUARD_STALL_SECONDS", "CLOUDGUARD_GC_GRACE", "CLOUDGUARD_MASS_DELETE_PERCENT",
             "CLOUDGUARD_MASS_DELETE_FILES", "CLOUDGUARD_ROTATE_DAYS", "CLOUDGUARD_LOCK_WAIT",
             "CLOUDGUARD_MASS_CHANGE_PERCENT", "CLOUDGUARD_KEY_CACHE_SECONDS")


@dataclass(frozen=True)
class Settings:
    home: Path | None = None  # None: the platform's user data folder
    keystore: str | None = None  # "keyring" or "file"; None: chosen by what the OS offers
    rclone: str | None = None  # None: beside the interpreter, then PATH
    stall_seconds: float = 60.0
    gc_grace: float = 86400.0
    mass_delete_share: float = 0.5
    mass_delete_files: int = 1000
    mass_change_share: float = 0.5  # the daemon's ransomware guard: files rewritten in 5 min
    rotate_days: float = 30.0
    lock_wait: float = 600.0
    key_cache_seconds: float = 300.0  # unlocked key file in the kernel keyring (keycache)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        base = cls()

        def number(name: str, default: float, low: float, high: float, what: str) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not low <= value <= high:  # NaN fails too
                raise UsageError(f"{name}={raw!r} is not {what} from {low:g} to {high:g}")
            return value

        keystore = env.get("CLOUDGUARD_KEYSTORE", "").strip().lower() or None
        if keystore not in (None, "keyring", "file"):
            raise UsageError(f"CLOUDGUARD_KEYSTORE={keystore!r}: use 'keyring' or 'file'")
        rclone = env.get("CLOUDGUARD_RCLONE") or None
        if rclone is not None and not os.access(rclone, os.X_OK):
            raise UsageError(f"CLOUDGUARD_RCLONE={rclone} is not an executable file")
        files = env.get("CLOUDGUARD_MASS_DELETE_FILES", "")
        if files and not files.isdigit():
            raise UsageError(f"CLOUDGUARD_MASS_DELETE_FILES={files!r} is not a number of files")
        home = env.get("CLOUDGUARD_HOME") or None
        return cls(
            home=Path(home).expanduser() if home else None,
            keystore=keystore,
            rclone=rclone,
            stall_seconds=number("CLOUDGUARD_STALL_SECONDS", base.stall_seconds, 1, 86400,
                                 "a number of seconds"),
            gc_grace=number("CLOUDGUARD_GC_GRACE", base.gc_grace, 0, 10 * 365 * 86400,
                            "a number of seconds"),
            mass_delete_share=number("CLOUDGUARD_MASS_DELETE_PERCENT",
                                     base.mass_delete_share * 100, 0, 100,
                                     "a percentage") / 100,
            mass_delete_files=int(files) if files else base.mass_delete_files,
            mass_change_share=number("CLOUDGUARD_MASS_CHANGE_PERCENT",
                                     base.mass_change_share * 100, 0, 100,
                                     "a percentage") / 100,
            rotate_days=number("CLOUDGUARD_ROTATE_DAYS", base.rotate_days, 1, 3650,
                               "a number of days"),
            lock_wait=number("CLOUDGUARD_LOCK_WAIT", base.lock_wait, 0, 86400,
                             "a number of seconds"),
            key_cache_seconds=number("CLOUDGUARD_KEY_CACHE_SECONDS", base.key_cache_seconds,
                                     0, 86400, "a number of seconds"),
        )


_CACHE: tuple[tuple[str | None, ...], Settings] | None = None


def settings() -> Settings:
    """This process's settings (read again only if one of the variables changed)."""
    global _CACHE
    key = tuple(os.environ.get(name) for name in VARIABLES)
    if _CACHE is None or _CACHE[0] != key:
        _CACHE = (key, Settings.from_env())
    return _CACHE[1]
