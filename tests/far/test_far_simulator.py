"""The FaR simulator speaks the contract: its answers validate against the official Recipient v3 schema, and
its faults carry c3:applicationFault as Common v3 defines it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from lxml import etree

from kanalvaxel.sandbox.far_simulator import C3, R3, SOAP, RegistryError, default_registry, load_registry
from tests.conftest import shared_dir
from tests.far.conftest import Far, personnummer

SENDER = "162120000001"


@pytest.fixture
def session(far: Far) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(far.settings.ca_bundle)
        s.cert = (str(far.settings.client_certificate), str(far.settings.client_key))
        yield s


def _envelope(operation: str, *children: tuple[str, str]) -> bytes:
    parts = "".join(f"<r3:{name}>{value}</r3:{name}>" for name, value in children)
    return (
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:r3="{R3}"><soap:Body>'
        f"<r3:{operation}>{parts}</r3:{operation}></soap:Body></soap:Envelope>"
    ).encode()


def _post(far: Far, session: requests.Session, body: bytes) -> tuple[int, etree._Element]:
    response = session.post(
        far.settings.url, data=body, headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    )
    assert response.headers["content-type"].startswith("text/xml")
    root = etree.fromstring(response.content, etree.XMLParser(resolve_entities=False, no_network=True))
    body_node = root.find(f"{{{SOAP}}}Body")
    assert body_node is not None
    return response.status_code, body_node[0]


def _official_schema(name: str) -> etree.XMLSchema:
    path = shared_dir() / "contracts" / "minameddelanden" / "schema" / "v3" / name
    return etree.XMLSchema(etree.parse(str(path), etree.XMLParser(no_network=True)))


def test_answers_validate_against_the_official_schema(far: Far, session: requests.Session) -> None:
    schema = _official_schema("Recipient.xsd")
    ids = [*default_registry().recipients, "200001012384"]
    status, answer = _post(
        far, session, _envelope("isReachable", ("senderOrgNr", SENDER), *(("recipientId", i) for i in ids))
    )
    assert status == 200
    assert answer.tag == f"{{{R3}}}isReachableResponse"
    schema.assertValid(etree.ElementTree(answer))
    assert len(answer) == len(ids)

    status, answer = _post(far, session, _envelope("isRegistered", *(("recipientId", i) for i in ids)))
    assert status == 200
    schema.assertValid(etree.ElementTree(answer))


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            _envelope(
                "isReachable",
                ("senderOrgNr", SENDER),
                *(("recipientId", personnummer(n)) for n in range(1001)),
            ),
            5001,
        ),
        (_envelope("isReachable", ("senderOrgNr", SENDER), ("recipientId", "19700101-1233")), 5002),
        (_envelope("isReachable", ("senderOrgNr", "2120000001"), ("recipientId", "197001011233")), 5002),
        (_envelope("isRegistered"), 5002),
        (_envelope("register", ("recipientId", "197001011233")), 5000),
        (b"<not-soap/>", 5000),
        (b"<<<", 5000),
    ],
)
def test_faults(far: Far, session: requests.Session, body: bytes, code: int) -> None:
    status, fault = _post(far, session, body)
    assert status == 500
    assert fault.tag == f"{{{SOAP}}}Fault"
    detail = fault.find(f"detail/{{{C3}}}applicationFault")
    assert detail is not None
    assert detail.findtext(f"{{{C3}}}ErrorCode") == str(code)
    element = etree.Element(f"{{{C3}}}applicationFault")
    element.extend(list(detail))
    _official_schema("Common.xsd").assertValid(etree.ElementTree(element))


def test_exactly_1000_ids_are_answered(far: Far, session: requests.Session) -> None:
    ids = [personnummer(n) for n in range(1000)]
    status, answer = _post(
        far, session, _envelope("isReachable", ("senderOrgNr", SENDER), *(("recipientId", i) for i in ids))
    )
    assert status == 200
    assert len(answer) == 1000


def test_stats_endpoint_and_service_address_override(far: Far, session: requests.Session) -> None:
    far.simulator.set_service_address("mmp", "https://127.0.0.1:1234/service/v3")
    _, answer = _post(far, session, _envelope("isRegistered", ("recipientId", "198112189876")))
    assert answer.findtext(".//{*}ServiceAdress") == "https://127.0.0.1:1234/service/v3"
    stats = session.get(f"{far.server.url}/_simulator/stats").json()
    assert stats["calls"] == 1
    assert stats["ids_per_call"] == [1]
    assert stats["operations"] == ["isRegistered"]


def test_load_registry(tmp_path: Path) -> None:
    path = tmp_path / "far.toml"
    path.write_text(
        '[operators.kivra]\nid = "165568402266"\nname = "Kivra"\nservice_address = "https://k/service/v3"\n'
        '[[recipients]]\nid = "197001011233"\noperator = "kivra"\npending = true\n'
        'opted_out_senders = ["162120000001"]\n'
    )
    registry = load_registry(path)
    entry = registry.recipients["197001011233"]
    assert entry.pending
    assert entry.opted_out_senders == frozenset({"2120000001"})
    assert registry.operators["kivra"].name == "Kivra"


@pytest.mark.parametrize(
    "recipient",
    [
        'id = "197001011234"\noperator = "kivra"',  # Luhn digit wrong
        'id = "7001011233"\noperator = "kivra"',  # not the 12-digit form
        'id = "197001011233"\noperator = "billo"',  # unknown operator
    ],
)
def test_load_registry_refuses_bad_entries(tmp_path: Path, recipient: str) -> None:
    path = tmp_path / "far.toml"
    path.write_text(
        '[operators.kivra]\nid = "165568402266"\nname = "Kivra"\nservice_address = "https://k/service/v3"\n'
        f"[[recipients]]\n{recipient}\n"
    )
    with pytest.raises(RegistryError):
        load_registry(path)
