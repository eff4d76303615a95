"""What a long-lived face (vault.Vault: the daemon, the mount) holds for the sessions of its
process: one transport a folder (one rclone rcd, instead of rclone started per call) and the
device secret unlocked once (instead of the keyring or a passphrase each time). Memory only;
`cloudguard lock` ends the process."""

from __future__ import annotations

from .chain import Secret
from .keys import DeviceKey
from .state import Binding
from .transport import Transport

_OPEN_TRANSPORTS: dict[str, Transport] = {}
_UNLOCKED: dict[str, Secret] = {}


def held_transport(binding: Binding) -> Transport | None:
    return _OPEN_TRANSPORTS.get(binding.id)


def long_lived(binding: Binding) -> bool:
    """Is a long-lived face (daemon, mount) serving ``binding`` in this process?"""
    return binding.id in _OPEN_TRANSPORTS


def use_transport(binding: Binding, transport: Transport | None) -> None:
    """Route this process's sessions of ``binding`` through ``transport`` (None: stop)."""
    if transport is None:
        _OPEN_TRANSPORTS.pop(binding.id, None)
    else:
        _OPEN_TRANSPORTS[binding.id] = transport


def device_key(binding: Binding) -> DeviceKey:
    return DeviceKey(binding.keystore, binding.key_account, binding.dir / "device.key")


def unlocked(binding: Binding) -> Secret | None:
    """The device secret of ``binding`` if this process unlocked it already."""
    return _UNLOCKED.get(binding.id)


def unlock(binding: Binding, cache_seconds: float | None = None) -> Secret:
    """The device secret of ``binding``, read once and then kept for this process.
    ``cache_seconds``: see keys.DeviceKey.load."""
    secret = _UNLOCKED.get(binding.id)
    if secret is None:
        secret = device_key(binding).load(cache_seconds)
        _UNLOCKED[binding.id] = secret
    return secret


def forget_unlocked(binding: Binding | None = None) -> None:
    if binding is None:
        _UNLOCKED.clear()
    else:
        _UNLOCKED.pop(binding.id, None)
