"""Signature wrapping: the relay reads the sender, recipient and message ids only from content its
signature check covered; anything placed beside the signed Delivery is refused or ignored."""

from __future__ import annotations

import pytest

from formedlare.api import DeliveryRefusedError
from formedlare.mm import SigningIdentity, sign_delivery
from formedlare.relay import RefusalCode
from tests.formedlare.conftest import KIVRA_RECIPIENT, RelayFactory, content

_OTHER_RECIPIENT = "198001011236"


def _signed_and_foreign(sender: SigningIdentity) -> tuple[bytes, bytes]:
    """A signed delivery, and the Delivery element of another (unsigned) one to smuggle in."""
    signed = sign_delivery(sender, content(KIVRA_RECIPIENT))
    other = sign_delivery(sender, content(_OTHER_RECIPIENT))
    start = other.index(b"<Delivery>")
    foreign = other[start : other.index(b"</Delivery>") + len(b"</Delivery>")]
    return signed, foreign


@pytest.mark.parametrize("where", ["before", "after", "instead-wrapped"])
def test_an_injected_delivery_beside_the_signed_one_is_refused(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity, where: str
) -> None:
    relay = make_relay(sqlite_url)
    signed, foreign = _signed_and_foreign(sender)
    if where == "before":
        attack = signed.replace(b"<Delivery>", foreign + b"<Delivery>", 1)
    elif where == "after":
        attack = signed.replace(b"</Delivery>", b"</Delivery>" + foreign, 1)
    else:
        # A new SignedDelivery around the foreign Delivery, the genuine signed one nested after it.
        head = signed[: signed.index(b">") + 1]
        attack = head + foreign + signed + b"</SignedDelivery>"

    with pytest.raises(DeliveryRefusedError) as refused:
        relay.distribute_secure(attack)

    assert refused.value.code in (RefusalCode.SCHEMA_VIOLATION, "DIGEST_MISMATCH", "UNSIGNED")
    assert b"198001011236" not in repr(relay.refusals()).encode()


def test_a_delivery_hidden_in_the_signature_is_not_what_the_relay_reads(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    # ds:Object is outside the digest (enveloped) and the schema lets it hold anything.
    relay = make_relay(sqlite_url)
    signed, foreign = _signed_and_foreign(sender)
    attack = signed.replace(
        b"</Signature>", b'<Object xmlns:m="urn:x">' + foreign + b"</Object></Signature>", 1
    )

    distribution_id = relay.distribute_secure(attack)

    assert relay.distribution_detail(distribution_id).recipient_id == KIVRA_RECIPIENT


def test_comments_inside_signed_text_change_nothing_the_relay_reads(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    # Exclusive c14n without comments leaves comments out of the digest, so anyone can add them to a
    # signed delivery without breaking it; lxml's .text stops at the first one.
    relay = make_relay(sqlite_url)
    delivery = content(KIVRA_RECIPIENT)
    signed = sign_delivery(sender, delivery)
    message_id = delivery.messages[0].message_id.encode()
    commented = signed.replace(message_id + b"</Id>", message_id[:5] + b"<!---->" + message_id[5:] + b"</Id>")
    commented = commented.replace(
        b">" + KIVRA_RECIPIENT.encode(), b">19700<!-- x -->" + KIVRA_RECIPIENT[5:].encode()
    )
    assert commented.count(b"<!--") == 2

    first = relay.distribute_secure(signed)
    again = relay.distribute_secure(commented)

    assert again == first
    detail = relay.distribution_detail(first)
    assert detail.recipient_id == KIVRA_RECIPIENT
    assert detail.message_ids == (delivery.messages[0].message_id,)


def test_a_commented_delivery_alone_is_read_in_full(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    relay = make_relay(sqlite_url)
    signed = sign_delivery(sender, content(KIVRA_RECIPIENT))
    commented = signed.replace(
        b">" + KIVRA_RECIPIENT.encode(), b">1970<?x y?>" + KIVRA_RECIPIENT[4:].encode()
    )

    distribution_id = relay.distribute_secure(commented)

    assert relay.distribution_detail(distribution_id).recipient_id == KIVRA_RECIPIENT
