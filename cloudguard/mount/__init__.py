"""The mounted vault (issue 12): plaintext only in memory, through the same engine."""

import ctypes.util
import os

if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
    # mfusepy takes libfuse2 when both are installed; we are built for libfuse3 (auto_unmount,
    # fuse_invalidate_path), so ask for it before mfusepy loads its library
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
