"""Device keys, key slots, recovery kits and KEK generations.

Only this module touches the OS keyring or asks for a passphrase.

Model (docs/design.md, "Keys"): every enrolled device and every recovery kit is a *member*
with an X25519 keypair. Each KEK generation ``g`` is one remote object ``keys/<g>`` holding the
KEK wrapped to every member, plus a body sealed under the KEK itself listing the members, the
descriptor hash, the older KEKs (so new members read old segments) and a *link* sealed under
KEK ``g-1``. Only a holder of the KEK can add a member or a generation; the provider cannot.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from . import format as fmt
from .errors import CloudguardError, IntegrityError, KeyStoreError, UsageError, named
from .state import write_private

SERVICE = "cloudguard"
KEYS_PREFIX = "keys/"
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


def get_passphrase(purpose: str, confirm: bool = False) -> str:
    env = os.environ.get("CLOUDGUARD_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise KeyStoreError(f"a passphrase is needed for {purpose}: set CLOUDGUARD_PASSPHRASE "
                            "or run on a terminal")
    first = getpass.getpass(f"Passphrase for {purpose}: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise UsageError("the passphrases do not match")
    if not first:
        raise UsageError("an empty passphrase is not allowed")
    return first


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
    forced = os.environ.get("CLOUDGUARD_KEYSTORE", "").strip().lower()
    if forced in ("keyring", "file"):
        if forced == "keyring":
            _require_secure_keyring()
        return forced
    if forced:
        raise UsageError(f"CLOUDGUARD_KEYSTORE={forced!r}: use 'keyring' or 'file'")
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


_CACHE: dict[str, X25519PrivateKey] = {}


class DeviceKey:
    """The device's X25519 private key, in the OS keyring or a passphrase-sealed file.

    Cached per process: each keyring read costs a D-Bus round trip.
    """

    def __init__(self, store: str, account: str, file_path: Path) -> None:
        self.store = store
        self.account = account
        self.file_path = file_path

    def create(self) -> X25519PrivateKey:
        priv = X25519PrivateKey.generate()
        raw = priv.private_bytes_raw()
        if self.store == "keyring":
            import keyring
            import keyring.errors
            try:
                keyring.set_password(SERVICE, self.account, fmt.b64(raw))
            except keyring.errors.KeyringError as exc:
                raise KeyStoreError(f"cannot store the device key in the keyring: {exc}") from exc
        else:
            doc = fmt.seal_with_passphrase(
                raw, get_passphrase("the device key file", confirm=True),
                {"cloudguard": "device-key", "account": self.account},
                log_n=scrypt_log_n(17))
            write_private_json(self.file_path, doc)
        _CACHE[self.account] = priv
        return priv

    def load(self) -> X25519PrivateKey:
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
            try:
                doc = json.loads(self.file_path.read_text())
            except (OSError, ValueError) as exc:
                raise KeyStoreError(f"cannot read device key file {self.file_path}: {exc}") from exc
            try:
                raw = fmt.open_with_passphrase(doc, get_passphrase("the device key file"))
            except IntegrityError as exc:
                raise KeyStoreError(f"wrong passphrase for {self.file_path} (or the file is "
                                    "damaged)") from exc
        priv = X25519PrivateKey.from_private_bytes(raw)
        _CACHE[self.account] = priv
        return priv

    def forget(self) -> None:
        _CACHE.pop(self.account, None)

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
    _CACHE.clear()


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """0600 from birth and atomic, so a crash never leaves half a key file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps(doc, indent=1).encode())


# --- recovery kits ------------------------------------------------------------------------


def write_kit(path: Path, vault_id: str, rid: str, priv: X25519PrivateKey,
              passphrase: str) -> None:
    if path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    doc = fmt.seal_with_passphrase(
        priv.private_bytes_raw(), passphrase,
        {"cloudguard": "recovery-kit", "format": fmt.VERSION, "vault": vault_id, "rid": rid},
        log_n=scrypt_log_n(fmt.KIT_LOG_N))
    write_private_json(path, doc)


def read_kit(path: Path, passphrase: str) -> tuple[str, str, X25519PrivateKey]:
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
    except IntegrityError as exc:
        raise KeyStoreError(f"wrong passphrase for recovery kit {path} (or it is damaged)"
                            ) from exc
    return str(doc["vault"]), str(doc["rid"]), X25519PrivateKey.from_private_bytes(raw)


# --- KEK generations ----------------------------------------------------------------------


@dataclass
class Member:
    rid: str
    kind: str  # "device" | "recovery"
    name: str
    created: str
    pub: bytes

    def to_json(self) -> dict[str, str]:
        return {"rid": self.rid, "kind": self.kind, "name": self.name, "created": self.created,
                "pub": fmt.b64(self.pub)}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Member:
        try:
            return Member(str(doc["rid"]), str(doc["kind"]), str(doc["name"]),
                          str(doc["created"]), fmt.unb64(doc["pub"]))
        except (KeyError, TypeError) as exc:
            raise IntegrityError() from exc


@dataclass
class Generation:
    number: int
    kek: bytes
    created: str
    members: list[Member]
    descriptor: str
    history: dict[int, bytes] = field(default_factory=dict)
    link: object = None  # sealed under the previous KEK; kept as is when members change


def keys_name(generation: int) -> str:
    return f"{KEYS_PREFIX}{generation:08d}"


def _body_aad(vault_id: str, generation: int) -> bytes:
    return f"cloudguard/v1/members/{vault_id}/{generation}".encode()


def make_link(vault_id: str, number: int, kek: bytes, previous_kek: bytes) -> str:
    """Proof that whoever made generation ``number`` held the previous KEK."""
    return fmt.seal_json(previous_kek, b"cloudguard/v1/link", _body_aad(vault_id, number),
                         {"generation": number, "commit": fmt.key_commitment(kek)})


def seal_generation(vault_id: str, gen: Generation) -> bytes:
    slots = [fmt.wrap_to_recipient(m.pub, gen.kek, vault_id, gen.number, m.rid)
             for m in gen.members]
    history = {str(n): fmt.b64(aes_key_wrap(gen.kek, k)) for n, k in sorted(gen.history.items())}
    body = {"members": [m.to_json() for m in gen.members], "created": gen.created,
            "descriptor": gen.descriptor, "history": history, "link": gen.link}
    doc = {"cloudguard": "keys", "format": fmt.VERSION, "vault": vault_id,
           "generation": gen.number, "slots": slots,
           "body": fmt.seal_json(gen.kek, b"cloudguard/v1/members",
                                 _body_aad(vault_id, gen.number), body)}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def open_generation(vault_id: str, number: int, raw: bytes, rid: str,
                    priv: X25519PrivateKey | None, known_kek: bytes | None
                    ) -> Generation | None:
    """Open one key-slot object with our private key, or with a KEK learnt from history.

    Returns None when we hold no slot in it (we were never a member of this generation).
    """
    try:
        doc = fmt.parse_json(raw, keys_name(number))
        if doc.get("cloudguard") != "keys" or doc.get("vault") != vault_id:
            raise IntegrityError()
        if doc.get("format") != fmt.VERSION:
            raise CloudguardError(f"{keys_name(number)}: unknown key format "
                                  f"{doc.get('format')!r}; upgrade cloudguard")
        if doc.get("generation") != number:
            raise IntegrityError()
        kek = known_kek
        if kek is None and priv is not None:
            mine = [s for s in doc["slots"] if s.get("rid") == rid]
            if not mine:
                return None
            kek = fmt.unwrap_from_slot(priv, mine[0], vault_id, number)
        if kek is None:
            return None
        body = fmt.open_json(kek, b"cloudguard/v1/members", _body_aad(vault_id, number),
                             doc["body"])
        members = [Member.from_json(m) for m in body["members"]]
        slot_ids = sorted(str(s.get("rid")) for s in doc["slots"])
        if slot_ids != sorted(m.rid for m in members):
            raise IntegrityError()  # a slot was slipped in (or dropped) outside the sealed body
        history = {int(n): aes_key_unwrap(kek, fmt.unb64(v))
                   for n, v in body.get("history", {}).items()}
        return Generation(number, kek, str(body["created"]), members, str(body["descriptor"]),
                          history, body.get("link"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError() from exc


def check_link(vault_id: str, gen: Generation, previous_kek: bytes) -> None:
    if gen.link is None:
        raise IntegrityError()
    doc = fmt.open_json(previous_kek, b"cloudguard/v1/link", _body_aad(vault_id, gen.number),
                        gen.link)
    if doc.get("generation") != gen.number or doc.get(
            "commit") != fmt.key_commitment(gen.kek):
        raise IntegrityError()


@dataclass
class KeyRing:
    """All KEK generations this device can open, newest last."""

    vault_id: str
    generations: dict[int, Generation]

    @property
    def current(self) -> Generation:
        return self.generations[max(self.generations)]

    def kek(self, number: int) -> bytes:
        gen = self.generations.get(number)
        if gen is not None:
            return gen.kek
        for g in sorted(self.generations.values(), key=lambda g: -g.number):
            if number in g.history:
                return g.history[number]
        raise IntegrityError(f"key generation {number} is not available to this device")

    def all_keks(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for g in self.generations.values():
            out.update(g.history)
        for g in self.generations.values():
            out[g.number] = g.kek
        return out


def load_keyring(fetch: Callable[[str], bytes], listing: Iterable[str], vault_id: str, rid: str,
                 priv: X25519PrivateKey, trusted: dict[int, str]) -> KeyRing:
    """Open every generation we hold a slot in and check the chain between them.

    ``trusted`` maps generation -> KEK commitment this device accepted before; a changed
    commitment or a missing newer generation is an attack (rollback or substitution).
    """
    numbers: list[int] = []
    for name in listing:
        tail = name[len(KEYS_PREFIX):]
        if name.startswith(KEYS_PREFIX) and tail.isdigit() and len(tail) == 8:
            numbers.append(int(tail))
    numbers.sort()
    if trusted and (not numbers or numbers[-1] < max(trusted)):
        raise IntegrityError(f"key generation {max(trusted)} is missing from the remote: "
                             "the remote was rolled back or keys were deleted")
    opened: dict[int, Generation] = {}
    for number in numbers:
        try:
            got = open_generation(vault_id, number, fetch(keys_name(number)), rid, priv, None)
        except IntegrityError as exc:
            raise named(keys_name(number), exc) from exc
        if got is not None:
            opened[number] = got
    if not opened:
        raise KeyStoreError("this device holds no key slot in the vault: it was removed, or "
                            "its enrolment was not approved yet (cloudguard device approve)")
    ring = KeyRing(vault_id, dict(opened))
    for number, got in opened.items():
        commit = fmt.key_commitment(got.kek)
        if number in trusted and trusted[number] != commit:
            raise IntegrityError(f"{keys_name(number)}: key generation {number} was replaced")
        if number - 1 in opened:  # a KEK learnt only from this generation's history proves nothing
            try:
                check_link(vault_id, got, opened[number - 1].kek)
            except IntegrityError as exc:
                raise named(keys_name(number), exc) from exc
    if max(opened) < numbers[-1]:
        raise KeyStoreError("this device holds no slot in the newest key generation: it was "
                            "removed from the vault")
    return ring
