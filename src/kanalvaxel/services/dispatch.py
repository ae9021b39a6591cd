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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from kanalvaxel.domain.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from kanalvaxel.domain.masking import mask_free_text
from kanalvaxel.domain.model import (
    Attachment,
    Channel,
    EventType,
    Letter,
    Notice,
    ShipmentState,
    check_transition,
)
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

_T = TypeVar("_T")
#: Records one letter's outcome in the batch's closing transaction; names the print batches it filled in the
#: list. Raises LeaseLostError (through `complete`) to write nothing.
_Record = Callable[[UnitOfWork, list[str]], None]
#: A letter's send (or other call to the outside), outside any transaction; returns how to record it.
_Act = Callable[[], _Record]
#: A letter's writes before its send, in the batch's first transaction; returns the send, or None when the
#: item came to rest without one.
_Prepare = Callable[[UnitOfWork], _Act | None]


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
    #: The worker's lease. It is renewed when the batch's attempts are recorded, and again before any send
    #: that would otherwise start with less than 90 % of it left, so a channel's own time bound (a share of
    #: the lease, at most 80 %: an SMTP session) always ends before the lease does. None: not renewed.
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
        self.process_batch([claim])

    def process_batch(self, claims: Sequence[Claim], stopping: Callable[[], bool] = lambda: False) -> None:
        """Work claimed items to their next resting points, in three steps that each touch the database once
        for the whole batch: (1) read the letters, (2) one transaction that records, per letter, its decision
        and the attempt it is about to make, (3) send each, then (4) one transaction that records every
        outcome. Each letter's writes run in a savepoint of their own: a letter whose lease was lost (or whose
        recording fails) writes nothing, and the others are recorded all the same. Once `stopping()` holds, no
        further send starts: what was sent is recorded and the rest given back (their open attempts stay on
        record, as after a crash). Never raises for delivery problems; a database outage propagates
        (UnavailableError)."""
        if not claims:
            return
        if stopping():  # nothing started yet: give them all back untouched
            self._write([], [], release=claims)
            return
        ids = [c.shipment_id for c in claims]
        with self._uow(read_only=True) as uow:
            shipments = uow.shipments(ids)
            # A status poll needs the shipment only, not the letter and its attachments.
            contents = uow.letter_contents(
                [i for i, s in shipments.items() if s.state != ShipmentState.HANDED_OVER.value]
            )
        # Whatever needs the network before a decision (FaR, certificate lookups) happens here, outside any
        # transaction; FaR is asked once per sender for every letter of the batch that awaits a decision.
        letters = self._letters(contents)
        mailboxes = self._mailboxes(shipments, letters)
        prepares: list[tuple[Claim, _Prepare]] = []
        for c in claims:
            try:
                shp, content = shipments.get(c.shipment_id), contents.get(c.shipment_id)
                prepares.append((c, self._plan(c, shp, content, letters.get(c.shipment_id), mailboxes)))
            except Exception:  # a bug in deciding one letter: it comes back when its lease runs out
                log.exception("work item %s could not be planned; it will be tried again", c.work_item_id)
        acts: list[tuple[Claim, _Act]] = []
        with self._uow() as uow:
            for claim, prepare in prepares:
                act = self._guarded(uow, claim, prepare)
                if act is not None:
                    acts.append((claim, act))
            uow.commit()
        self._act_and_record(acts, stopping)

    def _act_and_record(self, acts: Sequence[tuple[Claim, _Act]], stopping: Callable[[], bool]) -> None:
        """Send each, then record the outcomes together. A batch whose sends take long (a slow channel) is
        recorded in parts, and the leases of the letters still to send are renewed with them, so no letter
        waits for its record, or runs out of lease, behind the others' sends."""
        lease = self._settings.lease
        # A send starts with at least 90 % of its lease left: more than the 80 % a channel may take.
        part_limit = (lease / 10).total_seconds() if lease is not None else 30.0
        records: list[tuple[Claim, _Record]] = []
        closing: list[str] = []
        lost: set[int] = set()
        part_started = time.monotonic()
        for i, (claim, act) in enumerate(acts):
            if stopping():
                self._write(records, closing, release=[c for c, _ in acts[i:] if c.work_item_id not in lost])
                records = []
                break
            if time.monotonic() - part_started > part_limit:
                lost |= self._write(records, closing, renew=[c for c, _ in acts[i:]])
                records = []
                part_started = time.monotonic()
            if claim.work_item_id in lost:
                continue  # its lease ran out while the others were sent: another worker has it now
            self._failpoint("before_send")
            try:
                record = act()
            except Exception:  # a bug around one letter's send: it comes back when its lease runs out
                log.exception(
                    "work item %s failed before its outcome; it will be tried again", claim.work_item_id
                )
                continue
            self._failpoint("after_send")
            records.append((claim, record))
        if records:
            self._write(records, closing)
        if self._printing is not None:
            for batch_id in dict.fromkeys(closing):
                self._printing.close(batch_id)

    def _write(
        self,
        records: Sequence[tuple[Claim, _Record]],
        closing: list[str],
        *,
        renew: Sequence[Claim] = (),
        release: Sequence[Claim] = (),
    ) -> set[int]:
        """Record outcomes, renew the leases in `renew` and give back the items in `release`, in one
        transaction. Returns the work items of `renew` whose lease was no longer ours."""
        lost: set[int] = set()
        with self._uow() as uow:
            for claim, record in records:
                self._guarded(uow, claim, lambda u: record(u, closing))  # noqa: B023 (called at once)
            if self._settings.lease is not None:
                for claim in renew:
                    if not self._guarded(uow, claim, lambda u: self._renew(u, claim)):  # noqa: B023
                        lost.add(claim.work_item_id)
            for claim in release:
                uow.release(claim)
            uow.commit()
        return lost

    def _guarded(self, uow: UnitOfWork, claim: Claim, step: Callable[[UnitOfWork], _T]) -> _T | None:
        """Run one letter's writes in a savepoint: a lost lease, or a fault in recording this one letter,
        undoes its writes only (its item comes back when the lease runs out)."""
        try:
            with uow.savepoint():
                return step(uow)
        except LeaseLostError:
            log.warning("lease on work item %s lost; another worker has it", claim.work_item_id)
        except UnavailableError:
            raise  # the database is gone: the whole batch ends, and the worker waits
        except Exception:
            log.exception("recording work item %s failed; it will be tried again", claim.work_item_id)
            uow.ping()  # a database that is gone ends the batch (UnavailableError), not one letter at a time
        return None

    def _failpoint(self, name: str) -> None:
        pause = self._settings.failpoints.get(name)
        if pause:
            log.warning("failpoint %s: pausing %.1f s", name, pause)
            time.sleep(pause)

    @staticmethod
    def _letters(
        contents: Mapping[str, tuple[Mapping[str, object], Sequence[Attachment]]],
    ) -> dict[str, Letter]:
        """The batch's letters, each read once. One that cannot be read is left out: `_plan` reads it
        again, and its error is logged there."""
        letters: dict[str, Letter] = {}
        for shipment_id, (letter_json, attachments) in contents.items():
            try:
                letters[shipment_id] = letter_from_json(letter_json, attachments)
            except Exception:
                log.debug("shipment %s cannot be read; it is planned alone", shipment_id)
        return letters

    def _mailboxes(
        self, shipments: Mapping[str, ShipmentRecord], letters: Mapping[str, Letter]
    ) -> Mapping[tuple[str, str], MailboxLookup]:
        """FaR's answers for the letters of a batch that await a decision, asked together (when more than one
        does: one letter is asked about by its own decision)."""
        awaiting: list[tuple[Letter, SenderInfo]] = []
        for shipment_id, letter in letters.items():
            shp = shipments[shipment_id]
            sender = self._senders.get(shp.sender_key)
            if sender is None or ShipmentState(shp.state).terminal:
                continue
            if shp.decision is None or shp.decision.get("retry_at"):
                awaiting.append((letter, sender))
        return self._facts.mailboxes(awaiting) if len(awaiting) > 1 else {}

    def _plan(
        self,
        claim: Claim,
        shp: ShipmentRecord | None,
        content: tuple[Mapping[str, object], Sequence[Attachment]] | None,
        letter: Letter | None = None,
        mailboxes: Mapping[tuple[str, str], MailboxLookup] | None = None,
    ) -> _Prepare:
        """What this item needs: the writes before its send (run in the batch's first transaction), which
        return the send itself, or None when the item comes to rest without one."""
        notify = (
            shp is not None
            and shp.state == ShipmentState.DELIVERED.value
            and bool(pending_notices(shp.result))
        )
        handed_over = shp is not None and shp.state == ShipmentState.HANDED_OVER.value
        if (
            shp is None
            or (content is None and not handed_over)
            or (ShipmentState(shp.state).terminal and not notify)
        ):
            return lambda uow: uow.complete(claim, self._clock.now())
        if claim.claims > self._settings.max_claims:
            if notify:
                return lambda uow: self._give_up_notices(uow, claim, shp, "Arbetet avbröts upprepade gånger.")
            return lambda uow: self._give_up(
                uow, claim, shp, "Arbetet avbröts upprepade gånger (arbetsprocessen kraschade)."
            )
        sender = self._senders.get(shp.sender_key)
        if sender is None:
            reason = f"Avsändaridentiteten {shp.sender_key!r} finns inte längre i inställningarna."
            return lambda uow: self._give_up(uow, claim, shp, reason)
        if handed_over:
            return lambda uow: self._renewed(uow, claim, lambda: self._follow_up(claim, shp))
        assert content is not None
        if letter is None:
            letter = letter_from_json(content[0], content[1])
        if notify:
            return lambda uow: self._renewed(uow, claim, lambda: self._notify(claim, shp, letter, sender))
        if shp.decision is None or shp.decision.get("retry_at"):
            facts = self._facts.gather(letter, sender, shp.accepted_at, mailboxes=mailboxes)
            decision = decide(letter, facts, self._policy, self._clock.now())

            def decide_and_start(uow: UnitOfWork) -> _Act | None:
                if not self._record_decision(uow, claim, shp, decision, facts.mailbox):
                    return None
                return self._start_attempt(uow, claim, shp, letter, sender, decision, facts.mailbox)

            return decide_and_start
        decided, mailbox = decision_from_json(shp.decision)
        return lambda uow: self._start_attempt(uow, claim, shp, letter, sender, decided, mailbox)

    def _renew(self, uow: UnitOfWork, claim: Claim) -> bool:
        """Check the lease and renew it to a whole lease from now (when leases are renewed at all); raises
        LeaseLostError when it is no longer ours."""
        lease = self._settings.lease
        uow.check_lease(claim, extend_until=self._clock.now() + lease if lease is not None else None)
        return True

    def _renewed(self, uow: UnitOfWork, claim: Claim, act: _Act) -> _Act:
        """Check and renew the lease in the batch's first transaction, then go on to `act`."""
        self._renew(uow, claim)
        return act

    def _start_attempt(
        self,
        uow: UnitOfWork,
        claim: Claim,
        shp: ShipmentRecord,
        letter: Letter,
        sender: SenderInfo,
        decision: Decision,
        mailbox: MailboxLookup | None,
    ) -> _Act:
        """Record the attempt about to be made (renewing the lease) and return the send."""
        channel = decision.channels[shp.channel_index]
        now = self._clock.now()
        attempt_no = shp.attempts + 1
        self._renew(uow, claim)
        uow.start_attempt(
            shp.id, AttemptRecord(attempt_no, channel.value, self._worker, now, None, None, None, None)
        )
        self._move(shp, ShipmentState.SENDING)
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

        def send() -> _Record:
            adapter = self._channels.get(channel)
            if adapter is None:
                outcome = DeliveryOutcome(OutcomeKind.FAILED, "Kanalen är inte konfigurerad här.")
            else:
                job = DeliveryJob(shp.id, attempt_no, channel, letter, sender, decision, mailbox)
                try:
                    outcome = adapter.send(job)
                except Exception as exc:  # an adapter bug must not lose the letter: count it as a failed try
                    log.exception("channel %s raised for shipment %s", channel, shp.id)
                    outcome = DeliveryOutcome(
                        OutcomeKind.RETRY, f"Internt fel i kanalen: {type(exc).__name__}"
                    )
            return lambda uow, closing: self._record(
                uow, closing, claim, shp, letter, sender, decision, channel, attempt_no, outcome
            )

        return send

    # --------------------------------------------------------------------------------------- deciding

    def _record_decision(
        self,
        uow: UnitOfWork,
        claim: Claim,
        shp: ShipmentRecord,
        decision: Decision,
        mailbox: MailboxLookup | None,
    ) -> bool:
        """Record the decision. True: a channel is to be tried now, and `_start_attempt` follows in this
        transaction (it checks the lease and saves the shipment for both). False: the item is at rest
        (`complete` checked the lease)."""
        now = self._clock.now()
        shp.decision = decision_to_json(decision, mailbox)
        shp.channel_index = 0
        shp.updated_at = now
        details: dict[str, object] = {
            "rule": decision.rule,
            "channels": [c.value for c in decision.channels],
        }
        if decision.retry_at is not None:
            self._move(shp, ShipmentState.RETRY_WAIT)
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
            return False
        if not decision.channels:
            message = f"{decision.summary()} Ingen kanal är möjlig för denna försändelse."
            self._finish_failed(uow, shp, now, message, details)
            uow.complete(claim, now)
            return False
        self._move(shp, ShipmentState.SENDING)
        uow.add_event(
            shp.id,
            EventRecord(now, EventType.DECIDED.value, decision.summary(), shp.state, None, details),
        )
        return True

    # -------------------------------------------------------------------------------------- recording

    def _record(
        self,
        uow: UnitOfWork,
        closing: list[str],
        claim: Claim,
        shp: ShipmentRecord,
        letter: Letter,
        sender: SenderInfo,
        decision: Decision,
        channel: Channel,
        attempt_no: int,
        outcome: DeliveryOutcome,
    ) -> None:
        """Record a send's outcome; a print batch it filled goes in `closing` (closed after the commit)."""
        now = self._clock.now()
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
            self._move(shp, ShipmentState.RETRY_WAIT)
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
                message = f"Lagd i tryckfil {batch.id} som brev nummer {seq}; skickas när tryckfilen stängs."
                if self._printing is not None and self._printing.is_full(batch):
                    # Full now: the next letter, even in this same transaction, opens a new batch.
                    uow.mark_print_batch_full(batch.id)
                    closing.append(batch.id)
            else:
                shp.result = {
                    "channel": channel.value,
                    **outcome.data,
                    "external_ref": outcome.external_ref,
                    "handed_over_at": now.isoformat(),
                }
                if isinstance(adapter := self._channels.get(channel), FollowUpChannel):
                    uow.enqueue(shp.id, now + adapter.follow_up_after(timedelta(0)), now)
            self._move(shp, ShipmentState.HANDED_OVER)
            uow.save_shipment(shp)
            uow.add_event(
                shp.id,
                EventRecord(now, EventType.HANDED_OVER.value, message, shp.state, channel.value, details),
            )
        elif kind is OutcomeKind.FAILED:
            self._fall_back(uow, shp, decision, channel, outcome.detail, now, details)

    def _follow_up(self, claim: Claim, shp: ShipmentRecord) -> _Record:
        """Ask the channel that took the letter how it went; record the end or ask again later."""
        result = shp.result or {}
        channel = Channel(str(shp.channel))
        adapter = self._channels.get(channel)
        ref = result.get("external_ref")
        if not isinstance(adapter, FollowUpChannel) or not isinstance(ref, str) or shp.decision is None:
            # Nothing can report on it any more (e.g. the channel was switched off): leave it handed over,
            # visible as such, rather than guess.
            log.warning("shipment %s is handed over to %s, which cannot be followed up", shp.id, channel)
            return lambda uow, _closing: uow.complete(claim, self._clock.now())
        outcome = adapter.follow_up(shp.id, ref)
        decision, _ = decision_from_json(shp.decision)
        since = result.get("handed_over_at")
        handed_over_at = datetime.fromisoformat(since) if isinstance(since, str) else shp.updated_at

        def record(uow: UnitOfWork, _closing: list[str]) -> None:
            now = self._clock.now()
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

        return record

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
        self._move(shp, ShipmentState.DELIVERED)
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
            self._move(shp, ShipmentState.SENDING)
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

    def _notify(self, claim: Claim, shp: ShipmentRecord, letter: Letter, sender: SenderInfo) -> _Record:
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

        def record(uow: UnitOfWork, _closing: list[str]) -> None:
            now = self._clock.now()
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

        return record

    def _give_up_notices(self, uow: UnitOfWork, claim: Claim, shp: ShipmentRecord, reason: str) -> None:
        now = self._clock.now()
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
    def _move(shp: ShipmentRecord, new: ShipmentState) -> None:
        check_transition(ShipmentState(shp.state), new)
        shp.state = new.value

    def _finish_failed(
        self, uow: UnitOfWork, shp: ShipmentRecord, now: datetime, message: str, details: dict[str, object]
    ) -> None:
        self._move(shp, ShipmentState.FAILED)
        shp.finished_at = now
        shp.updated_at = now
        shp.result = {"failure": message}
        uow.save_shipment(shp)
        uow.add_event(
            shp.id, EventRecord(now, EventType.FAILED.value, message, shp.state, shp.channel, details)
        )

    def _give_up(self, uow: UnitOfWork, claim: Claim, shp: ShipmentRecord, message: str) -> None:
        now = self._clock.now()
        uow.complete(claim, now)
        self._finish_failed(uow, shp, now, message, {"claims": claim.claims})
        log.error("shipment %s failed: %s", shp.id, message)


def new_batch_id(now: datetime) -> str:
    """Sortable and readable: the vendor sees it in directory names."""
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
