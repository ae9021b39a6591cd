"""Builders and hypothesis strategies shared by the domain tests.

The Luhn digit is computed here from the textbook definition (double every other digit counting from
the right of the payload), independently of `kanalvaxel.domain.identity.luhn_ok`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    BodyType,
    Channel,
    Confidentiality,
    Letter,
    Notice,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.domain.rules import (
    Audience,
    CertificateFacts,
    LookupState,
    Mailbox,
    MailboxLookup,
    NoticeRule,
    Policy,
    RecipientFacts,
    Rule,
    RuleMatch,
)

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def luhn_digit(nine: str) -> str:
    """The check digit for a nine-digit payload."""
    total = 0
    for pos, ch in enumerate(reversed(nine)):
        product = int(ch) * (2 if pos % 2 == 0 else 1)
        total += sum(int(d) for d in str(product))
    return str((10 - total % 10) % 10)


def with_luhn(nine: str) -> str:
    assert len(nine) == 9
    assert nine.isdigit()
    return nine + luhn_digit(nine)


def bad_luhn(nine: str) -> str:
    good = with_luhn(nine)
    return good[:-1] + str((int(good[-1]) + 1) % 10)


def person_twelve(born: date, serial: str = "123", *, coordination: bool = False) -> str:
    """A 12-digit personnummer (or samordningsnummer) with a valid check digit."""
    day = born.day + 60 if coordination else born.day
    nine = f"{born.year % 100:02d}{born.month:02d}{day:02d}{serial}"
    return f"{born.year // 100:02d}" + with_luhn(nine)


ADDRESS = PostalAddress(lines=("Storgatan 1",), postal_code="111 22", city="Stockholm")
PERSON = RecipientId.parse("19121212-1212")
COORDINATION = RecipientId.parse("197010632391")
ORGANISATION = RecipientId.parse("202100-5448")

FULL_INFO = RecipientInfo(
    name="Tolvan Tolvansson",
    postal_address=ADDRESS,
    email="tolvan@example.se",
    mobile="+46701234567",
)


def make_letter(
    *,
    confidentiality: Confidentiality = Confidentiality.PUBLIC,
    recipient: RecipientId = PERSON,
    info: RecipientInfo = FULL_INFO,
    message_type: str = "beslut",
    sender: str = "kommunen",
) -> Letter:
    return Letter(
        sender=sender,
        recipient=recipient,
        subject="Ärende",
        body="Hej",
        body_type=BodyType.TEXT,
        confidentiality=confidentiality,
        message_type=message_type,
        support_info=SupportInfo(text="Ring oss"),
        recipient_info=info,
    )


def mailbox(
    *,
    has_mailbox: bool = True,
    pending: bool = False,
    sender_accepted: bool = True,
    service_address: str | None = "https://operator.example/mm",
) -> MailboxLookup:
    return MailboxLookup(
        LookupState.ANSWERED,
        Mailbox(
            has_mailbox=has_mailbox,
            pending=pending,
            sender_accepted=sender_accepted,
            operator_id="165560000000",
            operator_name="Operatören",
            service_address=service_address,
        ),
    )


def certificate(
    *,
    not_before: datetime = T0 - timedelta(days=30),
    not_after: datetime = T0 + timedelta(days=300),
    usable_for_encryption: bool = True,
    emails: frozenset[str] = frozenset({"tolvan@example.se"}),
    trusted: bool = True,
    problem: str | None = None,
) -> CertificateFacts:
    return CertificateFacts(
        not_before=not_before,
        not_after=not_after,
        usable_for_encryption=usable_for_encryption,
        email_addresses=emails,
        trusted=trusted,
        problem=problem,
    )


def all_good_facts(**overrides: object) -> RecipientFacts:
    """Facts under which every channel is possible."""
    kwargs: dict[str, object] = {"mailbox": mailbox(), "certificate": certificate(), "accepted_at": T0}
    kwargs.update(overrides)
    return RecipientFacts(**kwargs)  # type: ignore[arg-type]


def single_rule(*channels: Channel, notices: tuple[NoticeRule, ...] = (), **policy: timedelta) -> Policy:
    return Policy(rules=(Rule("alla", RuleMatch(), tuple(channels), notices),), **policy)


# ---------------------------------------------------------------------------------------- strategies

MESSAGE_TYPES = ("beslut", "kallelse", "faktura", "påminnelse")
SENDERS = ("kommunen", "socialtjansten", "skolan")
EMAILS = ("tolvan@example.se", "TOLVAN@Example.SE", "annan@example.se", "")

datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))


@st.composite
def recipient_ids(draw: st.DrawFn) -> RecipientId:
    kind = draw(st.sampled_from(["person", "coordination", "organisation"]))
    serial = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    if kind == "organisation":
        nine = draw(st.from_regex(r"[0-9]{2}[2-9][0-9]{3}", fullmatch=True)) + serial
        return RecipientId.parse(with_luhn(nine))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2024, 12, 31)))
    return RecipientId.parse(person_twelve(born, serial, coordination=kind == "coordination"))


def usually(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A draw from `good` about three times in four, else from `other`: keeps examples where things work."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 3 else good)


def mostly(value: object, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`value` about three times in four, else a draw from `other`."""
    return usually(st.just(value), other)


postal_addresses = mostly(ADDRESS, st.none())
recipient_infos = st.builds(
    RecipientInfo,
    name=mostly("Tolvan Tolvansson", st.sampled_from([None, ""])),
    postal_address=postal_addresses,
    email=mostly("tolvan@example.se", st.none() | st.sampled_from(EMAILS)),
    mobile=mostly("+46701234567", st.sampled_from([None, ""])),
    smime_certificate_pem=st.none() | st.just("-----BEGIN CERTIFICATE-----"),
    protected_identity=st.booleans(),
)
letters = st.builds(
    make_letter,
    confidentiality=st.sampled_from(Confidentiality),
    recipient=recipient_ids(),
    info=recipient_infos,
    message_type=st.sampled_from(MESSAGE_TYPES),
    sender=st.sampled_from(SENDERS),
)

mailboxes = st.builds(
    Mailbox,
    has_mailbox=mostly(True, st.just(False)),
    pending=mostly(False, st.just(True)),
    sender_accepted=mostly(True, st.just(False)),
    operator_id=st.none() | st.just("165560000000"),
    operator_name=st.none() | st.just("Operatören"),
    service_address=mostly("https://operator.example/mm", st.sampled_from([None, ""])),
)
mailbox_lookups = usually(
    st.builds(MailboxLookup, state=st.just(LookupState.ANSWERED), mailbox=mailboxes),
    st.builds(
        MailboxLookup,
        state=st.sampled_from(LookupState),
        mailbox=st.none() | mailboxes,
        error=st.none() | st.just("timeout"),
    ),
)
far_past, far_future = datetime(1990, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
certificates = st.builds(
    CertificateFacts,
    not_before=mostly(far_past, datetimes),
    not_after=mostly(far_future, datetimes),
    usable_for_encryption=mostly(True, st.just(False)),
    email_addresses=mostly(frozenset({"tolvan@example.se"}), st.frozensets(st.sampled_from(EMAILS))),
    trusted=mostly(True, st.just(False)),
    problem=mostly(None, st.just("not PEM")),
)
unavailable_keys: st.SearchStrategy[Channel | Notice] = st.sampled_from([*Channel, *Notice])
recipient_facts = st.builds(
    RecipientFacts,
    mailbox=mailbox_lookups,
    certificate=usually(certificates, st.none()),
    unavailable=mostly(
        {}, st.dictionaries(unavailable_keys, st.just("inte konfigurerad"), min_size=1, max_size=2)
    ),
    accepted_at=st.none() | datetimes,
)


def _maybe_set(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[frozenset[Any] | None]:
    return mostly(None, st.frozensets(elements))


rule_matches = st.builds(
    RuleMatch,
    message_types=_maybe_set(st.sampled_from(MESSAGE_TYPES)),
    confidentiality=_maybe_set(st.sampled_from(Confidentiality)),
    audience=_maybe_set(st.sampled_from(Audience)),
    protected_identity=mostly(None, st.booleans()),
    senders=_maybe_set(st.sampled_from(SENDERS)),
)
notice_rules = st.builds(
    NoticeRule,
    notice=st.sampled_from(Notice),
    with_channels=st.frozensets(st.sampled_from(Channel)),
)
rules = st.builds(
    Rule,
    name=st.text(alphabet="abcåäö ", min_size=1, max_size=8),
    match=rule_matches,
    # Arbitrary lists: any order, duplicates, empty, plain channels anywhere.
    channels=mostly(1, st.just(0)).flatmap(
        lambda least: st.lists(st.sampled_from(Channel), min_size=least, max_size=6).map(tuple)
    ),
    notices=st.lists(notice_rules, max_size=3).map(tuple),
    email_notice_only=st.booleans(),
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Any Policy object, bypassing the loader; usually (not always) ending in a catch-all rule."""
    drawn = draw(st.lists(rules, min_size=draw(mostly(1, st.just(0))), max_size=5))
    if drawn and draw(st.integers(0, 3)) < 3:
        drawn[-1] = dataclasses.replace(drawn[-1], match=RuleMatch())
    return Policy(
        rules=tuple(drawn),
        register_unavailable_wait=draw(durations),
        register_retry_interval=draw(durations),
    )
