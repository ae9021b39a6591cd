"""The plain e-mail builder: what a mail program reads back from the bytes we hand to SMTP."""

from __future__ import annotations

import email
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage

import pytest

from kanalvaxel.adapters.email_message import (
    EmailBuildError,
    MailParties,
    build_content,
    build_plain_email,
    html_to_text,
    make_message_id,
)
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import Attachment, BodyType, Confidentiality, Letter, SupportInfo
from kanalvaxel.ports import SenderInfo

NOW = datetime(2024, 5, 2, 9, 30, 15, tzinfo=timezone(timedelta(hours=2)))
SENDER = SenderInfo(
    key="sandby", organisation_number="2120000001", name="Sandlådans kommun, Socialförvaltningen"
)
UTF8_NAME = "Beslut om bistånd – åäö ÅÄÖ, en ganska lång förklaring av vad beslutet innebär.pdf"
PDF_A = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PDF_B = b"%PDF-1.7\n\x00\xff\r\n\r\n.\r\nFrom x\n" * 300
BODY = (
    "Hej Åsa!\n\n"
    "Du får försörjningsstöd för maj månad. Beloppet betalas ut den 25:e till ditt konto; en mycket lång rad "
    "som fortsätter långt förbi sjuttioåtta tecken utan radbrytning, så att kodningen måste bryta den.\n"
    ".\n"
    "From här börjar en rad som i mbox-format skulle skyddas.\n\n"
    "Med vänliga hälsningar\nHandläggaren"
)


def make_letter(**changes: object) -> Letter:
    letter = Letter(
        sender="sandby",
        recipient=RecipientId.parse("198112189876"),
        subject="Beslut om försörjningsstöd – maj 2024 «viktigt» för Åsa Öberg med ett långt ämne",
        body=BODY,
        body_type=BodyType.TEXT,
        confidentiality=Confidentiality.PUBLIC,
        message_type="beslut",
        support_info=SupportInfo(
            text="Ring kontaktcenter vardagar 8–17.",
            url="https://sandby.example.se/kontakt",
            phone="0771-12 34 56",
            email="kontakt@sandby.example.se",
        ),
        case_reference="SOC 2024/1234",
        attachments=(Attachment("beslut.pdf", PDF_A), Attachment(UTF8_NAME, PDF_B)),
    )
    return replace(letter, **changes)  # type: ignore[arg-type]


def make_parties(**changes: object) -> MailParties:
    parties = MailParties(
        from_address="noreply@sandby.example.se",
        from_name="Sandlådans kommun, Socialförvaltningen",
        to_address="asa.oberg@example.se",
        reply_to="kontakt@sandby.example.se",
        message_id=make_message_id("20240502T093015-1a2b3c4d", "email", "sandby.example.se"),
    )
    return replace(parties, **changes)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(part: EmailMessage) -> str:
    """The text as a mail program shows it: MIME text has CRLF line breaks on the wire (RFC 2046 4.1.1)."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def attachments(msg: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    found = []
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_content()
        assert isinstance(payload, bytes)
        found.append((part.get_filename(), part.get_content_type(), payload))
    return found


def test_plain_email_headers_read_back_as_built() -> None:
    raw = build_plain_email(make_letter(), SENDER, make_parties(), now=NOW)
    msg = parse(raw)

    sender = msg["From"].addresses[0]
    assert sender.display_name == "Sandlådans kommun, Socialförvaltningen"
    assert sender.addr_spec == "noreply@sandby.example.se"
    assert [a.addr_spec for a in msg["To"].addresses] == ["asa.oberg@example.se"]
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["kontakt@sandby.example.se"]
    assert msg["Subject"] == make_letter().subject
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == "<20240502T093015-1a2b3c4d.email@sandby.example.se>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/mixed"
    # Exactly one of each: a header given twice is what an injection would produce.
    for name in ("From", "To", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version"):
        assert len(msg.get_all(name) or []) == 1, name


def test_plain_email_is_seven_bit_crlf_with_short_lines() -> None:
    raw = build_plain_email(make_letter(), SENDER, make_parties(), now=NOW)

    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert "Sandlådans".encode() not in raw  # non-ASCII goes as RFC 2047 words, not raw UTF-8


def test_body_decodes_exactly_and_footer_follows() -> None:
    msg = parse(build_plain_email(make_letter(), SENDER, make_parties(), now=NOW))

    body = msg.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    assert body["Content-Transfer-Encoding"] == "quoted-printable"
    assert body.get_content_charset() == "utf-8"
    text = text_of(body)
    assert text.startswith(BODY + "\n\n")
    footer = text[len(BODY) :].strip().splitlines()
    assert footer == [
        "--",
        "Frågor? Ring kontaktcenter vardagar 8–17.",
        "Webb: https://sandby.example.se/kontakt",
        "Telefon: 0771-12 34 56",
        "E-post: kontakt@sandby.example.se",
        "Ärende: SOC 2024/1234",
    ]


def test_attachments_round_trip_with_utf8_file_names() -> None:
    raw = build_plain_email(make_letter(), SENDER, make_parties(), now=NOW)
    msg = parse(raw)

    assert attachments(msg) == [
        ("beslut.pdf", "application/pdf", PDF_A),
        (UTF8_NAME, "application/pdf", PDF_B),
    ]
    assert b"filename*" in raw  # RFC 2231, not a raw UTF-8 parameter
    assert raw.count(b"MIME-Version") == 1


@pytest.mark.parametrize("text", ["Har du frågor? Ring oss.", "Vid frågor, ring oss."])
def test_a_support_text_that_speaks_of_questions_is_given_no_frågor_of_ours(text: str) -> None:
    body = parse(
        build_plain_email(make_letter(support_info=SupportInfo(text=text)), SENDER, make_parties(), now=NOW)
    ).get_body(("plain",))
    assert isinstance(body, EmailMessage)
    assert f"\n--\n{text}\n" in text_of(body)


def test_a_support_text_that_starts_with_fragor_is_not_given_a_second_one() -> None:
    letter = make_letter(support_info=SupportInfo(text="Frågor? Ring kommunens kontaktcenter."))
    body = parse(build_plain_email(letter, SENDER, make_parties(), now=NOW)).get_body(("plain",))
    assert isinstance(body, EmailMessage)
    text = text_of(body)
    assert "\n--\nFrågor? Ring kommunens kontaktcenter.\n" in text
    assert "Frågor? Frågor?" not in text


def test_footer_without_optional_support_details() -> None:
    letter = make_letter(
        support_info=SupportInfo(text="Svara inte på detta meddelande."), case_reference=None
    )
    msg = parse(build_plain_email(letter, SENDER, make_parties(reply_to=None), now=NOW))

    body = msg.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    assert text_of(body).endswith(BODY + "\n\n--\nFrågor? Svara inte på detta meddelande.\n")
    assert msg["Reply-To"] is None


def test_text_letter_without_attachments_is_a_single_part() -> None:
    content = build_content(make_letter(attachments=()), SENDER)

    assert content.get_content_type() == "text/plain"
    assert text_of(content).startswith(BODY)


def test_html_letter_is_text_then_html_alternative() -> None:
    markup = (
        "<html><body><h1>Beslut</h1><p>Hej <b>Åsa</b>!</p>"
        '<p>Läs mer på <a href="https://sandby.example.se/bistand">vår webbplats</a>.</p>'
        "<ul><li>Första punkten</li><li>Andra punkten</li></ul></body></html>"
    )
    letter = make_letter(body=markup, body_type=BodyType.HTML)
    msg = parse(build_plain_email(letter, SENDER, make_parties(), now=NOW))

    assert msg.get_content_type() == "multipart/mixed"
    alternative = next(iter(msg.iter_parts()))
    assert alternative.get_content_type() == "multipart/alternative"
    plain, rich = list(alternative.iter_parts())
    assert isinstance(plain, EmailMessage)
    assert isinstance(rich, EmailMessage)
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    text = text_of(plain)
    assert text.startswith(
        "Beslut\n\nHej Åsa!\n\nLäs mer på vår webbplats (https://sandby.example.se/bistand).\n\n"
        "- Första punkten\n- Andra punkten\n\n--\nFrågor?"
    )
    assert "<" not in text
    html = text_of(rich)
    assert html.startswith("<html><body><h1>Beslut</h1>")
    # The footer goes inside <body>, escaped.
    assert html.index("Ärende: SOC 2024/1234") < html.index("</body>")
    assert html.endswith("</body></html>\n")
    assert [name for name, _, _ in attachments(msg)] == ["beslut.pdf", UTF8_NAME]


def test_html_to_text_drops_scripts_and_keeps_pre() -> None:
    assert html_to_text("<p>a  b</p><script>alert(1)</script><pre>x   y\n z</pre>") == "a b\n\nx   y\nz"


def test_notice_only_has_no_body_and_no_attachments() -> None:
    letter = make_letter(body_type=BodyType.HTML, body="<p>Hemlig text ZQX-4711</p>")
    raw = build_plain_email(letter, SENDER, make_parties(), now=NOW, notice_only=True)
    msg = parse(raw)

    assert msg.get_content_type() == "text/plain"
    assert list(msg.iter_attachments()) == []
    text = text_of(msg)
    assert text.startswith(
        "Du har fått ett brev från Sandlådans kommun, Socialförvaltningen: "
        f"«{letter.subject}».\n\nBrevets innehåll finns inte med i det här meddelandet.\n\n--\n"
    )
    assert "Webb: https://sandby.example.se/kontakt" in text
    assert "Telefon: 0771-12 34 56" in text
    assert b"ZQX-4711" not in raw
    assert "beslut.pdf" not in raw.decode("ascii")


def test_non_ascii_domain_goes_as_idna() -> None:
    raw = build_plain_email(make_letter(), SENDER, make_parties(to_address="asa@Åre.se"), now=NOW)

    assert [a.addr_spec for a in parse(raw)["To"].addresses] == ["asa@xn--re-xia.se"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hej\r\nBcc: offer@example.com"),
        ("subject", "Hej\nBcc: offer@example.com"),
        ("subject", "Hej\rX"),
    ],
)
def test_line_breaks_in_subject_are_refused(field: str, value: str) -> None:
    with pytest.raises(EmailBuildError, match="line breaks"):
        build_plain_email(make_letter(**{field: value}), SENDER, make_parties(), now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to_address", "asa@example.se\r\nBcc: offer@example.com"),
        ("to_address", "asa@example.se\nX-Injected: 1"),
        ("from_address", "noreply@sandby.example.se\r\nBcc: offer@example.com"),
        ("reply_to", "kontakt@sandby.example.se\nBcc: offer@example.com"),
        ("from_name", "Sandby\r\nBcc: offer@example.com"),
        ("message_id", "<a@b>\r\nBcc: offer@example.com"),
        ("to_address", "asa@example.se, offer@example.com"),
        ("to_address", "Åsa <asa@example.se>"),
        ("to_address", "asa@example.se offer@example.com"),
        ("to_address", '"a b"@example.se'),
        ("to_address", "asa"),
        ("to_address", "@example.se"),
        ("to_address", "åsa@example.se"),
        ("reply_to", "a@b@c"),
        ("message_id", "no-angle-brackets@x"),
    ],
)
def test_bad_parties_are_refused(field: str, value: str) -> None:
    with pytest.raises(EmailBuildError):
        build_plain_email(make_letter(), SENDER, make_parties(**{field: value}), now=NOW)


def test_attachment_name_with_line_break_is_refused() -> None:
    letter = make_letter(attachments=(Attachment("a.pdf\r\nContent-Type: text/html", PDF_A),))
    with pytest.raises(EmailBuildError, match="line breaks"):
        build_content(letter, SENDER)


def test_naive_date_is_refused() -> None:
    with pytest.raises(EmailBuildError, match="timezone"):
        build_plain_email(make_letter(), SENDER, make_parties(), now=datetime(2024, 5, 2, 9, 30))


def test_message_id_is_stable_and_checked() -> None:
    assert make_message_id("s-1", "email_encrypted", "kommun.se") == "<s-1.email_encrypted@kommun.se>"
    assert make_message_id("s-1", "email", "kommun.se") == make_message_id("s-1", "email", "kommun.se")
    for bad in ("a b", "a>b", "a@b", ""):
        with pytest.raises(EmailBuildError):
            make_message_id(bad, "email", "kommun.se")
    with pytest.raises(EmailBuildError):
        make_message_id("s-1", "email", "kommun.se>\r\nBcc: x@y")


def test_date_keeps_the_given_instant() -> None:
    utc = NOW.astimezone(UTC)
    msg = parse(build_plain_email(make_letter(), SENDER, make_parties(), now=utc))
    assert msg["Date"].datetime == NOW
