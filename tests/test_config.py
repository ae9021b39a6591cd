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
        )


def test_production_needs_a_sender_and_refuses_failpoints() -> None:
    with pytest.raises(ConfigurationError, match="sender"):
        load_settings(environment="production")
    assert load_settings(worker={"failpoints": {"after_send": 1}}).worker.failpoints == {"after_send": 1}
    with pytest.raises(ConfigurationError, match="failpoints"):
        load_settings(environment="production", worker={"failpoints": {"after_send": 1}})
