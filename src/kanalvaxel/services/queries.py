"""Read models: a shipment as a client sees it, and the channel precheck."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kanalvaxel.domain.errors import ForbiddenError, NotFoundError, ValidationError
from kanalvaxel.domain.masking import mask_identity_numbers
from kanalvaxel.domain.model import Letter
from kanalvaxel.domain.rules import EMAIL_CHANNELS, Policy, decide
from kanalvaxel.ports import AttemptRecord, ClientRecord, Clock, EventRecord, SenderInfo, ShipmentRecord
from kanalvaxel.services import UowFactory
from kanalvaxel.services.codec import decision_to_json
from kanalvaxel.services.facts import FactsGatherer


@dataclass(frozen=True, slots=True)
class InDoubtLetter:
    """A letter whose e-mail went out whole but got no final SMTP reply: someone has to decide."""

    shipment_id: str
    case_reference: str | None  # identity numbers in it masked
    sender_key: str
    channel: str
    handed_over_at: str | None
    message_id: str | None  # what to look for in the relay's log
    email: str | None  # masked, as in the record


def letters_in_doubt(uow: UowFactory, limit: int = 1000) -> list[InDoubtLetter]:
    """Letters in doubt, oldest first: the address masked as in the record, identity numbers in the case
    reference masked."""
    with uow(read_only=True) as u:
        handed_over = u.handed_over(sorted(c.value for c in EMAIL_CHANNELS), limit)
    return [
        InDoubtLetter(
            shipment_id=shp.id,
            case_reference=mask_identity_numbers(shp.case_reference) if shp.case_reference else None,
            sender_key=shp.sender_key,
            channel=str(shp.channel),
            handed_over_at=_text(result, "handed_over_at"),
            message_id=_text(result, "message_id") or _text(result, "external_ref"),
            email=_text(result, "email"),
        )
        for shp in handed_over
        if (result := shp.result or {}).get("in_doubt") == "true"
    ]


def _text(result: Mapping[str, object], key: str) -> str | None:
    value = result.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ShipmentView:
    shipment: ShipmentRecord
    events: Sequence[EventRecord]
    attempts: Sequence[AttemptRecord]


class ShipmentQueries:
    def __init__(
        self,
        uow: UowFactory,
        clock: Clock,
        policy: Policy,
        senders: Mapping[str, SenderInfo],
        facts: FactsGatherer,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._policy = policy
        self._senders = senders
        self._facts = facts

    def shipment(self, client: ClientRecord, shipment_id: str) -> ShipmentView:
        """Raises NotFoundError also for another client's shipment: we do not tell which."""
        with self._uow(read_only=True) as uow:
            shp = uow.shipment(shipment_id)
            if shp is None or shp.client_id != client.id:
                raise NotFoundError(f"no shipment {shipment_id}")
            return ShipmentView(shp, uow.events(shipment_id), uow.attempts(shipment_id))

    def precheck(self, client: ClientRecord, letter: Letter) -> dict[str, object]:
        """Which channel a letter like this would take now, and why. Creates nothing."""
        sender = self._senders.get(letter.sender)
        if sender is None:
            raise ValidationError("sender", f"unknown sender identity {letter.sender!r}")
        if letter.sender not in client.senders:
            raise ForbiddenError(f"this client may not send as {letter.sender!r}")
        now = self._clock.now()
        facts = self._facts.gather(letter, sender, now)
        decision = decide(letter, facts, self._policy, now)
        return decision_to_json(decision, facts.mailbox)
