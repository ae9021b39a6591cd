"""What our log lines may carry: no password from a URL, the real database kind, identity numbers masked
at INFO but shipment ids (UUIDs) whole, and no raw control character from outside."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kanalvaxel.config import load_settings
from kanalvaxel.domain.masking import escape_controls, mask_identity_numbers, redact_passwords
from kanalvaxel.entrypoints.cli import _warn_defaults, setup_logging


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("KANALVAXEL_") and k != "KANALVAXEL_TEST_POSTGRES_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_the_sandbox_warning_names_postgresql_and_hides_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO")
    settings = load_settings(database={"url": "postgresql+psycopg://kanalvaxel:s3cret@db.internal:5432/kv"})
    _warn_defaults(settings)
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "PostgreSQL at postgresql+psycopg://kanalvaxel:***@db.internal:5432/kv" in err
    assert "SQLite" not in err


def test_every_logged_line_is_redacted_masked_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG")
    log = logging.getLogger("kanalvaxel.test")
    shipment = "6a2b0f3e-11c4-4d6e-9f00-521794092bb5"
    log.info(
        "relay at %s for %s, shipment %s",
        "https://u:hemligt@relay.example/x?token=abc",
        "19121212-1212",
        shipment,
    )
    log.debug("debug sees %s", "postgresql://a:b@h/d")
    log.warning("path %s", "/v1/\x1b[2J\x08x\nFORGED 200")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3  # the newline from outside did not make a line of its own
    assert "https://u:***@relay.example/x?token=***" in err[0]
    assert "19121212-****" in err[0]
    assert shipment in err[0]
    assert "postgresql://a:***@h/d" in err[1]
    assert "\x1b" not in err[2]
    assert "\\x1b[2J\\x08x\\nFORGED 200" in err[2]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("id 3f1c2a9e-5b7d-4e21-9a0c-123456794092", "id 3f1c2a9e-5b7d-4e21-9a0c-123456794092"),
        ("batch 19121212-1212-4e21-9a0c-123456789012", "batch 19121212-1212-4e21-9a0c-123456789012"),
        (
            "pnr 19121212-1212 id 3f1c2a9e-5b7d-4e21-9a0c-123456794092",
            "pnr 19121212-**** id 3f1c2a9e-5b7d-4e21-9a0c-123456794092",
        ),
    ],
)
def test_the_identity_masker_leaves_uuids_alone(text: str, masked: str) -> None:
    assert mask_identity_numbers(text) == masked


def test_redaction_and_escaping_helpers() -> None:
    assert redact_passwords("sqlite:///./var/kanalvaxel.db") == "sqlite:///./var/kanalvaxel.db"
    assert redact_passwords("smtp://user:p%40ss@mail:587") == "smtp://user:***@mail:587"
    assert escape_controls("Åsa\u202e") == "Åsa\\u202e"
