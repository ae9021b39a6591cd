"""Close print batches by size or age and hand them to the vendor's spool, exactly once per letter.

A closer marks the batch CLOSING under a lease (so a letter can no longer join it), publishes it to the
spool with no transaction open (publishing is idempotent), then marks it CLOSED and the letters in it
DELIVERED. A closer that dies leaves a CLOSING batch whose lease runs out; the next closer redoes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from kanalvaxel.domain.errors import ConflictError, NotFoundError
from kanalvaxel.domain.model import Channel, EventType, ShipmentState, check_transition
from kanalvaxel.ports import (
    Clock,
    EventRecord,
    PrintBatchInfo,
    PrintBatchRecord,
    PrintLetterRecord,
    PrintSpool,
)
from kanalvaxel.services import UowFactory
from kanalvaxel.services.codec import decision_from_json
from kanalvaxel.services.notices import notices_to_send

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_letters: int
    max_bytes: int
    max_age: timedelta
    #: How long a closer holds a CLOSING batch. The worker's lease: a killed closer's batch is taken up
    #: again as soon as a killed worker's letters are, not minutes later.
    closing_lease: timedelta


class PrintBatchCloser:
    def __init__(self, uow: UowFactory, clock: Clock, spool: PrintSpool, limits: BatchLimits) -> None:
        self._uow = uow
        self._clock = clock
        self._spool = spool
        self._limits = limits

    def is_full(self, batch: PrintBatchRecord) -> bool:
        return batch.letter_count >= self._limits.max_letters or batch.total_bytes >= self._limits.max_bytes

    def close_due(self) -> list[str]:
        """Close every batch that is full or old enough (and finish abandoned closings). Returns paths."""
        now = self._clock.now()
        with self._uow() as uow:
            due = uow.due_print_batches(
                now, self._limits.max_age, self._limits.max_letters, self._limits.max_bytes
            )
        paths = []
        for batch in due:
            path = self.close(batch.id)
            if path is not None:
                paths.append(path)
        return paths

    def batches(self, *, include_closed: bool = False, limit: int = 100) -> list[PrintBatchRecord]:
        """Batches newest first: those still collecting or being closed, and closed ones if asked."""
        with self._uow() as uow:
            return list(uow.print_batches(() if include_closed else ("OPEN", "FULL", "CLOSING"), limit))

    def close_now(self, batch_id: str) -> str:
        """An operator's "send what is collected now": close an open batch at once, whatever its age.

        Raises NotFoundError for an unknown batch, ConflictError for one that is empty, already closed,
        or being closed by a closer whose lease still holds. Returns the published path.
        """
        with self._uow() as uow:
            batch = uow.print_batch(batch_id)
        if batch is None:
            raise NotFoundError(f"no print batch {batch_id}")
        if batch.status == "CLOSED":
            raise ConflictError(f"print batch {batch_id} is already closed: {batch.path}")
        if batch.letter_count == 0:
            raise ConflictError(f"print batch {batch_id} holds no letters")
        path = self.close(batch_id)
        if path is None:
            raise ConflictError(f"print batch {batch_id} is being closed by another closer right now")
        return path

    def close_all_open(self) -> list[str]:
        """Close every open batch that holds letters, now. Returns the published paths."""
        with self._uow() as uow:
            open_ = uow.print_batches(("OPEN", "FULL"), 10_000)
        return [p for b in open_ if b.letter_count > 0 and (p := self.close(b.id)) is not None]

    def close(self, batch_id: str) -> str | None:
        """Close one batch now. Returns its published path, or None when another closer has it."""
        now = self._clock.now()
        with self._uow() as uow:
            if not uow.start_closing(batch_id, now, self._limits.closing_lease):
                return None
            uow.commit()
        with self._uow() as uow:
            batch = uow.print_batch(batch_id)
            items = uow.print_items(batch_id)
        assert batch is not None
        letters = [
            PrintLetterRecord(
                sequence=seq,
                shipment_id=str(rec["shipment_id"]),
                staged_name=str(rec["staged_name"]),
                pages=int(str(rec["pages"])),
                size_bytes=int(str(rec["size_bytes"])),
                recipient_name=str(rec["recipient_name"]),
                address_lines=tuple(str(x) for x in rec["address_lines"]),  # type: ignore[attr-defined]
                postal_code=str(rec["postal_code"]),
                city=str(rec["city"]),
                country=None if rec.get("country") is None else str(rec["country"]),
                sender_organisation_number=str(rec["sender_organisation_number"]),
                sender_name=str(rec["sender_name"]),
                case_reference=None if rec.get("case_reference") is None else str(rec["case_reference"]),
            )
            for _sid, seq, rec in items
        ]
        path = self._spool.publish(PrintBatchInfo(batch.id, batch.sender_key, batch.opened_at, now, letters))
        done = self._clock.now()
        with self._uow() as uow:
            shipment_ids = uow.finish_closing(batch_id, path, done)
            for sid in shipment_ids:
                shp = uow.shipment(sid, for_update=True)
                if shp is None or shp.state != ShipmentState.HANDED_OVER.value:
                    continue  # already delivered by an earlier closer of this batch
                check_transition(ShipmentState.HANDED_OVER, ShipmentState.DELIVERED)
                shp.state = ShipmentState.DELIVERED.value
                shp.finished_at = done
                shp.updated_at = done
                if shp.decision is not None:
                    notices = notices_to_send(decision_from_json(shp.decision)[0], Channel.PRINT)
                    if notices:
                        # The SMS goes once the letter is with the printer, not when it joined a batch.
                        shp.result = {**(shp.result or {}), "notices": notices}
                        uow.enqueue(sid, done, done)
                uow.save_shipment(shp)
                uow.add_event(
                    sid,
                    EventRecord(
                        done,
                        EventType.DELIVERED.value,
                        f"Tryckfil {batch.id} stängd och lämnad till tryckeriet.",
                        shp.state,
                        Channel.PRINT.value,
                        {"print_batch": batch.id, "path": path},
                    ),
                )
            uow.commit()
        log.info("print batch %s closed with %d letters: %s", batch.id, len(letters), path)
        return path
