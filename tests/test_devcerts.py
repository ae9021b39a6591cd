"""Development certificates: what is issued, that it chains, and that regeneration is idempotent."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kanalvaxel import devcerts
from kanalvaxel.config import DEV_CERT_MARKER
from kanalvaxel.devcerts import ensure_dev_certs

LEAVES = [
    "sender",
    "relay",
    "server",
    "client",
    "relay-client",
    "operator-kivra",
    "operator-mmp",
    "smime-recipient",
    "smime-expired",
    "smime-signonly",
    "smime-sender",
]
ALL = ["ca", *LEAVES]
SERVER, CLIENT, EMAIL = (
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
)
SIGN, NONREP, ENCIPHER = "digital_signature", "content_commitment", "key_encipherment"
LOCALHOST = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]

# name: (key usages, extended key usages or None for no EKU extension, subject serialNumber or None)
EXPECTED: dict[str, tuple[set[str], list[x509.ObjectIdentifier] | None, str | None]] = {
    "sender": ({SIGN, NONREP}, None, "162120000001"),
    "relay": ({SIGN, NONREP}, None, "162120000019"),
    "server": ({SIGN, ENCIPHER}, [SERVER], None),
    "client": ({SIGN, ENCIPHER}, [CLIENT], "162120000001"),
    "relay-client": ({SIGN, ENCIPHER}, [CLIENT], "162120000019"),
    "operator-kivra": ({SIGN, ENCIPHER}, [SERVER], None),
    "operator-mmp": ({SIGN, ENCIPHER}, [SERVER], None),
    "smime-recipient": ({SIGN, ENCIPHER}, [EMAIL], None),
    "smime-expired": ({SIGN, ENCIPHER}, [EMAIL], None),
    "smime-signonly": ({SIGN}, [EMAIL], None),
    "smime-sender": ({SIGN, NONREP}, [EMAIL], "162120000001"),
}
USAGE_FLAGS = [
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("certs") / "certs-dev"  # not yet there: must be created
    return directory, ensure_dev_certs(directory)


@pytest.fixture
def certs(generated: tuple[Path, list[Path]]) -> Path:
    return generated[0]


@pytest.fixture
def copy(certs: Path, tmp_path: Path) -> Path:
    """A private copy of a complete set, for tests that change files."""
    return Path(shutil.copytree(certs, tmp_path / "certs", copy_function=shutil.copy2))


def cert(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    files = (p for p in directory.iterdir() if p.suffix in (".pem", ".key"))
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def openssl_verify(directory: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", *extra, "-CAfile", str(directory / "ca.pem"), str(directory / f"{name}.pem")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_first_run_writes_every_pair(generated: tuple[Path, list[Path]]) -> None:
    directory, written = generated
    expected = {directory / f"{n}{suffix}" for n in ALL for suffix in (".pem", ".key")}
    assert set(written) == expected
    assert len(written) == len(expected)


@pytest.mark.parametrize("name", [n for n in LEAVES if n != "smime-expired"])
def test_chain_verifies_with_openssl(certs: Path, name: str) -> None:
    result = openssl_verify(certs, name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_expired_certificate_is_expired_but_otherwise_sound(certs: Path) -> None:
    expired = cert(certs, "smime-expired")
    assert expired.not_valid_after_utc < dt.datetime.now(dt.UTC)
    refused = openssl_verify(certs, "smime-expired")
    assert refused.returncode != 0
    assert "expired" in refused.stdout + refused.stderr
    assert openssl_verify(certs, "smime-expired", "-no_check_time").returncode == 0


@pytest.mark.parametrize("name", ALL)
def test_marker_and_key_match(certs: Path, name: str) -> None:
    certificate = cert(certs, name)
    orgs = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == [DEV_CERT_MARKER]
    key = serialization.load_pem_private_key((certs / f"{name}.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key() == certificate.public_key()
    assert certificate.signature_hash_algorithm is not None
    assert certificate.signature_hash_algorithm.name == "sha256"
    assert stat.S_IMODE(os.stat(certs / f"{name}.key").st_mode) == 0o600


def test_ca(certs: Path) -> None:
    ca = cert(certs, "ca")
    assert ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime < dt.timedelta(days=3660)


@pytest.mark.parametrize("name", LEAVES)
def test_leaf_usages(certs: Path, name: str) -> None:
    usages, ekus, serial = EXPECTED[name]
    leaf = cert(certs, name)
    assert leaf.issuer == cert(certs, "ca").subject
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert {flag for flag in USAGE_FLAGS if getattr(key_usage.value, flag)} == usages
    if ekus is None:
        with pytest.raises(x509.ExtensionNotFound):
            leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    else:
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus
    serials = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    assert serials == ([serial] if serial else [])


def test_sender_follows_the_mm_subject_convention(certs: Path) -> None:
    subject = cert(certs, "sender").subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Sandlådans kommun (utveckling)"
    assert subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "162120000001"
    assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "SE"


@pytest.mark.parametrize(
    ("name", "san"),
    [
        ("server", LOCALHOST),
        ("operator-kivra", LOCALHOST),
        ("operator-mmp", LOCALHOST),
        ("smime-recipient", [x509.RFC822Name("mottagare@example.se")]),
        ("smime-expired", [x509.RFC822Name("mottagare@example.se")]),
        ("smime-signonly", [x509.RFC822Name("mottagare@example.se")]),
        ("smime-sender", [x509.RFC822Name("noreply@sandlada.example.se")]),
    ],
)
def test_subject_alternative_names(certs: Path, name: str, san: list[x509.GeneralName]) -> None:
    extension = cert(certs, name).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(extension.value) == san


def test_client_common_name(certs: Path) -> None:
    cn = cert(certs, "client").subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "kanalvaxel sandbox client"


def test_second_run_writes_nothing(copy: Path) -> None:
    before = snapshot(copy)
    assert ensure_dev_certs(copy) == []
    assert snapshot(copy) == before


def test_a_missing_leaf_is_reissued_alone(copy: Path) -> None:
    (copy / "server.key").unlink()
    before = snapshot(copy)
    assert sorted(p.name for p in ensure_dev_certs(copy)) == ["server.key", "server.pem"]
    after = snapshot(copy)
    assert {n for n in after if after[n] != before.get(n)} == {"server.key", "server.pem"}
    assert openssl_verify(copy, "server").returncode == 0


def test_a_key_that_does_not_match_is_replaced(copy: Path) -> None:
    shutil.copy(copy / "client.key", copy / "sender.key")
    assert sorted(p.name for p in ensure_dev_certs(copy)) == ["sender.key", "sender.pem"]


def test_a_new_ca_reissues_every_leaf(copy: Path) -> None:
    (copy / "ca.pem").unlink()
    written = ensure_dev_certs(copy)
    assert len(written) == 2 * len(ALL)
    for name in LEAVES:
        assert cert(copy, name).issuer == cert(copy, "ca").subject
        if name != "smime-expired":
            assert openssl_verify(copy, name).returncode == 0


def test_a_leaf_from_another_ca_is_reissued(copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_dev_certs(other)
    for suffix in (".pem", ".key"):
        shutil.copy(other / f"relay{suffix}", copy / f"relay{suffix}")
    assert sorted(p.name for p in ensure_dev_certs(copy)) == ["relay.key", "relay.pem"]
    assert openssl_verify(copy, "relay").returncode == 0


def test_certificates_near_expiry_are_renewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devcerts, "LEAF_VALIDITY", dt.timedelta(days=10))
    ensure_dev_certs(tmp_path)
    monkeypatch.undo()
    renewed = {p.name for p in ensure_dev_certs(tmp_path)}
    # Every leaf except the deliberately expired one; the CA is still good.
    assert renewed == {f"{n}{s}" for n in LEAVES if n != "smime-expired" for s in (".pem", ".key")}


def test_force_reissues_everything(copy: Path) -> None:
    old_ca = cert(copy, "ca")
    assert len(ensure_dev_certs(copy, force=True)) == 2 * len(ALL)
    assert cert(copy, "ca").serial_number != old_ca.serial_number


def test_command_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert devcerts.main(["--dir", str(copy)]) == 0
    assert "up to date" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "kanalvaxel.devcerts", "--dir", str(copy / "fresh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 24 files" in result.stdout
    assert (copy / "fresh" / "sender.pem").is_file()
