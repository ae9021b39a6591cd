"""The Mina meddelanden channel: sign the letter as a v3 SignedDelivery and hand it to a relay (förmedlare).

The relay is our own formedlare (embedded) or any relay speaking distributeSecure (remote); both sit behind
`formedlare.api.RelayApi`. Handing over is idempotent because the delivery is deterministic for a shipment
(its message id and correlation id are the shipment id, and RSA PKCS#1 v1.5 signatures are deterministic)
and the relay answers a repeated delivery with the same distribution id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from formedlare.api import (
    DeliveryRefusedError,
    DistributionState,
    RelayApi,
    RelayUnavailableError,
    UnknownDistributionError,
)
from formedlare.errors import FormedlareError
from formedlare.mm import (
    AttachmentContent,
    DeliveryContent,
    MessageContent,
    SigningIdentity,
    sign_delivery,
)
from kanalvaxel.domain.model import Channel, Letter
from kanalvaxel.ports import DeliveryJob, DeliveryOutcome, OutcomeKind, SenderInfo

log = logging.getLogger(__name__)

#: The only language every mailbox operator is known to accept (every public implementation sends it).
LANGUAGE = "svSE"


def delivery_content(shipment_id: str, letter: Letter, sender: SenderInfo) -> DeliveryContent:
    """The v3 delivery for one letter. Message id and correlation id are the shipment id: stable on resend."""
    support = letter.support_info
    message = MessageContent(
        message_id=shipment_id,
        subject=letter.subject,
        body=letter.body.encode("utf-8"),
        body_content_type=letter.body_type.value,
        support_text=support.text,
        support_url=support.url,
        support_phone=support.phone,
        support_email=support.email,
        language=LANGUAGE,
        attachments=tuple(
            AttachmentContent(filename=a.filename, content_type=a.content_type, data=a.content)
            for a in letter.attachments
        ),
    )
    return DeliveryContent(
        sender_id="16" + sender.organisation_number,
        sender_name=sender.name,
        recipient_id=letter.recipient.value,
        messages=(message,),
        reference=letter.case_reference,
        correlation_id=shipment_id,
    )


class MinaMeddelandenChannel:
    channel = Channel.MINA_MEDDELANDEN

    def __init__(
        self,
        relay: RelayApi,
        signers: Mapping[str, SigningIdentity],
        *,
        poll: timedelta = timedelta(seconds=5),
        poll_max: timedelta = timedelta(minutes=10),
    ) -> None:
        self._relay = relay
        self._signers = dict(signers)
        self._poll = poll
        self._poll_max = poll_max

    def send(self, job: DeliveryJob) -> DeliveryOutcome:
        signer = self._signers.get(job.sender.key)
        if signer is None:
            return DeliveryOutcome(
                OutcomeKind.FAILED,
                f"Avsändaren {job.sender.key!r} har inget certifikat för att signera digital post.",
            )
        operator: dict[str, str] = {}
        if job.mailbox is not None and job.mailbox.mailbox is not None:
            mb = job.mailbox.mailbox
            if mb.operator_name:
                operator["operator_name"] = mb.operator_name
            if mb.operator_id:
                operator["operator_id"] = mb.operator_id
        try:
            signed = sign_delivery(signer, delivery_content(job.shipment_id, job.letter, job.sender))
            distribution_id = self._relay.distribute_secure(signed)
        except DeliveryRefusedError as exc:
            return DeliveryOutcome(
                OutcomeKind.FAILED, f"Förmedlaren vägrade ta emot försändelsen ({exc.code}): {exc.reason}"
            )
        except RelayUnavailableError as exc:
            return DeliveryOutcome(OutcomeKind.RETRY, f"Förmedlaren kunde inte nås: {exc}")
        except FormedlareError as exc:
            log.exception("signing or handing over shipment %s failed", job.shipment_id)
            retry = OutcomeKind.RETRY if exc.retryable else OutcomeKind.FAILED
            return DeliveryOutcome(retry, f"Försändelsen kunde inte skapas för Mina meddelanden: {exc}")
        where = f" till {operator['operator_name']}" if "operator_name" in operator else ""
        return DeliveryOutcome(
            OutcomeKind.HANDED_OVER,
            f"Signerad och överlämnad till förmedlaren för leverans{where}.",
            external_ref=distribution_id,
            data={"distribution_id": distribution_id, **operator},
        )

    def follow_up(self, shipment_id: str, external_ref: str) -> DeliveryOutcome:
        try:
            status = self._relay.check_distribution_status(external_ref)
        except UnknownDistributionError:
            # Never fall back on this: the relay may still deliver it, and paper as well would be twice.
            return DeliveryOutcome(OutcomeKind.RETRY, "Förmedlaren känner inte igen försändelsen.")
        except FormedlareError as exc:
            return DeliveryOutcome(OutcomeKind.RETRY, f"Förmedlaren kunde inte tillfrågas: {exc}")
        data: dict[str, str] = {}
        if status.operator_name:
            data["operator_name"] = status.operator_name
        if status.operator_id:
            data["operator_id"] = status.operator_id
        if status.state is DistributionState.DELIVERED:
            name = status.operator_name or "brevlådeoperatören"
            detail = f"Levererad till mottagarens brevlåda hos {name}."
            return DeliveryOutcome(OutcomeKind.DELIVERED, detail, external_ref, data=data)
        if status.state is DistributionState.FAILED:
            return DeliveryOutcome(OutcomeKind.FAILED, status.detail, external_ref, data=data)
        return DeliveryOutcome(OutcomeKind.HANDED_OVER, status.detail, external_ref, data=data)

    def follow_up_after(self, handed_over_for: timedelta) -> timedelta:
        # Quick at first (most letters are delivered within seconds), then a tenth of the age, capped.
        return min(self._poll_max, max(self._poll, handed_over_for / 10))
