"""The PostgreSQL test set-up itself: CI proves the server is there; each test gets its own database."""

from __future__ import annotations

import secrets

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from tests.conftest import POSTGRES_URL_ENV, _drop_database, postgres_url


def test_pg_url_is_a_fresh_database_of_its_own(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            name = conn.execute(sa.text("select current_database()")).scalar_one()
            encoding = conn.execute(
                sa.text("select pg_encoding_to_char(encoding) from pg_database where datname = :n"),
                {"n": name},
            ).scalar_one()
            swedish = conn.execute(sa.text("select :s"), {"s": "Sandlådans kommun – Å Ä Ö"}).scalar_one()
            tables = conn.execute(
                sa.text("select count(*) from information_schema.tables where table_schema = 'public'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert name.startswith("kvtest_")
    assert name != sa.make_url(postgres_url()).database
    assert tables == 0
    assert encoding == "UTF8"
    assert swedish == "Sandlådans kommun – Å Ä Ö"


def test_missing_url_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=POSTGRES_URL_ENV):
        postgres_url()


def test_missing_url_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"\.ci/run"):
        postgres_url()


def test_a_test_database_is_dropped_even_with_a_client_still_connected() -> None:
    base = sa.make_url(postgres_url())
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"kvtest_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        lingering = psycopg.connect(base.set(drivername="postgresql", database=name).render_as_string(False))
        try:
            _drop_database(admin, name)
            left = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
        finally:
            lingering.close()
    assert left == (0,)
