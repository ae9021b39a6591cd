"""Sign → verify, seal → verify both layers, and the same after the wire form with arbitrary prefixes."""

from __future__ import annotations

import dataclasses

import pytest
from lxml import etree
from signxml import XMLSigner

from formedlare import mm
from formedlare.mm import signature
from tests.mm.conftest import RECEIVED, RECIPIENT_ID, SENDER_ID, letter, reprefix


def test_signed_delivery_verifies_and_names_the_sender(
    sender: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    signed = mm.sign_delivery(sender, letter())

    verified = mm.verify_element(mm.parse_xml(signed), policy)

    assert verified.organisation_number == "2120000001"
    assert verified.certificate == sender.certificate
    assert verified.signature_algorithm.endswith("rsa-sha256")
    assert verified.digest_algorithm.endswith("#sha256")


def test_signed_bytes_are_the_canonical_form(sender: mm.SigningIdentity) -> None:
    signed = mm.sign_delivery(sender, letter())
    root = mm.parse_xml(signed)

    assert signed == mm.sign_delivery(sender, letter()), "equal input must give equal bytes"
    assert not signed.startswith(b"<?xml")
    assert all(el.prefix is None for el in root.iter()), "no element may carry a prefix"
    assert etree.QName(root[-1]).localname == "Signature"
    assert root[-1].nsmap == {None: mm.ns.DS}
    assert etree.tostring(root, method="c14n", exclusive=True) == signed
    assert b'<Sender xmlns="http://minameddelanden.gov.se/schema/Message/v2"><Id xmlns="' in signed
    # Checksum: MD5 of the bytes, upper-case hex; bodies base64 without line breaks.
    checksum = root.find(f".//{{{mm.ns.MSG_V1}}}Checksum")
    assert checksum is not None
    assert checksum.text == mm.md5_checksum(letter().messages[0].attachments[0].data)
    assert checksum.text == checksum.text.upper()
    assert len(checksum.text) == 32
    assert all("\n" not in (b.text or "") for b in root.iter(f"{{{mm.ns.MSG_V1}}}Body"))


def test_sealed_delivery_verifies_outer_and_inner(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    signed = mm.sign_delivery(sender, letter())
    sealed = mm.parse_xml(mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True))

    assert mm.verify_element(sealed, policy).organisation_number == "2120000019"
    inner = mm.signed_delivery_of(sealed)
    assert mm.verify_element(inner, policy).organisation_number == "2120000001"
    seal = sealed.find(f"{{{mm.ns.MSG_V3}}}Seal")
    assert seal is not None
    assert [c.text for c in seal] == ["2025-03-14", "true"]
    # The embedded SignedDelivery is the sender's, unchanged in canonical content.
    assert etree.tostring(mm.canonical_document(inner), method="c14n", exclusive=True) == signed


@pytest.mark.parametrize("seed", range(4))
def test_deliver_secure_with_arbitrary_prefixes_still_verifies(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, policy: mm.TrustPolicy, seed: int
) -> None:
    sealed = mm.seal_delivery(
        relay, mm.sign_delivery(sender, letter(attachments=2)), received=RECEIVED, signatures_ok=True
    )
    wire = reprefix(mm.deliver_secure_request(sealed), seed)
    assert b"<SignedDelivery" not in wire, "the re-rendered envelope must really use prefixes"

    payload = mm.soap_request_payload(wire)
    inner = payload[0]

    assert etree.QName(inner).text == f"{{{mm.ns.SERVICE_V3}}}deliverSecure"
    assert mm.verify_element(inner, policy).organisation_number == "2120000019"
    assert mm.verify_element(mm.signed_delivery_of(inner), policy).organisation_number == "2120000001"
    parsed = mm.read_delivery(inner)
    assert (parsed.sender_id, parsed.recipient_id, parsed.reference) == (
        SENDER_ID,
        RECIPIENT_ID,
        "Dnr 2025-0042",
    )


def test_distribute_secure_payload_verifies_after_reprefixing(
    sender: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    signed = mm.sign_delivery(sender, letter())
    payload = mm.soap_request_payload(reprefix(mm.distribute_secure_request(signed), 7))

    assert etree.QName(payload).localname == "distributeSecure"
    assert mm.verify_element(payload[0], policy).organisation_number == "2120000001"
    assert mm.read_delivery(payload[0]).subjects == ("Beslut om bygglov – Åsa Öberg",)


def test_seal_accepts_the_wire_form_of_a_signed_delivery(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    payload = mm.soap_request_payload(
        reprefix(mm.distribute_secure_request(mm.sign_delivery(sender, letter())), 3)
    )

    sealed = mm.parse_xml(
        mm.seal_delivery(relay, etree.tostring(payload[0]), received=RECEIVED, signatures_ok=False)
    )

    mm.verify_element(sealed, policy)
    mm.verify_element(mm.signed_delivery_of(sealed), policy)
    assert sealed.findtext(f".//{{{mm.ns.MSG_V1}}}SignaturesOK") == "false"


def test_sign_element_refuses_to_sign_twice(sender: mm.SigningIdentity) -> None:
    signed = mm.parse_xml(mm.sign_delivery(sender, letter()))
    with pytest.raises(mm.MalformedXmlError):
        mm.sign_element(sender, signed)


def test_sign_element_equals_sign_delivery(sender: mm.SigningIdentity) -> None:
    assert mm.sign_element(sender, mm.build_signed_delivery(letter())) == mm.sign_delivery(sender, letter())


def test_seal_refuses_what_is_not_a_signed_delivery(relay: mm.SigningIdentity) -> None:
    unsigned = etree.tostring(mm.build_signed_delivery(letter()))
    with pytest.raises(mm.MalformedXmlError):
        mm.seal_delivery(relay, unsigned, received=RECEIVED, signatures_ok=True)
    with pytest.raises(mm.MalformedXmlError):
        mm.seal_delivery(relay, b"<Other/>", received=RECEIVED, signatures_ok=True)


def test_signature_is_signxmls_in_the_mm_profile(sender: mm.SigningIdentity) -> None:
    root = mm.parse_xml(mm.sign_delivery(sender, letter()))
    ds = f"{{{mm.ns.DS}}}"
    signed_info = root[-1].find(f"{ds}SignedInfo")
    assert signed_info is not None

    reference = signed_info.find(f"{ds}Reference")
    assert reference is not None
    assert reference.get("URI") == ""
    transforms = [t.get("Algorithm") for t in reference.iter(f"{ds}Transform")]
    # signxml names the exc-c14n step after enveloped-signature; our verifier must take both.
    assert transforms == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ]
    assert [t.get("Algorithm") for t in signed_info.iter(f"{ds}CanonicalizationMethod")] == [
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    ]
    x509_data = root[-1].find(f"{ds}KeyInfo/{ds}X509Data")
    assert x509_data is not None
    assert [etree.QName(e).localname for e in x509_data] == ["X509SubjectName", "X509Certificate"]
    assert "serialNumber=162120000001" in (x509_data[0].text or "").replace("2.5.4.5", "serialNumber")
    assert root[-1].find(f"{ds}KeyInfo/{ds}KeyValue") is None, "the certificate alone names the key"


def test_an_attachment_beyond_libxml2s_text_limit_signs_seals_and_verifies(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    # 8 MiB gives a base64 text node of ~11.2 MB, over libxml2's 10,000,000 default (deps-notes pitfall 10):
    # signxml re-parses internally, so this fails unless its parser allows huge trees.
    big = mm.AttachmentContent("stor.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(8 * 1024 * 1024))
    content = letter()
    message = dataclasses.replace(content.messages[0], attachments=(big,))
    content = dataclasses.replace(content, messages=(message,))
    signed = mm.sign_delivery(sender, content)
    sealed = mm.parse_xml(mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True))

    mm.verify_element(sealed, policy)
    mm.verify_element(mm.signed_delivery_of(sealed), policy)


def test_a_signxml_that_no_longer_takes_our_canonical_form_fails_loudly(
    sender: mm.SigningIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Signing hands signxml the canonical bytes through two of its internals (signature._Signer); if a
    # signxml release stopped calling them, we must not sign whatever it computed instead.
    monkeypatch.setattr(signature._Signer, "_c14n", XMLSigner._c14n)
    with pytest.raises(mm.MmError, match="kanoniska form"):
        mm.sign_delivery(sender, letter())


def test_a_signature_placeholder_in_the_content_is_refused(sender: mm.SigningIdentity) -> None:
    # signxml signs in place of a ds:Signature Id="placeholder" wherever it is: never in a letter of ours.
    element = mm.build_signed_delivery(letter())
    header = element.find(f".//{{{mm.ns.MSG_V3}}}Message/{{{mm.ns.MSG_V3}}}Header")
    assert header is not None
    etree.SubElement(header, f"{{{mm.ns.DS}}}Signature", Id="placeholder")
    with pytest.raises(mm.MalformedXmlError, match="platshållare"):
        mm.sign_element(sender, element)
