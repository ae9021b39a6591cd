"""The error tree of kanalväxel. Every error we raise derives from KanalvaxelError."""

from __future__ import annotations


class KanalvaxelError(Exception):
    """Root of every error kanalväxel raises on purpose."""


class ValidationError(KanalvaxelError):
    """Input that is wrong in itself; `field` names the part at fault (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidRecipientIdError(ValidationError):
    """A personnummer, samordningsnummer or organisationsnummer that is malformed or fails its checksum."""


class PolicyError(KanalvaxelError):
    """A channel policy that cannot be loaded, for example one that lets confidential content go in clear."""


class IllegalTransitionError(KanalvaxelError):
    """A shipment state change that the state machine does not allow."""


class NotFoundError(KanalvaxelError):
    """The thing asked for does not exist, or the caller may not see it (we do not tell which)."""


class ConflictError(KanalvaxelError):
    """The request conflicts with what is stored, e.g. an idempotency key reused with another body."""


class ForbiddenError(KanalvaxelError):
    """The caller is known but not allowed to do this, e.g. use a sender identity it is not bound to."""


class ConfigurationError(KanalvaxelError):
    """Settings that are missing, inconsistent or unsafe for the environment."""


class UnavailableError(KanalvaxelError):
    """Something we need (the database) cannot be reached or is overloaded now; the same request later can
    succeed. `message` may be shown to anyone; `cause` (the driver's words) is for our own logs only.
    `retry_after` is a hint in seconds."""

    def __init__(self, message: str, *, cause: str = "", retry_after: int = 5) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.retry_after = retry_after
