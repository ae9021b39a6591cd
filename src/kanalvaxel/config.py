"""One typed Settings object: environment variables `KANALVAXEL_*` plus an optional TOML file.

With no configuration at all, kanalväxel runs the sandbox: a SQLite file under ./var/, the development
certificates in certs-dev/ and the local simulators. `environment = "production"` refuses all of those.
Nested settings use `__` in environment variables: `KANALVAXEL_DATABASE__URL=postgresql+psycopg://…`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kanalvaxel.domain.errors import ConfigurationError, ValidationError
from kanalvaxel.domain.identity import organisation_number

#: Every development certificate carries this organisation name; production refuses it.
DEV_CERT_MARKER = "kanalvaxel DEVELOPMENT ONLY"
DEFAULT_CONFIG_FILE = Path("kanalvaxel.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SenderIdentity(_Strict):
    """An authority the service may send as. Clients are bound to the keys they may use."""

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    organisation_number: str
    name: str = Field(min_length=2, max_length=256)
    return_address: tuple[str, ...] = ()
    signing_certificate: Path | None = None
    signing_key: Path | None = None
    signing_key_password: SecretStr | None = None
    pkcs12: Path | None = None
    #: E-mail: the address letters are sent from (default: email.from_address) and the S/MIME identity that
    #: signs encrypted e-mail (its certificate should name that address).
    email_address: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    smime_certificate: Path | None = None
    smime_key: Path | None = None
    smime_key_password: SecretStr | None = None
    #: SMS originator shown to the recipient (1–11 letters, digits, spaces); default: sms.sender_id.
    sms_sender_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9 ]{1,11}$")

    @field_validator("organisation_number")
    @classmethod
    def _orgnr(cls, v: str) -> str:
        try:
            return organisation_number(v)
        except ValidationError as exc:
            raise ValueError(exc.message) from None


class DatabaseSettings(_Strict):
    url: str = "sqlite:///./var/kanalvaxel.db"
    echo: bool = False
    #: Apply migrations on start-up (the sandbox does; production runs `kanalvaxel migrate`).
    migrate_on_start: bool | None = None


class WorkerSettings(_Strict):
    threads: int = Field(default=4, ge=1, le=64)
    #: Worker processes (`kanalvaxel worker` and `serve`): more than one runs that many child processes, each
    #: with `threads` threads, so dispatching uses more than one core.
    processes: int = Field(default=1, ge=1, le=64)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: int = Field(default=300, ge=5)
    #: Work items a worker thread claims at once (one statement) and records together (one transaction for
    #: the decisions and attempts, one for the outcomes; each letter in a savepoint of its own).
    batch_size: int = Field(default=8, ge=1, le=200)
    claim_batch: int = Field(default=8, ge=1, le=1000)
    max_attempts_per_channel: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=30.0, ge=0)
    backoff_max_seconds: float = Field(default=3600.0, ge=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    #: Test-only failure points (e.g. {"after_send": 5.0}: pause there). Refused in production.
    failpoints: dict[str, float] = Field(default_factory=dict)


class PrintSettings(_Strict):
    enabled: bool = True
    spool_dir: Path = Path("var/print-spool")
    batch_max_letters: int = Field(default=500, ge=1)
    batch_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    #: How long a batch collects letters before it goes to the vendor (the sandbox: 5 s unless set).
    batch_max_age_seconds: int = Field(default=3600, ge=0)
    #: Pages one printed letter may have, the address page included: a letter with more is not sent on
    #: paper (reason TOO_MANY_PAGES). Empty: the vendor takes any. PostNord's eBREV takes at most 6 sheets
    #: in a C5 envelope (one-sided): set 6 for it.
    max_pages_per_letter: int | None = Field(default=None, ge=1, le=1000)


class LimitSettings(_Strict):
    max_attachments: int = Field(default=20, ge=0)
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_total_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_body_chars: int = Field(default=200_000, ge=1)
    #: What the PDF streams of one letter may expand to, all attachments together (a small file can inflate
    #: 1000-fold).
    max_decompressed_bytes: int = Field(default=100 * 1024 * 1024, ge=1)


class MinaMeddelandenSettings(_Strict):
    """Digital mail: FaR lookups by kanalväxel itself, and the relay (förmedlare) it hands deliveries to.

    In the sandbox every path and URL left empty is filled in: the FaR and mailbox-operator simulators are
    started in this process, the relay runs embedded, and the development certificates are used.
    """

    enabled: bool = True
    #: DIGG's rules for senders: a message may be at most 2 MB, attachments included. A larger letter is not
    #: eligible for digital mail (reason MESSAGE_TOO_LARGE) rather than failing at the operator.
    max_message_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    #: FaR Recipient v3 endpoint. Empty in the sandbox = the FaR simulator this process starts.
    far_url: str | None = None
    #: Mutual TLS towards FaR (and a remote relay): our client certificate and the CAs we trust.
    client_certificate: Path | None = None
    client_key: Path | None = None
    ca_bundle: Path | None = None
    far_cache_ttl_seconds: int = Field(default=300, ge=0)
    far_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    far_read_timeout_seconds: float = Field(default=30.0, gt=0)
    #: "embedded": our formedlare runs inside this process; "remote": distributeSecure to `relay_url`.
    relay: Literal["embedded", "remote"] = "embedded"
    relay_url: str | None = None
    #: Embedded relay only: its buffer database, seal identity, whom it trusts, how it reaches operators.
    #: Empty = a SQLite file formedlare.db in var_dir.
    relay_database_url: str | None = None
    seal_certificate: Path | None = None
    seal_key: Path | None = None
    seal_key_password: SecretStr | None = None
    trust_anchors: tuple[Path, ...] = ()
    relay_client_certificate: Path | None = None
    relay_client_key: Path | None = None
    operator_ca_bundle: Path | None = None
    #: Embedded relay: threads that claim letters, and calls in flight per mailbox operator (each operator's
    #: calls run in threads of their own, so a slow operator never holds the claim threads).
    relay_threads: int = Field(default=2, ge=1, le=64)
    operator_concurrency: int = Field(default=4, ge=1, le=256)
    #: Embedded relay: backoff towards a mailbox operator that fails for now (per operator).
    relay_backoff_base_seconds: float = Field(default=5.0, ge=0)
    relay_backoff_max_seconds: float = Field(default=600.0, ge=0)
    #: Accept RSA-SHA1 signatures when verifying (real senders and operators still produce them).
    allow_sha1: bool = True
    #: How often to ask the relay about a handed-over letter (grows with its age, up to the maximum).
    status_poll_seconds: float = Field(default=5.0, gt=0)
    status_poll_max_seconds: float = Field(default=600.0, gt=0)


class EmailSettings(_Strict):
    """E-mail through the agency's SMTP relay: plain for letters that are not confidential, S/MIME-encrypted
    for those that are. In the sandbox an empty `smtp_host` means the SMTP sink this process starts."""

    enabled: bool = True
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=0, le=65535)
    #: "starttls" (port 587), "tls" (implicit TLS, port 465) or "none" (refused in production).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    #: CAs that sign the SMTP server's certificate; empty = the system's trust store.
    ca_bundle: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    #: How long to wait for the relay's answer after the whole message was sent. No answer in that time
    #: leaves the letter "in doubt": handed over, never resent automatically (it may have been queued).
    #: At most half of worker.lease_seconds: a whole send must end within 80 % of the lease.
    data_timeout_seconds: float = Field(default=120.0, gt=0)
    ehlo_name: str | None = None
    #: The From address when the sender identity names none.
    from_address: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    #: Reply-To when the letter's support info gives no e-mail address.
    reply_to: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    #: Right-hand side of Message-IDs; empty = the domain of the From address.
    message_id_domain: str | None = None
    #: S/MIME-encrypted e-mail (confidential letters may use only this one).
    encrypted: bool = True
    #: Recipients' certificates by e-mail address (*.pem / *.crt), used when the case system sends none.
    certificate_directory: Path | None = None
    #: CAs a recipient's certificate must be issued by; empty = not checked (validity, usage and address are).
    recipient_trust_anchors: tuple[Path, ...] = ()


class SmsSettings(_Strict):
    """SMS notices through an HTTP gateway. In the sandbox an empty `gateway_url` means the simulator."""

    enabled: bool = True
    gateway_url: str | None = None
    token: SecretStr | None = None
    sender_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9 ]{1,11}$")
    ca_bundle: Path | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=15.0, gt=0)
    #: Quick retries inside one call (5xx, 429, network); the notice itself is retried later as well.
    retries: int = Field(default=2, ge=0, le=10)
    max_parts: int = Field(default=2, ge=1, le=10)
    #: How many times a notice is tried (minutes apart) before it is recorded as failed.
    max_attempts: int = Field(default=5, ge=1, le=100)


class SandboxSettings(_Strict):
    """Simulators of the outside world, started in this process (sandbox environment only)."""

    simulators: bool = True
    #: FaR simulator registry (TOML); empty = the built-in sandbox registry (see the README).
    far_registry: Path | None = None
    far_port: int = Field(default=0, ge=0, le=65535)
    kivra_port: int = Field(default=0, ge=0, le=65535)
    mmp_port: int = Field(default=0, ge=0, le=65535)
    smtp_port: int = Field(default=0, ge=0, le=65535)
    sms_port: int = Field(default=0, ge=0, le=65535)


class ApiSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    #: How long a verified API key is accepted without asking the database again. A key revoked with
    #: `kanalvaxel clients revoke` is refused by a running `serve` within this time; 0 asks every time.
    key_cache_seconds: float = Field(default=5.0, ge=0, le=60)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KANALVAXEL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    environment: Literal["sandbox", "production"] = "sandbox"
    senders: tuple[SenderIdentity, ...] = ()
    policy_file: Path | None = None
    dev_certs_dir: Path = Path("certs-dev")
    var_dir: Path = Path("var")
    log_level: str = "INFO"
    database: DatabaseSettings = DatabaseSettings()
    worker: WorkerSettings = WorkerSettings()
    print: PrintSettings = PrintSettings()
    limits: LimitSettings = LimitSettings()
    api: ApiSettings = ApiSettings()
    mina_meddelanden: MinaMeddelandenSettings = MinaMeddelandenSettings()
    email: EmailSettings = EmailSettings()
    sms: SmsSettings = SmsSettings()
    sandbox: SandboxSettings = SandboxSettings()
    #: True when nothing was configured: the loud warning at start-up says so.
    embedded_defaults: bool = False

    @property
    def is_sandbox(self) -> bool:
        return self.environment == "sandbox"

    @property
    def is_sqlite(self) -> bool:
        return self.database.url.startswith("sqlite")

    @property
    def database_kind(self) -> str:
        """The database's name for people: "SQLite", "PostgreSQL", or the URL's scheme."""
        scheme = self.database.url.split(":", 1)[0].split("+", 1)[0].lower()
        return {"sqlite": "SQLite", "postgresql": "PostgreSQL", "postgres": "PostgreSQL"}.get(scheme, scheme)

    def sender(self, key: str) -> SenderIdentity | None:
        return next((s for s in self.senders if s.key == key), None)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        keys = [s.key for s in self.senders]
        if len(keys) != len(set(keys)):
            raise ValueError("senders: each sender identity needs its own key")
        mm = self.mina_meddelanden
        if mm.enabled and mm.relay == "remote" and not mm.relay_url:
            raise ValueError("mina_meddelanden.relay = remote needs mina_meddelanden.relay_url")
        if self.environment == "production":
            if self.worker.failpoints:
                raise ValueError("worker.failpoints are for tests and are refused in production")
            if not self.senders:
                raise ValueError("production needs at least one configured sender identity")
            if mm.enabled:
                missing = [
                    name
                    for name in ("far_url", "client_certificate", "client_key", "ca_bundle")
                    if getattr(mm, name) is None
                ]
                if mm.relay == "embedded":
                    missing += [
                        name
                        for name in (
                            "seal_certificate",
                            "seal_key",
                            "relay_client_certificate",
                            "relay_client_key",
                            "operator_ca_bundle",
                        )
                        if getattr(mm, name) is None
                    ]
                    if not mm.trust_anchors:
                        missing.append("trust_anchors")
                if missing:
                    raise ValueError(
                        "production with mina_meddelanden enabled needs mina_meddelanden."
                        + ", mina_meddelanden.".join(missing)
                    )
            em = self.email
            if em.enabled:
                missing = ["smtp_host"] if em.smtp_host is None else []
                if em.from_address is None and any(s.email_address is None for s in self.senders):
                    missing.append("from_address (or every sender's email_address)")
                if missing:
                    raise ValueError("production with email enabled needs email." + ", email.".join(missing))
                if em.security == "none":
                    raise ValueError("email.security = none sends letters in clear: production refuses it")
                if em.encrypted and not em.recipient_trust_anchors:
                    raise ValueError(
                        "production with encrypted e-mail needs email.recipient_trust_anchors (the CAs whose "
                        "S/MIME certificates may receive confidential letters)"
                    )
            sms = self.sms
            if sms.enabled:
                missing = [name for name in ("gateway_url", "token") if getattr(sms, name) is None]
                if sms.sender_id is None and any(s.sms_sender_id is None for s in self.senders):
                    missing.append("sender_id (or every sender's sms_sender_id)")
                if missing:
                    raise ValueError("production with sms enabled needs sms." + ", sms.".join(missing))
                if sms.gateway_url is not None and not sms.gateway_url.lower().startswith("https://"):
                    raise ValueError("sms.gateway_url must be https:// in production (token and numbers)")
        if self.email.enabled and self.email.data_timeout_seconds > self.worker.lease_seconds / 2:
            # A send is bounded to 80 % of the lease (adapters/messaging.py) and keeps data_timeout of that
            # for the final reply; a worker still sending when its lease ran out would let another send again.
            raise ValueError("email.data_timeout_seconds must be at most half of worker.lease_seconds")
        if self.email.username is not None and self.email.security == "none":
            raise ValueError("email.username with security = none would send the password in clear")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _config_file() -> Path | None:
    named = os.environ.get("KANALVAXEL_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigurationError(f"KANALVAXEL_CONFIG names {path}, which is not a file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


SANDBOX_SENDER_KEY = "sandbox"


def _is_dev_certificate(path: Path, dev_dir: Path) -> bool:
    """A certificate from certs-dev/, or any certificate carrying the development marker."""
    try:
        if path.resolve().is_relative_to(dev_dir.resolve()):
            return True
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return any(DEV_CERT_MARKER in str(o.value) for o in orgs)


def check_production(settings: Settings) -> None:
    """Refuse what must never run in production: development certificates and the sandbox."""
    if settings.environment != "production":
        return
    named: list[tuple[str, Path | None]] = []
    for sender in settings.senders:
        for attr in ("signing_certificate", "signing_key", "pkcs12", "smime_certificate", "smime_key"):
            named.append((f"senders[{sender.key}].{attr}", getattr(sender, attr)))
    mm = settings.mina_meddelanden
    for attr in (
        "client_certificate",
        "client_key",
        "ca_bundle",
        "seal_certificate",
        "seal_key",
        "relay_client_certificate",
        "relay_client_key",
        "operator_ca_bundle",
    ):
        named.append((f"mina_meddelanden.{attr}", getattr(mm, attr)))
    named += [(f"mina_meddelanden.trust_anchors[{i}]", p) for i, p in enumerate(mm.trust_anchors)]
    em = settings.email
    named += [("email.ca_bundle", em.ca_bundle), ("sms.ca_bundle", settings.sms.ca_bundle)]
    named += [(f"email.recipient_trust_anchors[{i}]", p) for i, p in enumerate(em.recipient_trust_anchors)]
    for where, path in named:
        if path is not None and (
            path.resolve().is_relative_to(settings.dev_certs_dir.resolve())
            or (path.suffix in (".pem", ".crt") and _is_dev_certificate(path, settings.dev_certs_dir))
        ):
            raise ConfigurationError(f"{where}: {path} is a development certificate; production refuses it")
    if settings.is_sqlite:
        logging.getLogger(__name__).warning(
            "production on SQLite: fine for one small installation, but PostgreSQL is what we test for scale"
        )


def _configured_by_environment() -> bool:
    return (
        any(
            k.startswith("KANALVAXEL_") and k[11:].lower().split("__")[0] in Settings.model_fields
            for k in os.environ
        )
        or "KANALVAXEL_CONFIG" in os.environ
    )


def load_settings(**overrides: object) -> Settings:
    """Read settings; fill in the sandbox sender when the sandbox has none. Raises ConfigurationError."""
    from pydantic import ValidationError as PydanticValidationError

    configured = _config_file() is not None or _configured_by_environment()
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(f"invalid setting {where}: {first['msg']}") from None
    if settings.is_sandbox and not settings.senders:
        certs = settings.dev_certs_dir
        settings = settings.model_copy(
            update={
                "senders": (
                    SenderIdentity(
                        key=SANDBOX_SENDER_KEY,
                        organisation_number="2120000001",
                        name="Sandlådans kommun (utveckling)",
                        return_address=("Sandlådans kommun", "Box 1", "111 11 Sandby"),
                        signing_certificate=certs / "sender.pem",
                        signing_key=certs / "sender.key",
                        email_address="noreply@sandlada.example.se",
                        smime_certificate=certs / "smime-sender.pem",
                        smime_key=certs / "smime-sender.key",
                        sms_sender_id="Sandlada",
                    ),
                )
            }
        )
    if settings.is_sandbox:
        settings = settings.model_copy(
            update={
                "print": _sandbox_print(settings),
                "mina_meddelanden": _sandbox_mm(settings),
                "email": _sandbox_email(settings),
                "sms": _sandbox_sms(settings),
            }
        )
    if not configured and not overrides:
        settings = settings.model_copy(update={"embedded_defaults": True})
    check_production(settings)
    return settings


#: How long a sandbox print batch collects letters: someone trying the sandbox sees the print file at once.
SANDBOX_PRINT_BATCH_MAX_AGE_SECONDS = 5


def _sandbox_print(settings: Settings) -> PrintSettings:
    pr = settings.print
    if "batch_max_age_seconds" in pr.model_fields_set:
        return pr
    return pr.model_copy(update={"batch_max_age_seconds": SANDBOX_PRINT_BATCH_MAX_AGE_SECONDS})


def _sandbox_mm(settings: Settings) -> MinaMeddelandenSettings:
    """Fill what the sandbox leaves empty with the development certificates."""
    mm = settings.mina_meddelanden
    certs = settings.dev_certs_dir
    defaults: dict[str, object] = {
        "client_certificate": certs / "client.pem",
        "client_key": certs / "client.key",
        "ca_bundle": certs / "ca.pem",
        "seal_certificate": certs / "relay.pem",
        "seal_key": certs / "relay.key",
        "relay_client_certificate": certs / "relay-client.pem",
        "relay_client_key": certs / "relay-client.key",
        "operator_ca_bundle": certs / "ca.pem",
    }
    update = {k: v for k, v in defaults.items() if getattr(mm, k) is None}
    if not mm.trust_anchors:
        update["trust_anchors"] = (certs / "ca.pem",)
    return mm.model_copy(update=update)


#: The SMS simulator's bearer token (the sandbox only; a real gateway's token comes from settings).
SANDBOX_SMS_TOKEN = "sandbox-sms-token"  # noqa: S105 (a simulator on loopback, not a secret)


def _sandbox_email(settings: Settings) -> EmailSettings:
    """The sandbox's SMTP sink speaks STARTTLS with the development server certificate."""
    em = settings.email
    update: dict[str, object] = {}
    if em.smtp_host is None and em.ca_bundle is None:
        update["ca_bundle"] = settings.dev_certs_dir / "ca.pem"
    if em.from_address is None:
        update["from_address"] = "noreply@sandlada.example.se"
    if not em.recipient_trust_anchors:
        update["recipient_trust_anchors"] = (settings.dev_certs_dir / "ca.pem",)
    return em.model_copy(update=update)


def _sandbox_sms(settings: Settings) -> SmsSettings:
    sms = settings.sms
    update: dict[str, object] = {}
    if sms.gateway_url is None:
        if sms.token is None:
            update["token"] = SecretStr(SANDBOX_SMS_TOKEN)
        if sms.ca_bundle is None:
            update["ca_bundle"] = settings.dev_certs_dir / "ca.pem"
    if sms.sender_id is None:
        update["sender_id"] = "Sandlada"
    return sms.model_copy(update=update)
