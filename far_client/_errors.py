"""far_client's error tree. Every error chains the exception that caused it (``__cause__``)."""

from __future__ import annotations


class FarError(Exception):
    """Root of every error far_client raises. ``retryable``: the same call may succeed if made again later."""

    retryable: bool = False


class InvalidIdentifierError(FarError, ValueError):
    """A sender organisation number or recipient id the contract cannot carry; raised before any call."""


class FarTransportError(FarError):
    """FaR could not be reached or answered at the HTTP level: connection refused, TLS failure, timeout, or an
    HTTP error status without a SOAP fault. Retryable for all of these except HTTP 4xx (``status_code``)."""

    retryable = True

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable


class FarTimeoutError(FarTransportError):
    """Connecting to FaR or reading its answer took longer than the configured timeout."""


class FarFaultError(FarError):
    """FaR answered with a SOAP fault (``c3:applicationFault``). Not retryable: the same request gets the same
    answer. ``error_code``/``call_id`` are None when the fault carries no applicationFault detail."""

    def __init__(self, description: str, *, error_code: int | None, call_id: str | None) -> None:
        super().__init__(f"FaR svarade med fel {error_code}: {description} (CallId {call_id})")
        self.error_code = error_code
        self.description = description
        self.call_id = call_id


class FarResponseError(FarError):
    """FaR's answer was malformed or did not match the question (e.g. an id asked for is missing)."""
