"""Request and response bodies of the REST API. Unknown fields are refused everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.model import Channel, Confidentiality
from kanalvaxel.domain.text import (
    FILE_NAME_PATTERN,
    ONE_LINE_PATTERN,
    RUNNING_TEXT_PATTERN,
    check_running_text,
)

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


#: One-line fields (subject, names, address lines, ...) and running text (body, support text): the domain's
#: rules (kanalvaxel.domain.text), published in the schema; checked at intake, naming the field.
_ONE_LINE: dict[str, Any] = {"pattern": ONE_LINE_PATTERN}
_RUNNING_TEXT: dict[str, Any] = {"pattern": RUNNING_TEXT_PATTERN}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # Every string, even those the domain has no rule of its own for (an e-mail address, a PEM), holds at
        # least running text: no NUL, no other control character, no bidi override.
        texts = value if isinstance(value, list) else [value]
        for t in texts:
            if isinstance(t, str):
                try:
                    check_running_text("value", t)
                except ValidationError as exc:
                    raise ValueError(exc.message) from None
        return value


class PostalAddressIn(_In):
    lines: list[Annotated[str, Field(min_length=1, max_length=100, json_schema_extra=_ONE_LINE)]] = Field(
        min_length=1, max_length=4, description="Street lines: c/o, street, box. None of them empty."
    )
    postal_code: str = Field(min_length=1, max_length=20, examples=["123 45"], json_schema_extra=_ONE_LINE)
    city: str = Field(min_length=1, max_length=100, json_schema_extra=_ONE_LINE)
    country: str | None = Field(
        default=None, max_length=100, description="Leave out for Sweden.", json_schema_extra=_ONE_LINE
    )


class RecipientIn(_In):
    id: str = Field(
        description="Personnummer, samordningsnummer or organisationsnummer; 10 or 12 digits, dash allowed.",
        examples=["19121212-1212"],
    )
    name: str | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_ONE_LINE)
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
    content: str = Field(
        default="",
        description="HTML is sanitised: no scripts, styles, images or forms. CR LF, CR, U+0085, U+2028 and "
        "U+2029 become LF; zero-width spaces, word joiners and byte-order marks are removed.",
        json_schema_extra=_RUNNING_TEXT,
    )


class AttachmentIn(_In):
    filename: str = Field(
        min_length=1,
        max_length=255,
        description='A file name, not a path: none of / \\ : * ? " < > |, not . or .., no leading dot, no '
        "trailing dot or space, no device name (CON, NUL, COM1, ...); full-width forms count as what they "
        "look like.",
        json_schema_extra={"pattern": FILE_NAME_PATTERN},
    )
    content_type: Literal["application/pdf"] = "application/pdf"
    content_base64: str = Field(description="The PDF, base64-encoded.")


class SupportInfoIn(_In):
    text: str = Field(
        min_length=1,
        max_length=1024,
        description="Who the recipient can ask, shown with the letter.",
        json_schema_extra=_RUNNING_TEXT,
    )
    url: str | None = Field(default=None, max_length=255, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$")
    phone: str | None = Field(default=None, max_length=255, json_schema_extra=_ONE_LINE)
    email: str | None = Field(
        default=None, min_length=5, max_length=256, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )


class ShipmentIn(_In):
    sender: str | None = Field(
        default=None, description="Sender identity key. May be left out when the client is bound to one only."
    )
    recipient: RecipientIn
    subject: str = Field(min_length=1, max_length=255, json_schema_extra=_ONE_LINE)
    body: BodyIn = BodyIn()
    attachments: list[AttachmentIn] = Field(default_factory=list)
    confidentiality: Confidentiality
    message_type: str = Field(default="meddelande", min_length=1, max_length=100, json_schema_extra=_ONE_LINE)
    case_reference: str | None = Field(default=None, max_length=255, json_schema_extra=_ONE_LINE)
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
