"""Wiring for the second-hand channels: plain and encrypted e-mail over SMTP, and SMS notices; in the sandbox
also the SMTP sink and the SMS gateway simulator they talk to."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kanalvaxel.adapters.email_channels import EmailChannel, EncryptedEmailChannel, MailOrigin
from kanalvaxel.adapters.persistence.journal import UowSendJournal
from kanalvaxel.adapters.smime import CertificateDirectory, SmimeCertificateInspector, SmimeError, SmimeSigner
from kanalvaxel.adapters.sms import SmsGateway, SmsGatewayConfig
from kanalvaxel.adapters.sms_notice import SmsNotifier
from kanalvaxel.adapters.smtp import SmtpConfig, SmtpTransport
from kanalvaxel.config import Settings
from kanalvaxel.domain.addresses import address_key
from kanalvaxel.domain.errors import ConfigurationError
from kanalvaxel.domain.model import Channel, Notice
from kanalvaxel.ports import Clock
from kanalvaxel.services import UowFactory

if TYPE_CHECKING:
    from kanalvaxel.sandbox.messaging_world import MessagingWorld

log = logging.getLogger(__name__)

#: An e-mail send (the whole SMTP session) must be over within this share of the worker's lease.
SEND_SHARE_OF_LEASE = 0.8


@dataclass
class Messaging:
    email: EmailChannel | None
    encrypted: EncryptedEmailChannel | None
    sms: SmsNotifier | None
    inspector: SmimeCertificateInspector | None
    directory: CertificateDirectory | None
    #: Channels a sender identity cannot use, with the reason (no S/MIME key for encrypted e-mail).
    sender_unavailable: dict[str, dict[Channel | Notice, str]]
    gateway: SmsGateway | None = None
    world: MessagingWorld | None = None
    transport: SmtpTransport | None = None

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
        if self.world is not None:
            self.world.stop()


def load_smime_signers(settings: Settings) -> dict[str, SmimeSigner]:
    signers: dict[str, SmimeSigner] = {}
    for sender in settings.senders:
        if sender.smime_certificate is None or sender.smime_key is None:
            continue
        secret = sender.smime_key_password
        try:
            signers[sender.key] = SmimeSigner.from_files(
                sender.smime_certificate,
                sender.smime_key,
                secret.get_secret_value().encode() if secret else None,
            )
        except SmimeError as exc:
            raise ConfigurationError(
                f"senders[{sender.key}]: the S/MIME identity cannot be loaded: {exc}"
            ) from None
    return signers


def build_messaging(settings: Settings, uow: UowFactory, clock: Clock) -> Messaging:
    """Raises ConfigurationError for settings that cannot work."""
    em, sms = settings.email, settings.sms
    sandbox = settings.is_sandbox and settings.sandbox.simulators
    world: MessagingWorld | None = None
    smtp_host, smtp_port = em.smtp_host, em.smtp_port
    sms_url = sms.gateway_url
    need_sink = em.enabled and smtp_host is None
    need_sms = sms.enabled and sms_url is None
    if (need_sink or need_sms) and not sandbox:
        raise ConfigurationError("email.smtp_host is not set" if need_sink else "sms.gateway_url is not set")
    if need_sink or need_sms:
        from kanalvaxel.devcerts import ensure_dev_certs
        from kanalvaxel.sandbox.messaging_world import start_messaging_world

        ensure_dev_certs(settings.dev_certs_dir)
        world = start_messaging_world(
            settings.dev_certs_dir,
            settings.var_dir,
            smtp=need_sink,
            sms_token=sms.token.get_secret_value() if need_sms and sms.token else None,
            smtp_port=settings.sandbox.smtp_port,
            sms_port=settings.sandbox.sms_port,
        )
        if need_sink:
            assert world.sink is not None
            smtp_host, smtp_port = world.sink.host, world.sink.port
        if need_sms:
            sms_url = world.sms_url
    try:
        return _build(settings, uow, clock, smtp_host, smtp_port, sms_url, world)
    except BaseException:
        if world is not None:
            world.stop()
        raise


def _build(
    settings: Settings,
    uow: UowFactory,
    clock: Clock,
    smtp_host: str | None,
    smtp_port: int,
    sms_url: str | None,
    world: MessagingWorld | None,
) -> Messaging:
    em, sms = settings.email, settings.sms
    journal = UowSendJournal(uow)
    email: EmailChannel | None = None
    encrypted: EncryptedEmailChannel | None = None
    inspector: SmimeCertificateInspector | None = None
    directory: CertificateDirectory | None = None
    sender_unavailable: dict[str, dict[Channel | Notice, str]] = {}
    transport: SmtpTransport | None = None
    if em.enabled:
        assert smtp_host is not None
        transport = SmtpTransport(
            SmtpConfig(
                host=smtp_host,
                port=smtp_port,
                security=em.security,
                username=em.username,
                password=em.password.get_secret_value() if em.password else None,
                ca_bundle=em.ca_bundle,
                timeout=em.timeout_seconds,
                data_timeout=em.data_timeout_seconds,
                # Over before the worker's lease runs out, so no other worker takes the letter mid-send.
                session_timeout=settings.worker.lease_seconds * SEND_SHARE_OF_LEASE,
                local_hostname=em.ehlo_name,
            )
        )
        origin = MailOrigin(
            from_addresses={s.key: s.email_address for s in settings.senders if s.email_address},
            default_from=em.from_address,
            reply_to=em.reply_to,
            message_id_domain=em.message_id_domain,
        )
        email = EmailChannel(transport, journal, clock, origin)
        if em.encrypted:
            try:
                inspector = SmimeCertificateInspector.from_pem_files(*em.recipient_trust_anchors)
            except SmimeError as exc:
                raise ConfigurationError(f"email.recipient_trust_anchors: {exc}") from None
            if em.certificate_directory is not None:
                if not em.certificate_directory.is_dir():
                    raise ConfigurationError(
                        f"email.certificate_directory {em.certificate_directory} is not a directory"
                    )
                # With the inspector (and its trust anchors) the directory prefers trusted certificates.
                directory = CertificateDirectory(em.certificate_directory, inspector=inspector)
            signers = load_smime_signers(settings)
            for key, signer in signers.items():
                address = origin.from_address(key)
                if address and address_key(address) not in signer.email_addresses:
                    # Recipients' mail programs would flag every signature as not the sender's.
                    raise ConfigurationError(
                        f"senders[{key}]: the S/MIME certificate is for "
                        f"{', '.join(sorted(signer.email_addresses)) or 'no e-mail address'}, "
                        f"not the From address {address}"
                    )
            for sender in settings.senders:
                if sender.key not in signers:
                    log.warning("sender %s has no S/MIME identity: no encrypted e-mail for it", sender.key)
                    sender_unavailable.setdefault(sender.key, {})[Channel.EMAIL_ENCRYPTED] = (
                        "avsändaren saknar S/MIME-certifikat"
                    )
            encrypted = EncryptedEmailChannel(
                transport, journal, clock, origin, inspector=inspector, directory=directory, signers=signers
            )
    notifier: SmsNotifier | None = None
    gateway: SmsGateway | None = None
    if sms.enabled:
        assert sms_url is not None
        if sms.token is None:
            raise ConfigurationError("sms.token is not set")
        sender_ids = {s.key: s.sms_sender_id for s in settings.senders if s.sms_sender_id}
        default_id = sms.sender_id or next(iter(sender_ids.values()), None)
        if default_id is None:
            raise ConfigurationError("sms.sender_id is not set")
        gateway = SmsGateway(
            SmsGatewayConfig(
                url=sms_url,
                token=sms.token.get_secret_value(),
                sender_id=default_id,
                connect_timeout=sms.connect_timeout_seconds,
                read_timeout=sms.read_timeout_seconds,
                retries=sms.retries,
                ca_bundle=sms.ca_bundle,
                max_parts=sms.max_parts,
            )
        )
        notifier = SmsNotifier(gateway, journal, clock, max_parts=sms.max_parts, sender_ids=sender_ids)
    return Messaging(
        email, encrypted, notifier, inspector, directory, sender_unavailable, gateway, world, transport
    )
