from __future__ import annotations

from datetime import timedelta

import pytest

from kanalvaxel.domain.errors import KanalvaxelError, PolicyError
from kanalvaxel.domain.model import Channel, Confidentiality, Notice
from kanalvaxel.domain.rules import Audience, NoticeRule, RuleMatch, load_policy, parse_duration

CATCH_ALL = '\n[[rule]]\nname = "resten"\nchannels = ["mina_meddelanden", "print"]\n'


def load(text: str) -> object:
    return load_policy(text, source="test.toml")


def refused(text: str, *fragments: str) -> str:
    with pytest.raises(PolicyError) as info:
        load(text)
    message = str(info.value)
    assert message.startswith("test.toml"), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------- good files


def test_minimal_policy_and_defaults() -> None:
    policy = load_policy('[[rule]]\nchannels = ["print"]\n')
    (rule,) = policy.rules
    assert rule.name == "regel 1"
    assert rule.match == RuleMatch()
    assert rule.channels == (Channel.PRINT,)
    assert rule.notices == ()
    assert not rule.email_notice_only
    assert policy.register_unavailable_wait == timedelta(hours=4)
    assert policy.register_retry_interval == timedelta(minutes=5)


def test_full_policy() -> None:
    policy = load_policy(
        """
register_unavailable_wait = "2d"
register_retry_interval = 90

[[rule]]
name = "  kallelser  "
match.message_type = "kallelse"
match.confidentiality = ["public", "internal"]
match.recipient = ["person"]
match.protected_identity = false
match.sender = ["kommunen", "skolan"]
channels = ["mina_meddelanden", "email", "print"]
notices = [{ kind = "sms", with = ["print", "email"] }]
email_notice_only = true

[[rule]]
name = "sekretess"
match = { confidentiality = "confidential" }
channels = ["email_encrypted", "print"]

[[rule]]
name = "resten"
match = {}
channels = ["print"]
"""
    )
    first, second, last = policy.rules
    assert first.name == "kallelser"
    assert first.match == RuleMatch(
        message_types=frozenset({"kallelse"}),
        confidentiality=frozenset({Confidentiality.PUBLIC, Confidentiality.INTERNAL}),
        audience=frozenset({Audience.PERSON}),
        protected_identity=False,
        senders=frozenset({"kommunen", "skolan"}),
    )
    assert first.channels == (Channel.MINA_MEDDELANDEN, Channel.EMAIL, Channel.PRINT)
    assert first.notices == (NoticeRule(Notice.SMS, frozenset({Channel.PRINT, Channel.EMAIL})),)
    assert first.email_notice_only
    assert second.match.confidentiality == frozenset({Confidentiality.CONFIDENTIAL})
    assert last.match.catch_all
    assert policy.register_unavailable_wait == timedelta(days=2)
    assert policy.register_retry_interval == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"90s"', timedelta(seconds=90)),
        ('"30m"', timedelta(minutes=30)),
        ('"4h"', timedelta(hours=4)),
        ('"2d"', timedelta(days=2)),
        ('" 4 h "', timedelta(hours=4)),
        ("600", timedelta(minutes=10)),
        ("0", timedelta(0)),
        ('"0s"', timedelta(0)),
        ('"365d"', timedelta(days=365)),
    ],
)
def test_durations(value: str, expected: timedelta) -> None:
    policy = load_policy(f"register_unavailable_wait = {value}\n" + CATCH_ALL)
    assert policy.register_unavailable_wait == expected


def test_retry_interval_accepts_any_positive_duration() -> None:
    assert load_policy('register_retry_interval = "1s"\n' + CATCH_ALL).register_retry_interval == timedelta(
        seconds=1
    )


def test_non_confidential_rule_may_list_email_and_notices() -> None:
    load_policy(
        """
[[rule]]
match.confidentiality = ["public"]
channels = ["email"]
notices = [{ kind = "sms", with = ["email"] }]
"""
        + CATCH_ALL
    )


def test_email_is_fine_when_confidentiality_is_restricted_even_if_other_fields_are_not() -> None:
    load_policy('[[rule]]\nmatch.confidentiality = "internal"\nchannels = ["email"]\n' + CATCH_ALL)


# ------------------------------------------------------------------------------------------ refusals


def test_policy_error_is_ours() -> None:
    assert issubclass(PolicyError, KanalvaxelError)


@pytest.mark.parametrize(
    "text", ["[[rule]\n", "rule = ", 'x = "unterminated', "[[rule]]\nchannels = [print]"]
)
def test_invalid_toml(text: str) -> None:
    refused(text, "not valid TOML")


def test_unknown_top_level_key() -> None:
    refused("register_wait = 5\n" + CATCH_ALL, "test.toml: unknown key(s) register_wait")


def test_unknown_key_in_a_rule() -> None:
    refused(
        '[[rule]]\nname = "x"\nchannel = ["print"]\nchannels = ["print"]\n',
        "rule[0]: unknown key(s) channel",
    )


def test_unknown_key_in_a_match() -> None:
    refused(
        '[[rule]]\nname = "x"\nmatch.type = "beslut"\nchannels = ["print"]\n' + CATCH_ALL,
        "rule[0] «x».match: unknown key(s) type",
    )


def test_unknown_key_in_a_notice() -> None:
    refused(
        '[[rule]]\nname = "x"\nmatch.confidentiality = "public"\nchannels = ["print"]\n'
        'notices = [{ kind = "sms", with = ["print"], text = "hej" }]\n' + CATCH_ALL,
        "rule[0] «x».notices[0]: unknown key(s) text",
    )


def test_unknown_channel() -> None:
    message = refused(CATCH_ALL + '\n[[rule]]\nname = "y"\nchannels = ["fax"]\n', "rule[1] «y».channels")
    assert "unknown channel 'fax'" in message
    assert "mina_meddelanden, email_encrypted, email, print" in message


@pytest.mark.parametrize(
    "channels", ['["print", "print"]', '["mina_meddelanden", "print", "mina_meddelanden"]']
)
def test_channel_listed_twice(channels: str) -> None:
    refused(f'[[rule]]\nname = "x"\nchannels = {channels}\n', "rule[0] «x».channels", "listed twice")


@pytest.mark.parametrize("channels", ['["sms"]', '["print", "sms"]'])
def test_sms_as_a_channel(channels: str) -> None:
    refused(
        f'[[rule]]\nname = "x"\nchannels = {channels}\n',
        "rule[0] «x».channels",
        "sms is a notice, never a channel",
    )


@pytest.mark.parametrize(
    "match",
    [
        "",  # no match: can match anything
        'match.confidentiality = ["confidential"]\n',
        'match.confidentiality = ["public", "confidential"]\n',
        'match.message_type = ["beslut"]\n',  # confidentiality not restricted
        "match.protected_identity = true\n",
        'match.recipient = "organisation"\nmatch.sender = "kommunen"\n',
    ],
)
def test_rule_that_can_match_confidential_letters_may_not_list_email(match: str) -> None:
    refused(
        f'[[rule]]\nname = "x"\n{match}channels = ["mina_meddelanden", "email", "print"]\n' + CATCH_ALL,
        "rule[0] «x»",
        "can match confidential letters but lists plain channel(s) email",
    )


@pytest.mark.parametrize("match", ["", 'match.confidentiality = "confidential"\n', 'match.sender = "a"\n'])
def test_rule_that_can_match_confidential_letters_may_not_send_notices(match: str) -> None:
    refused(
        f'[[rule]]\nname = "x"\n{match}channels = ["print"]\n'
        'notices = [{ kind = "sms", with = ["print"] }]\n' + CATCH_ALL,
        "rule[0] «x»",
        "can match confidential letters but sends notices",
    )


def test_email_notice_only_does_not_make_plain_email_safe_for_confidential_letters() -> None:
    refused('[[rule]]\nchannels = ["email"]\nemail_notice_only = true\n', "lists plain channel(s) email")


def test_last_rule_must_be_catch_all() -> None:
    refused(
        CATCH_ALL + '\n[[rule]]\nname = "sist"\nmatch.sender = "kommunen"\nchannels = ["print"]\n',
        "the last rule («sist») must match every letter",
    )


@pytest.mark.parametrize(
    "value",
    [
        '"4"',
        '"4x"',
        '"4H"',
        '"-5m"',
        '"1.5h"',
        '"h"',
        '""',
        "-1",
        "1.5",
        "true",
        "[1]",
        '"366d"',
        "31622400",  # 366 days in seconds
        '"99999999999d"',  # would overflow timedelta
        "9223372036854775807",
        '"٤h"',  # an Arabic-Indic four
    ],
)
@pytest.mark.parametrize("key", ["register_unavailable_wait", "register_retry_interval"])
def test_bad_durations(key: str, value: str) -> None:
    refused(f"{key} = {value}\n" + CATCH_ALL, f"test.toml.{key}")


@pytest.mark.parametrize("value", ["0", '"0s"', '"0d"'])
def test_zero_retry_interval(value: str) -> None:
    refused(
        f"register_retry_interval = {value}\n" + CATCH_ALL,
        "register_retry_interval: must be longer than zero",
    )


def test_parse_duration_names_the_place() -> None:
    with pytest.raises(PolicyError, match=r"^here\.there: expected a duration"):
        parse_duration("soon", "here.there")


@pytest.mark.parametrize("text", ["", "# nothing\n", "rule = []\n", '[rule]\nchannels = ["print"]\n'])
def test_empty_rules(text: str) -> None:
    refused(text, "needs at least one [[rule]]")


@pytest.mark.parametrize(
    ("rule", "fragments"),
    [
        ('name = ""\nchannels = ["print"]', ("rule[0].name", "non-empty string")),
        ('name = 5\nchannels = ["print"]', ("rule[0].name",)),
        ('name = "x"', ("rule[0] «x».channels", "non-empty list")),
        ('name = "x"\nchannels = []', ("rule[0] «x».channels", "non-empty list")),
        ('name = "x"\nchannels = "print"', ("rule[0] «x».channels",)),
        ('name = "x"\nchannels = [5]', ("rule[0] «x».channels", "unknown channel 5")),
        ('name = "x"\nchannels = [["print"]]', ("rule[0] «x».channels", "unknown channel")),
        ('name = "x"\nchannels = ["print"]\nmatch = "all"', ("rule[0] «x».match", "expected a table")),
        ('name = "x"\nchannels = ["print"]\nmatch.message_type = []', ("rule[0] «x».match.message_type",)),
        ('name = "x"\nchannels = ["print"]\nmatch.message_type = [""]', ("rule[0] «x».match.message_type",)),
        ('name = "x"\nchannels = ["print"]\nmatch.sender = [1]', ("rule[0] «x».match.sender",)),
        (
            'name = "x"\nchannels = ["print"]\nmatch.confidentiality = ["secret"]',
            ("rule[0] «x».match.confidentiality", "unknown value 'secret'", "public, internal, confidential"),
        ),
        (
            'name = "x"\nchannels = ["print"]\nmatch.recipient = ["company"]',
            ("rule[0] «x».match.recipient", "unknown value 'company'", "person, organisation"),
        ),
        (
            'name = "x"\nchannels = ["print"]\nmatch.protected_identity = "yes"',
            ("rule[0] «x».match.protected_identity", "true or false"),
        ),
        (
            'name = "x"\nchannels = ["print"]\nemail_notice_only = "yes"',
            ("rule[0] «x».email_notice_only", "true or false"),
        ),
    ],
)
def test_bad_rule_fields(rule: str, fragments: tuple[str, ...]) -> None:
    refused(f"[[rule]]\n{rule}\n" + CATCH_ALL, *fragments)


NOTICE_RULE = '[[rule]]\nname = "x"\nmatch.confidentiality = "public"\nchannels = ["print"]\n'


@pytest.mark.parametrize(
    ("notices", "fragments"),
    [
        ("notices = 5", ("rule[0] «x».notices", "expected a list of tables")),
        ('notices = { kind = "sms", with = ["print"] }', ("rule[0] «x».notices", "expected a list")),
        ('notices = "sms"', ("rule[0] «x».notices", "expected a list")),
        ('notices = ["sms"]', ("rule[0] «x».notices[0]", "expected a table")),
        ('notices = [{ kind = "mms", with = ["print"] }]', ("rule[0] «x».notices[0].kind", "'mms'")),
        ('notices = [{ with = ["print"] }]', ("rule[0] «x».notices[0].kind", "None")),
        ('notices = [{ kind = ["sms"], with = ["print"] }]', ("rule[0] «x».notices[0].kind",)),
        ('notices = [{ kind = "sms" }]', ("rule[0] «x».notices[0].with", "non-empty list")),
        (
            'notices = [{ kind = "sms", with = ["sms"] }]',
            ("rule[0] «x».notices[0].with", "unknown value 'sms'"),
        ),
    ],
)
def test_bad_notices(notices: str, fragments: tuple[str, ...]) -> None:
    refused(NOTICE_RULE + notices + "\n" + CATCH_ALL, *fragments)


def test_rule_that_is_not_a_table() -> None:
    refused("rule = [1]\n", "rule[0]: expected a table")


def test_default_source_name() -> None:
    with pytest.raises(PolicyError, match=r"^policy: "):
        load_policy("oops = 1\n" + CATCH_ALL)
