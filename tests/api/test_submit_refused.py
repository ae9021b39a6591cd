"""POST /v1/shipments refuses what it cannot deliver: the right status, a problem naming the field at fault,
and nothing written to the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kanalvaxel.bootstrap import Container
from kanalvaxel.config import SANDBOX_SENDER_KEY
from kanalvaxel.entrypoints.api.app import create_app

from .helpers import (
    NOTHING_WRITTEN,
    PDF,
    MakeContainer,
    assert_problem,
    b64,
    headers,
    make_pdf,
    payload,
    row_counts,
)

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
)


def post(http: TestClient, key: str, body: Any, **kw: Any) -> Any:
    return http.post("/v1/shipments", json=body, headers=headers(key, **kw))


def test_malformed_json_is_400(http: TestClient, container: Container, api_key: str) -> None:
    r = http.post(
        "/v1/shipments",
        content=b'{"subject": "Beslut", ',
        headers={**headers(api_key), "Content-Type": "application/json"},
    )
    problem = assert_problem(r, 400, detail="not valid JSON")
    assert "field" not in problem  # "body" would name the letter's own field of that name
    assert row_counts(container) == NOTHING_WRITTEN


def test_unknown_top_level_field_is_422(http: TestClient, container: Container, api_key: str) -> None:
    r = post(http, api_key, payload(priority="high"))
    problem = assert_problem(r, 422, field="priority")
    assert {"field": "priority", "message": "Extra inputs are not permitted"} in problem["errors"]
    assert row_counts(container) == NOTHING_WRITTEN


def test_unknown_nested_field_is_422(http: TestClient, container: Container, api_key: str) -> None:
    body = payload()
    body["recipient"]["nickname"] = "Tolvan"
    r = post(http, api_key, body)
    assert_problem(r, 422, field="recipient.nickname")
    assert row_counts(container) == NOTHING_WRITTEN


def test_unknown_field_in_a_list_item_is_named_with_its_index(
    http: TestClient, container: Container, api_key: str
) -> None:
    body = payload()
    body["attachments"][0]["password"] = "hemligt"
    r = post(http, api_key, body)
    assert_problem(r, 422, field="attachments[0].password")
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content_type": "text/markdown", "content": "# Beslut"}, "body.content_type"),
        ({"content_type": "text/plain", "content": "Hej", "font": "Arial"}, "body.font"),
    ],
)
def test_fields_of_the_letter_body_are_named_in_full(
    http: TestClient, container: Container, api_key: str, body: dict[str, str], field: str
) -> None:
    # The request body's own field `body` must not be dropped as if it were FastAPI's location "body".
    assert_problem(post(http, api_key, payload(body=body)), 422, field=field)
    assert row_counts(container) == NOTHING_WRITTEN


def test_missing_required_field_is_422(http: TestClient, container: Container, api_key: str) -> None:
    body = payload()
    del body["support_info"]
    assert_problem(post(http, api_key, body), 422, field="support_info")
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize(
    ("recipient_id", "detail"),
    [("19121212-1213", "check digit"), ("1912121212", "check digit"), ("tolvan", "10 or 12 digits")],
)
def test_invalid_personnummer_is_422_on_recipient_id(
    http: TestClient, container: Container, api_key: str, recipient_id: str, detail: str
) -> None:
    body = payload()
    body["recipient"]["id"] = recipient_id
    assert_problem(post(http, api_key, body), 422, field="recipient.id", detail=detail)
    assert row_counts(container) == NOTHING_WRITTEN


def test_subject_of_256_characters_is_422(http: TestClient, container: Container, api_key: str) -> None:
    r = post(http, api_key, payload(subject="å" * 256))
    assert_problem(r, 422, field="subject", detail="255")
    assert row_counts(container) == NOTHING_WRITTEN


def test_subject_of_255_characters_is_accepted(http: TestClient, container: Container, api_key: str) -> None:
    r = post(http, api_key, payload(subject="å" * 255))
    assert r.status_code == 202, r.text
    assert row_counts(container) == {"shipments": 1, "shipment_events": 1, "work_items": 1}


@pytest.mark.parametrize(
    "content",
    [PNG, b"Hej, det h\xc3\xa4r \xc3\xa4r ingen PDF.\n", b"%PDF-1.7\nnot really a pdf\n%%EOF\n"],
    ids=["png", "text", "pdf-header-only"],
)
def test_attachment_that_is_not_a_pdf_is_422(
    http: TestClient, container: Container, api_key: str, content: bytes
) -> None:
    r = post(http, api_key, payload(attachments=[{"filename": "beslut.pdf", "content_base64": b64(content)}]))
    assert_problem(r, 422, field="attachments[0]", detail="PDF")
    assert row_counts(container) == NOTHING_WRITTEN


def test_second_attachment_is_named_by_its_index(
    http: TestClient, container: Container, api_key: str
) -> None:
    attachments = [
        {"filename": "beslut.pdf", "content_base64": b64(PDF)},
        {"filename": "bild.png", "content_base64": b64(PNG)},
    ]
    assert_problem(post(http, api_key, payload(attachments=attachments)), 422, field="attachments[1]")
    assert row_counts(container) == NOTHING_WRITTEN


def test_attachment_over_the_size_limit_is_422(make_container: MakeContainer) -> None:
    container = make_container(limits={"max_attachment_bytes": len(PDF)})
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    bigger = make_pdf("Bilaga", pages=3)
    assert len(bigger) > len(PDF)
    with TestClient(create_app(container)) as http:
        r = post(http, key, payload(attachments=[{"filename": "stor.pdf", "content_base64": b64(bigger)}]))
        assert_problem(r, 422, field="attachments[0]", detail=f"the limit is {len(PDF)}")
        assert row_counts(container) == NOTHING_WRITTEN
        # Exactly at the limit is fine.
        assert post(http, key, payload(), idempotency_key="idem-2").status_code == 202


@pytest.mark.parametrize("encoded", ["not base64!", "JVBERi0", b64(PDF)[:-1] + "*"])
def test_bad_base64_is_422(http: TestClient, container: Container, api_key: str, encoded: str) -> None:
    r = post(http, api_key, payload(attachments=[{"filename": "beslut.pdf", "content_base64": encoded}]))
    assert_problem(r, 422, field="attachments[0].content_base64", detail="base64")
    assert row_counts(container) == NOTHING_WRITTEN


def test_attachment_of_another_content_type_is_422(
    http: TestClient, container: Container, api_key: str
) -> None:
    attachment = {"filename": "bild.png", "content_type": "image/png", "content_base64": b64(PNG)}
    assert_problem(
        post(http, api_key, payload(attachments=[attachment])), 422, field="attachments[0].content_type"
    )
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize("idempotency_key", [None, ""])
def test_missing_idempotency_key_is_400(
    http: TestClient, container: Container, api_key: str, idempotency_key: str | None
) -> None:
    r = post(http, api_key, payload(), idempotency_key=idempotency_key)
    if idempotency_key is None:
        assert_problem(r, 400, field="Idempotency-Key", detail="required")
    else:
        assert_problem(r, 422, field="Idempotency-Key", detail="at least 1")
    assert row_counts(container) == NOTHING_WRITTEN


def test_idempotency_key_over_255_characters_is_refused(
    http: TestClient, container: Container, api_key: str
) -> None:
    r = post(http, api_key, payload(), idempotency_key="k" * 256)
    assert_problem(r, 422, field="Idempotency-Key", detail="255")
    assert row_counts(container) == NOTHING_WRITTEN


def test_body_too_long_is_422(make_container: MakeContainer) -> None:
    container = make_container(limits={"max_body_chars": 10})
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(container)) as http:
        r = post(http, key, payload(body={"content_type": "text/plain", "content": "x" * 11}))
        assert_problem(r, 422, field="body.content", detail="10 characters")
        assert row_counts(container) == NOTHING_WRITTEN


def test_request_over_the_body_limit_is_413(make_container: MakeContainer) -> None:
    container = make_container(limits={"max_total_attachment_bytes": 1000})
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(container)) as http:
        r = http.post(
            "/v1/shipments",
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={**headers(key), "Content-Type": "application/json"},
        )
        assert_problem(r, 413, detail="limit")
        assert row_counts(container) == NOTHING_WRITTEN


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_http(
    request: pytest.FixtureRequest, make_container: MakeContainer
) -> Iterator[tuple[Container, str, TestClient]]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    container = make_container(database_url=url)
    key = container.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(container)) as http:
        yield container, key, http


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Beslut\x00"}, "subject"),
        ({"case_reference": "BN\x1b[31m 2026/42"}, "case_reference"),
        ({"body": {"content_type": "text/plain", "content": "Hej\x00"}}, "body.content"),
        ({"support_info": {"text": "Ring\x07 oss"}}, "support_info.text"),
    ],
)
def test_control_characters_are_422_on_every_database(
    any_db_http: tuple[Container, str, TestClient], change: dict[str, Any], field: str
) -> None:
    # PostgreSQL cannot store NUL (it was a 500 there, a 202 on SQLite), and XML 1.0 allows no C0 control.
    container, key, http = any_db_http
    r = post(http, key, payload(**change))
    assert_problem(r, 422, field=field, detail="not allowed")
    assert row_counts(container) == NOTHING_WRITTEN


def test_tabs_and_line_breaks_are_fine(http: TestClient, api_key: str) -> None:
    r = post(http, api_key, payload(body={"content_type": "text/plain", "content": "Hej!\r\n\tRad två\n"}))
    assert r.status_code == 202, r.text


def test_an_unknown_address_or_method_is_a_problem_too(http: TestClient, api_key: str) -> None:
    assert_problem(http.get("/v1/nothing-here", headers=headers(api_key)), 404)
    not_allowed = http.delete("/v1/shipments", headers=headers(api_key))
    assert_problem(not_allowed, 405)
    assert not_allowed.headers["Allow"] == "POST"  # RFC 9110: a 405 says which methods there are
    assert http.put("/v1/shipments/x", headers=headers(api_key)).headers["Allow"] == "GET"


def test_a_pdf_with_a_page_tree_too_deep_to_read_is_422_and_the_connection_lives_on(
    http: TestClient, container: Container, api_key: str
) -> None:
    from .helpers import deep_page_tree_pdf

    body = payload(attachments=[{"filename": "djup.pdf", "content_base64": b64(deep_page_tree_pdf(150))}])
    r = post(http, api_key, body)
    problem = assert_problem(r, 422, field="attachments[0]")
    assert "too large or too deep to read safely" in problem["detail"]
    assert r.headers.get("connection") != "close"
    assert row_counts(container) == NOTHING_WRITTEN
    assert post(http, api_key, payload(), idempotency_key="after").status_code == 202


def test_a_pdf_that_expands_beyond_the_limit_is_422(make_container: MakeContainer) -> None:
    from .helpers import expanding_pdf

    c = make_container(limits={"max_decompressed_bytes": 8 * 1024 * 1024})
    key = c.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    with TestClient(create_app(c)) as http:
        bomb = expanding_pdf(streams=3, expanded_bytes=4 * 1024 * 1024)  # 12 MB from about 12 KB
        assert len(bomb) < 64 * 1024
        r = post(http, key, payload(attachments=[{"filename": "bomb.pdf", "content_base64": b64(bomb)}]))
        problem = assert_problem(r, 422, field="attachments[0]")
        assert f"expands past {8 * 1024 * 1024} bytes" in problem["detail"]
        assert row_counts(c) == NOTHING_WRITTEN
        small = expanding_pdf(streams=1, expanded_bytes=1024 * 1024)
        ok = post(
            http,
            key,
            payload(attachments=[{"filename": "ok.pdf", "content_base64": b64(small)}]),
            idempotency_key="ok",
        )
        assert ok.status_code == 202, ok.text


@pytest.mark.parametrize(
    "value",
    [
        "Beslut\r\nBcc: x@example.se",
        "Beslut\nom bygglov",
        "Beslut\u2028om bygglov",
        "Beslut\u0085om bygglov",
        "Beslut\x7f",
        "Beslut\x90",
        "Beslut \u202egnp.exe",
        "Be\u200bslut",
        "Beslut\u2066",
        "Beslut\uffff",
        "Beslut\ufdd0",
        "Beslut\tom bygglov",
    ],
)
def test_a_subject_must_be_one_line_of_visible_text(
    http: TestClient, container: Container, api_key: str, value: str
) -> None:
    # Each of these was accepted, and then broke the e-mail header (the letter went to paper unasked) or
    # was printed as it came.
    r = post(http, api_key, payload(subject=value))
    problem = assert_problem(r, 422, field="subject")
    assert "U+" in problem["detail"]  # which character, so the case system's staff can find it
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("recipient.name", lambda b: b["recipient"].update(name="Tolvan\u202e")),
        (
            "recipient.postal_address.lines[1]",
            lambda b: b["recipient"]["postal_address"].update(lines=["Storgatan 1", " "]),
        ),
        (
            "recipient.postal_address.city",
            lambda b: b["recipient"]["postal_address"].update(city="Små\nstad"),
        ),
        ("case_reference", lambda b: b.update(case_reference="BN\u200d2026")),
        ("message_type", lambda b: b.update(message_type="beslut\u2029kallelse")),
        ("support_info.phone", lambda b: b["support_info"].update(phone="010\r\n000")),
        ("body.content", lambda b: b.update(body={"content_type": "text/plain", "content": "Hej \u202e!"})),
        ("support_info.text", lambda b: b["support_info"].update(text="Ring \u2067oss")),
    ],
)
def test_every_text_field_has_its_rule_and_a_refusal_names_it(
    http: TestClient, container: Container, api_key: str, field: str, change: Any
) -> None:
    body = payload()
    change(body)
    assert_problem(post(http, api_key, body), 422, field=field)
    assert row_counts(container) == NOTHING_WRITTEN


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "CON",
        "con.pdf",
        "LPT1.pdf",
        "a:b.pdf",
        "\u202egnp.pdf",
        "\uff0e\uff0e\uff0fx.pdf",
        "../x.pdf",
        "x.pdf.",
        ".pdf",
        "a\\b.pdf",
        "x?.pdf",
    ],
)
def test_an_attachment_name_is_a_file_name_and_never_a_path_or_a_device(
    http: TestClient, container: Container, api_key: str, name: str
) -> None:
    r = post(http, api_key, payload(attachments=[{"filename": name, "content_base64": b64(PDF)}]))
    assert_problem(r, 422, field="attachments[0].filename")
    assert row_counts(container) == NOTHING_WRITTEN


def test_running_text_is_normalised_and_stored_as_normalised(
    http: TestClient, container: Container, api_key: str
) -> None:
    body = payload(
        subject="Beslut om bygglov för Åsa",  # decomposed Å: stored composed (NFC)
        body={
            "content_type": "text/plain",
            "content": "\ufeffHej!\r\nRad två\u2028Rad tre\u0085Rad\u200b fyra",
        },
    )
    body["attachments"][0]["filename"] = "Beslut om bygglov.pdf"
    r = post(http, api_key, body)
    assert r.status_code == 202, r.text
    from kanalvaxel.services.codec import letter_from_json

    with container.uow() as uow:
        shp = uow.shipment(r.json()["id"])
        assert shp is not None
        assert shp.subject == "Beslut om bygglov för \u00c5sa"
        content = uow.letter_content(shp.id)
    assert content is not None
    letter = letter_from_json(content[0], content[1])
    assert letter.body == "Hej!\nRad två\nRad tre\nRad fyra"
    assert letter.attachments[0].filename == "Beslut om bygglov.pdf"


def test_a_body_that_is_no_json_object_names_no_field(
    http: TestClient, container: Container, api_key: str
) -> None:
    r = http.post(
        "/v1/shipments", content=b"[1, 2]", headers={**headers(api_key), "Content-Type": "application/json"}
    )
    problem = assert_problem(r, 422)
    assert "field" not in problem  # the request body as a whole, not the letter's field `body`
    assert problem["detail"].startswith("the request body: ")
    assert row_counts(container) == NOTHING_WRITTEN


def test_one_stream_that_inflates_past_what_pypdf_reads_is_refused_too() -> None:
    from kanalvaxel.domain.errors import ValidationError
    from kanalvaxel.services.content import pdf_page_count

    from .helpers import expanding_pdf

    bomb = expanding_pdf(streams=1, expanded_bytes=80 * 1000 * 1000)  # about 80 KB in the file
    assert len(bomb) < 200_000
    with pytest.raises(ValidationError, match="too large or too deep to read safely"):
        pdf_page_count(bomb, "attachments[0]", max_decompressed_bytes=10**9)


def test_the_expansion_budget_is_the_letters_not_each_attachments(make_container: MakeContainer) -> None:
    from .helpers import expanding_pdf

    c = make_container(limits={"max_decompressed_bytes": 8 * 1024 * 1024})
    key = c.clients.add("case-system-a", [SANDBOX_SENDER_KEY]).api_key
    each = expanding_pdf(streams=1, expanded_bytes=3 * 1024 * 1024)  # 3 MB each: under the limit alone
    with TestClient(create_app(c)) as http:
        two = [{"filename": f"{i}.pdf", "content_base64": b64(each)} for i in range(2)]
        assert post(http, key, payload(attachments=two), idempotency_key="two").status_code == 202
        three = [{"filename": f"{i}.pdf", "content_base64": b64(each)} for i in range(3)]
        problem = assert_problem(post(http, key, payload(attachments=three), idempotency_key="three"), 422)
        assert problem["field"] == "attachments[2]"
        assert "the attachments of a letter together" in problem["detail"]
