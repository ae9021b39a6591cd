"""The relay's own store: distributions (the buffer), delivery attempts, mailbox operators, refusals.

Tables live in their own MetaData with the ``formedlare_`` prefix, so the relay can share a database with
kanalväxel without touching its migrations. Status values are upper-case strings that never change once
stored. SQLite (WAL, one writer, ``BEGIN IMMEDIATE``) and PostgreSQL are both supported.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import QueuePool

from formedlare.sqlite_writer import LockingConnection, WriterLock, lock_file_for

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Longest response text or error kept per attempt: enough to read a fault, never a whole letter.
RESPONSE_EXCERPT = 2000


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
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)


class DistributionRow(Base):
    """One signed delivery the relay accepted, kept byte for byte until it is delivered or fails."""

    __tablename__ = "formedlare_distributions"
    __table_args__ = (
        # The idempotency key: the same delivery handed over again is the same distribution.
        UniqueConstraint("sender_id", "message_key", name="uq_formedlare_distributions_sender_message"),
        Index("ix_formedlare_distributions_due", "state", "next_attempt_at"),
        Index("ix_formedlare_distributions_operator", "operator_id", "state"),
        Index("ix_formedlare_distributions_sha256", "sha256"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sender_id: Mapped[str] = mapped_column(String(12))
    #: SHA-256 (hex) of the message ids in order, so the unique index stays small whatever the ids are.
    message_key: Mapped[str] = mapped_column(String(64))
    message_ids: Mapped[str] = mapped_column(Text)  # JSON list, for people and the status API
    recipient_id: Mapped[str] = mapped_column(String(12))
    signed_delivery: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    #: Routing from the latest FaR answer; the operator's queue holds the letter from then on.
    operator_id: Mapped[str | None] = mapped_column(String(12), ForeignKey("formedlare_operators.id"))
    operator_name: Mapped[str | None] = mapped_column(String(256))
    trans_id: Mapped[str | None] = mapped_column(String(256))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class OperatorRow(Base):
    """A mailbox operator as FaR names it, with its queue's backoff."""

    __tablename__ = "formedlare_operators"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)  # 16 + organisation number
    name: Mapped[str] = mapped_column(String(256))
    service_address: Mapped[str] = mapped_column(Text)
    #: Transient failures in a row; the queue's backoff is computed from it and reset by a success.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AttemptRow(Base):
    """One try at one distribution: a FaR lookup that failed, or a deliverSecure call and its outcome.

    An attempt with no ``finished_at`` whose ``expires_at`` lies ahead is in flight; one whose ``expires_at``
    passed belonged to a worker that died: its outcome is unknown (the operator may have the letter)."""

    __tablename__ = "formedlare_attempts"
    __table_args__ = (
        Index("ix_formedlare_attempts_in_flight", "operator_id", "finished_at", "expires_at"),
        Index("ix_formedlare_attempts_distribution", "distribution_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    distribution_id: Mapped[str] = mapped_column(String(36), ForeignKey("formedlare_distributions.id"))
    operator_id: Mapped[str | None] = mapped_column(String(12), ForeignKey("formedlare_operators.id"))
    lease_token: Mapped[str] = mapped_column(String(36))
    started_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    http_status: Mapped[int | None] = mapped_column(Integer)
    #: Whether the request may have reached the operator (the answer was lost, or a 5xx came back).
    outcome_unknown: Mapped[bool] = mapped_column(Boolean, default=False)
    response: Mapped[str | None] = mapped_column(Text)


class RefusalRow(Base):
    """A delivery the relay refused at the door. Holds the digest of the bytes, never their content."""

    __tablename__ = "formedlare_refusals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    refused_at: Mapped[datetime]
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    sender_id: Mapped[str | None] = mapped_column(String(64))
    message_ids: Mapped[str | None] = mapped_column(Text)  # JSON list when the delivery could be read
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)


#: Execution option of a connection that only reads: on SQLite it begins deferred, without the writers' turn.
READ_ONLY = "formedlare_read_only"


def make_engine(url: str) -> Engine:
    """An engine for the relay's store. For SQLite: the file's directory is created, WAL and a busy
    timeout are set, and every transaction starts with ``BEGIN IMMEDIATE`` (one writer, no deferred-lock
    surprises) after the writers' turn, except on a connection with the :data:`READ_ONLY` option, which
    begins deferred and waits for nobody."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    database = parsed.database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # A pool of connections, each used by one thread at a time (check_same_thread off for that reason only).
    # Closing a SQLite connection after every transaction, as a NullPool does, checkpoints the WAL each time:
    # the relay's largest cost per letter after the signatures.
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=8,
        max_overflow=24,
        connect_args={"timeout": 30, "check_same_thread": False, "factory": LockingConnection},
    )
    writer_lock = WriterLock(lock_file_for(database))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: LockingConnection, _record: Any) -> None:
        # We issue BEGIN ourselves: pysqlite's implicit BEGIN is DEFERRED, and a deferred transaction that
        # later writes fails with "database is locked" instead of waiting its turn.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a delivery the relay accepted survives a power cut, not only a crash (NORMAL loses the last
        # commits in WAL mode).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
        dbapi_conn.writer_lock = writer_lock

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        dbapi_conn: LockingConnection = conn.connection.dbapi_connection
        if conn.get_execution_options().get(READ_ONLY):
            # A reader in WAL mode sees the last commit and waits for no writer.
            conn.exec_driver_sql("BEGIN")
            return
        # The turn among writers (formedlare.sqlite_writer), then BEGIN IMMEDIATE.
        dbapi_conn.take_writer_lock()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            dbapi_conn.release_writer_lock()
            raise

    return engine


def ensure_schema(engine: Engine) -> None:
    """Create the relay's tables that do not exist yet (``create_all``; existing tables are left alone).

    This is enough for the relay's own store while its schema is young: there is no migration history to
    keep. The first change to an existing table must come with an Alembic migration of its own.
    """
    Base.metadata.create_all(engine)
