"""The library API: the operations the CLI (and later the daemon and the mount) call.

Each opens a session (folder lock, index, remote listing, device key, key ring, merged
manifest with rollback checks), does its work and returns a typed result
(:mod:`cloudguard.results`) that the CLI prints or dumps as JSON. The code lives in
:mod:`cloudguard.session` and :mod:`cloudguard.ops`; this module is the one place a face
imports from.
"""

from __future__ import annotations

from .api import Vault
from .ops.common import Confirm
from .ops.doctor import doctor
from .ops.enrol import clone_vault, init_vault
from .ops.members import (
    device_approve,
    device_list,
    device_reject,
    device_remove,
    key_export,
    key_list,
)
from .ops.pull import pull
from .ops.push import mark, push, settings
from .ops.rotate import key_rotate
from .ops.status import open_reader, status
from .ops.verify import verify
from .session import UI, Session, session

__all__ = [
    "Confirm",
    "Session",
    "UI",
    "Vault",
    "clone_vault",
    "device_approve",
    "device_list",
    "device_reject",
    "device_remove",
    "doctor",
    "init_vault",
    "key_export",
    "key_list",
    "key_rotate",
    "mark",
    "open_reader",
    "pull",
    "push",
    "session",
    "settings",
    "status",
    "verify",
]
