"""Settings: embedded defaults for the sandbox, and what production refuses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kanalvaxel.config import load_settings
from kanalvaxel.domain.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in [k for k in os.environ if k.startswith("KANALVAXEL_") and k != "KANALVAXEL_TEST_POSTGRES_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_no_configuration_means_the_sandbox_on_embedded_defaults() -> None:
    s = load_settings()
    assert s.environment == "sandbox"
    assert s.embedded_defaults
    assert s.database.url.startswith("sqlite:///./var/")
    assert [x.key for x in s.senders] == ["sandbox"]


def test_the_test_database_variable_is_not_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANALVAXEL_TEST_POSTGRES_URL", "postgresql+psycopg://x@127.0.0.1/y")
    assert load_settings().embedded_defaults


def test_a_toml_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "kv.toml").write_text('log_level = "DEBUG"\n[print]\nbatch_max_letters = 7\n')
    monkeypatch.setenv("KANALVAXEL_CONFIG", str(tmp_path / "kv.toml"))
    s = load_settings()
    assert s.print.batch_max_letters == 7
    assert not s.embedded_defaults


def test_unknown_settings_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "kv.toml").write_text("batch_size = 3\n")
    monkeypatch.setenv("KANALVAXEL_CONFIG", str(tmp_path / "kv.toml"))
    with pytest.raises(ConfigurationError, match="batch_size"):
        load_settings()


def _production_sender(cert: Path, key: Path) -> dict[str, object]:
    return {
        "key": "kommunen",
        "organisation_number": "212000-0001",
        "name": "Kommunen",
        "signing_certificate": str(cert),
        "signing_key": str(key),
    }


def test_production_refuses_certificates_from_certs_dev(dev_certs: Path) -> None:
    with pytest.raises(ConfigurationError, match="development certificate"):
        load_settings(
            environment="production",
            dev_certs_dir=str(dev_certs),
            senders=[_production_sender(dev_certs / "sender.pem", dev_certs / "sender.key")],
            mina_meddelanden={"enabled": False},
            email={"enabled": False},
            sms={"enabled": False},
        )


def test_production_refuses_a_development_certificate_copied_elsewhere(
    dev_certs: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "prod"
    elsewhere.mkdir()
    shutil.copy(dev_certs / "sender.pem", elsewhere / "signing.pem")
    shutil.copy(dev_certs / "sender.key", elsewhere / "signing.key")
    with pytest.raises(ConfigurationError, match="development certificate"):
        load_settings(
            environment="production",
            dev_certs_dir=str(dev_certs),
            senders=[_production_sender(elsewhere / "signing.pem", elsewhere / "signing.key")],
            mina_meddelanden={"enabled": False},
            email={"enabled": False},
            sms={"enabled": False},
        )


def test_production_needs_a_sender_and_refuses_failpoints() -> None:
    with pytest.raises(ConfigurationError, match="sender"):
        load_settings(environment="production")
    assert load_settings(worker={"failpoints": {"after_send": 1}}).worker.failpoints == {"after_send": 1}
    with pytest.raises(ConfigurationError, match="failpoints"):
        load_settings(environment="production", worker={"failpoints": {"after_send": 1}})


def _production_mm(certs: Path, prod: Path) -> dict[str, object]:
    return {
        "far_url": "https://far.example.se/Recipient/v3",
        "client_certificate": str(prod / "client.pem"),
        "client_key": str(prod / "client.key"),
        "ca_bundle": str(prod / "ca.pem"),
        "seal_certificate": str(prod / "seal.pem"),
        "seal_key": str(prod / "seal.key"),
        "relay_client_certificate": str(prod / "client.pem"),
        "relay_client_key": str(prod / "client.key"),
        "operator_ca_bundle": str(prod / "ca.pem"),
        "trust_anchors": [str(certs / "ca.pem")],
    }


def test_production_digital_mail_names_every_missing_setting(tmp_path: Path) -> None:
    sender = _production_sender(tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(ConfigurationError) as err:
        load_settings(environment="production", senders=[sender], mina_meddelanden={"far_url": "https://x"})
    message = str(err.value)
    for name in ("client_certificate", "ca_bundle", "seal_key", "operator_ca_bundle", "trust_anchors"):
        assert f"mina_meddelanden.{name}" in message
    assert "far_url" not in message


def test_production_refuses_the_development_ca_as_a_trust_anchor(dev_certs: Path, tmp_path: Path) -> None:
    sender = _production_sender(tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(ConfigurationError, match=r"trust_anchors\[0\].*development certificate"):
        load_settings(
            environment="production",
            dev_certs_dir=str(dev_certs),
            senders=[sender],
            mina_meddelanden=_production_mm(dev_certs, tmp_path),
            email={"enabled": False},
            sms={"enabled": False},
        )


def test_remote_relay_needs_its_url() -> None:
    with pytest.raises(ConfigurationError, match="relay_url"):
        load_settings(mina_meddelanden={"relay": "remote"})


def test_sandbox_fills_digital_mail_with_development_certificates(dev_certs: Path) -> None:
    mm = load_settings(dev_certs_dir=str(dev_certs)).mina_meddelanden
    assert mm.enabled
    assert mm.relay == "embedded"
    assert mm.far_url is None
    assert mm.seal_certificate == dev_certs / "relay.pem"
    assert mm.client_certificate == dev_certs / "client.pem"
    assert mm.trust_anchors == (dev_certs / "ca.pem",)


# ------------------------------------------------------------------------------------- e-mail and SMS


def test_production_email_and_sms_name_every_missing_setting(tmp_path: Path) -> None:
    sender = _production_sender(tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(ConfigurationError) as err:
        load_settings(environment="production", senders=[sender], mina_meddelanden={"enabled": False})
    assert "email.smtp_host" in str(err.value)
    assert "email.from_address" in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        load_settings(
            environment="production",
            senders=[sender],
            mina_meddelanden={"enabled": False},
            email={"enabled": False},
        )
    for name in ("sms.gateway_url", "sms.token", "sms.sender_id"):
        assert name in str(err.value)


def test_production_refuses_email_in_clear_and_a_password_without_tls(tmp_path: Path) -> None:
    sender = {**_production_sender(tmp_path / "s.pem", tmp_path / "s.key"), "email_address": "a@kommun.se"}
    with pytest.raises(ConfigurationError, match="security = none"):
        load_settings(
            environment="production",
            senders=[sender],
            mina_meddelanden={"enabled": False},
            sms={"enabled": False},
            email={"smtp_host": "smtp.kommun.se", "security": "none"},
        )
    with pytest.raises(ConfigurationError, match="password in clear"):
        load_settings(email={"security": "none", "username": "kv"})
    with pytest.raises(ConfigurationError, match="recipient_trust_anchors"):
        load_settings(
            environment="production",
            senders=[sender],
            mina_meddelanden={"enabled": False},
            sms={"enabled": False},
            email={"smtp_host": "smtp.kommun.se"},
        )
    ok = load_settings(
        environment="production",
        senders=[sender],
        mina_meddelanden={"enabled": False},
        sms={"enabled": False},
        email={"smtp_host": "smtp.kommun.se", "recipient_trust_anchors": [str(tmp_path / "smime-ca.pem")]},
    )
    assert ok.email.security == "starttls"
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        load_settings(email={"data_timeout_seconds": 400})
    # A send is bounded to 80 % of the lease; the final reply may take at most half of the lease.
    with pytest.raises(ConfigurationError, match=r"half of worker\.lease_seconds"):
        load_settings(email={"data_timeout_seconds": 151}, worker={"lease_seconds": 300})
    assert load_settings(email={"data_timeout_seconds": 150}).email.data_timeout_seconds == 150


def test_production_refuses_an_sms_gateway_without_tls(tmp_path: Path) -> None:
    sender = {**_production_sender(tmp_path / "s.pem", tmp_path / "s.key"), "sms_sender_id": "Kommunen"}
    common: dict[str, object] = {
        "environment": "production",
        "senders": [sender],
        "mina_meddelanden": {"enabled": False},
        "email": {"enabled": False},
    }
    with pytest.raises(ConfigurationError, match="https"):
        load_settings(**common, sms={"gateway_url": "http://sms.example.se/api", "token": "t"})
    assert load_settings(
        **common, sms={"gateway_url": "https://sms.example.se/api", "token": "t"}
    ).sms.enabled


def test_production_refuses_development_smime_certificates(dev_certs: Path, tmp_path: Path) -> None:
    sender = {
        **_production_sender(tmp_path / "s.pem", tmp_path / "s.key"),
        "smime_certificate": str(dev_certs / "smime-sender.pem"),
        "smime_key": str(dev_certs / "smime-sender.key"),
    }
    with pytest.raises(ConfigurationError, match=r"smime_certificate.*development certificate"):
        load_settings(
            environment="production",
            dev_certs_dir=str(dev_certs),
            senders=[sender],
            mina_meddelanden={"enabled": False},
            email={"enabled": False},
            sms={"enabled": False},
        )


def test_sandbox_fills_email_and_sms_with_the_simulators_and_development_certificates(
    dev_certs: Path,
) -> None:
    s = load_settings(dev_certs_dir=str(dev_certs))
    assert s.email.enabled
    assert s.email.smtp_host is None  # = the SMTP sink the sandbox starts
    assert s.email.ca_bundle == dev_certs / "ca.pem"
    assert s.email.recipient_trust_anchors == (dev_certs / "ca.pem",)
    assert s.sms.gateway_url is None
    assert s.sms.token is not None
    (sender,) = s.senders
    assert sender.smime_certificate == dev_certs / "smime-sender.pem"
    assert sender.email_address == "noreply@sandlada.example.se"
    # A real SMTP relay named in the sandbox keeps the system's trust store unless told otherwise.
    assert load_settings(email={"smtp_host": "smtp.example.se"}).email.ca_bundle is None


def test_sandbox_print_batches_close_within_seconds_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from kanalvaxel.config import SANDBOX_PRINT_BATCH_MAX_AGE_SECONDS, load_settings

    assert SANDBOX_PRINT_BATCH_MAX_AGE_SECONDS <= 10
    assert load_settings().print.batch_max_age_seconds == SANDBOX_PRINT_BATCH_MAX_AGE_SECONDS
    monkeypatch.setenv("KANALVAXEL_PRINT__BATCH_MAX_AGE_SECONDS", "600")
    assert load_settings().print.batch_max_age_seconds == 600
