"""The contract tests run the service on SQLite and PostgreSQL, as the other end-to-end tests do."""

from __future__ import annotations

from tests.integration.conftest import db_url  # noqa: F401
