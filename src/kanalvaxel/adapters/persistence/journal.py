"""The send journal (ports.SendJournal) on the unit of work: each call is its own short transaction."""

from __future__ import annotations

from kanalvaxel.ports import SentRecord
from kanalvaxel.services import UowFactory


class UowSendJournal:
    def __init__(self, uow: UowFactory) -> None:
        self._uow = uow

    def sent(self, shipment_id: str, channel: str) -> SentRecord | None:
        with self._uow(read_only=True) as uow:
            return uow.sent_record(shipment_id, channel)

    def record(self, shipment_id: str, channel: str, record: SentRecord) -> None:
        with self._uow() as uow:
            uow.add_sent_record(shipment_id, channel, record)
            uow.commit()
