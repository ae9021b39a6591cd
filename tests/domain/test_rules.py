from __future__ import annotations

import itertools
import re
from datetime import timedelta
from importlib.resources import files

import pytest

from kanalvaxel.domain.model import Channel, Confidentiality, Notice, RecipientInfo
from kanalvaxel.domain.rules import (
    CHANNEL_NAMES_SV,
    Audience,
    ChannelOption,
    Decision,
    LookupState,
    MailboxLookup,
    NoticeRule,
    Policy,
    RecipientFacts,
    Rule,
    RuleMatch,
    decide,
    load_policy,
)

from .factories import (
    ADDRESS,
    COORDINATION,
    FULL_INFO,
    ORGANISATION,
    PERSON,
    T0,
    all_good_facts,
    certificate,
    mailbox,
    make_letter,
    single_rule,
)

MM, EE, EMAIL, PRINT = Channel.MINA_MEDDELANDEN, Channel.EMAIL_ENCRYPTED, Channel.EMAIL, Channel.PRINT
NOW = T0 + timedelta(minutes=1)


def option(decision: Decision, channel: Channel) -> ChannelOption:
    (found,) = [o for o in decision.options if o.channel is channel]
    return found


def codes_for(channel: Channel, facts: RecipientFacts, **letter_kwargs: object) -> tuple[str, ...]:
    decision = decide(make_letter(**letter_kwargs), facts, single_rule(channel), NOW)  # type: ignore[arg-type]
    opt = option(decision, channel)
    assert opt.eligible == (opt.codes == ())
    return opt.codes


def test_everything_possible_gives_every_channel_in_rule_order() -> None:
    decision = decide(make_letter(), all_good_facts(), single_rule(PRINT, EE, MM, EMAIL), NOW)
    assert decision.channels == (PRINT, EE, MM, EMAIL)
    assert all(o.reason == "möjlig" and o.codes == () for o in decision.options)
    assert decision.retry_at is None
    assert decision.rule == "alla"


# -------------------------------------------------------------------------------- Mina meddelanden


def test_register_not_configured() -> None:
    facts = all_good_facts(mailbox=MailboxLookup.not_configured())
    assert codes_for(MM, facts) == ("REGISTER_NOT_CONFIGURED",)
    assert RecipientFacts().mailbox.state is LookupState.NOT_CONFIGURED


@pytest.mark.parametrize(
    ("has_mailbox", "pending", "sender_accepted", "service_address"),
    list(itertools.product([True, False], [True, False], [True, False], ["https://op.example", None, ""])),
)
def test_mailbox_codes_each_exactly_when_its_condition_holds(
    has_mailbox: bool, pending: bool, sender_accepted: bool, service_address: str | None
) -> None:
    facts = all_good_facts(
        mailbox=mailbox(
            has_mailbox=has_mailbox,
            pending=pending,
            sender_accepted=sender_accepted,
            service_address=service_address,
        )
    )
    expected = []
    if not has_mailbox:
        # No mailbox: the only true reason (FaR also says "not accepted" then, but that is no news).
        expected.append("NO_MAILBOX")
    else:
        if pending:
            expected.append("MAILBOX_PENDING")
        if not sender_accepted:
            expected.append("SENDER_NOT_ACCEPTED")
        if not service_address:
            expected.append("NO_OPERATOR")
    assert codes_for(MM, facts) == tuple(expected)


def test_an_unknown_recipient_has_no_mailbox_and_nothing_else() -> None:
    # What FaR answers for someone it does not know: no mailbox, no operator, sender not accepted.
    facts = all_good_facts(
        mailbox=mailbox(has_mailbox=False, pending=False, sender_accepted=False, service_address=None)
    )
    opt = option(decide(make_letter(), facts, single_rule(MM), NOW), MM)
    assert (opt.codes, opt.reason) == (("NO_MAILBOX",), "mottagaren har ingen digital brevlåda")


def test_several_mailbox_codes_read_as_one_swedish_reason() -> None:
    facts = all_good_facts(mailbox=mailbox(has_mailbox=True, pending=True, sender_accepted=False))
    opt = option(decide(make_letter(), facts, single_rule(MM), NOW), MM)
    assert opt.codes == ("MAILBOX_PENDING", "SENDER_NOT_ACCEPTED")
    assert opt.reason == (
        "mottagarens brevlåda är ännu inte aktiverad; mottagaren tar inte emot post från denna avsändare"
    )


WAIT = {"register_unavailable_wait": timedelta(hours=4), "register_retry_interval": timedelta(minutes=5)}


@pytest.mark.parametrize(
    "lookup",
    [MailboxLookup(LookupState.UNAVAILABLE, error="timeout"), MailboxLookup(LookupState.ANSWERED, None)],
)
def test_register_unavailable_inside_the_wait_chooses_nothing(lookup: MailboxLookup) -> None:
    policy = single_rule(MM, EE, EMAIL, PRINT, notices=(NoticeRule(Notice.SMS, frozenset({PRINT})),), **WAIT)
    now = T0 + timedelta(hours=1)
    decision = decide(make_letter(), all_good_facts(mailbox=lookup), policy, now)
    assert decision.retry_at == now + timedelta(minutes=5)
    assert decision.channels == ()
    assert [o.channel for o in decision.options] == [MM, EE, EMAIL, PRINT]
    assert option(decision, MM).codes == ("REGISTER_UNAVAILABLE",)
    for ch in (EE, EMAIL, PRINT):
        assert option(decision, ch).codes == ("WAITING_FOR_REGISTER",)
        assert option(decision, ch).reason == "väntar på FaR"
    assert not any(n.eligible for n in decision.notices), "no SMS while nothing is chosen"


def test_retry_is_never_later_than_the_end_of_the_wait() -> None:
    now = T0 + timedelta(hours=3, minutes=58)
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE))
    decision = decide(make_letter(), facts, single_rule(MM, PRINT, **WAIT), now)
    assert decision.retry_at == T0 + timedelta(hours=4)


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=3)])
def test_register_unavailable_after_the_wait_goes_on(after: timedelta) -> None:
    now = T0 + timedelta(hours=4) + after
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE))
    decision = decide(make_letter(), facts, single_rule(MM, PRINT, **WAIT), now)
    assert decision.retry_at is None
    assert option(decision, MM).codes == ("REGISTER_UNAVAILABLE",)
    assert decision.channels == (PRINT,)


def test_zero_wait_never_waits() -> None:
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE))
    policy = single_rule(MM, PRINT, register_unavailable_wait=timedelta(0))
    decision = decide(make_letter(), facts, policy, T0)
    assert decision.retry_at is None
    assert decision.channels == (PRINT,)


def test_wait_counts_from_now_when_accepted_at_is_unknown() -> None:
    # Documented behaviour (see the report): without accepted_at every call is "inside the wait".
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE), accepted_at=None)
    decision = decide(make_letter(), facts, single_rule(MM, PRINT, **WAIT), NOW)
    assert decision.retry_at == NOW + timedelta(minutes=5)


def test_unavailable_register_does_not_matter_when_mm_is_not_listed() -> None:
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE))
    decision = decide(make_letter(), facts, single_rule(EE, PRINT, **WAIT), NOW)
    assert decision.retry_at is None
    assert decision.channels == (EE, PRINT)


def test_mm_not_configured_here_is_not_looked_up() -> None:
    facts = all_good_facts(
        mailbox=MailboxLookup(LookupState.UNAVAILABLE), unavailable={MM: "ingen FaR-behörighet"}
    )
    decision = decide(make_letter(), facts, single_rule(MM, PRINT, **WAIT), NOW)
    assert option(decision, MM).codes == ("CHANNEL_NOT_CONFIGURED",)
    assert decision.retry_at is None
    assert decision.channels == (PRINT,)


# ------------------------------------------------------------------------------------ encrypted e-mail


def test_encrypted_email_possible() -> None:
    assert codes_for(EE, all_good_facts()) == ()


@pytest.mark.parametrize("email", [None, ""])
def test_no_email_address(email: str | None) -> None:
    info = RecipientInfo(name="A", postal_address=ADDRESS, email=email)
    assert codes_for(EE, all_good_facts(), info=info) == ("NO_EMAIL_ADDRESS",)
    assert codes_for(EMAIL, all_good_facts(), info=info) == ("NO_EMAIL_ADDRESS",)


def test_no_certificate() -> None:
    assert codes_for(EE, all_good_facts(certificate=None)) == ("NO_CERTIFICATE",)
    info = RecipientInfo(name="A", postal_address=ADDRESS)
    assert codes_for(EE, all_good_facts(certificate=None), info=info) == (
        "NO_EMAIL_ADDRESS",
        "NO_CERTIFICATE",
    )


def test_certificate_expired() -> None:
    cert = certificate(not_after=NOW - timedelta(seconds=1))
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_EXPIRED",)


def test_certificate_valid_through_not_after_inclusive() -> None:
    # RFC 5280 4.1.2.5: the validity period runs from notBefore through notAfter, inclusive.
    assert codes_for(EE, all_good_facts(certificate=certificate(not_after=NOW))) == ()
    assert codes_for(EE, all_good_facts(certificate=certificate(not_before=NOW))) == ()


def test_certificate_not_yet_valid() -> None:
    cert = certificate(not_before=NOW + timedelta(seconds=1))
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_NOT_YET_VALID",)


def test_certificate_not_for_encryption() -> None:
    cert = certificate(usable_for_encryption=False)
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_NOT_FOR_ENCRYPTION",)


def test_certificate_untrusted() -> None:
    cert = certificate(trusted=False)
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_UNTRUSTED",)


def test_certificate_for_another_address() -> None:
    cert = certificate(emails=frozenset({"annan@example.se"}))
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_EMAIL_MISMATCH",)
    assert codes_for(EE, all_good_facts(certificate=certificate(emails=frozenset()))) == (
        "CERTIFICATE_EMAIL_MISMATCH",
    )


def test_certificate_address_matches_case_insensitively() -> None:
    cert = certificate(emails=frozenset({"Annan@x.se", "TOLVAN@EXAMPLE.SE"}))
    assert codes_for(EE, all_good_facts(certificate=cert)) == ()
    info = RecipientInfo(name="A", postal_address=ADDRESS, email="Tolvan@Example.se")
    assert codes_for(EE, all_good_facts(certificate=certificate()), info=info) == ()


def test_certificate_unreadable_hides_other_problems() -> None:
    cert = certificate(problem="not PEM", trusted=False, usable_for_encryption=False, emails=frozenset())
    assert codes_for(EE, all_good_facts(certificate=cert)) == ("CERTIFICATE_UNREADABLE",)


def test_certificate_problems_together() -> None:
    cert = certificate(
        not_after=NOW - timedelta(days=1),
        usable_for_encryption=False,
        trusted=False,
        emails=frozenset({"annan@example.se"}),
    )
    assert codes_for(EE, all_good_facts(certificate=cert)) == (
        "CERTIFICATE_EXPIRED",
        "CERTIFICATE_NOT_FOR_ENCRYPTION",
        "CERTIFICATE_UNTRUSTED",
        "CERTIFICATE_EMAIL_MISMATCH",
    )


def test_encrypted_email_is_allowed_for_confidential_letters() -> None:
    assert codes_for(EE, all_good_facts(), confidentiality=Confidentiality.CONFIDENTIAL) == ()


# -------------------------------------------------------------------------------- plain e-mail, print


@pytest.mark.parametrize("confidentiality", [Confidentiality.PUBLIC, Confidentiality.INTERNAL])
def test_plain_email_for_non_confidential(confidentiality: Confidentiality) -> None:
    assert codes_for(EMAIL, all_good_facts(), confidentiality=confidentiality) == ()


def test_plain_email_refused_for_confidential_even_without_address() -> None:
    info = RecipientInfo(name="A", postal_address=ADDRESS)
    for i in (FULL_INFO, info):
        assert codes_for(EMAIL, all_good_facts(), confidentiality=Confidentiality.CONFIDENTIAL, info=i) == (
            "CONFIDENTIAL_CONTENT",
        )


@pytest.mark.parametrize(
    ("name", "address", "expected"),
    [
        ("Tolvan", ADDRESS, ()),
        ("Tolvan", None, ("NO_POSTAL_ADDRESS",)),
        (None, ADDRESS, ("NO_NAME",)),
        ("", ADDRESS, ("NO_NAME",)),
        (None, None, ("NO_POSTAL_ADDRESS", "NO_NAME")),
    ],
)
def test_print_codes(name: str | None, address: object, expected: tuple[str, ...]) -> None:
    info = RecipientInfo(name=name, postal_address=address)  # type: ignore[arg-type]
    assert codes_for(PRINT, all_good_facts(), info=info) == expected


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("confidentiality", list(Confidentiality))
def test_channel_not_configured_hides_every_fact_code(
    channel: Channel, confidentiality: Confidentiality
) -> None:
    facts = RecipientFacts(unavailable={channel: "inte konfigurerad"})  # and nothing else known
    expected = ["CHANNEL_NOT_CONFIGURED"]
    if channel is EMAIL and confidentiality is Confidentiality.CONFIDENTIAL:
        expected.append("CONFIDENTIAL_CONTENT")  # both hold, and both are said
    assert codes_for(channel, facts, info=RecipientInfo(), confidentiality=confidentiality) == tuple(expected)


# ------------------------------------------------------------------------------------------- notices


def sms(*with_channels: Channel) -> NoticeRule:
    return NoticeRule(Notice.SMS, frozenset(with_channels))


def test_sms_notice_beside_a_chosen_channel() -> None:
    decision = decide(make_letter(), all_good_facts(), single_rule(MM, PRINT, notices=(sms(PRINT),)), NOW)
    (notice,) = decision.notices
    assert notice.eligible
    assert notice.codes == ()
    assert notice.reason == "möjlig"
    assert notice.with_channels == frozenset({PRINT})


def test_sms_notice_codes() -> None:
    no_mobile = RecipientInfo(name="A", postal_address=ADDRESS, mobile="")
    policy = single_rule(MM, PRINT, notices=(sms(EMAIL),))
    facts = all_good_facts(unavailable={Notice.SMS: "ingen SMS-leverantör"})
    (notice,) = decide(make_letter(info=no_mobile), facts, policy, NOW).notices
    assert notice.codes == ("CHANNEL_NOT_CONFIGURED", "NO_MOBILE_NUMBER", "NOT_WITH_CHOSEN_CHANNEL")
    (notice,) = decide(
        make_letter(confidentiality=Confidentiality.CONFIDENTIAL),
        all_good_facts(),
        single_rule(PRINT, notices=(sms(PRINT),)),
        NOW,
    ).notices
    assert notice.codes == ("CONFIDENTIAL_CONTENT",)
    assert not notice.eligible


def test_sms_notice_needs_its_channel_to_be_eligible() -> None:
    info = RecipientInfo(name="A", email="a@example.se", mobile="+46701234567")  # no postal address
    decision = decide(
        make_letter(info=info), all_good_facts(), single_rule(PRINT, notices=(sms(PRINT),)), NOW
    )
    assert decision.channels == ()
    assert decision.notices[0].codes == ("NOT_WITH_CHOSEN_CHANNEL",)


def test_email_notice_only_is_passed_on() -> None:
    policy = Policy(rules=(Rule("r", RuleMatch(), (EMAIL,), email_notice_only=True),))
    assert decide(make_letter(), all_good_facts(), policy, NOW).email_notice_only
    assert not decide(make_letter(), all_good_facts(), single_rule(EMAIL), NOW).email_notice_only


# ------------------------------------------------------------------------------------- rule matching


def rule(name: str, **match: object) -> Rule:
    return Rule(name, RuleMatch(**match), (PRINT,))  # type: ignore[arg-type]


def matched(letter_kwargs: dict[str, object], *rules: Rule) -> str:
    policy = Policy(rules=(*rules, rule("fångar allt")))
    return decide(make_letter(**letter_kwargs), all_good_facts(), policy, NOW).rule  # type: ignore[arg-type]


def test_match_on_message_type() -> None:
    r = rule("beslut", message_types=frozenset({"beslut", "kallelse"}))
    assert matched({"message_type": "beslut"}, r) == "beslut"
    assert matched({"message_type": "kallelse"}, r) == "beslut"
    assert matched({"message_type": "faktura"}, r) == "fångar allt"


@pytest.mark.parametrize("confidentiality", list(Confidentiality))
def test_match_on_confidentiality(confidentiality: Confidentiality) -> None:
    r = rule("sekretess", confidentiality=frozenset({Confidentiality.CONFIDENTIAL}))
    expected = "sekretess" if confidentiality is Confidentiality.CONFIDENTIAL else "fångar allt"
    assert matched({"confidentiality": confidentiality}, r) == expected


@pytest.mark.parametrize(
    ("recipient", "audience"),
    [(PERSON, Audience.PERSON), (COORDINATION, Audience.PERSON), (ORGANISATION, Audience.ORGANISATION)],
)
def test_match_on_recipient_kind(recipient: object, audience: Audience) -> None:
    person = rule("person", audience=frozenset({Audience.PERSON}))
    org = rule("org", audience=frozenset({Audience.ORGANISATION}))
    both = rule("båda", audience=frozenset(Audience))
    assert matched({"recipient": recipient}, person, org) == audience.value.replace("organisation", "org")
    assert matched({"recipient": recipient}, org, person) == audience.value.replace("organisation", "org")
    assert matched({"recipient": recipient}, both) == "båda"


@pytest.mark.parametrize("protected", [True, False])
def test_match_on_protected_identity(protected: bool) -> None:
    info = RecipientInfo(name="A", postal_address=ADDRESS, protected_identity=protected)
    assert matched({"info": info}, rule("skyddad", protected_identity=True)) == (
        "skyddad" if protected else "fångar allt"
    )
    assert matched({"info": info}, rule("oskyddad", protected_identity=False)) == (
        "fångar allt" if protected else "oskyddad"
    )


def test_match_on_sender() -> None:
    r = rule("soc", senders=frozenset({"socialtjansten"}))
    assert matched({"sender": "socialtjansten"}, r) == "soc"
    assert matched({"sender": "kommunen"}, r) == "fångar allt"


def test_all_fields_of_a_match_must_hold() -> None:
    r = rule(
        "smal",
        message_types=frozenset({"beslut"}),
        confidentiality=frozenset({Confidentiality.PUBLIC}),
        audience=frozenset({Audience.PERSON}),
        protected_identity=False,
        senders=frozenset({"kommunen"}),
    )
    assert matched({}, r) == "smal"
    for change in (
        {"message_type": "faktura"},
        {"confidentiality": Confidentiality.INTERNAL},
        {"recipient": ORGANISATION},
        {"info": RecipientInfo(protected_identity=True)},
        {"sender": "skolan"},
    ):
        assert matched(change, r) == "fångar allt", change


def test_first_match_wins() -> None:
    first = Rule("först", RuleMatch(message_types=frozenset({"beslut"})), (MM,))
    second = Rule("sedan", RuleMatch(message_types=frozenset({"beslut"})), (PRINT,))
    decision = decide(make_letter(), all_good_facts(), Policy(rules=(first, second)), NOW)
    assert decision.rule == "först"
    assert [o.channel for o in decision.options] == [MM]


def test_no_rule_matches() -> None:
    policy = Policy(rules=(rule("bara faktura", message_types=frozenset({"faktura"})),))
    decision = decide(make_letter(), all_good_facts(), policy, NOW)
    assert decision.rule == "(ingen regel matchade)"
    assert decision.options == ()
    assert decision.channels == ()
    assert decision.summary() == "Regel «(ingen regel matchade)»."


def test_catch_all() -> None:
    assert RuleMatch().catch_all
    assert not RuleMatch(protected_identity=False).catch_all
    assert not RuleMatch(senders=frozenset({"a"})).catch_all


# ------------------------------------------------------------------------------------ default policy


@pytest.fixture(scope="module")
def default_policy() -> Policy:
    return load_policy((files("kanalvaxel") / "default_policy.toml").read_text("utf-8"), source="default")


def test_default_policy_durations(default_policy: Policy) -> None:
    assert default_policy.register_unavailable_wait == timedelta(hours=4)
    assert default_policy.register_retry_interval == timedelta(minutes=5)


@pytest.mark.parametrize("recipient", [PERSON, COORDINATION, ORGANISATION])
@pytest.mark.parametrize(
    ("confidentiality", "rule_name", "channels"),
    [
        (Confidentiality.PUBLIC, "ej sekretess", (MM, EE, EMAIL, PRINT)),
        (Confidentiality.INTERNAL, "ej sekretess", (MM, EE, EMAIL, PRINT)),
        (Confidentiality.CONFIDENTIAL, "sekretess", (MM, EE, PRINT)),
    ],
)
def test_default_policy_by_confidentiality(
    default_policy: Policy,
    recipient: object,
    confidentiality: Confidentiality,
    rule_name: str,
    channels: tuple[Channel, ...],
) -> None:
    letter = make_letter(confidentiality=confidentiality, recipient=recipient)  # type: ignore[arg-type]
    decision = decide(letter, all_good_facts(), default_policy, NOW)
    assert decision.rule == rule_name
    assert decision.channels == channels
    # An SMS notice beside paper for what is not confidential; never one for confidential content.
    notices = [(n.notice, n.with_channels) for n in decision.notices]
    if confidentiality is Confidentiality.CONFIDENTIAL:
        assert notices == []
    else:
        assert notices == [(Notice.SMS, frozenset({PRINT}))]


@pytest.mark.parametrize("confidentiality", list(Confidentiality))
def test_default_policy_protected_identity(default_policy: Policy, confidentiality: Confidentiality) -> None:
    info = RecipientInfo(
        name="A", postal_address=ADDRESS, email="tolvan@example.se", mobile="+467", protected_identity=True
    )
    letter = make_letter(confidentiality=confidentiality, info=info)
    decision = decide(letter, all_good_facts(), default_policy, NOW)
    assert decision.rule == "skyddad identitet"
    assert decision.channels == (MM, PRINT)


def test_default_policy_confidential_without_mailbox_goes_encrypted_then_paper(
    default_policy: Policy,
) -> None:
    letter = make_letter(confidentiality=Confidentiality.CONFIDENTIAL)
    facts = all_good_facts(mailbox=mailbox(has_mailbox=False))
    assert decide(letter, facts, default_policy, NOW).channels == (EE, PRINT)
    facts = all_good_facts(mailbox=mailbox(has_mailbox=False), certificate=None)
    assert decide(letter, facts, default_policy, NOW).channels == (PRINT,)


def test_default_policy_public_without_certificate_may_use_plain_email(default_policy: Policy) -> None:
    facts = all_good_facts(mailbox=mailbox(has_mailbox=False), certificate=None)
    assert decide(make_letter(), facts, default_policy, NOW).channels == (EMAIL, PRINT)


# ------------------------------------------------------------------------------------------ summary


def test_summary_is_swedish_and_names_each_channel() -> None:
    facts = all_good_facts(mailbox=mailbox(has_mailbox=False), certificate=None)
    letter = make_letter(confidentiality=Confidentiality.CONFIDENTIAL)
    decision = decide(
        letter, facts, Policy(rules=(Rule("sekretess", RuleMatch(), (MM, EE, EMAIL, PRINT)),)), NOW
    )
    assert decision.summary() == (
        "Regel «sekretess». "
        "Digital brevlåda (Mina meddelanden): mottagaren har ingen digital brevlåda. "
        "Krypterad e-post: inget certifikat för kryptering finns. "
        "E-post: innehållet är sekretessbelagt och får inte skickas okrypterat. "
        "Papperspost: möjlig."
    )


def test_summary_while_waiting_for_the_register() -> None:
    facts = all_good_facts(mailbox=MailboxLookup(LookupState.UNAVAILABLE))
    summary = decide(make_letter(), facts, single_rule(MM, PRINT, **WAIT), NOW).summary()
    assert summary == (
        "Regel «alla». Digital brevlåda (Mina meddelanden): FaR kunde inte nås. Papperspost: väntar på FaR."
    )


def test_every_channel_has_a_swedish_name() -> None:
    assert set(CHANNEL_NAMES_SV) == set(Channel)
    for name in CHANNEL_NAMES_SV.values():
        assert re.search(r"[a-zåäö]", name)


# ------------------------------------------------------------------ values outside the declared types


def test_plain_string_confidentiality_is_still_confidential() -> None:
    letter = make_letter(confidentiality="confidential")  # type: ignore[arg-type]
    policy = single_rule(EMAIL, PRINT, notices=(sms(PRINT),))
    decision = decide(letter, all_good_facts(), policy, NOW)
    assert decision.channels == (PRINT,)
    assert option(decision, EMAIL).codes == ("CONFIDENTIAL_CONTENT",)
    assert not decision.notices[0].eligible


@pytest.mark.parametrize("unknown", ["secret", "CONFIDENTIAL", ""])
def test_unknown_confidentiality_is_treated_as_confidential(unknown: str) -> None:
    letter = make_letter(confidentiality=unknown)  # type: ignore[arg-type]
    decision = decide(letter, all_good_facts(), single_rule(EMAIL, PRINT), NOW)
    assert decision.channels == (PRINT,)


def test_sms_in_a_code_built_policy_is_never_a_channel() -> None:
    policy = Policy(rules=(Rule("fel", RuleMatch(), (Notice.SMS, PRINT)),))  # type: ignore[arg-type]
    decision = decide(make_letter(), all_good_facts(), policy, NOW)
    assert decision.channels == (PRINT,)
    assert decision.options[0].codes == ("NOT_A_CHANNEL",)
    assert decision.summary() == (
        "Regel «fel». sms: är ingen kanal (ett SMS kan bara vara en avisering). Papperspost: möjlig."
    )


def test_plain_string_channels_are_checked_like_channels() -> None:
    policy = Policy(rules=(Rule("strängar", RuleMatch(), ("print", "email")),))  # type: ignore[arg-type]
    info = RecipientInfo(name="A", email="a@example.se")  # no postal address
    decision = decide(
        make_letter(info=info, confidentiality=Confidentiality.CONFIDENTIAL), all_good_facts(), policy, NOW
    )
    assert [o.codes for o in decision.options] == [("NO_POSTAL_ADDRESS",), ("CONFIDENTIAL_CONTENT",)]


# -------------------------------------------------------------------- skyddad identitet, notices due


def test_protected_identity_never_gets_email_or_sms_whatever_the_policy_lists() -> None:
    info = RecipientInfo(
        name="A", postal_address=ADDRESS, email="a@example.se", mobile="+46701234567", protected_identity=True
    )
    policy = single_rule(EMAIL, EE, MM, PRINT, notices=(sms(PRINT, MM),))
    decision = decide(make_letter(info=info), all_good_facts(), policy, NOW)
    assert decision.channels == (MM, PRINT)
    assert option(decision, EMAIL).codes == ("PROTECTED_IDENTITY",)
    assert option(decision, EE).codes == ("PROTECTED_IDENTITY",)
    assert decision.notices[0].codes == ("PROTECTED_IDENTITY",)
    assert "skyddad identitet" in option(decision, EMAIL).reason
    assert decision.notices_with(PRINT) == ()
    open_info = RecipientInfo(name="A", postal_address=ADDRESS, email="a@example.se", mobile="+46701234567")
    unprotected = decide(make_letter(info=open_info), all_good_facts(), policy, NOW)
    assert unprotected.channels[0] == EMAIL
    assert "PROTECTED_IDENTITY" not in option(unprotected, EE).codes
    assert unprotected.notices_with(PRINT) == (Notice.SMS,)


def test_notices_with_names_the_notices_due_for_the_channel_that_delivered() -> None:
    decision = decide(make_letter(), all_good_facts(), single_rule(MM, PRINT, notices=(sms(PRINT),)), NOW)
    assert decision.notices_with(PRINT) == (Notice.SMS,)
    assert decision.notices_with(MM) == ()


@pytest.mark.parametrize(("extra", "eligible"), [(0, True), (1, False)])
def test_a_letter_over_the_digital_size_limit_is_not_eligible_for_mina_meddelanden(
    extra: int, eligible: bool
) -> None:
    from dataclasses import replace

    from kanalvaxel.domain.model import Attachment
    from kanalvaxel.domain.rules import ChannelLimits, message_bytes

    letter = make_letter()
    big = replace(letter, attachments=(Attachment("bilaga.pdf", b"%PDF-" + b"x" * 2995),))
    # Subject and body in UTF-8, the attachment as it travels: base64, 4000 bytes for its 3000.
    assert message_bytes(big) == message_bytes(letter) + 4000
    limit = message_bytes(big) - extra
    facts = all_good_facts(limits=ChannelLimits(max_digital_bytes=limit))
    decision = decide(big, facts, single_rule(MM, PRINT), NOW)
    mm = option(decision, MM)
    assert mm.eligible is eligible
    if not eligible:
        assert mm.codes == ("MESSAGE_TOO_LARGE",)  # its own reason: FaR's answer does not matter
        assert "större än vad digital post tar emot" in mm.reason
        assert decision.channels == (PRINT,)


@pytest.mark.parametrize(("pages", "eligible"), [(6, True), (7, False), (None, True)])
def test_a_letter_with_more_pages_than_the_envelope_takes_is_not_printed(
    pages: int | None, eligible: bool
) -> None:
    from kanalvaxel.domain.rules import ChannelLimits

    facts = all_good_facts(limits=ChannelLimits(max_print_pages=6), print_pages=pages)
    opt = option(decide(make_letter(), facts, single_rule(PRINT), NOW), PRINT)
    assert (opt.eligible, opt.codes) == (eligible, () if eligible else ("TOO_MANY_PAGES",))
