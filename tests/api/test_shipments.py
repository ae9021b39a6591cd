"""Accepted letters: 202 with a status URL, the stored content, the timeline, and one client's shipments
invisible to another."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container

from .helpers import PDF, TOLVAN, assert_problem, headers, payload, row_counts


def test_accepted_letter_is_202_with_id_state_and_status_url(
    http: TestClient, container: Container, api_key: str
) -> None:
    r = http.post("/v1/shipments", json=payload(), headers=headers(api_key))
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"id", "state", "status_url"}
    assert uuid.UUID(body["id"])
    assert body["state"] == "ACCEPTED"
    assert body["status_url"] == f"/v1/shipments/{body['id']}"
    assert r.headers["Location"] == body["status_url"]
    assert "Idempotent-Replayed" not in r.headers
    # "Accepted" means durably queued: the shipment, its first event and its work item, together.
    assert row_counts(container) == {"shipments": 1, "shipment_events": 1, "work_items": 1}
    with container.uow() as uow:
        stored = uow.shipment(body["id"])
        content = uow.letter_content(body["id"])
    assert stored is not None
    assert content is not None
    assert stored.state == "ACCEPTED"
    assert stored.recipient_id == "191212121212"
    letter, attachments = content
    assert letter["subject"] == "Beslut om bygglov"
    assert [(a.filename, hashlib.sha256(a.content).digest()) for a in attachments] == [
        ("beslut.pdf", hashlib.sha256(PDF).digest())
    ]


def test_get_returns_the_shipment_with_its_timeline(http: TestClient, api_key: str) -> None:
    accepted = http.post("/v1/shipments", json=payload(), headers=headers(api_key)).json()
    r = http.get(accepted["status_url"], headers=headers(api_key, None))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    shp = r.json()
    assert shp["id"] == accepted["id"]
    assert shp["state"] == "ACCEPTED"
    assert shp["channel"] is None
    assert shp["sender"] == "sandbox"
    assert shp["recipient"] == {"id": "191212121212", "kind": "PERSON"}
    assert shp["subject"] == "Beslut om bygglov"
    assert shp["confidentiality"] == "public"
    assert shp["message_type"] == "beslut"
    assert shp["case_reference"] == "BN 2026/42"
    assert shp["decision"] is None
    assert shp["finished_at"] is None
    assert shp["attempts"] == []
    [event] = shp["events"]
    assert event["type"] == "ACCEPTED"
    assert event["state"] == "ACCEPTED"
    assert event["message"]
    assert event["details"] == {"attachments": 1}
    assert datetime.fromisoformat(event["at"]) == datetime.fromisoformat(shp["accepted_at"])


def test_another_clients_shipment_is_404_like_a_missing_one(
    http: TestClient, api_key: str, other_key: str
) -> None:
    accepted = http.post("/v1/shipments", json=payload(), headers=headers(api_key)).json()
    theirs = http.get(accepted["status_url"], headers=headers(other_key, None))
    missing_id = str(uuid.uuid4())
    missing = http.get(f"/v1/shipments/{missing_id}", headers=headers(other_key, None))
    a = assert_problem(theirs, 404)
    b = assert_problem(missing, 404)
    # Nothing tells "exists but not yours" from "does not exist".
    assert (a["type"], a["title"]) == (b["type"], b["title"])
    assert a["detail"].replace(accepted["id"], "ID") == b["detail"].replace(missing_id, "ID")
    assert "case-system" not in a["detail"]
    # The owner still sees it.
    assert http.get(accepted["status_url"], headers=headers(api_key, None)).status_code == 200


def test_html_body_is_sanitised_before_it_is_stored(
    http: TestClient, container: Container, api_key: str
) -> None:
    html = (
        '<p onclick="steal()">Hej <strong>Tolvan</strong>!</p><script>alert("x")</script>'
        '<a href="javascript:alert(1)">klicka</a><img src="https://evil.example/px.gif">'
        '<a href="https://kommun.example/beslut">Läs mer</a>'
    )
    r = http.post(
        "/v1/shipments",
        json=payload(body={"content_type": "text/html", "content": html}),
        headers=headers(api_key),
    )
    assert r.status_code == 202, r.text
    with container.uow() as uow:
        content = uow.letter_content(r.json()["id"])
    assert content is not None
    stored = content[0]["body"]
    assert isinstance(stored, str)
    assert "<script" not in stored
    assert "alert" not in stored
    assert "onclick" not in stored
    assert "javascript:" not in stored
    assert "<img" not in stored
    assert "<strong>Tolvan</strong>" in stored
    assert 'href="https://kommun.example/beslut"' in stored
    assert content[0]["body_type"] == "text/html"


def test_plain_text_body_is_stored_as_sent(http: TestClient, container: Container, api_key: str) -> None:
    text = "Hej <Tolvan>! <script> är bara text här."
    r = http.post(
        "/v1/shipments",
        json=payload(body={"content_type": "text/plain", "content": text}),
        headers=headers(api_key),
    )
    assert r.status_code == 202, r.text
    with container.uow() as uow:
        content = uow.letter_content(r.json()["id"])
    assert content is not None
    assert content[0]["body"] == text


@pytest.mark.parametrize(
    ("recipient_id", "stored", "kind"),
    [
        (TOLVAN, "191212121212", "PERSON"),
        ("121212-1212", "201212121212", "PERSON"),  # ten digits and "-": born less than 100 years ago
        ("121212+1212", "191212121212", "PERSON"),  # "+": 100 years or older
        ("202100-5489", "162021005489", "ORGANISATION"),
    ],
)
def test_recipient_id_is_stored_in_its_twelve_digit_form(
    http: TestClient, api_key: str, recipient_id: str, stored: str, kind: str
) -> None:
    body = payload()
    body["recipient"]["id"] = recipient_id
    accepted = http.post("/v1/shipments", json=body, headers=headers(api_key))
    assert accepted.status_code == 202, accepted.text
    shp = http.get(accepted.json()["status_url"], headers=headers(api_key, None)).json()
    assert shp["recipient"] == {"id": stored, "kind": kind}
