"""Request and response bodies of the REST API. Unknown fields are refused everywhere."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kanalvaxel.domain.model import Channel, Confidentiality

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


#: C0 control characters other than tab, LF and CR: PostgreSQL cannot store NUL, XML 1.0 allows none of them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and _CONTROL.search(t) for t in texts):
            raise ValueError("must not contain control characters (tab and line breaks are fine)")
        return value


class PostalAddressIn(_In):
    lines: list[str] = Field(min_length=1, max_length=4, description="Street lines: c/o, street, box.")
    postal_code: str = Field(min_length=1, max_length=20, examples=["123 45"])
    city: str = Field(min_length=1, max_length=100)
    country: str | None = Field(default=None, max_length=100, description="Leave out for Sweden.")


class RecipientIn(_In):
    id: str = Field(
        description="Personnummer, samordningsnummer or organisationsnummer; 10 or 12 digits, dash allowed.",
        examples=["19121212-1212"],
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)
    postal_address: PostalAddressIn | None = None
    email: str | None = Field(
        default=None, min_length=5, max_length=256, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )
    mobile: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 -]{5,20}$")
    smime_certificate: str | None = Field(
        default=None, max_length=20000, description="PEM, for encrypted e-mail."
    )
    protected_identity: bool = Field(default=False, description="Skyddad identitet: never e-mail or SMS.")


class BodyIn(_In):
    content_type: Literal["text/plain", "text/html"] = "text/plain"
    content: str = Field(default="", description="HTML is sanitised: no scripts, styles, images or forms.")


class AttachmentIn(_In):
    filename: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")
    content_type: Literal["application/pdf"] = "application/pdf"
    content_base64: str = Field(description="The PDF, base64-encoded.")


class SupportInfoIn(_In):
    text: str = Field(
        min_length=1, max_length=1024, description="Who the recipient can ask, shown with the letter."
    )
    url: str | None = Field(default=None, max_length=255, pattern=r"^https?://")
    phone: str | None = Field(default=None, max_length=255)
    email: str | None = Field(
        default=None, min_length=5, max_length=256, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )


class ShipmentIn(_In):
    sender: str | None = Field(
        default=None, description="Sender identity key. May be left out when the client is bound to one only."
    )
    recipient: RecipientIn
    subject: str = Field(min_length=1, max_length=255)
    body: BodyIn = BodyIn()
    attachments: list[AttachmentIn] = Field(default_factory=list)
    confidentiality: Confidentiality
    message_type: str = Field(default="meddelande", min_length=1, max_length=100)
    case_reference: str | None = Field(default=None, max_length=255)
    support_info: SupportInfoIn


class ShipmentAccepted(BaseModel):
    id: str
    state: str
    status_url: str


class ChannelOptionOut(BaseModel):
    channel: Channel
    eligible: bool
    codes: list[str]
    reason: str


class NoticeOptionOut(BaseModel):
    notice: str
    with_: list[str] = Field(alias="with")
    eligible: bool
    codes: list[str]
    reason: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class DecisionOut(BaseModel):
    rule: str
    summary: str
    channels: list[Channel]
    retry_at: datetime | None
    options: list[ChannelOptionOut]
    notices: list[NoticeOptionOut]


class EventOut(BaseModel):
    at: datetime
    type: str
    state: str | None
    channel: str | None
    message: str
    details: dict[str, Any]


class AttemptOut(BaseModel):
    attempt: int
    channel: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None = Field(description="NULL while running, or when the worker died during the attempt.")
    detail: str | None
    external_ref: str | None


class RecipientOut(BaseModel):
    id: str
    kind: str


class ShipmentOut(BaseModel):
    id: str
    state: str
    channel: str | None
    sender: str
    recipient: RecipientOut
    subject: str
    confidentiality: str
    message_type: str
    case_reference: str | None
    accepted_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    decision: DecisionOut | None
    result: dict[str, Any] | None
    events: list[EventOut]
    attempts: list[AttemptOut]


class ChannelPrecheckOut(BaseModel):
    recipient: RecipientOut
    sender: str
    channel: Channel | None = Field(description="The channel that would be tried first, if any.")
    decision: DecisionOut


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, str]] | None = None
