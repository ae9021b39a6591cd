"""Realistic data for schemathesis' positive cases (loaded with SCHEMATHESIS_HOOKS).

The schema says what a letter looks like, but not everything a letter must be: an identity number has a
check digit and a date, an attachment must be a real PDF, and the sender is one of this installation's
sender identities. Left to chance, a generated letter almost never passes those, so no shipment is created
and the links from POST to GET are never followed. For cases schemathesis means to be valid (positive
mode) this fills those parts with real values; negative cases are left exactly as generated, so every
check that invalid input is refused still sees invalid input.
"""

from __future__ import annotations

import base64
import io
import itertools
import uuid
from typing import Any

import schemathesis
from reportlab.pdfgen import canvas
from schemathesis.generation.modes import GenerationMode

#: Recipients the sandbox knows (mailbox at Kivra or MMP, pending, opted out) and others (paper).
RECIPIENTS = itertools.cycle(
    ["19700101-1233", "19811218-9876", "19900101-2385", "19750505-2386", "556000-0001", "19121212-1212"]
)


def _pdf() -> str:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.drawString(72, 770, "Bilaga")
    c.showPage()
    c.save()
    return base64.b64encode(buf.getvalue()).decode("ascii")


PDF = _pdf()


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if context.operation is None or not _positive(case):
        return case
    if context.operation.label == "GET /v1/recipients/{recipient_id}/channels":
        if isinstance(case.path_parameters, dict):
            case.path_parameters["recipient_id"] = next(RECIPIENTS)
        if isinstance(case.query, dict):
            case.query.pop("sender", None)
        return case
    if context.operation.label != "POST /v1/shipments":
        return case
    body = case.body
    if isinstance(body, dict):
        recipient = body.get("recipient")
        if isinstance(recipient, dict):
            recipient["id"] = next(RECIPIENTS)
        body.pop("sender", None)  # the client is bound to one sender identity: it may be left out
        for attachment in body.get("attachments") or []:
            if isinstance(attachment, dict):
                attachment["content_base64"] = PDF
    if isinstance(case.headers, dict):
        # A fresh key per generated letter: the same key with another body is a (correct) 409 every time.
        case.headers["Idempotency-Key"] = f"st-{uuid.uuid4()}"
    return case
