"""What a delivery carries, as plain values: the input to building and the output of reading."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttachmentContent:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageContent:
    message_id: str
    subject: str
    body: bytes
    body_content_type: str
    support_text: str
    support_url: str | None = None
    support_phone: str | None = None
    support_email: str | None = None
    language: str = "svSE"
    attachments: tuple[AttachmentContent, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryContent:
    """One delivery to one recipient. ``sender_id`` and ``recipient_id`` are the 12 digits of the wire
    (a sender is ``"16"`` + its organisation number)."""

    sender_id: str
    sender_name: str
    recipient_id: str
    messages: tuple[MessageContent, ...]
    reference: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedDelivery:
    sender_id: str
    sender_name: str
    recipient_id: str
    reference: str | None
    correlation_id: str | None
    message_ids: tuple[str, ...]
    subjects: tuple[str, ...]
