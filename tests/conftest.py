"""Suite-wide test infrastructure only: PostgreSQL databases, development certificates, ../shared.

Fixtures for one area belong in that area's own conftest.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from kanalvaxel.devcerts import ensure_dev_certs

POSTGRES_URL_ENV = "KANALVAXEL_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def postgres_url() -> str:
    """The SQLAlchemy URL of the test server's base database. Missing: fails in CI, skips elsewhere."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    if in_ci():
        pytest.fail(f"{POSTGRES_URL_ENV} is not set: CI must run PostgreSQL tests (.ci/run sets it)")
    pytest.skip(
        f"PostgreSQL tests need {POSTGRES_URL_ENV} (set by .ci/run); e.g. "
        "postgresql+psycopg://kanalvaxel:kanalvaxel@127.0.0.1:5432/kanalvaxel_test"
    )


def shared_dir() -> Path:
    """The project's ../shared folder (interop vectors, contracts); CI always has it beside the clone."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip("../shared is absent (a user's own clone); CI always has it")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses a database is a PostgreSQL test, so `-m "not postgres"` selects the rest.
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database of its own for each test; yields its SQLAlchemy URL and drops it afterwards."""
    base = make_url(postgres_url())
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"kvtest_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        # template0 + UTF8: independent of the cluster's default encoding (SQL_ASCII where initdb ran without
        # a locale, as in a bare container), so Swedish text round-trips in every test database.
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name))
        )
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            _drop_database(admin, name)


def _drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    """Drop a test database, even when a background process (autovacuum) happens to be working in it.

    WITH (FORCE) must be allowed to terminate every backend in the database; an autovacuum worker has no role,
    so only members of pg_signal_backend may end it (.ci/run grants that). Without it a plain DROP still
    works: it cancels autovacuum itself and fails only while a client is connected, which is retried briefly.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    try:
        admin.execute(statement + sql.SQL(" WITH (FORCE)"))
        return
    except psycopg.errors.InsufficientPrivilege:
        pass
    for attempt in range(50):
        try:
            admin.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 49:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of development certificates (see kanalvaxel.devcerts), generated once per session."""
    directory = tmp_path_factory.mktemp("dev-certs")
    ensure_dev_certs(directory)
    return directory


@pytest.fixture(name="shared_dir")
def shared_dir_fixture() -> Path:
    return shared_dir()


def _kanalvaxel() -> list[str]:
    script = Path(sys.executable).parent / "kanalvaxel"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kanalvaxel.entrypoints.cli"]


def run_cli(tmp_path: Path, dev_certs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kanalvaxel ARGS` as an operator runs it: sandbox settings on the SQLite database tmp_path/cli.db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANALVAXEL_")}
    env |= {
        "KANALVAXEL_DATABASE__URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "KANALVAXEL_DEV_CERTS_DIR": str(dev_certs),
        "KANALVAXEL_VAR_DIR": str(tmp_path / "var"),
        "KANALVAXEL_PRINT__SPOOL_DIR": str(tmp_path / "spool"),
    }
    return subprocess.run(
        [*_kanalvaxel(), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
