"""Fixtures for tests that run the service's own code against a real database: SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from reportlab.pdfgen import canvas

from kanalvaxel.bootstrap import Container, build
from kanalvaxel.config import load_settings
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    BodyType,
    Confidentiality,
    Letter,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.ports import ClientRecord


class ManualClock:
    """A clock the test moves by hand (STYLE habit 11)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **kwargs: float) -> datetime:
        self._now += timedelta(**kwargs)
        return self._now


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kanalvaxel.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def make_pdf(text: str = "Beslut", pages: int = 1) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for i in range(pages):
        c.drawString(72, 720, f"{text} sida {i + 1}")
        c.showPage()
    c.save()
    return buf.getvalue()


def make_letter(
    *,
    recipient: str = "19121212-1212",
    name: str | None = "Tolvan Tolvansson",
    address: bool = True,
    confidentiality: Confidentiality = Confidentiality.PUBLIC,
    sender: str = "sandbox",
    email: str | None = None,
    subject: str = "Beslut om bygglov",
) -> Letter:
    from kanalvaxel.domain.model import Attachment

    return Letter(
        sender=sender,
        recipient=RecipientId.parse(recipient),
        subject=subject,
        body="Hej!\n\nHär kommer beslutet.",
        body_type=BodyType.TEXT,
        confidentiality=confidentiality,
        message_type="beslut",
        case_reference="BN 2026/42",
        support_info=SupportInfo("Ring kontaktcenter", phone="010-000 00 00"),
        attachments=(Attachment("beslut.pdf", make_pdf()),),
        recipient_info=RecipientInfo(
            name=name,
            postal_address=PostalAddress(("Storgatan 1",), "123 45", "Småstad") if address else None,
            email=email,
        ),
    )


def settings_for(db: str, tmp_path: Path, dev_certs: Path, **overrides: Any) -> Any:
    # Digital mail has its own tests (test_mina_meddelanden.py); elsewhere it would start simulators.
    overrides.setdefault("mina_meddelanden", {"enabled": False})
    overrides.setdefault("email", {"enabled": False})  # e-mail and SMS: test_messaging.py
    overrides.setdefault("sms", {"enabled": False})
    return load_settings(
        database={"url": db},
        print={"spool_dir": str(tmp_path / "spool"), **overrides.pop("print", {})},
        var_dir=str(tmp_path / "var"),
        dev_certs_dir=str(dev_certs),
        **overrides,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def container(db_url: str, tmp_path: Path, dev_certs: Path, clock: ManualClock) -> Iterator[Container]:
    c = build(settings_for(db_url, tmp_path, dev_certs), clock=clock)
    c.migrate()
    yield c
    c.close()


@pytest.fixture
def client(container: Container) -> ClientRecord:
    return container.clients.add("ärendesystem", ["sandbox"]).client
