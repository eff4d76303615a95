"""The checks: verify, doctor and repair."""

from __future__ import annotations

from typing import Literal

from .base import Result


class VerifyResult(Result):
    """``cloudguard verify``: a failure raises (exit 3), so ``ok`` is always true here."""

    files: int
    objects: int
    read_data: bool  # every blob authenticated (always on a local remote: same cost)
    hash_checked: int  # objects whose backend MD5 was compared
    authenticated: int
    unreferenced: list[str]  # objects no manifest entry names (maintenance collects them)
    checked: Literal["data", "md5", "md5 and sizes", "sizes"]
    ok: bool


class Finding(Result):
    level: Literal["error", "warning", "ok"]
    check: str
    message: str
    fix: str


class DoctorResult(Result):
    """``cloudguard doctor``: any error finding makes the exit code 1."""

    ok: bool
    errors: int
    warnings: int
    findings: list[Finding]


class Damage(Result):
    object: str  # the data object's id (its name without ``data/``)
    problem: str  # missing, the wrong size, altered, or why it did not authenticate


class Unrepairable(Result):
    """A version with no good copy anywhere: neither the folder nor its own blob."""

    path: str
    version: str
    current: bool  # the current version, not one of the history
    object: str
    problem: str
    reason: str


class RepairResult(Result):
    """``cloudguard repair``: anything ``unrepairable`` makes ``ok`` false and exit 3."""

    files: int
    damaged_objects: int
    damaged: list[Damage]
    repaired: list[str]  # re-encrypted from matching local files into new objects
    moved: list[str]  # copied out of a damaged object: their own blob still authenticates
    unrepairable: list[Unrepairable]
    ok: bool


class RepublishResult(Result):
    """``cloudguard repair --republish``: this device's verified state over a rolled-back or
    forked remote manifest (nothing written when it is neither)."""

    republished: bool
    reason: str | None  # the rollback or fork found
    snapshot: str | None
    files: int
    message: str


__all__ = [
    "Damage", "DoctorResult", "Finding", "RepairResult", "RepublishResult", "Unrepairable",
    "VerifyResult",
]
