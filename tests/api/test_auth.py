"""Who may call: API keys (401 with WWW-Authenticate) and the sender identities a client is bound to (403)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import cast

import httpx
import pytest
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container
from kanalvaxel.config import SANDBOX_SENDER_KEY
from kanalvaxel.entrypoints.api.app import create_app
from kanalvaxel.ports import ClientRecord, UnitOfWork
from kanalvaxel.services.clients import ClientService
from tests.integration.conftest import ManualClock

from .helpers import NOTHING_WRITTEN, TOLVAN, MakeContainer, assert_problem, headers, payload, row_counts

UNKNOWN_KEY = "kvx_0123456789abcdef_" + "A" * 43


def _assert_401(r: httpx.Response) -> None:
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer ", f"Bearer {UNKNOWN_KEY}", "Bearer not-a-key", "Basic dXNlcjpwYXNz"],
    ids=["none", "empty", "empty-bearer", "unknown", "malformed", "basic"],
)
def test_post_without_a_valid_key_is_401(
    http: TestClient, container: Container, authorization: str | None
) -> None:
    h = {"Idempotency-Key": "idem-1"}
    if authorization is not None:
        h["Authorization"] = authorization
    _assert_401(http.post("/v1/shipments", json=payload(), headers=h))
    assert row_counts(container) == NOTHING_WRITTEN


def test_a_forged_secret_for_a_real_key_id_is_401(
    http: TestClient, container: Container, api_key: str
) -> None:
    prefix, key_id, secret = api_key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'x' * len(secret)}"
    _assert_401(http.post("/v1/shipments", json=payload(), headers=headers(forged)))
    assert row_counts(container) == NOTHING_WRITTEN


def test_a_revoked_key_is_401_at_once(http: TestClient, container: Container, api_key: str) -> None:
    assert http.post("/v1/shipments", json=payload(), headers=headers(api_key)).status_code == 202
    container.clients.revoke("case-system-a")
    r = http.post("/v1/shipments", json=payload(), headers=headers(api_key, "idem-2"))
    _assert_401(r)
    assert "revoked" in r.json()["detail"]
    assert row_counts(container) == {"shipments": 1, "shipment_events": 1, "work_items": 1}
    _assert_401(http.get(f"/v1/recipients/{TOLVAN}/channels", headers=headers(api_key)))


def test_a_key_revoked_by_another_process_is_refused_once_the_key_cache_time_is_up(
    make_container: MakeContainer,
) -> None:
    clock = ManualClock()
    serving = make_container(clock=clock)  # the running `kanalvaxel serve`
    elsewhere = make_container(
        migrate=False
    )  # `kanalvaxel clients revoke`: the same database, its own process
    key = serving.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(serving)) as http:
        assert http.post("/v1/shipments", json=payload(), headers=headers(key, "idem-1")).status_code == 202
        elsewhere.clients.revoke("case-system-a")
        # Within api.key_cache_seconds (5 s) the service goes on with the key as it verified it ...
        clock.advance(seconds=4.9)
        assert http.post("/v1/shipments", json=payload(), headers=headers(key, "idem-2")).status_code == 202
        # ... and asks the database again once that time is up.
        clock.advance(seconds=0.1)
        _assert_401(http.post("/v1/shipments", json=payload(), headers=headers(key, "idem-3")))
        _assert_401(http.get(f"/v1/recipients/{TOLVAN}/channels", headers=headers(key)))
    assert row_counts(serving)["shipments"] == 2


def test_without_a_key_cache_a_key_revoked_by_another_process_is_refused_at_once(
    make_container: MakeContainer,
) -> None:
    serving = make_container(api={"key_cache_seconds": 0})
    elsewhere = make_container(migrate=False)
    key = serving.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(serving)) as http:
        assert http.post("/v1/shipments", json=payload(), headers=headers(key, "idem-1")).status_code == 202
        elsewhere.clients.revoke("case-system-a")
        _assert_401(http.post("/v1/shipments", json=payload(), headers=headers(key, "idem-2")))


def test_a_forged_secret_is_401_while_the_real_key_is_remembered(
    http: TestClient, container: Container, api_key: str
) -> None:
    assert http.post("/v1/shipments", json=payload(), headers=headers(api_key)).status_code == 202
    prefix, key_id, secret = api_key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'x' * len(secret)}"
    _assert_401(http.post("/v1/shipments", json=payload(), headers=headers(forged, "idem-2")))
    assert row_counts(container)["shipments"] == 1


def test_a_lookup_that_began_before_a_revocation_is_not_remembered(container: Container) -> None:
    """A request whose key was read from the database just before the key was revoked here may still go
    through (it was in flight), but the key must not be remembered as valid after the revocation."""
    clock = ManualClock()
    revoke_during_lookup: list[ClientService] = []

    def uow(*, read_only: bool = False) -> UnitOfWork:
        inner = container.uow(read_only=read_only)
        if not (read_only and revoke_during_lookup):
            return inner

        class RevokingRead:
            def __enter__(self) -> UnitOfWork:
                return self

            def __exit__(self, *exc: object) -> None:
                inner.__exit__(*exc)
                revoke_during_lookup.pop().revoke("case-system-a")

            def client_by_key_id(self, key_id: str) -> ClientRecord | None:
                return inner.client_by_key_id(key_id)

        inner.__enter__()
        return cast(UnitOfWork, RevokingRead())

    service = ClientService(uow, clock, [SANDBOX_SENDER_KEY], remember_for=timedelta(seconds=5))
    key = service.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    revoke_during_lookup.append(service)
    assert service.authenticate(key) is not None  # read before the revocation
    assert not revoke_during_lookup
    assert service.remembered(key) is None
    assert service.authenticate(key) is None


@pytest.mark.parametrize(
    "path", ["/v1/shipments/00000000-0000-0000-0000-000000000000", f"/v1/recipients/{TOLVAN}/channels"]
)
def test_reads_need_a_key_too(http: TestClient, path: str) -> None:
    _assert_401(http.get(path))
    _assert_401(http.get(path, headers={"Authorization": f"Bearer {UNKNOWN_KEY}"}))


# ---------------------------------------------------------------------------------- sender identities

ALPHA = {"key": "alpha", "organisation_number": "2120000001", "name": "Alfa kommun"}
BETA = {"key": "beta", "organisation_number": "2021005489", "name": "Beta myndigheten"}


@pytest.fixture
def two_senders(make_container: MakeContainer) -> Container:
    return make_container(senders=[ALPHA, BETA])


@pytest.fixture
def alpha_http(two_senders: Container) -> Iterator[TestClient]:
    with TestClient(create_app(two_senders)) as client:
        yield client


@pytest.fixture
def alpha_key(two_senders: Container) -> str:
    return two_senders.clients.add("alpha-system", ["alpha"]).api_key


def test_a_sender_the_client_is_not_bound_to_is_403(
    alpha_http: TestClient, two_senders: Container, alpha_key: str
) -> None:
    r = alpha_http.post("/v1/shipments", json=payload(sender="beta"), headers=headers(alpha_key))
    assert_problem(r, 403, detail="'beta'")
    assert row_counts(two_senders) == NOTHING_WRITTEN
    # The sender it is bound to works, named or left out.
    ok = alpha_http.post("/v1/shipments", json=payload(sender="alpha"), headers=headers(alpha_key))
    assert ok.status_code == 202, ok.text
    implied = alpha_http.post("/v1/shipments", json=payload(), headers=headers(alpha_key, "idem-2"))
    assert implied.status_code == 202, implied.text


def test_an_unknown_sender_is_422(alpha_http: TestClient, two_senders: Container, alpha_key: str) -> None:
    r = alpha_http.post("/v1/shipments", json=payload(sender="gamma"), headers=headers(alpha_key))
    assert_problem(r, 422, field="sender", detail="'gamma'")
    assert row_counts(two_senders) == NOTHING_WRITTEN


def test_a_client_with_two_senders_must_name_one(alpha_http: TestClient, two_senders: Container) -> None:
    key = two_senders.clients.add("both-system", ["alpha", "beta"]).api_key
    r = alpha_http.post("/v1/shipments", json=payload(), headers=headers(key))
    assert_problem(r, 422, field="sender", detail="alpha, beta")
    assert row_counts(two_senders) == NOTHING_WRITTEN
    ok = alpha_http.post("/v1/shipments", json=payload(sender="beta"), headers=headers(key))
    assert ok.status_code == 202, ok.text


def test_precheck_checks_the_sender_too(alpha_http: TestClient, alpha_key: str) -> None:
    path = f"/v1/recipients/{TOLVAN}/channels"
    assert_problem(alpha_http.get(path, params={"sender": "beta"}, headers=headers(alpha_key)), 403)
    assert_problem(
        alpha_http.get(path, params={"sender": "gamma"}, headers=headers(alpha_key)), 422, field="sender"
    )
    assert alpha_http.get(path, headers=headers(alpha_key)).json()["sender"] == "alpha"
