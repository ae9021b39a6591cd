"""The interfaces the core needs from the outside world. Adapters implement them; tests may fake them.

Every port states its contract: what it takes, what it raises, and whether calling it twice is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import Attachment, Channel, Letter, Notice
from kanalvaxel.domain.rules import CertificateFacts, Decision, MailboxLookup


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender identity a letter is sent as (from settings), as channels need it."""

    key: str
    organisation_number: str  # ten digits
    name: str
    return_address: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """One attempt to deliver one shipment by one channel."""

    shipment_id: str
    attempt: int  # 1-based, per shipment, across channels
    channel: Channel
    letter: Letter
    sender: SenderInfo
    decision: Decision
    mailbox: MailboxLookup | None = None


class OutcomeKind(enum.StrEnum):
    DELIVERED = "DELIVERED"  # the channel confirms the letter reached its end
    HANDED_OVER = "HANDED_OVER"  # the channel took it; the final result comes later
    RETRY = "RETRY"  # failed for now; the same channel may succeed later
    FAILED = "FAILED"  # this channel will not work for this letter: go on to the next


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    kind: OutcomeKind
    detail: str  # Swedish or the remote system's own words; truncated when stored
    external_ref: str | None = None  # queue id, message id, staged print file, ...
    retry_after: timedelta | None = None
    data: Mapping[str, str] = field(default_factory=dict)


class ChannelAdapter(Protocol):
    """Sends a letter by one channel.

    `send` must be idempotent per (shipment_id, channel): a worker that crashed after `send` and before its
    outcome was stored will call it again, and the recipient must not get the letter twice. It never raises
    for a delivery problem: it returns RETRY or FAILED with the reason. It runs with no transaction open.
    """

    channel: Channel

    def send(self, job: DeliveryJob) -> DeliveryOutcome: ...


@runtime_checkable
class FollowUpChannel(ChannelAdapter, Protocol):
    """A channel that hands a letter over and learns the final result later (the relay).

    `follow_up` asks how a handed-over letter is doing, given the `external_ref` its `send` returned:
    DELIVERED (data may name the mailbox operator), FAILED (for good: the dispatcher goes on to the next
    channel), HANDED_OVER (still on its way: ask again later) or RETRY (could not ask now). It never raises
    and may be called any number of times. `follow_up_after` says when to ask next, from how long ago the
    letter was handed over.
    """

    def follow_up(self, shipment_id: str, external_ref: str) -> DeliveryOutcome: ...

    def follow_up_after(self, handed_over_for: timedelta) -> timedelta: ...


class RecipientRegister(Protocol):
    """FaR: who has a digital mailbox and accepts which senders."""

    def lookup(
        self,
        sender_organisation_number: str,
        recipients: Sequence[RecipientId],
        *,
        bypass_cache: bool = False,
    ) -> Mapping[str, MailboxLookup]:
        """Answer per recipient (keyed by the 12-digit id). Never raises for an unreachable register:
        each answer then has state UNAVAILABLE with the reason. Safe to call any number of times."""
        ...


class CertificateInspector(Protocol):
    def inspect(self, pem: str) -> CertificateFacts:
        """Read an S/MIME certificate. Never raises: an unreadable one has `problem` set."""
        ...


class CertificateLookup(Protocol):
    def find(self, email: str) -> str | None:
        """The PEM of the best S/MIME certificate known for `email` (a configured directory), or None."""
        ...


@dataclass(frozen=True, slots=True)
class NoticeJob:
    """One notice (an SMS) beside a letter that went by `via`."""

    shipment_id: str
    notice: Notice
    via: Channel
    letter: Letter
    sender: SenderInfo


class NoticeSender(Protocol):
    """Sends one kind of notice. `notify` is idempotent per (shipment_id, notice) and never raises for a
    delivery problem: DELIVERED (sent; `external_ref` is the gateway's id), RETRY or FAILED (the reason)."""

    notice: Notice

    def notify(self, job: NoticeJob) -> DeliveryOutcome: ...


@dataclass(frozen=True, slots=True)
class SentRecord:
    external_ref: str | None
    detail: str
    data: Mapping[str, str]
    sent_at: datetime


class SendJournal(Protocol):
    """What a channel without idempotency of its own (SMTP, an SMS gateway) has already sent.

    A channel writes here right after the remote side accepted, in its own short transaction, and looks here
    before it sends: a worker that crashed after the send and before the dispatcher recorded the outcome then
    finds the record instead of sending again. (The window between the server's answer and this write stays.)
    """

    def sent(self, shipment_id: str, channel: str) -> SentRecord | None: ...

    def record(self, shipment_id: str, channel: str, record: SentRecord) -> None:
        """Store it; a record already there for (shipment_id, channel) is kept (first write wins)."""
        ...


@dataclass(frozen=True, slots=True)
class PrintLetterRecord:
    """One letter in a print batch, for the manifest. No identity number: the vendor does not need it."""

    sequence: int
    shipment_id: str
    staged_name: str
    pages: int
    size_bytes: int
    recipient_name: str
    address_lines: tuple[str, ...]
    postal_code: str
    city: str
    country: str | None
    sender_organisation_number: str
    sender_name: str
    case_reference: str | None


@dataclass(frozen=True, slots=True)
class PrintBatchInfo:
    batch_id: str
    sender_key: str
    opened_at: datetime
    closed_at: datetime
    letters: Sequence[PrintLetterRecord]


@dataclass(frozen=True, slots=True)
class StagedLetter:
    name: str  # file name in the staging area, stable per shipment
    pages: int
    size_bytes: int


class PrintSpool(Protocol):
    """The print vendor's spool directory.

    `stage` writes one letter's print-ready PDF to a staging area under a name derived from the shipment
    id (writing it again replaces it: idempotent). `publish` moves the staged letters of a closed batch
    into `outgoing/<batch_id>/` with manifest.csv and manifest.json, and makes the directory appear
    atomically; publishing the same batch again is a no-op that returns the same path.
    """

    def stage(self, shipment_id: str, pdf: bytes) -> StagedLetter: ...

    def publish(self, batch: PrintBatchInfo) -> str: ...


class LetterRenderer(Protocol):
    def render(self, letter: Letter, sender: SenderInfo, shipment_id: str) -> bytes:
        """A print-ready PDF: an address page for a window envelope, then the letter's own PDFs.

        Raises ValidationError when the letter lacks what print needs (name, postal address)."""
        ...


# ------------------------------------------------------------------------------------------ persistence


class DuplicateIdempotencyKeyError(Exception):
    """Raised by `UnitOfWork.add_shipment` when (client, idempotency key) is taken. Not a KanalvaxelError:
    the intake service turns it into the right answer (same shipment, or a conflict)."""


class LeaseLostError(Exception):
    """The work item's lease is no longer ours: another worker took it. Drop the work; record nothing."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    id: str
    name: str
    key_id: str
    key_hash: str
    senders: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


@dataclass(slots=True)
class ShipmentRecord:
    id: str
    client_id: str
    idempotency_key: str
    request_hash: str
    sender_key: str
    recipient_id: str
    recipient_kind: str
    subject: str
    confidentiality: str
    message_type: str
    case_reference: str | None
    state: str
    channel: str | None
    channel_index: int
    decision: dict[str, object] | None
    result: dict[str, object] | None
    attempts: int
    accepted_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    at: datetime
    type: str
    message: str
    state: str | None = None
    channel: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt_no: int
    channel: str
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    detail: str | None
    external_ref: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    work_item_id: int
    shipment_id: str
    token: str
    claims: int  # how many times this item was claimed, this claim included


@dataclass(frozen=True, slots=True)
class PrintBatchRecord:
    id: str
    sender_key: str
    status: str
    opened_at: datetime
    letter_count: int
    total_bytes: int
    path: str | None
    closed_at: datetime | None = None


class UnitOfWork(Protocol):
    """One transaction. Nothing is stored until `commit`; leaving the `with` block without it rolls back.

    Use it for short stretches only: never keep one open while talking to the network.
    """

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A block whose writes are undone if it raises, while the rest of the transaction stays."""
        ...

    # clients
    def add_client(self, client: ClientRecord) -> None: ...
    def client_by_key_id(self, key_id: str) -> ClientRecord | None: ...
    def client_by_name(self, name: str) -> ClientRecord | None: ...
    def list_clients(self) -> Sequence[ClientRecord]: ...
    def revoke_client(self, name: str, at: datetime) -> bool: ...

    # shipments
    def add_shipment(
        self, shipment: ShipmentRecord, letter_json: Mapping[str, object], attachments: Sequence[Attachment]
    ) -> None:
        """Insert the shipment and its content. Raises DuplicateIdempotencyKeyError (nothing written; the
        unit of work can then only be left, which rolls it back)."""
        ...

    def shipment_by_idempotency_key(self, client_id: str, key: str) -> ShipmentRecord | None: ...
    def shipment(self, shipment_id: str, *, for_update: bool = False) -> ShipmentRecord | None: ...
    def handed_over(self, channels: Sequence[str], limit: int) -> Sequence[ShipmentRecord]:
        """HANDED_OVER shipments whose current channel is one of `channels`, oldest change first."""
        ...

    def letter_content(
        self, shipment_id: str
    ) -> tuple[Mapping[str, object], Sequence[Attachment]] | None: ...
    def letter_contents(
        self, shipment_ids: Sequence[str]
    ) -> dict[str, tuple[Mapping[str, object], Sequence[Attachment]]]:
        """`letter_content` of many shipments in two statements; ids without content are left out."""
        ...

    def shipments(self, shipment_ids: Sequence[str]) -> dict[str, ShipmentRecord]:
        """The shipments of these ids that exist, by id."""
        ...

    def save_shipment(self, shipment: ShipmentRecord) -> None:
        """Store what changes after intake (state, channel, decision, result, counts, times)."""
        ...

    def add_event(self, shipment_id: str, event: EventRecord) -> None: ...
    def events(self, shipment_id: str) -> Sequence[EventRecord]: ...
    def attempts(self, shipment_id: str) -> Sequence[AttemptRecord]: ...
    def start_attempt(self, shipment_id: str, attempt: AttemptRecord) -> None: ...
    def finish_attempt(
        self,
        shipment_id: str,
        attempt_no: int,
        finished_at: datetime,
        outcome: str,
        detail: str,
        external_ref: str | None,
    ) -> None: ...
    def count_attempts(self, shipment_id: str, channel: str) -> int: ...
    def sent_record(self, shipment_id: str, channel: str) -> SentRecord | None: ...
    def add_sent_record(self, shipment_id: str, channel: str, record: SentRecord) -> None:
        """Insert unless a record for (shipment_id, channel) exists (then keep that one)."""
        ...

    def awaiting_decision(self, now: datetime, limit: int) -> Sequence[tuple[str, str]]:
        """(sender_key, recipient_id) of letters whose work is due and that have no decision yet (ACCEPTED),
        oldest first, at most `limit`. Read-only."""
        ...

    # outbox
    def enqueue(self, shipment_id: str, not_before: datetime, now: datetime) -> None: ...
    def claim(self, worker: str, now: datetime, lease: timedelta, limit: int) -> Sequence[Claim]:
        """Claim up to `limit` due items (READY and due, or CLAIMED with an expired lease)."""
        ...

    def complete(self, claim: Claim, now: datetime) -> None:
        """Mark the item DONE if the lease is still ours, else raise LeaseLostError."""
        ...

    def check_lease(self, claim: Claim, *, extend_until: datetime | None = None) -> None:
        """Raise LeaseLostError unless the item is still CLAIMED under this token; `extend_until`
        renews the lease to then."""
        ...

    def release(self, claim: Claim) -> None:
        """Give an unstarted item back to the pool at once (shutdown)."""
        ...

    # print batches
    def assign_to_print_batch(
        self,
        shipment_id: str,
        sender_key: str,
        staged: StagedLetter,
        record: Mapping[str, object],
        now: datetime,
        new_batch_id: str,
    ) -> tuple[PrintBatchRecord, int]:
        """Put the letter in the sender's open batch (opening one, id `new_batch_id`, if none). Returns
        the batch and the letter's sequence number in it. Idempotent per shipment."""
        ...

    def due_print_batches(
        self, now: datetime, max_age: timedelta, max_letters: int, max_bytes: int
    ) -> Sequence[PrintBatchRecord]:
        """OPEN batches that are full or old enough, FULL ones, and CLOSING ones whose closer's lease ran
        out."""
        ...

    def mark_print_batch_full(self, batch_id: str) -> None:
        """An OPEN batch that reached its limits becomes FULL: it takes no more letters (the sender's next
        letter opens a new batch) and waits to be closed."""
        ...

    def start_closing(self, batch_id: str, now: datetime, lease: timedelta) -> bool: ...
    def print_items(self, batch_id: str) -> Sequence[tuple[str, int, Mapping[str, object]]]:
        """(shipment_id, sequence, record) of every letter in the batch, by sequence."""
        ...

    def finish_closing(self, batch_id: str, path: str, now: datetime) -> Sequence[str]:
        """Mark CLOSED; return the ids of the shipments in it."""
        ...

    def print_batch(self, batch_id: str) -> PrintBatchRecord | None: ...
    def print_batches(self, statuses: Sequence[str], limit: int) -> Sequence[PrintBatchRecord]:
        """Batches in one of `statuses` (every status when empty), newest first, at most `limit`."""
        ...

    # health
    def ping(self) -> None: ...
