"""The print file adapter: the address page checked with poppler's pdftotext and pdftoppm (poppler-utils
must be installed: these tests do not skip), and the spool's crash safety checked by leaving the
directory the way a crash would."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen import canvas

from kanalvaxel.adapters.print_file import (
    FONT,
    MANIFEST_COLUMNS,
    REDACTED,
    WINDOW_HEIGHT_MM,
    WINDOW_LEFT_MM,
    WINDOW_TOP_MM,
    WINDOW_WIDTH_MM,
    DirectoryPrintSpool,
    PdfLetterRenderer,
    PrintSpoolError,
)
from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    Attachment,
    BodyType,
    Confidentiality,
    Letter,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.ports import PrintBatchInfo, PrintLetterRecord, SenderInfo

PERSONNUMMER = "198112189876"
SHIPMENT_ID = "3f2a9c1e-1111-4222-8333-444455556666"
SENDER = SenderInfo(
    key="sandby",
    organisation_number="2120000001",
    name="Sandlådans kommun",
    return_address=("Sandlådans kommun", "Box 1", "111 11 Sandby"),
)
# Window rectangle in points, top-left origin, as pdftotext -bbox reports coordinates.
WINDOW = (
    WINDOW_LEFT_MM * mm,
    WINDOW_TOP_MM * mm,
    (WINDOW_LEFT_MM + WINDOW_WIDTH_MM) * mm,
    (WINDOW_TOP_MM + WINDOW_HEIGHT_MM) * mm,
)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


def make_pdf(label: str, pages: int) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4, invariant=1)
    for n in range(1, pages + 1):
        c.drawString(100, 700, f"{label} sida {n}")
        c.showPage()
    c.save()
    return buf.getvalue()


def make_letter(**changes: object) -> Letter:
    letter = Letter(
        sender="sandby",
        recipient=RecipientId.parse(PERSONNUMMER),
        subject="Beslut om bygglov – Ängsvägen 3 ”Åsa” 1 200 €",
        body="Hej Åsa!\n\nDu får bygglov för en altan på Ängsvägen 3.\n\nMed vänliga hälsningar\nNämnden",
        body_type=BodyType.TEXT,
        confidentiality=Confidentiality.PUBLIC,
        message_type="beslut",
        support_info=SupportInfo(text="Ring kontaktcenter"),
        case_reference="BN 2024/123",
        attachments=(
            Attachment("beslut.pdf", make_pdf("Bilaga A", 1)),
            Attachment("ritning.pdf", make_pdf("Bilaga B", 2)),
        ),
        recipient_info=RecipientInfo(
            name="Åsa Öberg",
            postal_address=PostalAddress(("c/o Ärlig", "Ängsvägen 3 lgh 1102"), "41319", "Göteborg"),
        ),
    )
    return replace(letter, **changes)  # type: ignore[arg-type]


@pytest.fixture
def renderer() -> PdfLetterRenderer:
    # 22:30 UTC on 1 May is already 2 May in Sweden.
    return PdfLetterRenderer(FixedClock(datetime(2024, 5, 1, 22, 30, tzinfo=UTC)))


def pdftotext(pdf: bytes, tmp_path: Path, *args: str) -> str:
    path = tmp_path / "letter.pdf"
    path.write_bytes(pdf)
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *args, str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


_WORD = re.compile(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>')


def words_on_first_page(pdf: bytes, tmp_path: Path) -> list[tuple[float, float, float, float, str]]:
    out = pdftotext(pdf, tmp_path, "-bbox", "-f", "1", "-l", "1")
    return [(float(a), float(b), float(c), float(d), w) for a, b, c, d, w in _WORD.findall(out)]


def inside(word: tuple[float, float, float, float, str], rect: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1, _ = word
    return x0 >= rect[0] and y0 >= rect[1] and x1 <= rect[2] and y1 <= rect[3]


def overlaps(word: tuple[float, float, float, float, str], rect: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1, _ = word
    return x0 < rect[2] and x1 > rect[0] and y0 < rect[3] and y1 > rect[1]


# ---------------------------------------------------------------------------------------------- renderer


def test_address_page_holds_sender_recipient_subject_and_reference(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    text = pdftotext(renderer.render(make_letter(), SENDER, SHIPMENT_ID), tmp_path, "-f", "1", "-l", "1")

    for expected in (
        "Sandlådans kommun",
        "Box 1",
        "111 11 Sandby",
        "Åsa Öberg",
        "c/o Ärlig",
        "Ängsvägen 3 lgh 1102",
        "413 19 Göteborg",
        "Beslut om bygglov – Ängsvägen 3 ”Åsa” 1 200 €",
        "Diarienummer: BN 2024/123",
        "Datum: 2024-05-02",
        "Du får bygglov för en altan på Ängsvägen 3.",
        f"Referens: {SHIPMENT_ID}",
        "Sida 1 (4)",  # one letter page and three pages of attachments in the envelope
    ):
        assert expected in text
    assert text.count("Sandlådans kommun") == 1  # the name is not repeated from the return address
    assert PERSONNUMMER not in text


def test_the_support_information_is_printed_in_full_under_the_letter(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    support = SupportInfo(
        text="Frågor? Ring kontaktcenter vardagar 8–17.",
        url="https://sandby.example.se/kontakt",
        phone="0771-12 34 56",
        email="kontakt@sandby.example.se",
    )
    pdf = renderer.render(make_letter(support_info=support, attachments=()), SENDER, SHIPMENT_ID)
    lines = [line.strip() for line in pdftotext(pdf, tmp_path).splitlines() if line.strip()]
    start = lines.index("Frågor? Ring kontaktcenter vardagar 8–17.")  # "Frågor?" once, not twice
    assert lines[start + 1 : start + 4] == [
        "Webb: https://sandby.example.se/kontakt",
        "Telefon: 0771-12 34 56",
        "E-post: kontakt@sandby.example.se",
    ]
    assert lines.index("Nämnden") < start
    assert "Sida 1 (1)" in lines


def test_pages_are_the_letter_then_the_attachments_in_order(renderer: PdfLetterRenderer) -> None:
    pdf = renderer.render(make_letter(), SENDER, SHIPMENT_ID)

    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1 + 1 + 2
    assert [p.extract_text().strip() for p in reader.pages[1:]] == [
        "Bilaga A sida 1",
        "Bilaga B sida 1",
        "Bilaga B sida 2",
    ]


def test_a_long_body_runs_over_more_pages(renderer: PdfLetterRenderer, tmp_path: Path) -> None:
    sentence = "Nämnden har prövat ansökan och funnit att den uppfyller kraven. "
    body = "\n\n".join(f"Stycke {n}: " + sentence * 6 for n in range(1, 41))
    pdf = renderer.render(make_letter(body=body), SENDER, SHIPMENT_ID)

    reader = PdfReader(io.BytesIO(pdf))
    letter_pages = len(reader.pages) - 3
    assert letter_pages >= 3
    text = pdftotext(pdf, tmp_path)
    assert f"Sida 1 ({letter_pages + 3})" in text
    assert f"Sida {letter_pages} ({letter_pages + 3})" in text
    assert "Stycke 40:" in text
    # Nothing is lost: every word of the body comes out, in order.
    extracted = " ".join(pdftotext(pdf, tmp_path, "-l", str(letter_pages)).split())
    assert extracted.index("Stycke 1:") < extracted.index("Stycke 20:") < extracted.index("Stycke 40:")


def test_address_lies_inside_the_envelope_window_and_nothing_else_does(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    words = words_on_first_page(renderer.render(make_letter(), SENDER, SHIPMENT_ID), tmp_path)

    address_words = {"Åsa", "Öberg", "c/o", "Ärlig", "Ängsvägen", "3", "lgh", "1102", "413", "19", "Göteborg"}
    in_window = [w for w in words if overlaps(w, WINDOW)]
    assert {w[4] for w in in_window} == address_words
    assert all(inside(w, WINDOW) for w in in_window)


def test_long_address_lines_shrink_then_are_cut_inside_the_window(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    long_name = "Anna-Karin Ölvebro Åkesson Lindqvist von Ärnhielm " * 3
    letter = make_letter(
        recipient_info=RecipientInfo(
            name=long_name.strip(),
            postal_address=PostalAddress(("Långa gatan 12345678901234567890",), "11122", "Stockholm"),
        )
    )
    pdf = renderer.render(letter, SENDER, SHIPMENT_ID)

    words = words_on_first_page(pdf, tmp_path)
    in_window = [w for w in words if overlaps(w, WINDOW)]
    assert in_window
    assert all(inside(w, WINDOW) for w in in_window)
    assert any(w[4].endswith("…") for w in in_window)
    assert "111 22 Stockholm" in pdftotext(pdf, tmp_path, "-l", "1")


def test_the_fullest_address_the_window_takes_still_fits(renderer: PdfLetterRenderer, tmp_path: Path) -> None:
    letter = make_letter(
        recipient_info=RecipientInfo(
            name="Maximilian Åkerström-Lindqvist",
            postal_address=PostalAddress(
                ("c/o Familjen Östlund", "Avdelning för särskilda ärenden", "Postbox 123 456 Västra"),
                "D-10115",
                "Berlin",
                "Tyskland",
            ),
        )
    )
    words = words_on_first_page(renderer.render(letter, SENDER, SHIPMENT_ID), tmp_path)

    in_window = [w for w in words if overlaps(w, WINDOW)]
    assert {"Maximilian", "Östlund", "särskilda", "Västra", "Berlin", "TYSKLAND"} <= {w[4] for w in in_window}
    assert all(inside(w, WINDOW) for w in in_window)


def test_a_foreign_address_ends_with_the_country_in_capitals(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    abroad = make_letter(
        recipient_info=RecipientInfo(
            name="Ola Nordmann", postal_address=PostalAddress(("Storgata 1",), "0155", "Oslo", "Norge")
        )
    )
    home = make_letter(
        recipient_info=RecipientInfo(
            name="Åsa Öberg", postal_address=PostalAddress(("Storgatan 1",), "413 19", "Göteborg", "Sverige")
        )
    )

    abroad_text = pdftotext(renderer.render(abroad, SENDER, SHIPMENT_ID), tmp_path, "-l", "1")
    home_text = pdftotext(renderer.render(home, SENDER, SHIPMENT_ID), tmp_path, "-l", "1")

    assert "0155 Oslo\nNORGE" in abroad_text
    assert "413 19 Göteborg" in home_text
    assert "SVERIGE" not in home_text


def test_html_body_is_printed_as_plain_paragraphs(renderer: PdfLetterRenderer, tmp_path: Path) -> None:
    body = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<h1>Beslut</h1><p>Ni f&aring;r <b>bygglov</b> &amp; startbesked.</p>"
        "<ul><li>Första villkoret</li><li>Andra villkoret</li></ul>"
        "<p>Rad ett<br>rad två</p><script>alert(1)</script></body></html>"
    )
    text = pdftotext(
        renderer.render(make_letter(body=body, body_type=BodyType.HTML), SENDER, SHIPMENT_ID),
        tmp_path,
        "-l",
        "1",
    )

    assert "Ni får bygglov & startbesked." in text
    assert "• Första villkoret\n• Andra villkoret" in text
    assert "Rad ett\nrad två" in text
    for leftover in ("<", "color", "alert"):
        assert leftover not in text


def test_rendering_is_reproducible(renderer: PdfLetterRenderer) -> None:
    assert renderer.render(make_letter(), SENDER, SHIPMENT_ID) == renderer.render(
        make_letter(), SENDER, SHIPMENT_ID
    )


HOME = PostalAddress(("Storgatan 1",), "41319", "Göteborg")


@pytest.mark.parametrize(
    ("info", "field"),
    [
        (RecipientInfo(name="Åsa Öberg"), "recipient.postal_address"),
        (RecipientInfo(postal_address=HOME), "recipient.name"),
        (RecipientInfo(name="  ", postal_address=HOME), "recipient.name"),
        (RecipientInfo(name="Åsa", postal_address=replace(HOME, postal_code="")), "recipient.postal_address"),
        (
            RecipientInfo(name="Åsa", postal_address=replace(HOME, lines=("a", "b", "c", "d"))),
            "recipient.postal_address.lines",
        ),
    ],
)
def test_a_letter_without_a_printable_address_is_refused(
    renderer: PdfLetterRenderer, info: RecipientInfo, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        renderer.render(make_letter(recipient_info=info), SENDER, SHIPMENT_ID)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "bad",
    [
        Attachment("foto.png", b"\x89PNG\r\n\x1a\n", "image/png"),
        Attachment("trasig.pdf", b"this is not a PDF at all"),
        Attachment("avbruten.pdf", make_pdf("x", 1)[:200]),
    ],
)
def test_an_attachment_that_is_not_a_readable_pdf_is_refused_by_position(
    renderer: PdfLetterRenderer, bad: Attachment
) -> None:
    letter = make_letter(attachments=(Attachment("ok.pdf", make_pdf("ok", 1)), bad))

    with pytest.raises(ValidationError) as caught:
        renderer.render(letter, SENDER, SHIPMENT_ID)
    assert caught.value.field == "attachments[1]"
    assert bad.filename in caught.value.message


def test_address_page_looks_right_as_an_image(renderer: PdfLetterRenderer, tmp_path: Path) -> None:
    pdf_path = tmp_path / "letter.pdf"
    pdf_path.write_bytes(renderer.render(make_letter(), SENDER, SHIPMENT_ID))
    dpi = 50
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            str(dpi),
            "-gray",
            "-png",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf_path),
            str(tmp_path / "page"),
        ],
        check=True,
    )

    with Image.open(tmp_path / "page.png") as image:
        px = image.convert("L")
        width, height = px.size
        assert abs(width - 210 / 25.4 * dpi) <= 1
        assert abs(height - 297 / 25.4 * dpi) <= 1

        def ink(x0_mm: float, y0_mm: float, x1_mm: float, y1_mm: float) -> int:
            def px_of(v: float) -> int:
                return round(v / 25.4 * dpi)

            box = (px_of(x0_mm), px_of(y0_mm), px_of(x1_mm), px_of(y1_mm))
            dark: list[int] = px.crop(box).histogram()[:128]  # pixels darker than mid-grey
            return sum(dark)

        assert (
            ink(
                WINDOW_LEFT_MM,
                WINDOW_TOP_MM,
                WINDOW_LEFT_MM + WINDOW_WIDTH_MM,
                WINDOW_TOP_MM + WINDOW_HEIGHT_MM,
            )
            > 50
        )
        # The band left of the window, at the window's height, stays empty: only the address shows.
        assert ink(0, WINDOW_TOP_MM, WINDOW_LEFT_MM - 1, WINDOW_TOP_MM + WINDOW_HEIGHT_MM) == 0


# ------------------------------------------------------------------------------------------ font cache

OTHER_SENDER = SenderInfo(
    key="norrby",
    organisation_number="2120000002",
    name="Norrby stadsbyggnadskontor",
    return_address=("Norrby stadsbyggnadskontor", "Stadshuset", "999 99 Norrby"),
)
# Ω is in the font but not among the characters every letter carries. In this sender's name only, so
# in the bold font only: its letters need a font set of their own, and a cache keyed by less than all
# of the subsets would print them with a set that lacks it.
SYMBOL_SENDER = SenderInfo(
    key="omega",
    organisation_number="2120000003",
    name="Ωmegaträsk kommun",
    return_address=("Ωmegaträsk kommun", "Box 7", "888 88 Omegaträsk"),
)
SENDER_LINES = {
    SENDER.key: ("Sandlådans kommun", "Box 1", "111 11 Sandby"),
    OTHER_SENDER.key: ("Norrby stadsbyggnadskontor", "Stadshuset", "999 99 Norrby"),
    SYMBOL_SENDER.key: ("Ωmegaträsk kommun", "Box 7", "888 88 Omegaträsk"),
}


def to(name: str, street: str, code: str = "41319", city: str = "Göteborg") -> Letter:
    return make_letter(
        recipient_info=RecipientInfo(name=name, postal_address=PostalAddress((street,), code, city))
    )


def uncached() -> PdfLetterRenderer:
    return PdfLetterRenderer(FixedClock(datetime(2024, 5, 1, 22, 30, tzinfo=UTC)), font_cache_size=0)


def test_letters_of_a_sender_share_one_font_set_and_come_out_as_if_built_alone(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    first, second = (
        to("Åsa Öberg", "Ängsvägen 3"),
        to("Tolvan Tolvansson", "Storgatan 12", "11122", "Stockholm"),
    )

    cached_pdfs = [renderer.render(letter, SENDER, SHIPMENT_ID) for letter in (first, second)]

    info = renderer.font_cache_info()
    assert (info.misses, info.hits, info.currsize) == (1, 1, 1)
    alone = uncached()
    for letter, pdf in zip((first, second), cached_pdfs, strict=True):
        built_alone = alone.render(letter, SENDER, SHIPMENT_ID)
        assert pdf == built_alone
        assert pdftotext(pdf, tmp_path, "-layout") == pdftotext(built_alone, tmp_path, "-layout")
    assert alone.font_cache_info().currsize == 0
    assert "Tolvan Tolvansson\n" in pdftotext(cached_pdfs[1], tmp_path, "-l", "1")


def test_letters_rendered_from_four_threads_at_once_are_the_same_as_rendered_one_by_one() -> None:
    jobs = [
        (to(name, f"Storgatan {i}"), sender, f"shp-{i}")
        for i, (name, sender) in enumerate(
            [
                ("Åsa Öberg", SENDER),
                ("Łukasz Čolić", OTHER_SENDER),
                ("Jörgen Ωhman", SENDER),  # a character of its own: a font set of its own
                ("Tolvan Tolvansson", SYMBOL_SENDER),
            ]
            * 6
        )
    ]
    expected = [uncached().render(letter, sender, sid) for letter, sender, sid in jobs]
    shared = PdfLetterRenderer(FixedClock(datetime(2024, 5, 1, 22, 30, tzinfo=UTC)))
    start = threading.Barrier(4)

    def render_all(offset: int) -> list[tuple[int, bytes]]:
        start.wait()  # the cache is cold: threads may build and store the same font set at once
        return [(i, shared.render(*jobs[i])) for i in range(offset, len(jobs), 4)]

    with ThreadPoolExecutor(4) as pool:
        results = dict(pair for chunk in pool.map(render_all, range(4)) for pair in chunk)

    assert [results[i] for i in range(len(jobs))] == expected
    assert shared.font_cache_info().currsize == 3  # the common set, Ω in the name, the Ω sender


def test_letters_of_different_senders_only_ever_show_their_own_sender(
    renderer: PdfLetterRenderer, tmp_path: Path
) -> None:
    # Each sender twice, once to a recipient whose name needs a character of its own, in turns.
    recipients = [to("Åsa Öberg", "Ängsvägen 3"), to("Jörgen Ωhman", "Storgatan 1")]
    jobs = [(sender, letter) for letter in recipients for sender in (SENDER, SYMBOL_SENDER, OTHER_SENDER)]

    for sender, letter in jobs:
        pdf = renderer.render(letter, sender, SHIPMENT_ID)

        head = pdftotext(pdf, tmp_path, "-f", "1", "-l", "1")
        for key, lines in SENDER_LINES.items():
            for line in lines:
                assert (line in head) == (key == sender.key), (sender.key, line)
        assert letter.recipient_info.name in head
        assert pdf == uncached().render(letter, sender, SHIPMENT_ID)
    # Sandby and Norrby keep to the common characters; Ω in the sender's name, the recipient's, or both.
    assert renderer.font_cache_info().currsize == 4


def test_the_font_cache_holds_no_more_sets_than_it_is_given(tmp_path: Path) -> None:
    small = PdfLetterRenderer(FixedClock(datetime(2024, 5, 1, 22, 30, tzinfo=UTC)), font_cache_size=2)
    letters = [to(f"Åsa {symbol}berg", "Ängsvägen 3") for symbol in "Ωπ∆≈"]  # four sets of subsets

    first = [small.render(letter, SENDER, SHIPMENT_ID) for letter in letters]
    info = small.font_cache_info()
    assert (info.misses, info.currsize, info.maxsize) == (4, 2, 2)

    again = small.render(letters[0], SENDER, SHIPMENT_ID)  # its set was pushed out: built anew, same bytes
    assert small.font_cache_info().misses == 5
    assert again == first[0]
    assert "Åsa Ωberg" in pdftotext(again, tmp_path, "-l", "1")


def test_every_character_of_the_font_prints_as_itself(renderer: PdfLetterRenderer, tmp_path: Path) -> None:
    # More characters than one font subset holds, so the letter needs a second subset of the body font.
    renderer.render(make_letter(), SENDER, SHIPMENT_ID)  # registers the fonts
    face = pdfmetrics.getFont(FONT).face
    # No-break space prints as a space; U+FFFF is not a character.
    chars = [chr(c) for c in sorted(face.charToGlyph) if c > 0x7E and c not in (0xA0, 0xFFFF)]
    assert len(chars) > 159
    pdf = renderer.render(make_letter(body="".join(chars), attachments=()), SENDER, SHIPMENT_ID)

    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1
    text = pdftotext(pdf, tmp_path)
    assert [c for c in chars if c not in text] == []
    assert pdf == uncached().render(make_letter(body="".join(chars), attachments=()), SENDER, SHIPMENT_ID)


# ------------------------------------------------------------------------------------------------- spool


@pytest.fixture
def spool(tmp_path: Path) -> DirectoryPrintSpool:
    return DirectoryPrintSpool(tmp_path / "spool")


def record(seq: int, shipment_id: str, pages: int, size: int, **changes: object) -> PrintLetterRecord:
    rec = PrintLetterRecord(
        sequence=seq,
        shipment_id=shipment_id,
        staged_name=f"{shipment_id}.pdf",
        pages=pages,
        size_bytes=size,
        recipient_name='Åsa Öberg, "Lillan"',
        address_lines=("c/o Ärlig", "Ängsvägen 3, lgh 1102"),
        postal_code="41319",
        city="Göteborg",
        country=None,
        sender_organisation_number="2120000001",
        sender_name="Sandlådans kommun",
        case_reference="BN 2024/123",
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def staged_batch(spool: DirectoryPrintSpool, batch_id: str = "20240502T080000-abcd1234") -> PrintBatchInfo:
    letters = []
    # Sequence order differs from staging order on purpose: files are numbered by sequence.
    for seq, sid, pages in ((2, "shp-b", 3), (1, "shp-a", 1)):
        staged = spool.stage(sid, make_pdf(sid, pages))
        letters.append(record(seq, sid, staged.pages, staged.size_bytes))
    return PrintBatchInfo(
        batch_id=batch_id,
        sender_key="sandby",
        opened_at=datetime(2024, 5, 2, 6, 0, tzinfo=UTC),
        closed_at=datetime(2024, 5, 2, 8, 0, tzinfo=UTC),
        letters=letters,
    )


def test_stage_writes_atomically_and_again_replaces(spool: DirectoryPrintSpool) -> None:
    first = spool.stage("shp-a", make_pdf("första", 1))
    second = spool.stage("shp-a", make_pdf("andra", 2))

    assert first.name == second.name == "shp-a.pdf"
    assert (second.pages, second.size_bytes) == (2, len(make_pdf("andra", 2)))
    assert (spool.staging / "shp-a.pdf").read_bytes() == make_pdf("andra", 2)
    assert os.listdir(spool.staging) == ["shp-a.pdf"]  # no temporary files left behind


@pytest.mark.parametrize(("shipment_id", "pdf"), [("../evil", make_pdf("x", 1)), ("shp-a", b"not a pdf")])
def test_stage_refuses_unsafe_names_and_unreadable_files(
    spool: DirectoryPrintSpool, shipment_id: str, pdf: bytes
) -> None:
    with pytest.raises(PrintSpoolError):
        spool.stage(shipment_id, pdf)
    assert os.listdir(spool.staging) == []


def test_publish_makes_the_batch_with_both_manifests(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)

    path = Path(spool.publish(batch))

    assert path == spool.outgoing / batch.batch_id
    assert sorted(os.listdir(path)) == ["0001-shp-a.pdf", "0002-shp-b.pdf", "manifest.csv", "manifest.json"]
    assert os.listdir(spool.outgoing) == [batch.batch_id]  # the .tmp directory is gone
    assert os.listdir(spool.staging) == []  # staged letters are removed once published

    with open(path / "manifest.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [(r["sequence"], r["shipment_id"], r["file"], r["pages"]) for r in rows] == [
        ("1", "shp-a", "0001-shp-a.pdf", "1"),
        ("2", "shp-b", "0002-shp-b.pdf", "3"),
    ]
    assert rows[0]["recipient_name"] == 'Åsa Öberg, "Lillan"'
    assert (rows[0]["address_line_2"], rows[0]["address_line_3"]) == ("Ängsvägen 3, lgh 1102", "")
    assert (rows[0]["postal_code"], rows[0]["city"], rows[0]["country"]) == ("413 19", "Göteborg", "")

    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["batch_id"] == batch.batch_id
    assert manifest["sender_key"] == "sandby"
    assert datetime.fromisoformat(manifest["closed_at"]) == batch.closed_at
    assert manifest["letter_count"] == 2
    assert manifest["page_count"] == 4
    assert manifest["total_bytes"] == sum(r.size_bytes for r in batch.letters)
    for letter in manifest["letters"]:
        content = (path / letter["file"]).read_bytes()
        assert letter["sha256"] == hashlib.sha256(content).hexdigest()
        assert set(MANIFEST_COLUMNS) <= set(letter)


def test_manifests_never_carry_a_personal_identity_number(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    tagged = replace(
        batch.letters[0],
        address_lines=("c/o 19811218-9876", "Box 7"),
        case_reference=f"Ärende {PERSONNUMMER}",
    )
    path = Path(spool.publish(replace(batch, letters=[tagged, batch.letters[1]])))

    for name in ("manifest.csv", "manifest.json"):
        text = (path / name).read_text(encoding="utf-8")
        assert "9876" not in text
        assert REDACTED in text
    # An organisation number is public and stays.
    assert "2120000001" in (path / "manifest.csv").read_text(encoding="utf-8")


def test_publish_again_is_a_no_op_returning_the_same_path(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    path = spool.publish(batch)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(path).iterdir()}

    assert spool.publish(batch) == path
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(path).iterdir()} == before


def test_a_stale_tmp_dir_from_a_crash_is_rebuilt(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    stale = spool.outgoing / f".{batch.batch_id}.tmp"
    stale.mkdir()
    (stale / "0001-shp-a.pdf").write_bytes(b"half a file")
    (stale / "garbage.bin").write_bytes(b"\x00" * 10)

    path = Path(spool.publish(batch))

    assert not stale.exists()
    assert "garbage.bin" not in os.listdir(path)
    assert (path / "0001-shp-a.pdf").read_bytes() == make_pdf("shp-a", 1)


def test_a_crash_before_the_final_rename_loses_nothing(
    spool: DirectoryPrintSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = staged_batch(spool)

    def power_cut(src: object, dst: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "rename", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        spool.publish(batch)
    monkeypatch.undo()

    assert not (spool.outgoing / batch.batch_id).exists()
    assert sorted(os.listdir(spool.staging)) == ["shp-a.pdf", "shp-b.pdf"]
    path = Path(spool.publish(batch))
    assert sorted(p.name for p in path.iterdir())[:2] == ["0001-shp-a.pdf", "0002-shp-b.pdf"]


def test_a_crash_after_the_rename_is_finished_by_publishing_again(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    path = Path(spool.publish(batch))
    # As if the process died after the rename, before removing the staged letters.
    for name in ("0001-shp-a.pdf", "0002-shp-b.pdf"):
        shutil.copyfile(path / name, spool.staging / f"{name[5:]}")

    assert spool.publish(batch) == str(path)
    assert os.listdir(spool.staging) == []


def test_republishing_an_old_batch_keeps_a_letter_staged_anew_since(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    spool.publish(batch)
    spool.stage("shp-a", make_pdf("nytt försök", 2))

    spool.publish(batch)

    assert (spool.staging / "shp-a.pdf").read_bytes() == make_pdf("nytt försök", 2)


def test_a_missing_staged_letter_stops_the_batch(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    (spool.staging / "shp-b.pdf").unlink()

    with pytest.raises(PrintSpoolError, match=r"shp-b\.pdf"):
        spool.publish(batch)
    assert os.listdir(spool.outgoing) == []
    assert os.listdir(spool.staging) == ["shp-a.pdf"]


def test_a_letter_staged_again_after_the_batch_closed_stops_the_batch(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    spool.stage("shp-a", make_pdf("shp-a med mycket längre innehåll", 1))

    with pytest.raises(PrintSpoolError, match="staged again"):
        spool.publish(batch)
    assert not (spool.outgoing / batch.batch_id).exists()


@pytest.mark.parametrize(
    "change",
    [
        {"letters": []},
        {"batch_id": "../outside"},
    ],
)
def test_an_inconsistent_batch_is_refused(spool: DirectoryPrintSpool, change: dict[str, object]) -> None:
    batch = replace(staged_batch(spool), **change)  # type: ignore[arg-type]
    with pytest.raises(PrintSpoolError):
        spool.publish(batch)


def test_duplicate_sequence_numbers_are_refused(spool: DirectoryPrintSpool) -> None:
    batch = staged_batch(spool)
    letters = [batch.letters[0], replace(batch.letters[1], sequence=batch.letters[0].sequence)]
    with pytest.raises(PrintSpoolError, match="sequence"):
        spool.publish(replace(batch, letters=letters))


def test_a_rendered_letter_goes_through_the_spool(
    renderer: PdfLetterRenderer, spool: DirectoryPrintSpool
) -> None:
    staged = spool.stage(SHIPMENT_ID, renderer.render(make_letter(), SENDER, SHIPMENT_ID))

    assert staged.pages == 4
    batch = PrintBatchInfo(
        "b1",
        "sandby",
        datetime(2024, 5, 2, tzinfo=UTC),
        datetime(2024, 5, 2, 1, tzinfo=UTC),
        [record(1, SHIPMENT_ID, staged.pages, staged.size_bytes)],
    )
    manifest = json.loads((Path(spool.publish(batch)) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["page_count"] == 4


@pytest.mark.parametrize(("attachments", "said"), [((), "1 sida"), (None, "4 sidor")])
def test_the_print_channel_says_sida_for_one_page_and_sidor_for_more(
    renderer: PdfLetterRenderer, tmp_path: Path, attachments: tuple[Attachment, ...] | None, said: str
) -> None:
    from kanalvaxel.adapters.print_channel import PrintChannel
    from kanalvaxel.domain.model import Channel
    from kanalvaxel.domain.rules import Decision
    from kanalvaxel.ports import DeliveryJob, OutcomeKind

    letter = make_letter() if attachments is None else make_letter(attachments=attachments)
    job = DeliveryJob(SHIPMENT_ID, 1, Channel.PRINT, letter, SENDER, Decision("test", ()))
    outcome = PrintChannel(renderer, DirectoryPrintSpool(tmp_path / "spool")).send(job)
    assert outcome.kind is OutcomeKind.HANDED_OVER
    assert outcome.detail == f"Utskriftsfil skapad ({said})."
