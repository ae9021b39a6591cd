"""Helpers for tests that talk to simulators and the relay service over mutual TLS on loopback."""

from __future__ import annotations

import datetime as dt
import ssl
import uuid
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from formedlare.https_server import TlsFiles
from formedlare.mm import DeliveryContent, MessageContent, SigningIdentity, seal_delivery, sign_delivery

SENDER_ID = "162120000001"  # the dev `sender` certificate's organisation, 16-prefixed
RECIPIENT_ID = "197001011233"  # the sandbox registry's Kivra recipient
SOAP_HEADERS = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}


def mtls_client(certs: Path, name: str | None, *, timeout: float = 10.0) -> httpx.Client:
    """An httpx client trusting the dev CA, presenting the dev certificate `name` (None: no certificate)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if name is not None:
        context.load_cert_chain(str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
    return httpx.Client(verify=context, timeout=timeout, trust_env=False)


def server_tls(certs: Path, name: str = "server") -> TlsFiles:
    return TlsFiles(certs / f"{name}.pem", certs / f"{name}.key", client_ca=certs / "ca.pem")


def content(
    message_id: str | None = None, *, subject: str = "Beslut om bygglov", body: bytes = b"Hej!"
) -> DeliveryContent:
    return DeliveryContent(
        sender_id=SENDER_ID,
        sender_name="Testkommunen",
        recipient_id=RECIPIENT_ID,
        messages=(
            MessageContent(
                message_id=message_id or str(uuid.uuid4()),
                subject=subject,
                body=body,
                body_content_type="text/plain",
                support_text="Ring kommunen på 010-123 45 67.",
            ),
        ),
    )


def identity(certs: Path, name: str) -> SigningIdentity:
    return SigningIdentity.from_pem(certs / f"{name}.pem", certs / f"{name}.key")


def sealed(sender: SigningIdentity, relay: SigningIdentity, signed: bytes) -> bytes:
    return seal_delivery(relay, signed, received=dt.date.today(), signatures_ok=True)


def signed_and_sealed(
    sender: SigningIdentity, relay: SigningIdentity, message_id: str | None = None
) -> bytes:
    return sealed(sender, relay, sign_delivery(sender, content(message_id)))


def foreign_identity(tmp_path: Path, *, organisation: str = "162120000019") -> SigningIdentity:
    """A signing identity from a CA of its own, which nothing in the dev setup trusts."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Främmande CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Främmande förmedlare"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, organisation),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "foreign.pem", tmp_path / "foreign.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return SigningIdentity.from_pem(cert_path, key_path)
