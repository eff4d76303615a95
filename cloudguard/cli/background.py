"""The long-lived faces: the daemon and the mount.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click
import msgspec

from ..errors import (
    CloudguardError,
    KeyStoreError,
    UsageError,
)
from ..procs import running
from ..results import ConfigResult, DaemonStatus, UnlockResult
from . import _emit, _run, _ui, folder_option, json_option, main


@main.group()
def daemon() -> None:
    """Keep bound folders in sync in the background."""


@daemon.command("run")
@click.option("--folder", "folders", multiple=True, metavar="FOLDER",
              help="Serve only this bound folder (repeatable; default: every one).")
@click.option("--allow-exposed", is_flag=True,
              help="Sync a folder even where another sync client uploads its plaintext "
                   "(logged as a warning).")
@click.option("--log-paths", is_flag=True,
              help="Let the log name files (errors and warnings in full); without it the log "
                   "says only what kind of thing happened, and `cloudguard status` has the "
                   "rest.")
def daemon_run(folders: tuple[str, ...], allow_exposed: bool, log_paths: bool) -> None:
    """Watch, encrypt and sync every bound folder until stopped (what the service runs).

    Each folder has its own worker: a saved file is pushed once it goes quiet, other devices'
    changes are pulled every few seconds, and a guard or integrity failure stops only that
    folder. SIGTERM stops it; the next start rescans and finishes whatever was in flight."""
    from ..daemon import run as daemon_runner

    code = 0

    def go() -> None:
        nonlocal code
        code = daemon_runner.run(list(folders) or None, allow_exposed=allow_exposed,
                                 log_paths=log_paths)

    _run(go)
    sys.exit(code)


@daemon.command("start")
@json_option
def daemon_start(as_json: bool) -> None:
    """Run the daemon in the background (without systemd); its log goes to CLOUDGUARD_HOME."""
    from ..daemon import control
    from ..state import home

    def go() -> None:
        result = control.start(home() / "daemon.log")
        _emit(result, as_json, lambda r: f"The daemon runs (pid {r.pid}); log: {r.log}",
              always=True)
    _run(go, as_json)


@daemon.command("stop")
@json_option
def daemon_stop(as_json: bool) -> None:
    """Stop the running daemon (SIGTERM; it finishes nothing half-way that a restart cannot)."""
    from ..daemon import control

    def go() -> None:
        result = control.stop()
        _emit(result, as_json, lambda r: "Stopped." if r.stopped else "No daemon was running.",
              always=True)
    _run(go, as_json)


@daemon.command("status")
@json_option
def daemon_status(as_json: bool) -> None:
    """What the daemon does with each folder: state, queue, last push and pull, last error."""
    from ..daemon import control

    def human(r: DaemonStatus) -> str:
        if not r.running:
            return "The daemon is not running."
        lines = [f"The daemon runs (pid {r.pid})."]
        for f in r.folders or []:
            why = f": {f.why}" if f.why else ""
            lines.append(f"  {f.folder}: {f.state}{why}, {f.queue} queued"
                         + (f", last error: {f.last_error}" if f.last_error else ""))
        return "\n".join(lines)

    def go() -> None:
        _emit(control.status(), as_json, human, always=True)
    _run(go, as_json)


@daemon.command("install")
@click.option("--print", "print_only", is_flag=True,
              help="Print the systemd user unit instead of installing and enabling it.")
@json_option
def daemon_install(print_only: bool, as_json: bool) -> None:
    """Install and enable a systemd user unit that runs the daemon (Type=notify)."""
    from ..daemon import control

    def go() -> None:
        result = control.install(print_only)
        _emit(result, as_json, lambda r: r.unit if r.path is None
              else f"Installed {r.path} and started it (systemctl --user status "
                   f"{control.UNIT}).", always=True)
    _run(go, as_json)


@main.command("mount")
@click.argument("where", nargs=-1, required=True, metavar="[REMOTE] MOUNTPOINT")
@folder_option
@click.option("--key-file", type=click.Path(dir_okay=False, exists=True),
              help="With REMOTE: enrol this mount as a new device with a recovery kit.")
@click.option("--vault-code", help="With REMOTE: the vault code, to ask for approval instead.")
@click.option("--name", help="With REMOTE: this mount's device name (default: the host name).")
@click.option("--read-only", is_flag=True, help="Serve the vault read-only.")
@click.option("--poll", "poll_seconds", type=click.FloatRange(0.1, 3600), default=15.0,
              show_default=True, help="Seconds between looks for other devices' changes.")
@click.option("--deadline", type=click.FloatRange(1, 3600), default=20.0, show_default=True,
              help="Seconds a remote call may go without progress before the file operation "
                   "fails with EIO (a dead server never hangs the programs using the mount).")
def mount_cmd(where: tuple[str, ...], folder: str | None, key_file: str | None,
              vault_code: str | None, name: str | None, read_only: bool,
              poll_seconds: float, deadline: float) -> None:
    """Mount a vault at MOUNTPOINT: files decrypted into memory on demand, no plaintext on
    disk. With REMOTE, no plaintext folder is needed anywhere: the mount uses this device's
    membership of that vault, or becomes a member device of its own (--key-file KIT, or
    --vault-code CODE and an approval). Without it, the vault bound to FOLDER. Runs in the
    foreground; unmount with cloudguard unmount."""
    from .. import lock
    from ..api import Vault
    from ..mount import fs
    from ..ops.enrol import mount_binding

    def go() -> None:
        if len(where) > 2 or (len(where) == 2 and folder is not None):
            raise UsageError("mount takes [REMOTE] MOUNTPOINT, and REMOTE or --folder, not both")
        mountpoint = where[-1]
        if not os.path.isdir(mountpoint):
            raise UsageError(f"{mountpoint} is not a folder")
        bound = folder
        if len(where) == 2:
            binding = mount_binding(where[0], key_file, name, _ui(False), vault_code)
            if not binding.enrolled:
                from ..session import session

                try:
                    with session(binding.folder):  # takes in an approval given since
                        pass
                except KeyStoreError:
                    from ..state import Index

                    index = Index(binding.dir / "index.db")
                    fp = index.get_meta("fingerprint", "?")
                    index.close()
                    raise CloudguardError(
                        "this mount asked to join the vault as a new device; approve it on "
                        f"an enrolled device (cloudguard device approve {fp}), then mount "
                        "again") from None
            bound = binding.folder
        elif key_file or vault_code or name:
            raise UsageError("--key-file, --vault-code and --name go with a REMOTE")
        with Vault(bound, deadline=deadline) as v:
            record = lock.register("mount", os.path.abspath(mountpoint), v.folder)
            try:
                fs.mount(v, mountpoint, poll_seconds, read_only=read_only)
            finally:
                record.unlink(missing_ok=True)
    _run(go)


@main.command("unmount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
def unmount_cmd(mountpoint: str) -> None:
    """Unmount a cloudguard mount, and wait until the versions it staged are uploaded and
    committed (it says how many are left while it waits)."""
    import time

    from .. import lock
    from ..state import Index, find_binding

    def staged(folder: str) -> int:
        index = Index(find_binding(folder).dir / "index.db")
        try:
            return len(index.staged())
        finally:
            index.close()

    def go() -> None:
        where = os.path.abspath(mountpoint)
        serving = lock.mount_process(where)
        proc = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise CloudguardError(f"cannot unmount {mountpoint}: {proc.stderr.strip()}")
        if serving is None:
            return
        pid, folder = serving
        said = 0.0
        while running(pid):  # it commits what it staged, then exits
            if time.monotonic() - said >= 5 and sys.stderr.isatty():
                said = time.monotonic()
                click.echo(f"committing {staged(folder)} staged change(s) of {mountpoint}...",
                           err=True)
            time.sleep(0.1)
        left = staged(folder)
        if left:
            raise CloudguardError(f"{mountpoint} is unmounted, but {left} staged change(s) "
                                  "could not be committed; they are kept on this disk "
                                  "(versions encrypted) and committed at the next mount")
    _run(go)


@daemon.command("pause")
@click.argument("folder", required=False)
@json_option
def daemon_pause(folder: str | None, as_json: bool) -> None:
    """Stop syncing FOLDER (default: every folder) until resume; changes are still noted."""
    _control("pause", folder, False, False, as_json)


@daemon.command("resume")
@click.argument("folder", required=False)
@click.option("--accept-deletes", is_flag=True,
              help="Confirm the deletions a mass-delete guard stopped (for the next push).")
@click.option("--accept-changes", is_flag=True,
              help="Confirm the rewrites a mass-change (ransomware) guard stopped (for the "
                   "next push).")
@json_option
def daemon_resume(folder: str | None, accept_deletes: bool, accept_changes: bool,
                  as_json: bool) -> None:
    """Sync FOLDER again (default: every folder); a folder a guard or a failure stopped is
    looked at from the start."""
    _control("resume", folder, accept_deletes, accept_changes, as_json)


def _control(command: str, folder: str | None, accept_deletes: bool, accept_changes: bool,
             as_json: bool) -> None:
    from ..daemon import control

    def go() -> None:
        done = control.command(command, folder, accept_deletes, accept_changes)
        _emit(done, as_json, lambda r: f"{r.done.capitalize()}d.", always=True)
    _run(go, as_json)


@main.command("unlock")
@click.option("--folder", "folders", multiple=True, metavar="FOLDER",
              help="Unlock only this bound folder's key (repeatable; default: every one).")
@json_option
def unlock_cmd(folders: tuple[str, ...], as_json: bool) -> None:
    """Open the device key files (asking for their passphrases) and hand them to a daemon
    that started locked, through the kernel keyring: never on disk, never over a socket."""
    from ..daemon import control
    from ..held import unlock
    from ..keycache import HANDOVER_SECONDS
    from ..settings import settings
    from ..state import all_bindings, find_binding

    def go() -> None:
        bindings = [find_binding(f) for f in folders] if folders else all_bindings()
        if not bindings:
            raise UsageError("no bound folder here; run cloudguard init or clone first")
        keep = max(settings().key_cache_seconds, HANDOVER_SECONDS)
        for binding in bindings:
            unlock(binding, keep)
        got = control.request({"cmd": "unlock"})
        result = UnlockResult(unlocked=[b.folder for b in bindings], daemon=got is not None)
        _emit(result, as_json, lambda r: (
            f"Unlocked {len(r.unlocked)} folder(s)"
            + ("; the daemon has them." if r.daemon else
               f"; no daemon is running (the keys stay in the kernel keyring for {keep:g} s).")),
            always=True)
    _run(go, as_json)


@main.group("config")
def config_group() -> None:
    """The daemon's settings (CLOUDGUARD_HOME/config.toml) and the environment's."""


@config_group.command("show")
@json_option
def config_show(as_json: bool) -> None:
    """Print the effective settings: config.toml over the defaults, and the CLOUDGUARD_*
    variables; a bad value is refused with the setting named."""
    from ..daemon.config import show

    def go() -> None:
        def human(r: ConfigResult) -> str:
            shared = msgspec.structs.asdict(r.daemon)
            lines = [f"daemon ({r.config_file}):"]
            lines += [f"  {k} = {v}" for k, v in shared.items()]
            for folder, values in r.folders.items():
                lines.append(f"folder {folder}:")
                lines += [f"  {k} = {v}" for k, v in msgspec.structs.asdict(values).items()
                          if v != shared.get(k)]
            lines.append("environment:")
            lines += [f"  {k} = {v}"
                      for k, v in msgspec.structs.asdict(r.environment).items()]
            return "\n".join(lines)

        _emit(show(), as_json, human, always=True)
    _run(go, as_json)
