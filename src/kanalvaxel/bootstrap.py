"""The one composition root: settings -> real adapters -> services. Tests build the same thing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from kanalvaxel.adapters.clock import SystemClock
from kanalvaxel.adapters.persistence import migrate
from kanalvaxel.adapters.persistence.database import make_engine
from kanalvaxel.adapters.persistence.repository import SqlUnitOfWork, unit_of_work_factory
from kanalvaxel.adapters.print_channel import PrintChannel
from kanalvaxel.adapters.print_file import DirectoryPrintSpool, PdfLetterRenderer
from kanalvaxel.config import Settings
from kanalvaxel.domain.errors import ConfigurationError, PolicyError
from kanalvaxel.domain.model import Channel, Notice
from kanalvaxel.domain.rules import ChannelLimits, Policy, load_policy
from kanalvaxel.ports import ChannelAdapter, Clock, NoticeSender, SenderInfo, UnitOfWork
from kanalvaxel.services import UowFactory
from kanalvaxel.services.clients import ClientService
from kanalvaxel.services.content import ContentLimits
from kanalvaxel.services.dispatch import Dispatcher, DispatchSettings
from kanalvaxel.services.facts import FactsGatherer
from kanalvaxel.services.intake import IntakeService
from kanalvaxel.services.prefetch import RegisterPrefetch
from kanalvaxel.services.print_batches import BatchLimits, PrintBatchCloser
from kanalvaxel.services.queries import ShipmentQueries

if TYPE_CHECKING:
    from kanalvaxel.adapters.digital_mail import DigitalMail
    from kanalvaxel.adapters.messaging import Messaging

log = logging.getLogger(__name__)


def load_configured_policy(settings: Settings) -> Policy:
    if settings.policy_file is None:
        text = files("kanalvaxel").joinpath("default_policy.toml").read_text(encoding="utf-8")
        source = "built-in default policy"
    else:
        try:
            text = settings.policy_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"policy_file {settings.policy_file}: {exc.strerror}") from None
        source = str(settings.policy_file)
    try:
        return load_policy(text, source=source)
    except PolicyError as exc:
        raise ConfigurationError(str(exc)) from None


@dataclass
class Container:
    settings: Settings
    engine: Engine
    uow: UowFactory
    clock: Clock
    policy: Policy
    senders: Mapping[str, SenderInfo]
    channels: Mapping[Channel, ChannelAdapter]
    facts: FactsGatherer
    intake: IntakeService
    clients: ClientService
    queries: ShipmentQueries
    printing: PrintBatchCloser | None
    dispatch_settings: DispatchSettings = field(default_factory=DispatchSettings)
    #: Digital mail: the embedded relay (its delivery worker runs beside ours) and the sandbox simulators.
    digital_mail: DigitalMail | None = None
    #: E-mail (plain and S/MIME) and SMS notices, with the sandbox's SMTP sink and SMS simulator.
    messaging: Messaging | None = None
    notifiers: Mapping[Notice, NoticeSender] = field(default_factory=dict)
    #: Asks FaR for many waiting letters in one call before they are decided one by one (None: no FaR).
    prefetch: RegisterPrefetch | None = None

    def dispatcher(self, worker_name: str) -> Dispatcher:
        return Dispatcher(
            self.uow,
            self.clock,
            self.policy,
            self.senders,
            self.channels,
            self.facts,
            self.printing,
            self.dispatch_settings,
            worker_name,
            self.notifiers,
        )

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def close(self) -> None:
        if self.digital_mail is not None:
            self.digital_mail.close()
        if self.messaging is not None:
            self.messaging.close()
        self.engine.dispose()


def _merged(
    *by_sender: dict[str, dict[Channel | Notice, str]],
) -> dict[str, dict[Channel | Notice, str]]:
    out: dict[str, dict[Channel | Notice, str]] = {}
    for part in by_sender:
        for key, channels in part.items():
            out.setdefault(key, {}).update(channels)
    return out


def build(settings: Settings, *, clock: Clock | None = None, outside_world: bool = True) -> Container:
    """Wire everything from settings. Raises ConfigurationError for settings that cannot work.

    `outside_world=False` is for commands that never send (migrate, clients, openapi): digital mail is then
    left unconfigured, and no simulator is started.
    """
    clock = clock or SystemClock()
    policy = load_configured_policy(settings)
    engine = make_engine(settings.database.url, echo=settings.database.echo)
    sessions = unit_of_work_factory(engine)

    def uow(*, read_only: bool = False) -> UnitOfWork:
        return SqlUnitOfWork(sessions, read_only=read_only)

    senders = {
        s.key: SenderInfo(s.key, s.organisation_number, s.name, tuple(s.return_address))
        for s in settings.senders
    }
    channels: dict[Channel, ChannelAdapter] = {}
    unavailable: dict[Channel | Notice, str] = {
        Channel.MINA_MEDDELANDEN: "Mina meddelanden är inte konfigurerat",
        Channel.EMAIL_ENCRYPTED: "krypterad e-post är inte konfigurerad",
        Channel.EMAIL: "e-post är inte konfigurerad",
        Notice.SMS: "sms är inte konfigurerat",
    }
    printing: PrintBatchCloser | None = None
    if settings.print.enabled:
        spool = DirectoryPrintSpool(settings.print.spool_dir)
        channels[Channel.PRINT] = PrintChannel(
            PdfLetterRenderer(), spool, max_pages=settings.print.max_pages_per_letter
        )
        printing = PrintBatchCloser(
            uow,
            clock,
            spool,
            BatchLimits(
                max_letters=settings.print.batch_max_letters,
                max_bytes=settings.print.batch_max_bytes,
                max_age=timedelta(seconds=settings.print.batch_max_age_seconds),
                closing_lease=timedelta(seconds=settings.worker.lease_seconds),
            ),
        )
    else:
        unavailable[Channel.PRINT] = "utskrift är avstängd"
    digital_mail: DigitalMail | None = None
    if settings.mina_meddelanden.enabled and outside_world:
        # Imported here: commands that never send need neither zeep nor the relay.
        from kanalvaxel.adapters.digital_mail import build_digital_mail

        digital_mail = build_digital_mail(settings)
        channels[Channel.MINA_MEDDELANDEN] = digital_mail.channel
        del unavailable[Channel.MINA_MEDDELANDEN]
    messaging: Messaging | None = None
    notifiers: dict[Notice, NoticeSender] = {}
    if (settings.email.enabled or settings.sms.enabled) and outside_world:
        from kanalvaxel.adapters.messaging import build_messaging

        try:
            messaging = build_messaging(settings, uow, clock)
        except BaseException:
            if digital_mail is not None:
                digital_mail.close()
            raise
        if messaging.email is not None:
            channels[Channel.EMAIL] = messaging.email
            del unavailable[Channel.EMAIL]
        if messaging.encrypted is not None:
            channels[Channel.EMAIL_ENCRYPTED] = messaging.encrypted
            del unavailable[Channel.EMAIL_ENCRYPTED]
        if messaging.sms is not None:
            notifiers[Notice.SMS] = messaging.sms
            del unavailable[Notice.SMS]
    facts = FactsGatherer(
        register=digital_mail.register if digital_mail else None,
        certificates=messaging.inspector if messaging else None,
        unavailable=unavailable,
        certificate_directory=messaging.directory if messaging else None,
        sender_unavailable=_merged(
            messaging.sender_unavailable if messaging else {},
            digital_mail.sender_unavailable if digital_mail else {},
        ),
        limits=ChannelLimits(
            max_print_pages=settings.print.max_pages_per_letter if settings.print.enabled else None,
            max_digital_bytes=settings.mina_meddelanden.max_message_bytes,
        ),
    )
    w = settings.worker
    limits = settings.limits
    return Container(
        settings=settings,
        engine=engine,
        uow=uow,
        clock=clock,
        policy=policy,
        senders=senders,
        channels=channels,
        facts=facts,
        intake=IntakeService(
            uow,
            clock,
            ContentLimits(
                limits.max_attachments,
                limits.max_attachment_bytes,
                limits.max_total_attachment_bytes,
                limits.max_body_chars,
                limits.max_decompressed_bytes,
            ),
            senders,
        ),
        clients=ClientService(
            uow, clock, senders.keys(), remember_for=timedelta(seconds=settings.api.key_cache_seconds)
        ),
        queries=ShipmentQueries(uow, clock, policy, senders, facts),
        printing=printing,
        digital_mail=digital_mail,
        messaging=messaging,
        notifiers=notifiers,
        prefetch=None
        if digital_mail is None
        else RegisterPrefetch(uow, clock, digital_mail.register, senders, every=w.poll_interval_seconds),
        dispatch_settings=DispatchSettings(
            max_attempts_per_channel=w.max_attempts_per_channel,
            backoff_base=timedelta(seconds=w.backoff_base_seconds),
            backoff_max=timedelta(seconds=w.backoff_max_seconds),
            notice_max_attempts=settings.sms.max_attempts,
            failpoints=dict(w.failpoints),
            lease=timedelta(seconds=w.lease_seconds),
        ),
    )
