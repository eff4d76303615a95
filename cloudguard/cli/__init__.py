"""The command line: parses arguments, calls :mod:`cloudguard.vault`, prints results.

Exit codes: 0 ok, 1 error, 2 usage, 3 integrity failure. Progress bars and summaries appear
only on a terminal; ``--json`` prints one JSON document on stdout for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from .. import __version__, results, vault
from ..errors import (
    CloudguardError,
    FileChangedError,
    FolderBusy,
    GuardError,
    IntegrityError,
    KeyStoreError,
    TransportError,
    UnsupportedFormat,
    UsageError,
)
from ..results import CloneResult, Counts, PullResult, PushResult

_R = TypeVar("_R")


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


def _unreadable(result: PushResult | PullResult | CloneResult) -> None:
    """Exit 1 once everything else is done if some paths could not be synced: unreadable, not
    a file, folder or symlink (kept as last synced), or changed while read (next time)."""
    problems = []
    for key, what in (("unreadable", "could not read or sync {n} path(s), kept as last "
                                      "synced"),
                      ("skipped", "{n} file(s) changed while read, pushed next time")):
        paths: list[str] = getattr(result, key)
        if paths:
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more"
                                            if len(paths) > 5 else "")
            problems.append(f"{what.format(n=len(paths))}: {shown}")
    if problems:
        click.echo(f"cloudguard: error: {'; '.join(problems)}", err=True)
        sys.exit(1)


def _emit(result: _R, as_json: bool, human: Callable[[_R], str] | None = None,
          always: bool = False) -> None:
    """``result`` as JSON (a typed result of cloudguard.results, or builtins), or the human
    line made from it: typed, so a formatter reading a field that is not there fails mypy."""
    if as_json:
        click.echo(results.to_json(result))
    elif human is not None and (always or _tty()):
        text = human(result)
        if text:
            click.echo(text)


def _path_errors(result: PullResult | CloneResult) -> None:
    """A pull that landed everything else but some paths: one line each (and the unreadable
    ones), then exit 1."""
    for line in result.errors:
        click.echo(f"cloudguard: error: {line}", err=True)
    _unreadable(result)
    if result.errors:
        sys.exit(1)


# The "kind" of a JSON error, most specific class first (docs/cli-json.md lists them).
_KINDS: tuple[tuple[type[CloudguardError], str], ...] = (
    (IntegrityError, "integrity"), (UsageError, "usage"), (TransportError, "transport"),
    (KeyStoreError, "keystore"), (FileChangedError, "file-changed"),
    (FolderBusy, "folder-busy"), (UnsupportedFormat, "unsupported-format"))


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
        paths = getattr(exc, "paths", None)
        _fail(exc.exit_code, str(exc), kind, as_json, details={"paths": paths} if paths else None)
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


def _things(counts: Counts, none: str = "nothing") -> str:
    """'3 files, 40 folders and 2 links': folders and links are never counted as files."""
    words = [(counts.files, "file"), (counts.folders, "folder"), (counts.links, "link")]
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


if __name__ == "__main__":
    main()


# The commands register themselves on `main` when imported.
from . import background, files, members  # noqa: E402,F401
