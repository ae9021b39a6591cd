"""Wiring for digital mail: the FaR client, the relay (embedded or remote), the signing identities and, in the
sandbox, the simulators of FaR and the mailbox operators."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from far_client import FarClient, FarSettings
from formedlare.api import RelayApi
from formedlare.errors import FormedlareError
from formedlare.mm import SigningIdentity
from kanalvaxel.adapters.far import FarRegister
from kanalvaxel.adapters.mina_meddelanden import MinaMeddelandenChannel
from kanalvaxel.config import SenderIdentity, Settings
from kanalvaxel.domain.errors import ConfigurationError
from kanalvaxel.domain.model import Channel, Notice

if TYPE_CHECKING:
    from formedlare.relay import Relay
    from formedlare.worker import RelayWorker
    from kanalvaxel.sandbox.world import SandboxWorld

log = logging.getLogger(__name__)


@dataclass
class DigitalMail:
    register: FarRegister
    relay: RelayApi
    channel: MinaMeddelandenChannel
    #: The embedded relay, whose delivery worker runs inside our worker process.
    embedded: Relay | None = None
    world: SandboxWorld | None = None
    #: Sender identities with no signing certificate: digital mail is not configured for them.
    sender_unavailable: dict[str, dict[Channel | Notice, str]] = field(default_factory=dict)
    _workers: list[RelayWorker] = field(default_factory=list)

    def start_relay_worker(self, threads: int, idle_seconds: float = 0.5) -> None:
        """Run the embedded relay's deliveries to operators in this process (no-op for a remote relay).

        `threads` claim letters; the calls to each operator run in threads of their own (up to
        `operator_concurrency` per operator), so a slow operator never holds the claim threads."""
        if self.embedded is None or self._workers:
            return
        from formedlare.worker import RelayWorker

        worker = RelayWorker(self.embedded, threads=threads, idle_seconds=idle_seconds)
        worker.start()
        self._workers.append(worker)

    def stop_relay_worker(self, timeout: float = 30.0) -> None:
        """Stop the embedded relay's deliveries, waiting up to `timeout` seconds for calls in flight."""
        for w in self._workers:
            w.stop(timeout)
        self._workers.clear()

    def close(self) -> None:
        self.stop_relay_worker()
        self.register.close()
        close = getattr(self.relay, "close", None)  # the embedded Relay and RemoteRelay both hold connections
        if callable(close):
            close()
        if self.world is not None:
            self.world.stop()


def load_signer(sender: SenderIdentity) -> SigningIdentity | None:
    secret = sender.signing_key_password
    password = secret.get_secret_value().encode() if secret else None
    try:
        if sender.pkcs12 is not None:
            return SigningIdentity.from_pkcs12(sender.pkcs12, password)
        if sender.signing_certificate is not None and sender.signing_key is not None:
            return SigningIdentity.from_pem(sender.signing_certificate, sender.signing_key, password)
    except (OSError, ValueError, FormedlareError) as exc:
        raise ConfigurationError(
            f"senders[{sender.key}]: the signing identity cannot be loaded: {exc}"
        ) from None
    return None


def _need(value: Path | None, name: str) -> Path:
    if value is None:
        raise ConfigurationError(f"mina_meddelanden.{name} is not set")
    return value


def build_digital_mail(settings: Settings) -> DigitalMail:
    mm = settings.mina_meddelanden
    signers: dict[str, SigningIdentity] = {}
    unsigned: dict[str, dict[Channel | Notice, str]] = {}
    for sender in settings.senders:
        signer = load_signer(sender)
        if signer is None:
            log.warning("sender %s has no signing certificate: no digital mail for it", sender.key)
            unsigned[sender.key] = {
                Channel.MINA_MEDDELANDEN: "avsändaren saknar certifikat för underskrift av digital post"
            }
            continue
        if signer.organisation_number not in (None, sender.organisation_number):
            raise ConfigurationError(
                f"senders[{sender.key}]: the signing certificate belongs to organisation "
                f"{signer.organisation_number}, not {sender.organisation_number}"
            )
        signers[sender.key] = signer
    world: SandboxWorld | None = None
    far_url = mm.far_url
    if far_url is None:
        if not (settings.is_sandbox and settings.sandbox.simulators):
            raise ConfigurationError("mina_meddelanden.far_url is not set")
        from kanalvaxel.devcerts import ensure_dev_certs
        from kanalvaxel.sandbox.world import start_world

        ensure_dev_certs(settings.dev_certs_dir)
        sb = settings.sandbox
        world = start_world(
            settings.dev_certs_dir,
            registry=sb.far_registry,
            far_port=sb.far_port,
            operator_ports={"kivra": sb.kivra_port, "mmp": sb.mmp_port},
            store_dir=settings.var_dir / "sandbox" / "digital",
        )
        far_url = world.far_url
    try:
        far = FarClient(
            FarSettings(
                url=far_url,
                client_certificate=_need(mm.client_certificate, "client_certificate"),
                client_key=_need(mm.client_key, "client_key"),
                ca_bundle=_need(mm.ca_bundle, "ca_bundle"),
                connect_timeout=mm.far_connect_timeout_seconds,
                read_timeout=mm.far_read_timeout_seconds,
                cache_ttl=timedelta(seconds=mm.far_cache_ttl_seconds),
            )
        )
        embedded: Relay | None = None
        relay: RelayApi
        if mm.relay == "embedded":
            embedded = _embedded_relay(settings, far_url)
            relay = embedded
        else:
            from formedlare.client import RemoteRelay

            assert mm.relay_url is not None  # Settings refuses remote without a URL
            relay = RemoteRelay(
                mm.relay_url,
                client_certificate=_need(mm.client_certificate, "client_certificate"),
                client_key=_need(mm.client_key, "client_key"),
                ca_bundle=_need(mm.ca_bundle, "ca_bundle"),
            )
    except BaseException:
        if world is not None:
            world.stop()
        raise
    channel = MinaMeddelandenChannel(
        relay,
        signers,
        poll=timedelta(seconds=mm.status_poll_seconds),
        poll_max=timedelta(seconds=mm.status_poll_max_seconds),
    )
    return DigitalMail(FarRegister(far), relay, channel, embedded, world, unsigned)


def _embedded_relay(settings: Settings, far_url: str) -> Relay:
    from formedlare.relay import Relay
    from formedlare.settings import RelaySettings

    mm = settings.mina_meddelanden
    db = mm.relay_database_url or f"sqlite:///{(settings.var_dir / 'formedlare.db').resolve()}"
    if db.startswith("sqlite:///"):
        Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    relay_settings = RelaySettings(
        database_url=db,
        seal_certificate=_need(mm.seal_certificate, "seal_certificate"),
        seal_key=_need(mm.seal_key, "seal_key"),
        seal_key_password=mm.seal_key_password,
        trust_anchors=list(mm.trust_anchors),
        relayed_senders=[s.organisation_number for s in settings.senders],
        allow_sha1=mm.allow_sha1,
        far={
            "url": far_url,
            "client_certificate": _need(mm.relay_client_certificate, "relay_client_certificate"),
            "client_key": _need(mm.relay_client_key, "relay_client_key"),
            "ca_bundle": _need(mm.ca_bundle, "ca_bundle"),
            "cache_ttl_seconds": mm.far_cache_ttl_seconds,
        },
        client_certificate=_need(mm.relay_client_certificate, "relay_client_certificate"),
        client_key=_need(mm.relay_client_key, "relay_client_key"),
        operator_ca_bundle=_need(mm.operator_ca_bundle, "operator_ca_bundle"),
        operator_concurrency=mm.operator_concurrency,
        backoff_base_seconds=mm.relay_backoff_base_seconds,
        backoff_max_seconds=mm.relay_backoff_max_seconds,
    )
    return Relay.from_settings(relay_settings)
