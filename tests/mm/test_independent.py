"""Independent checks of our signatures: the xmlsec1 CLI and signxml's XMLVerifier verify what we sign and
seal (after canonical_document, mm-protocol §8), for a small letter and one with a 2.5 MB attachment (our
signer writes the canonical bytes itself: these tests are what holds it to everyone else's canonical form),
and our verifier accepts a delivery signed by python-xmlsec (libxmlsec1) instead of us."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import xmlsec
from cryptography.hazmat.primitives import serialization
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier
from signxml.exceptions import InvalidSignature

from formedlare import mm
from tests.mm.conftest import RECEIVED, letter, reprefix

XMLSEC1 = shutil.which("xmlsec1")
OUTER = "/*[local-name()='SealedDelivery']/*[local-name()='Signature']"


def _xmlsec1(
    document: etree._Element | bytes, ca: Path, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    if XMLSEC1 is None:
        pytest.fail("xmlsec1 is part of the development environment (apt install xmlsec1)")
    path = tmp_path / "doc.xml"
    path.write_bytes(document if isinstance(document, bytes) else etree.tostring(document))
    return subprocess.run(
        [XMLSEC1, "--verify", "--trusted-pem", str(ca), *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_xmlsec1_verifies_our_signed_delivery(
    sender: mm.SigningIdentity, dev_certs: Path, tmp_path: Path
) -> None:
    signed = mm.parse_xml(mm.sign_delivery(sender, letter()))
    result = _xmlsec1(mm.canonical_document(signed), dev_certs / "ca.pem", tmp_path)
    assert result.returncode == 0, result.stderr


def test_xmlsec1_verifies_both_layers_taken_from_the_wire(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, dev_certs: Path, tmp_path: Path
) -> None:
    sealed = mm.seal_delivery(
        relay, mm.sign_delivery(sender, letter()), received=RECEIVED, signatures_ok=True
    )
    wire = mm.soap_request_payload(reprefix(mm.deliver_secure_request(sealed), 11))[0]
    ca = dev_certs / "ca.pem"

    outer = _xmlsec1(mm.canonical_document(wire), ca, tmp_path, "--node-xpath", OUTER)
    inner = _xmlsec1(mm.canonical_document(mm.signed_delivery_of(wire)), ca, tmp_path)

    assert outer.returncode == 0, outer.stderr
    assert inner.returncode == 0, inner.stderr


def test_xmlsec1_refuses_a_tampered_canonical_document(
    sender: mm.SigningIdentity, dev_certs: Path, tmp_path: Path
) -> None:
    signed = mm.sign_delivery(sender, letter()).replace(b"bygglov", b"bygglob")
    result = _xmlsec1(mm.canonical_document(mm.parse_xml(signed)), dev_certs / "ca.pem", tmp_path)
    assert result.returncode != 0


def test_xmlsec1_refuses_the_wire_form_as_is(
    sender: mm.SigningIdentity, dev_certs: Path, tmp_path: Path
) -> None:
    # Why canonical_document exists: prefixes are signed content, so the re-rendered form does not verify.
    wire = mm.soap_request_payload(
        reprefix(mm.distribute_secure_request(mm.sign_delivery(sender, letter())), 5)
    )[0]
    result = _xmlsec1(etree.fromstring(etree.tostring(wire)), dev_certs / "ca.pem", tmp_path)
    assert result.returncode != 0


def _xmlsec_sign(document: etree._Element, key_file: Path, cert_file: Path) -> etree._Element:
    signature = xmlsec.template.create(
        document, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256
    )
    reference = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="")
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.add_x509_data(key_info)
    document.append(signature)
    context = xmlsec.SignatureContext()
    key = xmlsec.Key.from_file(str(key_file), xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_file(str(cert_file), xmlsec.constants.KeyDataFormatPem)
    context.key = key
    context.sign(signature)
    return document


def test_we_accept_a_delivery_signed_by_python_xmlsec(
    dev_certs: Path, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    document = _xmlsec_sign(
        mm.build_signed_delivery(letter()), dev_certs / "sender.key", dev_certs / "sender.pem"
    )
    signed = etree.tostring(document)
    assert b"\n<SignedInfo>" in signed, "libxmlsec1's template (with its line breaks) is what we verify"

    verified = mm.verify_element(mm.parse_xml(signed), policy)
    assert verified.organisation_number == "2120000001"
    # ... also once it travels prefixed, and once our relay has sealed it.
    wire = mm.soap_request_payload(reprefix(mm.distribute_secure_request(signed), 2))[0]
    mm.verify_element(wire, policy)
    sealed = mm.parse_xml(mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True))
    mm.verify_element(mm.signed_delivery_of(sealed), policy)
    # A tampered copy of the python-xmlsec signature is refused.
    with pytest.raises(mm.SignatureInvalidError):
        mm.verify_element(mm.parse_xml(signed.replace(b"bygglov", b"bygglob")), policy)


def test_python_xmlsec_verifies_our_signature(sender: mm.SigningIdentity, dev_certs: Path) -> None:
    document = mm.canonical_document(mm.parse_xml(mm.sign_delivery(sender, letter())))
    signature = xmlsec.tree.find_node(document, xmlsec.constants.NodeSignature)
    assert signature is not None
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(
        sender.certificate.public_bytes(serialization.Encoding.PEM), xmlsec.constants.KeyDataFormatCertPem
    )
    context.verify(signature)  # raises xmlsec.Error when it does not verify


# --- our signatures at two sizes, checked by xmlsec1 and by signxml's own verifier -----------------------

LARGE = 2_500_000  # bytes of attachment: a 3.3 MB base64 text node, still under libxml2's default limit
#: signxml's defaults find the first Signature anywhere (the inner one in a SealedDelivery): pitfall 2.
HERE = SignatureConfiguration(location="./")


@pytest.fixture(scope="module", params=[0, LARGE], ids=["letter", "2.5 MB attachment"])
def layers(
    request: pytest.FixtureRequest, sender: mm.SigningIdentity, relay: mm.SigningIdentity
) -> tuple[bytes, bytes]:
    """Our signed and sealed bytes of the sample letter, optionally with a large (random) attachment."""
    content = letter()
    if request.param:
        big = mm.AttachmentContent("stor.pdf", "application/pdf", b"%PDF-1.4\n" + os.urandom(request.param))
        message = dataclasses.replace(
            content.messages[0], attachments=(*content.messages[0].attachments, big)
        )
        content = dataclasses.replace(content, messages=(message,))
    signed = mm.sign_delivery(sender, content)
    return signed, mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True)


def _flip_in_attachment(data: bytes) -> bytes:
    """One base64 character changed in the middle of the last attachment body."""
    start = data.rindex(b"<Body xmlns=")
    at = start + (data.index(b"</Body>", start) - start) // 2
    return data[:at] + (b"A" if data[at : at + 1] != b"A" else b"B") + data[at + 1 :]


def test_xmlsec1_verifies_what_we_sign_and_seal_as_it_leaves_us(
    layers: tuple[bytes, bytes], dev_certs: Path, tmp_path: Path
) -> None:
    signed, sealed = layers
    ca = dev_certs / "ca.pem"
    inner = mm.canonical_document(mm.signed_delivery_of(mm.parse_xml(sealed)))

    results = {
        "signed": _xmlsec1(signed, ca, tmp_path),
        "sealed, outer": _xmlsec1(sealed, ca, tmp_path, "--node-xpath", OUTER),
        "sealed, inner": _xmlsec1(inner, ca, tmp_path),
    }

    assert {name: r.returncode for name, r in results.items()} == dict.fromkeys(results, 0), {
        name: r.stderr[-500:] for name, r in results.items() if r.returncode
    }
    assert _xmlsec1(_flip_in_attachment(signed), ca, tmp_path).returncode != 0
    assert _xmlsec1(_flip_in_attachment(sealed), ca, tmp_path, "--node-xpath", OUTER).returncode != 0


def test_signxmls_verifier_accepts_our_signed_delivery(
    layers: tuple[bytes, bytes], sender: mm.SigningIdentity, dev_certs: Path
) -> None:
    signed, _ = layers
    pinned = sender.certificate.public_bytes(serialization.Encoding.PEM).decode()

    by_chain = XMLVerifier().verify(signed, ca_pem_file=str(dev_certs / "ca.pem"), expect_config=HERE)
    XMLVerifier().verify(signed, x509_cert=pinned, expect_config=HERE)

    # What signxml digested is our letter, attachment and all: our bytes up to the Signature.
    assert not isinstance(by_chain, list)
    end = b"</SignedDelivery>"
    assert by_chain.signed_data.endswith(end)
    assert signed.startswith(by_chain.signed_data[: -len(end)] + b"<Signature ")
    assert by_chain.signed_xml is not None
    assert mm.read_delivery(by_chain.signed_xml) == mm.read_delivery(mm.parse_xml(signed))


def test_signxmls_verifier_accepts_both_layers_of_our_sealed_delivery(
    layers: tuple[bytes, bytes], dev_certs: Path
) -> None:
    _, sealed = layers
    ca = str(dev_certs / "ca.pem")

    XMLVerifier().verify(sealed, ca_pem_file=ca, expect_config=HERE)
    # The inner layer as an element: signxml re-serialises it into a document of its own (deps-notes §1).
    XMLVerifier().verify(mm.signed_delivery_of(mm.parse_xml(sealed)), ca_pem_file=ca, expect_config=HERE)


def test_signxmls_verifier_refuses_a_changed_attachment_byte(
    layers: tuple[bytes, bytes], dev_certs: Path
) -> None:
    signed, sealed = layers
    ca = str(dev_certs / "ca.pem")
    for tampered in (_flip_in_attachment(signed), _flip_in_attachment(sealed)):
        with pytest.raises(InvalidSignature):  # InvalidDigest is one
            XMLVerifier().verify(tampered, ca_pem_file=ca, expect_config=HERE)
