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

    [folder."/home/me/Documents"]   # any of the above for one bound folder (over [daemon])
    poll_seconds = 60
    ignore = ["*.iso"]              # added to [daemon]'s patterns

Every value is checked; a bad one is one line naming the setting.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..state import home
from .schedule import Timing
from .worker import Intervals

_NUMBERS = {"poll_seconds": (0.1, 86400.0), "rescan_seconds": (1.0, 7 * 86400.0),
            "quiet_closed": (0.0, 3600.0), "quiet_open": (0.0, 3600.0),
            "max_wait": (0.1, 86400.0), "min_interval": (0.0, 86400.0)}


@dataclass(frozen=True)
class DaemonConfig:
    timing: Timing
    intervals: Intervals
    ignore: tuple[str, ...]
    folders: dict[str, DaemonConfig] = field(default_factory=dict)  # resolved path -> its own

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
    return DaemonConfig(base.timing, base.intervals, base.ignore, own)


def _section(path: Path, where: str, section: object, base: DaemonConfig) -> DaemonConfig:
    """One table's settings over ``base``; every value checked, naming ``where.key``."""
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [{where}] must be a table")
    unknown = sorted(set(section) - set(_NUMBERS) - {"ignore", "rotation_days"})
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
    return DaemonConfig(timing, intervals, (*base.ignore, *ignore))
