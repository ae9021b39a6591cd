"""Helpers for the REST API tests: valid payloads with a real PDF, headers, row counts, problem checks."""

from __future__ import annotations

import base64
import copy
import io
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from kanalvaxel.bootstrap import Container

PROBLEM = "application/problem+json"
TOLVAN = "19121212-1212"  # Skatteverket's test personnummer: valid check digit
#: The tables a submitted letter writes to; a refused request must leave all of them as they were.
WRITTEN_TABLES = ("shipments", "shipment_events", "work_items")

MakeContainer = Callable[..., Container]


def make_pdf(text: str = "Beslut om bygglov", pages: int = 1) -> bytes:
    """A small, real PDF."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4)
    for n in range(pages):
        pdf.drawString(72, 770, f"{text} ({n + 1}/{pages})")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


PDF = make_pdf()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_PAYLOAD: dict[str, Any] = {
    "recipient": {
        "id": TOLVAN,
        "name": "Tolvan Tolvansson",
        "postal_address": {"lines": ["Storgatan 1"], "postal_code": "123 45", "city": "Småstad"},
    },
    "subject": "Beslut om bygglov",
    "body": {"content_type": "text/plain", "content": "Hej! Här kommer beslutet."},
    "attachments": [{"filename": "beslut.pdf", "content_base64": b64(PDF)}],
    "confidentiality": "public",
    "message_type": "beslut",
    "case_reference": "BN 2026/42",
    "support_info": {"text": "Frågor? Ring kommunens kontaktcenter.", "phone": "010-000 00 00"},
}


def payload(**changes: Any) -> dict[str, Any]:
    """A valid letter (with a real PDF attached); keyword arguments replace top-level fields."""
    body = copy.deepcopy(_PAYLOAD)
    body.update(copy.deepcopy(changes))
    return body


def headers(key: str, idempotency_key: str | None = "idem-1") -> dict[str, str]:
    out = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        out["Idempotency-Key"] = idempotency_key
    return out


def row_counts(container: Container) -> dict[str, int]:
    with container.engine.connect() as conn:
        return {
            t: conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one()
            for t in WRITTEN_TABLES
        }


NOTHING_WRITTEN = dict.fromkeys(WRITTEN_TABLES, 0)


def assert_problem(
    response: httpx.Response, status: int, *, field: str | None = None, detail: str | None = None
) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status, naming `field` and mentioning `detail`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("urn:kanalvaxel:problem:")
    assert problem["title"]
    if field is not None:
        assert problem.get("field") == field, problem
        assert field in problem["detail"], problem
    if detail is not None:
        assert detail.lower() in problem["detail"].lower(), problem
    return problem
