"""What the text fields of a letter may hold, and what is normalised, for every door a letter comes in by.

Every channel downstream has its own trap: a line break in a subject ends an e-mail header, U+2028 or U+0085
breaks a header just as well, a bidi override reverses what a recipient reads on paper (``‮gnp.pdf`` shows
as ``fdp.png``), a zero-width character makes two names that look alike differ, U+FFFF and lone surrogates
are not text at all (XML 1.0 and PostgreSQL refuse them), and an attachment name like ``..``, ``CON`` or
``a:b.pdf`` means something to a file system. So a letter is checked once, here, at intake, and a refusal
names the field.

Two kinds of field:

* **one line** (subject, names, address lines, case reference, message type, support phone/URL/e-mail, file
  names): no control characters at all (C0 with tab and line breaks, DEL, C1 with U+0085), no line or
  paragraph separators, no bidi embeddings, overrides, isolates or marks, no zero-width or other invisible
  format characters, no noncharacters or surrogates. Normalised to NFC, with leading and trailing white
  space removed.
* **running text** (the body, the support text): tab and line breaks are allowed; CR LF, CR, U+0085,
  U+2028 and U+2029 become LF; zero-width spaces, word joiners and byte-order marks are removed; bidi
  embeddings, overrides and isolates, other control characters, noncharacters and surrogates are refused.
  Zero-width joiners (emoji, Indic and Persian scripts) and the directional marks LRM, RLM and ALM stay.

`ONE_LINE_PATTERN` and `RUNNING_TEXT_PATTERN` state the same rules as regular expressions, for the API's
published schema; the checks below are built from the same ranges.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import replace

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.model import Attachment, Letter, PostalAddress, RecipientInfo, SupportInfo

Ranges = tuple[tuple[int, int], ...]

_NONCHARACTERS: Ranges = (
    (0xFDD0, 0xFDEF),
    *tuple((plane * 0x10000 + 0xFFFE, plane * 0x10000 + 0xFFFF) for plane in range(17)),
)
_SURROGATES: Ranges = ((0xD800, 0xDFFF),)
_BIDI_CONTROLS: Ranges = ((0x202A, 0x202E), (0x2066, 0x2069))
_BIDI_MARKS: Ranges = ((0x061C, 0x061C), (0x200E, 0x200F))
_ZERO_WIDTH_JOINERS: Ranges = ((0x200C, 0x200D),)
#: Removed from running text: invisible, and copy-paste from word processors is full of them.
_STRIPPED: Ranges = ((0x200B, 0x200B), (0x2060, 0x2060), (0xFEFF, 0xFEFF))
#: Other invisible format characters (soft hyphen, Mongolian vowel separator, invisible operators,
#: deprecated format characters, interlinear annotations, tags).
_OTHER_FORMAT: Ranges = (
    (0x00AD, 0x00AD),
    (0x180E, 0x180E),
    (0x2061, 0x2065),
    (0x206A, 0x206F),
    (0xFFF9, 0xFFFB),
    (0xE0000, 0xE007F),
)

ONE_LINE_REFUSED: Ranges = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x2028, 0x2029),
    *_BIDI_CONTROLS,
    *_BIDI_MARKS,
    *_ZERO_WIDTH_JOINERS,
    *_STRIPPED,
    *_OTHER_FORMAT,
    *_NONCHARACTERS,
    *_SURROGATES,
)
RUNNING_TEXT_REFUSED: Ranges = (
    (0x00, 0x08),
    (0x0B, 0x0C),
    (0x0E, 0x1F),
    (0x7F, 0x84),
    (0x86, 0x9F),
    *_BIDI_CONTROLS,
    *_NONCHARACTERS,
    *_SURROGATES,
)


def _char_class(ranges: Ranges) -> str:
    def esc(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


#: The end of the text, in every engine: Python's `$` also matches before a final line break.
_END = "(?![\\s\\S])"


def _pattern(ranges: Ranges) -> str:
    return f"^[^{_char_class(ranges)}]*{_END}"


def _published(ranges: Ranges) -> Ranges:
    # Patterns name code points of the Basic Multilingual Plane only, and never surrogates (no regular
    # expression engine outside JavaScript takes them); the checks refuse those too.
    return tuple(r for r in ranges if r[1] <= 0xFFFF and r not in _SURROGATES)


#: The rules as regular expressions in the syntax JSON Schema uses (ECMAScript).
ONE_LINE_PATTERN = _pattern(_published(ONE_LINE_REFUSED))
RUNNING_TEXT_PATTERN = _pattern(_published(RUNNING_TEXT_REFUSED))

_UNSAFE_IN_NAMES = frozenset('/\\:*?"<>|')


def _ci(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


#: What `file_name` checks, as far as a pattern can say it (NFKC folding aside: full-width / \\ : and the
#: rest are named as well).
FILE_NAME_PATTERN = (
    f"^(?![. ]*{_END})(?!\\.)(?![\\s\\S]*[. ]{_END})"
    "(?!(?:"
    + "|".join(_ci(n) for n in ("CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"))
    + "|"
    + _ci("COM")
    + "[1-9\u00b9\u00b2\u00b3]|"
    + _ci("LPT")
    + f"[1-9\u00b9\u00b2\u00b3]) *(?:\\.|{_END}))"
    "[^"
    + _char_class(_published(ONE_LINE_REFUSED))
    + "".join(re.escape(c) for c in sorted(_UNSAFE_IN_NAMES))
    + f"\uff0f\uff3c\uff1a\uff0a\uff1f\uff02\uff1c\uff1e\uff5c]+{_END}"
)

_ONE_LINE_BAD = re.compile(f"[{_char_class(ONE_LINE_REFUSED)}]")
_RUNNING_BAD = re.compile(f"[{_char_class(RUNNING_TEXT_REFUSED)}]")
_STRIP = re.compile(f"[{_char_class(_STRIPPED)}]")
_BREAKS = re.compile("\r\n|[\r\u0085\u2028\u2029]")


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def one_line(field: str, value: str, *, max_length: int | None = None, required: bool = True) -> str:
    """`value` checked and normalised as a one-line field; raises ValidationError naming `field`."""
    bad = _ONE_LINE_BAD.search(value)
    if bad:
        what = (
            "a line break" if bad.group() in "\r\n\u0085\u2028\u2029" else "a character that is not allowed"
        )
        raise ValidationError(field, f"must be one line of visible text: {what} ({_describe(bad.group())})")
    text = unicodedata.normalize("NFC", value).strip()
    if required and not text:
        raise ValidationError(field, "must not be empty")
    if max_length is not None and len(text) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters")
    return text


def check_running_text(field: str, value: str) -> None:
    """Raise ValidationError if `value` holds a character running text may not hold; normalises nothing
    (for every string of a request, base64 included, before the fields get their own rules)."""
    bad = _RUNNING_BAD.search(value)
    if bad:
        raise ValidationError(field, f"contains a character that is not allowed ({_describe(bad.group())})")


def running_text(field: str, value: str, *, max_length: int | None = None) -> str:
    """`value` checked and normalised as running text (see the module docstring)."""
    check_running_text(field, value)
    text = unicodedata.normalize("NFC", _STRIP.sub("", _BREAKS.sub("\n", value)))
    if max_length is not None and len(text) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters")
    return text


#: Names that Windows gives a meaning of their own, with or without an extension.
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{n}" for n in "123456789¹²³"}
    | {f"LPT{n}" for n in "123456789¹²³"}
)


def file_name(field: str, value: str) -> str:
    """An attachment's name, safe as a name in e-mail, in a mailbox and on any file system."""
    name = one_line(field, value, max_length=255)
    # Full-width and other compatibility forms (．．／) are what they look like to many programs.
    folded = unicodedata.normalize("NFKC", name)
    unsafe = sorted({c for c in folded if c in _UNSAFE_IN_NAMES})
    if unsafe:
        raise ValidationError(field, f"must not contain {' '.join(unsafe)} (a file name, not a path)")
    if folded.strip(". ") == "":
        raise ValidationError(field, "must be a file name, not . or ..")
    if folded.endswith((".", " ")) or folded.startswith("."):
        raise ValidationError(field, "must not start with a dot or end with a dot or a space")
    if folded.split(".")[0].rstrip().upper() in _RESERVED_NAMES:
        raise ValidationError(field, f"{folded.split('.')[0]} is a reserved device name; choose another name")
    if len(name.encode("utf-8")) > 255:
        raise ValidationError(field, "must be at most 255 bytes in UTF-8")
    return name


def _optional(field: str, value: str | None, max_length: int) -> str | None:
    if value is None:
        return None
    return one_line(field, value, max_length=max_length, required=False) or None


def _address(address: PostalAddress) -> PostalAddress:
    where = "recipient.postal_address"
    return PostalAddress(
        lines=tuple(
            one_line(f"{where}.lines[{i}]", line, max_length=100) for i, line in enumerate(address.lines)
        ),
        postal_code=one_line(f"{where}.postal_code", address.postal_code, max_length=20),
        city=one_line(f"{where}.city", address.city, max_length=100),
        country=_optional(f"{where}.country", address.country, 100),
    )


def _recipient(info: RecipientInfo) -> RecipientInfo:
    return replace(
        info,
        name=_optional("recipient.name", info.name, 200),
        # An address or number with an invisible or control character is refused here, not at send time
        # (where the letter would go on to paper unasked).
        email=_optional("recipient.email", info.email, 256),
        mobile=_optional("recipient.mobile", info.mobile, 30),
        postal_address=None if info.postal_address is None else _address(info.postal_address),
    )


def _support(support: SupportInfo) -> SupportInfo:
    return SupportInfo(
        text=_non_empty(
            "support_info.text", running_text("support_info.text", support.text, max_length=1024)
        ),
        url=_optional("support_info.url", support.url, 255),
        phone=_optional("support_info.phone", support.phone, 255),
        email=_optional("support_info.email", support.email, 256),
    )


def _non_empty(field: str, text: str) -> str:
    if not text.strip():
        raise ValidationError(field, "must not be empty")
    return text.strip()


def _attachments(attachments: Iterable[Attachment]) -> tuple[Attachment, ...]:
    return tuple(
        replace(a, filename=file_name(f"attachments[{i}].filename", a.filename))
        for i, a in enumerate(attachments)
    )


def check_texts(letter: Letter) -> Letter:
    """The letter with every text field checked and normalised; raises ValidationError naming the field."""
    return replace(
        letter,
        subject=one_line("subject", letter.subject, max_length=255),
        body=running_text("body.content", letter.body),
        message_type=one_line("message_type", letter.message_type, max_length=100),
        case_reference=_optional("case_reference", letter.case_reference, 255),
        support_info=_support(letter.support_info),
        recipient_info=_recipient(letter.recipient_info),
        attachments=_attachments(letter.attachments),
    )
