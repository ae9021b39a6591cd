"""The PostgreSQL test set-up itself: CI proves the server is there; each test gets its own database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL_ENV, postgres_url


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
