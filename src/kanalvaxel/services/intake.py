"""Submit a letter: check it, store it and queue it in one transaction ("accepted" = durably queued)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from kanalvaxel.domain.errors import ConflictError, ForbiddenError, ValidationError
from kanalvaxel.domain.model import EventType, Letter, ShipmentState
from kanalvaxel.domain.text import check_texts
from kanalvaxel.ports import (
    ClientRecord,
    Clock,
    DuplicateIdempotencyKeyError,
    EventRecord,
    SenderInfo,
    ShipmentRecord,
)
from kanalvaxel.services import UowFactory
from kanalvaxel.services.codec import letter_to_json
from kanalvaxel.services.content import ContentLimits, check_letter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    shipment: ShipmentRecord
    created: bool  # False: an earlier request with the same key and body made it


class IntakeService:
    def __init__(
        self, uow: UowFactory, clock: Clock, limits: ContentLimits, senders: Mapping[str, SenderInfo]
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._limits = limits
        self._senders = senders

    def submit(
        self, client: ClientRecord, idempotency_key: str, request_hash: str, letter: Letter
    ) -> Submitted:
        """Store and queue `letter`.

        The same key with the same request hash returns the same shipment; with another hash it raises
        ConflictError. Raises ValidationError or ForbiddenError, writing nothing."""
        if not idempotency_key or len(idempotency_key) > 255:
            raise ValidationError("Idempotency-Key", "must be 1 to 255 characters")
        if letter.sender not in self._senders:
            raise ValidationError("sender", f"unknown sender identity {letter.sender!r}")
        if letter.sender not in client.senders:
            raise ForbiddenError(f"this client may not send as {letter.sender!r}")
        existing = self._by_key(client, idempotency_key)
        if existing is not None:
            return self._same(existing, request_hash)
        letter = check_letter(check_texts(letter), self._limits)
        now = self._clock.now()
        record = ShipmentRecord(
            id=str(uuid.uuid4()),
            client_id=client.id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            sender_key=letter.sender,
            recipient_id=letter.recipient.value,
            recipient_kind=letter.recipient.kind.value,
            subject=letter.subject,
            confidentiality=letter.confidentiality.value,
            message_type=letter.message_type,
            case_reference=letter.case_reference,
            state=ShipmentState.ACCEPTED.value,
            channel=None,
            channel_index=0,
            decision=None,
            result=None,
            attempts=0,
            accepted_at=now,
            updated_at=now,
        )
        content = letter_to_json(letter)
        accepted = EventRecord(
            at=now,
            type=EventType.ACCEPTED.value,
            message="Försändelsen togs emot och köades för leverans.",
            state=ShipmentState.ACCEPTED.value,
            details={"attachments": len(letter.attachments)},
        )
        # Everything is ready before the transaction begins: on SQLite it holds the one writer lock.
        try:
            with self._uow() as uow:
                uow.add_shipment(record, content, letter.attachments)
                uow.add_event(record.id, accepted)
                uow.enqueue(record.id, not_before=now, now=now)
                uow.commit()
        except DuplicateIdempotencyKeyError:
            # Another request with the same key won the race; it is committed, so we can read it.
            existing = self._by_key(client, idempotency_key)
            assert existing is not None
            return self._same(existing, request_hash)
        log.info("shipment %s accepted (client %s, sender %s)", record.id, client.name, letter.sender)
        return Submitted(record, created=True)

    def _by_key(self, client: ClientRecord, idempotency_key: str) -> ShipmentRecord | None:
        with self._uow(read_only=True) as uow:
            return uow.shipment_by_idempotency_key(client.id, idempotency_key)

    @staticmethod
    def _same(existing: ShipmentRecord, request_hash: str) -> Submitted:
        if existing.request_hash != request_hash:
            raise ConflictError(
                "this Idempotency-Key was already used with a different request body "
                f"(shipment {existing.id})"
            )
        return Submitted(existing, created=False)
