"""The letter as an e-mail message: MIME content, headers and the bytes handed to SMTP.

Pure building, no network. Everything is 7-bit clean (quoted-printable text, base64 attachments, RFC 2047
words in headers, RFC 2231 file names), so no server on the way has to convert it, and a signature over the
content (smime.py) stays valid.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from html.parser import HTMLParser

from kanalvaxel.domain.errors import KanalvaxelError
from kanalvaxel.domain.model import BodyType, Letter, SupportInfo
from kanalvaxel.ports import SenderInfo

#: CRLF line ends and at most 78 characters per line, as SMTP expects.
SMTP_POLICY = policy.SMTP

# The characters a dot-atom may hold (RFC 5322 3.2.3), for Message-ID parts we make ourselves.
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


class EmailBuildError(KanalvaxelError):
    """The message cannot be built from these values, e.g. an address that is not one addr-spec, or a
    header value with a line break (header injection). Retrying with the same values cannot help."""


@dataclass(frozen=True, slots=True)
class MailParties:
    from_address: str  # e.g. noreply@kommun.se
    from_name: str  # the sender authority's name (SenderInfo.name)
    to_address: str
    reply_to: str | None  # support address, if any
    message_id: str  # "<...@domain>", stable per shipment (see make_message_id)


def make_message_id(shipment_id: str, channel: str, domain: str) -> str:
    """``<{shipment_id}.{channel}@{domain}>``: the same for every attempt of one shipment on one channel, so a
    resend after a crash carries the Message-ID mail systems use to recognise a duplicate."""
    for what, value in (("shipment id", shipment_id), ("channel", channel), ("domain", domain)):
        if not _ATOM.match(value):
            raise EmailBuildError(f"{what} {value!r} cannot be part of a Message-ID")
    return f"<{shipment_id}.{channel}@{domain}>"


def check_address(address: str) -> Address:
    """`address` as exactly one addr-spec (``local@domain``), or EmailBuildError.

    A non-ASCII domain is written in its IDNA (xn--) form; a non-ASCII local part is refused, because it
    needs SMTPUTF8, which we cannot count on from the relay or the recipient's server.
    """
    _no_line_breaks("address", address)
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in text):
        raise EmailBuildError("an e-mail address must be one local@domain, without spaces")
    if not local.isascii():
        raise EmailBuildError("an e-mail address with non-ASCII characters before @ cannot be sent")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise EmailBuildError("the domain of the e-mail address is not a valid domain name") from exc
    try:
        parsed = Address(addr_spec=f"{local}@{domain}")
    except (ValueError, IndexError, HeaderParseError) as exc:  # the parser's words for "not one addr-spec"
        raise EmailBuildError("an e-mail address must be exactly one addr-spec") from exc
    # The parser also accepts a quoted local part ("a b"@c) or a domain literal; we never need those, and a
    # plain form is what every relay handles the same way.
    if parsed.addr_spec != f"{local}@{domain}" or not _ATOM.match(local) or not _ATOM.match(domain):
        raise EmailBuildError("an e-mail address must be a plain local@domain")
    return parsed


def new_message(parties: MailParties, *, subject: str, now: datetime, inner: bool = False) -> EmailMessage:
    """A message with only headers: From, To, Date and Subject; unless `inner`, also Reply-To, Message-ID and
    Auto-Submitted. `inner` is for the protected headers inside an S/MIME message."""
    _no_line_breaks("sender name", parties.from_name)
    _no_line_breaks("subject", subject)
    _no_line_breaks("Message-ID", parties.message_id)
    if now.tzinfo is None or now.utcoffset() is None:
        raise EmailBuildError("the Date of a message needs a timezone-aware time")
    sender = check_address(parties.from_address)
    msg = EmailMessage(policy=SMTP_POLICY)
    # Address() quotes the name where needed and the policy writes it as RFC 2047 words when non-ASCII.
    msg["From"] = Address(display_name=parties.from_name, username=sender.username, domain=sender.domain)
    msg["To"] = check_address(parties.to_address)
    if parties.reply_to and not inner:
        msg["Reply-To"] = check_address(parties.reply_to)
    msg["Date"] = format_datetime(now)
    if not inner:
        if not _MESSAGE_ID.match(parties.message_id):
            raise EmailBuildError("a Message-ID must have the form <id@domain>")
        msg["Message-ID"] = parties.message_id
    msg["Subject"] = subject
    if not inner:
        # RFC 3834: tells out-of-office responders and list servers not to answer a machine.
        msg["Auto-Submitted"] = "auto-generated"
    return msg


def build_content(letter: Letter, sender: SenderInfo, *, notice_only: bool = False) -> EmailMessage:
    """The letter as one MIME entity: text (and HTML) with a Swedish footer, then the attachments.

    `notice_only`: neither body nor attachments, only a short notice that a letter exists and where to ask.
    """
    return fill_content(EmailMessage(policy=SMTP_POLICY), letter, sender, notice_only=notice_only)


def fill_content(
    msg: EmailMessage, letter: Letter, sender: SenderInfo, *, notice_only: bool = False
) -> EmailMessage:
    """Put the content of `build_content` into `msg`, which may already carry headers (kept at the top)."""
    footer = _footer_lines(letter.support_info, letter.case_reference)
    if notice_only:
        notice = [f"Du har fått ett brev från {sender.name}: «{letter.subject}».", ""]
        notice.append("Brevets innehåll finns inte med i det här meddelandet.")
        _set_text(msg, "\n".join(notice), footer)
        return msg
    if letter.body_type is BodyType.HTML:
        _set_text(msg, html_to_text(letter.body), footer)
        msg.add_alternative(_html_with_footer(letter.body, footer), subtype="html", cte="quoted-printable")
    else:
        _set_text(msg, letter.body, footer)
    for attachment in letter.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not maintype or not subtype:
            raise EmailBuildError(f"attachment content type {attachment.content_type!r} is not type/subtype")
        _no_line_breaks("attachment file name", attachment.filename)
        # The policy writes a non-ASCII name as RFC 2231 (filename*=utf-8''...), folded when long.
        msg.add_attachment(attachment.content, maintype, subtype, filename=attachment.filename, cte="base64")
    # The library gives every part it makes a MIME-Version of its own; RFC 2045 wants it only at the top.
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg


def build_plain_email(
    letter: Letter,
    sender: SenderInfo,
    parties: MailParties,
    *,
    now: datetime,
    notice_only: bool = False,
) -> bytes:
    """The whole message as bytes with CRLF line ends, ready for SMTP DATA. Raises EmailBuildError."""
    msg = new_message(parties, subject=letter.subject, now=now)
    fill_content(msg, letter, sender, notice_only=notice_only)
    return to_bytes(msg)


def to_bytes(msg: EmailMessage) -> bytes:
    try:
        return msg.as_bytes(policy=SMTP_POLICY)
    except (ValueError, UnicodeError) as exc:  # e.g. a header the policy cannot fold into 7 bits
        raise EmailBuildError(f"the message cannot be serialised: {exc}") from exc


def _no_line_breaks(what: str, value: str) -> None:
    # CR or LF in a header value would start a header (or the body) of the caller's choosing.
    if any(c in value for c in "\r\n\x00") or "\u2028" in value or "\u2029" in value:
        raise EmailBuildError(f"the {what} must not contain line breaks")


def _set_text(msg: EmailMessage, text: str, footer: list[str]) -> None:
    body = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
    full = body + ("\n\n" + "\n".join(footer) if footer else "") + "\n"
    # Quoted-printable keeps Swedish text readable in the raw message and every line within 76 characters.
    msg.set_content(full, subtype="plain", charset="utf-8", cte="quoted-printable")


def _footer_lines(support: SupportInfo, case_reference: str | None) -> list[str]:
    lines = ["--", *support.lines()]
    if case_reference:
        lines.append(f"Ärende: {case_reference}")
    return lines


def _html_with_footer(body: str, footer: list[str]) -> str:
    rendered = "<br>\n".join(html.escape(line) for line in footer[1:])
    block = f'\n<hr>\n<p class="kanalvaxel-footer">{rendered}</p>\n'
    # Inside <body> when the letter has one, so viewers that honour the structure show it.
    match = re.search(r"</body\s*>", body, flags=re.IGNORECASE)
    if match:
        return body[: match.start()] + block + body[match.start() :]
    return body + block


_BLOCK_TAGS = frozenset(
    {
        "p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
        "blockquote", "section", "article", "header", "footer", "hr", "pre", "dl", "dt", "dd",
    }
)  # fmt: skip


class _TextRenderer(HTMLParser):
    """Plain text from (already sanitised) HTML: blocks become lines, links keep their address."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip = 0
        self._pre = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "pre":
            self._pre += 1
        if tag in _BLOCK_TAGS:
            self._parts.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table") else "\n")
        if tag == "li":
            self._parts.append("- ")
        if tag == "a":
            self._links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag == "a" and self._links:
            href = self._links.pop()
            if href and href.startswith(("http://", "https://", "mailto:")) and href not in self._tail():
                self._parts.append(f" ({href.removeprefix('mailto:')})")
        if tag in _BLOCK_TAGS and tag not in ("br", "li", "hr"):
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self._parts.append(data if self._pre else re.sub(r"\s+", " ", data))

    def _tail(self) -> str:
        return "".join(self._parts[-3:])

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self._parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def html_to_text(markup: str) -> str:
    """A plain-text rendering of `markup` for the text/plain alternative."""
    renderer = _TextRenderer()
    renderer.feed(markup)
    renderer.close()
    return renderer.text()
