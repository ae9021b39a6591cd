"""Engines: SQLite (WAL, one writer, BEGIN IMMEDIATE) by default, PostgreSQL for production."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool


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
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _sqlite_pragmas(engine)
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


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's own implicit BEGIN is DEFERRED, and a deferred
        # transaction that later writes can fail with "database is locked" instead of waiting.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A unit of work that only reads (repository.READ_ONLY) needs no write lock: a deferred BEGIN reads a
        # snapshot while writers go on.
        read_only = conn.get_execution_options().get("kanalvaxel_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
