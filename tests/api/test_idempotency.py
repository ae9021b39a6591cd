"""Idempotency-Key: a replay returns the same shipment, another body with the same key is a conflict, keys
belong to one client — and two identical requests at the same moment make one shipment (SQLite and
PostgreSQL, through a real server)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container
from kanalvaxel.config import SANDBOX_SENDER_KEY

from .conftest import LiveServer
from .helpers import MakeContainer, assert_problem, headers, payload, row_counts

ONE = {"shipments": 1, "shipment_events": 1, "work_items": 1}


def test_same_key_same_body_returns_the_same_shipment(
    http: TestClient, container: Container, api_key: str
) -> None:
    first = http.post("/v1/shipments", json=payload(), headers=headers(api_key))
    assert first.status_code == 202, first.text
    again = http.post("/v1/shipments", json=payload(), headers=headers(api_key))
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert row_counts(container) == ONE


def test_a_replay_is_recognised_whatever_the_json_formatting(
    http: TestClient, container: Container, api_key: str
) -> None:
    first = http.post("/v1/shipments", json=payload(), headers=headers(api_key)).json()
    body = payload()
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=4, ensure_ascii=True)
    again = http.post(
        "/v1/shipments",
        content=reordered.encode(),
        headers={**headers(api_key), "Content-Type": "application/json"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    assert row_counts(container) == ONE


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "Beslut om bygglov (rättat)"},
        {"attachments": []},
        {"confidentiality": "internal"},
    ],
    ids=["subject", "attachments", "confidentiality"],
)
def test_same_key_other_body_is_409(
    http: TestClient, container: Container, api_key: str, change: dict[str, object]
) -> None:
    first = http.post("/v1/shipments", json=payload(), headers=headers(api_key)).json()
    r = http.post("/v1/shipments", json=payload(**change), headers=headers(api_key))
    problem = assert_problem(r, 409, detail="Idempotency-Key")
    assert first["id"] in problem["detail"]
    assert row_counts(container) == ONE


def test_the_same_key_from_another_client_is_another_shipment(
    http: TestClient, container: Container, api_key: str, other_key: str
) -> None:
    mine = http.post("/v1/shipments", json=payload(), headers=headers(api_key))
    theirs = http.post("/v1/shipments", json=payload(), headers=headers(other_key))
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    # Another body is no conflict either: the key is the other client's own.
    other_body = http.post(
        "/v1/shipments", json=payload(subject="Annat"), headers=headers(other_key, "idem-x")
    )
    assert other_body.status_code == 202
    mine_again = http.post("/v1/shipments", json=payload(subject="Annat"), headers=headers(api_key, "idem-x"))
    assert mine_again.status_code == 202
    assert row_counts(container)["shipments"] == 4


def test_a_refused_request_does_not_use_up_its_key(
    http: TestClient, container: Container, api_key: str
) -> None:
    bad = payload(subject="")
    assert_problem(http.post("/v1/shipments", json=bad, headers=headers(api_key)), 422, field="subject")
    ok = http.post("/v1/shipments", json=payload(), headers=headers(api_key))
    assert ok.status_code == 202, ok.text
    assert row_counts(container) == ONE


# ------------------------------------------------------------------------------------ at the same moment

N = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def race_container(request: pytest.FixtureRequest, make_container: MakeContainer) -> Container:
    if request.param == "sqlite":
        return make_container()
    pg_url: str = request.getfixturevalue("pg_url")
    return make_container(database_url=pg_url)


def _all_at_once(url: str, key: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    """POST every body with the same Idempotency-Key, each from its own thread and connection, released
    together by a barrier."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response | BaseException] = [RuntimeError("no answer")] * len(bodies)
    clients = [httpx.Client(base_url=url, timeout=30, trust_env=False) for _ in bodies]

    def send(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            answers[i] = clients[i].post("/v1/shipments", json=bodies[i], headers=headers(key, "race-1"))
        except BaseException as exc:
            answers[i] = exc

    try:
        for http in clients:  # connect first, so the barrier releases requests, not handshakes
            assert http.get("/healthz").status_code == 200
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for http in clients:
            http.close()
    responses = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(responses) == len(bodies), answers
    return responses


def test_identical_requests_at_the_same_moment_make_one_shipment(
    race_container: Container, live_server: Callable[[Container], LiveServer]
) -> None:
    key = race_container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    server = live_server(race_container)
    responses = _all_at_once(server.url, key, [payload() for _ in range(N)])
    assert {r.json()["id"] for r in responses} == {responses[0].json()["id"]}, [r.text for r in responses]
    assert Counter(r.status_code for r in responses) == {202: 1, 200: N - 1}
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in responses if r.status_code == 200)
    assert row_counts(race_container) == ONE


def test_different_requests_with_one_key_at_the_same_moment_make_one_shipment(
    race_container: Container, live_server: Callable[[Container], LiveServer]
) -> None:
    key = race_container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    server = live_server(race_container)
    responses = _all_at_once(server.url, key, [payload(subject=f"Beslut {i}") for i in range(N)])
    assert Counter(r.status_code for r in responses) == {202: 1, 409: N - 1}, [r.text for r in responses]
    [winner] = [r.json()["id"] for r in responses if r.status_code == 202]
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, detail=winner)
    assert row_counts(race_container) == ONE
