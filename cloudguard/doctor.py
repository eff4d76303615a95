"""`cloudguard doctor`: turns the rest of the advisories into checks.

Encryption does not help if the plaintext folder sits inside a Dropbox folder, or if the
bucket is public. Each finding names what is wrong and how to fix it; any error-level finding
makes the command exit non-zero.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import keys as keymod
from . import remotes
from .errors import UsageError
from .remotes import REDACTED
from .settings import settings
from .state import Binding, all_bindings, home
from .transport import remote_config


@dataclass
class Finding:
    level: str  # "error" | "warning" | "ok"
    check: str
    message: str
    fix: str = ""


# Marker files or folders that a sync client keeps at the root of what it syncs.
MARKERS: dict[str, list[str]] = {
    "Dropbox": [".dropbox", ".dropbox.cache"],
    "OneDrive": [".odopen", ".849C9593-D756-4E56-8D6E-42412F2A707B"],
    "Google Drive": [".tmp.drivedownload", ".tmp.driveupload", ".shortcut-targets-by-id"],
    "iCloud Drive": [".icloud", "com~apple~CloudDocs"],
    "Nextcloud/ownCloud": [".owncloudsync.log", ".nextcloudsync.log", ".sync_*.db",
                           "._sync_*.db", ".sync-exclude.lst"],
    "Syncthing": [".stfolder", ".stignore", ".stversions"],
    "pCloud": [".pcloud", "pCloudDrive"],
    "MEGA": [".megaignore", ".debris"],
    "Baidu Netdisk": [".baidunetdisk", "BaiduNetdiskDownload", ".bdnetdisk"],
    "Aliyun Drive": [".aliyundrive", ".adrive"],
    "Tencent Weiyun": [".weiyun", ".weiyunsync"],
    "Huawei Cloud": [".hwcloud", ".huaweicloud", ".hicloud"],
}


def _marker_hit(folder: Path) -> str | None:
    try:
        names = set(os.listdir(folder))
    except OSError:
        return None
    for client, markers in MARKERS.items():
        for marker in markers:
            if marker == ".dropbox" and _dropbox_config(folder / marker):
                continue  # ~/.dropbox is Dropbox's configuration; info.json names its folder
            if "*" in marker:
                pattern = re.compile("^" + re.escape(marker).replace(r"\*", ".*") + "$")
                if any(pattern.match(n) for n in names):
                    return client
            elif marker in names:
                return client
    return None


def _dropbox_config(path: Path) -> bool:
    """Dropbox marks its synced folder with a *file* ``.dropbox``; the *folder* ``.dropbox``
    (with info.json or instance1) in a home directory is its configuration."""
    return path.is_dir() and not path.is_symlink() and (
        (path / "info.json").exists() or any(path.glob("instance*")))


def _configured_sync_roots(user_home: Path) -> list[tuple[str, Path]]:
    """Folders that sync clients' own config files say they sync."""
    roots: list[tuple[str, Path]] = []
    dropbox = user_home / ".dropbox" / "info.json"
    try:
        info = json.loads(dropbox.read_text())
        for account in info.values():
            if isinstance(account, dict) and "path" in account:
                roots.append(("Dropbox", Path(account["path"])))
    except (OSError, ValueError):
        pass
    for client, cfg in (("Nextcloud", ".config/Nextcloud/nextcloud.cfg"),
                        ("ownCloud", ".config/ownCloud/owncloud.cfg")):
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read(user_home / cfg)
        except configparser.Error:
            continue
        for section in parser.sections():
            for key, value in parser.items(section):
                if key.endswith("localpath") and value:
                    roots.append((client, Path(value)))
    for cfg in (".config/syncthing/config.xml", ".local/state/syncthing/config.xml"):
        try:
            text = (user_home / cfg).read_text()
        except OSError:
            continue
        for found in re.finditer(r'<folder\b[^>]*\bpath="([^"]+)"', text):
            roots.append(("Syncthing", Path(os.path.expanduser(found.group(1)))))
    try:
        text = (user_home / ".config/onedrive/config").read_text()
        match = re.search(r'^\s*sync_dir\s*=\s*"([^"]+)"', text, re.M)
        roots.append(("OneDrive", Path(os.path.expanduser(match.group(1))) if match
                      else user_home / "OneDrive"))
    except OSError:
        pass
    for client, default in (("pCloud", "pCloudDrive"), ("MEGA", "MEGA"),
                            ("Baidu Netdisk", "baidunetdisk"),
                            ("iCloud Drive", "Library/Mobile Documents")):
        if (user_home / default).is_dir():
            roots.append((client, user_home / default))
    return roots


def check_exposure(binding: Binding, user_home: Path) -> list[Finding]:
    return exposure(Path(binding.folder), user_home)


def exposure(folder: Path, user_home: Path, inside: bool = True) -> list[Finding]:
    """Sync clients that would upload the plaintext of ``folder``; init, clone and doctor
    share it. ``inside=False`` skips the walk through the folder (push only looks around it,
    which costs a few listdir calls, not a second scan)."""
    out: list[Finding] = []
    for parent in (folder, *folder.parents):
        client = _marker_hit(parent)
        if client:
            out.append(Finding("error", "plaintext-exposure",
                               f"{folder} is inside {parent}, a {client} folder: {client} "
                               "uploads the plaintext automatically",
                               f"move {folder} out of {parent}, or stop {client} syncing it"))
    for dirpath, dirnames, _files in os.walk(folder) if inside else ():
        client = _marker_hit(Path(dirpath))
        if client and Path(dirpath) != folder:
            out.append(Finding("error", "plaintext-exposure",
                               f"{folder} contains {dirpath}, a {client} folder",
                               f"remove {client} from {dirpath} or move it out of {folder}"))
            dirnames.clear()
    for client, root in _configured_sync_roots(user_home):
        root = root.expanduser()
        if root == folder or root in folder.parents or folder in root.parents:
            out.append(Finding("error", "plaintext-exposure",
                               f"{client}'s configuration syncs {root}, which overlaps {folder}",
                               f"exclude {folder} in {client}'s settings or move it"))
    if not out:
        out.append(Finding("ok", "plaintext-exposure",
                           f"{folder} is not inside or around another sync client's folder"))
    return out


_PUBLIC = re.compile(r"public-read|public-read-write|authenticated-read|anyoneWithLink|"
                     r"public", re.I)
_SHARE_KEYS = ("acl", "bucket_acl", "object_acl", "link_scope", "link_type", "public_link",
               "shared_with_me", "link_share", "share")


def check_sharing(binding: Binding) -> list[Finding]:
    remote = remotes.redact(binding.remote)
    options: dict[str, str] = {}
    try:
        spec = remotes.parse(binding.remote)
    except UsageError as exc:
        return [Finding("warning", "sharing", str(exc), "quote option values that hold ',' "
                        "or ':' with ' or \"")]
    if spec.name and not spec.name.startswith(":"):
        options = _rclone_config(spec.name)  # a configured remote, then its inline overrides
    options.update(spec.options)
    for env, value in os.environ.items():
        if env.startswith("RCLONE_") and env.endswith(("_ACL", "_BUCKET_ACL")):
            options[env.lower()] = value
    risky = {k: v for k, v in options.items()
             if any(k.endswith(s) for s in _SHARE_KEYS) and _PUBLIC.search(v)}
    if risky:
        detail = ", ".join(f"{k}={REDACTED if remotes.is_secret(k) else v}"
                           for k, v in sorted(risky.items()))
        return [Finding("warning", "sharing", f"remote {remote} makes objects public ({detail})",
                        "set acl=private and bucket_acl=private in the rclone config, and "
                        "turn off public links")]
    return [Finding("ok", "sharing", f"remote {remote} has no public-sharing setting")]


def _rclone_config(name: str) -> dict[str, str]:
    return remote_config(name)


def check_keys(generations: Iterable[tuple[int, float]], has_recovery: bool,
               policy_days: float, kit_removed: bool = False) -> list[Finding]:
    """``kit_removed``: the vault had a kit and has none now (it was revoked)."""
    out: list[Finding] = []
    newest = max(generations, default=None)
    if newest is not None and newest[1] > policy_days:
        out.append(Finding("warning", "key-age",
                           f"key generation {newest[0]} is {newest[1]:.0f} days old (policy "
                           f"{policy_days:.0f} days)", "run: cloudguard key rotate"))
    elif newest is not None:
        out.append(Finding("ok", "key-age", f"key generation {newest[0]} is "
                           f"{newest[1]:.0f} days old"))
    if not has_recovery and kit_removed:
        out.append(Finding("warning", "recovery-kit", "the vault's recovery kits were all "
                           "removed: losing this device loses the vault",
                           "run: cloudguard key export KIT to export a new one, and keep it "
                           "offline"))
    elif not has_recovery:
        out.append(Finding("warning", "recovery-kit", "no recovery kit was ever exported: "
                           "losing this device loses the vault",
                           "run: cloudguard key export KIT and keep it offline"))
    status, desc = keymod.keyring_status()
    if status == "insecure":
        out.append(Finding("error", "keyring", f"keyring backend {desc} stores secrets "
                           "unencrypted", "pip uninstall keyrings.alt"))
    return out


def check_permissions(bindings: list[Binding]) -> list[Finding]:
    out: list[Finding] = []
    root = home()
    paths = [root, *[b.dir for b in bindings], *[b.dir / "device.key" for b in bindings],
             *[b.dir / "index.db" for b in bindings]]
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            out.append(Finding("error", "permissions",
                               f"{path} is readable by other users (mode {mode:o})",
                               f"chmod {'700' if path.is_dir() else '600'} {path}"))
    if not out:
        out.append(Finding("ok", "permissions", f"{root} and its key files are private"))
    return out


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]


def policy_days() -> float:
    return settings().rotate_days


__all__ = ["Finding", "all_bindings", "check_exposure", "check_keys", "check_permissions",
           "check_sharing", "exposure", "findings_json", "policy_days"]
