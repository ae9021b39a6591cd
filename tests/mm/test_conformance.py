"""What we produce against the official MM schemas (loaded in place from ../shared), and our own smaller
schemas and WSDLs against what we produce."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import pytest
import zeep
from lxml import etree

from formedlare import mm
from formedlare.mm.schema import WSDL_DIR, XSD_DIR
from tests.conftest import shared_dir
from tests.mm.conftest import RECEIVED, letter

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
_TEST_NS = "urn:kanalvaxel:test:wrapper"


@cache
def _official(relative: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(_contracts() / relative), _PARSER))


def _contracts() -> Path:
    return shared_dir() / "contracts" / "minameddelanden" / "schema"


@cache
def _official_types() -> etree.XMLSchema:
    # The official Message v3 schema declares SignedDelivery and SealedDelivery only as types: a two-line
    # wrapper schema (ours, in a test namespace) gives them elements to validate against.
    message = (_contracts() / "v3" / "Message.xsd").as_uri()
    wrapper = f"""<schema xmlns="http://www.w3.org/2001/XMLSchema" xmlns:m3="{mm.ns.MSG_V3}"
        targetNamespace="{_TEST_NS}" elementFormDefault="qualified">
      <import namespace="{mm.ns.MSG_V3}" schemaLocation="{message}"/>
      <element name="SignedDelivery" type="m3:SignedDelivery"/>
      <element name="SealedDelivery" type="m3:SealedDelivery"/>
    </schema>"""
    return etree.XMLSchema(etree.fromstring(wrapper.encode(), _PARSER, base_url=str(_contracts()) + "/"))


def _as_official_type(element: etree._Element) -> etree._Element:
    copied = copy.deepcopy(element)
    copied.tag = f"{{{_TEST_NS}}}{etree.QName(element).localname}"
    return copied


def _assert_valid(schema: etree.XMLSchema, element: etree._Element) -> None:
    assert schema.validate(element), [str(e) for e in schema.error_log]


@pytest.fixture(scope="module")
def signed(sender: mm.SigningIdentity) -> bytes:
    return mm.sign_delivery(sender, letter(attachments=2))


@pytest.fixture(scope="module")
def sealed(signed: bytes, relay: mm.SigningIdentity) -> bytes:
    return mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True)


def test_deliver_secure_body_child_is_valid_against_the_official_service_schema(sealed: bytes) -> None:
    _assert_valid(_official("v3/Service.xsd"), mm.soap_request_payload(mm.deliver_secure_request(sealed)))


def test_signed_and_sealed_delivery_are_valid_against_the_official_message_schema(
    signed: bytes, sealed: bytes
) -> None:
    _assert_valid(_official_types(), _as_official_type(mm.parse_xml(signed)))
    _assert_valid(_official_types(), _as_official_type(mm.parse_xml(sealed)))
    _assert_valid(_official("v3/Message.xsd"), mm.soap_request_payload(mm.distribute_secure_request(signed)))


@pytest.mark.parametrize(
    "envelope",
    [
        lambda: mm.check_distribution_status_request("162120000001", "3f1c"),
        lambda: mm.distribute_secure_response("3f1c"),
        lambda: mm.check_distribution_status_response("198101032384", "Digital", "Delivered"),
        lambda: mm.check_distribution_status_response("198101032384", "Paper", None),
    ],
    ids=["checkDistributionStatus", "distributeSecureResponse", "status Digital", "status Paper"],
)
def test_message_service_envelopes_are_valid_officially_and_ours(envelope: object) -> None:
    payload = mm.soap_request_payload(envelope())  # type: ignore[operator]
    _assert_valid(_official("v3/Message.xsd"), payload)
    mm.validate(payload)


def test_deliver_secure_response_and_fault_are_valid_officially_and_ours() -> None:
    response = mm.soap_request_payload(mm.deliver_secure_response("0b4e7f1a", "198101032384", True))
    _assert_valid(_official("v3/Service.xsd"), response)
    mm.validate(response)
    fault = mm.soap_request_payload(mm.soap_fault(5001, "Mottagaren saknas", "c" * 36))
    detail = fault.find("detail")
    assert detail is not None
    _assert_valid(_official("v3/Common.xsd"), detail[0])
    mm.validate(detail[0])


def test_our_schemas_accept_what_we_produce(signed: bytes, sealed: bytes) -> None:
    mm.validate(mm.parse_xml(signed))
    mm.validate(mm.parse_xml(sealed))
    payload = mm.soap_request_payload(mm.deliver_secure_request(sealed))
    mm.validate(payload)
    mm.validate(payload[0])  # the inner s3:deliverSecure is validated as a SealedDelivery
    distribute = mm.soap_request_payload(mm.distribute_secure_request(signed))
    mm.validate(distribute)
    mm.validate(distribute[0])


def test_our_schemas_accept_the_interop_vectors() -> None:
    vectors = shared_dir() / "interop-vectors"
    mm.validate(mm.soap_request_payload((vectors / "kivra-ews/deliverSecure_v3.xml").read_bytes()))
    mm.validate(
        mm.parse_xml((vectors / "se-gov-mm-integration/SealedDeliveryWithSignature.xml").read_bytes())
    )


BROKEN = {
    "recipient id of 11 digits": (b">198101032384<", b">19810103238<"),
    "subject over 255 characters": (b">Beslut om bygglov", b">" + b"x" * 256),
    "Seal date as dateTime": (b">2025-03-14<", b">2025-03-14T10:00:00<"),
    "Header in the wrong namespace": (
        b'<Sender xmlns="http://minameddelanden.gov.se/schema/Message/v2">',
        b'<Sender xmlns="http://minameddelanden.gov.se/schema/Message/v3">',
    ),
    "message without Language": (b"<Language>svSE</Language>", b""),
    "SignaturesOK not boolean": (b">true</SignaturesOK>", b">ja</SignaturesOK>"),
}


@pytest.mark.parametrize("edit", BROKEN.values(), ids=BROKEN.keys())
def test_our_schemas_and_the_official_refuse_a_broken_delivery(
    sealed: bytes, edit: tuple[bytes, bytes]
) -> None:
    assert edit[0] in sealed
    broken = mm.parse_xml(sealed.replace(edit[0], edit[1], 1))
    with pytest.raises(mm.SchemaViolationError) as caught:
        mm.validate(broken)
    assert caught.value.errors
    assert not _official_types().validate(_as_official_type(broken))


def test_validate_refuses_foreign_elements() -> None:
    with pytest.raises(mm.SchemaViolationError):
        mm.validate(etree.fromstring(b"<x xmlns='urn:other'/>"))
    with pytest.raises(mm.SchemaViolationError):
        mm.validate(mm.build_signed_delivery(letter()))  # unsigned: the Signature is required


@pytest.mark.parametrize(
    ("wsdl", "operations"),
    [("Message.wsdl", {"distributeSecure", "checkDistributionStatus"}), ("Service.wsdl", {"deliverSecure"})],
)
def test_our_wsdls_load_offline_and_name_their_operations(wsdl: str, operations: set[str]) -> None:
    client = zeep.Client(str(WSDL_DIR / wsdl))  # type: ignore[no-untyped-call]
    (binding,) = client.wsdl.bindings.values()
    assert set(binding._operations) == operations
    for operation in binding._operations.values():
        assert operation.soapaction == ""
        assert {fault.name for fault in operation.faults.values()} == {"fault"}


def test_the_package_holds_its_schema_files() -> None:
    names = {p.name for p in XSD_DIR.iterdir()}
    assert {"Message_v3.xsd", "Service_v3.xsd", "Common_v3.xsd", "xmldsig.xsd"} <= names
    for path in XSD_DIR.glob("*.xsd"):
        etree.XMLSchema(etree.parse(str(path), _PARSER))  # each compiles on its own
