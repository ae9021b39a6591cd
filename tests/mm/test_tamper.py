"""Every change after signing is caught, with the problem that names it."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from lxml import etree

from formedlare import mm
from tests.mm.conftest import RECEIVED, dev_ca, issue, letter

P = mm.SignatureProblem
DS = mm.ns.DS


@pytest.fixture(scope="module")
def signed(sender: mm.SigningIdentity) -> bytes:
    return mm.sign_delivery(sender, letter())


@pytest.fixture(scope="module")
def sealed(signed: bytes, relay: mm.SigningIdentity) -> bytes:
    return mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True)


def _problem(element: etree._Element, policy: mm.TrustPolicy | None, **kwargs: object) -> P:
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(element, policy, **kwargs)  # type: ignore[arg-type]
    assert caught.value.detail, "the refusal must say why"
    return caught.value.reason


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, old
    return data.replace(old, new, 1)


_BODY_B64 = base64.b64encode(letter().messages[0].body)
_CHECKSUM = mm.md5_checksum(letter().messages[0].attachments[0].data).encode()

DELIVERY_EDITS = {
    "subject": (b"Beslut om bygglov", b"Beslut om bygglob"),
    "body base64": (_BODY_B64, _BODY_B64[:5] + (b"A" if _BODY_B64[5:6] != b"A" else b"B") + _BODY_B64[6:]),
    "sender id": (b'Sender">162120000001<', b'Sender">162120000002<'),
    "recipient id": (b">198101032384<", b">198101032385<"),
    "attachment checksum": (_CHECKSUM, _CHECKSUM[:-1] + (b"0" if _CHECKSUM[-1:] != b"0" else b"1")),
    "added attribute": (b"<Delivery>", b'<Delivery Id="x">'),
    "namespace of an element": (
        b'<Sender xmlns="http://minameddelanden.gov.se/schema/Message/v2">',
        b'<Sender xmlns="http://minameddelanden.gov.se/schema/Message/v3">',
    ),
    "whitespace added": (b"</Subject>", b"</Subject>\n"),
    "support text": ("vardagar 8–16".encode(), "vardagar 8–17".encode()),
}


@pytest.mark.parametrize("edit", DELIVERY_EDITS.values(), ids=DELIVERY_EDITS.keys())
def test_any_change_to_the_delivery_is_a_digest_mismatch(
    signed: bytes, sealed: bytes, policy: mm.TrustPolicy, edit: tuple[bytes, bytes]
) -> None:
    assert _problem(mm.parse_xml(_replace_once(signed, *edit)), policy) is P.DIGEST_MISMATCH
    # Inside a seal both signatures cover it: the relay's and the sender's.
    tampered = mm.parse_xml(_replace_once(sealed, *edit))
    assert _problem(tampered, policy) is P.DIGEST_MISMATCH
    assert _problem(mm.signed_delivery_of(tampered), policy) is P.DIGEST_MISMATCH


@pytest.mark.parametrize(
    "edit",
    [(b">2025-03-14<", b">2025-03-15<"), (b">true</SignaturesOK>", b">false</SignaturesOK>")],
    ids=["ReceivedTime", "SignaturesOK"],
)
def test_a_changed_seal_breaks_only_the_outer_signature(
    sealed: bytes, policy: mm.TrustPolicy, edit: tuple[bytes, bytes]
) -> None:
    tampered = mm.parse_xml(_replace_once(sealed, *edit))
    assert _problem(tampered, policy) is P.DIGEST_MISMATCH
    mm.verify_element(mm.signed_delivery_of(tampered), policy)


def test_a_changed_signature_value_is_a_signature_mismatch(signed: bytes, policy: mm.TrustPolicy) -> None:
    root = mm.parse_xml(signed)
    value = root.find(f"{{{DS}}}Signature/{{{DS}}}SignatureValue")
    assert value is not None
    assert value.text
    raw = bytearray(base64.b64decode(value.text))
    raw[10] ^= 0x01
    value.text = base64.b64encode(bytes(raw)).decode()
    assert _problem(root, policy) is P.SIGNATURE_MISMATCH


def test_a_changed_digest_value_is_a_digest_mismatch(signed: bytes, policy: mm.TrustPolicy) -> None:
    root = mm.parse_xml(signed)
    digest = root.find(f".//{{{DS}}}DigestValue")
    assert digest is not None
    assert digest.text
    digest.text = base64.b64encode(bytes(32)).decode()
    assert _problem(root, policy) is P.DIGEST_MISMATCH


def test_another_valid_certificate_in_keyinfo_is_a_signature_mismatch(
    signed: bytes, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    root = mm.parse_xml(signed)
    cert = root.find(f".//{{{DS}}}X509Certificate")
    assert cert is not None
    cert.text = base64.b64encode(relay.certificate.public_bytes(serialization.Encoding.DER)).decode()
    assert _problem(root, policy) is P.SIGNATURE_MISMATCH
    assert _problem(root, None) is P.SIGNATURE_MISMATCH


def test_removing_the_inner_signature_breaks_the_outer_one(sealed: bytes, policy: mm.TrustPolicy) -> None:
    root = mm.parse_xml(sealed)
    inner = mm.signed_delivery_of(root)
    inner.remove(inner[-1])
    assert _problem(inner, policy) is P.UNSIGNED
    assert _problem(root, policy) is P.DIGEST_MISMATCH


def test_unsigned_and_doubly_signed(signed: bytes, policy: mm.TrustPolicy) -> None:
    assert _problem(mm.build_signed_delivery(letter()), policy) is P.UNSIGNED
    root = mm.parse_xml(signed)
    root.append(etree.fromstring(etree.tostring(root[-1])))
    assert _problem(root, policy) is P.MALFORMED_SIGNATURE


@pytest.mark.parametrize(
    ("path", "attribute", "value", "problem"),
    [
        (
            "SignedInfo/SignatureMethod",
            "Algorithm",
            "http://www.w3.org/2001/04/xmldsig-more#rsa-md5",
            P.UNSUPPORTED_ALGORITHM,
        ),
        (
            "SignedInfo/CanonicalizationMethod",
            "Algorithm",
            "http://www.w3.org/2006/12/xml-c14n11",
            P.UNSUPPORTED_ALGORITHM,
        ),
        (
            "SignedInfo/Reference/Transforms/Transform",
            "Algorithm",
            "http://www.w3.org/TR/1999/REC-xslt-19991116",
            P.UNSUPPORTED_ALGORITHM,
        ),
        ("SignedInfo/Reference", "URI", "#elsewhere", P.MALFORMED_SIGNATURE),
    ],
)
def test_signed_info_changes(
    signed: bytes, policy: mm.TrustPolicy, path: str, attribute: str, value: str, problem: P
) -> None:
    root = mm.parse_xml(signed)
    element = root.find("/".join(f"{{{DS}}}{part}" for part in ("Signature", *path.split("/"))))
    assert element is not None
    element.set(attribute, value)
    assert _problem(root, policy) is problem


def test_missing_keyinfo_and_bad_base64_are_malformed(signed: bytes, policy: mm.TrustPolicy) -> None:
    root = mm.parse_xml(signed)
    signature = root[-1]
    signature.remove(signature.find(f"{{{DS}}}KeyInfo"))  # type: ignore[arg-type]
    assert _problem(root, policy) is P.MALFORMED_SIGNATURE
    root = mm.parse_xml(signed)
    value = root.find(f".//{{{DS}}}SignatureValue")
    assert value is not None
    value.text = "***"
    assert _problem(root, policy) is P.MALFORMED_SIGNATURE


def test_a_certificate_from_another_ca_is_untrusted(policy: mm.TrustPolicy) -> None:
    stranger_ca = issue(None, "Främmande CA", ca=True)
    stranger = issue(stranger_ca, "Främmande myndighet").identity()
    element = mm.parse_xml(mm.sign_delivery(stranger, letter()))

    assert _problem(element, policy) is P.CERTIFICATE_UNTRUSTED
    mm.verify_element(element, None)  # the signature itself is fine
    # The same CA as an anchor makes it trusted; as an intermediate of ours it does not.
    mm.verify_element(element, mm.TrustPolicy(anchors=(stranger_ca.certificate,)))
    assert _problem(
        element, mm.TrustPolicy(anchors=policy.anchors, intermediates=(stranger_ca.certificate,))
    ) is (P.CERTIFICATE_UNTRUSTED)


def test_a_same_named_ca_with_another_key_is_untrusted(dev_certs: Path, policy: mm.TrustPolicy) -> None:
    real = dev_ca(dev_certs)
    impostor = issue(None, "impostor", ca=True)
    leaf = issue(impostor, "Falsk myndighet")
    # The issuer *name* is our CA's, the signature the impostor's: only the signature check can tell.
    forged = (
        x509.CertificateBuilder()
        .subject_name(leaf.certificate.subject)
        .issuer_name(real.certificate.subject)
        .public_key(leaf.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.certificate.not_valid_before_utc)
        .not_valid_after(leaf.certificate.not_valid_after_utc)
        .sign(impostor.key, hashes.SHA256())
    )
    element = mm.parse_xml(mm.sign_delivery(mm.SigningIdentity(forged, leaf.key), letter()))
    assert _problem(element, policy) is P.CERTIFICATE_UNTRUSTED


def test_validity_period_is_checked() -> None:
    now = dt.datetime.now(dt.UTC)
    ca = issue(None, "Gammal CA", ca=True, not_before=now - dt.timedelta(days=365))
    policy = mm.TrustPolicy(anchors=(ca.certificate,))
    expired = issue(
        ca, "Utgången", not_before=now - dt.timedelta(days=60), not_after=now - dt.timedelta(days=1)
    )
    element = mm.parse_xml(mm.sign_delivery(expired.identity(), letter()))

    assert _problem(element, policy) is P.CERTIFICATE_EXPIRED
    mm.verify_element(element, policy, at=now - dt.timedelta(days=2))
    assert _problem(element, policy, at=now - dt.timedelta(days=90)) is P.CERTIFICATE_NOT_YET_VALID


def test_a_certificate_that_may_not_sign_is_unusable(dev_certs: Path, policy: mm.TrustPolicy) -> None:
    encipher_only = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    leaf = issue(dev_ca(dev_certs), "Bara kryptering", key_usage=encipher_only)
    element = mm.parse_xml(mm.sign_delivery(leaf.identity(), letter()))
    assert _problem(element, policy) is P.CERTIFICATE_UNUSABLE


def test_a_chain_through_an_intermediate(dev_certs: Path) -> None:
    root_ca = dev_ca(dev_certs)
    intermediate = issue(root_ca, "Mellan-CA", ca=True)
    leaf = issue(intermediate, "Myndighet via mellan-CA")
    anchors_only = mm.TrustPolicy(anchors=(root_ca.certificate,))

    bare = mm.parse_xml(mm.sign_delivery(leaf.identity(), letter()))
    assert _problem(bare, anchors_only) is P.CERTIFICATE_UNTRUSTED
    mm.verify_element(
        bare, mm.TrustPolicy(anchors=(root_ca.certificate,), intermediates=(intermediate.certificate,))
    )
    # The intermediate sent in KeyInfo is enough, and the leaf (not the intermediate) is the signer.
    with_chain = mm.SigningIdentity(leaf.certificate, leaf.key, (intermediate.certificate,))
    verified = mm.verify_element(mm.parse_xml(mm.sign_delivery(with_chain, letter())), anchors_only)
    assert verified.certificate == leaf.certificate


# --- tampering that the canonical writer must see as libxml2 did: large attachments, moved signatures,
# wrapped and duplicated signed content ----------------------------------------------------------------


@pytest.fixture(scope="module")
def large(sender: mm.SigningIdentity, relay: mm.SigningIdentity) -> tuple[bytes, bytes]:
    """Signed and sealed bytes of a letter with a 2.5 MB attachment (one 3.3 MB base64 text node)."""
    content = letter()
    big = mm.AttachmentContent("stor.pdf", "application/pdf", b"%PDF-1.4\n" + os.urandom(2_500_000))
    message = dataclasses.replace(content.messages[0], attachments=(big,))
    signed = mm.sign_delivery(sender, dataclasses.replace(content, messages=(message,)))
    return signed, mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True)


def _flip_in_attachment(data: bytes) -> bytes:
    start = data.rindex(b"<Body xmlns=")
    at = start + (data.index(b"</Body>", start) - start) // 2
    return data[:at] + (b"A" if data[at : at + 1] != b"A" else b"B") + data[at + 1 :]


def test_a_large_letter_verifies_and_any_change_to_it_is_a_digest_mismatch(
    large: tuple[bytes, bytes], policy: mm.TrustPolicy
) -> None:
    signed, sealed = large
    mm.verify_element(mm.parse_xml(signed), policy)
    root = mm.parse_xml(sealed)
    mm.verify_element(root, policy)
    mm.verify_element(mm.signed_delivery_of(root), policy)

    for edit in (_flip_in_attachment, lambda d: _replace_once(d, b"Beslut om bygglov", b"Beslut om bygglob")):
        assert _problem(mm.parse_xml(edit(signed)), policy) is P.DIGEST_MISMATCH
        tampered = mm.parse_xml(edit(sealed))
        assert _problem(tampered, policy) is P.DIGEST_MISMATCH
        assert _problem(mm.signed_delivery_of(tampered), policy) is P.DIGEST_MISMATCH


def test_a_large_attachment_cut_short_or_lengthened_is_a_digest_mismatch(
    large: tuple[bytes, bytes], policy: mm.TrustPolicy
) -> None:
    signed, _ = large
    end = signed.rindex(b"</Body>")
    for tampered in (signed[: end - 4] + signed[end:], signed[:end] + b"AAAA" + signed[end:]):
        assert _problem(mm.parse_xml(tampered), policy) is P.DIGEST_MISMATCH


def test_a_signature_moved_onto_another_letter_is_a_digest_mismatch(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    # Both letters are validly signed by the same sender; only the content binds a signature to its letter.
    one = mm.sign_delivery(sender, letter())
    other = mm.sign_delivery(sender, letter(subject="Beslut om strandskydd"))
    root, donor = mm.parse_xml(one), mm.parse_xml(other)
    root.replace(root[-1], donor[-1])
    assert _problem(root, policy) is P.DIGEST_MISMATCH
    # ... and the relay's seal of one letter on the seal of another.
    sealed_one = mm.parse_xml(mm.seal_delivery(relay, one, received=RECEIVED, signatures_ok=True))
    sealed_other = mm.parse_xml(mm.seal_delivery(relay, other, received=RECEIVED, signatures_ok=True))
    sealed_one.replace(sealed_one[-1], sealed_other[-1])
    assert _problem(sealed_one, policy) is P.DIGEST_MISMATCH


def test_a_forged_delivery_with_the_genuine_one_wrapped_away_is_refused(
    signed: bytes, policy: mm.TrustPolicy
) -> None:
    # Signature wrapping: readers see a forged Delivery, the genuine one is hidden where a verifier that
    # followed references might still find it (in a ds:Object of the Signature, or deeper in the document).
    for hide in ("object", "nested"):
        root = mm.parse_xml(signed)
        genuine = root[0]
        forged = etree.fromstring(etree.tostring(genuine).replace(b">198101032384<", b">198101032385<"))
        if hide == "object":
            etree.SubElement(root[-1], f"{{{DS}}}Object").append(genuine)
            root.insert(0, forged)
        else:
            root.replace(genuine, forged)
            forged.append(mm.parse_xml(signed))  # the whole genuine SignedDelivery, signature and all
        assert mm.read_delivery(root).recipient_id == "198101032385"
        assert _problem(root, policy) is P.DIGEST_MISMATCH, hide


def test_duplicated_signed_content_is_refused(
    signed: bytes, sealed: bytes, sender: mm.SigningIdentity, policy: mm.TrustPolicy
) -> None:
    # A second Delivery next to the signed one.
    root = mm.parse_xml(signed)
    root.insert(1, etree.fromstring(etree.tostring(root[0])))
    assert _problem(root, policy) is P.DIGEST_MISMATCH
    # A SealedDelivery with another, itself validly signed, SignedDelivery put first (where
    # signed_delivery_of and readers look): the sender's signature on it holds, the relay's seal does not.
    other = mm.parse_xml(mm.sign_delivery(sender, letter(subject="Beslut om strandskydd")))
    sealed_root = mm.parse_xml(sealed)
    sealed_root.insert(0, other)
    mm.verify_element(mm.signed_delivery_of(sealed_root), policy)
    assert _problem(sealed_root, policy) is P.DIGEST_MISMATCH
