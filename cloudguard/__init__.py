"""cloudguard: encrypt documents before they reach the cloud.

The library API lives in :mod:`cloudguard.vault`; the CLI in :mod:`cloudguard.cli` is a thin face
over it.
"""

__version__ = "0.1.0"
