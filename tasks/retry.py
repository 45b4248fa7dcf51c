"""Retries with exponential backoff for storage I/O only (never for decoding or inference errors)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# Not transient: retrying cannot help.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "gcsfs", "adlfs", "s3fs")


def is_transient_storage_error(exc: BaseException) -> bool:
    """Connection drops, timeouts, throttling, 5xx from object stores; local disk hiccups (OSError)."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    module = type(exc).__module__ or ""
    if module.split(".")[0] in _TRANSIENT_MODULES:
        return True
    return isinstance(exc, OSError)


def with_storage_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 0.5,
                         max_delay: float = 8.0) -> T:
    """fn() retried on transient storage errors: delays base, 2 base, 4 base ... (+-25 % jitter)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient_storage_error(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
            log.warning("%s failed (%s: %s), retry %d/%d in %.1f s", what, type(exc).__name__, exc, attempt,
                        attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
