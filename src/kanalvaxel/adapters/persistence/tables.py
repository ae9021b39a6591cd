"""Tables. Status columns hold upper-case values that never change once stored (STYLE §Words)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no zone, and comparisons must agree everywhere."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class ApiClient(Base):
    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    senders: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ShipmentRow(Base):
    __tablename__ = "shipments"
    __table_args__ = (
        UniqueConstraint("client_id", "idempotency_key", name="uq_shipments_client_idempotency"),
        Index("ix_shipments_state_updated", "state", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    sender_key: Mapped[str] = mapped_column(String(64))
    recipient_id: Mapped[str] = mapped_column(String(12), index=True)
    recipient_kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255))
    confidentiality: Mapped[str] = mapped_column(String(16))
    message_type: Mapped[str] = mapped_column(String(100))
    case_reference: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(32))
    #: Index into decision["channels"] of the channel being tried.
    channel_index: Mapped[int] = mapped_column(Integer, default=0)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    accepted_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    content_purged_at: Mapped[datetime | None]


class ShipmentContentRow(Base):
    """The letter itself (personal data and perhaps secrets): kept apart so it can be purged alone."""

    __tablename__ = "shipment_contents"

    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), primary_key=True)
    letter: Mapped[dict[str, Any]] = mapped_column(JSON)


class AttachmentRow(Base):
    __tablename__ = "shipment_attachments"

    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)


class EventRow(Base):
    """Append-only: rows are inserted, never updated or deleted (but for the retention purge)."""

    __tablename__ = "shipment_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str | None] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AttemptRow(Base):
    """One row per delivery attempt; `outcome` stays NULL when the worker died during the attempt."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (UniqueConstraint("shipment_id", "attempt_no", name="uq_delivery_attempts_shipment_no"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(32))
    worker: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    external_ref: Mapped[str | None] = mapped_column(String(255))


class SentRow(Base):
    """What a channel without idempotency of its own already sent (ports.SendJournal): one row per
    (shipment, channel or notice), written right after the remote side accepted."""

    __tablename__ = "channel_sends"

    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    external_ref: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    sent_at: Mapped[datetime]


class WorkItemRow(Base):
    """The outbox. At most one live (READY or CLAIMED) item per shipment."""

    __tablename__ = "work_items"
    __table_args__ = (
        Index(
            "uq_work_items_live_shipment",
            "shipment_id",
            unique=True,
            postgresql_where=text("status <> 'DONE'"),
            sqlite_where=text("status <> 'DONE'"),
        ),
        Index("ix_work_items_status_not_before", "status", "not_before"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"))
    status: Mapped[str] = mapped_column(String(16))  # READY, CLAIMED, DONE
    not_before: Mapped[datetime]
    claims: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    done_at: Mapped[datetime | None]


class PrintBatchRow(Base):
    __tablename__ = "print_batches"
    __table_args__ = (
        Index(
            "uq_print_batches_open_sender",
            "sender_key",
            unique=True,
            postgresql_where=text("status = 'OPEN'"),
            sqlite_where=text("status = 'OPEN'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sender_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # OPEN, FULL, CLOSING, CLOSED
    opened_at: Mapped[datetime]
    closing_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    letter_count: Mapped[int] = mapped_column(Integer, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str | None] = mapped_column(Text)


class PrintItemRow(Base):
    __tablename__ = "print_items"
    __table_args__ = (UniqueConstraint("batch_id", "sequence", name="uq_print_items_batch_sequence"),)

    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("print_batches.id"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    staged_name: Mapped[str] = mapped_column(String(255))
    pages: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
