"""SMS notices: the text rules (numbers, length, the Swedish notice) and the client of an HTTP SMS gateway.

An SMS is only ever a notice beside another channel, and only for letters that are not confidential; the
caller guarantees that. Nothing here sees more of a letter than the sender's name, its subject and the
support contact.

The gateway protocol (ours, modelled on common Swedish SMS gateways)::

    POST {url}/messages
    Authorization: Bearer <token>
    Idempotency-Key: <reference>
    Content-Type: application/json

    {"to": "+46701234567", "from": "<sender id>", "text": "...", "reference": "<reference>"}

- ``201 Created`` ``{"id": "...", "parts": n}``: accepted and sent.
- ``200 OK`` with the same body: this Idempotency-Key was seen before; it is the same message, not sent again.
- ``400``/``422``: the request is wrong (a problem+json body says why); ``401``/``403``: the token is refused;
  ``409``: the Idempotency-Key was used before for another message. None of these is retried.
- ``429``/``5xx``, timeouts and connection errors are retried inside one :meth:`SmsGateway.send`
  (``Retry-After`` in seconds is honoured up to a few seconds) and then raised as retryable. Because every
  try carries the same Idempotency-Key, a retry after a lost answer never sends a second SMS.

Length rules (3GPP TS 23.038 / 23.040): a text entirely in the GSM 03.38 alphabet is sent as GSM-7, 160
septets in one part or 153 per part when concatenated; a character of the extension table takes two septets
(escape + character), and the pair is never split across parts. Any other character makes the whole text
UCS-2: 70 UTF-16 code units in one part, 67 per part, a surrogate pair never split.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import ssl
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from kanalvaxel.domain.errors import KanalvaxelError
from kanalvaxel.domain.masking import mask_mobile
from kanalvaxel.domain.model import Channel, SupportInfo

log = logging.getLogger(__name__)


class SmsError(KanalvaxelError):
    """An SMS that cannot be sent as asked (an unusable number, a text too long, a bad configuration).
    Sending it again unchanged cannot help."""


class SmsGatewayError(SmsError):
    """The gateway did not accept the SMS. ``retryable``: a later try can succeed (5xx, 429, timeout,
    network); ``status``: the HTTP status, None when there was no answer; ``retry_after``: seconds the
    gateway asked us to wait, when it said so."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------- numbers

_E164_MAX_DIGITS = 15
# Shorter than any mobile number anywhere with its country code; shorter input is a typo or an extension.
_E164_MIN_DIGITS = 8
_SEPARATORS = re.compile(r"[\s\-./()]")
_SWEDEN = "46"
# PTS numbering plan: 070, 072, 073, 076 and 079 are mobile telephony. 071 is M2M, 074 paging, 075 personal
# numbers, 077/078 shared-cost and other services: none reaches a person's phone reliably.
_SWEDISH_MOBILE = re.compile(r"7[02369][0-9]{7}")


def normalise_mobile(number: str, default_country_code: str = "46") -> str:
    """A mobile number in E.164 form (``+46701234567``) from how people write it: ``070-123 45 67``,
    ``0701234567``, ``+46 70 123 45 67``, ``+46 (0)70 123 45 67``, ``0046701234567``.

    A number with a leading single 0 is national in ``default_country_code``. Raises SmsError for anything
    else: letters or other symbols, a number without country code or trunk 0 (``701234567`` is ambiguous),
    too few or more than 15 digits, or a Swedish number that is not a mobile number (070/072/073/076/079).
    The message never repeats the number (it ends up in logs and events)."""
    if not re.fullmatch(r"[1-9][0-9]{0,2}", default_country_code):
        raise SmsError(f"ogiltig landskod: {default_country_code!r}")
    raw = number.strip()
    # "+46 (0)70 …": the trunk 0 written in brackets after the country code belongs to national dialling only.
    raw = raw.replace("(0)", "")
    compact = _SEPARATORS.sub("", raw)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.startswith("0"):
        digits = default_country_code + compact[1:]
    elif compact == "":
        raise SmsError("mobilnumret är tomt")
    else:
        raise SmsError("mobilnumret saknar landsnummer eller inledande 0")
    # ASCII digits only: str.isdigit() would let through fullwidth and other scripts' digits.
    if not re.fullmatch(r"[0-9]+", digits):
        raise SmsError("mobilnumret innehåller annat än siffror")
    if digits.startswith("0"):
        raise SmsError("mobilnumret har ett ogiltigt landsnummer")
    if digits.startswith(_SWEDEN):
        national = digits[len(_SWEDEN) :]
        # "+46 070 …": a trunk 0 kept after the country code is a common way of writing it.
        if national.startswith("0"):
            national = national[1:]
        if not _SWEDISH_MOBILE.fullmatch(national):
            raise SmsError(
                "numret är inte ett svenskt mobilnummer (070, 072, 073, 076 eller 079 och 10 siffror)"
            )
        digits = _SWEDEN + national
    if len(digits) > _E164_MAX_DIGITS:
        raise SmsError(f"mobilnumret har fler än {_E164_MAX_DIGITS} siffror")
    if len(digits) < _E164_MIN_DIGITS:
        raise SmsError("mobilnumret är för kort")
    return "+" + digits


# --------------------------------------------------------------------------------------------- length

# GSM 03.38 default alphabet without the escape (0x1B), which is not a character of its own.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as escape + character, two septets.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_CONCATENATED = {"GSM-7": 153, "UCS-2": 67}


@dataclass(frozen=True, slots=True)
class SmsLength:
    """How a text goes out: ``units`` are septets (GSM-7) or UTF-16 code units (UCS-2); ``parts`` the number
    of SMS it takes (an empty text still takes one)."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    parts: int


def _is_gsm7(text: str) -> bool:
    return all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text)


def sms_length(text: str) -> SmsLength:
    """The encoding, size and number of parts of ``text`` (see the module docstring for the rules)."""
    if _is_gsm7(text):
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
        costs = [2 if c in _GSM7_EXTENSION else 1 for c in text]
    else:
        encoding = "UCS-2"
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
    units = sum(costs)
    if units <= _SINGLE[encoding]:
        return SmsLength(encoding, units, 1)
    # Concatenated: fill each part greedily; a two-unit character that does not fit starts the next part.
    capacity = _CONCATENATED[encoding]
    parts, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            parts += 1
            used = 0
        used += cost
    return SmsLength(encoding, units, parts)


# --------------------------------------------------------------------------------------------- notice text

_VIA_SENTENCE = {
    Channel.PRINT: "Det kommer med posten.",
    Channel.EMAIL: "Det har skickats till din e-post.",
    Channel.EMAIL_ENCRYPTED: "Det har skickats krypterat till din e-post.",
    Channel.MINA_MEDDELANDEN: "Läs det i din digitala brevlåda.",
}
# Left-to-right/right-to-left marks, embeddings, overrides and isolates: invisible, and able to make a
# subject read differently on the phone than in our records.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Fewer characters of a subject than this tell the recipient nothing; then the subject sentence goes.
_MIN_SUBJECT_CHARS = 8


def _clean(value: str | None) -> str:
    """One line of visible text: control characters become spaces, runs of space collapse."""
    if not value:
        return ""
    chars = [
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value if c not in _BIDI_CONTROLS
    ]
    return " ".join("".join(chars).split())


def _shortened(value: str, keep: int) -> str:
    """``value`` cut to at most ``keep`` characters, with an ellipsis."""
    cut = value[:keep].rstrip()
    # End at a word boundary when that loses little, so the subject does not stop in the middle of a word.
    space = cut.rfind(" ")
    if not value[keep].isspace() and space >= max(_MIN_SUBJECT_CHARS, keep - 12):
        cut = cut[:space].rstrip()
    # "..." keeps a GSM-7 text in GSM-7 (160 characters a part, not 70); "…" only where UCS-2 is paid anyway.
    return cut + ("..." if _is_gsm7(cut) else "…")


def _longest_fitting(value: str, build: Callable[[str], str], max_parts: int, minimum: int) -> str | None:
    """The longest shortening of ``value`` (``minimum`` or more characters kept) for which ``build`` fits in
    ``max_parts``; None if none does."""

    def fits(keep: int) -> bool:
        return sms_length(build(_shortened(value, keep))).parts <= max_parts

    lengths = range(minimum, len(value))
    # Keeping more never takes fewer parts, so a binary search finds the first length that does not fit.
    # The word-boundary cut and the choice of ellipsis bend that slightly; the walk down below absorbs it.
    index = bisect.bisect_left(lengths, True, key=lambda keep: not fits(keep)) - 1
    while index >= 0 and not fits(lengths[index]):
        index -= 1
    return _shortened(value, lengths[index]) if index >= 0 else None


def notice_text(
    sender_name: str, subject: str, via: Channel, support: SupportInfo, *, max_parts: int = 2
) -> str:
    """The Swedish SMS telling the recipient a letter is on its way, for example::

        Du har fått ett brev från Sandlådans kommun: "Beslut om bygglov". Det kommer med posten.
        Frågor: 08-123 45 67

    ``via`` chooses the second sentence; the contact is ``support.phone``, else ``support.url``, else none.
    The text never takes more than ``max_parts`` SMS: first the subject is shortened (with an ellipsis), then
    its sentence is dropped, then the contact, and only then the sender's name shortened. Characters are kept
    as given (a subject in, say, Polish makes the SMS UCS-2); our own punctuation is GSM-7 ('"' and "...")
    so a text that could be GSM-7 stays GSM-7. Control characters in the inputs become spaces."""
    if max_parts < 1:
        raise ValueError("max_parts must be at least 1")
    sender = _clean(sender_name)
    title = _clean(subject)
    ask = _clean(support.phone) or _clean(support.url)
    via_sentence = _VIA_SENTENCE[via]

    def text(sender: str, title: str | None, ask: str) -> str:
        opening = f"Du har fått ett brev från {sender}" if sender else "Du har fått ett brev"
        opening += f': "{title}".' if title else "."
        return " ".join(part for part in (opening, via_sentence, f"Frågor: {ask}" if ask else "") if part)

    def fits(candidate: str) -> bool:
        return sms_length(candidate).parts <= max_parts

    if fits(full := text(sender, title, ask)):
        return full
    if title:
        shortened = _longest_fitting(title, lambda t: text(sender, t, ask), max_parts, _MIN_SUBJECT_CHARS)
        if shortened is not None:
            return text(sender, shortened, ask)
    if fits(without_subject := text(sender, None, ask)):
        return without_subject
    # A phone number or address cut short would be wrong, so the contact goes whole.
    if fits(bare := text(sender, None, "")):
        return bare
    name = _longest_fitting(sender, lambda s: text(s, None, ""), max_parts, 1)
    # The fixed sentences are GSM-7 and shorter than 160 septets, so with no name at all the text fits.
    return text(name or "", None, "")


# --------------------------------------------------------------------------------------------- gateway

_SENDER_ID = re.compile(r"[A-Za-z0-9 ]{1,11}")
# Visible ASCII: it travels as an HTTP header value.
_REFERENCE = re.compile(r"[!-~]{1,200}")
_BACKOFF_SECONDS = 0.25
# Longer waits than this are the durable retry's business (minutes apart), not one call's.
_RETRY_AFTER_CAP_SECONDS = 5.0
_DETAIL_CHARS = 300
_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 \-]{5,}[0-9]")


def _check_sender_id(sender_id: str) -> None:
    if not _SENDER_ID.fullmatch(sender_id):
        raise SmsError("avsändar-id för SMS ska vara 1–11 tecken A–Z, a–z, 0–9 eller mellanslag")


@dataclass(frozen=True, slots=True)
class SmsGatewayConfig:
    """Where and how to reach the gateway. ``retries`` are extra tries within one send (5xx, 429, network);
    ``max_parts`` refuses longer texts before anything is sent. Raises SmsError for invalid values."""

    url: str
    token: str = field(repr=False)
    sender_id: str
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retries: int = 2
    ca_bundle: Path | None = None
    max_parts: int = 3

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^/\s]+", self.url):
            raise SmsError("SMS-tjänstens adress ska börja med https:// (eller http://)")
        if not self.token or any(c.isspace() for c in self.token):
            raise SmsError("SMS-tjänstens token saknas eller innehåller blanksteg")
        _check_sender_id(self.sender_id)
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise SmsError("tidsgränserna för SMS-tjänsten ska vara större än noll")
        if self.retries < 0:
            raise SmsError("antalet omförsök får inte vara negativt")
        if self.max_parts < 1:
            raise SmsError("max antal SMS-delar ska vara minst 1")


@dataclass(frozen=True, slots=True)
class SmsReceipt:
    """The gateway's id for the SMS and how many parts it took. ``already_sent``: the gateway had this
    reference already (answer 200) and did not send it again."""

    message_id: str
    parts: int
    already_sent: bool = False


class SmsGateway:
    """Client of the HTTP SMS gateway (protocol in the module docstring). Thread-safe; ``close()`` when done.

    ``transport`` replaces the network (tests, or a transport with a client certificate); ``sleep`` is what
    waits between tries (tests pass a recorder)."""

    def __init__(
        self,
        config: SmsGatewayConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._endpoint = config.url.rstrip("/") + "/messages"
        verify: ssl.SSLContext | bool = True
        if config.ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(config.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise SmsError(
                    f"kan inte läsa CA-filen för SMS-tjänsten ({config.ca_bundle}): {exc}"
                ) from exc
        self._client = httpx.Client(
            transport=transport,
            verify=verify,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.read_timeout,
                pool=config.connect_timeout,
            ),
            headers={"Authorization": f"Bearer {config.token}", "User-Agent": "kanalvaxel-sms"},
        )

    def send(self, to: str, text: str, *, reference: str, sender_id: str | None = None) -> SmsReceipt:
        """Send ``text`` to the mobile number ``to`` (normalised first) from ``sender_id`` (default: the
        configured one). ``reference`` is the Idempotency-Key: sending again with the same reference returns
        the same message id and no second SMS (receipt ``already_sent``).

        Raises SmsError before any request for an unusable number, sender id or reference, an empty text or
        one longer than ``max_parts``; SmsGatewayError when the gateway refuses (``retryable`` says whether a
        later try can help)."""
        number = normalise_mobile(to)
        originator = self._config.sender_id if sender_id is None else sender_id
        _check_sender_id(originator)
        if not _REFERENCE.fullmatch(reference):
            raise SmsError("referensen ska vara 1–200 synliga ASCII-tecken")
        if not text:
            raise SmsError("SMS-texten är tom")
        length = sms_length(text)
        if length.parts > self._config.max_parts:
            raise SmsError(
                f"SMS-texten tar {length.parts} delar ({length.encoding}, {length.units} tecken); "
                f"högst {self._config.max_parts} är tillåtna"
            )
        payload = {"to": number, "from": originator, "text": text, "reference": reference}
        masked = mask_mobile(number)
        tries = self._config.retries + 1
        for attempt in range(1, tries + 1):
            try:
                receipt = self._post(payload, reference)
            except SmsGatewayError as exc:
                if not exc.retryable or attempt == tries:
                    log.warning(
                        "SMS till %s (referens %s) gick inte fram efter %d försök: %s",
                        masked,
                        reference,
                        attempt,
                        exc,
                    )
                    raise
                wait = _BACKOFF_SECONDS * 2 ** (attempt - 1)
                if exc.retry_after is not None:
                    if exc.retry_after > _RETRY_AFTER_CAP_SECONDS:
                        # The gateway asks for a long pause: honour it by giving up now, not by blocking here.
                        log.warning(
                            "SMS-tjänsten ber om %.0f s paus (referens %s)", exc.retry_after, reference
                        )
                        raise
                    wait = max(wait, exc.retry_after)
                log.info(
                    "SMS-försök %d av %d misslyckades (%s); nytt försök om %.2f s", attempt, tries, exc, wait
                )
                self._sleep(wait)
                continue
            log.info(
                "SMS till %s skickat: id %s, %d delar, referens %s%s",
                masked,
                receipt.message_id,
                receipt.parts,
                reference,
                " (redan skickat tidigare)" if receipt.already_sent else "",
            )
            return receipt
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    def _post(self, payload: dict[str, str], reference: str) -> SmsReceipt:
        try:
            response = self._client.post(self._endpoint, json=payload, headers={"Idempotency-Key": reference})
        except httpx.TimeoutException as exc:
            raise SmsGatewayError(
                f"SMS-tjänsten svarade inte i tid ({type(exc).__name__})", retryable=True
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise SmsGatewayError(f"felaktig adress till SMS-tjänsten: {exc}", retryable=False) from exc
        except httpx.TransportError as exc:
            if _certificate_refused(exc):
                # Our trust configuration or their certificate is wrong; trying again changes neither.
                raise SmsGatewayError(
                    f"SMS-tjänstens certifikat godtas inte: {exc}", retryable=False
                ) from exc
            raise SmsGatewayError(f"kunde inte nå SMS-tjänsten: {exc}", retryable=True) from exc
        return _receipt(response)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SmsGateway:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _certificate_refused(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _receipt(response: httpx.Response) -> SmsReceipt:
    status = response.status_code
    if status in (200, 201):
        try:
            body = response.json()
            message_id = body["id"]
            parts = body.get("parts", 1)
            if not isinstance(message_id, str) or not message_id or not isinstance(parts, int) or parts < 1:
                raise TypeError("id or parts of the wrong type")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # It may have been sent; a later try with the same Idempotency-Key is answered, not resent.
            raise SmsGatewayError(
                f"SMS-tjänsten svarade {status} med ett oläsbart svar", retryable=True, status=status
            ) from exc
        return SmsReceipt(message_id, parts, already_sent=status == 200)
    detail = _problem_detail(response)
    if status == 429 or status == 408 or status >= 500:
        raise SmsGatewayError(
            f"SMS-tjänsten är tillfälligt otillgänglig ({status}){detail}",
            retryable=True,
            status=status,
            retry_after=_retry_after(response),
        )
    if status in (401, 403):
        raise SmsGatewayError(
            f"SMS-tjänsten godtar inte vår token ({status}){detail}", retryable=False, status=status
        )
    if status == 409:
        raise SmsGatewayError(
            f"referensen är redan använd för ett annat SMS ({status}){detail}", retryable=False, status=status
        )
    if status in (400, 422):
        raise SmsGatewayError(
            f"SMS-tjänsten avvisade SMS:et ({status}){detail}", retryable=False, status=status
        )
    raise SmsGatewayError(
        f"oväntat svar från SMS-tjänsten ({status}){detail}", retryable=False, status=status
    )


def _problem_detail(response: httpx.Response) -> str:
    """The gateway's own words: problem+json ``title``/``detail``, an ``error`` field, or plain text."""
    text = ""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text
    else:
        if isinstance(body, dict):
            parts = [body.get(k) for k in ("title", "detail", "error", "message")]
            text = ": ".join(str(p) for p in parts if p)
            if not text:
                text = json.dumps(body, ensure_ascii=False)
        else:
            text = json.dumps(body, ensure_ascii=False)
    # A gateway may quote the number it refused; it must not reach our logs and events in full.
    text = _PHONE_LIKE.sub(lambda m: mask_mobile(_SEPARATORS.sub("", m.group())), _clean(text))
    text = text[:_DETAIL_CHARS]
    return f": {text}" if text else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
