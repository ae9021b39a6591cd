"""The floor of durable intake for bench/intake.py: a bare FastAPI endpoint that stores the request body as it
came (no authentication, no validation) with one INSERT and a commit, before it answers 201.

Runs under uvicorn with the settings `kanalvaxel serve` uses (one process, `access_log=False`,
`log_config=None`, uvicorn's default loop and HTTP implementation). The database is the same kind as ours:
a SQLite file with our engine's pragmas (kanalvaxel.adapters.persistence.database.SQLITE_PRAGMAS, `BEGIN
IMMEDIATE`), or PostgreSQL at the given URL in a table of its own. Each threadpool thread keeps one
connection, as a pool would.
Usage: python bench/_bare_intake.py --database URL --port P [--synchronous NORMAL|FULL]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kanalvaxel.adapters.persistence.database import SQLITE_PRAGMAS  # noqa: E402

TABLE = "bench_intake_bare"


def sqlite_store(path: str, synchronous: str | None) -> Any:
    pragmas = [p for p in SQLITE_PRAGMAS if not (synchronous and p.startswith("synchronous="))]
    if synchronous:
        pragmas.append(f"synchronous={synchronous}")
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            for pragma in pragmas:
                conn.execute(f"PRAGMA {pragma}")
            local.conn = conn
        return conn

    setup = connection()
    setup.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} "
        "(id VARCHAR(36) PRIMARY KEY, idempotency_key VARCHAR(255) UNIQUE, body TEXT NOT NULL)"
    )

    def store(key: str, body: bytes) -> str:
        row_id = str(uuid.uuid4())
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO bench_intake_bare VALUES (?, ?, ?)", (row_id, key, body.decode()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return row_id

    return store


def postgres_store(url: str) -> Any:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    local = threading.local()

    def connection() -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(local, "conn", None)
        if conn is None:
            conn = psycopg.connect(dsn)
            local.conn = conn
        return conn

    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"DROP TABLE IF EXISTS {TABLE}")
        # json, as our letter content column is (sqlalchemy.JSON on PostgreSQL).
        setup.execute(
            f"CREATE TABLE {TABLE} (id VARCHAR(36) PRIMARY KEY, idempotency_key VARCHAR(255) UNIQUE, "
            "body JSON NOT NULL)"
        )

    def store(key: str, body: bytes) -> str:
        row_id = str(uuid.uuid4())
        conn = connection()
        with conn.transaction():  # BEGIN ... COMMIT: committed (durable) before we answer
            conn.execute("INSERT INTO bench_intake_bare VALUES (%s, %s, %s)", (row_id, key, body.decode()))
        return row_id

    return store


def create_app(database: str, synchronous: str | None) -> FastAPI:
    parsed = make_url(database)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database, "a SQLite file, not :memory:"
        store = sqlite_store(parsed.database, synchronous)
    else:
        store = postgres_store(database)
    app = FastAPI()

    @app.post("/bare", status_code=201)
    async def bare(request: Request) -> JSONResponse:
        body = await request.body()
        row_id = await run_in_threadpool(store, request.headers.get("idempotency-key", ""), body)
        return JSONResponse({"id": row_id}, status_code=201)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default=None)
    args = ap.parse_args()
    app = create_app(args.database, args.synchronous)
    # The same call as `kanalvaxel serve` (kanalvaxel.entrypoints.cli.serve).
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
