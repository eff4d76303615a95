"""Keys and members: key rotate and list, recovery kits, passphrases, and the devices of a
vault (list, approve, reject, remove)."""

from __future__ import annotations

from .base import Result
from .folder import Reencryption


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


class KitResult(Result):
    """``key export``: the kit written and its member id."""

    kit: str  # where it was written
    id: str  # its member id, for ``device remove`` once the kit is lost
    passphrase: str | None  # the generated one, shown only this once; None when chosen


class PassphraseResult(Result):
    """``key passphrase``: a generated passphrase, e.g. for the device key file."""

    passphrase: str
    bits: float  # its entropy, rounded to a tenth


class Member(Result):
    """A device or recovery kit that holds the vault's key."""

    id: str
    kind: str  # device or kit
    name: str
    this_device: bool


class RemovedMember(Result):
    id: str
    name: str
    cutoff: int  # its writes past this sequence number are late (docs/format.md)


class Request(Result):
    """An enrolment request on the remote; what ``device approve`` and ``reject`` confirm."""

    id: str
    name: str | None = None  # None (and no fingerprint): it does not verify
    fingerprint: str | None = None
    created: str | None = None
    problem: str | None = None  # why it can never be approved; None for a valid request


class DeviceListResult(Result):
    """``cloudguard device list``."""

    vault: str
    vault_code: str
    members: list[Member]
    removed: list[RemovedMember]
    pending: list[Request]


class ApproveResult(Result):
    """``cloudguard device approve``: the new device checks ``vault_code``."""

    approved: str  # the new member's id
    name: str
    fingerprint: str
    vault_code: str


class RejectResult(Result):
    """``cloudguard device reject``: the request deleted (name and fingerprint None for one
    that did not verify)."""

    rejected: str
    name: str | None
    fingerprint: str | None


__all__ = [
    "ApproveResult", "DeviceListResult", "KeyEpoch", "KitResult", "Member",
    "PassphraseResult", "RejectResult", "RemovedMember", "Request", "RotateResult",
]
