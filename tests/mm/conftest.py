"""Fixtures and helpers for the Mina meddelanden XML layer: identities from the dev certificates, a sample
letter, extra certificates for negative trust tests, and a re-renderer that gives every namespace a prefix
the way a SOAP library does."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from formedlare import mm

SENDER_ID = "162120000001"
RECIPIENT_ID = "198101032384"
RECEIVED = dt.date(2025, 3, 14)


@pytest.fixture(scope="session")
def sender(dev_certs: Path) -> mm.SigningIdentity:
    return mm.SigningIdentity.from_pem(dev_certs / "sender.pem", dev_certs / "sender.key")


@pytest.fixture(scope="session")
def relay(dev_certs: Path) -> mm.SigningIdentity:
    return mm.SigningIdentity.from_pem(dev_certs / "relay.pem", dev_certs / "relay.key")


@pytest.fixture(scope="session")
def policy(dev_certs: Path) -> mm.TrustPolicy:
    return mm.TrustPolicy.from_pem_files(dev_certs / "ca.pem", allow_sha1=False)


def letter(*, attachments: int = 1, subject: str = "Beslut om bygglov – Åsa Öberg") -> mm.DeliveryContent:
    files = tuple(
        mm.AttachmentContent(
            f"beslut-{n}.pdf", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes([n]) * 64
        )
        for n in range(attachments)
    )
    message = mm.MessageContent(
        message_id="7f0c1d2e-0000-4000-8000-000000000001",
        subject=subject,
        body="Hej!\nDitt ärende är klart. <b>&</b>\r\n".encode(),
        body_content_type="text/plain",
        support_text="Ring växeln, 08-123 45 67, vardagar 8–16.",
        support_url="https://sandlada.example.se/kontakt",
        support_phone="08-123 45 67",
        support_email="registrator@sandlada.example.se",
        attachments=files,
    )
    return mm.DeliveryContent(
        sender_id=SENDER_ID,
        sender_name="Sandlådans kommun",
        recipient_id=RECIPIENT_ID,
        messages=(message,),
        reference="Dnr 2025-0042",
        correlation_id="corr-1",
    )


def reprefix(envelope: bytes, seed: int) -> bytes:
    """`envelope` re-rendered with a random prefix (``ns0``, ``p7``, ...) for every namespace and all
    declarations on the root: the shape zeep, JAXB and suds put on the wire. Text is kept as is."""
    rng = random.Random(seed)
    source = etree.fromstring(envelope, etree.XMLParser(huge_tree=True))
    uris = sorted({el.tag[1:].partition("}")[0] for el in source.iter() if isinstance(el.tag, str)})
    prefixes = [f"{rng.choice(['ns', 'p', 'tns', 'q'])}{i}" for i in range(len(uris))]
    rng.shuffle(prefixes)
    nsmap = dict(zip(prefixes, uris, strict=True))

    def copy(element: etree._Element, parent: etree._Element | None) -> etree._Element:
        new = (
            etree.Element(element.tag, nsmap=nsmap)
            if parent is None
            else etree.SubElement(parent, element.tag)
        )
        for key, value in element.attrib.items():
            new.set(key, value)
        new.text = element.text
        for child in element:
            copy(child, new).tail = child.tail
        return new

    return etree.tostring(copy(source, None), encoding="UTF-8", xml_declaration=True)


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    def identity(self) -> mm.SigningIdentity:
        return mm.SigningIdentity(self.certificate, self.key)


def issue(
    issuer: Issued | None,
    common_name: str,
    *,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_usage: x509.KeyUsage | None = None,
    key: rsa.RSAPrivateKey | None = None,
) -> Issued:
    """A certificate signed by `issuer` (self-signed when None)."""
    now = dt.datetime.now(dt.UTC)
    own_key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, SENDER_ID),
        ]
    )
    usage = key_usage or x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(own_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )
    signer = issuer.key if issuer else own_key
    return Issued(builder.sign(signer, hashes.SHA256()), own_key)


def dev_ca(dev_certs: Path) -> Issued:
    cert = x509.load_pem_x509_certificate((dev_certs / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((dev_certs / "ca.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Issued(cert, key)
