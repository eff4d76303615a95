"""What the operations return and ``--json`` prints: one typed Struct per command.

This package is the schema of the results (docs/cli-json.md explains each command's fields in
prose; tests/cli/test_results.py holds the two together, and decodes every command's real output
into its Struct with strict typing). The operations build these, the library API
(:mod:`cloudguard.api`, :mod:`cloudguard.vault`) returns them, and the faces read their
attributes: no result crosses a module as a loose dict any more. One module per area:
:mod:`.folder` (init, clone, push, pull, status, mark, settings), :mod:`.checks` (verify,
doctor, repair), :mod:`.keys` (keys and devices), :mod:`.history` (history and restore) and
:mod:`.machine` (the daemon, unlock, lock, the audit log, config); every name is here too.

Field names are the wire names, so a rename here is a change of the JSON every script reads.
:func:`to_json` writes the exact bytes the CLI always printed (see there why not
``msgspec.json.encode``). Pure data: imports nothing of cloudguard.
"""

from __future__ import annotations

from .base import Counts, Result, decode, to_json
from .checks import (
    Damage,
    DoctorResult,
    Finding,
    RepairResult,
    RepublishResult,
    Unrepairable,
    VerifyResult,
)
from .folder import (
    CloneResult,
    Exposure,
    InitResult,
    MarkResult,
    PullCounts,
    PullResult,
    PushCounts,
    PushResult,
    Reencryption,
    SettingsResult,
    StatusCounts,
    StatusResult,
)
from .history import (
    HistoryResult,
    HistoryVersion,
    LateMember,
    LateRemovals,
    LateRestoreResult,
    Removal,
    ReplacedSince,
    RestoreResult,
)
from .keys import (
    ApproveResult,
    DeviceListResult,
    KeyEpoch,
    KitResult,
    Member,
    PassphraseResult,
    RejectResult,
    RemovedMember,
    Request,
    RotateResult,
)
from .machine import (
    AuditRecord,
    ConfigResult,
    DaemonDone,
    DaemonFolder,
    DaemonStarted,
    DaemonStatus,
    DaemonStopped,
    DaemonView,
    EnvironmentSettings,
    FolderSettings,
    LockResult,
    LogVerifyResult,
    UnitResult,
    UnlockResult,
)

__all__ = [
    "ApproveResult", "AuditRecord", "CloneResult", "ConfigResult", "Counts", "DaemonDone",
    "DaemonFolder", "DaemonStarted", "DaemonStatus", "DaemonStopped", "DaemonView", "Damage",
    "DeviceListResult", "DoctorResult", "EnvironmentSettings", "Exposure", "Finding",
    "FolderSettings", "HistoryResult", "HistoryVersion", "InitResult", "KeyEpoch",
    "KitResult", "LateMember", "LateRemovals", "LateRestoreResult", "LockResult",
    "LogVerifyResult", "MarkResult", "Member", "PassphraseResult", "PullCounts", "PullResult",
    "PushCounts", "PushResult", "Reencryption", "RejectResult", "Removal", "RemovedMember",
    "RepairResult", "ReplacedSince", "Request", "RepublishResult", "Result", "RestoreResult",
    "RotateResult", "SettingsResult", "StatusCounts", "StatusResult", "UnitResult",
    "UnlockResult", "Unrepairable", "VerifyResult", "decode", "to_json",
]
