"""The relay's settings: one typed object, read from ``FORMEDLARE_*`` environment variables (``__`` nests,
e.g. ``FORMEDLARE_FAR__URL``) or built in code (kanalväxel's embedded relay does that)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ORGNR = re.compile(r"(?:16)?(\d{10})")


class FarConnection(BaseModel):
    """How the relay reaches FaR (the Recipient v3 service) over mutual TLS."""

    url: str
    client_certificate: Path
    client_key: Path
    ca_bundle: Path
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    cache_ttl_seconds: float = Field(default=300.0, ge=0)


class RelaySettings(BaseSettings):
    """Everything a :class:`formedlare.relay.Relay` needs. Durations are seconds unless the name says hours.

    The seal identity is either ``seal_certificate`` + ``seal_key`` (PEM, optional ``seal_key_password``) or
    ``seal_pkcs12`` (+ password). ``trust_anchors`` are the CAs whose certificates may sign SENDERS'
    deliveries. ``relayed_senders`` lists the organisation numbers (10 digits; a ``16`` prefix is dropped)
    the relay delivers for: empty means it refuses every delivery.
    """

    model_config = SettingsConfigDict(env_prefix="FORMEDLARE_", env_nested_delimiter="__", extra="forbid")

    database_url: str = "sqlite:///var/formedlare.db"
    seal_certificate: Path | None = None
    seal_key: Path | None = None
    seal_key_password: SecretStr | None = None
    seal_pkcs12: Path | None = None
    trust_anchors: list[Path] = Field(default_factory=list)
    relayed_senders: list[str] = Field(default_factory=list)
    allow_sha1: bool = True
    far: FarConnection | None = None
    #: The relay's TLS client identity towards mailbox operators, and the CAs of the operators' servers.
    client_certificate: Path | None = None
    client_key: Path | None = None
    operator_ca_bundle: Path | None = None
    operator_concurrency: int = Field(default=4, ge=1, le=256)
    backoff_base_seconds: float = Field(default=5.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)
    max_age_hours: float = Field(default=72.0, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    #: Due letters one claim leases at once; a claim thread works through them before it claims again.
    claim_batch: int = Field(default=8, ge=1, le=1000)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=120.0, gt=0)

    @field_validator("relayed_senders")
    @classmethod
    def _organisation_numbers(cls, values: list[str]) -> list[str]:
        normalised = []
        for value in values:
            match = _ORGNR.fullmatch(value.strip().replace("-", ""))
            if match is None:
                raise ValueError(f"not an organisation number (10 digits, optionally 16-prefixed): {value!r}")
            normalised.append(match.group(1))
        return normalised

    @model_validator(mode="after")
    def _seal_identity(self) -> Self:
        pem = self.seal_certificate is not None or self.seal_key is not None
        if pem and self.seal_pkcs12 is not None:
            raise ValueError("give either seal_certificate + seal_key or seal_pkcs12, not both")
        if pem and (self.seal_certificate is None or self.seal_key is None):
            raise ValueError("seal_certificate and seal_key go together")
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_base_seconds")
        return self
