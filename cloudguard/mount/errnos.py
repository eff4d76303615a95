"""Every FUSE callback wrapped: a failure is logged without a file name and answered with the
right errno (EIO for an integrity or transport failure), never mfusepy's default EINVAL."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import mfusepy as fuse  # type: ignore[import-untyped]

from ..errors import CloudguardError, IntegrityError

log = logging.getLogger("cloudguard.mount")

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except fuse.FuseOSError:
            raise
        except IntegrityError:
            log.error("%s: integrity check failed", fn.__name__)
            raise fuse.FuseOSError(errno.EIO) from None
        except CloudguardError as exc:
            log.error("%s: %s", fn.__name__, type(exc).__name__)
            raise fuse.FuseOSError(errno.EIO) from None
        except OSError as exc:
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise fuse.FuseOSError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]
