"""Notices (SMS) that accompany a delivered letter: which are due, and their state in the shipment's result.

A notice is queued in the same transaction that records the delivery (``result["notices"]``, state PENDING)
and sent by the dispatcher afterwards; the letter's own state never depends on it.
"""

from __future__ import annotations

from kanalvaxel.domain.model import Channel, Notice
from kanalvaxel.domain.rules import Decision

NOTICE_NAMES_SV = {Notice.SMS: "SMS-avisering"}


def pending_notices(result: dict[str, object] | None) -> dict[str, dict[str, object]]:
    """The notices of a delivered shipment that still wait to be sent (kept in its result)."""
    return {k: v for k, v in all_notices(result).items() if v.get("state") == "PENDING"}


def notices_to_send(decision: Decision, channel: Channel) -> dict[str, object]:
    """The `notices` entry of a result, for a letter that has just been delivered by `channel`."""
    return {
        n.value: {"state": "PENDING", "via": channel.value, "attempts": 0}
        for n in decision.notices_with(channel)
    }


def all_notices(result: dict[str, object] | None) -> dict[str, dict[str, object]]:
    """Every notice in a shipment's result, by kind (copies: safe to change)."""
    notices = (result or {}).get("notices")
    if not isinstance(notices, dict):
        return {}
    return {k: dict(v) for k, v in notices.items() if isinstance(v, dict)}
