"""GET /v1/recipients/{id}/channels: the channel decision with its reasons, without creating anything; and
person numbers kept out of the access log."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container
from kanalvaxel.entrypoints.api.app import create_app

from .helpers import NOTHING_WRITTEN, TOLVAN, MakeContainer, assert_problem, headers, row_counts

PATH = f"/v1/recipients/{TOLVAN}/channels"


def test_precheck_returns_a_decision_with_reasons_and_creates_nothing(
    http: TestClient, container: Container, api_key: str
) -> None:
    r = http.get(PATH, headers=headers(api_key, None))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["recipient"] == {"id": "191212121212", "kind": "PERSON"}
    assert out["sender"] == "sandbox"
    decision = out["decision"]
    assert decision["rule"]
    assert decision["summary"]
    assert {o["channel"] for o in decision["options"]} == {
        "mina_meddelanden",
        "email_encrypted",
        "email",
        "print",
    }
    for option in decision["options"]:
        assert option["reason"], option
        assert option["eligible"] or option["codes"], option
    # Without an address there is nothing the sandbox can use, and the answer says why.
    assert out["channel"] is None
    assert decision["channels"] == []
    [paper] = [o for o in decision["options"] if o["channel"] == "print"]
    assert not paper["eligible"]
    assert "NO_POSTAL_ADDRESS" in paper["codes"]
    assert row_counts(container) == NOTHING_WRITTEN


def test_precheck_with_a_postal_address_chooses_print(
    http: TestClient, container: Container, api_key: str
) -> None:
    r = http.get(PATH, params={"has_postal_address": "true"}, headers=headers(api_key, None))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["channel"] == "print"
    assert out["decision"]["channels"][0] == "print"
    [paper] = [o for o in out["decision"]["options"] if o["channel"] == "print"]
    assert paper["eligible"]
    assert paper["codes"] == []
    assert row_counts(container) == NOTHING_WRITTEN


def test_precheck_says_so_when_print_is_switched_off(make_container: MakeContainer) -> None:
    container = make_container(print={"enabled": False})
    key = container.clients.add("case-system-a", ["sandbox"]).api_key
    with TestClient(create_app(container)) as http:
        r = http.get(PATH, params={"has_postal_address": "true"}, headers=headers(key, None))
    assert r.status_code == 200, r.text
    assert r.json()["channel"] is None
    [paper] = [o for o in r.json()["decision"]["options"] if o["channel"] == "print"]
    assert not paper["eligible"]
    assert paper["codes"]


@pytest.mark.parametrize(
    ("recipient_id", "detail"),
    [("19121212-1213", "check digit"), ("1912121212121", "10 or 12 digits"), ("tolvan", "10 or 12 digits")],
)
def test_precheck_of_an_invalid_id_is_422(
    http: TestClient, container: Container, api_key: str, recipient_id: str, detail: str
) -> None:
    r = http.get(f"/v1/recipients/{recipient_id}/channels", headers=headers(api_key, None))
    assert_problem(r, 422, field="recipient_id", detail=detail)
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize(
    ("params", "field"),
    [({"confidentiality": "secret"}, "confidentiality"), ({"message_type": ""}, "message_type")],
)
def test_precheck_names_a_bad_query_parameter(
    http: TestClient, api_key: str, params: dict[str, str], field: str
) -> None:
    r = http.get(PATH, params=params, headers=headers(api_key, None))
    assert_problem(r, 422, field=field)


@pytest.mark.parametrize(
    ("written", "masked"),
    [
        ("19121212-1212", "19121212-****"),
        ("191212121212", "19121212-****"),
        ("121212-1212", "121212-****"),
        ("1212121212", "121212-****"),
        ("121212+1212", "121212-****"),
        # The service accepts spaces anywhere, so the log must mask them too.
        ("19121212 1212", "19121212-****"),
        ("1912 1212 1212", "1912 1212-****"),
        ("121212 - 1212", "121212-****"),
    ],
)
def test_person_numbers_are_masked_in_the_access_log(
    http: TestClient, api_key: str, caplog: pytest.LogCaptureFixture, written: str, masked: str
) -> None:
    with caplog.at_level(logging.INFO):
        r = http.get(f"/v1/recipients/{written}/channels", headers=headers(api_key, None))
    assert r.status_code == 200, r.text
    [access] = [rec for rec in caplog.records if rec.name == "kanalvaxel.access"]
    assert access.getMessage().startswith(f"GET /v1/recipients/{masked}/channels 200 ")
    # Nor in any other line of ours at INFO or above, as written or normalised. (The test client's own
    # httpx log is not the service's.)
    normalised = r.json()["recipient"]["id"]
    for rec in caplog.records:
        if rec.name.split(".")[0] == "kanalvaxel":
            line = rec.getMessage()
            assert written not in line, line
            assert normalised not in line, line


def test_a_refused_precheck_is_masked_too(
    http: TestClient, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kanalvaxel.access"):
        r = http.get("/v1/recipients/19121212-1213/channels", headers=headers(api_key, None))
    assert r.status_code == 422
    assert "19121212-1213" not in caplog.text
    assert "19121212-****" in caplog.text
