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


def raw_pdf(bodies: list[bytes], root: int = 1) -> bytes:
    """A PDF from its objects' bodies (object n is bodies[n-1]), with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(bodies) + 1, root, xref)
    )
    return out.getvalue()


def deep_page_tree_pdf(depth: int) -> bytes:
    """One page under `depth` nested /Pages nodes (pypdf refuses more than 100)."""
    bodies = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for i in range(depth):
        number = 2 + i
        parent = b"/Parent %d 0 R " % (number - 1) if i else b""
        bodies.append(b"<< /Type /Pages " + parent + b"/Kids [%d 0 R] /Count 1 >>" % (number + 1))
    bodies.append(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] >>" % (1 + depth))
    return raw_pdf(bodies)


def expanding_pdf(streams: int, expanded_bytes: int) -> bytes:
    """A one-page PDF with `streams` Flate streams of zeros, each `expanded_bytes` long when inflated
    (a thousand times what they take in the file)."""
    import zlib

    compressed = zlib.compress(b"\0" * expanded_bytes, 9)
    first_stream = 4
    refs = b" ".join(b"/X%d %d 0 R" % (i, first_stream + i) for i in range(streams))
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << "
        + refs
        + b" >> >> >>",
    ]
    for _ in range(streams):
        bodies.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 1 1] /Filter /FlateDecode /Length %d >>\nstream\n"
            % len(compressed)
            + compressed
            + b"\nendstream"
        )
    return raw_pdf(bodies)
