"""How many bytes of each kind of remote object we read, at most.

A listed size is only the remote's word, so the cap applies to the bytes that actually arrive
(:meth:`cloudguard.transport.RcloneTransport.get_bytes` stops reading past it): a planted giant
costs at most its cap in memory, then fails with exit 3 naming the object. Each cap is far
above anything an honest object of its kind reaches. Content (``data/``) is never read whole:
the manifest states each blob's offset and length.
"""

from __future__ import annotations

from .errors import IntegrityError

KiB = 1024
MiB = 1024 * KiB

MAX_DESCRIPTOR = 64 * KiB  # cloudguard.json: about 200 bytes
MAX_KEYS = 16 * MiB  # keys/<pos>-<id>[.k]: a few hundred bytes a member, ~100 an older KEK
MAX_ENROLMENT = 64 * KiB  # enroll/<id>: about 250 bytes
# m/<device>-<seq>.<kind>: format.open_segment inflates at most 256 MiB, and zlib never makes
# data more than 0.03 % (plus a few bytes) bigger, so no segment it accepts is longer than this
MAX_SEGMENT = 257 * MiB
MAX_OTHER = 64 * KiB  # anything else read whole

# Literal, so the transport needs none of the modules owning these names (a test pins them)
_CAPS = (("cloudguard.json", MAX_DESCRIPTOR), ("keys/", MAX_KEYS),
         ("enroll/", MAX_ENROLMENT), ("m/", MAX_SEGMENT))


def cap(name: str) -> int:
    """The most bytes an honest object called ``name`` can hold."""
    for prefix, most in _CAPS:
        if name.startswith(prefix):
            return most
    return MAX_OTHER


def check(name: str, size: int, most: int | None = None) -> None:
    """Refuse ``name`` once ``size`` bytes of it are known (listed or arrived)."""
    most = cap(name) if most is None else most
    if size > most:
        raise IntegrityError(f"{name} holds more than {most} bytes, more than any cloudguard "
                             "object of its kind: refused (planted or damaged)")
