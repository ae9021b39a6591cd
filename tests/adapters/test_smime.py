"""S/MIME: what we build is opened and verified by the real `openssl cms`, reveals nothing in clear, and the
certificates we read are judged the way the rule engine needs (usable, trusted, which addresses)."""

from __future__ import annotations

import base64
import email
import logging
import os
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kanalvaxel.adapters.email_message import MailParties, make_message_id
from kanalvaxel.adapters.smime import (
    CertificateDirectory,
    SmimeCertificateInspector,
    SmimeError,
    SmimeSigner,
    build_encrypted_email,
    load_certificate,
)
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.masking import mask_email
from kanalvaxel.domain.model import Attachment, BodyType, Confidentiality, Letter, SupportInfo
from kanalvaxel.domain.rules import certificate_problems
from kanalvaxel.ports import SenderInfo

NOW = datetime.now(UTC).replace(microsecond=0)
SENDER = SenderInfo("sandby", organisation_number="2120000001", name="Sandlådans kommun")
SUBJECT = "Utredning om LVU-placering QZSUBJ7731 för Åsa"
BODY = (
    "Hej Åsa!\n\nUtredningen QZBODY4242 visar att placeringen fortsätter.\n\nMed vänliga hälsningar\nNämnden"
)
PDF_MARKER = b"QZPDF-9917-SECRET"
PDF_A = b"%PDF-1.4\n" + PDF_MARKER + b"\n" + os.urandom(3000) + b"\n%%EOF\n"
PDF_B = b"%PDF-1.7\n\x00\xff\r\n.\r\nFrom x\n" * 50
FILENAME_A = "QZFILE-utredning.pdf"
FILENAME_B = "Beslut om bistånd – åäö.pdf"
RECIPIENT = "mottagare@example.se"


def make_letter(**changes: object) -> Letter:
    letter = Letter(
        sender="sandby",
        recipient=RecipientId.parse("198112189876"),
        subject=SUBJECT,
        body=BODY,
        body_type=BodyType.TEXT,
        confidentiality=Confidentiality.CONFIDENTIAL,
        message_type="beslut",
        support_info=SupportInfo(text="Ring socialtjänsten.", phone="0771-12 34 56"),
        case_reference="SOC 2024/77",
        attachments=(Attachment(FILENAME_A, PDF_A), Attachment(FILENAME_B, PDF_B)),
    )
    return replace(letter, **changes)  # type: ignore[arg-type]


PARTIES = MailParties(
    from_address="noreply@sandlada.example.se",
    from_name="Sandlådans kommun",
    to_address=RECIPIENT,
    reply_to="kontakt@sandlada.example.se",
    message_id=make_message_id("20240502T093015-1a2b3c4d", "email_encrypted", "sandlada.example.se"),
)


def openssl(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, timeout=30, check=False
    )


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# ------------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def dev_ca(dev_certs: Path) -> Authority:
    key = serialization.load_pem_private_key((dev_certs / "ca.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Authority(x509.load_pem_x509_certificate((dev_certs / "ca.pem").read_bytes()), key)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue(
    ca: Authority,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    emails: tuple[str, ...] = (RECIPIENT,),
    subject_email: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_usage: x509.KeyUsage | None = None,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.EMAIL_PROTECTION,),
) -> x509.Certificate:
    names = [x509.NameAttribute(NameOID.COMMON_NAME, "Testmottagare")]
    if subject_email:
        names.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=365))
    )
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False
        )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def usage(*, encipher: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def other_ca(name: str = "Annan utfärdare") -> Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# ------------------------------------------------------------------------------------------ encryption


@dataclass(frozen=True)
class Opened:
    outer: bytes
    decrypted: bytes  # the multipart/signed entity
    verify: subprocess.CompletedProcess[bytes]
    content: bytes  # what the signature covers, as openssl hands it out


@pytest.fixture(scope="module")
def signer(dev_certs: Path) -> SmimeSigner:
    return SmimeSigner.from_files(dev_certs / "smime-sender.pem", dev_certs / "smime-sender.key")


@pytest.fixture(scope="module")
def opened(dev_certs: Path, signer: SmimeSigner, tmp_path_factory: pytest.TempPathFactory) -> Opened:
    work = tmp_path_factory.mktemp("smime")
    outer = build_encrypted_email(
        make_letter(), SENDER, PARTIES, (dev_certs / "smime-recipient.pem").read_text(), signer, now=NOW
    )
    (work / "msg.eml").write_bytes(outer)
    decrypt = openssl(
        "cms", "-decrypt", "-in", work / "msg.eml", "-recip", dev_certs / "smime-recipient.pem",
        "-inkey", dev_certs / "smime-recipient.key", "-out", work / "signed.eml",
    )  # fmt: skip
    assert decrypt.returncode == 0, decrypt.stderr
    verify = openssl(
        "cms",
        "-verify",
        "-in",
        work / "signed.eml",
        "-CAfile",
        dev_certs / "ca.pem",
        "-out",
        work / "content.eml",
    )
    return Opened(outer, (work / "signed.eml").read_bytes(), verify, (work / "content.eml").read_bytes())


def test_recipient_decrypts_and_the_signature_verifies(opened: Opened) -> None:
    assert opened.verify.returncode == 0, opened.verify.stderr
    assert b"Verification successful" in opened.verify.stderr
    assert parse(opened.decrypted).get_content_type() == "multipart/signed"


def test_verified_content_is_the_letter_byte_for_byte(opened: Opened) -> None:
    inner = parse(opened.content)

    assert inner["Subject"] == SUBJECT
    assert inner["From"].addresses[0].display_name == "Sandlådans kommun"
    assert [a.addr_spec for a in inner["To"].addresses] == [RECIPIENT]
    assert inner["Date"].datetime == NOW
    assert inner.get_param("protected-headers") == "v1"
    body = inner.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    text = body.get_content()
    assert isinstance(text, str)
    assert text.replace("\r\n", "\n").startswith(BODY + "\n\n--\nFrågor? Ring socialtjänsten.\n")
    found = [(part.get_filename(), part.get_content()) for part in inner.iter_attachments()]
    assert found == [(FILENAME_A, PDF_A), (FILENAME_B, PDF_B)]


def test_nothing_of_the_content_is_readable_outside(opened: Opened) -> None:
    outer = parse(opened.outer)

    assert outer["Subject"] == "Krypterat meddelande från Sandlådans kommun"
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert [a.addr_spec for a in outer["To"].addresses] == [RECIPIENT]
    assert outer["Message-ID"] == PARTIES.message_id
    assert outer["Auto-Submitted"] == "auto-generated"
    raw = opened.outer
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    for secret in (b"QZSUBJ7731", b"QZBODY4242", PDF_MARKER, b"QZFILE", b"SOC 2024/77", b"socialtj"):
        assert secret not in raw
        # Nor in any encoding a mail program might apply to the clear part.
        assert base64.b64encode(secret)[:12] not in raw


def test_content_is_encrypted_with_aes_256(opened: Opened, tmp_path: Path) -> None:
    (tmp_path / "msg.eml").write_bytes(opened.outer)
    printed = openssl("cms", "-cmsout", "-print", "-in", tmp_path / "msg.eml")

    assert printed.returncode == 0, printed.stderr
    assert b"aes-256-cbc" in printed.stdout
    assert b"rsaEncryption" in printed.stdout


def test_another_key_cannot_decrypt(opened: Opened, dev_certs: Path, tmp_path: Path) -> None:
    (tmp_path / "msg.eml").write_bytes(opened.outer)
    attempt = openssl(
        "cms", "-decrypt", "-in", tmp_path / "msg.eml", "-recip", dev_certs / "smime-sender.pem",
        "-inkey", dev_certs / "smime-sender.key",
    )  # fmt: skip

    assert attempt.returncode != 0
    assert b"QZBODY4242" not in attempt.stdout


def test_tampered_signed_content_fails_verification(opened: Opened, dev_certs: Path, tmp_path: Path) -> None:
    assert b"Content-Transfer-Encoding: quoted-printable" in opened.decrypted
    # One letter of the (quoted-printable) body changed, as an attacker inside the envelope would.
    tampered = opened.decrypted.replace(b"QZBODY4242", b"QZBODY4243", 1)
    assert tampered != opened.decrypted
    (tmp_path / "signed.eml").write_bytes(tampered)
    verify = openssl("cms", "-verify", "-in", tmp_path / "signed.eml", "-CAfile", dev_certs / "ca.pem")

    assert verify.returncode != 0
    assert b"Verification successful" not in verify.stderr


def test_tampered_ciphertext_never_yields_verified_content(
    opened: Opened, dev_certs: Path, tmp_path: Path
) -> None:
    head, _, b64 = opened.outer.partition(b"\r\n\r\n")
    der = bytearray(base64.b64decode(b64))
    der[len(der) // 2] ^= 0x01  # inside the encrypted content, far from the recipient info
    (tmp_path / "msg.eml").write_bytes(
        head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    )
    decrypt = openssl(
        "cms", "-decrypt", "-in", tmp_path / "msg.eml", "-recip", dev_certs / "smime-recipient.pem",
        "-inkey", dev_certs / "smime-recipient.key", "-out", tmp_path / "signed.eml",
    )  # fmt: skip
    # CBC has no integrity of its own: a flipped bit mid-stream decrypts (to garbled blocks) ...
    assert decrypt.returncode == 0, decrypt.stderr
    assert (tmp_path / "signed.eml").read_bytes() != opened.decrypted
    # ... and only the signature inside catches it.
    verify = openssl("cms", "-verify", "-in", tmp_path / "signed.eml", "-CAfile", dev_certs / "ca.pem")
    assert verify.returncode != 0


def test_unsigned_message_decrypts_to_the_letter(dev_certs: Path, tmp_path: Path) -> None:
    letter = make_letter(attachments=())
    outer = build_encrypted_email(
        letter, SENDER, PARTIES, (dev_certs / "smime-recipient.pem").read_text(), None, now=NOW
    )
    (tmp_path / "msg.eml").write_bytes(outer)
    decrypt = openssl(
        "cms", "-decrypt", "-in", tmp_path / "msg.eml", "-recip", dev_certs / "smime-recipient.pem",
        "-inkey", dev_certs / "smime-recipient.key",
    )  # fmt: skip

    assert decrypt.returncode == 0, decrypt.stderr
    inner = parse(decrypt.stdout)
    assert inner["Subject"] == SUBJECT
    assert inner.get_content_type() == "text/plain"
    assert b"QZSUBJ7731" not in outer


@pytest.mark.parametrize("case", ["EC", "sign-only", "garbage", "two", "empty"])
def test_unusable_recipient_certificates_are_refused(
    case: str, dev_certs: Path, dev_ca: Authority, signer: SmimeSigner
) -> None:
    recipient = (dev_certs / "smime-recipient.pem").read_text()
    recipient_pem = ""
    if case == "EC":
        recipient_pem = pem(issue(dev_ca, ec.generate_private_key(ec.SECP256R1()).public_key()))
    elif case == "sign-only":
        recipient_pem = (dev_certs / "smime-signonly.pem").read_text()
    elif case == "garbage":
        recipient_pem = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    elif case == "two":
        recipient_pem = recipient + (dev_certs / "ca.pem").read_text()
    with pytest.raises(SmimeError):
        build_encrypted_email(make_letter(), SENDER, PARTIES, recipient_pem, signer, now=NOW)


def test_expired_signer_is_refused(dev_certs: Path, signer: SmimeSigner) -> None:
    later = signer.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(SmimeError, match="not valid now"):
        build_encrypted_email(
            make_letter(), SENDER, PARTIES, (dev_certs / "smime-recipient.pem").read_text(), signer, now=later
        )


def test_signer_from_files(dev_certs: Path, tmp_path: Path) -> None:
    signer = SmimeSigner.from_files(dev_certs / "smime-sender.pem", dev_certs / "smime-sender.key")
    assert signer.email_addresses == frozenset({"noreply@sandlada.example.se"})

    key = serialization.load_pem_private_key((dev_certs / "smime-sender.key").read_bytes(), None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hemligt"),
    )
    (tmp_path / "locked.key").write_bytes(locked)
    assert SmimeSigner.from_files(dev_certs / "smime-sender.pem", tmp_path / "locked.key", b"hemligt")
    with pytest.raises(SmimeError, match="wrong password"):
        SmimeSigner.from_files(dev_certs / "smime-sender.pem", tmp_path / "locked.key", b"fel")
    with pytest.raises(SmimeError):
        SmimeSigner.from_files(dev_certs / "smime-sender.pem", tmp_path / "locked.key")
    with pytest.raises(SmimeError, match="does not belong"):
        SmimeSigner.from_files(dev_certs / "smime-sender.pem", dev_certs / "smime-recipient.key")
    with pytest.raises(SmimeError, match="cannot read"):
        SmimeSigner.from_files(tmp_path / "missing.pem", dev_certs / "smime-sender.key")


def test_load_certificate(dev_certs: Path) -> None:
    cert = load_certificate((dev_certs / "smime-recipient.pem").read_text())
    assert (
        cert.serial_number
        == x509.load_pem_x509_certificate((dev_certs / "smime-recipient.pem").read_bytes()).serial_number
    )
    with pytest.raises(SmimeError, match="exactly one"):
        load_certificate((dev_certs / "smime-recipient.pem").read_text() * 2)


# ------------------------------------------------------------------------------------------ inspection


@pytest.fixture(scope="module")
def inspector(dev_certs: Path) -> SmimeCertificateInspector:
    return SmimeCertificateInspector.from_pem_files(dev_certs / "ca.pem")


def test_inspect_valid_recipient(inspector: SmimeCertificateInspector, dev_certs: Path) -> None:
    facts = inspector.inspect((dev_certs / "smime-recipient.pem").read_text())

    assert facts.problem is None
    assert facts.usable_for_encryption
    assert facts.trusted
    assert facts.email_addresses == frozenset({RECIPIENT})
    assert facts.not_before.tzinfo is not None
    assert facts.not_before <= NOW <= facts.not_after
    assert certificate_problems(facts, RECIPIENT, NOW) == []


def test_inspect_expired_and_sign_only(inspector: SmimeCertificateInspector, dev_certs: Path) -> None:
    expired = inspector.inspect((dev_certs / "smime-expired.pem").read_text())
    assert expired.not_after < NOW
    assert expired.usable_for_encryption  # expiry is the rule's business, at the time it decides
    assert certificate_problems(expired, RECIPIENT, NOW) == ["CERTIFICATE_EXPIRED"]

    sign_only = inspector.inspect((dev_certs / "smime-signonly.pem").read_text())
    assert not sign_only.usable_for_encryption
    assert certificate_problems(sign_only, RECIPIENT, NOW) == ["CERTIFICATE_NOT_FOR_ENCRYPTION"]


def test_usability_follows_key_type_size_and_usages(
    inspector: SmimeCertificateInspector, dev_ca: Authority, rsa_key: rsa.RSAPrivateKey
) -> None:
    public = rsa_key.public_key()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the point
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    any_eku = (ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,)
    server_eku = (ExtendedKeyUsageOID.SERVER_AUTH,)
    expected = {
        "no usage extensions": (issue(dev_ca, public, eku=None), True),
        "keyEncipherment + emailProtection": (issue(dev_ca, public, key_usage=usage(encipher=True)), True),
        "anyExtendedKeyUsage": (issue(dev_ca, public, eku=any_eku), True),
        "no keyEncipherment": (issue(dev_ca, public, key_usage=usage(encipher=False)), False),
        "serverAuth only": (issue(dev_ca, public, eku=server_eku), False),
        "RSA 1024": (issue(dev_ca, small), False),
        "EC": (issue(dev_ca, ec_key), False),
    }
    for name, (cert, usable) in expected.items():
        facts = inspector.inspect(pem(cert))
        assert facts.problem is None, name
        assert facts.usable_for_encryption is usable, name
        assert facts.trusted, name


def test_trust_needs_the_anchor_s_signature(
    inspector: SmimeCertificateInspector, dev_ca: Authority, rsa_key: rsa.RSAPrivateKey
) -> None:
    stranger = other_ca()
    # Same issuer name as the dev CA, but signed with another key: the name alone must not be trusted.
    impostor = other_ca(name="x")
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Förfalskad")]))
        .issuer_name(dev_ca.cert.subject)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(RECIPIENT)]), critical=False)
        .sign(impostor.key, hashes.SHA256())
    )

    untrusted = inspector.inspect(pem(issue(stranger, rsa_key.public_key())))
    assert not untrusted.trusted
    assert certificate_problems(untrusted, RECIPIENT, NOW) == ["CERTIFICATE_UNTRUSTED"]
    assert not inspector.inspect(pem(forged)).trusted
    assert inspector.inspect(pem(issue(dev_ca, rsa_key.public_key()))).trusted
    # Without anchors the case system vouches for what it sends.
    assert SmimeCertificateInspector().inspect(pem(issue(stranger, rsa_key.public_key()))).trusted
    # An anchor may be given for the other CA too.
    assert (
        SmimeCertificateInspector([dev_ca.cert, stranger.cert])
        .inspect(pem(issue(stranger, rsa_key.public_key())))
        .trusted
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
        + "\n-----END CERTIFICATE-----",
        "åäö\x00",
    ],
)
def test_unreadable_pem_is_a_problem_not_an_exception(
    inspector: SmimeCertificateInspector, text: str
) -> None:
    facts = inspector.inspect(text)

    assert facts.problem
    assert not facts.usable_for_encryption
    assert not facts.trusted
    assert facts.email_addresses == frozenset()
    assert certificate_problems(facts, RECIPIENT, NOW) == ["CERTIFICATE_UNREADABLE"]


def test_several_certificates_or_a_key_are_a_problem(
    inspector: SmimeCertificateInspector, dev_certs: Path
) -> None:
    two = (dev_certs / "smime-recipient.pem").read_text() + (dev_certs / "smime-expired.pem").read_text()
    assert inspector.inspect(two).problem == "expected exactly one certificate, found 2"
    assert inspector.inspect((dev_certs / "smime-recipient.key").read_text()).problem


def test_addresses_from_san_and_subject_match_case_insensitively(
    inspector: SmimeCertificateInspector, dev_ca: Authority, rsa_key: rsa.RSAPrivateKey
) -> None:
    cert = issue(
        dev_ca, rsa_key.public_key(), emails=("Asa.Oberg@Example.SE",), subject_email="ASA@Kommun.Example.se"
    )
    facts = inspector.inspect(pem(cert))

    assert facts.email_addresses == frozenset({"asa.oberg@example.se", "asa@kommun.example.se"})
    assert certificate_problems(facts, "ASA.OBERG@example.se", NOW) == []
    assert certificate_problems(facts, "asa@kommun.example.se", NOW) == []
    assert certificate_problems(facts, "annan@example.se", NOW) == ["CERTIFICATE_EMAIL_MISMATCH"]
    no_email = inspector.inspect(pem(issue(dev_ca, rsa_key.public_key(), emails=())))
    assert no_email.email_addresses == frozenset()


def test_an_internationalised_domain_matches_its_xn_form_in_the_certificate(
    inspector: SmimeCertificateInspector, dev_ca: Authority, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """Certificates hold addresses in ASCII (IDNA); a case system may send the domain in Unicode."""
    cert = issue(dev_ca, rsa_key.public_key(), emails=("anna@xn--rksmrgs-5wao1o.se",))
    facts = inspector.inspect(pem(cert))

    assert certificate_problems(facts, "Anna@Räksmörgås.se", NOW) == []
    assert certificate_problems(facts, "anna@raksmorgas.se", NOW) == ["CERTIFICATE_EMAIL_MISMATCH"]
    (tmp_path / "anna.pem").write_text(pem(cert))
    found = CertificateDirectory(tmp_path).find("anna@RÄKSMÖRGÅS.se")
    assert found is not None
    assert load_certificate(found) == cert


# ------------------------------------------------------------------------------------------ directory


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_directory_finds_by_address_case_insensitively(dev_certs: Path, tmp_path: Path) -> None:
    (tmp_path / "mottagare.pem").write_bytes((dev_certs / "smime-recipient.pem").read_bytes())
    (tmp_path / "README.txt").write_text("inte ett certifikat")
    directory = CertificateDirectory(tmp_path)

    found = directory.find("MOTTAGARE@Example.se")
    assert found is not None
    assert load_certificate(found) == load_certificate((dev_certs / "smime-recipient.pem").read_text())
    assert directory.find("annan@example.se") is None


def test_directory_prefers_the_valid_usable_certificate_that_lasts_longest(
    dev_ca: Authority, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    public = rsa_key.public_key()
    certs = {
        "expired.pem": issue(
            dev_ca, public, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1)
        ),
        "short.pem": issue(dev_ca, public, not_after=NOW + timedelta(days=30)),
        "best.crt": issue(dev_ca, public, not_after=NOW + timedelta(days=700)),
        "future.pem": issue(
            dev_ca, public, not_before=NOW + timedelta(days=10), not_after=NOW + timedelta(days=900)
        ),
        "signonly.pem": issue(
            dev_ca, public, key_usage=usage(encipher=False), not_after=NOW + timedelta(days=1000)
        ),
    }
    for name, cert in certs.items():
        (tmp_path / name).write_text(pem(cert))
    # One stored as DER, as .crt files often are.
    (tmp_path / "best.crt").write_bytes(certs["best.crt"].public_bytes(serialization.Encoding.DER))
    clock = Clock(NOW)
    directory = CertificateDirectory(tmp_path, clock=clock)

    assert directory.find(RECIPIENT) == pem(certs["best.crt"])
    # Once "best" has expired and "future" has begun, "future" is the one.
    clock.now = NOW + timedelta(days=800)
    assert directory.find(RECIPIENT) == pem(certs["future.pem"])


def test_directory_prefers_trusted_when_it_has_anchors(
    dev_ca: Authority, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    stranger = issue(other_ca(), rsa_key.public_key(), not_after=NOW + timedelta(days=3000))
    trusted = issue(dev_ca, rsa_key.public_key(), not_after=NOW + timedelta(days=100))
    (tmp_path / "a.pem").write_text(pem(stranger))
    (tmp_path / "b.pem").write_text(pem(trusted))

    assert CertificateDirectory(tmp_path).find(RECIPIENT) == pem(stranger)
    anchored = CertificateDirectory(tmp_path, inspector=SmimeCertificateInspector([dev_ca.cert]))
    assert anchored.find(RECIPIENT) == pem(trusted)


def test_directory_picks_up_added_replaced_and_removed_files(
    dev_ca: Authority, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    directory = CertificateDirectory(tmp_path)
    assert directory.find("ny@example.se") is None

    first = issue(dev_ca, rsa_key.public_key(), emails=("ny@example.se",))
    (tmp_path / "ny.pem").write_text(pem(first))
    assert directory.find("ny@example.se") == pem(first)

    # Rewritten in place: the directory's own mtime may not change, the file's does.
    second = issue(dev_ca, rsa_key.public_key(), emails=("ny@example.se",), not_after=NOW + timedelta(days=9))
    (tmp_path / "ny.pem").write_text(pem(second))
    stat = (tmp_path / "ny.pem").stat()
    os.utime(tmp_path / "ny.pem", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert directory.find("ny@example.se") == pem(second)

    (tmp_path / "ny.pem").unlink()
    assert directory.find("ny@example.se") is None


def test_directory_skips_unreadable_files_with_a_warning_without_addresses(
    dev_certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "trasig.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "kalle.anka@example.se.crt").write_bytes(b"\x00\x01 not DER")
    (tmp_path / "nyckel.pem").write_bytes((dev_certs / "smime-recipient.key").read_bytes())
    (tmp_path / "ok.pem").write_bytes((dev_certs / "smime-recipient.pem").read_bytes())

    with caplog.at_level(logging.INFO, logger="kanalvaxel.adapters.smime"):
        assert directory_find(tmp_path, RECIPIENT) is not None

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any("trasig.pem" in w for w in warnings)
    assert any("nyckel.pem" in w for w in warnings)  # a private key has no business in there
    assert any(mask_email("kalle.anka@example.se") + ".crt" in w for w in warnings)
    for record in caplog.records:
        assert "kalle.anka@" not in record.getMessage()
        assert RECIPIENT not in record.getMessage()


def directory_find(path: Path, address: str) -> str | None:
    return CertificateDirectory(path).find(address)


def test_missing_directory_finds_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = CertificateDirectory(tmp_path / "saknas")
    with caplog.at_level(logging.WARNING):
        assert directory.find(RECIPIENT) is None
        assert directory.find(RECIPIENT) is None
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1
