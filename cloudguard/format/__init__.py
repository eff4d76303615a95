"""Format v2: every byte cloudguard writes to a remote (normative spec: docs/format.md).

Pure functions over bytes and streams. Randomness enters only through ``os.urandom`` in
the ``new_*`` helpers, so tests can pass fixed values to the inner functions and compare exact
bytes against tests/format/vectors.json. Every authentication or parse failure raises the same
:class:`IntegrityError`; callers add the object or file name.

One module a concept: ``blob`` (content blobs, packs, DEK wrapping), ``segment`` (manifest
segments), ``slots`` (key slots, sealed JSON, passphrase kits, codes); ``common`` holds what
they share. Callers use this package's names (``fmt.encrypt_blob``), so a test can replace
one here.
"""

from . import blob, common, segment, slots
from .blob import *  # noqa: F403
from .common import *  # noqa: F403
from .segment import *  # noqa: F403
from .slots import *  # noqa: F403

__all__ = common.__all__ + blob.__all__ + segment.__all__ + slots.__all__
