"""Work one outbox item: decide (once), try the current channel, record the outcome, retry or fall back.

Transactions are short and never span network calls. Every write that follows a send first checks that
the lease is still ours; if not, nothing is recorded and the new holder does the work again — which is
why every channel's `send` is idempotent per shipment.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kanalvaxel.domain.errors import ConflictError, NotFoundError, ValidationError
from kanalvaxel.domain.masking import mask_free_text
from kanalvaxel.domain.model import Channel, EventType, Letter, Notice, ShipmentState, check_transition
from kanalvaxel.domain.rules import CHANNEL_NAMES_SV, Decision, MailboxLookup, Policy, decide
from kanalvaxel.ports import (
    AttemptRecord,
    ChannelAdapter,
    Claim,
    Clock,
    DeliveryJob,
    DeliveryOutcome,
    EventRecord,
    FollowUpChannel,
    LeaseLostError,
    NoticeJob,
    NoticeSender,
    OutcomeKind,
    PrintBatchRecord,
    SenderInfo,
    ShipmentRecord,
    StagedLetter,
    UnitOfWork,
)
from kanalvaxel.services import UowFactory
from kanalvaxel.services.codec import decision_from_json, decision_to_json, letter_from_json
from kanalvaxel.services.facts import FactsGatherer
from kanalvaxel.services.notices import NOTICE_NAMES_SV, all_notices, notices_to_send, pending_notices
from kanalvaxel.services.print_batches import PrintBatchCloser

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts_per_channel: int = 8
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(hours=1)
    #: A work item claimed this many times without an outcome crashed its workers: give up on it.
    max_claims: int = 6
    #: A notice (SMS) is tried this many times before it is recorded as not sent.
    notice_max_attempts: int = 5
    failpoints: Mapping[str, float] = field(default_factory=dict)
    #: The worker's lease; renewed when an attempt starts, so a channel's own time bound (a share of the
    #: lease, e.g. an SMTP session) counts from the send, not from the claim. None: not renewed.
    lease: timedelta | None = None


def backoff(attempts: int, base: timedelta, cap: timedelta, salt: str) -> timedelta:
    """Exponential backoff from the stored attempt count, with a stable ±10 % spread per shipment."""
    raw = base.total_seconds() * (2 ** max(0, attempts - 1))
    spread = (int(hashlib.sha256(f"{salt}:{attempts}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF - 0.5) / 5
    return timedelta(seconds=min(cap.total_seconds(), raw * (1 + spread)))


def _name(channel: Channel | str) -> str:
    return CHANNEL_NAMES_SV[Channel(channel)]


class Dispatcher:
    def __init__(
        self,
        uow: UowFactory,
        clock: Clock,
        policy: Policy,
        senders: Mapping[str, SenderInfo],
        channels: Mapping[Channel, ChannelAdapter],
        facts: FactsGatherer,
        printing: PrintBatchCloser | None,
        settings: DispatchSettings,
        worker_name: str,
        notifiers: Mapping[Notice, NoticeSender] | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._policy = policy
        self._senders = senders
        self._channels = channels
        self._facts = facts
        self._printing = printing
        self._settings = settings
        self._worker = worker_name
        self._notifiers = dict(notifiers or {})

    # ----------------------------------------------------------------------------------------- driver

    def process(self, claim: Claim) -> None:
        """Work one claimed item to its next resting point. Never raises for delivery problems."""
        try:
            self._process(claim)
        except LeaseLostError:
            log.warning("lease on work item %s lost; another worker has it", claim.work_item_id)

    def _failpoint(self, name: str) -> None:
        pause = self._settings.failpoints.get(name)
        if pause:
            log.warning("failpoint %s: pausing %.1f s", name, pause)
            time.sleep(pause)

    def _process(self, claim: Claim) -> None:
        with self._uow() as uow:
            shp = uow.shipment(claim.shipment_id)
            content = uow.letter_content(claim.shipment_id)
        notify = (
            shp is not None
            and shp.state == ShipmentState.DELIVERED.value
            and bool(pending_notices(shp.result))
        )
        if shp is None or content is None or (ShipmentState(shp.state).terminal and not notify):
            with self._uow() as uow:
                uow.complete(claim, self._clock.now())
                uow.commit()
            return
        if claim.claims > self._settings.max_claims:
            if notify:
                self._give_up_notices(claim, shp, "Arbetet avbröts upprepade gånger.")
            else:
                self._give_up(claim, shp, "Arbetet avbröts upprepade gånger (arbetsprocessen kraschade).")
            return
        letter = letter_from_json(content[0], content[1])
        sender = self._senders.get(shp.sender_key)
        if sender is None:
            self._give_up(
                claim, shp, f"Avsändaridentiteten {shp.sender_key!r} finns inte längre i inställningarna."
            )
            return

        if notify:
            self._notify(claim, shp, letter, sender)
            return
        if shp.state == ShipmentState.HANDED_OVER.value:
            self._follow_up(claim, shp)
            return

        mailbox: MailboxLookup | None
        if shp.decision is None or shp.decision.get("retry_at"):
            decision, mailbox = self._decide(claim, shp, letter, sender)
            if decision is None:
                return
        else:
            decision, mailbox = decision_from_json(shp.decision)

        channels = decision.channels
        channel = channels[shp.channel_index]
        adapter = self._channels.get(channel)
        now = self._clock.now()
        attempt_no = shp.attempts + 1
        with self._uow() as uow:
            lease = self._settings.lease
            uow.check_lease(claim, extend_until=now + lease if lease is not None else None)
            uow.start_attempt(
                shp.id, AttemptRecord(attempt_no, channel.value, self._worker, now, None, None, None, None)
            )
            self._move(uow, shp, ShipmentState.SENDING)
            shp.attempts = attempt_no
            shp.channel = channel.value
            shp.updated_at = now
            uow.save_shipment(shp)
            uow.add_event(
                shp.id,
                EventRecord(
                    now,
                    EventType.ATTEMPT.value,
                    f"Försök {attempt_no}: {_name(channel)}.",
                    shp.state,
                    channel.value,
                    {"attempt": attempt_no},
                ),
            )
            uow.commit()

        self._failpoint("before_send")
        if adapter is None:
            outcome = DeliveryOutcome(OutcomeKind.FAILED, "Kanalen är inte konfigurerad här.")
        else:
            job = DeliveryJob(shp.id, attempt_no, channel, letter, sender, decision, mailbox)
            try:
                outcome = adapter.send(job)
            except Exception as exc:  # an adapter bug must not lose the letter: count it as a failed try
                log.exception("channel %s raised for shipment %s", channel, shp.id)
                outcome = DeliveryOutcome(OutcomeKind.RETRY, f"Internt fel i kanalen: {type(exc).__name__}")
        self._failpoint("after_send")
        self._record(claim, shp, letter, sender, decision, channel, attempt_no, outcome)

    # --------------------------------------------------------------------------------------- deciding

    def _decide(
        self, claim: Claim, shp: ShipmentRecord, letter: Letter, sender: SenderInfo
    ) -> tuple[Decision | None, MailboxLookup | None]:
        facts = self._facts.gather(letter, sender, shp.accepted_at)
        now = self._clock.now()
        decision = decide(letter, facts, self._policy, now)
        with self._uow() as uow:
            uow.check_lease(claim)
            shp.decision = decision_to_json(decision, facts.mailbox)
            shp.channel_index = 0
            shp.updated_at = now
            details: dict[str, object] = {
                "rule": decision.rule,
                "channels": [c.value for c in decision.channels],
            }
            if decision.retry_at is not None:
                self._move(uow, shp, ShipmentState.RETRY_WAIT)
                uow.save_shipment(shp)
                uow.add_event(
                    shp.id,
                    EventRecord(
                        now,
                        EventType.DECIDED.value,
                        f"{decision.summary()} Nytt försök {decision.retry_at:%Y-%m-%d %H:%M} UTC.",
                        shp.state,
                        None,
                        {**details, "retry_at": decision.retry_at.isoformat()},
                    ),
                )
                uow.complete(claim, now)
                uow.enqueue(shp.id, decision.retry_at, now)
                uow.commit()
                return None, None
            if not decision.channels:
                message = f"{decision.summary()} Ingen kanal är möjlig för denna försändelse."
                self._finish_failed(uow, shp, now, message, details)
                uow.complete(claim, now)
                uow.commit()
                return None, None
            self._move(uow, shp, ShipmentState.SENDING)
            uow.save_shipment(shp)
            uow.add_event(
                shp.id,
                EventRecord(now, EventType.DECIDED.value, decision.summary(), shp.state, None, details),
            )
            uow.commit()
        return decision, facts.mailbox

    # -------------------------------------------------------------------------------------- recording

    def _record(
        self,
        claim: Claim,
        shp: ShipmentRecord,
        letter: Letter,
        sender: SenderInfo,
        decision: Decision,
        channel: Channel,
        attempt_no: int,
        outcome: DeliveryOutcome,
    ) -> None:
        now = self._clock.now()
        close_batch: str | None = None
        with self._uow() as uow:
            uow.complete(claim, now)  # raises LeaseLostError: then nothing below is written
            shp.updated_at = now
            details: dict[str, object] = {"attempt": attempt_no, **outcome.data}
            if outcome.external_ref:
                details["external_ref"] = outcome.external_ref
            kind = outcome.kind
            n = uow.count_attempts(shp.id, channel.value)
            if kind is OutcomeKind.RETRY and n >= self._settings.max_attempts_per_channel:
                kind = OutcomeKind.FAILED
                outcome = DeliveryOutcome(
                    OutcomeKind.FAILED, f"{outcome.detail} (gav upp efter {n} försök)", outcome.external_ref
                )
            uow.finish_attempt(shp.id, attempt_no, now, kind.value, outcome.detail, outcome.external_ref)
            if kind is OutcomeKind.RETRY:
                wait = outcome.retry_after or backoff(
                    n, self._settings.backoff_base, self._settings.backoff_max, shp.id
                )
                at = now + wait
                self._move(uow, shp, ShipmentState.RETRY_WAIT)
                uow.save_shipment(shp)
                uow.add_event(
                    shp.id,
                    EventRecord(
                        now,
                        EventType.ATTEMPT.value,
                        f"{_name(channel)}: {outcome.detail}. Nytt försök {at:%Y-%m-%d %H:%M:%S} UTC.",
                        shp.state,
                        channel.value,
                        {**details, "retry_at": at.isoformat()},
                    ),
                )
                uow.enqueue(shp.id, at, now)
            if kind is OutcomeKind.DELIVERED:
                result: dict[str, object] = {"channel": channel.value, **outcome.data}
                if outcome.external_ref:
                    result["external_ref"] = outcome.external_ref
                self._delivered(uow, shp, decision, channel, outcome.detail, result, now, details)
            elif kind is OutcomeKind.HANDED_OVER:
                message = f"Överlämnad: {_name(channel)}. {outcome.detail}"
                if channel is Channel.PRINT:
                    batch, seq = self._assign_print(uow, shp, letter, sender, outcome, now)
                    shp.result = {"channel": channel.value, "print_batch": batch.id, "sequence": seq}
                    details.update(print_batch=batch.id, sequence=seq)
                    message = (
                        f"Lagd i tryckfil {batch.id} som brev nummer {seq}; skickas när tryckfilen stängs."
                    )
                    if self._printing is not None and self._printing.is_full(batch):
                        close_batch = batch.id
                else:
                    shp.result = {
                        "channel": channel.value,
                        **outcome.data,
                        "external_ref": outcome.external_ref,
                        "handed_over_at": now.isoformat(),
                    }
                    if isinstance(adapter := self._channels.get(channel), FollowUpChannel):
                        uow.enqueue(shp.id, now + adapter.follow_up_after(timedelta(0)), now)
                self._move(uow, shp, ShipmentState.HANDED_OVER)
                uow.save_shipment(shp)
                uow.add_event(
                    shp.id,
                    EventRecord(now, EventType.HANDED_OVER.value, message, shp.state, channel.value, details),
                )
            elif kind is OutcomeKind.FAILED:
                self._fall_back(uow, shp, decision, channel, outcome.detail, now, details)
            uow.commit()
        if close_batch is not None and self._printing is not None:
            self._printing.close(close_batch)

    def _follow_up(self, claim: Claim, shp: ShipmentRecord) -> None:
        """Ask the channel that took the letter how it went; record the end or ask again later."""
        result = shp.result or {}
        channel = Channel(str(shp.channel))
        adapter = self._channels.get(channel)
        ref = result.get("external_ref")
        if not isinstance(adapter, FollowUpChannel) or not isinstance(ref, str) or shp.decision is None:
            # Nothing can report on it any more (e.g. the channel was switched off): leave it handed over,
            # visible as such, rather than guess.
            with self._uow() as uow:
                uow.complete(claim, self._clock.now())
                uow.commit()
            log.warning("shipment %s is handed over to %s, which cannot be followed up", shp.id, channel)
            return
        outcome = adapter.follow_up(shp.id, ref)
        now = self._clock.now()
        decision, _ = decision_from_json(shp.decision)
        since = result.get("handed_over_at")
        handed_over_at = datetime.fromisoformat(since) if isinstance(since, str) else shp.updated_at
        with self._uow() as uow:
            uow.complete(claim, now)
            details: dict[str, object] = {"external_ref": ref, **outcome.data}
            if outcome.kind is OutcomeKind.DELIVERED:
                shp.updated_at = now
                merged = {**result, **outcome.data, "delivered_at": now.isoformat()}
                self._delivered(uow, shp, decision, channel, outcome.detail, merged, now, details)
            elif outcome.kind is OutcomeKind.FAILED:
                shp.updated_at = now
                self._fall_back(uow, shp, decision, channel, outcome.detail, now, details)
            else:
                wait = outcome.retry_after or adapter.follow_up_after(now - handed_over_at)
                uow.enqueue(shp.id, now + wait, now)
            uow.commit()

    def _delivered(
        self,
        uow: UnitOfWork,
        shp: ShipmentRecord,
        decision: Decision,
        channel: Channel,
        detail: str,
        result: dict[str, object],
        now: datetime,
        details: dict[str, object],
    ) -> None:
        """Record the delivery; notices that go with `channel` are queued in the same transaction."""
        self._move(uow, shp, ShipmentState.DELIVERED)
        shp.finished_at = now
        notices = notices_to_send(decision, channel)
        if notices:
            result = {**result, "notices": notices}
            uow.enqueue(shp.id, now, now)
        shp.result = result
        uow.save_shipment(shp)
        uow.add_event(
            shp.id,
            EventRecord(
                now,
                EventType.DELIVERED.value,
                f"Levererad: {_name(channel)}. {detail}",
                shp.state,
                channel.value,
                details,
            ),
        )

    def _assign_print(
        self,
        uow: UnitOfWork,
        shp: ShipmentRecord,
        letter: Letter,
        sender: SenderInfo,
        outcome: DeliveryOutcome,
        now: datetime,
    ) -> tuple[PrintBatchRecord, int]:
        info = letter.recipient_info
        addr = info.postal_address
        # The rule engine and the renderer both insist on these.
        assert addr is not None
        assert info.name
        staged = StagedLetter(
            name=outcome.data["staged_name"],
            pages=int(outcome.data["pages"]),
            size_bytes=int(outcome.data["size_bytes"]),
        )
        record: dict[str, object] = {
            "shipment_id": shp.id,
            "staged_name": staged.name,
            "pages": staged.pages,
            "size_bytes": staged.size_bytes,
            "recipient_name": info.name,
            "address_lines": list(addr.lines),
            "postal_code": addr.postal_code,
            "city": addr.city,
            "country": addr.country,
            "sender_organisation_number": sender.organisation_number,
            "sender_name": sender.name,
            "case_reference": letter.case_reference,
        }
        return uow.assign_to_print_batch(shp.id, sender.key, staged, record, now, new_batch_id(now))

    def _fall_back(
        self,
        uow: UnitOfWork,
        shp: ShipmentRecord,
        decision: Decision,
        channel: Channel,
        detail: str,
        now: datetime,
        details: dict[str, object],
    ) -> None:
        channels = decision.channels
        nxt = shp.channel_index + 1
        if nxt < len(channels):
            shp.channel_index = nxt
            self._move(uow, shp, ShipmentState.SENDING)
            uow.save_shipment(shp)
            uow.add_event(
                shp.id,
                EventRecord(
                    now,
                    EventType.CHANNEL_FAILED.value,
                    f"{_name(channel)} misslyckades: {detail}. Går vidare till {_name(channels[nxt])}.",
                    shp.state,
                    channel.value,
                    {**details, "next_channel": channels[nxt].value},
                ),
            )
            uow.enqueue(shp.id, now, now)
            return
        uow.add_event(
            shp.id,
            EventRecord(
                now,
                EventType.CHANNEL_FAILED.value,
                f"{_name(channel)} misslyckades: {detail}.",
                shp.state,
                channel.value,
                details,
            ),
        )
        self._finish_failed(
            uow, shp, now, "Ingen av de möjliga kanalerna kunde leverera försändelsen.", details
        )

    # ---------------------------------------------------------------------------------------- notices

    def _notify(self, claim: Claim, shp: ShipmentRecord, letter: Letter, sender: SenderInfo) -> None:
        """Send the notices (SMS) of a delivered letter. The letter's own state never changes here."""
        outcomes: dict[str, DeliveryOutcome] = {}
        for kind, state in pending_notices(shp.result).items():
            notice = Notice(kind)
            adapter = self._notifiers.get(notice)
            if adapter is None:
                outcomes[kind] = DeliveryOutcome(OutcomeKind.FAILED, "Aviseringen är inte konfigurerad här.")
                continue
            job = NoticeJob(shp.id, notice, Channel(str(state["via"])), letter, sender)
            try:
                outcomes[kind] = adapter.notify(job)
            except Exception as exc:  # an adapter bug: try again later rather than lose the notice
                log.exception("notice %s raised for shipment %s", kind, shp.id)
                outcomes[kind] = DeliveryOutcome(OutcomeKind.RETRY, f"Internt fel: {type(exc).__name__}")
        now = self._clock.now()
        with self._uow() as uow:
            uow.complete(claim, now)
            notices = all_notices(shp.result)
            retry_at: datetime | None = None
            for kind, outcome in outcomes.items():
                state = dict(notices[kind])
                attempts = int(str(state.get("attempts", 0))) + 1
                state["attempts"] = attempts
                name = NOTICE_NAMES_SV.get(Notice(kind), kind)
                details: dict[str, object] = {"notice": kind, "attempt": attempts, **outcome.data}
                if outcome.kind in (OutcomeKind.DELIVERED, OutcomeKind.HANDED_OVER):
                    state.update(
                        state="SENT", detail=outcome.detail, external_ref=outcome.external_ref, **outcome.data
                    )
                    state["sent_at"] = now.isoformat()
                    message = f"{name} skickad. {outcome.detail}"
                elif outcome.kind is OutcomeKind.RETRY and attempts < self._settings.notice_max_attempts:
                    at = now + (
                        outcome.retry_after
                        or backoff(attempts, self._settings.backoff_base, self._settings.backoff_max, shp.id)
                    )
                    retry_at = at if retry_at is None else min(retry_at, at)
                    state["detail"] = outcome.detail
                    message = (
                        f"{name} kunde inte skickas nu: {outcome.detail}. "
                        f"Nytt försök {at:%Y-%m-%d %H:%M:%S} UTC."
                    )
                    details["retry_at"] = at.isoformat()
                else:
                    state.update(state="FAILED", detail=outcome.detail)
                    message = f"{name} skickades inte: {outcome.detail}."
                notices[kind] = state
                if outcome.external_ref:
                    details["external_ref"] = outcome.external_ref
                uow.add_event(
                    shp.id,
                    EventRecord(now, EventType.NOTICE.value, message, shp.state, shp.channel, details),
                )
            shp.result = {**(shp.result or {}), "notices": notices}
            uow.save_shipment(shp)
            if retry_at is not None:
                uow.enqueue(shp.id, retry_at, now)
            uow.commit()

    def _give_up_notices(self, claim: Claim, shp: ShipmentRecord, reason: str) -> None:
        now = self._clock.now()
        with self._uow() as uow:
            uow.complete(claim, now)
            notices = all_notices(shp.result)
            for kind in pending_notices(shp.result):
                notices[kind] = {**notices[kind], "state": "FAILED", "detail": reason}
                uow.add_event(
                    shp.id,
                    EventRecord(
                        now,
                        EventType.NOTICE.value,
                        f"{NOTICE_NAMES_SV.get(Notice(kind), kind)} skickades inte: {reason}",
                        shp.state,
                        shp.channel,
                        {"notice": kind, "claims": claim.claims},
                    ),
                )
            shp.result = {**(shp.result or {}), "notices": notices}
            uow.save_shipment(shp)
            uow.commit()

    # ------------------------------------------------------------------------------- operator decisions

    def resolve_in_doubt(
        self, shipment_id: str, *, delivered: bool, operator: str, note: str
    ) -> ShipmentRecord:
        """An operator's answer for a letter left in doubt (the whole e-mail was sent, no final SMTP reply):
        `delivered` after finding it in the relay's log, otherwise it goes on to the next channel of its
        decision (never the same e-mail again). Recorded with who decided and why; raises NotFoundError or
        ConflictError (not, or no longer, in doubt)."""
        # The note goes into events that case systems read: a pasted relay log line must not carry an address
        # or a personnummer in full.
        operator, note = operator.strip(), mask_free_text(" ".join(note.split()))[:500]
        if not operator or not note:
            raise ValidationError("note" if operator else "operator", "must not be empty")
        now = self._clock.now()
        with self._uow() as uow:
            shp = uow.shipment(
                shipment_id, for_update=True
            )  # two operators at once: the second waits, then fails
            if shp is None:
                raise NotFoundError(f"no letter {shipment_id}")
            result = dict(shp.result or {})
            if shp.state != ShipmentState.HANDED_OVER.value or result.get("in_doubt") != "true":
                raise ConflictError(f"letter {shipment_id} is not in doubt (state {shp.state})")
            assert shp.decision is not None  # a handed-over letter was decided
            decision, _ = decision_from_json(shp.decision)
            channel = Channel(str(shp.channel))
            resolution = "delivered" if delivered else "not_delivered"
            details: dict[str, object] = {
                "resolved_by": operator,
                "resolution": resolution,
                "note": note,
                "external_ref": result.get("external_ref"),
            }
            shp.updated_at = now
            if delivered:
                merged = {
                    **result,
                    "in_doubt": "resolved",
                    "resolution": resolution,
                    "resolved_by": operator,
                    "delivered_at": now.isoformat(),
                }
                detail = f"Bekräftat av {operator} efter kontroll: {note}"
                self._delivered(uow, shp, decision, channel, detail, merged, now, details)
            else:
                detail = f"inte mottaget enligt {operator}: {note}"
                self._fall_back(uow, shp, decision, channel, detail, now, details)
            uow.commit()
        log.warning("shipment %s in doubt resolved as %s by an operator", shipment_id, resolution)
        return shp

    # ---------------------------------------------------------------------------------------- helpers

    @staticmethod
    def _move(uow: UnitOfWork, shp: ShipmentRecord, new: ShipmentState) -> None:
        check_transition(ShipmentState(shp.state), new)
        shp.state = new.value

    def _finish_failed(
        self, uow: UnitOfWork, shp: ShipmentRecord, now: datetime, message: str, details: dict[str, object]
    ) -> None:
        self._move(uow, shp, ShipmentState.FAILED)
        shp.finished_at = now
        shp.updated_at = now
        shp.result = {"failure": message}
        uow.save_shipment(shp)
        uow.add_event(
            shp.id, EventRecord(now, EventType.FAILED.value, message, shp.state, shp.channel, details)
        )

    def _give_up(self, claim: Claim, shp: ShipmentRecord, message: str) -> None:
        now = self._clock.now()
        with self._uow() as uow:
            uow.complete(claim, now)
            self._finish_failed(uow, shp, now, message, {"claims": claim.claims})
            uow.commit()
        log.error("shipment %s failed: %s", shp.id, message)


def new_batch_id(now: datetime) -> str:
    """Sortable and readable: the vendor sees it in directory names."""
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
