"""Where member secrets live: the OS keyring, a passphrase-sealed key file, recovery kits.

Only this module touches the OS keyring or asks for a passphrase. A member secret is an
X25519 key (receives key slots) and an Ed25519 key (signs commits and segments); what they
may do is the membership chain's business (chain.py).
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import format as fmt
from . import keycache
from . import passphrase as passphrases
from .chain import Secret
from .errors import IntegrityError, KeyStoreError, PassphraseNeeded, UsageError
from .settings import settings
from .state import write_private

SERVICE = "cloudguard"
ENROLL_PREFIX = "enroll/"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_member_id() -> str:
    return secrets.token_hex(8)


# The scrypt cost of new key files and kits, lowered by the test suite only (tests/conftest.py,
# tests/helpers.py). A module attribute, not a setting: no environment variable or option a
# user (or an attacker who can set one) reaches can make a kit cheap to brute-force.
TEST_KDF_LOG_N: int | None = None


def scrypt_log_n(default: int) -> int:
    return default if TEST_KDF_LOG_N is None else TEST_KDF_LOG_N


# Where a passphrase comes from without a prompt: the device key file has its own variables,
# a recovery kit its own, so that one is never silently taken for the other.
DEVICE_PASSPHRASE_VAR = "CLOUDGUARD_PASSPHRASE"
KIT_PASSPHRASE_VAR = "CLOUDGUARD_KIT_PASSPHRASE"
DEVICE_KEY_FILE = "this device's key file"
PROMPT_ATTEMPTS = 3


CREDENTIAL_NAMES = {"CLOUDGUARD_PASSPHRASE": "cloudguard-passphrase"}


def passphrase_from_env(var: str) -> str | None:
    """``$VAR``, else the first line of the file ``$VAR_FILE`` (a secret kept out of the
    environment, as with docker's ``*_FILE`` convention), else the systemd credential
    ``$CREDENTIALS_DIRECTORY/cloudguard-passphrase``; None when none is there."""
    value = os.environ.get(var)
    file_var = f"{var}_FILE"
    path = os.environ.get(file_var)
    if value and path:
        raise UsageError(f"both {var} and {file_var} are set; use one")
    if value:
        return value
    if not path:
        # a systemd credential (LoadCredential[Encrypted]=cloudguard-passphrase:...) needs no
        # Environment= line: systemd names the folder it decrypted it into
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        name = CREDENTIAL_NAMES.get(var)
        if not credentials or not name or not os.path.isfile(os.path.join(credentials, name)):
            return None
        path, file_var = os.path.join(credentials, name), "the systemd credential"
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read the passphrase from {file_var}={path}: {why}") from exc
    line = line.rstrip("\r\n")
    if not line:
        raise UsageError(f"{file_var}={path}: the first line is empty; it must hold the "
                         "passphrase")
    return line


def get_passphrase(purpose: str, confirm: bool = False,
                   hint: str = passphrases.GENERATED_HINT,
                   var: str = DEVICE_PASSPHRASE_VAR) -> str:
    """The passphrase for ``purpose`` from ``$var`` or ``$var_FILE``, else asked for.

    confirm=True means a new passphrase is being chosen: refused if weak (hint says where a
    strong one comes from), and asked twice at a prompt. A prompt asks again after a typo (an
    empty, weak or mismatched answer), PROMPT_ATTEMPTS times in all, as passwd does. Reading
    an existing file never checks strength.
    """
    given = passphrase_from_env(var)
    if given is not None:
        if confirm:
            passphrases.require_strong(given, purpose, hint)
        return given
    if not sys.stdin.isatty():
        raise PassphraseNeeded(f"a passphrase is needed for {purpose}: set {var} (or "
                               f"{var}_FILE) or run on a terminal")
    label = f"{'New passphrase' if confirm else 'Passphrase'} for {purpose}"
    for attempt in range(1, PROMPT_ATTEMPTS + 1):
        try:
            first = getpass.getpass(f"{label}: ")
            if not first:
                raise UsageError("an empty passphrase is not allowed")
            if not confirm:
                return first
            passphrases.require_strong(first, purpose, hint)
            if getpass.getpass(f"Repeat the new passphrase for {purpose}: ") != first:
                raise UsageError(f"the two passphrases for {purpose} do not match")
            return first
        except UsageError as exc:
            if attempt == PROMPT_ATTEMPTS:
                raise
            print(f"cloudguard: {exc}; try again", file=sys.stderr)
    raise AssertionError("unreachable")


# --- where the device private key lives ---------------------------------------------------


def _backend_names(backend: Any) -> list[str]:
    inner = getattr(backend, "backends", None)
    parts = inner if inner else [backend]
    return [f"{type(b).__module__}.{type(b).__name__}" for b in parts]


def keyring_status() -> tuple[str, str]:
    """Return ("secure"|"none"|"insecure", backend description)."""
    try:
        import keyring
    except ImportError:
        return "none", "keyring not installed"
    backend = keyring.get_keyring()
    names = _backend_names(backend)
    desc = ", ".join(names)
    insecure = [n for n in names if n.startswith("keyrings.alt") or "Plaintext" in n]
    if insecure:
        return "insecure", desc
    usable = [n for n in names if not n.startswith(("keyring.backends.fail",
                                                     "keyring.backends.null"))]
    return ("secure" if usable else "none"), desc


def choose_keystore() -> str:
    forced = settings().keystore
    if forced is not None:
        if forced == "keyring":
            _require_secure_keyring()
        return forced
    status, desc = keyring_status()
    if status == "insecure":
        _require_secure_keyring()
    return "keyring" if status == "secure" else "file"


def _require_secure_keyring() -> None:
    status, desc = keyring_status()
    if status == "insecure":
        raise KeyStoreError(
            f"keyring backend {desc} stores secrets unencrypted; uninstall keyrings.alt "
            "(pip uninstall keyrings.alt) or set CLOUDGUARD_KEYSTORE=file for a passphrase file")
    if status == "none":
        raise KeyStoreError(
            f"no usable OS keyring ({desc}); start a Secret Service (gnome-keyring) or set "
            "CLOUDGUARD_KEYSTORE=file for a passphrase-protected key file")


_CACHE: dict[str, Secret] = {}


class DeviceKey:
    """The device's member secret, in the OS keyring or a passphrase-sealed file.

    Cached per process: each keyring read costs a D-Bus round trip.
    """

    def __init__(self, store: str, account: str, file_path: Path) -> None:
        self.store = store
        self.account = account
        self.file_path = file_path

    def create(self, secret: Secret | None = None) -> Secret:
        priv = secret or Secret.generate()
        raw = priv.raw()
        if self.store == "keyring":
            import keyring
            import keyring.errors
            try:
                keyring.set_password(SERVICE, self.account, fmt.b64(raw))
            except keyring.errors.KeyringError as exc:
                raise KeyStoreError(f"cannot store the device key in the keyring: {exc}") from exc
        else:
            doc = fmt.seal_with_passphrase(
                raw, get_passphrase(DEVICE_KEY_FILE, confirm=True),
                {"cloudguard": "device-key", "account": self.account},
                log_n=scrypt_log_n(17))
            write_private_json(self.file_path, doc)
            keycache.put(keycache.entry_name(self.file_path), raw, settings().key_cache_seconds)
        _CACHE[self.account] = priv
        return priv

    def load(self, cache_seconds: float | None = None) -> Secret:
        """``cache_seconds``: how long the kernel keyring keeps it (default: the setting);
        ``cloudguard unlock`` hands the daemon its key that way."""
        keep = settings().key_cache_seconds if cache_seconds is None else cache_seconds
        cached = _CACHE.get(self.account)
        if cached is not None:
            return cached
        if self.store == "keyring":
            _require_secure_keyring()
            import keyring
            import keyring.errors
            try:
                value = keyring.get_password(SERVICE, self.account)
            except keyring.errors.KeyringError as exc:
                raise KeyStoreError(f"cannot read the device key from the keyring: {exc}") from exc
            if value is None:
                raise KeyStoreError(f"the device key {SERVICE}/{self.account} is not in the "
                                    "keyring; re-clone this folder with a recovery kit")
            raw = fmt.unb64(value)
        else:
            entry = keycache.entry_name(self.file_path)
            cached_raw = keycache.get(entry)
            if cached_raw is not None:
                raw = cached_raw  # unlocked in the last few minutes (keycache)
                if settings().key_cache_seconds <= 0:
                    keycache.drop(entry)  # a handover from `cloudguard unlock`: taken once
            else:
                try:
                    doc = json.loads(self.file_path.read_text())
                except (OSError, ValueError) as exc:
                    raise KeyStoreError(f"cannot read device key file {self.file_path}: "
                                        f"{exc}") from exc
                try:
                    raw = fmt.open_with_passphrase(doc, get_passphrase(DEVICE_KEY_FILE))
                except IntegrityError as exc:
                    raise KeyStoreError(f"wrong passphrase for {self.file_path} (or the file "
                                        "is damaged)") from exc
                keycache.put(entry, raw, keep)
        try:
            priv = Secret.from_raw(raw)
        except IntegrityError as exc:
            raise KeyStoreError(f"the device key {self.account} is not a cloudguard v2 key "
                                "(re-clone this folder)") from exc
        _CACHE[self.account] = priv
        return priv

    def forget(self) -> None:
        _CACHE.pop(self.account, None)
        if self.store != "keyring":
            keycache.drop(keycache.entry_name(self.file_path))

    def delete(self) -> None:
        """Used when a clone fails half-way, so no orphan key is left in the keyring."""
        self.forget()
        if self.store == "keyring":
            import keyring
            import keyring.errors
            try:
                keyring.delete_password(SERVICE, self.account)
            except keyring.errors.KeyringError:
                pass
        else:
            self.file_path.unlink(missing_ok=True)


def drop_cached_keys() -> None:
    """Forget every unlocked key: this process's, and the kernel keyring's cache."""
    _CACHE.clear()
    keycache.clear()


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """0600 from birth and atomic, so a crash never leaves half a key file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps(doc, indent=1).encode())


# --- recovery kits ------------------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    vault: str
    rid: str
    anchor: str  # id of the commit that added the kit
    secret: Secret


def write_kit(path: Path, vault_id: str, rid: str, anchor: str, secret: Secret,
              passphrase: str) -> None:
    if path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    doc = fmt.seal_with_passphrase(
        secret.raw(), passphrase,
        {"cloudguard": "recovery-kit", "format": fmt.VERSION, "vault": vault_id, "rid": rid,
         "anchor": anchor},
        log_n=scrypt_log_n(fmt.KIT_LOG_N))
    write_private_json(path, doc)


def read_kit(path: Path, passphrase: str) -> Kit:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read recovery kit {path}: {exc}") from exc
    doc = fmt.parse_json(raw, f"recovery kit {path}")
    if not isinstance(doc, dict) or doc.get("cloudguard") != "recovery-kit":
        raise UsageError(f"{path} is not a cloudguard recovery kit")
    if doc.get("format") != fmt.VERSION:
        raise UsageError(f"{path}: unknown recovery kit format {doc.get('format')!r}")
    try:
        raw = fmt.open_with_passphrase(doc, passphrase)
        return Kit(str(doc["vault"]), str(doc["rid"]), str(doc["anchor"]), Secret.from_raw(raw))
    except (IntegrityError, KeyError) as exc:
        raise KeyStoreError(f"wrong passphrase for recovery kit {path} (or it is damaged)"
                            ) from exc


def lock_secret_service(problems: list[str]) -> bool:
    """Lock the Secret Service collection (cloudguard lock --keyring): the next use needs the
    user's login password. Problems are appended to ``problems``, never raised."""
    try:
        import secretstorage

        with secretstorage.dbus_init() as conn:
            collection = secretstorage.get_default_collection(conn)
            collection.lock()
            return bool(collection.is_locked())
    except Exception as exc:  # noqa: BLE001 - any D-Bus failure is reported, not fatal
        problems.append(f"cannot lock the Secret Service: {exc}")
        return False
