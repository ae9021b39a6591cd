"""S/MIME: reading recipients' certificates, finding them in a directory, and building the encrypted message.

The message is signed with the sender identity's key and then encrypted (AES-256-CBC, RSA key transport) to
the recipient's certificate with `cryptography`'s PKCS7 builders. That library can only encrypt to RSA
certificates, so an EC certificate counts as not usable for encryption. Pure building, no network.
"""

from __future__ import annotations

import email
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kanalvaxel.adapters.email_message import (
    SMTP_POLICY,
    MailParties,
    fill_content,
    new_message,
    to_bytes,
)
from kanalvaxel.domain.addresses import address_key
from kanalvaxel.domain.errors import KanalvaxelError
from kanalvaxel.domain.masking import mask_email
from kanalvaxel.domain.model import Letter
from kanalvaxel.domain.rules import CertificateFacts
from kanalvaxel.ports import SenderInfo

log = logging.getLogger(__name__)

#: Below this an RSA key no longer protects confidential content (e.g. the Swedish NCSA's and NIST's advice).
MIN_RSA_BITS = 2048

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CERT_SUFFIXES = (".pem", ".crt")


class SmimeError(KanalvaxelError):
    """A certificate or key that cannot be used for S/MIME; the message says why. Retrying cannot help."""


def load_certificate(pem: str) -> x509.Certificate:
    """The one certificate in `pem`. SmimeError if it holds none, several, or something unreadable."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except (ValueError, UnicodeError) as exc:
        raise SmimeError("the text is not a readable PEM certificate") from exc
    if len(certificates) != 1:
        raise SmimeError(f"expected exactly one certificate, found {len(certificates)}")
    return certificates[0]


def certificate_email_addresses(cert: x509.Certificate) -> frozenset[str]:
    """The certificate's e-mail addresses in their comparable form (:func:`address_key`): SAN rfc822Names
    and subject emailAddress attributes.

    Raises ValueError for a malformed extension (the caller decides whether that is fatal).
    """
    found: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        found.update(san.get_values_for_type(x509.RFC822Name))
    for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            found.add(attribute.value)
    return frozenset(address_key(a) for a in found if a.strip())


def usable_for_encryption(cert: x509.Certificate) -> bool:
    """RSA (of a safe size), and KeyUsage and ExtendedKeyUsage, where present, allow e-mail encryption.

    Raises ValueError for a malformed extension.
    """
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.key_encipherment:
            return False
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    return any(oid in allowed for oid in extended)


@dataclass(frozen=True)
class SmimeSigner:
    """The sender identity's S/MIME certificate and key, for signing outgoing messages."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    def __post_init__(self) -> None:
        if self.certificate.public_key() != self.key.public_key():
            raise SmimeError("the S/MIME key does not belong to the certificate")

    @classmethod
    def from_files(cls, cert: Path, key: Path, password: bytes | None = None) -> SmimeSigner:
        """Read a PEM certificate and a PEM private key (encrypted with `password` if given)."""
        try:
            cert_text = cert.read_text(encoding="ascii")
            key_bytes = key.read_bytes()
        except (OSError, UnicodeError) as exc:
            raise SmimeError(f"cannot read the S/MIME certificate or key: {exc}") from exc
        certificate = load_certificate(cert_text)
        try:
            private = serialization.load_pem_private_key(key_bytes, password=password)
        except TypeError as exc:  # a password given for a plain key, or none for an encrypted one
            raise SmimeError(f"the S/MIME key {key.name}: {exc}") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            # ValueError covers both an unreadable file and a wrong password; the library does not tell which.
            raise SmimeError(f"the S/MIME key {key.name} cannot be read (wrong password?)") from exc
        if not isinstance(private, rsa.RSAPrivateKey):
            raise SmimeError(f"the S/MIME key {key.name} is not an RSA key")
        return cls(certificate, private)

    @property
    def email_addresses(self) -> frozenset[str]:
        return certificate_email_addresses(self.certificate)


class SmimeCertificateInspector:
    """Reads recipients' S/MIME certificates into CertificateFacts (implements ports.CertificateInspector).

    With trust anchors, a certificate is trusted only when one of them issued it directly (or it is one of
    them); intermediates must therefore be configured as anchors themselves. Without anchors every
    certificate counts as trusted: the case system vouches for the certificates it sends.
    """

    def __init__(self, trust_anchors: Sequence[x509.Certificate] = ()) -> None:
        self._anchors = tuple(trust_anchors)

    @classmethod
    def from_pem_files(cls, *paths: Path) -> SmimeCertificateInspector:
        """Trust anchors from PEM files, each holding one or more certificates. SmimeError if unreadable."""
        anchors: list[x509.Certificate] = []
        for path in paths:
            try:
                anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise SmimeError(f"cannot read trust anchors from {path}: {exc}") from exc
        return cls(anchors)

    def inspect(self, pem: str) -> CertificateFacts:
        """The facts of the certificate in `pem`. Never raises: an unreadable one has `problem` set."""
        try:
            return self.facts(load_certificate(pem))
        except SmimeError as exc:
            return _unreadable(str(exc))
        except Exception as exc:  # the port promises never to raise, whatever the input
            return _unreadable(f"the certificate cannot be read: {type(exc).__name__}")

    def facts(self, cert: x509.Certificate) -> CertificateFacts:
        """The facts of a parsed certificate. Raises ValueError for a malformed extension."""
        return CertificateFacts(
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            usable_for_encryption=usable_for_encryption(cert),
            email_addresses=certificate_email_addresses(cert),
            trusted=self._trusted(cert),
        )

    def _trusted(self, cert: x509.Certificate) -> bool:
        if not self._anchors:
            return True
        for anchor in self._anchors:
            if cert == anchor:
                return True
            if cert.issuer != anchor.subject:
                continue
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return True
        return False


def _unreadable(problem: str) -> CertificateFacts:
    return CertificateFacts(
        not_before=_EPOCH,
        not_after=_EPOCH,
        usable_for_encryption=False,
        email_addresses=frozenset(),
        trusted=False,
        problem=problem,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    pem: str
    facts: CertificateFacts


class CertificateDirectory:
    """Recipients' certificates kept as ``*.pem`` / ``*.crt`` files in one directory (implements
    ports.CertificateLookup).

    A file may hold one certificate (PEM or DER) or a PEM chain; each certificate is indexed by its own e-mail
    addresses. The directory is read again whenever a file is added, removed or rewritten, so an operator
    can drop in a certificate without a restart. Unreadable files are skipped with a warning.
    """

    def __init__(
        self,
        directory: Path,
        *,
        inspector: SmimeCertificateInspector | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._directory = directory
        self._inspector = inspector or SmimeCertificateInspector()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._signature: object = None
        self._index: dict[str, list[_Entry]] = {}

    def find(self, email: str) -> str | None:
        """The PEM of the best certificate for `email` (case-insensitive), or None.

        Best: trusted, usable for encryption and valid now, then the one that stays valid longest.
        """
        wanted = address_key(email)
        with self._lock:
            self._refresh()
            entries = list(self._index.get(wanted, ()))
        if not entries:
            return None
        now = self._clock()

        def rank(entry: _Entry) -> tuple[bool, bool, bool, datetime]:
            f = entry.facts
            return (f.trusted, f.usable_for_encryption, f.not_before <= now <= f.not_after, f.not_after)

        return max(entries, key=rank).pem

    def _refresh(self) -> None:
        try:
            files = sorted(
                p for p in self._directory.iterdir() if p.suffix.lower() in _CERT_SUFFIXES and p.is_file()
            )
            # Size and mtime of every file too: a certificate replaced in place does not touch the directory.
            signature = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        except OSError as exc:
            if self._signature != "unreadable":
                log.warning("certificate directory %s cannot be read: %s", self._directory, exc.strerror)
            self._signature, self._index = "unreadable", {}
            return
        if signature == self._signature:
            return
        index: dict[str, list[_Entry]] = {}
        for path in files:
            for entry in self._read(path):
                for address in entry.facts.email_addresses:
                    index.setdefault(address, []).append(entry)
        self._signature, self._index = signature, index
        log.info("certificate directory %s: %d files, %d addresses", self._directory, len(files), len(index))

    def _read(self, path: Path) -> list[_Entry]:
        try:
            data = path.read_bytes()
            if b"-----BEGIN" in data:
                certificates = x509.load_pem_x509_certificates(data)
            else:
                certificates = [x509.load_der_x509_certificate(data)]
            entries = []
            for cert in certificates:
                pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
                entries.append(_Entry(pem, self._inspector.facts(cert)))
        except (OSError, ValueError) as exc:
            log.warning(
                "certificate file %s in %s skipped: %s", _safe_name(path), self._directory, type(exc).__name__
            )
            return []
        return entries


def _safe_name(path: Path) -> str:
    # Operators may name files after the address they hold; the log must not carry the address.
    name = path.name
    return mask_email(path.stem) + path.suffix if "@" in name else name


def build_encrypted_email(
    letter: Letter,
    sender: SenderInfo,
    parties: MailParties,
    recipient_pem: str,
    signer: SmimeSigner | None,
    *,
    now: datetime,
) -> bytes:
    """The letter signed (when `signer` is given) and encrypted to `recipient_pem`, as bytes for SMTP DATA.

    Only the outer headers travel in clear, with a generic subject; the real subject is among the protected
    headers inside. Raises SmimeError for an unusable recipient certificate or signer, EmailBuildError for
    values that cannot go into a message.
    """
    recipient = load_certificate(recipient_pem)
    try:
        usable = usable_for_encryption(recipient)
    except ValueError as exc:
        raise SmimeError("the recipient's certificate has a malformed extension") from exc
    if not usable:
        raise SmimeError("the recipient's certificate is not usable for encryption (RSA, keyEncipherment)")
    if signer is not None and not (
        signer.certificate.not_valid_before_utc <= now <= signer.certificate.not_valid_after_utc
    ):
        # A signature by an expired certificate makes the recipient's mail program warn about forgery.
        raise SmimeError("the sender's S/MIME certificate is not valid now")

    inner = new_message(parties, subject=letter.subject, now=now, inner=True)
    fill_content(inner, letter, sender)
    # Tells mail programs (Thunderbird and others) to show the subject from inside, not the generic one.
    inner.set_param("protected-headers", "v1")
    payload = to_bytes(inner)
    if signer is not None:
        payload = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(payload)
            .add_signer(signer.certificate, signer.key, hashes.SHA256())
            .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
        )
    try:
        enveloped = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(payload)
            .add_recipient(recipient)
            .set_content_encryption_algorithm(algorithms.AES256)
            # Binary: the payload is already a CRLF MIME entity; no conversion, so the signature stays valid.
            .encrypt(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.Binary])
        )
    except (TypeError, ValueError) as exc:
        raise SmimeError(f"the message cannot be encrypted to the recipient's certificate: {exc}") from exc

    outer = new_message(parties, subject=f"Krypterat meddelande från {sender.name}", now=now)
    envelope = email.message_from_bytes(enveloped, _class=EmailMessage, policy=SMTP_POLICY)
    for name in ("MIME-Version", "Content-Type", "Content-Disposition", "Content-Transfer-Encoding"):
        value = envelope[name]
        if value is not None:
            outer[name] = value
    outer.set_payload(envelope.get_payload())
    return to_bytes(outer)
