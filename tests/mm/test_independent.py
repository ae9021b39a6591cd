"""Independent checks of our signatures: the xmlsec1 CLI verifies what we sign (after canonical_document,
mm-protocol §8), and our verifier accepts a delivery signed by python-xmlsec (libxmlsec1) instead of us."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import xmlsec
from cryptography.hazmat.primitives import serialization
from lxml import etree

from formedlare import mm
from tests.mm.conftest import RECEIVED, letter, reprefix

XMLSEC1 = shutil.which("xmlsec1")
OUTER = "/*[local-name()='SealedDelivery']/*[local-name()='Signature']"


def _xmlsec1(
    document: etree._Element, ca: Path, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    if XMLSEC1 is None:
        pytest.fail("xmlsec1 is part of the development environment (apt install xmlsec1)")
    path = tmp_path / "doc.xml"
    path.write_bytes(etree.tostring(document))
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
