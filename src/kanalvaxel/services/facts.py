"""Gather the facts a decision needs (FaR, certificates) before the pure decision is made."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from kanalvaxel.domain.model import Channel, Letter, Notice
from kanalvaxel.domain.rules import MailboxLookup, RecipientFacts
from kanalvaxel.ports import CertificateInspector, RecipientRegister, SenderInfo


class FactsGatherer:
    def __init__(
        self,
        register: RecipientRegister | None,
        certificates: CertificateInspector | None,
        unavailable: Mapping[Channel | Notice, str],
    ) -> None:
        self._register = register
        self._certificates = certificates
        self._unavailable = dict(unavailable)

    def gather(
        self, letter: Letter, sender: SenderInfo, accepted_at: datetime, *, bypass_cache: bool = False
    ) -> RecipientFacts:
        """Ask FaR (if configured) and read the recipient's certificate (if given). Network I/O."""
        lookup = MailboxLookup.not_configured()
        if self._register is not None and Channel.MINA_MEDDELANDEN not in self._unavailable:
            answers = self._register.lookup(
                sender.organisation_number, [letter.recipient], bypass_cache=bypass_cache
            )
            lookup = answers.get(letter.recipient.value) or MailboxLookup.not_configured()
        cert = None
        pem = letter.recipient_info.smime_certificate_pem
        if pem and self._certificates is not None:
            cert = self._certificates.inspect(pem)
        return RecipientFacts(
            mailbox=lookup, certificate=cert, unavailable=self._unavailable, accepted_at=accepted_at
        )
