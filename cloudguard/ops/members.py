"""Members and kits: listing keys and devices, exporting a recovery kit,
approving, rejecting and removing devices.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from .. import chain, limits
from .. import format as fmt
from .. import keys as keymod
from .. import passphrase as passphrases
from ..chain import Secret
from ..errors import (
    CloudguardError,
    IntegrityError,
    UsageError,
    named,
)
from ..keys import now_iso
from ..results import (
    ApproveResult,
    DeviceListResult,
    KeyEpoch,
    KitResult,
    Member,
    RejectResult,
    RemovedMember,
    Request,
    RotateResult,
)
from ..session import UI, Session, session
from ..state import (
    find_binding,
)
from .common import Confirm, _audited, _log
from .doctor import _epoch
from .enrol import _add_member, _code
from .rotate import _rotate
from .status import unfinished


def key_list(folder: str | None) -> list[KeyEpoch]:
    """One row per KEK epoch on the head's ancestry: when it started, and whether current."""
    with session(folder) as s:
        now = time.time()
        out = []
        half = unfinished(s)
        for c in reversed(s.ring.view.ancestry(s.ring.head)):
            if c.action in ("add",):
                continue
            out.append(KeyEpoch(epoch=c.epoch, commit=c.id, action=c.action,
                                created=c.created,
                                age_days=round((now - _epoch(c.created)) / 86400, 1),
                                current=c.kek == s.ring.head.kek,
                                reencryption=half if half and half.epoch == c.epoch else None))
        return out


def key_export(folder: str | None, path: str, name: str | None = None,
               choose: bool = False) -> KitResult:
    """The kit's passphrase is generated (and returned, to be shown once) unless choose."""
    target = Path(path).expanduser()
    if target.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    with session(folder) as s:
        passphrase = (keymod.get_passphrase(
            f"the recovery kit {path}", confirm=True,
            hint="or leave out --choose-passphrase to get a generated one",
            var=keymod.KIT_PASSPHRASE_VAR)
            if choose else passphrases.generate())
        secret = Secret.generate()
        rid = keymod.new_member_id()
        commit = _add_member(s.transport, s.index, s.ring, rid, secret.public("kit"),
                             name or f"kit {target.name}")
        try:
            keymod.write_kit(target, s.binding.vault_id, rid, commit.id, secret, passphrase)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        s.index.set_meta("kit_exported", now_iso())
        _log(s, "key-export", kit_id=rid)
        return KitResult(kit=str(target), id=rid, passphrase=None if choose else passphrase)


def device_list(folder: str | None) -> DeviceListResult:
    with session(folder) as s:
        members = [Member(id=rid, kind=keys.kind, name=s.ring.name_of(rid),
                          this_device=rid == s.binding.device)
                   for rid, keys in sorted(s.ring.view.members.items())]
        s.ring.learn_names(s.ring.view.removed)
        removed = [RemovedMember(id=rid, name=s.ring.name_of(rid), cutoff=cut.seq)
                   for rid, cut in sorted(s.ring.view.removed.items())]
        return DeviceListResult(vault=s.binding.vault_id,
                                vault_code=fmt.vault_code(s.binding.vault_id),
                                members=members, removed=removed, pending=_pending(s))


def _pending(s: Session) -> list[Request]:
    """Enrolment requests waiting on the remote; one that does not verify, or is for another
    vault or under another name, is listed with its problem (never approvable)."""
    out: list[Request] = []
    for name in sorted(n for n in s.listing if n.startswith(keymod.ENROLL_PREFIX)):
        rid = name[len(keymod.ENROLL_PREFIX):]
        try:
            req = chain.read_request(s.transport.get_bytes(name, limits.MAX_ENROLMENT))
        except IntegrityError:
            out.append(Request(id=rid, problem=f"{name} is not a valid enrolment request"))
            continue
        out.append(Request(id=rid, name=req.name, fingerprint=req.fingerprint,
                           created=req.created,
                           problem=f"{name} is for another vault or under another name"
                           if req.vault != s.binding.vault_id or req.rid != rid else None))
    return out


def device_reject(folder: str | None, wanted: str, confirm: Confirm | None = None
                  ) -> RejectResult:
    """Delete a pending enrolment request, chosen by its fingerprint (or, for one that does not
    verify and so has none, its id), once ``confirm`` agrees."""
    with session(folder) as s:
        for row in _pending(s):
            if wanted.strip().lower() == row.id or (
                    row.fingerprint and _code(row.fingerprint) == _code(wanted)):
                if confirm is not None and not confirm(row):
                    raise CloudguardError(f"not rejected: enrolment request {row.id} stays")
                s.transport.delete([keymod.ENROLL_PREFIX + row.id])
                _log(s, "device-reject", rejected=row.id)
                return RejectResult(rejected=row.id, name=row.name, fingerprint=row.fingerprint)
        raise UsageError(f"no pending enrolment request has fingerprint or id {wanted} (see "
                         "cloudguard device list)")


def device_approve(folder: str | None, fp: str, ui: UI | None = None,
                   confirm: Confirm | None = None) -> ApproveResult:
    """``confirm`` sees the verified request (name, fingerprint, id) before anything is
    written; the CLI asks the person, or refuses without a terminal unless --yes."""
    wanted = _code(fp)
    with session(folder, ui) as s:
        refused: list[str] = []  # not a request at all: tampering, reported if nothing matches
        for name in sorted(n for n in s.listing if n.startswith(keymod.ENROLL_PREFIX)):
            try:
                req = chain.read_request(s.transport.get_bytes(name, limits.MAX_ENROLMENT))
            except IntegrityError as exc:
                s.ui.warn(f"ignored malformed enrolment request {name}")
                refused.append(str(named(name, exc)) if str(exc) else f"{name}: malformed")
                continue
            if _code(req.fingerprint) != wanted:
                continue
            if req.vault != s.binding.vault_id or name != keymod.ENROLL_PREFIX + req.rid:
                raise IntegrityError(f"{name}: the enrolment request with fingerprint {fp} is "
                                     "for another vault or under another name; refused")
            shown = Request(id=req.rid, name=req.name, fingerprint=req.fingerprint,
                            created=req.created)
            if confirm is not None and not confirm(shown):
                raise CloudguardError(f"not approved: {req.name} ({req.fingerprint}) stays "
                                      "pending; cloudguard device reject removes the request")
            _add_member(s.transport, s.index, s.ring, req.rid, req.keys, req.name)
            s.transport.delete([name])
            _log(s, "device-approve", approved=req.rid)
            return ApproveResult(approved=req.rid, name=req.name, fingerprint=req.fingerprint,
                                 vault_code=fmt.vault_code(s.binding.vault_id))
        if refused:
            raise IntegrityError(f"no valid pending enrolment request has fingerprint {fp}; "
                                 "refused: " + "; ".join(refused))
        raise UsageError(f"no pending enrolment request has fingerprint {fp}")


def device_remove(folder: str | None, rid: str, reencrypt: bool = False,
                  ui: UI | None = None) -> RotateResult:
    if rid == find_binding(folder).device:
        raise UsageError("a device cannot remove itself (it would know the next key); "
                         "remove it from another device")
    with _audited("device-remove", folder, every=True), \
            session(folder, ui, tolerate=frozenset({rid})) as s:
        if rid not in s.ring.head.members:
            raise UsageError(f"no device or recovery slot has id {rid} (see cloudguard device "
                             "list)")
        if len(s.ring.head.members) == 1:
            raise UsageError("refusing to remove the last member: nobody could sign again")
        result = _rotate(s, reencrypt, remove=rid)
        _log(s, "device-remove", removed=rid, reencrypt=reencrypt)
        return msgspec.convert(result, RotateResult)
