"""A short-lived cache of unlocked device keys in the Linux kernel keyring (issue 9, item 20).

Why: with the passphrase-sealed key file, every command would ask for the passphrase and pay
scrypt again. The cache keeps the unlocked key for ``CLOUDGUARD_KEY_CACHE_SECONDS`` (default
300; 0 turns it off) in the kernel's per-user keyring, as ``sudo`` and ``ssh-agent`` keep
theirs: never on disk, gone at the timeout, at ``cloudguard lock`` and at reboot. Only
processes running as this user can read it, and those are out of scope already
(docs/threat-model.md, Attacker 5).

Each entry is named by a hash of the key file's path *and* bytes, so a replaced, re-sealed or
moved key file never reuses an old entry. Where the kernel keyring or libkeyutils is missing
(another OS, a locked-down container), there is simply no cache.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

_USER_KEYRING = -4  # KEY_SPEC_USER_KEYRING
_RING = b"cloudguard"
_MAX = 4096
HANDOVER_SECONDS = 60.0  # `cloudguard unlock` to a running daemon, even with the cache off

_lib: ctypes.CDLL | None = None
_loaded = False


def _keyutils() -> ctypes.CDLL | None:
    global _lib, _loaded
    if _loaded:
        return _lib
    _loaded = True
    try:
        lib = ctypes.CDLL("libkeyutils.so.1", use_errno=True)
    except OSError:
        return None
    lib.add_key.restype = ctypes.c_int32
    lib.add_key.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_int32]
    lib.keyctl_search.restype = ctypes.c_long
    lib.keyctl_search.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_int32]
    lib.keyctl_read.restype = ctypes.c_long
    lib.keyctl_read.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    lib.keyctl_set_timeout.restype = ctypes.c_long
    lib.keyctl_set_timeout.argtypes = [ctypes.c_int32, ctypes.c_uint]
    lib.keyctl_clear.restype = ctypes.c_long
    lib.keyctl_clear.argtypes = [ctypes.c_int32]
    lib.keyctl_unlink.restype = ctypes.c_long
    lib.keyctl_unlink.argtypes = [ctypes.c_int32, ctypes.c_int32]
    _lib = lib
    return lib


def _ring(create: bool) -> tuple[ctypes.CDLL, int] | None:
    lib = _keyutils()
    if lib is None:
        return None
    found = lib.keyctl_search(_USER_KEYRING, b"keyring", _RING, 0)
    if found < 0 and create:
        found = lib.add_key(b"keyring", _RING, None, 0, _USER_KEYRING)
    return (lib, int(found)) if found >= 0 else None


def entry_name(key_file: Path) -> bytes:
    """The entry of one exact key file: its path and its bytes."""
    try:
        data = key_file.read_bytes()
    except OSError:
        data = b""
    digest = hashlib.sha256(str(key_file.resolve()).encode() + b"\0" + data).hexdigest()
    return f"cloudguard:{digest[:40]}".encode()


def get(name: bytes) -> bytes | None:
    got = _ring(create=False)
    if got is None:
        return None
    lib, ring = got
    key = lib.keyctl_search(ring, b"user", name, 0)
    if key < 0:
        return None  # never cached, expired (EKEYEXPIRED) or cleared
    buf = ctypes.create_string_buffer(_MAX)
    size = lib.keyctl_read(int(key), buf, _MAX)
    if size <= 0 or size > _MAX:
        return None
    value = buf.raw[:size]
    ctypes.memset(buf, 0, _MAX)
    return value


def put(name: bytes, value: bytes, seconds: float) -> bool:
    """Cache ``value`` for ``seconds``; False where no kernel keyring is available."""
    if seconds <= 0 or len(value) > _MAX:
        return False
    got = _ring(create=True)
    if got is None:
        return False
    lib, ring = got
    key = lib.add_key(b"user", name, value, len(value), ring)
    if key < 0:
        return False
    if lib.keyctl_set_timeout(key, max(1, int(seconds))) < 0:
        lib.keyctl_unlink(key, ring)  # never leave an entry without its timeout
        return False
    return True


def drop(name: bytes) -> None:
    got = _ring(create=False)
    if got is not None:
        lib, ring = got
        key = lib.keyctl_search(ring, b"user", name, 0)
        if key >= 0:
            lib.keyctl_unlink(int(key), ring)


def clear() -> None:
    """``cloudguard lock``: forget every cached key of this user at once."""
    got = _ring(create=False)
    if got is not None:
        got[0].keyctl_clear(got[1])
