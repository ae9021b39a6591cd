"""FaR (the register of digital mailboxes) as the rule engine's recipient register, over far_client."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from far_client import FarClient, FarError, FarFaultError, Reachability
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.rules import LookupState, Mailbox, MailboxLookup

log = logging.getLogger(__name__)


def mailbox_from(answer: Reachability) -> Mailbox:
    supplier = answer.account.service_supplier
    return Mailbox(
        has_mailbox=answer.has_mailbox,
        pending=answer.account.pending,
        sender_accepted=answer.sender_accepted,
        operator_id=supplier.id if supplier else None,
        operator_name=supplier.name if supplier else None,
        service_address=supplier.service_address if supplier else None,
    )


class FarRegister:
    def __init__(self, client: FarClient) -> None:
        self._client = client

    def lookup(
        self,
        sender_organisation_number: str,
        recipients: Sequence[RecipientId],
        *,
        bypass_cache: bool = False,
    ) -> Mapping[str, MailboxLookup]:
        ids = [r.value for r in recipients]
        try:
            answers = self._client.is_reachable(sender_organisation_number, ids, bypass_cache=bypass_cache)
        except FarFaultError as exc:
            reason = f"FaR svarade med fel {exc.error_code}: {exc.description}"
            log.warning("FaR fault %s (call id %s) for %d recipients", exc.error_code, exc.call_id, len(ids))
            return {i: MailboxLookup(LookupState.UNAVAILABLE, error=reason) for i in ids}
        except FarError as exc:
            log.warning("FaR could not be asked: %s", type(exc).__name__)
            reason = f"FaR kunde inte nås: {exc}"
            return {i: MailboxLookup(LookupState.UNAVAILABLE, error=reason) for i in ids}
        out: dict[str, MailboxLookup] = {}
        for i in ids:
            answer = answers.get(i)
            if answer is None:
                out[i] = MailboxLookup(LookupState.UNAVAILABLE, error="FaR svarade inte för mottagaren")
            else:
                out[i] = MailboxLookup(LookupState.ANSWERED, mailbox_from(answer))
        return out

    def close(self) -> None:
        self._client.close()
