"""The two e-mail channels: plain e-mail for letters that are not confidential, S/MIME for those that are.

Both go through the agency's SMTP relay (`SmtpTransport`). SMTP has no idempotency of its own, so each
channel looks in the send journal before it sends and writes there right after the server accepted: a worker
that crashed in between finds the record instead of sending the letter twice. The narrow window between the
server's 250 and that write remains; a resend then carries the same Message-ID, which mail systems use to
recognise a duplicate.

Neither channel trusts the decision alone: plain e-mail refuses confidential content, and encrypted e-mail
checks the recipient's certificate again at the moment of sending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kanalvaxel.adapters.email_message import (
    EmailBuildError,
    MailParties,
    build_plain_email,
    check_address,
    make_message_id,
)
from kanalvaxel.adapters.smime import SmimeError, SmimeSigner, build_encrypted_email
from kanalvaxel.adapters.smtp import SmtpError, SmtpPermanentError, SmtpTransport, SmtpUncertainError
from kanalvaxel.domain.masking import ADDRESS_IN_TEXT, mask_email
from kanalvaxel.domain.model import Channel, is_confidential
from kanalvaxel.domain.rules import certificate_problems, reason_text
from kanalvaxel.ports import (
    CertificateInspector,
    CertificateLookup,
    Clock,
    DeliveryJob,
    DeliveryOutcome,
    OutcomeKind,
    SendJournal,
    SentRecord,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MailOrigin:
    """Where letters come from, per sender identity key."""

    from_addresses: Mapping[str, str]
    default_from: str | None
    reply_to: str | None
    message_id_domain: str | None

    def from_address(self, sender_key: str) -> str | None:
        return self.from_addresses.get(sender_key) or self.default_from


def _failed(*codes: str) -> DeliveryOutcome:
    """FAILED with the rule engine's own Swedish reason for `codes`."""
    return DeliveryOutcome(OutcomeKind.FAILED, reason_text(codes).capitalize() + ".")


class _SmtpChannel:
    channel: Channel

    def __init__(
        self, transport: SmtpTransport, journal: SendJournal, clock: Clock, origin: MailOrigin
    ) -> None:
        self._transport = transport
        self._journal = journal
        self._clock = clock
        self._origin = origin

    def _refusal(self, job: DeliveryJob) -> DeliveryOutcome | None:
        """What no decision may override: skyddad identitet never gets e-mail (checked again here because a
        stored decision may be older than the rule)."""
        if job.letter.recipient_info.protected_identity:
            return _failed("PROTECTED_IDENTITY")
        if not job.letter.recipient_info.email:
            return _failed("NO_EMAIL_ADDRESS")
        return None

    def _parties(self, job: DeliveryJob, to: str) -> MailParties | DeliveryOutcome:
        sender_address = self._origin.from_address(job.sender.key)
        if sender_address is None:
            return DeliveryOutcome(OutcomeKind.FAILED, "Ingen avsändaradress för e-post är inställd.")
        domain = self._origin.message_id_domain or sender_address.rpartition("@")[2]
        try:
            message_id = make_message_id(job.shipment_id, self.channel.value, domain)
        except EmailBuildError as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"Message-ID kan inte skapas: {exc}")
        return MailParties(
            from_address=sender_address,
            from_name=job.sender.name,
            to_address=to,
            reply_to=job.letter.support_info.email or self._origin.reply_to,
            message_id=message_id,
        )

    def _already_sent(self, job: DeliveryJob) -> DeliveryOutcome | None:
        done = self._journal.sent(job.shipment_id, self.channel.value)
        if done is None:
            return None
        kind = OutcomeKind.HANDED_OVER if done.data.get("in_doubt") else OutcomeKind.DELIVERED
        return DeliveryOutcome(kind, done.detail, done.external_ref, data=done.data)

    def _remember(self, job: DeliveryJob, record: SentRecord) -> None:
        """Write the journal; a database busy for a moment must not turn a sent letter into a resend."""
        for attempt in range(5):
            try:
                self._journal.record(job.shipment_id, self.channel.value, record)
                return
            except Exception:
                if attempt == 4:
                    # The letter is out: tell the dispatcher so anyway; only a crash now could resend it.
                    log.exception("shipment %s: the send journal could not be written", job.shipment_id)
                    return
                time.sleep(0.2 * (attempt + 1))

    def _submit(self, job: DeliveryJob, parties: MailParties, message: bytes) -> DeliveryOutcome:
        masked = mask_email(parties.to_address)
        try:
            # The envelope carries the same ASCII (IDNA) form the builder wrote into the headers.
            envelope_to = check_address(parties.to_address).addr_spec
            receipt = self._transport.send(parties.from_address, [envelope_to], message)
        except EmailBuildError as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"E-postadressen kan inte användas: {exc}")
        except SmtpUncertainError as exc:
            # The relay may have the letter: neither send it again nor let it fall to paper. It stays
            # handed over, in doubt, for customer service to see.
            detail = (
                f"Oklart om e-postservern tog emot brevet till {masked}: {_server_words(exc)}. "
                "Skickas inte igen automatiskt."
            )
            data = {"email": masked, "message_id": parties.message_id, "in_doubt": "true"}
            # ERROR: someone has to look (the relay's log, by Message-ID) and tell the recipient if need be.
            log.error(
                "shipment %s in doubt: the whole message was sent but the SMTP relay gave no final answer; "
                "not resent automatically; look for Message-ID %s in the relay's log",
                job.shipment_id,
                parties.message_id,
            )
            self._remember(job, SentRecord(parties.message_id, detail, data, self._clock.now()))
            return DeliveryOutcome(OutcomeKind.HANDED_OVER, detail, parties.message_id, data=data)
        except SmtpPermanentError as exc:
            return DeliveryOutcome(
                OutcomeKind.FAILED,
                f"E-postservern nekade brevet till {masked}: {_server_words(exc)}",
                data={"email": masked},
            )
        except SmtpError as exc:
            return DeliveryOutcome(
                OutcomeKind.RETRY,
                f"E-postservern kunde inte ta emot brevet nu: {_server_words(exc)}",
                data={"email": masked},
            )
        queue = receipt.queue_id or ""
        detail = f"Mottaget av e-postservern för {masked}" + (f" (kö-id {queue})." if queue else ".")
        data = {"email": masked, "message_id": parties.message_id, "smtp_queue_id": queue}
        self._remember(
            job, SentRecord(receipt.queue_id or parties.message_id, detail, data, self._clock.now())
        )
        log.info("shipment %s accepted by the SMTP relay (%s)", job.shipment_id, self.channel.value)
        return DeliveryOutcome(
            OutcomeKind.DELIVERED, detail, receipt.queue_id or parties.message_id, data=data
        )


def _server_words(exc: SmtpError) -> str:
    """The server's answer for the record: relays quote the recipient's address, which is masked here."""
    text = ADDRESS_IN_TEXT.sub(lambda m: mask_email(m.group(0)), " ".join(exc.server_text.split()))[:300]
    return f"{exc.code} {text}" if exc.code is not None else text


class EmailChannel(_SmtpChannel):
    """Plain e-mail: the letter (or, when the rule says so, only a notice of it) in clear."""

    channel = Channel.EMAIL

    def send(self, job: DeliveryJob) -> DeliveryOutcome:
        if is_confidential(job.letter.confidentiality):
            return _failed("CONFIDENTIAL_CONTENT")
        if (refused := self._refusal(job)) is not None:
            return refused
        to = job.letter.recipient_info.email
        assert to is not None
        if (done := self._already_sent(job)) is not None:
            return done
        parties = self._parties(job, to)
        if isinstance(parties, DeliveryOutcome):
            return parties
        try:
            message = build_plain_email(
                job.letter,
                job.sender,
                parties,
                now=self._clock.now(),
                notice_only=job.decision.email_notice_only,
            )
        except (EmailBuildError, ValueError) as exc:  # ValueError: the email package's own refusals
            return DeliveryOutcome(OutcomeKind.FAILED, f"E-postmeddelandet kunde inte skapas: {exc}")
        return self._submit(job, parties, message)


class EncryptedEmailChannel(_SmtpChannel):
    """S/MIME: signed with the sender identity's key, then encrypted (AES-256) to the recipient's
    certificate."""

    channel = Channel.EMAIL_ENCRYPTED

    def __init__(
        self,
        transport: SmtpTransport,
        journal: SendJournal,
        clock: Clock,
        origin: MailOrigin,
        *,
        inspector: CertificateInspector,
        directory: CertificateLookup | None,
        signers: Mapping[str, SmimeSigner],
    ) -> None:
        super().__init__(transport, journal, clock, origin)
        self._inspector = inspector
        self._directory = directory
        self._signers = dict(signers)

    def send(self, job: DeliveryJob) -> DeliveryOutcome:
        if (refused := self._refusal(job)) is not None:
            return refused
        info = job.letter.recipient_info
        to = info.email
        assert to is not None
        if (done := self._already_sent(job)) is not None:
            return done
        pem = info.smime_certificate_pem or (self._directory.find(to) if self._directory else None)
        # Checked again now: the certificate may have expired (or the directory changed) since the decision.
        problems = certificate_problems(self._inspector.inspect(pem) if pem else None, to, self._clock.now())
        if problems:
            return _failed(*problems)
        assert pem is not None
        signer = self._signers.get(job.sender.key)
        if signer is None:
            return DeliveryOutcome(
                OutcomeKind.FAILED, "Avsändaren har inget S/MIME-certifikat att signera med."
            )
        parties = self._parties(job, to)
        if isinstance(parties, DeliveryOutcome):
            return parties
        try:
            message = build_encrypted_email(
                job.letter, job.sender, parties, pem, signer, now=self._clock.now()
            )
        except (SmimeError, EmailBuildError, ValueError) as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"Det krypterade meddelandet kunde inte skapas: {exc}")
        return self._submit(job, parties, message)
