"""The root of every error formedlare raises. Each module adds its own subclasses."""

from __future__ import annotations


class FormedlareError(Exception):
    """Root of formedlare's errors. `retryable` says whether the same call may succeed later."""

    retryable: bool = False
