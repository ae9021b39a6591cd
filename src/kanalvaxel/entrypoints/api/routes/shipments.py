from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    Attachment,
    BodyType,
    Letter,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.entrypoints.api.deps import ClientDep, ContainerDep
from kanalvaxel.entrypoints.api.errors import responses
from kanalvaxel.entrypoints.api.schemas import (
    AttemptOut,
    DecisionOut,
    EventOut,
    RecipientOut,
    ShipmentAccepted,
    ShipmentIn,
    ShipmentOut,
)
from kanalvaxel.ports import ClientRecord
from kanalvaxel.services.queries import ShipmentView

router = APIRouter(prefix="/v1/shipments", tags=["shipments"])


def resolve_sender(requested: str | None, client: ClientRecord) -> str:
    if requested:
        return requested
    if len(client.senders) == 1:
        return client.senders[0]
    raise ValidationError("sender", f"required: this client may send as {', '.join(client.senders)}")


def to_letter(body: ShipmentIn, client: ClientRecord, today: date) -> Letter:
    rcpt = body.recipient
    attachments = []
    for i, a in enumerate(body.attachments):
        try:
            content = base64.b64decode(a.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"attachments[{i}].content_base64", "is not valid base64") from None
        attachments.append(Attachment(a.filename, content, a.content_type))
    addr = rcpt.postal_address
    return Letter(
        sender=resolve_sender(body.sender, client),
        recipient=RecipientId.parse(rcpt.id, today=today, field="recipient.id"),
        subject=body.subject,
        body=body.body.content,
        body_type=BodyType(body.body.content_type),
        confidentiality=body.confidentiality,
        message_type=body.message_type,
        case_reference=body.case_reference,
        support_info=SupportInfo(
            body.support_info.text, body.support_info.url, body.support_info.phone, body.support_info.email
        ),
        attachments=tuple(attachments),
        recipient_info=RecipientInfo(
            name=rcpt.name,
            postal_address=None
            if addr is None
            else PostalAddress(tuple(addr.lines), addr.postal_code, addr.city, addr.country),
            email=rcpt.email,
            mobile=rcpt.mobile,
            smime_certificate_pem=rcpt.smime_certificate,
            protected_identity=rcpt.protected_identity,
        ),
    )


def request_hash(body: ShipmentIn) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: From an accepted letter to its state: what a client (and schemathesis' stateful tests) follows next.
_TO_SHIPMENT = {
    "GetShipment": {
        "operationId": "get_shipment",
        "parameters": {"shipment_id": "$response.body#/id"},
        "description": "The shipment's state, channel, decision and timeline.",
    }
}
_ACCEPTED_HEADERS = {
    "Location": {"description": "The shipment's status URL.", "schema": {"type": "string"}},
}


@router.post(
    "",
    status_code=202,
    response_model=ShipmentAccepted,
    operation_id="post_shipment",
    summary="Send a letter",
    description=(
        "Accepts one letter to one recipient. It is stored and queued before the answer is sent. "
        "The same Idempotency-Key with the same body returns the same shipment (200, "
        "`Idempotent-Replayed: true`); with another body, 409."
    ),
    responses={
        202: {
            "description": "Accepted: stored and queued.",
            "links": _TO_SHIPMENT,
            "headers": _ACCEPTED_HEADERS,
        },
        200: {
            "model": ShipmentAccepted,
            "description": "The same request again (idempotent replay): the shipment it made before.",
            "links": _TO_SHIPMENT,
            "headers": {
                **_ACCEPTED_HEADERS,
                "Idempotent-Replayed": {"description": "Always `true`.", "schema": {"type": "string"}},
            },
        },
        **responses(400, 401, 403, 409, 413, 422, 503),
    },
)
def post_shipment(
    body: ShipmentIn,
    request: Request,
    response: Response,
    c: ContainerDep,
    client: ClientDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=255)],
) -> ShipmentAccepted:
    letter = to_letter(body, client, c.clock.now().date())
    submitted = c.intake.submit(client, idempotency_key, request_hash(body), letter)
    shp = submitted.shipment
    url = str(request.url_for("get_shipment", shipment_id=shp.id).path)
    response.headers["Location"] = url
    if not submitted.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return ShipmentAccepted(id=shp.id, state=shp.state, status_url=url)


def decision_out(data: dict[str, Any] | None) -> DecisionOut | None:
    if data is None:
        return None
    return DecisionOut.model_validate({k: data[k] for k in DecisionOut.model_fields if k in data})


def shipment_out(view: ShipmentView) -> ShipmentOut:
    s = view.shipment
    return ShipmentOut(
        id=s.id,
        state=s.state,
        channel=s.channel,
        sender=s.sender_key,
        recipient=RecipientOut(id=s.recipient_id, kind=s.recipient_kind),
        subject=s.subject,
        confidentiality=s.confidentiality,
        message_type=s.message_type,
        case_reference=s.case_reference,
        accepted_at=s.accepted_at,
        updated_at=s.updated_at,
        finished_at=s.finished_at,
        decision=decision_out(s.decision),
        result=s.result,
        events=[
            EventOut(
                at=e.at,
                type=e.type,
                state=e.state,
                channel=e.channel,
                message=e.message,
                details=dict(e.details),
            )
            for e in view.events
        ],
        attempts=[
            AttemptOut(
                attempt=a.attempt_no,
                channel=a.channel,
                started_at=a.started_at,
                finished_at=a.finished_at,
                outcome=a.outcome,
                detail=a.detail,
                external_ref=a.external_ref,
            )
            for a in view.attempts
        ],
    )


@router.get(
    "/{shipment_id}",
    response_model=ShipmentOut,
    operation_id="get_shipment",
    summary="A shipment's state, channel, decision and timeline",
    responses=responses(401, 404, 503),
)
def get_shipment(shipment_id: str, c: ContainerDep, client: ClientDep) -> ShipmentOut:
    return shipment_out(c.queries.shipment(client, shipment_id))
