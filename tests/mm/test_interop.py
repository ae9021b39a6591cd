"""Deliveries signed by other MM implementations (../shared/interop-vectors): accepted when valid, refused
when not. None of their certificates chains to anything we have, so these run without a trust policy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from lxml import etree

from formedlare import mm
from tests.conftest import shared_dir

P = mm.SignatureProblem


def _vectors() -> Path:
    return shared_dir() / "interop-vectors"


def _kivra() -> etree._Element:
    return mm.soap_request_payload((_vectors() / "kivra-ews/deliverSecure_v3.xml").read_bytes())[0]


def _net(name: str) -> etree._Element:
    return mm.parse_xml((_vectors() / "se-gov-mm-integration" / name).read_bytes())


def _py_seal() -> etree._Element:
    return mm.soap_request_payload((_vectors() / "pymmclient/seal_out.xml").read_bytes())[0]


def test_kivra_v3_sha1_both_signatures() -> None:
    sealed = _kivra()
    assert etree.QName(sealed).localname == "deliverSecure"
    outer = mm.verify_element(sealed, None)
    inner = mm.verify_element(mm.signed_delivery_of(sealed), None)
    assert outer.organisation_number == inner.organisation_number == "5568402266"
    assert outer.digest_algorithm == "http://www.w3.org/2000/09/xmldsig#sha1"
    assert mm.read_delivery(sealed).subjects == ("Välkommen till bruket",)


def test_kivra_within_a_policy_that_trusts_its_own_certificate() -> None:
    sealed = _kivra()
    cert = mm.verify_element(sealed, None).certificate
    mm.verify_element(sealed, mm.TrustPolicy(anchors=(cert,)), at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(sealed, mm.TrustPolicy(anchors=(cert,), allow_sha1=False))
    assert caught.value.reason is P.SHA1_NOT_ALLOWED


def test_se_gov_sealed_delivery_with_signature_sha256_both() -> None:
    sealed = _net("SealedDeliveryWithSignature.xml")
    assert mm.verify_element(sealed, None, allow_sha1=False).digest_algorithm.endswith("#sha256")
    assert mm.verify_element(mm.signed_delivery_of(sealed), None, allow_sha1=False).organisation_number == (
        "2021004748"
    )


def test_se_gov_sealed_delivery_inner_only() -> None:
    sealed = _net("SealedDelivery.xml")
    mm.verify_element(mm.signed_delivery_of(sealed), None)
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(sealed, None)
    assert caught.value.reason is P.UNSIGNED


def test_se_gov_expired_certificate_passes_only_inside_its_validity() -> None:
    sealed = _net("SealedDeliveryWithSignature.xml")
    cert = mm.verify_element(sealed, None).certificate
    trusting = mm.TrustPolicy(anchors=(cert,))
    mm.verify_element(sealed, trusting, at=dt.datetime(2020, 6, 1, tzinfo=dt.UTC))
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(sealed, trusting)
    assert caught.value.reason is P.CERTIFICATE_EXPIRED


def test_se_gov_reindented_after_signing_is_refused() -> None:
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(_net("SignedDeliveryWithSignature.xml"), None)
    assert caught.value.reason is P.DIGEST_MISMATCH


def test_pymmclient_v1_arg0_signed_delivery() -> None:
    signed = mm.parse_xml((_vectors() / "pymmclient/signed.xml").read_bytes())
    assert signed.tag == "arg0"
    assert mm.verify_element(signed, None).organisation_number == "2021003898"


def test_pymmclient_v1_sealed_delivery_both_signatures() -> None:
    sealed = _py_seal()
    assert sealed.tag == "arg0"
    mm.verify_element(sealed, None)
    mm.verify_element(mm.signed_delivery_of(sealed), None)


@pytest.mark.parametrize(
    "element",
    [_kivra, _py_seal, lambda: mm.parse_xml((_vectors() / "pymmclient/signed.xml").read_bytes())],
    ids=["kivra", "pymmclient seal", "pymmclient signed"],
)
def test_sha1_vectors_are_refused_when_sha1_is_not_allowed(element: object) -> None:
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(element(), None, allow_sha1=False)  # type: ignore[operator]
    assert caught.value.reason is P.SHA1_NOT_ALLOWED


def test_a_changed_vector_is_refused() -> None:
    data = (_vectors() / "kivra-ews/deliverSecure_v3.xml").read_bytes().replace(b"bruket", b"bryggan")
    sealed = mm.soap_request_payload(data)[0]
    for element in (sealed, mm.signed_delivery_of(sealed)):
        with pytest.raises(mm.SignatureInvalidError) as caught:
            mm.verify_element(element, None)
        assert caught.value.reason is P.DIGEST_MISMATCH
