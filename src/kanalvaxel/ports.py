"""The interfaces the core needs from the outside world. Adapters implement them; tests may fake them.

Every port states its contract: what it takes, what it raises, and whether calling it twice is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import Channel, Letter
from kanalvaxel.domain.rules import CertificateFacts, Decision, MailboxLookup


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender identity a letter is sent as (from settings), as channels need it."""

    key: str
    organisation_number: str  # ten digits
    name: str
    return_address: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """One attempt to deliver one shipment by one channel."""

    shipment_id: str
    attempt: int  # 1-based, per shipment, across channels
    channel: Channel
    letter: Letter
    sender: SenderInfo
    decision: Decision
    mailbox: MailboxLookup | None = None


class OutcomeKind(enum.StrEnum):
    DELIVERED = "DELIVERED"  # the channel confirms the letter reached its end
    HANDED_OVER = "HANDED_OVER"  # the channel took it; the final result comes later
    RETRY = "RETRY"  # failed for now; the same channel may succeed later
    FAILED = "FAILED"  # this channel will not work for this letter: go on to the next


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    kind: OutcomeKind
    detail: str  # Swedish or the remote system's own words; truncated when stored
    external_ref: str | None = None  # queue id, message id, staged print file, ...
    retry_after: timedelta | None = None
    data: Mapping[str, str] = field(default_factory=dict)


class ChannelAdapter(Protocol):
    """Sends a letter by one channel.

    `send` must be idempotent per (shipment_id, channel): a worker that crashed after `send` and before its
    outcome was stored will call it again, and the recipient must not get the letter twice. It never raises
    for a delivery problem: it returns RETRY or FAILED with the reason. It runs with no transaction open.
    """

    channel: Channel

    def send(self, job: DeliveryJob) -> DeliveryOutcome: ...


class RecipientRegister(Protocol):
    """FaR: who has a digital mailbox and accepts which senders."""

    def lookup(
        self, sender_organisation_number: str, recipients: Sequence[RecipientId], *, bypass_cache: bool = False
    ) -> Mapping[str, MailboxLookup]:
        """Answer per recipient (keyed by the 12-digit id). Never raises for an unreachable register:
        each answer then has state UNAVAILABLE with the reason. Safe to call any number of times."""
        ...


class CertificateInspector(Protocol):
    def inspect(self, pem: str) -> CertificateFacts:
        """Read an S/MIME certificate. Never raises: an unreadable one has `problem` set."""
        ...


@dataclass(frozen=True, slots=True)
class PrintLetterRecord:
    """One letter in a print batch, for the manifest. No identity number: the vendor does not need it."""

    sequence: int
    shipment_id: str
    staged_name: str
    pages: int
    size_bytes: int
    recipient_name: str
    address_lines: tuple[str, ...]
    postal_code: str
    city: str
    country: str | None
    sender_organisation_number: str
    sender_name: str
    case_reference: str | None


@dataclass(frozen=True, slots=True)
class PrintBatchInfo:
    batch_id: str
    sender_key: str
    opened_at: datetime
    closed_at: datetime
    letters: Sequence[PrintLetterRecord]


@dataclass(frozen=True, slots=True)
class StagedLetter:
    name: str  # file name in the staging area, stable per shipment
    pages: int
    size_bytes: int


class PrintSpool(Protocol):
    """The print vendor's spool directory.

    `stage` writes one letter's print-ready PDF to a staging area under a name derived from the shipment
    id (writing it again replaces it: idempotent). `publish` moves the staged letters of a closed batch
    into `outgoing/<batch_id>/` with manifest.csv and manifest.json, and makes the directory appear
    atomically; publishing the same batch again is a no-op that returns the same path.
    """

    def stage(self, shipment_id: str, pdf: bytes) -> StagedLetter: ...

    def publish(self, batch: PrintBatchInfo) -> str: ...


class LetterRenderer(Protocol):
    def render(self, letter: Letter, sender: SenderInfo, shipment_id: str) -> bytes:
        """A print-ready PDF: an address page for a window envelope, then the letter's own PDFs.

        Raises ValidationError when the letter lacks what print needs (name, postal address)."""
        ...
