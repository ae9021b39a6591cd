"""Gather the facts a decision needs (FaR, certificates) before the pure decision is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import Channel, Letter, Notice
from kanalvaxel.domain.rules import ChannelLimits, MailboxLookup, RecipientFacts
from kanalvaxel.ports import CertificateInspector, CertificateLookup, RecipientRegister, SenderInfo


class FactsGatherer:
    def __init__(
        self,
        register: RecipientRegister | None,
        certificates: CertificateInspector | None,
        unavailable: Mapping[Channel | Notice, str],
        *,
        certificate_directory: CertificateLookup | None = None,
        sender_unavailable: Mapping[str, Mapping[Channel | Notice, str]] | None = None,
        limits: ChannelLimits | None = None,
    ) -> None:
        self._limits = limits or ChannelLimits()
        self._register = register
        self._certificates = certificates
        self._directory = certificate_directory
        self._unavailable = dict(unavailable)
        #: Channels one sender identity cannot use (e.g. no S/MIME key to sign with), by sender key.
        self._sender_unavailable = {k: dict(v) for k, v in (sender_unavailable or {}).items()}

    def _unavailable_for(self, sender: SenderInfo) -> dict[Channel | Notice, str]:
        return {**self._unavailable, **self._sender_unavailable.get(sender.key, {})}

    def _asks_far(self, sender: SenderInfo) -> bool:
        return self._register is not None and Channel.MINA_MEDDELANDEN not in self._unavailable_for(sender)

    def mailboxes(self, letters: Sequence[tuple[Letter, SenderInfo]]) -> dict[tuple[str, str], MailboxLookup]:
        """FaR's answers for many letters at once, one lookup per sender (FaR takes 1,000 recipients a call;
        the client splits larger ones), keyed (sender key, recipient id), for :meth:`gather`. Network I/O."""
        by_sender: dict[str, tuple[SenderInfo, dict[str, RecipientId]]] = {}
        for letter, sender in letters:
            if self._asks_far(sender):
                by_sender.setdefault(sender.key, (sender, {}))[1][letter.recipient.value] = letter.recipient
        found: dict[tuple[str, str], MailboxLookup] = {}
        for key, (sender, recipients) in by_sender.items():
            assert self._register is not None
            answers = self._register.lookup(sender.organisation_number, list(recipients.values()))
            for recipient_id in recipients:
                found[(key, recipient_id)] = answers.get(recipient_id) or MailboxLookup.not_configured()
        return found

    def gather(
        self,
        letter: Letter,
        sender: SenderInfo,
        accepted_at: datetime,
        *,
        bypass_cache: bool = False,
        mailboxes: Mapping[tuple[str, str], MailboxLookup] | None = None,
    ) -> RecipientFacts:
        """Ask FaR (if configured; unless `mailboxes`, from :meth:`mailboxes`, has the answer) and read the
        recipient's certificate (given, or from the configured directory by e-mail address). Network I/O."""
        unavailable = self._unavailable_for(sender)
        lookup = MailboxLookup.not_configured()
        if self._register is not None and Channel.MINA_MEDDELANDEN not in unavailable:
            known = None if bypass_cache else (mailboxes or {}).get((sender.key, letter.recipient.value))
            if known is not None:
                lookup = known
            else:
                answers = self._register.lookup(
                    sender.organisation_number, [letter.recipient], bypass_cache=bypass_cache
                )
                lookup = answers.get(letter.recipient.value) or MailboxLookup.not_configured()
        cert = None
        info = letter.recipient_info
        pem = info.smime_certificate_pem
        if not pem and info.email and self._directory is not None:
            pem = self._directory.find(info.email)
        if pem and self._certificates is not None:
            cert = self._certificates.inspect(pem)
        return RecipientFacts(
            mailbox=lookup,
            certificate=cert,
            unavailable=unavailable,
            accepted_at=accepted_at,
            print_pages=_print_pages(letter) if self._limits.max_print_pages is not None else None,
            limits=self._limits,
        )


def _print_pages(letter: Letter) -> int | None:
    """The address page and every attachment page (a long body may add more: the print channel checks
    the rendered letter as well). None when an attachment cannot be read (intake has checked them)."""
    from kanalvaxel.services.content import pdf_page_count

    try:
        return 1 + sum(
            pdf_page_count(a.content, f"attachments[{i}]") for i, a in enumerate(letter.attachments)
        )
    except ValidationError:
        return None
