"""The channel decision: a pure function of (letter, recipient facts, policy, now).

An operator edits the policy (a TOML file). Rules are tried in order; the first whose `match` fits the
letter gives the ordered channel list. Every listed channel is then checked against the facts, and the
decision keeps, for each channel, why it was chosen or skipped. Two guarantees hold whatever the policy
says: confidential content never goes to a plain channel (the loader refuses such a policy, and
`decide` refuses it again), a recipient with skyddad identitet never gets e-mail or SMS, and an SMS is only
ever a notice beside another channel.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from kanalvaxel.domain.addresses import address_key
from kanalvaxel.domain.errors import PolicyError
from kanalvaxel.domain.model import PLAIN_CHANNELS, Channel, Confidentiality, Letter, Notice, is_confidential

#: A recipient with skyddad identitet gets neither (the API promises it, whatever the policy says).
EMAIL_CHANNELS: frozenset[Channel] = frozenset({Channel.EMAIL, Channel.EMAIL_ENCRYPTED})


class Audience(enum.StrEnum):
    PERSON = "person"
    ORGANISATION = "organisation"


# --------------------------------------------------------------------------------------------- facts


class LookupState(enum.StrEnum):
    NOT_CONFIGURED = "NOT_CONFIGURED"  # this installation has no register to ask
    ANSWERED = "ANSWERED"
    UNAVAILABLE = "UNAVAILABLE"  # the register could not be asked (network, fault)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """What FaR said about one recipient, asked with this sender's organisation number."""

    has_mailbox: bool
    pending: bool
    sender_accepted: bool
    operator_id: str | None = None
    operator_name: str | None = None
    service_address: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxLookup:
    state: LookupState
    mailbox: Mailbox | None = None
    error: str | None = None

    @classmethod
    def not_configured(cls) -> MailboxLookup:
        return cls(LookupState.NOT_CONFIGURED)


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """An S/MIME certificate, read outside the domain (parsing needs a crypto library)."""

    not_before: datetime
    not_after: datetime
    usable_for_encryption: bool
    email_addresses: frozenset[str]
    trusted: bool = True
    problem: str | None = None  # set when the certificate could not be read at all


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    #: The most pages a printed letter may have (the print vendor's envelope).
    max_print_pages: int | None = None
    #: The largest message digital mail takes, attachments included (see `message_bytes`).
    max_digital_bytes: int | None = None


def message_bytes(letter: Letter) -> int:
    """How big a letter is as a message: subject and body (UTF-8) and the attachments as they travel,
    base64-encoded (4 bytes for every 3). Counting what is sent rather than the raw files keeps a letter that
    is near the limit from failing at the operator; DIGG's rule does not say which is meant."""
    return (
        len(letter.subject.encode("utf-8"))
        + len(letter.body.encode("utf-8"))
        + sum(4 * ((len(a.content) + 2) // 3) for a in letter.attachments)
    )


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    """Everything the decision needs that is not in the letter. Gathered before `decide`, never inside."""

    mailbox: MailboxLookup = field(default_factory=MailboxLookup.not_configured)
    certificate: CertificateFacts | None = None
    #: Channels and notices this installation cannot use now, with the reason (e.g. not configured).
    unavailable: Mapping[Channel | Notice, str] = field(default_factory=dict)
    #: When the letter was accepted: waiting for an unavailable register is counted from here.
    accepted_at: datetime | None = None
    #: Pages the letter takes on paper at least: the address page and every attachment page.
    print_pages: int | None = None
    #: What the channels can carry here (None: no limit).
    limits: ChannelLimits = field(default_factory=lambda: ChannelLimits())


# -------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """None means "any". A rule whose every field is None matches every letter."""

    message_types: frozenset[str] | None = None
    confidentiality: frozenset[Confidentiality] | None = None
    audience: frozenset[Audience] | None = None
    protected_identity: bool | None = None
    senders: frozenset[str] | None = None

    @property
    def catch_all(self) -> bool:
        return all(
            v is None
            for v in (
                self.message_types,
                self.confidentiality,
                self.audience,
                self.protected_identity,
                self.senders,
            )
        )

    def may_match_confidential(self) -> bool:
        return self.confidentiality is None or Confidentiality.CONFIDENTIAL in self.confidentiality

    def matches(self, letter: Letter) -> bool:
        audience = Audience.PERSON if letter.recipient.kind.is_person else Audience.ORGANISATION
        return (
            (self.message_types is None or letter.message_type in self.message_types)
            and (self.confidentiality is None or letter.confidentiality in self.confidentiality)
            and (self.audience is None or audience in self.audience)
            and (
                self.protected_identity is None
                or self.protected_identity == letter.recipient_info.protected_identity
            )
            and (self.senders is None or letter.sender in self.senders)
        )


@dataclass(frozen=True, slots=True)
class NoticeRule:
    """Send `notice` when the letter goes by one of `with_channels`."""

    notice: Notice
    with_channels: frozenset[Channel]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: RuleMatch
    channels: tuple[Channel, ...]
    notices: tuple[NoticeRule, ...] = ()
    email_notice_only: bool = False  # plain e-mail carries a notice only, no content


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    #: How long a letter waits for an unavailable FaR before it goes on to the other channels.
    register_unavailable_wait: timedelta = timedelta(hours=4)
    #: How often a waiting letter asks again.
    register_retry_interval: timedelta = timedelta(minutes=5)


# ------------------------------------------------------------------------------------------ decision


@dataclass(frozen=True, slots=True)
class ChannelOption:
    channel: Channel
    eligible: bool
    codes: tuple[str, ...]  # machine-readable, stable: why skipped (empty when eligible)
    reason: str  # Swedish, for customer service


@dataclass(frozen=True, slots=True)
class NoticeOption:
    notice: Notice
    with_channels: frozenset[Channel]
    eligible: bool
    codes: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str
    options: tuple[ChannelOption, ...]
    notices: tuple[NoticeOption, ...] = ()
    #: Set when the decision cannot be made yet (a register is unavailable): ask again at this time.
    retry_at: datetime | None = None
    email_notice_only: bool = False

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The channels to try, in order."""
        return tuple(o.channel for o in self.options if o.eligible)

    def notices_with(self, channel: Channel) -> tuple[Notice, ...]:
        """The notices to send now that the letter went by `channel`."""
        return tuple(n.notice for n in self.notices if n.eligible and channel in n.with_channels)

    def summary(self) -> str:
        """A Swedish one-paragraph explanation for customer service."""
        parts = [f"Regel «{self.rule}»."]
        for o in self.options:
            parts.append(f"{CHANNEL_NAMES_SV.get(o.channel, str(o.channel))}: {o.reason}.")
        return " ".join(parts)


CHANNEL_NAMES_SV: Mapping[Channel, str] = {
    Channel.MINA_MEDDELANDEN: "Digital brevlåda (Mina meddelanden)",
    Channel.EMAIL_ENCRYPTED: "Krypterad e-post",
    Channel.EMAIL: "E-post",
    Channel.PRINT: "Papperspost",
}

_REASONS_SV: Mapping[str, str] = {
    "CHANNEL_NOT_CONFIGURED": "kanalen är inte konfigurerad här",
    "REGISTER_NOT_CONFIGURED": "ingen uppslagning i FaR är konfigurerad",
    "REGISTER_UNAVAILABLE": "FaR kunde inte nås",
    "NO_MAILBOX": "mottagaren har ingen digital brevlåda",
    "MAILBOX_PENDING": "mottagarens brevlåda är ännu inte aktiverad",
    "SENDER_NOT_ACCEPTED": "mottagaren tar inte emot post från denna avsändare",
    "NO_OPERATOR": "FaR anger ingen brevlådeoperatör",
    "MESSAGE_TOO_LARGE": "brevet är större än vad digital post tar emot (bilagorna inräknade)",
    "TOO_MANY_PAGES": "brevet har fler sidor än vad som får plats i kuvertet",
    "CONFIDENTIAL_CONTENT": "innehållet är sekretessbelagt och får inte skickas okrypterat",
    "NO_EMAIL_ADDRESS": "ingen e-postadress angiven",
    "NO_CERTIFICATE": "inget certifikat för kryptering finns",
    "CERTIFICATE_UNREADABLE": "certifikatet kunde inte läsas",
    "CERTIFICATE_EXPIRED": "certifikatet har gått ut",
    "CERTIFICATE_NOT_YET_VALID": "certifikatet gäller ännu inte",
    "CERTIFICATE_NOT_FOR_ENCRYPTION": "certifikatet får inte användas för kryptering",
    "CERTIFICATE_EMAIL_MISMATCH": "certifikatet gäller inte mottagarens e-postadress",
    "CERTIFICATE_UNTRUSTED": "certifikatet är inte utfärdat av en betrodd utfärdare",
    "NO_MOBILE_NUMBER": "inget mobilnummer angivet",
    "NO_POSTAL_ADDRESS": "ingen postadress angiven",
    "NO_NAME": "inget mottagarnamn angivet",
    "NOT_WITH_CHOSEN_CHANNEL": "aviseringen hör inte till någon av de valda kanalerna",
    "WAITING_FOR_REGISTER": "väntar på FaR",
    "NOT_A_CHANNEL": "är ingen kanal (ett SMS kan bara vara en avisering)",
    "PROTECTED_IDENTITY": "mottagaren har skyddad identitet: aldrig e-post eller sms",
}


def reason_text(codes: tuple[str, ...]) -> str:
    return "; ".join(_REASONS_SV.get(c, c) for c in codes)


def _option(channel: Channel, codes: list[str]) -> ChannelOption:
    if codes:
        return ChannelOption(channel, False, tuple(codes), reason_text(tuple(codes)))
    return ChannelOption(channel, True, (), "möjlig")


def certificate_problems(cert: CertificateFacts | None, email: str | None, now: datetime) -> list[str]:
    """Reason codes that make `cert` unusable for encrypting to `email` at `now` (empty: usable)."""
    if cert is None:
        return ["NO_CERTIFICATE"]
    if cert.problem is not None:
        return ["CERTIFICATE_UNREADABLE"]
    codes: list[str] = []
    if now < cert.not_before:
        codes.append("CERTIFICATE_NOT_YET_VALID")
    if now > cert.not_after:  # RFC 5280 4.1.2.5: valid from notBefore through notAfter, inclusive
        codes.append("CERTIFICATE_EXPIRED")
    if not cert.usable_for_encryption:
        codes.append("CERTIFICATE_NOT_FOR_ENCRYPTION")
    if not cert.trusted:
        codes.append("CERTIFICATE_UNTRUSTED")
    # Without an address there is nothing to mismatch; the caller already says NO_EMAIL_ADDRESS.
    if email and address_key(email) not in {address_key(e) for e in cert.email_addresses}:
        codes.append("CERTIFICATE_EMAIL_MISMATCH")
    return codes


def _as_channel(value: object) -> Channel | None:
    """The Channel `value` stands for, or None (e.g. Notice.SMS); a plain "print" string counts."""
    if not isinstance(value, str):
        return None
    try:
        return Channel(value)
    except ValueError:
        return None


def decide(letter: Letter, facts: RecipientFacts, policy: Policy, now: datetime) -> Decision:
    """Choose the channels for `letter`. Pure: no I/O, no clock but `now`.

    Returns a Decision whose `options` follow the matched rule's order. When FaR could not be asked and
    the letter is still inside the policy's wait, `retry_at` is set and no channel is eligible.
    """
    rule = next((r for r in policy.rules if r.match.matches(letter)), None)
    if rule is None:
        return Decision(rule="(ingen regel matchade)", options=())
    info = letter.recipient_info
    confidential = is_confidential(letter.confidentiality)
    options: list[ChannelOption] = []
    retry_at: datetime | None = None
    for listed in rule.channels:
        channel = _as_channel(listed)
        if channel is None:
            # Only a Policy built in code can get here (the loader refuses it): e.g. Notice.SMS as a channel.
            options.append(ChannelOption(listed, False, ("NOT_A_CHANNEL",), reason_text(("NOT_A_CHANNEL",))))
            continue
        codes: list[str] = []
        if channel in facts.unavailable:
            codes.append("CHANNEL_NOT_CONFIGURED")
        if confidential and channel in PLAIN_CHANNELS:
            codes.append("CONFIDENTIAL_CONTENT")
        if info.protected_identity and channel in EMAIL_CHANNELS:
            codes.append("PROTECTED_IDENTITY")
        limits = facts.limits
        if (
            channel is Channel.MINA_MEDDELANDEN
            and limits.max_digital_bytes is not None
            and message_bytes(letter) > limits.max_digital_bytes
        ):
            codes.append("MESSAGE_TOO_LARGE")
        if (
            channel is Channel.PRINT
            and limits.max_print_pages is not None
            and facts.print_pages is not None
            and facts.print_pages > limits.max_print_pages
        ):
            codes.append("TOO_MANY_PAGES")
        if channel is Channel.MINA_MEDDELANDEN and not codes:
            lookup = facts.mailbox
            if lookup.state is LookupState.NOT_CONFIGURED:
                codes.append("REGISTER_NOT_CONFIGURED")
            elif lookup.state is LookupState.UNAVAILABLE or lookup.mailbox is None:
                waited = now - (facts.accepted_at or now)
                if waited < policy.register_unavailable_wait:
                    # Never later than the end of the wait; written so that no datetime is built beyond it.
                    retry_at = now + min(
                        policy.register_retry_interval, policy.register_unavailable_wait - waited
                    )
                codes.append("REGISTER_UNAVAILABLE")
            else:
                mb = lookup.mailbox
                if not mb.has_mailbox:
                    # With no mailbox there is nothing pending and no sender to accept or refuse.
                    codes.append("NO_MAILBOX")
                else:
                    if mb.pending:
                        codes.append("MAILBOX_PENDING")
                    if not mb.sender_accepted:
                        codes.append("SENDER_NOT_ACCEPTED")
                    if not mb.service_address:
                        codes.append("NO_OPERATOR")
        elif channel is Channel.EMAIL_ENCRYPTED and not codes:
            if not info.email:
                codes.append("NO_EMAIL_ADDRESS")
            codes.extend(certificate_problems(facts.certificate, info.email, now))
        elif channel is Channel.EMAIL and not codes:
            if not info.email:
                codes.append("NO_EMAIL_ADDRESS")
        elif channel is Channel.PRINT and not codes:
            if info.postal_address is None:
                codes.append("NO_POSTAL_ADDRESS")
            if not info.name:
                codes.append("NO_NAME")
        options.append(_option(channel, codes))
    if retry_at is not None:
        # Waiting for the register: nothing is chosen yet, so a slow FaR never sends a letter to paper.
        waiting = ("WAITING_FOR_REGISTER",)
        options = [
            o if not o.eligible else ChannelOption(o.channel, False, waiting, reason_text(waiting))
            for o in options
        ]
    chosen = {o.channel for o in options if o.eligible}
    notices: list[NoticeOption] = []
    for nr in rule.notices:
        codes = []
        if nr.notice in facts.unavailable:
            codes.append("CHANNEL_NOT_CONFIGURED")
        if confidential:
            codes.append("CONFIDENTIAL_CONTENT")
        if info.protected_identity:
            codes.append("PROTECTED_IDENTITY")
        if nr.notice == Notice.SMS and not info.mobile:
            codes.append("NO_MOBILE_NUMBER")
        if retry_at is not None:
            # Nothing is chosen while we wait for FaR, so no notice may go either.
            codes.append("WAITING_FOR_REGISTER")
        elif not (nr.with_channels & chosen):
            codes.append("NOT_WITH_CHOSEN_CHANNEL")
        notices.append(
            NoticeOption(
                nr.notice,
                nr.with_channels,
                not codes,
                tuple(codes),
                reason_text(tuple(codes)) if codes else "möjlig",
            )
        )
    return Decision(
        rule=rule.name,
        options=tuple(options),
        notices=tuple(notices),
        retry_at=retry_at,
        email_notice_only=rule.email_notice_only,
    )


# ------------------------------------------------------------------------------------ policy loading

_E = TypeVar("_E", bound=enum.StrEnum)
_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Longer durations are a typo, and `now + duration` must stay far from datetime.max.
_MAX_DURATION = timedelta(days=365)


def parse_duration(value: object, where: str) -> timedelta:
    """`"90s"`, `"30m"`, `"4h"`, `"2d"` or a number of seconds; at most 365 days."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m[1]) * _UNITS[m[2]]
    if seconds is None:
        raise PolicyError(f'{where}: expected a duration like "30m", "4h" or seconds, got {value!r}')
    if seconds > _MAX_DURATION.total_seconds():
        raise PolicyError(f"{where}: {value!r} is longer than the longest allowed duration, 365 days")
    return timedelta(seconds=seconds)


def _str_set(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: expected a non-empty list of strings")
    return frozenset(value)


def _enum_set(kind: type[_E], value: object, where: str) -> frozenset[_E]:
    out: set[_E] = set()
    for v in _str_set(value, where):
        try:
            out.add(kind(v))
        except ValueError:
            allowed = ", ".join(e.value for e in kind)
            raise PolicyError(f"{where}: unknown value {v!r} (allowed: {allowed})") from None
    return frozenset(out)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _parse_match(raw: object, where: str) -> RuleMatch:
    if raw is None:
        return RuleMatch()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table")
    _check_keys(raw, {"message_type", "confidentiality", "recipient", "protected_identity", "sender"}, where)
    protected = raw.get("protected_identity")
    if protected is not None and not isinstance(protected, bool):
        raise PolicyError(f"{where}.protected_identity: expected true or false")
    return RuleMatch(
        message_types=_str_set(raw["message_type"], f"{where}.message_type")
        if "message_type" in raw
        else None,
        confidentiality=(
            _enum_set(Confidentiality, raw["confidentiality"], f"{where}.confidentiality")
            if "confidentiality" in raw
            else None
        ),
        audience=_enum_set(Audience, raw["recipient"], f"{where}.recipient") if "recipient" in raw else None,
        protected_identity=protected,
        senders=_str_set(raw["sender"], f"{where}.sender") if "sender" in raw else None,
    )


def _parse_rule(raw: object, index: int, source: str) -> Rule:
    where = f"{source}: rule[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table")
    _check_keys(raw, {"name", "match", "channels", "notices", "email_notice_only"}, where)
    name = raw.get("name", f"regel {index + 1}")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"{where}.name: expected a non-empty string")
    where = f"{source}: rule[{index}] «{name}»"
    channels_raw = raw.get("channels")
    if not isinstance(channels_raw, list) or not channels_raw:
        raise PolicyError(f"{where}.channels: expected a non-empty list of channels")
    channels: list[Channel] = []
    for c in channels_raw:
        if c == Notice.SMS.value:
            raise PolicyError(f"{where}.channels: sms is a notice, never a channel of its own; use notices")
        try:
            ch = Channel(c)
        except ValueError:
            allowed = ", ".join(e.value for e in Channel)
            raise PolicyError(f"{where}.channels: unknown channel {c!r} (allowed: {allowed})") from None
        if ch in channels:
            raise PolicyError(f"{where}.channels: {ch.value} is listed twice")
        channels.append(ch)
    notices_raw = raw.get("notices", [])
    if not isinstance(notices_raw, list):
        raise PolicyError(
            f'{where}.notices: expected a list of tables like {{ kind = "sms", with = ["print"] }}'
        )
    notices: list[NoticeRule] = []
    for j, n in enumerate(notices_raw):
        nwhere = f"{where}.notices[{j}]"
        if not isinstance(n, dict):
            raise PolicyError(f"{nwhere}: expected a table")
        _check_keys(n, {"kind", "with"}, nwhere)
        kind = n.get("kind")
        try:
            notice = Notice(kind if isinstance(kind, str) else "")
        except ValueError:
            raise PolicyError(f"{nwhere}.kind: unknown notice {kind!r} (allowed: sms)") from None
        with_channels = _enum_set(Channel, n.get("with", []), f"{nwhere}.with")
        notices.append(NoticeRule(notice, with_channels))
    notice_only = raw.get("email_notice_only", False)
    if not isinstance(notice_only, bool):
        raise PolicyError(f"{where}.email_notice_only: expected true or false")
    match = _parse_match(raw.get("match"), f"{where}.match")
    rule = Rule(name.strip(), match, tuple(channels), tuple(notices), notice_only)
    check_rule_is_safe(rule, where)
    return rule


def check_rule_is_safe(rule: Rule, where: str) -> None:
    """Refuse a rule that could send confidential content in clear or make an SMS a channel."""
    if not rule.match.may_match_confidential():
        return
    plain = [c.value for c in rule.channels if c in PLAIN_CHANNELS]
    if plain:
        raise PolicyError(
            f"{where}: can match confidential letters but lists plain channel(s) {', '.join(plain)}; "
            'add match.confidentiality = ["public", "internal"] or remove them'
        )
    if rule.notices:
        raise PolicyError(
            f"{where}: can match confidential letters but sends notices; an SMS may not accompany "
            "confidential content — restrict match.confidentiality"
        )


def load_policy(text: str, *, source: str = "policy") -> Policy:
    """Parse and check a policy file. Raises PolicyError with a message that names the place at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
    _check_keys(data, {"rule", "register_unavailable_wait", "register_retry_interval"}, source)
    rules_raw = data.get("rule")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise PolicyError(f"{source}: needs at least one [[rule]]")
    rules = tuple(_parse_rule(r, i, source) for i, r in enumerate(rules_raw))
    if not rules[-1].match.catch_all:
        raise PolicyError(
            f"{source}: the last rule («{rules[-1].name}») must match every letter (no match table), "
            "so that no letter is left without a decision"
        )
    kwargs: dict[str, timedelta] = {}
    for key in ("register_unavailable_wait", "register_retry_interval"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{source}.{key}")
    if kwargs.get("register_retry_interval") == timedelta(0):
        # A zero interval would have a waiting letter ask FaR again at once, over and over.
        raise PolicyError(f"{source}.register_retry_interval: must be longer than zero")
    return Policy(rules=rules, **kwargs)
