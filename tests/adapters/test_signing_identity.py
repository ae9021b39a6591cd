"""Sender signing identities from settings: PEM or PKCS#12 (with a password), loaded once, and refused
with a one-line reason when they cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from formedlare.mm import TrustPolicy, parse_xml, sign_delivery, verify_element
from kanalvaxel.adapters.digital_mail import load_signer
from kanalvaxel.adapters.mina_meddelanden import delivery_content
from kanalvaxel.config import SenderIdentity
from kanalvaxel.domain.errors import ConfigurationError
from kanalvaxel.ports import SenderInfo
from tests.integration.conftest import make_letter


def _p12(dev_certs: Path, tmp_path: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key((dev_certs / "sender.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((dev_certs / "sender.pem").read_bytes())
    data = pkcs12.serialize_key_and_certificates(
        b"sender",
        key,  # type: ignore[arg-type]
        cert,
        None,
        serialization.BestAvailableEncryption(password),
    )
    path = tmp_path / "sender.p12"
    path.write_bytes(data)
    return path


def test_a_pkcs12_identity_with_a_password_signs_deliveries_the_relay_trusts(
    dev_certs: Path, tmp_path: Path
) -> None:
    p12 = _p12(dev_certs, tmp_path, b"hemligt")
    sender = SenderIdentity(
        key="kommunen",
        organisation_number="2120000001",
        name="Kommunen",
        pkcs12=p12,
        signing_key_password="hemligt",
    )
    signer = load_signer(sender)
    assert signer is not None
    assert signer.organisation_number == "2120000001"
    info = SenderInfo("kommunen", "2120000001", "Kommunen")
    signed = sign_delivery(signer, delivery_content("shp-1", make_letter(sender="kommunen"), info))
    verified = verify_element(parse_xml(signed), TrustPolicy.from_pem_files(dev_certs / "ca.pem"))
    assert verified.organisation_number == "2120000001"


def test_a_wrong_pkcs12_password_is_a_one_line_configuration_error(dev_certs: Path, tmp_path: Path) -> None:
    p12 = _p12(dev_certs, tmp_path, b"hemligt")
    sender = SenderIdentity(
        key="kommunen",
        organisation_number="2120000001",
        name="Kommunen",
        pkcs12=p12,
        signing_key_password="fel",
    )
    with pytest.raises(
        ConfigurationError, match=r"senders\[kommunen\]: the signing identity cannot be loaded"
    ):
        load_signer(sender)


def test_a_sender_without_a_signing_certificate_has_no_signer(dev_certs: Path) -> None:
    sender = SenderIdentity(key="kommunen", organisation_number="2120000001", name="Kommunen")
    assert load_signer(sender) is None
    missing = sender.model_copy(
        update={"signing_certificate": dev_certs / "nope.pem", "signing_key": dev_certs / "nope.key"}
    )
    with pytest.raises(ConfigurationError, match="cannot be loaded") as err:
        load_signer(missing)
    assert "\n" not in str(err.value)
