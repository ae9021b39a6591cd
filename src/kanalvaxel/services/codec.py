"""Letters to and from the JSON we store (attachments are stored apart, as bytes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kanalvaxel.domain.identity import RecipientId, RecipientKind
from kanalvaxel.domain.model import (
    Attachment,
    BodyType,
    Channel,
    Confidentiality,
    Letter,
    Notice,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.domain.rules import (
    ChannelOption,
    Decision,
    LookupState,
    Mailbox,
    MailboxLookup,
    NoticeOption,
)


def letter_to_json(letter: Letter) -> dict[str, Any]:
    info = letter.recipient_info
    addr = info.postal_address
    return {
        "sender": letter.sender,
        "recipient": {"id": letter.recipient.value, "kind": letter.recipient.kind.value},
        "subject": letter.subject,
        "body": letter.body,
        "body_type": letter.body_type.value,
        "confidentiality": letter.confidentiality.value,
        "message_type": letter.message_type,
        "case_reference": letter.case_reference,
        "support_info": {
            "text": letter.support_info.text,
            "url": letter.support_info.url,
            "phone": letter.support_info.phone,
            "email": letter.support_info.email,
        },
        "recipient_info": {
            "name": info.name,
            "postal_address": None
            if addr is None
            else {
                "lines": list(addr.lines),
                "postal_code": addr.postal_code,
                "city": addr.city,
                "country": addr.country,
            },
            "email": info.email,
            "mobile": info.mobile,
            "smime_certificate_pem": info.smime_certificate_pem,
            "protected_identity": info.protected_identity,
        },
    }


def letter_from_json(data: Mapping[str, Any], attachments: Sequence[Attachment]) -> Letter:
    info = data["recipient_info"]
    addr = info.get("postal_address")
    si = data["support_info"]
    return Letter(
        sender=data["sender"],
        recipient=RecipientId(data["recipient"]["id"], RecipientKind(data["recipient"]["kind"])),
        subject=data["subject"],
        body=data["body"],
        body_type=BodyType(data["body_type"]),
        confidentiality=Confidentiality(data["confidentiality"]),
        message_type=data["message_type"],
        case_reference=data.get("case_reference"),
        support_info=SupportInfo(si["text"], si.get("url"), si.get("phone"), si.get("email")),
        attachments=tuple(attachments),
        recipient_info=RecipientInfo(
            name=info.get("name"),
            postal_address=None
            if addr is None
            else PostalAddress(tuple(addr["lines"]), addr["postal_code"], addr["city"], addr.get("country")),
            email=info.get("email"),
            mobile=info.get("mobile"),
            smime_certificate_pem=info.get("smime_certificate_pem"),
            protected_identity=bool(info.get("protected_identity", False)),
        ),
    )


def decision_to_json(decision: Decision, mailbox: MailboxLookup | None) -> dict[str, Any]:
    return {
        "rule": decision.rule,
        "summary": decision.summary(),
        "retry_at": decision.retry_at.isoformat() if decision.retry_at else None,
        "email_notice_only": decision.email_notice_only,
        "channels": [c.value for c in decision.channels],
        "options": [
            {"channel": o.channel.value, "eligible": o.eligible, "codes": list(o.codes), "reason": o.reason}
            for o in decision.options
        ],
        "notices": [
            {
                "notice": n.notice.value,
                "with": sorted(c.value for c in n.with_channels),
                "eligible": n.eligible,
                "codes": list(n.codes),
                "reason": n.reason,
            }
            for n in decision.notices
        ],
        "mailbox": None if mailbox is None else mailbox_to_json(mailbox),
    }


def decision_from_json(data: Mapping[str, Any]) -> tuple[Decision, MailboxLookup | None]:
    decision = Decision(
        rule=data["rule"],
        options=tuple(
            ChannelOption(Channel(o["channel"]), o["eligible"], tuple(o["codes"]), o["reason"])
            for o in data["options"]
        ),
        notices=tuple(
            NoticeOption(
                Notice(n["notice"]),
                frozenset(Channel(c) for c in n["with"]),
                n["eligible"],
                tuple(n["codes"]),
                n["reason"],
            )
            for n in data.get("notices", [])
        ),
        retry_at=datetime.fromisoformat(data["retry_at"]) if data.get("retry_at") else None,
        email_notice_only=bool(data.get("email_notice_only", False)),
    )
    mb = data.get("mailbox")
    return decision, None if mb is None else mailbox_from_json(mb)


def mailbox_to_json(lookup: MailboxLookup) -> dict[str, Any]:
    mb = lookup.mailbox
    return {
        "state": lookup.state.value,
        "error": lookup.error,
        "mailbox": None
        if mb is None
        else {
            "has_mailbox": mb.has_mailbox,
            "pending": mb.pending,
            "sender_accepted": mb.sender_accepted,
            "operator_id": mb.operator_id,
            "operator_name": mb.operator_name,
            "service_address": mb.service_address,
        },
    }


def mailbox_from_json(data: Mapping[str, Any]) -> MailboxLookup:
    mb = data.get("mailbox")
    return MailboxLookup(
        state=LookupState(data["state"]),
        error=data.get("error"),
        mailbox=None if mb is None else Mailbox(**mb),
    )
