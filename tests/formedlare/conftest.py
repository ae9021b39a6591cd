"""Fixtures for the relay: the sandbox world (FaR simulator + the kivra and mmp operator simulators over
mutual TLS on loopback), a movable clock, signed deliveries, and relays on SQLite or PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from far_client import FarClient, FarSettings
from formedlare.mm import DeliveryContent, MessageContent, SigningIdentity, TrustPolicy, sign_delivery
from formedlare.operators import operator_http_client
from formedlare.relay import DeliveryPolicy, Relay
from formedlare.store import ensure_schema, make_engine
from kanalvaxel.sandbox.world import SandboxWorld, start_world

SENDER_ORG = "2120000001"  # the dev `sender` certificate's organisation
KIVRA_RECIPIENT = "197001011233"
MMP_RECIPIENT = "198112189876"
PENDING_RECIPIENT = "199001012385"
OPTED_OUT_RECIPIENT = "197505052386"  # has opted out of SENDER_ORG
NO_MAILBOX_RECIPIENT = "198506062382"  # not in the FaR registry
KIVRA_NAME = "Kivra (simulator)"
MMP_NAME = "Min myndighetspost (simulator)"

_ids = itertools.count(1)


class Clock:
    """A clock tests move by hand; it starts at the real time so the development certificates are valid."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture(scope="session")
def world(dev_certs: Path) -> Iterator[SandboxWorld]:
    w = start_world(dev_certs)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def sims(world: SandboxWorld) -> Iterator[SandboxWorld]:
    """The world with every simulator reset to normal behaviour before and after the test."""
    for op in world.operators.values():
        op.reset()
    world.far.fail_with(None)
    world.far.delay(0)
    world.far.reset_stats()
    yield world
    for op in world.operators.values():
        op.reset()
    world.far.fail_with(None)
    world.far.delay(0)


@pytest.fixture(scope="session")
def sender(dev_certs: Path) -> SigningIdentity:
    return SigningIdentity.from_pem(dev_certs / "sender.pem", dev_certs / "sender.key")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The relay's store on SQLite (a file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'formedlare.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'formedlare.db'}"


def content(
    recipient: str, *, sender_org: str = SENDER_ORG, subject: str = "Beslut om bygglov"
) -> DeliveryContent:
    """A one-message delivery with a message id never used before in this session."""
    message_id = f"msg-{next(_ids)}-{dt.datetime.now(dt.UTC).timestamp()}"
    return DeliveryContent(
        sender_id="16" + sender_org,
        sender_name="Sandbox kommun",
        recipient_id=recipient,
        messages=(
            MessageContent(
                message_id=message_id,
                subject=subject,
                body="Hej! Här kommer ditt beslut. Åäö.".encode(),
                body_content_type="text/plain",
                support_text="Ring kommunen på vardagar",
            ),
        ),
        correlation_id=message_id,
    )


@dataclass
class RelayFactory:
    certs: Path
    world: SandboxWorld
    clock: Clock = field(default_factory=Clock)
    relays: list[Relay] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def __call__(
        self,
        url: str,
        *,
        policy: DeliveryPolicy | None = None,
        transport: Callable[[httpx.BaseTransport], httpx.BaseTransport] | None = None,
        relayed: tuple[str, ...] = (SENDER_ORG,),
        clock: Callable[[], dt.datetime] | None = None,
        far_cache_ttl: dt.timedelta = dt.timedelta(0),
        name: str = "formedlare",
    ) -> Relay:
        engine = make_engine(url)
        ensure_schema(engine)
        c = self.certs
        far = FarClient(
            FarSettings(
                url=self.world.far_url,
                client_certificate=c / "relay-client.pem",
                client_key=c / "relay-client.key",
                ca_bundle=c / "ca.pem",
                retries=0,
                cache_ttl=far_cache_ttl,
            )
        )
        http = operator_http_client(
            client_certificate=c / "relay-client.pem",
            client_key=c / "relay-client.key",
            ca_bundle=c / "ca.pem",
        )
        if transport is not None:
            inner = http._transport  # the real TLS transport, wrapped to inject a crash after the call
            http._transport = transport(inner)
        relay = Relay(
            engine,
            seal=SigningIdentity.from_pem(c / "relay.pem", c / "relay.key"),
            trust=TrustPolicy.from_pem_files(c / "ca.pem"),
            relayed_senders=relayed,
            far=far,
            http=http,
            clock=clock or self.clock,
            policy=policy or DeliveryPolicy(),
            name=name,
        )
        self.closers += [http.close, far.close, engine.dispose]
        return relay

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()


@pytest.fixture
def make_relay(dev_certs: Path, sims: SandboxWorld) -> Iterator[RelayFactory]:
    factory = RelayFactory(dev_certs, sims)
    try:
        yield factory
    finally:
        factory.close()


def sign(identity: SigningIdentity, recipient: str, **kwargs: str) -> bytes:
    return sign_delivery(identity, content(recipient, **kwargs))


# ---------------------------------------------------------------------------------- extra certificates


def issue_identity(
    directory: Path,
    name: str,
    *,
    organisation_number: str,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> SigningIdentity:
    """A signing certificate for negative tests: issued by `issuer` (default: a fresh CA of its own, which no
    relay trusts), subject serialNumber 16 + `organisation_number`."""
    now = dt.datetime.now(dt.UTC)
    if issuer is None:
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} okänd CA")])
        ca_cert = (
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
        issuer = (ca_cert, ca_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} signering"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "16" + organisation_number),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer[1], hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return SigningIdentity.from_pem(cert_path, key_path)


def dev_ca(certs: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key
