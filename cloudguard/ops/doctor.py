"""doctor: what is wrong with this device's set-up, and with --remote what the
remote holds that no manifest names. The local checks are in
:mod:`cloudguard.doctor`.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

import msgspec

from .. import format as fmt
from .. import remotes, sync
from ..errors import (
    CloudguardError,
    GuardError,
)
from ..layout import _KNOWN
from ..results import DoctorResult
from ..results import Finding as FindingRow
from ..session import Session, session
from ..state import (
    check_marker,
    find_binding,
)
from .common import _binding_id, _log
from .status import exposure, unfinished


def doctor(folder: str | None, check_remote: bool = False) -> DoctorResult:
    """Run every check on one bound folder (or all of them); ``ok`` is False on any error."""
    from .. import doctor as checks

    if folder is not None or _binding_id(None) is not None:
        bindings = [find_binding(folder)]
    else:
        bindings = checks.all_bindings()
    findings: list[checks.Finding] = []
    if not bindings:
        findings.append(checks.Finding("warning", "folders", "no folder is bound on this "
                                       "machine", "run: cloudguard init or clone"))
    findings += checks.check_permissions(bindings)
    for binding in bindings:
        findings += checks.check_exposure(binding, Path.home())
        findings += checks.check_sharing(binding)
        try:
            check_marker(binding)
            findings.append(checks.Finding("ok", "folder-marker",
                                           f"{binding.folder} carries its marker"))
        except GuardError as exc:
            findings.append(checks.Finding(
                "error", "folder-marker", str(exc),
                f"mount the disk or move the folder back; or: cloudguard mark -C "
                f"{binding.folder}"))
        try:
            with session(binding.folder) as s:
                now = time.time()
                ages = [(c.epoch, (now - _epoch(c.created)) / 86400)
                        for c in s.ring.view.ancestry(s.ring.head) if c.action != "add"]
                recovery = any(k.kind == "kit" for k in s.ring.head.members.values())
                had_kit = any(k.kind == "kit" for c in s.ring.view.commits.values()
                              for k in c.members.values())
                for row in exposure(s):
                    findings.append(checks.Finding(
                        "warning", "exposure", f"{row.files} files were readable by removed "
                        f"member {row.name} ({row.removed}) and still are to its copies",
                        "cloudguard key rotate --reencrypt gives them new keys"))
                half = unfinished(s)
                if half is not None:
                    findings.append(checks.Finding(
                        "error", "reencryption", f"the re-encryption to key epoch "
                        f"{half.epoch} started {half.started} was interrupted: "
                        f"{half.files_left} files are still under older keys"
                        + (f" that removed member {half.removed} could read"
                           if half.removed else ""), half.fix))
                findings += checks.check_keys(ages, recovery, checks.policy_days(),
                                              kit_removed=had_kit and not recovery)
                if check_remote:
                    findings += _doctor_remote(s)
                _log(s, "doctor", remote=check_remote,
                     errors=sum(1 for f in findings if f.level == "error"))
        except CloudguardError as exc:
            level = "error"
            findings.append(checks.Finding(level, "vault", f"{binding.folder}: {exc}",
                                           "see the message; cloudguard verify for details"))
    errors = [f for f in findings if f.level == "error"]
    return DoctorResult(ok=not errors, errors=len(errors),
                        warnings=sum(1 for f in findings if f.level == "warning"),
                        findings=msgspec.convert(checks.findings_json(findings),
                                                 list[FindingRow]))


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _doctor_remote(s: Session) -> list[Any]:
    from ..doctor import Finding

    out: list[Finding] = []
    live = {sync.DATA_PREFIX + o for o in s.state.live_objects()}
    for name in sorted(s.listing):
        if not _KNOWN.match(name):
            out.append(Finding("error", "remote-stray",
                               f"{remotes.redact(s.binding.remote)}/{name} is not a cloudguard "
                               "object (plaintext uploaded by another tool?)",
                               f"inspect and delete it: rclone deletefile "
                               f"'{remotes.redact(s.binding.remote)}/{name}'"))
            continue
        if name.startswith(sync.DATA_PREFIX):
            with s.transport.reader(name, count=4) as stream:
                magic = stream.read(4)
            if magic not in (fmt.BLOB_MAGIC, fmt.PACK_MAGIC):
                out.append(Finding("error", "remote-stray", f"{name} does not hold cloudguard "
                                   "ciphertext", f"inspect and delete {name}"))
            elif name not in live:
                out.append(Finding("warning", "remote-unreferenced", f"{name} is referenced by "
                                   "no manifest (a crashed or running push; collected after "
                                   "the grace period)", "cloudguard push collects it later"))
    if not out:
        out.append(Finding("ok", "remote", f"all {len(s.listing)} objects on the remote are "
                           "cloudguard ciphertext referenced by the manifest"))
    return out
