"""Keys and devices: epochs, recovery kits, enrolment.
"""

from __future__ import annotations

import click

from .. import passphrase, vault
from ..errors import (
    CloudguardError,
)
from ..results import Request
from . import _emit, _interactive, _run, _ui, folder_option, json_option, main


@main.group()
def key() -> None:
    """Key epochs, recovery kits and generated passphrases."""


@key.command("rotate")
@folder_option
@click.option("--reencrypt", is_flag=True,
              help="Also re-encrypt all content with fresh keys and delete the old objects.")
@json_option
def key_rotate(folder: str | None, reencrypt: bool, as_json: bool) -> None:
    """Start a new key epoch (a signed commit with a new KEK)."""
    def go() -> None:
        result = vault.key_rotate(folder, reencrypt, _ui(as_json))
        _emit(result, as_json, lambda r: (
            f"Key epoch {r.epoch} is current"
            + (f"; finished the interrupted re-encryption ({r.files} files re-encrypted "
               "now, those done before kept)"
               if r.resumed else "")
            + (f"; {r.files} files re-encrypted" if r.reencrypted and not r.resumed
               else "") + "."), always=True)
    _run(go, as_json)


@key.command("list")
@folder_option
@json_option
def key_list(folder: str | None, as_json: bool) -> None:
    """Show key epochs with their age."""
    def go() -> None:
        result = vault.key_list(folder)
        _emit(result, as_json, lambda rows: "\n".join(
            f"{'*' if r.current else ' '} epoch {r.epoch} ({r.action})  created "
            f"{r.created}  age {r.age_days} days"
            + (f"  re-encryption UNFINISHED: {r.reencryption.files_left} files left; "
               f"{r.reencryption.fix}" if r.reencryption else "")
            for r in rows), always=True)
    _run(go, as_json)


def _show_kit_passphrase(words: str, kit: str) -> None:
    """On stderr, so that it reaches the person even when stdout goes to a file."""
    click.echo(f"\nThe passphrase for recovery kit {kit} (shown only this once; write it down "
               f"now and keep it apart from the kit):\n\n    {words}\n", err=True)


@key.command("export")
@click.argument("file")
@folder_option
@click.option("--name", default=None, help="A label for this kit.")
@click.option("--choose-passphrase", "choose", is_flag=True,
              help="Use your own passphrase (CLOUDGUARD_KIT_PASSPHRASE, "
                   "CLOUDGUARD_KIT_PASSPHRASE_FILE or a prompt) instead of a generated one; a "
                   "weak one is refused.")
@json_option
def key_export(file: str, folder: str | None, name: str | None, choose: bool,
               as_json: bool) -> None:
    """Write a passphrase-protected recovery kit to FILE.

    The passphrase is generated (8 words from the EFF large wordlist, 103 bits) and shown once;
    with --json it is the "passphrase" field.
    """
    def go() -> None:
        result = vault.key_export(folder, file, name, choose)
        if result.passphrase and not as_json:
            _show_kit_passphrase(result.passphrase, result.kit)
        _emit(result, as_json, lambda r: f"Recovery kit {r.id} written to {r.kit}. "
              "Keep it offline; it opens the vault with its passphrase.", always=True)
    _run(go, as_json)


@key.command("passphrase")
@json_option
def key_passphrase(as_json: bool) -> None:
    """Print a new generated passphrase, e.g. for the device key file.

    8 words drawn with the secrets module from the EFF large wordlist: 103 bits.
    """
    def go() -> None:
        _emit(passphrase.offered(), as_json, lambda r: r.passphrase, always=True)
    _run(go, as_json)


@main.group()
def device() -> None:
    """Enrolled devices and recovery slots."""


@device.command("list")
@folder_option
@json_option
def device_list(folder: str | None, as_json: bool) -> None:
    """Show each device and recovery slot."""
    def go() -> None:
        result = vault.device_list(folder)
        _emit(result, as_json, lambda r: "\n".join(
            [f"vault code: {r.vault_code}"]
            + [f"{m.id}  {m.kind:<8}  {m.name}" + ("  (this device)" if m.this_device else "")
               for m in r.members]
            + [f"{m.id}  removed   {m.name}" for m in r.removed]
            + [f"{p.id}  pending   {p.name}  fingerprint {p.fingerprint}  requested "
               f"{p.created}  (cloudguard device approve|reject FINGERPRINT)"
               if not p.problem else f"{p.id}  invalid   {p.problem}  (cloudguard "
               f"device reject {p.id})" for p in r.pending]), always=True)
    _run(go, as_json)


def _confirmer(yes: bool, verb: str, effect: str, hint: str) -> vault.Confirm:
    """Asks on the terminal with the request's name and fingerprint; without a terminal only
    --yes goes ahead, never a default."""
    def confirm(req: Request) -> bool:
        shown = (f"{req.name} (id {req.id}, fingerprint {req.fingerprint})"
                 if req.fingerprint else f"request {req.id}")
        if yes:
            return True
        if not _interactive():
            raise CloudguardError(f"not {verb}d {shown}: no terminal to confirm on; {hint}")
        click.echo(f"{verb.capitalize()} {shown}? {effect}", err=True)
        return click.confirm(f"{verb.capitalize()} it", default=False, err=True)
    return confirm


yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Do not ask for confirmation (needed without a terminal).")


@device.command("approve")
@click.argument("fingerprint")
@folder_option
@yes_option
@json_option
def device_approve(fingerprint: str, folder: str | None, yes: bool, as_json: bool) -> None:
    """Enrol the device whose request shows FINGERPRINT, after showing its name and asking."""
    def go() -> None:
        confirm = _confirmer(yes, "approve", "It will read and write every file in the vault; "
                             "check that the new device shows this fingerprint.",
                             "compare the fingerprint with the new device's, then pass --yes")
        result = vault.device_approve(folder, fingerprint, _ui(as_json), confirm)
        _emit(result, as_json, lambda r: f"Approved {r.name} ({r.approved}, fingerprint "
              f"{r.fingerprint}). The new device checks the vault code: {r.vault_code}",
              always=True)
    _run(go, as_json)


@device.command("reject")
@click.argument("fingerprint")
@folder_option
@yes_option
@json_option
def device_reject(fingerprint: str, folder: str | None, yes: bool, as_json: bool) -> None:
    """Delete the pending enrolment request with FINGERPRINT (or, for an invalid one, its id
    as device list shows it)."""
    def go() -> None:
        confirm = _confirmer(yes, "reject", "Its enrolment request is deleted from the remote.",
                             "pass --yes to delete the request")
        result = vault.device_reject(folder, fingerprint, confirm)
        _emit(result, as_json, lambda r: f"Rejected the enrolment request {r.rejected}"
              + (f" of {r.name}" if r.name else "") + ".", always=True)
    _run(go, as_json)


@device.command("remove")
@click.argument("device_id", metavar="ID")
@folder_option
@click.option("--reencrypt", is_flag=True, help="Also re-encrypt all content (real revocation).")
@json_option
def device_remove(device_id: str, folder: str | None, reencrypt: bool, as_json: bool) -> None:
    """Remove a device or recovery slot and rotate the key."""
    def go() -> None:
        result = vault.device_remove(folder, device_id, reencrypt, _ui(as_json))
        _emit(result, as_json, lambda r: f"Removed {r.removed}; key epoch "
              f"{r.epoch} is current.", always=True)
    _run(go, as_json)
