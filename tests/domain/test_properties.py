"""Properties of `decide` and `load_policy` that must hold whatever the policy, letter and facts are."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import datetime
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kanalvaxel.domain.errors import PolicyError
from kanalvaxel.domain.identity import RecipientKind
from kanalvaxel.domain.model import PLAIN_CHANNELS, Channel, Confidentiality, Letter, Notice
from kanalvaxel.domain.rules import (
    CHANNEL_NAMES_SV,
    Audience,
    Decision,
    Policy,
    RecipientFacts,
    Rule,
    RuleMatch,
    decide,
    load_policy,
)

from .factories import MESSAGE_TYPES, SENDERS, datetimes, letters, mostly, policies, recipient_facts

#: Every code decide may give. Stored and shown to callers: a new one must be added here on purpose.
KNOWN_CODES = {
    "CHANNEL_NOT_CONFIGURED",
    "REGISTER_NOT_CONFIGURED",
    "REGISTER_UNAVAILABLE",
    "NO_MAILBOX",
    "MAILBOX_PENDING",
    "SENDER_NOT_ACCEPTED",
    "NO_OPERATOR",
    "CONFIDENTIAL_CONTENT",
    "NO_EMAIL_ADDRESS",
    "NO_CERTIFICATE",
    "CERTIFICATE_UNREADABLE",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_NOT_YET_VALID",
    "CERTIFICATE_NOT_FOR_ENCRYPTION",
    "CERTIFICATE_EMAIL_MISMATCH",
    "CERTIFICATE_UNTRUSTED",
    "NO_MOBILE_NUMBER",
    "NO_POSTAL_ADDRESS",
    "NO_NAME",
    "NOT_WITH_CHOSEN_CHANNEL",
    "WAITING_FOR_REGISTER",
    "NOT_A_CHANNEL",
    "PROTECTED_IDENTITY",
}
RAW_CODE = re.compile(r"\b[A-Z]{2,}_[A-Z_]+\b")


def is_confidential(letter: Letter) -> bool:
    return letter.confidentiality == Confidentiality.CONFIDENTIAL


def my_matches(match: RuleMatch, letter: Letter) -> bool:
    """The matching rules, written out again from the policy file's documentation."""
    audience = (
        Audience.ORGANISATION if letter.recipient.kind is RecipientKind.ORGANISATION else Audience.PERSON
    )
    checks = [
        match.message_types is None or letter.message_type in match.message_types,
        match.confidentiality is None or letter.confidentiality in match.confidentiality,
        match.audience is None or audience in match.audience,
        match.protected_identity is None
        or match.protected_identity is letter.recipient_info.protected_identity,
        match.senders is None or letter.sender in match.senders,
    ]
    return all(checks)


def first_matching(policy: Policy, letter: Letter) -> Rule | None:
    for rule in policy.rules:
        if my_matches(rule.match, letter):
            return rule
    return None


def check_invariants(
    letter: Letter, facts: RecipientFacts, policy: Policy, now: datetime, d: Decision
) -> None:
    rule = first_matching(policy, letter)
    eligible = [o for o in d.options if o.eligible]
    eligible_notices = [n for n in d.notices if n.eligible]

    # The key property: confidential content never goes in clear, and never with a notice.
    if is_confidential(letter):
        event("confidential letter")
        for o in eligible:
            assert o.channel not in PLAIN_CHANNELS
            assert o.channel != Channel.EMAIL  # independently of what PLAIN_CHANNELS says
        assert eligible_notices == []
        if rule is not None and Channel.EMAIL in rule.channels:
            event("confidential letter matched a rule listing plain e-mail")
        if rule is not None and rule.notices:
            event("confidential letter matched a rule with notices")

    # Skyddad identitet: never e-mail of either kind, never an SMS.
    if letter.recipient_info.protected_identity:
        assert not [o for o in eligible if o.channel in (Channel.EMAIL, Channel.EMAIL_ENCRYPTED)]
        assert eligible_notices == []

    # Nothing this installation cannot use now.
    for o in eligible:
        assert o.channel not in facts.unavailable
    for n in eligible_notices:
        assert n.notice not in facts.unavailable
        assert n.with_channels & set(d.channels), "a notice only beside a chosen channel"

    # The matched rule, its order, exactly.
    if rule is None:
        event("no rule matched")
        assert d.rule == "(ingen regel matchade)"
        assert d.options == ()
        assert d.notices == ()
    else:
        assert d.rule == rule.name
        assert [o.channel for o in d.options] == list(rule.channels)
        assert [(n.notice, n.with_channels) for n in d.notices] == [
            (n.notice, n.with_channels) for n in rule.notices
        ]
        assert d.email_notice_only == rule.email_notice_only
    assert d.channels == tuple(o.channel for o in eligible)

    # Codes and reasons agree with eligibility and are all known, and all have Swedish words.
    for item in (*d.options, *d.notices):
        assert item.eligible == (item.codes == ())
        assert set(item.codes) <= KNOWN_CODES
        assert len(set(item.codes)) == len(item.codes)
        assert not RAW_CODE.search(item.reason), item.reason

    # Waiting for FaR: nothing goes, and we ask again soon.
    if d.retry_at is not None:
        event("waiting for the register")
        assert eligible == []
        assert eligible_notices == []
        assert now <= d.retry_at <= now + policy.register_retry_interval
        assert Channel.MINA_MEDDELANDEN in [o.channel for o in d.options]
    elif eligible:
        event("some channel eligible")

    summary = d.summary()
    assert summary.startswith(f"Regel «{d.rule}».")
    for o in d.options:
        assert CHANNEL_NAMES_SV[o.channel] in summary
    assert not RAW_CODE.search(summary), summary


@settings(max_examples=500, deadline=None)
@given(letter=letters, facts=recipient_facts, policy=policies(), now=datetimes)
def test_decide_invariants_for_any_policy_letter_and_facts(
    letter: Letter, facts: RecipientFacts, policy: Policy, now: datetime
) -> None:
    check_invariants(letter, facts, policy, now, decide(letter, facts, policy, now))


@settings(max_examples=500, deadline=None)
@given(letter=letters, facts=recipient_facts, policy=policies(), now=datetimes)
def test_decide_never_sends_a_confidential_letter_in_clear(
    letter: Letter, facts: RecipientFacts, policy: Policy, now: datetime
) -> None:
    # The same property, with every letter confidential, so that all 500 examples test it.
    letter = dataclasses.replace(letter, confidentiality=Confidentiality.CONFIDENTIAL)
    d = decide(letter, facts, policy, now)
    assert not [o for o in d.options if o.eligible and (o.channel in PLAIN_CHANNELS or o.channel == "email")]
    assert not [n for n in d.notices if n.eligible]
    check_invariants(letter, facts, policy, now, d)


# ------------------------------------------------------------------------- values outside the types


loose_channels = st.sampled_from([*Channel, *Notice, "email", "print", "mina_meddelanden", "sms", "fax", ""])
loose_confidentiality = st.sampled_from(
    [*Confidentiality, "confidential", "public", "secret", "CONFIDENTIAL", ""]
)


@settings(max_examples=300, deadline=None)
@given(
    letter=letters,
    facts=recipient_facts,
    policy=policies(),
    channels=st.lists(loose_channels, max_size=6),
    confidentiality=loose_confidentiality,
    now=datetimes,
)
def test_untyped_values_fail_closed(
    letter: Letter,
    facts: RecipientFacts,
    policy: Policy,
    channels: list[Any],
    confidentiality: Any,
    now: datetime,
) -> None:
    """A Policy built in code, or a Letter from an untyped caller, may carry plain strings or an SMS."""
    policy = Policy(
        rules=(Rule("lös", RuleMatch(), tuple(channels), policy.rules[0].notices if policy.rules else ()),)
    )
    letter = dataclasses.replace(letter, confidentiality=confidentiality)
    d = decide(letter, facts, policy, now)
    assert [o.channel for o in d.options] == channels
    for o in d.options:
        if o.channel not in set(Channel):
            assert not o.eligible
            assert o.codes == ("NOT_A_CHANNEL",)
        if o.eligible and confidentiality not in ("public", "internal"):
            assert o.channel != "email"
    if confidentiality not in ("public", "internal"):
        assert not any(n.eligible for n in d.notices)
    d.summary()


# --------------------------------------------------------------------------------- generated TOML


SAFE_TEXT = st.text(alphabet="abcdefåäö -_", min_size=0, max_size=6)
CHANNEL_WORDS = st.sampled_from(["mina_meddelanden", "email_encrypted", "email", "print"]) | st.sampled_from(
    ["sms", "fax", "EMAIL"]
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise AssertionError(value)


def toml_document(top: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in top.items() if k != "rule"]
    for rule in top.get("rule", []):
        lines.append("[[rule]]")
        lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in rule.items())
    return "\n".join(lines) + "\n"


def one_or_list(elements: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return elements | st.lists(elements, min_size=1, max_size=3, unique=True)


match_tables = st.fixed_dictionaries(
    {},
    optional={
        "message_type": one_or_list(st.sampled_from(MESSAGE_TYPES)),
        "confidentiality": one_or_list(st.sampled_from(["public", "internal", "confidential"])),
        "recipient": one_or_list(st.sampled_from(["person", "organisation"])),
        "protected_identity": st.booleans(),
        "sender": one_or_list(st.sampled_from(SENDERS)),
    },
)
notice_tables = st.fixed_dictionaries(
    {
        "kind": st.just("sms"),
        "with": st.lists(st.sampled_from([c.value for c in Channel]), min_size=1, max_size=3),
    }
)
rule_tables = st.fixed_dictionaries(
    {"channels": st.lists(CHANNEL_WORDS, min_size=1, max_size=4, unique=True)},
    optional={
        "name": mostly("regel", SAFE_TEXT),
        "match": match_tables,
        "notices": st.lists(notice_tables, max_size=2),
        "email_notice_only": st.booleans(),
    },
)
durations_text = mostly("4h", st.sampled_from(["90s", "30m", "2d", "0s", "400d"]) | st.integers(0, 10**6))


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Policy files as data; most of them pass the loader, so the accepted ones get tested."""
    document = draw(
        st.fixed_dictionaries(
            {"rule": st.lists(rule_tables, min_size=1, max_size=5)},
            optional={"register_unavailable_wait": durations_text, "register_retry_interval": durations_text},
        )
    )
    if draw(st.integers(0, 3)) == 3:
        return document  # as drawn: usually refused, sometimes by luck accepted
    # Otherwise repair most of what the loader would refuse, so that accepted files get tested a lot.
    if draw(st.integers(0, 7)) < 7:
        document["rule"][-1].pop("match", None)
    for table in document["rule"]:
        table["channels"] = [c for c in table["channels"] if c in {ch.value for ch in Channel}] or ["print"]
        if may_match_confidential(table) and draw(st.integers(0, 7)) < 7:
            if table is not document["rule"][-1] and draw(st.booleans()):
                table.setdefault("match", {})["confidentiality"] = ["public", "internal"]
            else:
                table["channels"] = [c for c in table["channels"] if c != "email"] or ["print"]
                table.pop("notices", None)
    return document


def may_match_confidential(table: dict[str, Any]) -> bool:
    conf = table.get("match", {}).get("confidentiality")
    return conf is None or "confidential" in ([conf] if isinstance(conf, str) else conf)


@settings(max_examples=500, deadline=None)
@given(document=policy_documents(), data=st.data())
def test_an_accepted_policy_file_never_lets_confidential_letters_match_plain_channels(
    document: dict[str, Any], data: st.DataObject
) -> None:
    text = toml_document(document)
    try:
        policy = load_policy(text)
    except PolicyError:
        event("generated policy refused")
        return
    event("generated policy accepted")
    assert len(policy.rules) == len(document["rule"])
    for table, rule in zip(document["rule"], policy.rules, strict=True):
        assert [c.value for c in rule.channels] == table["channels"]
        if may_match_confidential(table):
            assert "email" not in table["channels"]
            assert not table.get("notices")
            assert not set(rule.channels) & PLAIN_CHANNELS
            assert rule.notices == ()
    letter = dataclasses.replace(data.draw(letters), confidentiality=Confidentiality.CONFIDENTIAL)
    rule = first_matching(policy, letter)
    assert rule is not None, "the last rule of an accepted policy matches every letter"
    assert not set(rule.channels) & PLAIN_CHANNELS
    assert rule.notices == ()
    facts, now = data.draw(recipient_facts), data.draw(datetimes)
    check_invariants(letter, facts, policy, now, decide(letter, facts, policy, now))


toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | SAFE_TEXT
    | st.sampled_from(["sms", "email", "print", "confidential", "4h", "person", "x"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(SAFE_TEXT | st.sampled_from(["kind", "with"]), inner, max_size=3)
    ),
    max_leaves=8,
)
RULE_KEYS = ["name", "match", "channels", "notices", "email_notice_only", "other"]
MATCH_KEYS = ["message_type", "confidentiality", "recipient", "protected_identity", "sender", "other"]
fuzzed_rules = st.dictionaries(
    st.sampled_from(RULE_KEYS),
    toml_values | st.dictionaries(st.sampled_from(MATCH_KEYS), toml_values, max_size=3),
    max_size=5,
)
fuzzed_documents = st.dictionaries(
    st.sampled_from(["rule", "register_unavailable_wait", "register_retry_interval", "other"]),
    toml_values | st.lists(fuzzed_rules, max_size=3) | st.lists(rule_tables, min_size=1, max_size=2),
    max_size=3,
)


@settings(max_examples=500, deadline=None)
@given(fuzzed_documents)
def test_load_policy_raises_only_policy_error_on_wrongly_typed_files(document: dict[str, Any]) -> None:
    top = {k: v for k, v in document.items() if k != "rule"}
    rules = document.get("rule")
    text = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in top.items())
    if rules is not None:
        text += f"\nrule = {toml_value(rules)}\n"
    assert outcome_of_loading(text) in ("accepted", "refused")


def outcome_of_loading(text: str) -> str:
    """Anything but PolicyError escapes and fails the test; a refusal must name the place (the source)."""
    message = None
    try:
        load_policy(text)
    except PolicyError as exc:
        message = str(exc)
    if message is None:
        event("accepted")
        return "accepted"
    event("refused")
    assert message.startswith("policy"), message
    return "refused"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_load_policy_raises_only_policy_error_on_any_text(text: str) -> None:
    assert outcome_of_loading(text) in ("accepted", "refused")
