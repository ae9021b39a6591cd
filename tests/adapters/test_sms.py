"""SMS notices: length rules, numbers, the Swedish notice text, and the gateway client against the gateway
simulator over real HTTPS (dev server certificate, the client trusting only the dev CA)."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formedlare.https_server import RunningServer, TlsFiles, serve_in_thread
from kanalvaxel.adapters.sms import (
    SmsError,
    SmsGateway,
    SmsGatewayConfig,
    SmsGatewayError,
    SmsLength,
    normalise_mobile,
    notice_text,
    sms_length,
)
from kanalvaxel.domain.model import Channel, SupportInfo
from kanalvaxel.sandbox.sms_simulator import SmsGatewaySimulator

TOKEN = "test-sms-token"
MOBILE = "+46701234567"
SUPPORT = SupportInfo("Kundtjänst", phone="08-123 45 67", url="https://sandlada.example.se/fragor")
VIA = {
    Channel.PRINT: "Det kommer med posten.",
    Channel.EMAIL: "Det har skickats till din e-post.",
    Channel.EMAIL_ENCRYPTED: "Det har skickats krypterat till din e-post.",
    Channel.MINA_MEDDELANDEN: "Läs det i din digitala brevlåda.",
}


# ------------------------------------------------------------------------------------------------ length


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 160, SmsLength("GSM-7", 160, 1)),
        ("a" * 161, SmsLength("GSM-7", 161, 2)),
        ("a" * 306, SmsLength("GSM-7", 306, 2)),
        ("a" * 307, SmsLength("GSM-7", 307, 3)),
        ("", SmsLength("GSM-7", 0, 1)),
        ("€", SmsLength("GSM-7", 2, 1)),
        ("€" * 80, SmsLength("GSM-7", 160, 1)),
        ("€" * 81, SmsLength("GSM-7", 162, 2)),  # 76 pairs (152 septets) in the first part, 5 in the next
        ("åäöÅÄÖé" * 20, SmsLength("GSM-7", 140, 1)),
        ("{[~]}|^\\\f", SmsLength("GSM-7", 18, 1)),
        ("ł" * 70, SmsLength("UCS-2", 70, 1)),
        ("ł" * 71, SmsLength("UCS-2", 71, 2)),
        ("ł" * 134, SmsLength("UCS-2", 134, 2)),
        ("ł" * 135, SmsLength("UCS-2", 135, 3)),
        ("😀", SmsLength("UCS-2", 2, 1)),
        ("😀" * 35, SmsLength("UCS-2", 70, 1)),
        ("😀" * 36, SmsLength("UCS-2", 72, 2)),
        ("a" * 159 + "ł", SmsLength("UCS-2", 160, 3)),  # one character outside GSM-7 turns all of it UCS-2
    ],
)
def test_sms_length(text: str, expected: SmsLength) -> None:
    assert sms_length(text) == expected


def test_an_escape_pair_is_never_split_across_parts() -> None:
    # 306 septets would be two parts of 153 if counted naively; the € cannot straddle the boundary after 152.
    assert sms_length("a" * 152 + "€" + "a" * 152) == SmsLength("GSM-7", 306, 3)
    assert sms_length("a" * 151 + "€" + "a" * 153) == SmsLength("GSM-7", 306, 2)


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    assert sms_length("ł" * 66 + "😀" + "ł" * 66) == SmsLength("UCS-2", 134, 3)
    assert sms_length("ł" * 65 + "😀" + "ł" * 67) == SmsLength("UCS-2", 134, 2)


# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "written",
    [
        "070-123 45 67",
        "0701234567",
        "+46 70 123 45 67",
        "+46701234567",
        "0046701234567",
        "+46 (0)70-123 45 67",
        "+46 070 123 45 67",
        " 070.123.45.67 ",
        "070/1234567",
    ],
)
def test_normalise_mobile_accepts_how_people_write_swedish_numbers(written: str) -> None:
    assert normalise_mobile(written) == MOBILE


@pytest.mark.parametrize("prefix", ["070", "072", "073", "076", "079"])
def test_every_swedish_mobile_series_is_accepted(prefix: str) -> None:
    assert normalise_mobile(f"{prefix}-123 45 67") == f"+46{prefix[1:]}1234567"


def test_foreign_numbers_and_another_default_country() -> None:
    assert normalise_mobile("+358 40 123 4567") == "+358401234567"
    assert normalise_mobile("0047 912 34 567") == "+4791234567"
    assert normalise_mobile("040 123 4567", default_country_code="358") == "+358401234567"


@pytest.mark.parametrize(
    "written",
    [
        "",
        "   ",
        "abc",
        "070-123 45 6x",
        "701234567",  # no trunk 0, no country code: which country?
        "46701234567",
        "08-123 456 78",  # Stockholm landline
        "+46 8 123 456 78",
        "0711234567",  # M2M
        "0741234567",  # paging
        "0771234567",  # shared cost
        "070-123 45 6",  # one digit short
        "070-123 45 678",  # one digit long
        "+1234567890123456",  # 16 digits: over E.164's 15
        "+123456",  # too short for any mobile
        "++46701234567",
        "+046701234567",
        "０７０１２３４５６７",  # fullwidth digits
        "070 123 45 67 ext 2",
        "070\n1234567\x00",
    ],
)
def test_normalise_mobile_refuses(written: str) -> None:
    with pytest.raises(SmsError) as caught:
        normalise_mobile(written)
    # The error reaches events and logs: it must not repeat the number.
    assert "1234567" not in str(caught.value)


def test_normalise_mobile_refuses_a_bad_default_country_code() -> None:
    with pytest.raises(SmsError):
        normalise_mobile("0701234567", default_country_code="046")


# ------------------------------------------------------------------------------------------------ notice text


def test_notice_text_reads_as_intended() -> None:
    text = notice_text("Sandlådans kommun", "Beslut om bygglov", Channel.PRINT, SUPPORT)
    assert text == (
        'Du har fått ett brev från Sandlådans kommun: "Beslut om bygglov". Det kommer med posten. '
        "Frågor: 08-123 45 67"
    )
    assert sms_length(text) == SmsLength("GSM-7", len(text), 1)


@pytest.mark.parametrize("via", list(Channel))
def test_notice_text_says_where_the_letter_went(via: Channel) -> None:
    text = notice_text("Sandlådans kommun", "Beslut", via, SUPPORT)
    assert VIA[via] in text
    assert sum(sentence in text for sentence in VIA.values()) == 1


def test_where_to_ask_is_the_phone_else_the_url_else_nothing() -> None:
    url_only = SupportInfo("Kundtjänst", url="https://sandlada.example.se/fragor")
    assert notice_text("K", "Beslut", Channel.EMAIL, url_only).endswith(
        "Frågor: https://sandlada.example.se/fragor"
    )
    text = notice_text("K", "Beslut", Channel.EMAIL, SupportInfo("Kundtjänst", email="fragor@example.se"))
    assert text == 'Du har fått ett brev från K: "Beslut". Det har skickats till din e-post.'


def test_a_long_subject_is_shortened_to_fill_the_parts_and_stays_gsm7() -> None:
    subject = "Beslut om bygglov för nybyggnad av enbostadshus och garage på fastigheten Sandlådan 1:23 " * 5
    for max_parts in (1, 2, 3):
        text = notice_text("Sandlådans kommun", subject, Channel.PRINT, SUPPORT, max_parts=max_parts)
        length = sms_length(text)
        assert length.encoding == "GSM-7"
        assert length.parts == max_parts
        capacity = 160 if max_parts == 1 else 153 * max_parts
        # Filled, give or take the word boundary it cut at.
        assert capacity - 15 <= length.units <= capacity
        assert '..."' in text
        assert text.endswith("Det kommer med posten. Frågor: 08-123 45 67")


def test_characters_outside_gsm7_are_kept_and_the_ellipsis_is_then_one_character() -> None:
    subject = "Beslut om bygglov för fastigheten Łódź " * 10
    text = notice_text("Sandlådans kommun", subject, Channel.PRINT, SUPPORT, max_parts=2)
    assert "Łódź" in text
    assert '…"' in text
    assert sms_length(text).encoding == "UCS-2"
    assert sms_length(text).parts == 2


def test_control_characters_are_removed_from_every_input() -> None:
    text = notice_text(
        "Sandlådans\r\nkommun",
        "Rad 1\r\nRad 2\x07\u202e\tslut",
        Channel.PRINT,
        SupportInfo("Kundtjänst", phone="08-123\n45 67"),
    )
    assert text == (
        'Du har fått ett brev från Sandlådans kommun: "Rad 1 Rad 2 slut". Det kommer med posten. '
        "Frågor: 08-123 45 67"
    )


def test_without_room_the_subject_goes_then_the_contact_then_the_name_is_shortened() -> None:
    long_url = SupportInfo("Kundtjänst", url="https://sandlada.example.se/" + "x" * 60)
    name = "Sandlådans kommun, samhällsbyggnadsförvaltningen"
    no_subject = notice_text(name, "Beslut om bygglov", Channel.EMAIL_ENCRYPTED, long_url, max_parts=1)
    assert no_subject == f"Du har fått ett brev från {name}. Det har skickats krypterat till din e-post."

    long_name = "Sandlådans kommun " * 10
    shortened = notice_text(long_name, "Beslut", Channel.PRINT, SUPPORT, max_parts=1)
    assert shortened.startswith("Du har fått ett brev från Sandlådans kommun Sandlådans")
    assert "...." in shortened  # the shortened name's ellipsis, then the sentence's full stop
    assert sms_length(shortened).parts == 1


def test_max_parts_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_parts"):
        notice_text("K", "B", Channel.PRINT, SUPPORT, max_parts=0)


_WORD = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zs", "Zl", "Zp"), max_codepoint=0x1FFFF),
    min_size=1,
    max_size=25,
)
_NAME = st.lists(_WORD, min_size=1, max_size=12).map(" ".join)


@settings(max_examples=250, deadline=None)
@given(
    sender=_NAME,
    subject=st.text(max_size=600),
    via=st.sampled_from(list(Channel)),
    phone=st.none() | st.text(max_size=40),
    url=st.none() | st.text(max_size=120),
    max_parts=st.integers(1, 4),
)
def test_notice_text_never_exceeds_max_parts(
    sender: str, subject: str, via: Channel, phone: str | None, url: str | None, max_parts: int
) -> None:
    text = notice_text(
        sender, subject, via, SupportInfo("Kundtjänst", url=url, phone=phone), max_parts=max_parts
    )
    assert sms_length(text).parts <= max_parts
    assert VIA[via] in text
    assert not any(c in text for c in "\r\n\x00\x1b")
    if sms_length(f"Du har fått ett brev från {sender}. {VIA[via]}").parts <= max_parts:
        assert f"Du har fått ett brev från {sender}" in text


# ------------------------------------------------------------------------------------------------ gateway


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sms-store")


@pytest.fixture(scope="module")
def running(dev_certs: Path, store_dir: Path) -> Iterator[tuple[SmsGatewaySimulator, RunningServer]]:
    sim = SmsGatewaySimulator(TOKEN, store_dir=store_dir, max_parts=10)
    tls = TlsFiles(dev_certs / "server.pem", dev_certs / "server.key")
    with serve_in_thread(sim.app, tls, name="sms-gateway") as server:
        yield sim, server


@pytest.fixture
def sim(running: tuple[SmsGatewaySimulator, RunningServer]) -> SmsGatewaySimulator:
    running[0].reset()
    return running[0]


@pytest.fixture
def url(running: tuple[SmsGatewaySimulator, RunningServer]) -> str:
    return running[1].url


class Waits(list[float]):
    """Stands in for time.sleep between tries: records how long the client would wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def gateway(url: str, dev_certs: Path, waits: Waits | None = None, **overrides: object) -> SmsGateway:
    fields: dict[str, object] = {
        "url": url,
        "token": TOKEN,
        "sender_id": "Sandlada",
        "ca_bundle": dev_certs / "ca.pem",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    fields.update(overrides)
    return SmsGateway(SmsGatewayConfig(**fields), sleep=waits if waits is not None else Waits())  # type: ignore[arg-type]


TEXT = notice_text("Sandlådans kommun", "Beslut om bygglov", Channel.PRINT, SUPPORT)


def test_send_over_https(sim: SmsGatewaySimulator, url: str, dev_certs: Path, store_dir: Path) -> None:
    with gateway(url, dev_certs) as gw:
        receipt = gw.send("070-123 45 67", TEXT, reference="shipment-1")
    assert receipt.parts == 1
    assert not receipt.already_sent
    [sent] = sim.messages
    assert (sent.id, sent.to, sent.sender, sent.text, sent.reference) == (
        receipt.message_id,
        MOBILE,
        "Sandlada",
        TEXT,
        "shipment-1",
    )
    [stored] = list(store_dir.glob(f"*-{receipt.message_id}.json"))
    assert json.loads(stored.read_text(encoding="utf-8"))["text"] == TEXT


def test_a_sender_id_per_call_overrides_the_configured_one(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path
) -> None:
    with gateway(url, dev_certs) as gw:
        gw.send(MOBILE, TEXT, reference="s-override", sender_id="Kommunen")
        with pytest.raises(SmsError):
            gw.send(MOBILE, TEXT, reference="s-override-2", sender_id="Sandlådan")
    assert [m.sender for m in sim.messages] == ["Kommunen"]


def test_a_multipart_text_reports_its_parts(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    with gateway(url, dev_certs) as gw:
        receipt = gw.send(MOBILE, "ł" * 100, reference="s-multi")
    assert receipt.parts == 2 == sim.messages[0].parts


def test_503_twice_then_success_within_one_send(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    sim.behave(status=503, times=2)
    waits = Waits()
    with gateway(url, dev_certs, waits, retries=2) as gw:
        receipt = gw.send(MOBILE, TEXT, reference="s-503")
    assert sim.requests == 3
    assert [m.id for m in sim.messages] == [receipt.message_id]
    assert waits == [0.25, 0.5]


def test_503_always_gives_a_retryable_error_after_all_tries(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path
) -> None:
    sim.behave(status=503)
    with gateway(url, dev_certs, retries=2) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference="s-503-always")
    assert caught.value.retryable
    assert caught.value.status == 503
    assert "simulerat fel 503" in str(caught.value)
    assert sim.requests == 3
    assert sim.messages == []


def test_retry_after_is_honoured_up_to_a_cap(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    sim.behave(status=429, times=1, retry_after=2)
    waits = Waits()
    with gateway(url, dev_certs, waits) as gw:
        gw.send(MOBILE, TEXT, reference="s-429")
    assert waits == [2.0]
    assert len(sim.messages) == 1

    sim.behave(status=429, retry_after=3600)
    waits.clear()
    with gateway(url, dev_certs, waits) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference="s-429-long")
    # An hour is the durable retry's business: no blocking wait, no further try, the wish passed on.
    assert (caught.value.retryable, caught.value.retry_after, waits) == (True, 3600.0, [])
    assert sim.requests == 3


@pytest.mark.parametrize("status", [400, 422])
def test_a_refused_request_is_not_retried(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path, status: int
) -> None:
    sim.behave(status=status)
    with gateway(url, dev_certs) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference=f"s-{status}")
    assert (caught.value.retryable, caught.value.status, sim.requests) == (False, status, 1)


def test_the_gateways_own_422_carries_its_reason(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    # The simulator takes at most 10 parts; this client allows 12, so the gateway is the one refusing.
    with gateway(url, dev_certs, max_parts=12) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, "a" * 153 * 11, reference="s-too-long")
    assert (caught.value.retryable, caught.value.status, sim.requests) == (False, 422, 1)
    assert "tar 11 SMS" in str(caught.value)


def test_a_wrong_token_is_not_retried(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    with gateway(url, dev_certs, token="fel-token") as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference="s-401")
    assert (caught.value.retryable, caught.value.status, sim.requests) == (False, 401, 1)
    assert sim.messages == []


def test_the_same_reference_twice_is_one_sms(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    with gateway(url, dev_certs) as gw:
        first = gw.send(MOBILE, TEXT, reference="s-same")
        second = gw.send(MOBILE, TEXT, reference="s-same")
        assert (second.message_id, second.already_sent, first.already_sent) == (first.message_id, True, False)
        with pytest.raises(SmsGatewayError) as caught:
            gw.send(MOBILE, TEXT + " Annan text.", reference="s-same")
    assert (caught.value.status, caught.value.retryable) == (409, False)
    assert len(sim.messages) == 1


def test_a_lost_answer_is_retried_without_a_second_sms(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path
) -> None:
    # The gateway handles the first request, then answers too late: the retry gets the same message back.
    sim.behave(delay=1.0, times=1)
    with gateway(url, dev_certs, read_timeout=0.3, retries=1) as gw:
        receipt = gw.send(MOBILE, TEXT, reference="s-lost")
    assert receipt.already_sent
    assert sim.requests == 2
    assert [m.id for m in sim.messages] == [receipt.message_id]


def test_a_gateway_slower_than_the_read_timeout_is_retryable(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path
) -> None:
    sim.behave(delay=0.8)
    with gateway(url, dev_certs, read_timeout=0.2, retries=1) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference="s-slow")
    assert (caught.value.retryable, caught.value.status) == (True, None)
    assert "svarade inte i tid" in str(caught.value)
    assert sim.requests == 2
    assert len(sim.messages) == 1


def test_a_closed_port_is_retryable(dev_certs: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits = Waits()
    with (
        gateway(f"https://127.0.0.1:{port}", dev_certs, waits, retries=1) as gw,
        pytest.raises(SmsGatewayError) as caught,
    ):
        gw.send(MOBILE, TEXT, reference="s-closed")
    assert (caught.value.retryable, caught.value.status, len(waits)) == (True, None, 1)


def test_a_server_certificate_we_do_not_trust_is_not_retried(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path
) -> None:
    # Without ca_bundle only the system's CAs count; the dev CA is not one of them.
    waits = Waits()
    with gateway(url, dev_certs, waits, ca_bundle=None) as gw, pytest.raises(SmsGatewayError) as caught:
        gw.send(MOBILE, TEXT, reference="s-tls")
    assert (caught.value.retryable, waits, sim.requests) == (False, [], 0)


@pytest.mark.parametrize(
    ("to", "text", "reference"),
    [
        (MOBILE, "a" * 307 * 2, "s-parts"),  # 5 parts > max_parts 3
        (MOBILE, "", "s-empty"),
        ("08-123 45 67", TEXT, "s-landline"),
        (MOBILE, TEXT, ""),
        (MOBILE, TEXT, "med mellanslag"),
    ],
)
def test_refused_before_any_request(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path, to: str, text: str, reference: str
) -> None:
    with gateway(url, dev_certs) as gw, pytest.raises(SmsError) as caught:
        gw.send(to, text, reference=reference)
    assert not isinstance(caught.value, SmsGatewayError)
    assert sim.requests == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"sender_id": "Sandlådan"},
        {"sender_id": ""},
        {"sender_id": "Sandladan123"},  # 12 characters
        {"token": ""},
        {"url": "ftp://sms.example.se"},
        {"retries": -1},
        {"max_parts": 0},
        {"read_timeout": 0},
    ],
)
def test_invalid_configuration_is_refused(overrides: dict[str, object]) -> None:
    fields: dict[str, object] = {"url": "https://sms.example.se/api", "token": "t", "sender_id": "Sandlada"}
    with pytest.raises(SmsError):
        SmsGatewayConfig(**(fields | overrides))  # type: ignore[arg-type]


def test_no_number_or_text_in_logs_at_info(
    sim: SmsGatewaySimulator, url: str, dev_certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim.behave(status=503, times=1)
    with caplog.at_level(logging.DEBUG), gateway(url, dev_certs) as gw:
        gw.send(MOBILE, TEXT, reference="s-logs")
        sim.behave(status=422)
        with pytest.raises(SmsGatewayError):
            gw.send(MOBILE, TEXT, reference="s-logs-3")
    visible = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("+4670*****67" in line for line in visible)
    assert not any("701234567" in line or "bygglov" in line or TOKEN in line for line in visible)


def test_a_gateway_quoting_the_number_is_masked_in_the_error(dev_certs: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"title": "Ogiltigt", "detail": "numret +46 70 123 45 67 är spärrat"})

    config = SmsGatewayConfig(url="https://sms.example.se/api", token="t", sender_id="Sandlada")
    with (
        SmsGateway(config, transport=httpx.MockTransport(handler)) as gw,
        pytest.raises(SmsGatewayError) as c,
    ):
        gw.send(MOBILE, TEXT, reference="s-quoted")
    assert "+4670*****67" in str(c.value)
    assert "123 45" not in str(c.value)


# ------------------------------------------------------------------------------------------------ simulator


def test_simulator_checks_what_a_gateway_checks(sim: SmsGatewaySimulator, url: str, dev_certs: Path) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    good = {"to": MOBILE, "from": "Sandlada", "text": "Hej", "reference": "r"}
    with httpx.Client(base_url=url, verify=_context(dev_certs), trust_env=False) as client:
        assert client.post("/messages", json=good, headers=auth).status_code == 400  # no Idempotency-Key
        keyed = auth | {"idempotency-key": "k1"}
        assert client.post("/messages", content=b"{nope", headers=keyed).status_code == 400
        bad = client.post(
            "/messages", json={"to": "0701234567", "from": "Sandlådan", "text": ""}, headers=keyed
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert {e["field"] for e in bad.json()["errors"]} == {"to", "from", "text", "reference"}
        assert client.post("/messages", json=good, headers={"idempotency-key": "k1"}).status_code == 401

        behaviour = client.post("/_simulator/behaviour", json={"status": 502, "times": 1})
        assert behaviour.status_code == 200
        assert client.post("/messages", json=good, headers=keyed).status_code == 502
        created = client.post("/messages", json=good, headers=keyed)
        assert created.status_code == 201
        listed = client.get("/_simulator/messages").json()
        assert [(m["id"], m["to"], m["text"]) for m in listed] == [(created.json()["id"], MOBILE, "Hej")]
        assert client.post("/_simulator/behaviour", json={"status": 99}).status_code == 422
    assert sim.requests == 6


def _context(dev_certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dev_certs / "ca.pem"))
