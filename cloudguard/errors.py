"""One root error class; each subclass carries the exit code the CLI returns.

    CloudguardError (1)
    ├── UsageError (2)          bad arguments, unknown folder, wrong setting
    ├── KeyError_ (1)           keyring or passphrase problems
    ├── TransportError (1)      rclone failed
    ├── FolderBusy (1)          another process held the folder past the wait
    ├── UnsupportedFormat (1)   a vault format newer than this cloudguard
    ├── FileChangedError (1)    a file changed while it was read
    ├── GuardError (1)          a push or pull refused to protect the folder (marker, mass delete)
    └── IntegrityError (3)      tampered, truncated, swapped, rolled back or missing data
        └── HistoryError (3)    the manifest was rolled back, truncated or forked
"""

from __future__ import annotations


class CloudguardError(Exception):
    """Operational error."""

    exit_code = 1


class UsageError(CloudguardError):
    """The user asked for something malformed."""

    exit_code = 2


class KeyStoreError(CloudguardError):
    """The device key cannot be stored or opened."""


class PassphraseNeeded(KeyStoreError):
    """A key file is to be opened, and no terminal, variable or credential gives its
    passphrase: the daemon then waits, locked, for ``cloudguard unlock``."""


class TransportError(CloudguardError):
    """rclone failed; the message names the object."""


class UnsupportedFormat(CloudguardError):
    """The vault was written by a newer cloudguard (a format this build cannot read)."""


class FolderBusy(CloudguardError):
    """Another process's operation held the folder longer than we were willing to wait."""


class FileChangedError(CloudguardError):
    """A file changed while it was being encrypted; it is retried on the next push."""


class GuardError(CloudguardError):
    """A push or pull that could lose files, refused before it deleted or wrote anything.

    ``code`` and ``details`` make the refusal machine-readable (``--json``).
    """

    def __init__(self, message: str, code: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class IntegrityError(CloudguardError):
    """Authentication failed.

    The format layer never says which check failed (one error for all), callers add the name of
    the file or object so the user knows where to look.
    """

    exit_code = 3

    def __init__(self, message: str = "integrity check failed",
                 paths: list[str] | None = None) -> None:
        super().__init__(message)
        self.paths = list(paths or [])  # the files it concerns (``--json`` lists them)


class HistoryError(IntegrityError):
    """The remote manifest is older than, or diverges from, what this device verified: the
    one exit-3 state that ``cloudguard repair --republish`` may answer (docs/design.md,
    "Ways out of exit 3")."""


REPUBLISH_HINT = ("; if this device's copy is the one to keep, 'cloudguard repair --republish' "
                  "publishes it as a new snapshot after you confirm (docs/design.md, "
                  "\"Ways out of exit 3\")")


def named(what: str, exc: IntegrityError) -> IntegrityError:
    """``exc`` with the file or object it concerns in front, so the user knows where to look
    (the format layer's errors never say); left as it is if it names it already."""
    text = str(exc)
    return IntegrityError(text if what in text else f"{what}: {text}")


class Interrupted(CloudguardError):
    """Stopped by the user (Ctrl-C): the message says exactly what was kept."""
