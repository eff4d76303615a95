"""The command line: parses arguments, calls :mod:`cloudguard.vault`, prints results.

Exit codes: 0 ok, 1 error, 2 usage, 3 integrity failure. Progress bars and summaries appear
only on a terminal; ``--json`` prints one JSON document on stdout for scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from . import __version__, audit, passphrase, vault
from .errors import (
    CloudguardError,
    FileChangedError,
    GuardError,
    IntegrityError,
    KeyStoreError,
    TransportError,
    UsageError,
)
from .ops import history


def _tty() -> bool:
    return sys.stdout.isatty()


def _interactive() -> bool:
    """Whether a question can be asked: stdin is a terminal."""
    return sys.stdin.isatty()


def _warn(message: str) -> None:
    click.echo(f"cloudguard: warning: {message}", err=True)


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    if not _tty() or total <= 0:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _confirm(question: str) -> bool:
    return click.confirm(f"cloudguard: {question}", default=False, err=True)


def _ui(as_json: bool) -> vault.UI:
    if as_json:
        return vault.UI(warn=_warn)
    # a question only when someone can answer it: stdin and stdout on a terminal
    ask = _confirm if sys.stdin.isatty() and _tty() else None
    return vault.UI(warn=_warn, progress=_progress, confirm=ask)


def _unreadable(result: dict[str, Any]) -> None:
    """Exit 1 once everything else is done if some paths could not be read."""
    paths = result.get("unreadable") or []
    if paths:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        click.echo(f"cloudguard: error: could not read {len(paths)} path(s), kept as last "
                   f"synced: {shown}", err=True)
        sys.exit(1)


def _emit(result: Any, as_json: bool, human: Callable[[Any], str] | None = None,
          always: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    elif human is not None and (always or _tty()):
        text = human(result)
        if text:
            click.echo(text)


def _path_errors(result: dict[str, Any]) -> None:
    """A pull that landed everything else but some paths: one line each (and the unreadable
    ones), then exit 1."""
    for line in result.get("errors", []):
        click.echo(f"cloudguard: error: {line}", err=True)
    _unreadable(result)
    if result.get("errors"):
        sys.exit(1)


# The "kind" of a JSON error, most specific class first (docs/cli-json.md lists them).
_KINDS: tuple[tuple[type[CloudguardError], str], ...] = (
    (IntegrityError, "integrity"), (UsageError, "usage"), (TransportError, "transport"),
    (KeyStoreError, "keystore"), (FileChangedError, "file-changed"))


def _fail(code: int, message: str, kind: str, as_json: bool, prefix: str = "error: ",
          details: dict[str, object] | None = None) -> NoReturn:
    """The one-line error on stderr; with --json also ``{"error": {...}}`` on stdout, so a
    script that reads stdout never gets nothing. A guard's refusal (kind ``mass-delete``,
    ``marker-missing``, ...) adds its counts and folder there."""
    click.echo(f"cloudguard: {prefix}{message}", err=True)
    if as_json:
        click.echo(json.dumps({"error": {**(details or {}), "code": code, "message": message,
                                         "kind": kind}}, indent=2, sort_keys=True))
    sys.exit(code)


def _run(fn: Callable[[], None], as_json: bool = False) -> None:
    try:
        fn()
    except GuardError as exc:
        _fail(exc.exit_code, str(exc), exc.code, as_json, details=dict(exc.details))
    except CloudguardError as exc:
        kind = next((name for cls, name in _KINDS if isinstance(exc, cls)), "error")
        _fail(exc.exit_code, str(exc), kind, as_json)
    except KeyboardInterrupt:
        _fail(1, "interrupted; nothing partial was left behind", "interrupted", as_json,
              prefix="")


class _Main(click.Group):
    """Usage errors that click finds while parsing (a missing argument, an unknown option)
    follow the same rule: with --json, an error object on stdout too."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            exc.show()
            if "--json" in argv:
                click.echo(json.dumps({"error": {"code": exc.exit_code,
                                                 "message": exc.format_message(),
                                                 "kind": "usage" if isinstance(
                                                     exc, click.UsageError) else "error"}},
                                      indent=2, sort_keys=True))
            sys.exit(exc.exit_code)
        except click.Abort:
            _fail(1, "aborted", "interrupted", "--json" in argv, prefix="")
        sys.exit(code if isinstance(code, int) else 0)


def _things(counts: dict[str, int], none: str = "nothing") -> str:
    """'3 files, 40 folders and 2 links': folders and links are never counted as files."""
    words = [(counts.get("files", 0), "file"), (counts.get("folders", 0), "folder"),
             (counts.get("links", 0), "link")]
    parts = [f"{n:,} {w}{'' if n == 1 else 's'}" for n, w in words if n]
    if not parts:
        return none
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(paths: list[str], top: int = 3) -> str:
    """Where most of the paths are: the top-level folders holding the most of them."""
    groups: dict[str, int] = {}
    nested: set[str] = set()
    for path in paths:
        head, sep, _rest = path.partition("/")
        groups[head] = groups.get(head, 0) + 1
        if sep:
            nested.add(head)
    ranked = sorted(((k + "/" if k in nested else k, n) for k, n in groups.items()),
                    key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} {n:,}" for k, n in ranked[:top])
    return shown + (f", {len(ranked) - top} more places" if len(ranked) > top else "")


def _copies(names: list[str], top: int = 3) -> str:
    shown = ", ".join(names[:top]) + (", ..." if len(names) > top else "")
    return f"{len(names)} conflict cop{'y' if len(names) == 1 else 'ies'} ({shown})"


folder_option = click.option("--folder", "-C", metavar="F", default=None,
                             help="The bound folder (default: the one containing the current "
                                  "directory).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


allow_exposed_option = click.option(
    "--allow-exposed", is_flag=True,
    help="Accept a folder inside (or around) another sync client's folder, which uploads its "
         "plaintext (cloudguard doctor shows the finding).")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cloudguard")
def main() -> None:
    """Encrypt documents before they reach the cloud.

    The remote (any rclone remote) only ever sees random object names holding ciphertext.
    """


@main.command()
@click.argument("folder")
@click.option("--remote", required=True, metavar="REMOTE",
              help="rclone remote: name:path, :backend,opts:path, or a local path.")
@click.option("--padding", type=click.Choice(["padme", "none"]), default="padme",
              show_default=True, help="Hide exact file sizes by padding.")
@click.option("--name", default=None, help="A name for this device (default: hostname).")
@allow_exposed_option
@json_option
def init(folder: str, remote: str, padding: str, name: str | None, allow_exposed: bool,
         as_json: bool) -> None:
    """Create a new vault on REMOTE for FOLDER."""
    def go() -> None:
        result = vault.init_vault(folder, remote, padding, name, allow_exposed)
        for message in result["exposed"]:
            _warn(f"{message} (allowed by --allow-exposed)")
        _emit(result, as_json, lambda r: f"Created vault {r['vault']} on {r['remote']} for "
              f"{r['folder']} (device key in {r['keystore']}).\nVault code (a new device "
              f"checks it): {r['vault_code']}\nNext: cloudguard push, and "
              "cloudguard key export KIT to keep a recovery kit in a safe place.", always=True)
    _run(go, as_json)


@main.command()
@click.argument("remote")
@click.argument("folder")
@click.option("--key-file", metavar="KIT", default=None,
              help="Enrol this device with a recovery kit instead of an approval.")
@click.option("--name", default=None, help="A name for this device (default: hostname).")
@click.option("--vault-code", default=None, metavar="CODE",
              help="The vault code shown by 'cloudguard device list' on an enrolled device "
                   "(needed without --key-file; compared in full).")
@allow_exposed_option
@json_option
def clone(remote: str, folder: str, key_file: str | None, name: str | None,
          vault_code: str | None, allow_exposed: bool, as_json: bool) -> None:
    """Bind FOLDER on this device to the existing vault at REMOTE."""
    def go() -> None:
        code = vault_code
        if code is None and key_file is None and _tty() and not as_json:
            code = click.prompt("Vault code (cloudguard device list, on an enrolled device)")
        result = vault.clone_vault(remote, folder, key_file, name, _ui(as_json), code,
                                   allow_exposed)
        for message in result["exposed"]:
            _warn(f"{message} (allowed by --allow-exposed)")

        def human(r: dict[str, Any]) -> str:
            if not r["enrolled"]:
                return (f"Enrolment requested. Fingerprint: {r['fingerprint']}\nOn an enrolled "
                        f"device run: cloudguard device approve {r['fingerprint']}\nThen here: "
                        "cloudguard pull")
            c = r["counts"]
            made = _things(c["made"], "")
            text = (f"Cloned into {r['folder']}: {_things(c['downloaded'], '0 files')}"
                    + (f", {made}" if made else "") + ".")
            if r["conflicts"]:
                text += (f"\nThe folder already held other versions of some paths: made "
                         f"{_copies(r['conflicts'])} of the vault's versions beside them; "
                         "compare, keep one, then cloudguard push.")
            return text
        _emit(result, as_json, human, always=True)
        _path_errors(result)
    _run(go, as_json)


@main.command()
@folder_option
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded.")
@click.option("--allow-mass-delete", is_flag=True,
              help="Delete even when that is more than half of the files (or more than "
                   "1,000); without this, push asks on a terminal and refuses otherwise.")
@json_option
def push(folder: str | None, dry_run: bool, allow_mass_delete: bool, as_json: bool) -> None:
    """Encrypt and upload local changes.

    Refuses (exit 1, nothing changed) when the folder's .cloudguard marker is missing, and
    when it would delete many files (see --allow-mass-delete). A path that cannot be read
    keeps its last synced state; push then exits 1 after the rest is up.
    """
    def go() -> None:
        result = vault.push(folder, dry_run, _ui(as_json), allow_mass_delete)
        c = result["counts"]
        _emit(result, as_json, lambda r: (
            f"{'Would upload' if r['dry_run'] else 'Uploaded'} "
            f"{_things(c['uploaded'], '0 files')}; updated {_things(c['updated'])}; deleted "
            f"{_things(c['deleted'])}"
            + (f"; made {_copies(r['conflicts'])}" if r["conflicts"] else "") + "."),
            always=dry_run)
        _unreadable(result)
    _run(go, as_json)


@main.command()
@folder_option
@json_option
def pull(folder: str | None, as_json: bool) -> None:
    """Download and decrypt remote changes (refuses without the folder's marker)."""
    def go() -> None:
        result = vault.pull(folder, _ui(as_json))
        c = result["counts"]
        _emit(result, as_json, lambda r: (
            f"Downloaded {_things(c['downloaded'], '0 files')}; made {_things(c['made'])}; "
            + (f"updated the mode or mtime of {len(r['updated'])}; " if r["updated"] else "")
            + f"deleted {_things(c['deleted'])}"
            + (f"; {_copies(r['conflicts'])}" if r["conflicts"] else "") + "."))
        _path_errors(result)
    _run(go, as_json)


@main.command()
@folder_option
@json_option
def mark(folder: str | None, as_json: bool) -> None:
    """Mark the bound folder, as it is now, as the right one.

    push and pull refuse a folder whose .cloudguard marker is missing (a disk not mounted, a
    folder moved away and replaced). Run this only when the folder really is the one: the
    next push then deletes on the remote whatever is missing here.
    """
    def go() -> None:
        result = vault.mark(folder)
        _emit(result, as_json, lambda r: f"Marked {r['folder']}.", always=True)
    _run(go, as_json)


@main.command()
@folder_option
@click.option("--verbose", "-v", is_flag=True, help="List every path to push and pull.")
@json_option
def status(folder: str | None, verbose: bool, as_json: bool) -> None:
    """Show what push and pull would do: counts by default, the paths with --verbose."""
    def go() -> None:
        result = vault.status(folder, _ui(as_json))

        def side(label: str, key: str, deletes: str) -> list[str]:
            paths = result[key]
            if not paths:
                return []
            if verbose:
                return [f"  {label}: {p}" for p in paths]
            gone = sum(result["counts"][deletes].values())
            return [f"  {label}: {_things(result['counts'][key])}"
                    + (f" ({gone:,} of them deletions)" if gone else "")
                    + f", under {_where(paths)}"]

        def human(r: dict[str, Any]) -> str:
            lines = [f"folder {r['folder']} -> {r['remote']} (key epoch {r['epoch']},"
                     f" {r['files']} files)"]
            lines += [f"  exposed: {e['files']} files were readable by removed member "
                      f"{e['name']} (key rotate --reencrypt renews their keys)"
                      for e in r["exposed"]]
            half = r.get("reencryption")
            if half:
                lines.append(f"  unfinished re-encryption to key epoch {half['epoch']}: "
                             f"{half['files_left']} files"
                             + (f" and {half['kept_versions_left']} kept versions"
                                if half["kept_versions_left"] else "")
                             + f" still under older keys; {half['fix']}")
            lines += (side("to push", "to_push", "push_deletes")
                      + side("to pull", "to_pull", "pull_deletes"))
            lines += [f"  unreadable, kept as last synced: {p}" for p in r["unreadable"]]
            if r["conflicts"]:
                lines.append(f"  pull would make {_copies(r['conflicts'])}")
            if not r["to_push"] and not r["to_pull"]:
                lines.append("  in sync")
            elif not verbose:
                lines.append("  (cloudguard status --verbose lists the paths)")
            return "\n".join(lines)
        _emit(result, as_json, human, always=True)
    _run(go, as_json)


@main.command()
@folder_option
@click.option("--read-data", is_flag=True, help="Download and authenticate every chunk.")
@json_option
def verify(folder: str | None, read_data: bool, as_json: bool) -> None:
    """Check the remote against the manifest."""
    def go() -> None:
        result = vault.verify(folder, read_data, _ui(as_json))
        notes = {
            "data": "every chunk downloaded and authenticated",
            "md5": "sizes and the backend's MD5 of every object; contents not downloaded "
                   "(verify --read-data authenticates them)",
            "md5 and sizes": f"the backend's MD5 of {result['hash_checked']} objects, sizes "
                             "only of the rest (run verify --read-data)",
            "sizes": "sizes only: this backend keeps no hashes; run verify --read-data"}
        _emit(result, as_json, lambda r: (
            f"OK: {r['files']} files in {r['objects']} objects"
            + (f", {r['authenticated']} authenticated" if r["read_data"] else "")
            + (f"; {len(r['unreferenced'])} unreferenced objects" if r["unreferenced"] else "")
            + f". Checked: {notes[r['checked']]}."),
            always=True)
    _run(go, as_json)


@main.command("repair")
@folder_option
@click.option("--republish", is_flag=True,
              help="After a detected rollback or fork of the manifest: publish this device's "
                   "verified state as a new snapshot (asks first; audited).")
@click.option("--yes", is_flag=True, help="Confirm --republish without a prompt.")
@json_option
def repair_cmd(folder: str | None, republish: bool, yes: bool, as_json: bool) -> None:
    """Re-upload what verify --read-data finds lost or damaged, from local files that still
    match the manifest, as new objects; report what cannot be repaired."""
    def go() -> None:
        from .ops import repair

        if republish:
            def confirm(question: str) -> bool:
                if yes:
                    return True
                if not _interactive():
                    raise UsageError("repair --republish needs your confirmation: run it on a "
                                     "terminal, or add --yes")
                return click.confirm(question, default=False, err=True)
            done = repair.republish(folder, confirm, "--yes" if yes else "prompt",
                                    _ui(as_json))
            _emit(done, as_json, lambda r: r["message"] + ".", always=True)
            return
        if yes:
            raise UsageError("--yes only confirms --republish")
        result = repair.repair(folder, _ui(as_json))
        _emit(result, as_json, lambda r: (
            f"OK: {r['files']} files checked, every object authenticated; nothing to repair."
            if not r["damaged_objects"] else
            f"Repaired {len(r['repaired'])} files from local copies and moved "
            f"{len(r['moved'])} intact ones out of {r['damaged_objects']} damaged objects."),
            always=True)
        for row in result["unrepairable"]:
            click.echo(f"cloudguard: error: {row['path']}"
                       + ("" if row["current"] else f" (history version {row['version']})")
                       + f": object {row['object']} is {row['problem']}, and it cannot be "
                       f"repaired: {row['reason']}", err=True)
        if not result["ok"]:
            sys.exit(3)
    _run(go, as_json)


@main.command()
@folder_option
@click.option("--remote", "check_remote", is_flag=True,
              help="Also list remote objects that are not cloudguard ciphertext or that no "
                   "manifest references.")
@json_option
def doctor(folder: str | None, check_remote: bool, as_json: bool) -> None:
    """Check for plaintext exposure, public sharing, old keys and loose permissions."""
    def go() -> None:
        result = vault.doctor(folder, check_remote)

        def human(r: dict[str, Any]) -> str:
            marks = {"error": "ERROR", "warning": "warn ", "ok": "ok   "}
            lines = []
            for f in r["findings"]:
                lines.append(f"{marks[f['level']]} {f['check']}: {f['message']}")
                if f["fix"] and f["level"] != "ok":
                    lines.append(f"      fix: {f['fix']}")
            return "\n".join(lines)
        _emit(result, as_json, human, always=True)
        if not result["ok"]:
            sys.exit(1)
    _run(go, as_json)


@main.command("lock")
@click.option("--keyring", "lock_keyring", is_flag=True,
              help="Also lock the OS keyring (the next use asks for your login password).")
@json_option
def lock_cmd(lock_keyring: bool, as_json: bool) -> None:
    """Stop the daemon, unmount every mount and drop cached keys."""
    def go() -> None:
        from . import lock

        result = lock.lock(lock_keyring)
        audit.record("lock", stopped=len(result["stopped"]),
                     unmounted=len(result["unmounted"]), keyring=result["keyring_locked"])
        _emit(result, as_json, lambda r: (
            f"Locked: stopped {len(r['stopped'])} processes, unmounted "
            f"{len(r['unmounted'])} folders" + (", keyring locked" if r["keyring_locked"]
                                                 else "") + "."), always=True)
        for problem in result["problems"]:
            _warn(problem)
        if result["problems"]:
            sys.exit(1)
    _run(go, as_json)


@main.command("log")
@click.option("--verify", "check", is_flag=True, help="Check the hash chain; exit 3 if broken.")
@json_option
def log_cmd(check: bool, as_json: bool) -> None:
    """Print the local audit log (push, pull, rotate, ... events; never content or keys)."""
    def go() -> None:
        if check:
            count = audit.verify()
            _emit({"ok": True, "records": count}, as_json,
                  lambda r: f"Audit log intact: {r['records']} records.", always=True)
            return
        records = audit.read()

        def human(rows: list[dict[str, Any]]) -> str:
            lines = []
            for r in rows:
                extra = {k: v for k, v in r.items()
                         if k not in ("seq", "time", "event", "prev", "hash")}
                details = " ".join(f"{k}={v}" for k, v in sorted(extra.items())
                                   if not isinstance(v, list))
                lines.append(f"{r.get('seq'):>5} {r.get('time')} {r.get('event'):<15} {details}")
            return "\n".join(lines)
        _emit(records, as_json, human, always=True)
    _run(go, as_json)


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
            f"Key epoch {r['epoch']} is current"
            + (f"; finished the interrupted re-encryption ({r['files']} files re-encrypted "
               "now, those done before kept)"
               if r.get("resumed") else "")
            + (f"; {r['files']} files re-encrypted" if r["reencrypted"] and not r.get("resumed")
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
            f"{'*' if r['current'] else ' '} epoch {r['epoch']} ({r['action']})  created "
            f"{r['created']}  age {r['age_days']} days"
            + (f"  re-encryption UNFINISHED: {r['reencryption']['files_left']} files left; "
               f"{r['reencryption']['fix']}" if r["reencryption"] else "")
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
        if result["passphrase"] and not as_json:
            _show_kit_passphrase(result["passphrase"], result["kit"])
        _emit(result, as_json, lambda r: f"Recovery kit {r['id']} written to {r['kit']}. "
              "Keep it offline; it opens the vault with its passphrase.", always=True)
    _run(go, as_json)


@key.command("passphrase")
@json_option
def key_passphrase(as_json: bool) -> None:
    """Print a new generated passphrase, e.g. for the device key file.

    8 words drawn with the secrets module from the EFF large wordlist: 103 bits.
    """
    def go() -> None:
        words = passphrase.generate()
        _emit({"passphrase": words, "bits": round(passphrase.entropy_bits(), 1)}, as_json,
              lambda r: str(r["passphrase"]), always=True)
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
            [f"vault code: {r['vault_code']}"]
            + [f"{m['id']}  {m['kind']:<8}  {m['name']}"
               + ("  (this device)" if m["this_device"] else "") for m in r["members"]]
            + [f"{m['id']}  removed   {m['name']}" for m in r["removed"]]
            + [f"{p['id']}  pending   {p['name']}  fingerprint {p['fingerprint']}  requested "
               f"{p['created']}  (cloudguard device approve|reject FINGERPRINT)"
               if not p["problem"] else f"{p['id']}  invalid   {p['problem']}  (cloudguard "
               f"device reject {p['id']})" for p in r["pending"]]), always=True)
    _run(go, as_json)


def _confirmer(yes: bool, verb: str, effect: str, hint: str) -> vault.Confirm:
    """Asks on the terminal with the request's name and fingerprint; without a terminal only
    --yes goes ahead, never a default."""
    def confirm(req: dict[str, Any]) -> bool:
        shown = (f"{req['name']} (id {req['id']}, fingerprint {req['fingerprint']})"
                 if req.get("fingerprint") else f"request {req['id']}")
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
        _emit(result, as_json, lambda r: f"Approved {r['name']} ({r['approved']}, fingerprint "
              f"{r['fingerprint']}). The new device checks the vault code: {r['vault_code']}",
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
        _emit(result, as_json, lambda r: f"Rejected the enrolment request {r['rejected']}"
              + (f" of {r['name']}" if r["name"] else "") + ".", always=True)
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
        _emit(result, as_json, lambda r: f"Removed {r['removed']}; key epoch "
              f"{r['epoch']} is current.", always=True)
    _run(go, as_json)


@main.command("history")
@click.argument("path")
@folder_option
@json_option
def history_cmd(path: str, folder: str | None, as_json: bool) -> None:
    """List the current and kept versions of PATH (replaced or deleted ones stay restorable
    for the folder's keep_days)."""
    def go() -> None:
        result = history.history(folder, path, _ui(as_json))

        def human(r: dict[str, Any]) -> str:
            lines = [f"{r['path']}: {len(r['versions'])} version(s), kept {r['keep_days']} days"]
            for v in r["versions"]:
                size = f"{v['size']} bytes" if v["size"] is not None else v["kind"]
                when = "current" if v["current"] else f"replaced {v['replaced']}"
                lines.append(f"  {v['version']}  pushed {v['pushed'] or 'unknown'}  {when}  "
                             f"{size}  by {v['device']}")
            return "\n".join(lines)
        _emit(result, as_json, human, always=True)
    _run(go, as_json)


@main.command("restore")
@click.argument("paths", nargs=-1)
@click.option("--before", metavar="TIME", default=None,
              help="Restore what was current at TIME: 2026-12-01T10:00 (local time) or 3h, 2d "
                   "(ago). Without PATHS: the whole folder.")
@click.option("--version", "version_id", metavar="ID", default=None,
              help="Restore this version of one PATH (see cloudguard history).")
@click.option("--force", is_flag=True, help="Also overwrite local changes never pushed.")
@folder_option
@json_option
def restore_cmd(paths: tuple[str, ...], before: str | None, version_id: str | None,
                force: bool, folder: str | None, as_json: bool) -> None:
    """Write earlier versions back into the folder; the next push makes them current."""
    def go() -> None:
        result = history.restore(folder, list(paths), before, version_id, force, _ui(as_json))
        _emit(result, as_json, lambda r: (
            f"Restored {len(r['restored'])}, already as then {len(r['unchanged'])}, kept "
            f"{len(r['refused'])} with unpushed changes. Run cloudguard push to make the "
            "restored versions current on every device."), always=True)
        if result["refused"]:
            sys.exit(1)
    _run(go, as_json)


@main.command("settings")
@click.option("--keep-days", type=int, default=None,
              help="How many days replaced and deleted versions stay restorable (default 30).")
@folder_option
@json_option
def settings_cmd(keep_days: int | None, folder: str | None, as_json: bool) -> None:
    """Show or change the folder's settings."""
    def go() -> None:
        result = vault.settings(folder, keep_days)
        _emit(result, as_json, lambda r: "\n".join(f"{k} = {v}" for k, v in r.items()),
              always=True)
    _run(go, as_json)


if __name__ == "__main__":
    main()


@main.group()
def daemon() -> None:
    """Keep bound folders in sync in the background."""


@daemon.command("run")
@click.option("--folder", "folders", multiple=True, metavar="FOLDER",
              help="Serve only this bound folder (repeatable; default: every one).")
def daemon_run(folders: tuple[str, ...]) -> None:
    """Watch, encrypt and sync every bound folder until stopped (what the service runs).

    Each folder has its own worker: a saved file is pushed once it goes quiet, other devices'
    changes are pulled every few seconds, and a guard or integrity failure stops only that
    folder. SIGTERM stops it; the next start rescans and finishes whatever was in flight."""
    from .daemon import run as daemon_runner

    code = 0

    def go() -> None:
        nonlocal code
        code = daemon_runner.run(list(folders) or None)

    _run(go)
    sys.exit(code)


@daemon.command("start")
@json_option
def daemon_start(as_json: bool) -> None:
    """Run the daemon in the background (without systemd); its log goes to CLOUDGUARD_HOME."""
    from .daemon import control
    from .state import home

    def go() -> None:
        result = control.start(home() / "daemon.log")
        _emit(result, as_json, lambda r: f"The daemon runs (pid {r['pid']}); log: {r['log']}",
              always=True)
    _run(go, as_json)


@daemon.command("stop")
@json_option
def daemon_stop(as_json: bool) -> None:
    """Stop the running daemon (SIGTERM; it finishes nothing half-way that a restart cannot)."""
    from .daemon import control

    def go() -> None:
        result = control.stop()
        _emit(result, as_json, lambda r: "Stopped." if r["stopped"] else "No daemon was running.",
              always=True)
    _run(go, as_json)


@daemon.command("status")
@json_option
def daemon_status(as_json: bool) -> None:
    """What the daemon does with each folder: state, queue, last push and pull, last error."""
    from .daemon import control

    def human(r: dict[str, Any]) -> str:
        if not r.get("running"):
            return "The daemon is not running."
        lines = [f"The daemon runs (pid {r['pid']})."]
        for f in r["folders"]:
            why = f": {f['why']}" if f.get("why") else ""
            lines.append(f"  {f['folder']}: {f['state']}{why}, {f['queue']} queued"
                         + (f", last error: {f['last_error']}" if f.get("last_error") else ""))
        return "\n".join(lines)

    def go() -> None:
        got = control.query()
        result = {"running": False} if got is None else {"running": True, **got}
        _emit(result, as_json, human, always=True)
    _run(go, as_json)


@daemon.command("install")
@click.option("--print", "print_only", is_flag=True,
              help="Print the systemd user unit instead of installing and enabling it.")
@json_option
def daemon_install(print_only: bool, as_json: bool) -> None:
    """Install and enable a systemd user unit that runs the daemon (Type=notify)."""
    from .daemon import control

    def go() -> None:
        result = control.install(print_only)
        _emit(result, as_json, lambda r: r["unit"] if r["path"] is None
              else f"Installed {r['path']} and started it (systemctl --user status "
                   f"{control.UNIT}).", always=True)
    _run(go, as_json)


@main.command("mount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@folder_option
@click.option("--read-only", is_flag=True, help="Serve the vault read-only.")
def mount_cmd(mountpoint: str, folder: str | None, read_only: bool) -> None:
    """Mount the vault bound to FOLDER at MOUNTPOINT: files decrypted into memory on demand,
    no plaintext on disk. Runs in the foreground; unmount with cloudguard unmount."""
    from . import lock
    from .api import Vault
    from .mount import fs

    def go() -> None:
        if not os.path.isdir(mountpoint):
            raise UsageError(f"{mountpoint} is not a folder")
        with Vault(folder) as v:
            record = lock.register("mount", os.path.abspath(mountpoint))
            try:
                fs.mount(v, mountpoint, read_only=read_only)
            finally:
                record.unlink(missing_ok=True)
    _run(go)


@main.command("unmount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
def unmount_cmd(mountpoint: str) -> None:
    """Unmount a cloudguard mount."""
    def go() -> None:
        proc = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise CloudguardError(f"cannot unmount {mountpoint}: {proc.stderr.strip()}")
    _run(go)
