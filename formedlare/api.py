"""The one interface a sender (kanalväxel) uses to talk to a relay, in-process or over the network.

Both :class:`formedlare.relay.Relay` (in-process) and :class:`formedlare.client.RemoteRelay` (SOAP
``distributeSecure`` / ``checkDistributionStatus`` over mutual TLS, to our own relay service or another
förmedlare) implement :class:`RelayApi`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from formedlare.errors import FormedlareError


class DistributionState(enum.StrEnum):
    """Stored values; never change them."""

    PENDING = "PENDING"  # accepted by the relay, not yet delivered to the operator (or being retried)
    DELIVERED = "DELIVERED"  # the mailbox operator answered Delivered=true
    FAILED = "FAILED"  # permanently failed: the sender should use another channel


@dataclass(frozen=True, slots=True)
class DistributionStatus:
    distribution_id: str
    state: DistributionState
    detail: str  # Swedish, for the shipment's timeline: why it failed, or whom it was delivered to
    operator_id: str | None = None  # 16 + organisation number of the mailbox operator, when known
    operator_name: str | None = None
    attempts: int = 0
    updated_at: datetime | None = None


class DeliveryRefusedError(FormedlareError):
    """The relay refused the delivery for good (bad or untrusted signature, sender it does not relay for,
    schema violation, ...). Sending the same bytes again will be refused again. `code` is a stable
    upper-case reason code; `reason` a Swedish sentence."""

    retryable = False

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class RelayUnavailableError(FormedlareError):
    """The relay could not be reached or answered with a transient error: try again later."""

    retryable = True


class UnknownDistributionError(FormedlareError):
    """No distribution with that id (on this relay)."""


class RelayApi(Protocol):
    def distribute_secure(self, signed_delivery: bytes) -> str:
        """Hand one signed delivery (the ``SignedDelivery`` element's bytes, exactly as signed) to the relay.

        Returns the distribution id. Idempotent: the same delivery (same sender id and message ids) handed
        over again returns the same distribution id and is delivered at most once. Raises
        DeliveryRefusedError (permanent) or RelayUnavailableError (transient)."""
        ...

    def check_distribution_status(self, distribution_id: str) -> DistributionStatus:
        """The current state of a distribution. Raises UnknownDistributionError, RelayUnavailableError."""
        ...
