"""Commands on a folder and its vault: set-up, sync, checks, history.
"""

from __future__ import annotations

import os
import sys

import click
import msgspec

from .. import audit, vault
from ..errors import (
    UsageError,
)
from ..ops import history
from ..results import (
    AuditRecord,
    CloneResult,
    Counts,
    DaemonView,
    DoctorResult,
    HistoryResult,
    LateRestoreResult,
    RestoreResult,
    StatusResult,
)
from . import (
    _copies,
    _emit,
    _interactive,
    _path_errors,
    _run,
    _things,
    _tty,
    _ui,
    _unreadable,
    _warn,
    _where,
    allow_exposed_option,
    folder_option,
    json_option,
    main,
)


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
        for message in result.exposed:
            _warn(f"{message} (allowed by --allow-exposed)")
        _emit(result, as_json, lambda r: f"Created vault {r.vault} on {r.remote} for "
              f"{r.folder} (device key in {r.keystore}).\nVault code (a new device "
              f"checks it): {r.vault_code}\nNext: cloudguard push, and "
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
        for message in result.exposed:
            _warn(f"{message} (allowed by --allow-exposed)")

        def human(r: CloneResult) -> str:
            if not r.enrolled:
                return (f"Enrolment requested. Fingerprint: {r.fingerprint}\nOn an enrolled "
                        f"device run: cloudguard device approve {r.fingerprint}\nThen here: "
                        "cloudguard pull")
            c = r.counts
            made = _things(c.made, "")
            text = (f"Cloned into {r.folder}: {_things(c.downloaded, '0 files')}"
                    + (f", {made}" if made else "") + ".")
            if r.conflicts:
                text += (f"\nThe folder already held other versions of some paths: made "
                         f"{_copies(r.conflicts)} of the vault's versions beside them; "
                         "compare, keep one, then cloudguard push.")
            return text
        _emit(result, as_json, human, always=True)
        _path_errors(result)
    _run(go, as_json)


def _here(paths: tuple[str, ...]) -> list[str] | None:
    """PATHS as a shell user means them: relative to the current folder."""
    return [os.path.abspath(p) for p in paths] or None


@main.command()
@folder_option
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded.")
@click.option("--allow-mass-delete", is_flag=True,
              help="Delete even when that is more than half of the files (or more than "
                   "1,000); without this, push asks on a terminal and refuses otherwise.")
@json_option
@click.argument("paths", nargs=-1, type=click.Path())
def push(folder: str | None, dry_run: bool, allow_mass_delete: bool, as_json: bool,
         paths: tuple[str, ...]) -> None:
    """Encrypt and upload local changes (only PATHS and what is under them, if given).

    Refuses (exit 1, nothing changed) when the folder's .cloudguard marker is missing, and
    when it would delete many files (see --allow-mass-delete). A path that cannot be read
    keeps its last synced state; push then exits 1 after the rest is up.
    """
    def go() -> None:
        result = vault.push(folder, dry_run, _ui(as_json), allow_mass_delete,
                            _here(paths))
        c = result.counts
        _emit(result, as_json, lambda r: (
            f"{'Would upload' if r.dry_run else 'Uploaded'} "
            f"{_things(c.uploaded, '0 files')}; updated {_things(c.updated)}; deleted "
            f"{_things(c.deleted)}"
            + (f"; made {_copies(r.conflicts)}" if r.conflicts else "") + "."),
            always=dry_run)
        _unreadable(result)
    _run(go, as_json)


@main.command()
@folder_option
@json_option
@click.argument("paths", nargs=-1, type=click.Path())
def pull(folder: str | None, as_json: bool, paths: tuple[str, ...]) -> None:
    """Download and decrypt remote changes (only PATHS and what is under them, if given).

    Refuses without the folder's marker."""
    def go() -> None:
        result = vault.pull(folder, _ui(as_json), _here(paths))
        c = result.counts
        _emit(result, as_json, lambda r: (
            f"Downloaded {_things(c.downloaded, '0 files')}; made {_things(c.made)}; "
            + (f"updated the mode or mtime of {len(r.updated)}; " if r.updated else "")
            + f"deleted {_things(c.deleted)}"
            + (f"; {_copies(r.conflicts)}" if r.conflicts else "") + "."))
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
        _emit(result, as_json, lambda r: f"Marked {r.folder}.", always=True)
    _run(go, as_json)


@main.command()
@folder_option
@click.option("--verbose", "-v", is_flag=True, help="List every path to push and pull.")
@json_option
def status(folder: str | None, verbose: bool, as_json: bool) -> None:
    """Show what push and pull would do: counts by default, the paths with --verbose."""
    def go() -> None:
        result = vault.status(folder, _ui(as_json))
        result.daemon = _daemon_view(result.folder)
        from .. import lock

        result.mounts = lock.mounts(result.folder)

        def side(label: str, paths: list[str], counts: Counts, deletes: Counts) -> list[str]:
            if not paths:
                return []
            if verbose:
                return [f"  {label}: {p}" for p in paths]
            gone = deletes.files + deletes.folders + deletes.links
            return [f"  {label}: {_things(counts)}"
                    + (f" ({gone:,} of them deletions)" if gone else "")
                    + f", under {_where(paths)}"]

        def human(r: StatusResult) -> str:
            lines = [f"folder {r.folder} -> {r.remote} (key epoch {r.epoch},"
                     f" {r.files} files)"]
            lines += [f"  exposed: {e.files} files were readable by removed member "
                      f"{e.name} (key rotate --reencrypt renews their keys)"
                      for e in r.exposed]
            half = r.reencryption
            if half:
                lines.append(f"  unfinished re-encryption to key epoch {half.epoch}: "
                             f"{half.files_left} files"
                             + (f" and {half.kept_versions_left} kept versions"
                                if half.kept_versions_left else "")
                             + f" still under older keys; {half.fix}")
            c = r.counts
            lines += (side("to push", r.to_push, c.to_push, c.push_deletes)
                      + side("to pull", r.to_pull, c.to_pull, c.pull_deletes))
            lines += [f"  unreadable, kept as last synced: {p}" for p in r.unreadable]
            lines += [f"  holds a removed member's late write, never pushed (the next pull "
                      f"puts back what it replaced): {p}" for p in r.late]
            if r.conflicts:
                lines.append(f"  pull would make {_copies(r.conflicts)}")
            lines += [f"  mounted at {m}" for m in r.mounts]
            served = r.daemon
            if served is not None:
                why = f" ({served.why})" if served.why else ""
                age = served.key_age_days
                lines.append(f"  daemon: {served.state}{why}, {served.queue} queued"
                             + (f", key {age:.1f} days old" if age is not None else "")
                             + (f", last error: {served.last_error}"
                                if served.last_error else ""))
            if r.in_sync:
                lines.append("  in sync")
            elif not r.to_push and not r.to_pull:
                lines.append(f"  not in sync: {len(r.unreadable) + len(r.late)} path(s) "
                             "cannot be synced")
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
            "md5 and sizes": f"the backend's MD5 of {result.hash_checked} objects, sizes "
                             "only of the rest (run verify --read-data)",
            "sizes": "sizes only: this backend keeps no hashes; run verify --read-data"}
        _emit(result, as_json, lambda r: (
            f"OK: {r.files} files in {r.objects} objects"
            + (f", {r.authenticated} authenticated" if r.read_data else "")
            + (f"; {len(r.unreferenced)} unreferenced objects" if r.unreferenced else "")
            + f". Checked: {notes[r.checked]}."),
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
        from ..ops import repair

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
            _emit(done, as_json, lambda r: r.message + ".", always=True)
            return
        if yes:
            raise UsageError("--yes only confirms --republish")
        result = repair.repair(folder, _ui(as_json))
        _emit(result, as_json, lambda r: (
            f"OK: {r.files} files checked, every object authenticated; nothing to repair."
            if not r.damaged_objects else
            f"Repaired {len(r.repaired)} files from local copies and moved "
            f"{len(r.moved)} intact ones out of {r.damaged_objects} damaged objects."),
            always=True)
        for row in result.unrepairable:
            click.echo(f"cloudguard: error: {row.path}"
                       + ("" if row.current else f" (history version {row.version})")
                       + f": object {row.object} is {row.problem}, and it cannot be "
                       f"repaired: {row.reason}", err=True)
        if not result.ok:
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

        def human(r: DoctorResult) -> str:
            marks = {"error": "ERROR", "warning": "warn ", "ok": "ok   "}
            lines = []
            for f in r.findings:
                lines.append(f"{marks[f.level]} {f.check}: {f.message}")
                if f.fix and f.level != "ok":
                    lines.append(f"      fix: {f.fix}")
            return "\n".join(lines)
        _emit(result, as_json, human, always=True)
        if not result.ok:
            sys.exit(1)
    _run(go, as_json)


@main.command("lock")
@click.option("--keyring", "lock_keyring", is_flag=True,
              help="Also lock the OS keyring (the next use asks for your login password).")
@json_option
def lock_cmd(lock_keyring: bool, as_json: bool) -> None:
    """Stop the daemon, unmount every mount and drop cached keys."""
    def go() -> None:
        from .. import lock

        result = lock.lock(lock_keyring)
        audit.record("lock", stopped=len(result.stopped), unmounted=len(result.unmounted),
                     keyring=result.keyring_locked)
        _emit(result, as_json, lambda r: (
            f"Locked: stopped {len(r.stopped)} processes, unmounted {len(r.unmounted)} "
            "folders" + (", keyring locked" if r.keyring_locked else "") + "."), always=True)
        for problem in result.problems:
            _warn(problem)
        if result.problems:
            sys.exit(1)
    _run(go, as_json)


@main.command("log")
@click.option("--verify", "check", is_flag=True, help="Check the hash chain; exit 3 if broken.")
@json_option
def log_cmd(check: bool, as_json: bool) -> None:
    """Print the local audit log (push, pull, rotate, ... events; never content or keys)."""
    def go() -> None:
        if check:
            _emit(audit.verified(), as_json,
                  lambda r: f"Audit log intact: {r.records} records.", always=True)
            return
        records = audit.read()

        def human(rows: list[AuditRecord]) -> str:
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


@main.command("history")
@click.argument("path")
@folder_option
@json_option
def history_cmd(path: str, folder: str | None, as_json: bool) -> None:
    """List the current and kept versions of PATH (replaced or deleted ones stay restorable
    for the folder's keep_days)."""
    def go() -> None:
        result = history.history(folder, path, _ui(as_json))

        def human(r: HistoryResult) -> str:
            lines = [f"{r.path}: {len(r.versions)} version(s), kept {r.keep_days} days"]
            for v in r.versions:
                size = f"{v.size} bytes" if v.size is not None else v.kind
                when = "current" if v.current else f"replaced {v.replaced}"
                late = ("  WRITTEN AFTER ITS WRITER WAS REMOVED: restored only by "
                        "--version or --late-of" if v.late else "") + (
                    "  ended (old key): a re-encryption ended its key; its object may be gone"
                    if v.ended else "")
                lines.append(f"  {v.version}  pushed {v.pushed or 'unknown'}  {when}  "
                             f"{size}  by {v.device}{late}")
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
@click.option("--late-of", "late_of", metavar="MEMBER", default=None,
              help="Restore the newest late version of every path (or of PATHS) that the "
                   "removed MEMBER (a name or id, see cloudguard device list) wrote, unless "
                   "a member not removed replaced it since.")
@click.option("--yes", "-y", is_flag=True,
              help="With --late-of: do not ask before restoring the writes of a member that "
                   "was really removed (needed without a terminal).")
@click.option("--force", is_flag=True, help="Also overwrite local changes never pushed.")
@folder_option
@json_option
def restore_cmd(paths: tuple[str, ...], before: str | None, version_id: str | None,
                late_of: str | None, yes: bool, force: bool, folder: str | None,
                as_json: bool) -> None:
    """Write earlier versions back into the folder; the next push makes them current."""
    def go() -> None:
        result = history.restore(folder, list(paths), before, version_id, force, _ui(as_json),
                                 late_of, yes)
        _emit(result, as_json, _restored, always=True)
        if result.refused:
            sys.exit(1)
    _run(go, as_json)


def _restored(r: RestoreResult | LateRestoreResult) -> str:
    text = (f"Restored {len(r.restored)}, already as then {len(r.unchanged)}, kept "
            f"{len(r.refused)} with unpushed changes.")
    if isinstance(r, LateRestoreResult):
        text += (f" Not restored: {len(r.replaced_since)} replaced since by a member not "
                 f"removed, {len(r.deleted_by_member)} deleted by {r.late_of.name} itself.")
    return text + " Run cloudguard push to make the restored versions current on every device."


@main.command("settings")
@click.option("--keep-days", type=int, default=None,
              help="How many days replaced and deleted versions stay restorable (default 30).")
@folder_option
@json_option
def settings_cmd(keep_days: int | None, folder: str | None, as_json: bool) -> None:
    """Show or change the folder's settings."""
    def go() -> None:
        result = vault.settings(folder, keep_days)
        _emit(result, as_json, lambda r: f"folder = {r.folder}\nkeep_days = {r.keep_days}",
              always=True)
    _run(go, as_json)


def _daemon_view(folder: str) -> DaemonView | None:
    """What the running daemon does with ``folder`` (None: no daemon serves it)."""
    from ..daemon import control

    got = control.query()
    for served in (got or {}).get("folders", []):
        if served.get("folder") == folder:
            extra = served.pop("extra", {}) or {}
            return msgspec.convert(
                {**served, "key_age_days": extra.get("key_age_days"),
                 "next_rotation_in_days": extra.get("next_rotation_in_days")}, DaemonView)
    return None
