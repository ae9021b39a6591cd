"""What a shipment is: one letter to one recipient, its state machine and its event log."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from kanalvaxel.domain.errors import IllegalTransitionError
from kanalvaxel.domain.identity import RecipientId


class Confidentiality(enum.StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"  # under sekretess: never unencrypted outside a secure channel


class Channel(enum.StrEnum):
    """Delivery channels. Values are stored and never change."""

    MINA_MEDDELANDEN = "mina_meddelanden"
    EMAIL_ENCRYPTED = "email_encrypted"
    EMAIL = "email"
    PRINT = "print"


class Notice(enum.StrEnum):
    """Notices that accompany a channel; never a channel of their own."""

    SMS = "sms"


def is_confidential(confidentiality: Confidentiality | str) -> bool:
    """Fail closed: anything not known to be public or internal counts as confidential, and `in` compares
    by value, so a plain "confidential" string from an untyped caller counts too."""
    return confidentiality not in (Confidentiality.PUBLIC, Confidentiality.INTERNAL)


#: Channels that carry content in clear over a network we do not control.
PLAIN_CHANNELS: frozenset[Channel] = frozenset({Channel.EMAIL})


class BodyType(enum.StrEnum):
    TEXT = "text/plain"
    HTML = "text/html"


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/pdf"


@dataclass(frozen=True, slots=True)
class SupportInfo:
    text: str
    url: str | None = None
    phone: str | None = None
    email: str | None = None

    def lines(self) -> list[str]:
        """What a recipient reads under a letter, on paper and in e-mail alike: "Frågor?" and the text (the
        text alone when it already speaks of questions: "Har du frågor? Ring oss."), then web, phone and
        e-mail."""
        text = self.text.strip()
        lines = [text if "fråga" in text.casefold() or "frågor" in text.casefold() else f"Frågor? {text}"]
        if self.url:
            lines.append(f"Webb: {self.url}")
        if self.phone:
            lines.append(f"Telefon: {self.phone}")
        if self.email:
            lines.append(f"E-post: {self.email}")
        return lines


@dataclass(frozen=True, slots=True)
class PostalAddress:
    """An address for a window envelope. `lines` are street lines (c/o, street, box)."""

    lines: tuple[str, ...]
    postal_code: str
    city: str
    country: str | None = None  # None = Sweden


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    """What the case system knows about the recipient, beyond the identity number."""

    name: str | None = None
    postal_address: PostalAddress | None = None
    email: str | None = None
    mobile: str | None = None
    smime_certificate_pem: str | None = None
    protected_identity: bool = False


@dataclass(frozen=True, slots=True)
class Letter:
    """The content and metadata of one letter, as the case system gave it (after validation).

    `sender` is the key of the sender identity (from settings) the letter is sent as.
    """

    sender: str
    recipient: RecipientId
    subject: str
    body: str
    body_type: BodyType
    confidentiality: Confidentiality
    message_type: str
    support_info: SupportInfo
    case_reference: str | None = None
    attachments: tuple[Attachment, ...] = ()
    recipient_info: RecipientInfo = field(default_factory=RecipientInfo)


class ShipmentState(enum.StrEnum):
    """States of a shipment. Values are stored and never change."""

    ACCEPTED = "ACCEPTED"  # durably queued, no channel tried yet
    SENDING = "SENDING"  # a worker is deciding or sending
    RETRY_WAIT = "RETRY_WAIT"  # a channel failed for now, or a register could not be asked; will try again
    HANDED_OVER = "HANDED_OVER"  # a channel took it and will report (relay, open print batch)
    DELIVERED = "DELIVERED"  # the chosen channel confirmed it (operator stored it, print batch closed)
    FAILED = "FAILED"  # every channel in the decision failed or none was possible

    @property
    def terminal(self) -> bool:
        return self in (ShipmentState.DELIVERED, ShipmentState.FAILED)


_ALLOWED: dict[ShipmentState, frozenset[ShipmentState]] = {
    # RETRY_WAIT straight from ACCEPTED: the decision itself can say "wait" (FaR could not be asked).
    ShipmentState.ACCEPTED: frozenset(
        {ShipmentState.SENDING, ShipmentState.RETRY_WAIT, ShipmentState.FAILED}
    ),
    ShipmentState.SENDING: frozenset(
        {
            ShipmentState.SENDING,
            ShipmentState.RETRY_WAIT,
            ShipmentState.HANDED_OVER,
            ShipmentState.DELIVERED,
            ShipmentState.FAILED,
        }
    ),
    # RETRY_WAIT again: waits once more while FaR is still down.
    ShipmentState.RETRY_WAIT: frozenset(
        {ShipmentState.SENDING, ShipmentState.RETRY_WAIT, ShipmentState.FAILED}
    ),
    ShipmentState.HANDED_OVER: frozenset(
        {ShipmentState.DELIVERED, ShipmentState.SENDING, ShipmentState.RETRY_WAIT, ShipmentState.FAILED}
    ),
    ShipmentState.DELIVERED: frozenset(),
    ShipmentState.FAILED: frozenset(),
}


def check_transition(current: ShipmentState, new: ShipmentState) -> None:
    """Raise IllegalTransitionError unless `current -> new` is allowed."""
    if new not in _ALLOWED[current]:
        raise IllegalTransitionError(f"{current} -> {new} is not allowed")


class EventType(enum.StrEnum):
    """Kinds of entries in a shipment's append-only event log. Values are stored and never change."""

    ACCEPTED = "ACCEPTED"
    STATE_CHANGED = "STATE_CHANGED"
    DECIDED = "DECIDED"
    ATTEMPT = "ATTEMPT"
    CHANNEL_FAILED = "CHANNEL_FAILED"
    HANDED_OVER = "HANDED_OVER"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    NOTICE = "NOTICE"


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    type: EventType
    message: str  # Swedish: customer service reads it
    channel: Channel | None = None
    state: ShipmentState | None = None
    details: dict[str, object] = field(default_factory=dict)
