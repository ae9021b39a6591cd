"""Intake: what the relay accepts at the door, what it refuses and what it records about a refusal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from formedlare.api import DeliveryRefusedError, DistributionState, UnknownDistributionError
from formedlare.mm import SigningIdentity, build_signed_delivery
from formedlare.relay import RefusalCode, Relay
from formedlare.store import DistributionRow, make_engine
from tests.formedlare.conftest import (
    KIVRA_RECIPIENT,
    SENDER_ORG,
    RelayFactory,
    content,
    dev_ca,
    issue_identity,
    sign,
)


def _distributions(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(DistributionRow)).scalar_one())
    finally:
        engine.dispose()


def test_accepts_a_signed_delivery_and_is_idempotent(
    make_relay: RelayFactory, db_url: str, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    signed = sign(sender, KIVRA_RECIPIENT)

    first = relay.distribute_secure(signed)
    again = relay.distribute_secure(signed)

    assert again == first
    assert _distributions(db_url) == 1
    status = relay.check_distribution_status(first)
    assert status.state is DistributionState.PENDING
    assert status.attempts == 0
    detail = relay.distribution_detail(first)
    assert detail.sha256 == hashlib.sha256(signed).hexdigest()
    assert detail.sender_id == "16" + SENDER_ORG
    assert detail.recipient_id == KIVRA_RECIPIENT
    assert relay.refusals() == []


def test_unknown_distribution(make_relay: RelayFactory, sqlite_url: str) -> None:
    with pytest.raises(UnknownDistributionError):
        make_relay(sqlite_url).check_distribution_status("finns-inte")


def _tampered(sender: SigningIdentity, _tmp: Path) -> bytes:
    signed = sign(sender, KIVRA_RECIPIENT, subject="Beslut om bygglov")
    tampered = signed.replace(b"Beslut om bygglov", b"Beslut om bygglox")
    assert tampered != signed
    return tampered


def _unsigned(sender: SigningIdentity, _tmp: Path) -> bytes:
    from lxml import etree

    return etree.tostring(build_signed_delivery(content(KIVRA_RECIPIENT)))


def _untrusted_ca(sender: SigningIdentity, tmp: Path) -> bytes:
    stranger = issue_identity(tmp, "okand", organisation_number=SENDER_ORG)
    return sign(stranger, KIVRA_RECIPIENT)


def _other_organisation(sender: SigningIdentity, tmp: Path) -> bytes:
    # A certificate of the trusted CA, but for organisation 2120000027: it may not sign for 2120000001.
    certs = Path(tmp).parent / "certs"
    other = issue_identity(tmp, "annan", organisation_number="2120000027", issuer=dev_ca(certs))
    return sign(other, KIVRA_RECIPIENT)


def _expired(sender: SigningIdentity, tmp: Path) -> bytes:
    certs = Path(tmp).parent / "certs"
    now = dt.datetime.now(dt.UTC)
    old = issue_identity(
        tmp,
        "utgangen",
        organisation_number=SENDER_ORG,
        issuer=dev_ca(certs),
        not_before=now - dt.timedelta(days=40),
        not_after=now - dt.timedelta(days=1),
    )
    return sign(old, KIVRA_RECIPIENT)


def _not_relayed(sender: SigningIdentity, _tmp: Path) -> bytes:
    return sign(sender, KIVRA_RECIPIENT, sender_org="2120000035")


def _not_xml(sender: SigningIdentity, _tmp: Path) -> bytes:
    return b"<SignedDelivery><oj"


def _wrong_element(sender: SigningIdentity, _tmp: Path) -> bytes:
    return b'<SealedDelivery xmlns="http://minameddelanden.gov.se/schema/Message/v3"/>'


def _schema_violation(sender: SigningIdentity, _tmp: Path) -> bytes:
    signed = sign(sender, KIVRA_RECIPIENT)
    # An element the schema does not allow; the signature is irrelevant, the schema is checked first.
    return signed.replace(b"<Language>", b"<Sprak>x</Sprak><Language>", 1)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_tampered, "DIGEST_MISMATCH"),
        (_unsigned, "UNSIGNED"),
        (_untrusted_ca, "CERTIFICATE_UNTRUSTED"),
        (_other_organisation, RefusalCode.ORGANISATION_MISMATCH),
        (_expired, "CERTIFICATE_EXPIRED"),
        (_not_relayed, RefusalCode.SENDER_NOT_RELAYED),
        (_not_xml, RefusalCode.MALFORMED_XML),
        (_wrong_element, RefusalCode.NOT_SIGNED_DELIVERY),
        (_schema_violation, RefusalCode.SCHEMA_VIOLATION),
    ],
)
def test_refuses_and_records_the_refusal(
    make_relay: RelayFactory,
    sqlite_url: str,
    sender: SigningIdentity,
    tmp_path: Path,
    dev_certs: Path,
    make: object,
    code: str,
) -> None:
    (tmp_path.parent / "certs").mkdir(exist_ok=True)
    for name in ("ca.pem", "ca.key"):
        (tmp_path.parent / "certs" / name).write_bytes((dev_certs / name).read_bytes())
    assert callable(make)
    data: bytes = make(sender, tmp_path)
    relay = make_relay(sqlite_url)

    with pytest.raises(DeliveryRefusedError) as refused:
        relay.distribute_secure(data)

    assert refused.value.code == code
    assert refused.value.reason  # Swedish, for the sender's timeline
    assert _distributions(sqlite_url) == 0
    [row] = relay.refusals()
    assert row.code == code
    assert row.reason == refused.value.reason
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.size == len(data)


def test_refusal_rows_name_the_sender_and_messages_but_keep_no_content(
    make_relay: RelayFactory, db_url: str, sender: SigningIdentity
) -> None:
    relay = make_relay(db_url)
    data = sign(sender, KIVRA_RECIPIENT, sender_org="2120000035", subject="Hemligt ärende")
    with pytest.raises(DeliveryRefusedError):
        relay.distribute_secure(data)
    [row] = relay.refusals()
    assert row.sender_id == "162120000035"
    assert len(row.message_ids) == 1
    assert row.message_ids[0].startswith("msg-")
    assert "Hemligt" not in json.dumps(dataclasses.asdict(row), default=str)


def test_a_relay_for_nobody_refuses_everyone(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    relay: Relay = make_relay(sqlite_url, relayed=())
    with pytest.raises(DeliveryRefusedError) as refused:
        relay.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    assert refused.value.code == RefusalCode.SENDER_NOT_RELAYED


def test_a_resend_of_accepted_bytes_gets_the_same_id_even_when_the_checks_would_now_refuse(
    make_relay: RelayFactory, sqlite_url: str, sender: SigningIdentity
) -> None:
    # The sender crashed after handing over and resends the same bytes; meanwhile its certificate expired
    # (or it is no longer relayed). Refusing now would make it print a letter the relay is delivering.
    relay = make_relay(sqlite_url)
    signed = sign(sender, KIVRA_RECIPIENT)
    first = relay.distribute_secure(signed)
    later = make_relay(sqlite_url, relayed=(), clock=lambda: dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    assert later.distribute_secure(signed) == first
    assert later.refusals() == []
    # Other bytes from the same sender are judged afresh, and refused.
    with pytest.raises(DeliveryRefusedError) as refused:
        later.distribute_secure(sign(sender, KIVRA_RECIPIENT))
    assert refused.value.code == RefusalCode.SENDER_NOT_RELAYED
