"""Errors of the Mina meddelanden XML layer, all under :class:`MmError`."""

from __future__ import annotations

import enum

from formedlare.errors import FormedlareError


class MmError(FormedlareError):
    """Root of ``formedlare.mm``'s errors. None of them is retryable: the same bytes fail the same way."""


class MalformedXmlError(MmError):
    """Not well-formed XML, a forbidden construct (DTD, entities), or not the element that was expected."""


class InvalidContentError(MmError):
    """Content that cannot be put into a delivery (text with characters XML cannot carry, a key that is not
    RSA, ...)."""


class SchemaViolationError(MmError):
    """The element does not follow the schema. ``errors`` holds libxml2's messages, one per violation."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "schemavalidering misslyckades")
        self.errors = errors


class SignatureProblem(enum.StrEnum):
    """Why a signature was refused. Stored and shown to people: never change the values."""

    UNSIGNED = "UNSIGNED"
    MALFORMED_SIGNATURE = "MALFORMED_SIGNATURE"
    UNSUPPORTED_ALGORITHM = "UNSUPPORTED_ALGORITHM"
    SHA1_NOT_ALLOWED = "SHA1_NOT_ALLOWED"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    SIGNATURE_MISMATCH = "SIGNATURE_MISMATCH"
    CERTIFICATE_UNTRUSTED = "CERTIFICATE_UNTRUSTED"
    CERTIFICATE_EXPIRED = "CERTIFICATE_EXPIRED"
    CERTIFICATE_NOT_YET_VALID = "CERTIFICATE_NOT_YET_VALID"
    CERTIFICATE_UNUSABLE = "CERTIFICATE_UNUSABLE"


class SignatureInvalidError(MmError):
    """A signature that cannot be accepted. ``reason`` says which check failed; ``detail`` is Swedish."""

    def __init__(self, reason: SignatureProblem, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
