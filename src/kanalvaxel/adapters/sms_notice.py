"""SMS notices beside a delivered letter, through the HTTP SMS gateway.

The gateway takes an Idempotency-Key (the shipment id), so a resend after a crash is answered with the same
message instead of a second SMS; the send journal covers gateways that ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from kanalvaxel.adapters.sms import SmsError, SmsGateway, SmsGatewayError, normalise_mobile, notice_text
from kanalvaxel.domain.masking import mask_mobile
from kanalvaxel.domain.model import Notice, is_confidential
from kanalvaxel.ports import Clock, DeliveryOutcome, NoticeJob, OutcomeKind, SendJournal, SentRecord


class SmsNotifier:
    notice = Notice.SMS

    def __init__(
        self,
        gateway: SmsGateway,
        journal: SendJournal,
        clock: Clock,
        *,
        max_parts: int,
        sender_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._gateway = gateway
        self._journal = journal
        self._clock = clock
        self._max_parts = max_parts
        self._sender_ids = dict(sender_ids or {})

    def notify(self, job: NoticeJob) -> DeliveryOutcome:
        if is_confidential(job.letter.confidentiality):
            # The rule engine never queues one; this guard keeps it so whatever a policy or a bug says.
            return DeliveryOutcome(OutcomeKind.FAILED, "Innehållet är sekretessbelagt: ingen SMS-avisering.")
        if job.letter.recipient_info.protected_identity:
            return DeliveryOutcome(
                OutcomeKind.FAILED, "Mottagaren har skyddad identitet: ingen SMS-avisering."
            )
        mobile = job.letter.recipient_info.mobile
        if not mobile:
            return DeliveryOutcome(OutcomeKind.FAILED, "Inget mobilnummer angivet.")
        try:
            to = normalise_mobile(mobile)
        except SmsError as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"Mobilnumret kan inte användas: {exc}")
        channel = self.notice.value
        if (done := self._journal.sent(job.shipment_id, channel)) is not None:
            return DeliveryOutcome(OutcomeKind.DELIVERED, done.detail, done.external_ref, data=done.data)
        masked = mask_mobile(to)
        text = notice_text(
            job.sender.name, job.letter.subject, job.via, job.letter.support_info, max_parts=self._max_parts
        )
        try:
            receipt = self._gateway.send(
                to, text, reference=job.shipment_id, sender_id=self._sender_ids.get(job.sender.key)
            )
        except SmsGatewayError as exc:
            kind = OutcomeKind.RETRY if exc.retryable else OutcomeKind.FAILED
            wait = timedelta(seconds=exc.retry_after) if exc.retryable and exc.retry_after else None
            return DeliveryOutcome(
                kind, f"SMS-tjänsten svarade: {exc}", retry_after=wait, data={"mobile": masked}
            )
        except SmsError as exc:
            return DeliveryOutcome(
                OutcomeKind.FAILED, f"SMS kunde inte skickas: {exc}", data={"mobile": masked}
            )
        parts = f"{receipt.parts} del{'ar' if receipt.parts != 1 else ''}"
        detail = f"Till {masked} ({parts}, id {receipt.message_id})."
        data = {"mobile": masked, "sms_message_id": receipt.message_id, "parts": str(receipt.parts)}
        self._journal.record(
            job.shipment_id, channel, SentRecord(receipt.message_id, detail, data, self._clock.now())
        )
        return DeliveryOutcome(OutcomeKind.DELIVERED, detail, receipt.message_id, data=data)
