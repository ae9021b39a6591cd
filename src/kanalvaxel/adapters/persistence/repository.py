"""The SQL unit of work: one Session, one transaction, the only place that commits."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Table,
    Update,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
)
from sqlalchemy.orm import Session, sessionmaker

from kanalvaxel.adapters.persistence import outbox
from kanalvaxel.adapters.persistence.database import READ_ONLY
from kanalvaxel.adapters.persistence.tables import (
    ApiClient,
    AttachmentRow,
    AttemptRow,
    Base,
    EventRow,
    PrintBatchRow,
    PrintItemRow,
    SentRow,
    ShipmentContentRow,
    ShipmentRow,
    WorkItemRow,
)
from kanalvaxel.domain.errors import UnavailableError
from kanalvaxel.domain.masking import redact_passwords
from kanalvaxel.domain.model import Attachment
from kanalvaxel.ports import (
    AttemptRecord,
    Claim,
    ClientRecord,
    DuplicateIdempotencyKeyError,
    EventRecord,
    LeaseLostError,
    PrintBatchRecord,
    SentRecord,
    ShipmentRecord,
    StagedLetter,
)

_SHIPMENT_FIELDS = tuple(ShipmentRecord.__dataclass_fields__)
#: What the dispatcher changes on a shipment; the rest is fixed at intake. Saving only these keeps the
#: UPDATE off the indexes of the fixed columns (SQLite rewrites every index a SET clause names).
_MUTABLE_FIELDS = (
    "state",
    "channel",
    "channel_index",
    "decision",
    "result",
    "attempts",
    "updated_at",
    "finished_at",
)
_NO_SYNC = {"synchronize_session": False}
_ATTEMPTS = cast(Table, AttemptRow.__table__)


def _table(row: type[Base]) -> Table:
    return Base.metadata.tables[row.__tablename__]


_SHIPMENTS = _table(ShipmentRow)
_WORK = _table(WorkItemRow)
_CONTENTS = _table(ShipmentContentRow)
_ATTACHMENTS = _table(AttachmentRow)
_SENDS = _table(SentRow)
_BATCHES = _table(PrintBatchRow)
_ITEMS = _table(PrintItemRow)

# The statements the worker runs for every letter are built once, with bound parameters, and run on the
# session's connection (Core): building and caching a statement, and the ORM's execution machinery around
# it, cost several times the statement itself (bench/dispatch.py). Their parameters are named b_*, as a
# SET clause reserves the column names.
_INSERT_SHIPMENT = insert(_SHIPMENTS)
_INSERT_CONTENT = insert(_CONTENTS)
_INSERT_ATTACHMENT = insert(_ATTACHMENTS)
_INSERT_EVENT = insert(_table(EventRow))
_INSERT_WORK_ITEM = insert(_WORK)
_INSERT_ATTEMPT = insert(_ATTEMPTS)
_INSERT_SEND = insert(_SENDS)
_INSERT_PRINT_ITEM = insert(_ITEMS)
_SHIPMENT_COLUMNS = tuple(_SHIPMENTS.c[f] for f in _SHIPMENT_FIELDS)
_BY_IDEMPOTENCY_KEY = select(*_SHIPMENT_COLUMNS).where(
    _SHIPMENTS.c.client_id == bindparam("client_id"),
    _SHIPMENTS.c.idempotency_key == bindparam("key"),
)
_SHIPMENTS_BY_ID = select(*_SHIPMENT_COLUMNS).where(_SHIPMENTS.c.id.in_(bindparam("b_ids", expanding=True)))
_SAVE_SHIPMENT = (
    update(_SHIPMENTS)
    .where(_SHIPMENTS.c.id == bindparam("b_id"))
    .values({f: bindparam(f"b_{f}", type_=_SHIPMENTS.c[f].type) for f in _MUTABLE_FIELDS})
)
_LETTERS_BY_ID = select(_CONTENTS.c.shipment_id, _CONTENTS.c.letter).where(
    _CONTENTS.c.shipment_id.in_(bindparam("b_ids", expanding=True))
)
_ATTACHMENTS_BY_ID = (
    select(
        _ATTACHMENTS.c.shipment_id,
        _ATTACHMENTS.c.filename,
        _ATTACHMENTS.c.content,
        _ATTACHMENTS.c.content_type,
    )
    .where(_ATTACHMENTS.c.shipment_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(_ATTACHMENTS.c.shipment_id, _ATTACHMENTS.c.position)
)
_FINISH_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.shipment_id == bindparam("b_id"), _ATTEMPTS.c.attempt_no == bindparam("b_no"))
    .values(
        finished_at=bindparam("b_at", type_=_ATTEMPTS.c.finished_at.type),
        outcome=bindparam("b_outcome"),
        detail=bindparam("b_detail"),
        external_ref=bindparam("b_ref"),
    )
)
_COUNT_ATTEMPTS = (
    select(func.count())
    .select_from(_ATTEMPTS)
    .where(_ATTEMPTS.c.shipment_id == bindparam("b_id"), _ATTEMPTS.c.channel == bindparam("b_channel"))
)
_SEND_BY_KEY = select(_SENDS.c.external_ref, _SENDS.c.detail, _SENDS.c.data, _SENDS.c.sent_at).where(
    _SENDS.c.shipment_id == bindparam("b_id"), _SENDS.c.channel == bindparam("b_channel")
)
#: The work item is still ours: same lease token, still claimed.
_OURS = (
    (_WORK.c.id == bindparam("b_item"))
    & (_WORK.c.lease_token == bindparam("b_token"))
    & (_WORK.c.status == "CLAIMED")
)
_COMPLETE = (
    update(_WORK)
    .where(_OURS)
    .values(status="DONE", done_at=bindparam("b_now", type_=_WORK.c.done_at.type), lease_expires_at=None)
)
# An UPDATE rather than a SELECT: on PostgreSQL it takes the row lock, so a claimer that comes after us waits
# until we commit and then sees what we wrote.
_CHECK_LEASE = update(_WORK).where(_OURS).values(lease_token=_WORK.c.lease_token)
_EXTEND_LEASE = (
    update(_WORK)
    .where(_OURS)
    .values(lease_expires_at=bindparam("b_until", type_=_WORK.c.lease_expires_at.type))
)
_RELEASE = (
    update(_WORK)
    .where(_OURS)
    .values(status="READY", lease_token=None, lease_owner=None, lease_expires_at=None)
)
_PRINT_ITEM = select(_ITEMS.c.batch_id, _ITEMS.c.sequence).where(_ITEMS.c.shipment_id == bindparam("b_id"))
_BATCH_COLUMNS = (
    _BATCHES.c.id,
    _BATCHES.c.sender_key,
    _BATCHES.c.status,
    _BATCHES.c.opened_at,
    _BATCHES.c.letter_count,
    _BATCHES.c.total_bytes,
    _BATCHES.c.path,
    _BATCHES.c.closed_at,
)
_BATCH_BY_ID = select(*_BATCH_COLUMNS).where(_BATCHES.c.id == bindparam("b_id"))
_OPEN_BATCH = select(_BATCHES.c.id).where(
    _BATCHES.c.sender_key == bindparam("b_sender"), _BATCHES.c.status == "OPEN"
)
# Taking the row lock here orders us against a closer: if it marked the batch CLOSING first, the WHERE no
# longer holds once the lock is ours, and the letter tries the next open batch.
_TAKE_BATCH_PLACE = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("b_id"), _BATCHES.c.status == "OPEN")
    .values(
        letter_count=_BATCHES.c.letter_count + 1,
        total_bytes=_BATCHES.c.total_bytes + bindparam("b_bytes", type_=_BATCHES.c.total_bytes.type),
    )
    .returning(*_BATCH_COLUMNS)
)
_MARK_FULL = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("b_id"), _BATCHES.c.status == "OPEN")
    .values(status="FULL")
)


def _client(row: ApiClient) -> ClientRecord:
    return ClientRecord(
        id=row.id,
        name=row.name,
        key_id=row.key_id,
        key_hash=row.key_hash,
        senders=tuple(row.senders),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _shipment(row: ShipmentRow) -> ShipmentRecord:
    return ShipmentRecord(**{f: getattr(row, f) for f in _SHIPMENT_FIELDS})


#: SQLSTATE classes of an outage, not of a bug: connection exceptions, and "the server is shutting down or
#: not accepting connections yet" (57P01-57P03).
_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03")
#: SQLite's words for a file it cannot open or a writer that holds it too long.
_SQLITE_OUTAGE = ("database is locked", "unable to open database file")


def _outage(exc: DBAPIError) -> bool:
    """A database that cannot be reached or is busy now (a retry later can help), as against a bug or a
    schema that was never migrated ("no such table"), which must stay an error with its traceback."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str) and state:
        return state.startswith(_OUTAGE_STATES)
    words = str(exc.orig).lower()
    if "sqlite" in type(exc.orig).__module__:
        return any(w in words for w in _SQLITE_OUTAGE)
    return True  # a driver-level failure with no SQLSTATE: the connection itself failed


def _first_line(exc: DBAPIError) -> str:
    """The driver's own words, first line only (no SQL, no parameters), with any password taken out."""
    words = str(exc.orig).strip().splitlines() if exc.orig is not None else []
    return redact_passwords(words[0].strip()) if words else type(exc).__name__


def _batch(row: PrintBatchRow | Row[*tuple[Any, ...]]) -> PrintBatchRecord:
    return PrintBatchRecord(
        id=row.id,
        sender_key=row.sender_key,
        status=row.status,
        opened_at=row.opened_at,
        letter_count=row.letter_count,
        total_bytes=row.total_bytes,
        path=row.path,
        closed_at=row.closed_at,
    )


class SqlUnitOfWork:
    def __init__(self, factory: sessionmaker[Session], *, read_only: bool = False) -> None:
        self._factory = factory
        self._read_only = read_only
        self._session: Session | None = None
        self._connection: Connection | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("unit of work used outside its with-block")
        return self._session

    def __enter__(self) -> SqlUnitOfWork:
        self._session = self._factory(execution_options={READ_ONLY: True} if self._read_only else {})
        return self

    def __exit__(self, *info: object) -> None:
        """Roll back what was not committed; a database that cannot be reached becomes UnavailableError."""
        assert self._session is not None
        exc = info[1] if len(info) > 1 else None
        try:
            self._session.rollback()
        except DBAPIError:
            if exc is None:
                raise
            # The connection is gone already; the error that brought us here says more.
        finally:
            self._session.close()
            self._session = None
            self._connection = None
        if isinstance(exc, DBAPIError) and _outage(exc):
            raise UnavailableError(
                "the database cannot be reached or is busy", cause=_first_line(exc)
            ) from exc

    @property
    def _conn(self) -> Connection:
        """The session's connection, for Core statements: they skip the ORM's execution machinery."""
        if self._connection is None:
            self._connection = self.session.connection()
        return self._connection

    def commit(self) -> None:
        if self._read_only:
            raise RuntimeError("a read-only unit of work cannot commit")
        self._connection = None  # the session gives it back to the pool
        self.session.commit()

    def _update(self, stmt: Update) -> CursorResult[Any]:
        """An UPDATE that leaves the session's objects alone: this unit of work hands out records, not ORM
        objects, so the ORM's matching of loaded objects against the WHERE clause is pure cost."""
        return cast("CursorResult[Any]", self.session.execute(stmt, execution_options=_NO_SYNC))

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """What the block writes is undone if it raises (the rest of the transaction stays). A savepoint on
        the connection, not the session's: what the worker writes per letter is Core statements, so the
        ORM's bookkeeping around a nested transaction would be pure cost. Anything the session still holds
        unflushed is written before."""
        if self.session.new or self.session.dirty or self.session.deleted:
            self.session.flush()
        with self._conn.begin_nested():
            yield

    # ----------------------------------------------------------------------------------------- clients

    def add_client(self, client: ClientRecord) -> None:
        self.session.add(
            ApiClient(
                id=client.id,
                name=client.name,
                key_id=client.key_id,
                key_hash=client.key_hash,
                senders=list(client.senders),
                created_at=client.created_at,
                revoked_at=client.revoked_at,
            )
        )
        self.session.flush()

    def client_by_key_id(self, key_id: str) -> ClientRecord | None:
        row = self.session.scalar(select(ApiClient).where(ApiClient.key_id == key_id))
        return None if row is None else _client(row)

    def client_by_name(self, name: str) -> ClientRecord | None:
        row = self.session.scalar(select(ApiClient).where(ApiClient.name == name))
        return None if row is None else _client(row)

    def list_clients(self) -> Sequence[ClientRecord]:
        return [_client(r) for r in self.session.scalars(select(ApiClient).order_by(ApiClient.created_at))]

    def revoke_client(self, name: str, at: datetime) -> bool:
        res = self._update(
            update(ApiClient)
            .where(ApiClient.name == name, ApiClient.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(res.rowcount)

    # --------------------------------------------------------------------------------------- shipments

    def add_shipment(
        self, shipment: ShipmentRecord, letter_json: Mapping[str, object], attachments: Sequence[Attachment]
    ) -> None:
        # Core statements, not ORM objects: an accepted letter is five INSERTs, and the ORM's unit of work
        # cost more than the statements themselves, all of it while SQLite's one writer lock was held.
        try:
            self._conn.execute(_INSERT_SHIPMENT, {f: getattr(shipment, f) for f in _SHIPMENT_FIELDS})
        except IntegrityError as exc:
            raise DuplicateIdempotencyKeyError(shipment.idempotency_key) from exc
        self._conn.execute(_INSERT_CONTENT, {"shipment_id": shipment.id, "letter": dict(letter_json)})
        if attachments:
            self._conn.execute(
                _INSERT_ATTACHMENT,
                [
                    {
                        "shipment_id": shipment.id,
                        "position": pos,
                        "filename": att.filename,
                        "content_type": att.content_type,
                        "size_bytes": len(att.content),
                        "sha256": hashlib.sha256(att.content).hexdigest(),
                        "content": att.content,
                    }
                    for pos, att in enumerate(attachments)
                ],
            )

    def shipment_by_idempotency_key(self, client_id: str, key: str) -> ShipmentRecord | None:
        # Core, not an ORM entity: every letter posted asks this once, and nearly always finds nothing.
        row = self._conn.execute(_BY_IDEMPOTENCY_KEY, {"client_id": client_id, "key": key}).first()
        return None if row is None else ShipmentRecord(**row._asdict())

    def shipment(self, shipment_id: str, *, for_update: bool = False) -> ShipmentRecord | None:
        stmt = select(ShipmentRow).where(ShipmentRow.id == shipment_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.session.scalar(stmt)
        return None if row is None else _shipment(row)

    def handed_over(self, channels: Sequence[str], limit: int) -> Sequence[ShipmentRecord]:
        rows = self.session.scalars(
            select(ShipmentRow)
            .where(ShipmentRow.state == "HANDED_OVER", ShipmentRow.channel.in_(list(channels)))
            .order_by(ShipmentRow.updated_at, ShipmentRow.id)
            .limit(limit)
        )
        return [_shipment(row) for row in rows]

    def letter_content(self, shipment_id: str) -> tuple[Mapping[str, object], Sequence[Attachment]] | None:
        content = self.session.get(ShipmentContentRow, shipment_id)
        if content is None:
            return None
        rows = self.session.scalars(
            select(AttachmentRow)
            .where(AttachmentRow.shipment_id == shipment_id)
            .order_by(AttachmentRow.position)
        )
        return content.letter, [Attachment(r.filename, r.content, r.content_type) for r in rows]

    def letter_contents(
        self, shipment_ids: Sequence[str]
    ) -> dict[str, tuple[Mapping[str, object], Sequence[Attachment]]]:
        ids = {"b_ids": list(shipment_ids)}
        out: dict[str, tuple[Mapping[str, object], list[Attachment]]] = {}
        for sid, letter in self._conn.execute(_LETTERS_BY_ID, ids):
            out[sid] = (letter, [])
        for sid, filename, content, content_type in self._conn.execute(_ATTACHMENTS_BY_ID, ids):
            if sid in out:
                out[sid][1].append(Attachment(filename, content, content_type))
        return dict(out)

    def shipments(self, shipment_ids: Sequence[str]) -> dict[str, ShipmentRecord]:
        rows = self._conn.execute(_SHIPMENTS_BY_ID, {"b_ids": list(shipment_ids)})
        return {row.id: ShipmentRecord(**row._asdict()) for row in rows}

    def save_shipment(self, shipment: ShipmentRecord) -> None:
        # Field by field, not dataclasses.asdict: that deep-copies the decision and result on every save.
        values: dict[str, object] = {f"b_{f}": getattr(shipment, f) for f in _MUTABLE_FIELDS}
        values["b_id"] = shipment.id
        self._conn.execute(_SAVE_SHIPMENT, values)

    def add_event(self, shipment_id: str, event: EventRecord) -> None:
        self._conn.execute(
            _INSERT_EVENT,
            {
                "shipment_id": shipment_id,
                "at": event.at,
                "type": event.type,
                "state": event.state,
                "channel": event.channel,
                "message": event.message,
                "details": dict(event.details),
            },
        )

    def events(self, shipment_id: str) -> Sequence[EventRecord]:
        rows = self.session.scalars(
            select(EventRow).where(EventRow.shipment_id == shipment_id).order_by(EventRow.id)
        )
        return [EventRecord(r.at, r.type, r.message, r.state, r.channel, r.details or {}) for r in rows]

    def attempts(self, shipment_id: str) -> Sequence[AttemptRecord]:
        rows = self.session.scalars(
            select(AttemptRow).where(AttemptRow.shipment_id == shipment_id).order_by(AttemptRow.attempt_no)
        )
        return [
            AttemptRecord(
                r.attempt_no,
                r.channel,
                r.worker,
                r.started_at,
                r.finished_at,
                r.outcome,
                r.detail,
                r.external_ref,
            )
            for r in rows
        ]

    def start_attempt(self, shipment_id: str, attempt: AttemptRecord) -> None:
        self._conn.execute(
            _INSERT_ATTEMPT,
            {
                "shipment_id": shipment_id,
                "attempt_no": attempt.attempt_no,
                "channel": attempt.channel,
                "worker": attempt.worker[:100],
                "started_at": attempt.started_at,
            },
        )

    def finish_attempt(
        self,
        shipment_id: str,
        attempt_no: int,
        finished_at: datetime,
        outcome: str,
        detail: str,
        external_ref: str | None,
    ) -> None:
        self._conn.execute(
            _FINISH_ATTEMPT,
            {
                "b_id": shipment_id,
                "b_no": attempt_no,
                "b_at": finished_at,
                "b_outcome": outcome,
                "b_detail": detail[:2000],
                "b_ref": external_ref,
            },
        )

    def count_attempts(self, shipment_id: str, channel: str) -> int:
        return int(
            self._conn.execute(_COUNT_ATTEMPTS, {"b_id": shipment_id, "b_channel": channel}).scalar() or 0
        )

    def sent_record(self, shipment_id: str, channel: str) -> SentRecord | None:
        row = self._conn.execute(_SEND_BY_KEY, {"b_id": shipment_id, "b_channel": channel}).first()
        if row is None:
            return None
        return SentRecord(row.external_ref, row.detail, dict(row.data), row.sent_at)

    def add_sent_record(self, shipment_id: str, channel: str, record: SentRecord) -> None:
        if self.sent_record(shipment_id, channel) is not None:
            return
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    _INSERT_SEND,
                    {
                        "shipment_id": shipment_id,
                        "channel": channel,
                        "external_ref": record.external_ref,
                        "detail": record.detail,
                        "data": dict(record.data),
                        "sent_at": record.sent_at,
                    },
                )
        except IntegrityError:
            pass  # a concurrent writer recorded it first: first write wins

    # ------------------------------------------------------------------------------------------ outbox

    def enqueue(self, shipment_id: str, not_before: datetime, now: datetime) -> None:
        self._conn.execute(
            _INSERT_WORK_ITEM,
            {
                "shipment_id": shipment_id,
                "status": "READY",
                "not_before": not_before,
                "claims": 0,
                "created_at": now,
            },
        )

    def claim(self, worker: str, now: datetime, lease: timedelta, limit: int) -> Sequence[Claim]:
        return outbox.claim(self._conn, worker, now, lease, limit)

    def _on_ours(self, stmt: Update, claim: Claim, **params: object) -> None:
        """Run `stmt` (WHERE _OURS) on this claim's work item; LeaseLostError if the item is not ours."""
        res = self._conn.execute(stmt, {"b_item": claim.work_item_id, "b_token": claim.token, **params})
        if res.rowcount != 1:
            raise LeaseLostError(str(claim.work_item_id))

    def complete(self, claim: Claim, now: datetime) -> None:
        self._on_ours(_COMPLETE, claim, b_now=now)

    def check_lease(self, claim: Claim, *, extend_until: datetime | None = None) -> None:
        if extend_until is None:
            self._on_ours(_CHECK_LEASE, claim)
        else:
            self._on_ours(_EXTEND_LEASE, claim, b_until=extend_until)

    def release(self, claim: Claim) -> None:
        self._conn.execute(_RELEASE, {"b_item": claim.work_item_id, "b_token": claim.token})

    # ------------------------------------------------------------------------------------ print batches

    def assign_to_print_batch(
        self,
        shipment_id: str,
        sender_key: str,
        staged: StagedLetter,
        record: Mapping[str, object],
        now: datetime,
        new_batch_id: str,
    ) -> tuple[PrintBatchRecord, int]:
        existing = self._conn.execute(_PRINT_ITEM, {"b_id": shipment_id}).first()
        if existing is not None:
            batch = self._conn.execute(_BATCH_BY_ID, {"b_id": existing.batch_id}).one()
            return _batch(batch), existing.sequence
        for _ in range(10):
            batch_id = self._conn.execute(_OPEN_BATCH, {"b_sender": sender_key}).scalar()
            if batch_id is None:
                outbox.insert_open_batch(self._conn, new_batch_id, sender_key, now)
                continue
            taken = self._conn.execute(
                _TAKE_BATCH_PLACE, {"b_id": batch_id, "b_bytes": staged.size_bytes}
            ).first()
            if taken is None:
                continue
            seq = taken.letter_count
            self._conn.execute(
                _INSERT_PRINT_ITEM,
                {
                    "shipment_id": shipment_id,
                    "batch_id": batch_id,
                    "sequence": seq,
                    "staged_name": staged.name,
                    "pages": staged.pages,
                    "size_bytes": staged.size_bytes,
                    "record": dict(record),
                },
            )
            return _batch(taken), seq
        raise RuntimeError("could not find or open a print batch after 10 tries")

    def due_print_batches(
        self, now: datetime, max_age: timedelta, max_letters: int, max_bytes: int
    ) -> Sequence[PrintBatchRecord]:
        rows = self.session.scalars(
            select(PrintBatchRow).where(
                (
                    (PrintBatchRow.status == "OPEN")
                    & (PrintBatchRow.letter_count > 0)
                    & (
                        (PrintBatchRow.letter_count >= max_letters)
                        | (PrintBatchRow.total_bytes >= max_bytes)
                        | (PrintBatchRow.opened_at <= now - max_age)
                    )
                )
                | (PrintBatchRow.status == "FULL")
                | ((PrintBatchRow.status == "CLOSING") & (PrintBatchRow.lease_expires_at < now))
            )
        )
        return [_batch(r) for r in rows]

    def mark_print_batch_full(self, batch_id: str) -> None:
        self._conn.execute(_MARK_FULL, {"b_id": batch_id})

    def start_closing(self, batch_id: str, now: datetime, lease: timedelta) -> bool:
        res = self._update(
            update(PrintBatchRow)
            .where(
                PrintBatchRow.id == batch_id,
                PrintBatchRow.status.in_(("OPEN", "FULL"))
                | ((PrintBatchRow.status == "CLOSING") & (PrintBatchRow.lease_expires_at < now)),
            )
            .values(status="CLOSING", closing_at=now, lease_expires_at=now + lease)
        )
        return bool(res.rowcount == 1)

    def print_items(self, batch_id: str) -> Sequence[tuple[str, int, Mapping[str, object]]]:
        rows = self.session.scalars(
            select(PrintItemRow).where(PrintItemRow.batch_id == batch_id).order_by(PrintItemRow.sequence)
        )
        return [(r.shipment_id, r.sequence, r.record) for r in rows]

    def finish_closing(self, batch_id: str, path: str, now: datetime) -> Sequence[str]:
        self._update(
            update(PrintBatchRow)
            .where(PrintBatchRow.id == batch_id, PrintBatchRow.status == "CLOSING")
            .values(status="CLOSED", closed_at=now, path=path, lease_expires_at=None)
        )
        return list(
            self.session.scalars(select(PrintItemRow.shipment_id).where(PrintItemRow.batch_id == batch_id))
        )

    def print_batch(self, batch_id: str) -> PrintBatchRecord | None:
        row = self.session.get(PrintBatchRow, batch_id)
        return None if row is None else _batch(row)

    def awaiting_decision(self, now: datetime, limit: int) -> Sequence[tuple[str, str]]:
        rows = self.session.execute(
            select(ShipmentRow.sender_key, ShipmentRow.recipient_id)
            .join(WorkItemRow, WorkItemRow.shipment_id == ShipmentRow.id)
            .where(
                WorkItemRow.status == "READY",
                WorkItemRow.not_before <= now,
                ShipmentRow.state == "ACCEPTED",
            )
            .order_by(WorkItemRow.not_before, WorkItemRow.id)
            .limit(limit)
        )
        return [(r[0], r[1]) for r in rows]

    def print_batches(self, statuses: Sequence[str], limit: int) -> Sequence[PrintBatchRecord]:
        query = select(PrintBatchRow).order_by(PrintBatchRow.opened_at.desc(), PrintBatchRow.id).limit(limit)
        if statuses:
            query = query.where(PrintBatchRow.status.in_(list(statuses)))
        return [_batch(r) for r in self.session.scalars(query)]

    def ping(self) -> None:
        """A statement on this unit's connection; a connection that is gone (or a transaction that can no
        longer go on because of it) is UnavailableError."""
        try:
            self.session.execute(text("SELECT 1"))
        except PendingRollbackError as exc:
            raise UnavailableError(
                "the database connection failed in this transaction", cause=str(exc).splitlines()[0]
            ) from exc
        except DBAPIError as exc:
            if _outage(exc):
                raise UnavailableError(
                    "the database cannot be reached or is busy", cause=_first_line(exc)
                ) from exc
            raise


def unit_of_work_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)
