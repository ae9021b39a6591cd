"""SOAP envelopes: signed bytes embedded verbatim, responses and faults read back, bad input refused."""

from __future__ import annotations

import pytest
from lxml import etree

from formedlare import mm
from tests.mm.conftest import RECEIVED, letter


def test_deliver_secure_embeds_the_sealed_bytes_verbatim(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity
) -> None:
    sealed = mm.seal_delivery(
        relay, mm.sign_delivery(sender, letter()), received=RECEIVED, signatures_ok=True
    )
    envelope = mm.deliver_secure_request(sealed)

    start = sealed.index(b">") + 1
    end = sealed.rindex(b"</")
    assert sealed[start:end] in envelope, "everything between the renamed root tags is kept byte for byte"
    assert b'<s3:deliverSecure xmlns="http://minameddelanden.gov.se/schema/Message/v3">' in envelope
    payload = mm.soap_request_payload(envelope)
    assert etree.QName(payload).text == etree.QName(payload[0]).text == f"{{{mm.ns.SERVICE_V3}}}deliverSecure"


def test_an_xml_declaration_is_dropped_and_only_utf8_is_embedded(sender: mm.SigningIdentity) -> None:
    signed = mm.sign_delivery(sender, letter())
    with_declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n' + signed
    assert mm.distribute_secure_request(with_declaration) == mm.distribute_secure_request(signed)
    latin1 = b'<?xml version="1.0" encoding="ISO-8859-1"?>' + signed.decode().encode("latin-1", "replace")
    with pytest.raises(mm.MalformedXmlError):
        mm.distribute_secure_request(latin1)


def test_requests_refuse_the_wrong_element(sender: mm.SigningIdentity) -> None:
    signed = mm.sign_delivery(sender, letter())
    with pytest.raises(mm.MalformedXmlError):
        mm.deliver_secure_request(signed)  # a SignedDelivery is not a SealedDelivery
    with pytest.raises(mm.MalformedXmlError):
        mm.distribute_secure_request(b"<not-xml")


def test_responses_round_trip() -> None:
    assert mm.parse_deliver_secure_response(mm.deliver_secure_response("t-1", "198101032384", True)) == (
        "t-1",
        True,
    )
    assert mm.parse_deliver_secure_response(mm.deliver_secure_response("t-2", "198101032384", False)) == (
        "t-2",
        False,
    )
    assert mm.parse_distribute_secure_response(mm.distribute_secure_response("d-1")) == "d-1"
    (status,) = mm.parse_check_distribution_status_response(
        mm.check_distribution_status_response("198101032384", "Digital", "Pending")
    )
    assert (status.recipient_id, status.kind, status.status) == ("198101032384", "Digital", "Pending")
    (paper,) = mm.parse_check_distribution_status_response(
        mm.check_distribution_status_response("198101032384", "Paper", None)
    )
    assert paper.status is None
    with pytest.raises(mm.InvalidContentError):
        mm.check_distribution_status_response("198101032384", "Email", None)


def test_a_fault_is_parsed_and_raised_by_the_response_readers() -> None:
    fault = mm.soap_fault(
        5002, "Mottagaren har ingen brevlåda", "call-0123456789abcdefghij", faultcode="soap:Client"
    )

    parsed = mm.parse_fault(fault)

    assert parsed == mm.MmFault(
        5002, "Mottagaren har ingen brevlåda", "call-0123456789abcdefghij", "Mottagaren har ingen brevlåda"
    )
    assert b"<faultcode>soap:Client</faultcode>" in fault
    assert mm.parse_fault(mm.distribute_secure_response("d")) is None
    with pytest.raises(mm.SoapFaultError) as caught:
        mm.parse_deliver_secure_response(fault)
    assert caught.value.fault.error_code == 5002


def test_a_plain_soap_fault_without_mm_detail() -> None:
    envelope = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        b"<faultcode>s:Server</faultcode><faultstring>Internt fel</faultstring>"
        b"</s:Fault></s:Body></s:Envelope>"
    )
    assert mm.parse_fault(envelope) == mm.MmFault(None, "Internt fel", None, "Internt fel")


@pytest.mark.parametrize(("code", "call_id"), [(0, "c" * 20), (9999, "c" * 20), (1, "c" * 19), (1, "c" * 51)])
def test_fault_limits_of_the_contract(code: int, call_id: str) -> None:
    with pytest.raises(mm.InvalidContentError):
        mm.soap_fault(code, "x", call_id)


@pytest.mark.parametrize(
    "envelope",
    [
        b"<Envelope/>",
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>',
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>',
        b'<!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>',
        b"\xff\xfe",
    ],
    ids=["not soap", "no body", "empty body", "doctype", "garbage"],
)
def test_malformed_envelopes_are_refused(envelope: bytes) -> None:
    with pytest.raises(mm.MalformedXmlError):
        mm.soap_request_payload(envelope)


def test_parse_xml_refuses_external_entities() -> None:
    with pytest.raises(mm.MalformedXmlError):
        mm.parse_xml(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>')
