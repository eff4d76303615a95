"""The daemon's settings: ``CLOUDGUARD_HOME/config.toml`` (tomllib), defaults below.

    [daemon]
    poll_seconds = 15        # how often other devices' pushes are looked for
    rescan_seconds = 600     # a full look at each folder (missed events, a resume)
    quiet_closed = 0.3       # quiet period after a close-after-write
    quiet_open = 2.0         # ... after a write without a close
    max_wait = 30.0          # a file that never goes quiet is pushed after this
    min_interval = 10.0      # a busy path is pushed at most this often
    ignore = ["*.bak"]       # more ignore patterns (gitignore syntax) beyond the defaults
    rotation_days = 30       # the lowest-id device rotates a key older than this
    bandwidth = "2M"         # rclone's --bwlimit for this folder's transfers ("off": none)
    min_free_mb = 500        # no pull while the folder's disk has less free (0: off)
    log_level = "info"       # debug, info, warning or error

    [folder."/home/me/Documents"]   # any of the above for one bound folder (over [daemon])
    poll_seconds = 60
    ignore = ["*.iso"]              # added to [daemon]'s patterns

Every value is checked; a bad one is one line naming the setting.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..results import ConfigResult, EnvironmentSettings, FolderSettings
from ..settings import settings
from ..state import home
from .schedule import Timing
from .worker import Intervals, Limits

_NUMBERS = {"poll_seconds": (0.1, 86400.0), "rescan_seconds": (1.0, 7 * 86400.0),
            "quiet_closed": (0.0, 3600.0), "quiet_open": (0.0, 3600.0),
            "max_wait": (0.1, 86400.0), "min_interval": (0.0, 86400.0)}


# rclone's --bwlimit: a rate with an optional unit (B, K, M, G, T, P; bytes per second), or
# upload:download ("1M:off"); no timetables, so one value means the same all day
_RATE = r"(?:off|[0-9]+(?:\.[0-9]+)?[bkmgtp]?)"
_BANDWIDTH = re.compile(rf"{_RATE}(?::{_RATE})?\Z", re.IGNORECASE)
_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DaemonConfig:
    timing: Timing
    intervals: Intervals
    ignore: tuple[str, ...]
    folders: dict[str, DaemonConfig] = field(default_factory=dict)  # resolved path -> its own
    limits: Limits = field(default_factory=Limits)

    def for_folder(self, folder: str) -> DaemonConfig:
        """This folder's settings: its [folder."..."] section over [daemon]."""
        return self.folders.get(str(Path(folder).resolve()), self)


def config_path() -> Path:
    return home() / "config.toml"


def load(path: Path | None = None) -> DaemonConfig:
    path = path or config_path()
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"daemon", "folder"})
    if unknown:
        raise UsageError(f"{path}: unknown section [{unknown[0]}]")
    base = _section(path, "daemon", doc.get("daemon", {}),
                    DaemonConfig(Timing(), Intervals(), ()))
    folders = doc.get("folder", {})
    if not isinstance(folders, dict):
        raise UsageError(f"{path}: [folder] must hold tables named by folder paths")
    own: dict[str, DaemonConfig] = {}
    for name, section in folders.items():
        if not Path(name).is_absolute():
            raise UsageError(f"{path}: [folder.\"{name}\"] must name an absolute path")
        own[str(Path(name).resolve())] = _section(path, f'folder."{name}"', section, base)
    return DaemonConfig(base.timing, base.intervals, base.ignore, own, base.limits)


def _section(path: Path, where: str, section: object, base: DaemonConfig) -> DaemonConfig:
    """One table's settings over ``base``; every value checked, naming ``where.key``."""
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [{where}] must be a table")
    unknown = sorted(set(section) - set(_NUMBERS) - {"ignore", "rotation_days", "bandwidth",
                                                      "min_free_mb", "log_level"})
    if unknown:
        raise UsageError(f"{path}: unknown setting {where}.{unknown[0]}")
    values: dict[str, float] = {}
    for key, (low, high) in _NUMBERS.items():
        if key in section:
            raw = section[key]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) \
                    or not low <= float(raw) <= high:
                raise UsageError(f"{path}: {where}.{key} = {raw!r} is not a number of seconds "
                                 f"from {low:g} to {high:g}")
            values[key] = float(raw)
    rotation = section.get("rotation_days", base.intervals.rotation_days)
    if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) \
            or not 0.00001 <= float(rotation) <= 3650:
        raise UsageError(f"{path}: {where}.rotation_days = {rotation!r} is not a number of "
                         "days from 0.00001 to 3650")
    ignore = section.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise UsageError(f"{path}: {where}.ignore must be a list of patterns")
    base_t, base_i = base.timing, base.intervals
    timing = Timing(values.get("quiet_closed", base_t.quiet_closed),
                    values.get("quiet_open", base_t.quiet_open),
                    values.get("max_wait", base_t.max_wait),
                    values.get("min_interval", base_t.min_interval))
    intervals = Intervals(values.get("poll_seconds", base_i.poll),
                          values.get("rescan_seconds", base_i.rescan),
                          rotation_days=float(rotation))
    return DaemonConfig(timing, intervals, (*base.ignore, *ignore),
                        limits=_limits(path, where, section, base.limits))


def _limits(path: Path, where: str, section: dict[str, Any], base: Limits) -> Limits:
    bandwidth = section.get("bandwidth", base.bandwidth or "off")
    if not isinstance(bandwidth, str) or not _BANDWIDTH.match(bandwidth):
        raise UsageError(f"{path}: {where}.bandwidth = {bandwidth!r} is not a rate such as "
                         '"512k", "2M" or "off" (bytes per second; "UP:DOWN" for two)')
    free = section.get("min_free_mb", base.min_free_mb)
    if isinstance(free, bool) or not isinstance(free, (int, float)) or not 0 <= free <= 10**9:
        raise UsageError(f"{path}: {where}.min_free_mb = {free!r} is not a number of MiB "
                         "from 0 to 1000000000")
    level = section.get("log_level", base.log_level)
    if not isinstance(level, str) or level.lower() not in _LEVELS:
        raise UsageError(f"{path}: {where}.log_level = {level!r} is not one of "
                         f"{', '.join(_LEVELS)}")
    return Limits(None if bandwidth.lower() == "off" else bandwidth, float(free),
                  level.lower())


def show() -> ConfigResult:
    """``cloudguard config show``: the effective settings of the daemon and of each folder
    section, and the CLOUDGUARD_* variables as read; a bad value raises, naming it."""
    config = load()
    env = {k: (str(v) if v is not None else None) for k, v in asdict(settings()).items()}
    return ConfigResult(config_file=str(config_path()), daemon=_effective(config),
                        folders={f: _effective(c) for f, c in config.folders.items()},
                        environment=EnvironmentSettings(**env))


def _effective(config: DaemonConfig) -> FolderSettings:
    return FolderSettings(**asdict(config.timing), **asdict(config.intervals),
                          ignore=list(config.ignore), **asdict(config.limits))
