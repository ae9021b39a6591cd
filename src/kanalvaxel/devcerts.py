"""Development certificates for the sandbox and the tests: a dev root CA and the leaves issued by it.

Never for production: every subject carries ``O = kanalvaxel DEVELOPMENT ONLY`` (`DEV_CERT_MARKER`), which
production settings refuse. Signing certificates follow the Mina meddelanden convention seen in real
certificates (Kivra's test certificate, Kommun A/B in the public samples): the subject's ``serialNumber``
attribute is the 16-prefixed organisation number.

``python -m kanalvaxel.devcerts [--dir certs-dev] [--force]`` creates whatever is missing, broken (key and
certificate do not match, not issued by the current CA) or expiring within 30 days, and leaves the rest alone.
A new CA means every leaf is reissued.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kanalvaxel.config import DEV_CERT_MARKER, Settings

__all__ = ["CA_NAME", "PROFILES", "CertProfile", "Usage", "ensure_dev_certs", "main"]

CA_NAME = "ca"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=3 * 365)
#: Reissue a certificate this long before it expires, so the sandbox never breaks on a date.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdate notBefore a little: a peer whose clock runs behind must not see a certificate from the future.
BACKDATE = dt.timedelta(hours=1)

SENDER_ORGNR = "2120000001"
RELAY_ORGNR = "2120000019"

_LOCALHOST: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


@dataclass(frozen=True)
class Usage:
    digital_signature: bool = True
    content_commitment: bool = False
    key_encipherment: bool = False


_SIGNING = Usage(content_commitment=True)
_TLS = Usage(key_encipherment=True)


@dataclass(frozen=True)
class CertProfile:
    """One leaf certificate: ``<name>.pem`` and ``<name>.key``."""

    name: str
    common_name: str
    usage: Usage
    eku: tuple[x509.ObjectIdentifier, ...] = ()
    #: Ten-digit organisation number; written as ``serialNumber = 16<orgnr>`` (the MM convention).
    organisation_number: str | None = None
    san: tuple[x509.GeneralName, ...] = field(default_factory=tuple)
    #: A deliberately expired certificate (for tests that must refuse it).
    expired: bool = False


def _email(address: str) -> tuple[x509.GeneralName, ...]:
    return (x509.RFC822Name(address),)


_SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)
_CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)
_EMAIL = (ExtendedKeyUsageOID.EMAIL_PROTECTION,)
_RECIPIENT = "mottagare@example.se"

PROFILES: tuple[CertProfile, ...] = (
    # The sandbox authority's XMLDSig signing certificate (SignedDelivery).
    CertProfile("sender", "Sandlådans kommun (utveckling)", _SIGNING, organisation_number=SENDER_ORGNR),
    # The sandbox förmedlare's seal certificate (SealedDelivery).
    CertProfile("relay", "Sandlådans förmedlare (utveckling)", _SIGNING, organisation_number=RELAY_ORGNR),
    # TLS server for every local listener (kanalväxel API, relay, FaR simulator).
    CertProfile("server", "localhost", _TLS, _SERVER_AUTH, san=_LOCALHOST),
    # Mutual TLS client certificates. MM identifies the calling organisation by the same serialNumber.
    CertProfile("client", "kanalvaxel sandbox client", _TLS, _CLIENT_AUTH, organisation_number=SENDER_ORGNR),
    CertProfile(
        "relay-client", "formedlare sandbox client", _TLS, _CLIENT_AUTH, organisation_number=RELAY_ORGNR
    ),
    # Each mailbox-operator simulator has its own identity, so tests can show that the relay checks which
    # operator it reached (a relay pinned to Kivra must refuse the MMP simulator's certificate).
    CertProfile("operator-kivra", "operator-kivra simulator", _TLS, _SERVER_AUTH, san=_LOCALHOST),
    CertProfile("operator-mmp", "operator-mmp simulator", _TLS, _SERVER_AUTH, san=_LOCALHOST),
    # S/MIME: a usable recipient, an expired one, one that can only sign, and the sandbox sender.
    CertProfile("smime-recipient", _RECIPIENT, _TLS, _EMAIL, san=_email(_RECIPIENT)),
    CertProfile("smime-expired", _RECIPIENT, _TLS, _EMAIL, san=_email(_RECIPIENT), expired=True),
    CertProfile("smime-signonly", _RECIPIENT, Usage(), _EMAIL, san=_email(_RECIPIENT)),
    CertProfile(
        "smime-sender",
        "noreply@sandlada.example.se",
        _SIGNING,
        _EMAIL,
        organisation_number=SENDER_ORGNR,
        san=_email("noreply@sandlada.example.se"),
    ),
)


def ensure_dev_certs(directory: Path, *, force: bool = False) -> list[Path]:
    """Create the dev CA and leaves in `directory` where missing or unusable; return the files written.

    Idempotent: with everything present and valid nothing is written and ``[]`` is returned. `force`
    reissues everything. Concurrent callers on the same directory are serialised by a lock file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    written: list[Path] = []
    with _locked(directory):
        ca = None if force else _load_ca(directory, now)
        new_ca = ca is None
        if ca is None:
            ca = _issue_ca(now)
            written += _write_pair(directory, CA_NAME, *ca)
        for profile in PROFILES:
            if new_ca or not _leaf_ok(directory, profile, ca[0], now):
                written += _write_pair(directory, profile.name, *_issue_leaf(profile, ca, now))
    return written


# ---------------------------------------------------------------- issuing


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str, organisation_number: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_CERT_MARKER),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if organisation_number is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, "16" + organisation_number))
    return x509.Name(attributes)


def _key_usage(usage: Usage, *, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=usage.digital_signature,
        content_commitment=usage.content_commitment,
        key_encipherment=usage.key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_ca(now: dt.datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _new_key()
    name = _name("kanalvaxel development root CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(Usage(digital_signature=False), ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(
    profile: CertProfile, ca: tuple[x509.Certificate, rsa.RSAPrivateKey], now: dt.datetime
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    ca_cert, ca_key = ca
    key = _new_key()
    if profile.expired:
        not_before, not_after = now - dt.timedelta(days=400), now - dt.timedelta(days=30)
    else:
        not_before, not_after = now - BACKDATE, now + LEAF_VALIDITY
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(profile.common_name, profile.organisation_number))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(profile.usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if profile.eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(profile.eku)), critical=False)
    if profile.san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(profile.san)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


# ---------------------------------------------------------------- checking what is there


def _read_pair(directory: Path, name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        # Only the public half is compared here; full RSA validation costs ~40 ms per key (deps-notes §2).
        key = serialization.load_pem_private_key(
            (directory / f"{name}.key").read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _load_ca(directory: Path, now: dt.datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey] | None:
    pair = _read_pair(directory, CA_NAME)
    if pair is None or not _fresh(pair[0], now):
        return None
    marker = pair[0].subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return pair if [a.value for a in marker] == [DEV_CERT_MARKER] else None


def _leaf_ok(directory: Path, profile: CertProfile, ca_cert: x509.Certificate, now: dt.datetime) -> bool:
    pair = _read_pair(directory, profile.name)
    if pair is None:
        return False
    cert = pair[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return profile.expired or _fresh(cert, now)


# ---------------------------------------------------------------- writing


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> list[Path]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    _write_atomically(key_path, key_pem, mode=0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return [cert_path, key_path]


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # mkstemp creates the file 0600, so a key is never readable by others, not even for a moment.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    if sys.platform == "win32":  # no flock; concurrent first runs there are the user's to avoid
        yield
        return
    import fcntl

    with open(directory / ".devcerts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    default_dir = Settings.model_fields["dev_certs_dir"].default
    parser = argparse.ArgumentParser(
        prog="python -m kanalvaxel.devcerts",
        description="Create the DEVELOPMENT certificates (never for production) where missing.",
    )
    parser.add_argument(
        "--dir", type=Path, default=default_dir, help=f"target directory (default {default_dir})"
    )
    parser.add_argument("--force", action="store_true", help="reissue everything, including the CA")
    args = parser.parse_args(argv)
    written = ensure_dev_certs(args.dir, force=args.force)
    if written:
        print(f"devcerts: wrote {len(written)} files to {args.dir}/ (development only, never production)")
    else:
        print(f"devcerts: {args.dir}/ is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
