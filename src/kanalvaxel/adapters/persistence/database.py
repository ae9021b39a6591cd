"""Engines: SQLite (WAL, one writer, BEGIN IMMEDIATE) by default, PostgreSQL for production.

On SQLite a transaction that only reads (READ_ONLY) begins deferred and waits for no writer; writers take
turns on a lock of their own (formedlare.sqlite_writer: among this process's threads, then among processes
by a file lock beside the database) before they meet at SQLite's."""

from __future__ import annotations

import sqlite3
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from formedlare.sqlite_writer import LockingConnection, WriterLock, lock_file_for

#: What every SQLite connection is set to (bench/intake.py gives its bare endpoint the same).
#: synchronous=FULL: in WAL mode every commit is synced to disk, so what was accepted survives a power cut,
#: not only a crash of the process (NORMAL would lose the last commits); bench/intake.py measures both.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000")
#: How long a writer waits for another one, in this process (the writer lock) or in another (busy_timeout).
SQLITE_WRITER_WAIT_SECONDS = 30.0
#: Whether the writers of one process take turns on a lock of their own before SQLite's (bench/intake.py
#: turns it off to compare).
SQLITE_WRITER_LOCK = True
#: The execution option (Session(execution_options=...)) of a transaction that only reads: on SQLite it
#: starts with a deferred BEGIN, which reads a snapshot of the WAL and waits for no writer.
READ_ONLY = "kanalvaxel_read_only"


_writer_locks: weakref.WeakKeyDictionary[Engine, WriterLock] = weakref.WeakKeyDictionary()


def writer_lock(engine: Engine) -> WriterLock | None:
    """The writer lock of a SQLite engine made by make_engine (None for other engines, or when it is off)."""
    return _writer_locks.get(engine)


#: A connection that gives the writer lock back when its write transaction ends (commit, rollback, close).
_SqliteConnection = LockingConnection


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine; for SQLite make the file's directory and set the pragmas we rely on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # A pool of connections, each used by one thread at a time (check_same_thread off for that reason
        # only). Closing a SQLite connection after every transaction, as a NullPool does, checkpoints the WAL
        # each time: that was the largest single cost of a letter (bench/volume.py).
        engine = create_engine(
            url,
            echo=echo,
            poolclass=QueuePool,
            pool_size=8,
            max_overflow=24,
            connect_args={
                "timeout": SQLITE_WRITER_WAIT_SECONDS,
                "check_same_thread": False,
                "factory": _SqliteConnection,
            },
        )
        lock = WriterLock(lock_file_for(database)) if SQLITE_WRITER_LOCK else None
        if lock is not None:
            _writer_locks[engine] = lock
        _sqlite_pragmas(engine, lock)
        return engine
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        # A server that does not answer is an outage to report (503), not a request to hang on.
        connect_args={"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {},
    )


def _sqlite_pragmas(engine: Engine, writer_lock: WriterLock | None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: _SqliteConnection, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's own implicit BEGIN is DEFERRED, and a deferred
        # transaction that later writes can fail with "database is locked" instead of waiting.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cur.execute(f"PRAGMA {pragma}")
        cur.close()
        dbapi_conn.writer_lock = writer_lock

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Straight to the driver: through exec_driver_sql a BEGIN cost as much as the SELECT after it.
        dbapi_conn: _SqliteConnection = conn.connection.dbapi_connection
        if conn.get_execution_options().get(READ_ONLY):
            _begin(dbapi_conn, "BEGIN")
            return
        # SQLite has one writer at a time. A writer that finds the file locked sleeps and tries again (1, 2,
        # 5, ... up to 100 ms at a time) until busy_timeout; waiting on a lock of our own instead, the
        # next writer of this process starts the moment the last one commits. Writers of other processes
        # (a separate `kanalvaxel worker`) still meet at SQLite's lock.
        lock = dbapi_conn.writer_lock
        if lock is not None and not dbapi_conn.holds_writer_lock:
            dbapi_conn.holds_writer_lock = lock.acquire(timeout=SQLITE_WRITER_WAIT_SECONDS)
        try:
            _begin(dbapi_conn, "BEGIN IMMEDIATE")
        except BaseException:
            dbapi_conn.release_writer_lock()
            raise


def _begin(dbapi_conn: sqlite3.Connection, statement: str) -> None:
    try:
        dbapi_conn.execute(statement)
    except sqlite3.Error as exc:
        # As SQLAlchemy would have raised it ("database is locked" is an outage: repository._outage).
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc
