from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    BodyType,
    Channel,
    Confidentiality,
    Letter,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.entrypoints.api.deps import ClientDep, ContainerDep
from kanalvaxel.entrypoints.api.errors import responses
from kanalvaxel.entrypoints.api.routes.shipments import decision_out, resolve_sender
from kanalvaxel.entrypoints.api.schemas import ChannelPrecheckOut, RecipientOut

router = APIRouter(prefix="/v1/recipients", tags=["recipients"])


@router.get(
    "/{recipient_id}/channels",
    response_model=ChannelPrecheckOut,
    summary="Which channel a letter to this recipient would take now, and why",
    description="Asks the registers as a real letter would, but creates nothing.",
    operation_id="precheck_channels",
    responses=responses(401, 403, 422, 503),
)
def precheck(
    recipient_id: str,
    c: ContainerDep,
    client: ClientDep,
    sender: Annotated[str | None, Query()] = None,
    confidentiality: Annotated[Confidentiality, Query()] = Confidentiality.PUBLIC,
    message_type: Annotated[str, Query(min_length=1, max_length=100)] = "meddelande",
    has_postal_address: Annotated[
        bool, Query(description="The case system has a name and postal address.")
    ] = False,
    has_email: Annotated[bool, Query()] = False,
    has_mobile: Annotated[bool, Query()] = False,
    protected_identity: Annotated[bool, Query()] = False,
) -> ChannelPrecheckOut:
    rid = RecipientId.parse(recipient_id, today=c.clock.now().date(), field="recipient_id")
    letter = Letter(
        sender=resolve_sender(sender, client),
        recipient=rid,
        subject="(förhandskontroll)",
        body="",
        body_type=BodyType.TEXT,
        confidentiality=confidentiality,
        message_type=message_type,
        support_info=SupportInfo("(förhandskontroll)"),
        recipient_info=RecipientInfo(
            name="(namn)" if has_postal_address else None,
            postal_address=PostalAddress(("(adress)",), "000 00", "(ort)") if has_postal_address else None,
            email="precheck@example.invalid" if has_email else None,
            mobile="+46700000000" if has_mobile else None,
            protected_identity=protected_identity,
        ),
    )
    decision = c.queries.precheck(client, letter)
    out = decision_out(decision)
    assert out is not None
    channels = decision["channels"]
    assert isinstance(channels, list)
    return ChannelPrecheckOut(
        recipient=RecipientOut(id=rid.value, kind=rid.kind.value),
        sender=letter.sender,
        channel=Channel(channels[0]) if channels else None,
        decision=out,
    )
