"""The print channel at file level (tryckfil): a letter rendered as a print-ready PDF, and a spool
directory through which closed batches reach the print vendor.

The spool root, shared with the vendor (a mounted share or an SFTP drop):

    staging/<shipment_id>.pdf      one letter, written when print takes the letter
    outgoing/<batch_id>/           one closed batch: 0001-<shipment_id>.pdf ..., manifest.csv, manifest.json
    outgoing/.<batch_id>.tmp/      a batch being built

A batch directory appears by a single rename, so the vendor sees it complete or not at all. The vendor
must ignore names in outgoing/ that start with a dot.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import reportlab
from pypdf import PasswordType, PdfReader, PdfWriter
from pypdf.generic import ArrayObject, DictionaryObject, NameObject, PdfObject
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

from kanalvaxel.domain.errors import InvalidRecipientIdError, KanalvaxelError, ValidationError
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import BodyType, Letter, PostalAddress
from kanalvaxel.ports import Clock, PrintBatchInfo, PrintLetterRecord, SenderInfo, StagedLetter

__all__ = [
    "FONT_CACHE_SIZE",
    "MANIFEST_COLUMNS",
    "REDACTED",
    "DirectoryPrintSpool",
    "PdfLetterRenderer",
    "PrintSpoolError",
    "swedish_postal_code",
]

PAGE_WIDTH, PAGE_HEIGHT = A4  # points

# Where the address window of a Swedish right-hand ("H2") window envelope (C4, or C5 with the A4 sheet
# folded once) falls on the sheet, measured from the sheet's top-left corner: the values commonly used
# by Swedish letter templates, about 105 mm from the left edge and 45 mm from the top, 90 x 45 mm.
# They are not taken from the standard's text, and envelope makers differ by a few millimetres: check
# them against the print vendor's envelope before going live.
WINDOW_LEFT_MM = 105.0
WINDOW_TOP_MM = 45.0
WINDOW_WIDTH_MM = 90.0
WINDOW_HEIGHT_MM = 45.0
# The sheet shifts inside the envelope; text kept this far inside the window edges stays visible.
WINDOW_INSET_MM = 5.0

# Addressing advice for Swedish mail is 10-12 pt for machine reading; rather than go below 8 pt, a line
# that still does not fit is cut.
ADDRESS_FONT_SIZE = 10.0
ADDRESS_MIN_FONT_SIZE = 8.0
# Name + three street lines + postal code line + country is the most a window address holds, and the
# manifest has exactly three address-line columns for the vendor.
MAX_ADDRESS_LINES = 3

MARGIN_LEFT_MM = 25.0
MARGIN_RIGHT_MM = 20.0
MARGIN_TOP_MM = 20.0
MARGIN_BOTTOM_MM = 25.0
# The letter text starts below the window, so nothing but the address shows through it.
BODY_TOP_MM = WINDOW_TOP_MM + WINDOW_HEIGHT_MM + 15.0

BODY_FONT_SIZE = 10.5
BODY_LEADING = 14.0
SUBJECT_FONT_SIZE = 13.0
SUBJECT_LEADING = 16.0
SMALL_FONT_SIZE = 7.5

FONT = "KanalvaxelVera"
FONT_BOLD = "KanalvaxelVeraBd"
ELLIPSIS = "…"

#: The letter's date is the date in Sweden, whatever zone the server runs in.
LETTER_TIMEZONE = ZoneInfo("Europe/Stockholm")

_SWEDEN = frozenset({"se", "swe", "sverige", "sweden"})

#: Characters beyond ASCII that the fonts of every letter carry, whether the letter uses them or not
#: (reportlab always embeds all of ASCII). Reportlab gives a character its code in a font subset in the
#: order a document first uses it, so two letters with different names would embed different subsets;
#: drawing starts by assigning these, in this order, so every letter that keeps to them has the same
#: font objects, built once and cached (`PdfLetterRenderer`). The body font's set covers Swedish and
#: the names of Sweden's larger language groups; bold only sets the subject and the sender's name. A
#: letter with other characters prints all the same: they follow in order of use, and its fonts are
#: built (and cached) for that set. Each glyph costs a letter's file 50-100 bytes.
_SEED_CHARACTERS = (
    "ÅÄÖåäöÆØæøÉéÈèÊêËëÁáÀàÂâÍíÓóÔôÚúÜüÑñÇçßČčĆćŠšŽžĐđŁłŞşĞğİı–—‘’“”„…•€§°½",
    "ÅÄÖåäöÉéÜü–—’”…€§",
)
_FONTS = (FONT, FONT_BOLD)

#: How many font sets a renderer keeps (about 200 kB of memory each); one serves every letter that keeps
#: to `_SEED_CHARACTERS`.
FONT_CACHE_SIZE = 32

_font_lock = threading.Lock()
_fonts_registered = False


def _register_fonts() -> None:
    # Parsing the TTF costs milliseconds; reportlab's registry is process-wide, so once is enough.
    global _fonts_registered
    with _font_lock:
        if _fonts_registered:
            return
        font_dir = os.path.join(os.path.dirname(reportlab.__file__), "fonts")
        pdfmetrics.registerFont(TTFont(FONT, os.path.join(font_dir, "Vera.ttf")))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, os.path.join(font_dir, "VeraBd.ttf")))
        _fonts_registered = True


def _width(text: str, font: str, size: float) -> float:
    return float(pdfmetrics.stringWidth(text, font, size))


class PrintSpoolError(KanalvaxelError):
    """The spool cannot do what was asked: a staged letter is missing or changed, a name is unsafe, the
    batch is inconsistent, or the file system failed. Retrying as is does not help unless the cause was
    the file system; the letters have to be staged again or the batch rebuilt."""


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Line:
    text: str
    font: str
    size: float
    leading: float


class PdfLetterRenderer:
    """Renders a letter as one PDF for print: an address page for a right-hand window envelope (and more
    pages if the body needs them), then the letter's own PDF attachments in order.

    The same letter, sender, shipment id and date give the same bytes, so a retried render stages an
    identical file.

    Most of the work of rendering a letter is its two embedded fonts: reportlab subsetting and
    compressing them, and pypdf reading them back to add the attachments. They are the same for every
    letter whose characters keep to `_SEED_CHARACTERS`, so reportlab draws only the page content, and
    the font objects come from a set built once for each distinct state of the fonts' subsets, kept in
    a bounded cache (`font_cache_size` sets, the least recently used go first; 0 builds the set for
    every letter). The cache key is everything the font objects depend on, so a letter has the same
    bytes whether its set came from the cache or was built for it alone. Safe to call from several
    threads at once: a cached set is never changed after it is built, only copied into each letter's
    file.
    """

    def __init__(self, clock: Clock | None = None, *, font_cache_size: int = FONT_CACHE_SIZE) -> None:
        self._clock: Clock = clock or _SystemClock()
        self._font_resources = functools.lru_cache(maxsize=font_cache_size)(_build_font_resources)

    def font_cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of this renderer's font cache (for tests and benchmarks)."""
        return self._font_resources.cache_info()

    def render(self, letter: Letter, sender: SenderInfo, shipment_id: str) -> bytes:
        address = _address_block(letter)
        _register_fonts()
        attached = [
            _read_attachment(i, a.filename, a.content_type, a.content)
            for i, a in enumerate(letter.attachments)
        ]
        # "Sida 1 (4)": the number of sheets' sides in the envelope, the attachments' pages included.
        extra_pages = sum(len(reader.pages) for reader, _, _ in attached)
        content, key = self._draw_letter(letter, sender, shipment_id, address, extra_pages)
        writer = PdfWriter()
        # Copied, not shared: a letter's file owns its objects, and the cached set stays untouched.
        fonts = self._font_resources(key).fonts.clone(writer)
        for page in PdfReader(io.BytesIO(content)).pages:
            resources = cast(DictionaryObject, page["/Resources"])  # reportlab writes them inline
            resources[NameObject("/Font")] = fonts
            writer.add_page(page)
        for reader, field, filename in attached:
            _append(writer, reader, field, filename)
        # pypdf derives the file identifier from the content when none is set, so output stays reproducible.
        out = io.BytesIO()
        writer.write(out)
        return out.getvalue()

    def _draw_letter(
        self, letter: Letter, sender: SenderInfo, shipment_id: str, address: list[str], extra_pages: int
    ) -> tuple[bytes, _FontKey]:
        """The letter's own pages, drawn by reportlab without font objects, and the key of the font
        set they need."""
        content_width = PAGE_WIDTH - (MARGIN_LEFT_MM + MARGIN_RIGHT_MM) * mm
        flow = [
            _Line(t, FONT_BOLD, SUBJECT_FONT_SIZE, SUBJECT_LEADING)
            for t in _wrap(letter.subject.strip(), FONT_BOLD, SUBJECT_FONT_SIZE, content_width)
        ]
        flow.append(_Line("", FONT, BODY_FONT_SIZE, BODY_LEADING))
        body = _html_to_text(letter.body) if letter.body_type is BodyType.HTML else letter.body
        flow.extend(
            _Line(t, FONT, BODY_FONT_SIZE, BODY_LEADING)
            for t in _wrap(_clean_text(body), FONT, BODY_FONT_SIZE, content_width)
        )
        # The support information the case system must give goes on paper too, as in e-mail.
        flow.append(_Line("", FONT, BODY_FONT_SIZE, BODY_LEADING))
        for support_line in letter.support_info.lines():
            flow.extend(
                _Line(t, FONT, BODY_FONT_SIZE, BODY_LEADING)
                for t in _wrap(_clean_text(support_line), FONT, BODY_FONT_SIZE, content_width)
            )
        pages = _paginate(flow)

        buf = io.BytesIO()
        c = _new_canvas(buf, _SEED_CHARACTERS)
        c.setTitle(letter.subject)
        c.setAuthor(sender.name)
        for number, lines in enumerate(pages, start=1):
            if number == 1:
                self._draw_head(c, letter, sender)
                _draw_address(c, address)
                y = PAGE_HEIGHT - BODY_TOP_MM * mm
            else:
                y = PAGE_HEIGHT - MARGIN_TOP_MM * mm
            for line in lines:
                y -= line.leading
                if line.text:
                    c.setFont(line.font, line.size)
                    c.drawString(MARGIN_LEFT_MM * mm, y, line.text)
            _draw_footer(c, shipment_id, number, len(pages) + extra_pages)
            c.showPage()
        key = _font_key(c)
        # reportlab writes a document's TrueType font objects at save, for the fonts it lists here; these
        # come from the cached set instead, so this document carries only the pages.
        c._doc.delayedFonts.clear()
        c.save()
        return buf.getvalue(), key

    def _draw_head(self, c: Any, letter: Letter, sender: SenderInfo) -> None:
        x = MARGIN_LEFT_MM * mm
        y = PAGE_HEIGHT - MARGIN_TOP_MM * mm
        c.setFont(FONT_BOLD, 9)
        c.drawString(x, y, _fit(sender.name, FONT_BOLD, 9, (WINDOW_LEFT_MM - MARGIN_LEFT_MM - 5) * mm))
        c.setFont(FONT, 8)
        lines = list(sender.return_address)
        if lines and lines[0].strip() == sender.name.strip():
            lines = lines[1:]  # settings often repeat the name as the first return-address line
        for line in lines:
            y -= 10
            c.drawString(x, y, _fit(line, FONT, 8, (WINDOW_LEFT_MM - MARGIN_LEFT_MM - 5) * mm))

        # Date and case reference sit right, above the window, where Swedish letters keep them.
        x = (WINDOW_LEFT_MM + WINDOW_INSET_MM) * mm
        width = PAGE_WIDTH - x - MARGIN_RIGHT_MM * mm
        y = PAGE_HEIGHT - MARGIN_TOP_MM * mm
        today = self._clock.now().astimezone(LETTER_TIMEZONE).date()
        c.setFont(FONT, 9)
        c.drawString(x, y, f"Datum: {today.isoformat()}")
        if letter.case_reference:
            y -= 12
            c.drawString(x, y, _fit(f"Diarienummer: {letter.case_reference.strip()}", FONT, 9, width))


# What reportlab's font objects in a document depend on, and so the key of a cached font set: the
# internal name of every font in the document (F1 is the Helvetica of reportlab's page preamble) and,
# for each of our fonts, the characters of each subset in code order.
_FontKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]]


@dataclass(frozen=True, slots=True)
class _FontResources:
    """A page's /Font dictionary with the font objects it points to, held by a writer of its own that
    nothing writes to after it is built; letters copy from it."""

    holder: PdfWriter
    fonts: PdfObject


class _Serialized(PdfObject):
    """A direct value that every letter shares as the bytes pypdf wrote for it once: the fonts' widths
    arrays, a few hundred numbers that would otherwise be copied and written number by number for
    every letter. Never changed after it is made, so copying it into a letter's writer is the object
    itself."""

    def __init__(self, value: PdfObject) -> None:
        out = io.BytesIO()
        value.write_to_stream(out)
        self._data = out.getvalue()

    def clone(
        self,
        pdf_dest: Any,
        force_duplicate: bool = False,
        ignore_fields: Sequence[str | int] | None = (),
    ) -> _Serialized:
        return self

    def hash_bin(self) -> int:
        return hash((self.__class__, self._data))

    def write_to_stream(self, stream: Any) -> None:
        stream.write(self._data)


def _new_canvas(buf: io.BytesIO, seed: Sequence[str]) -> Any:
    # invariant=1: no creation time or random id in the file, so rendering is reproducible.
    c = canvas.Canvas(buf, pagesize=A4, invariant=1, pageCompression=1)
    # reportlab's own drawing code hands the canvas's document to the font the same way.
    doc = c._doc
    for name, chars in zip(_FONTS, seed, strict=True):
        font = pdfmetrics.getFont(name)
        font.splitString(chars, doc)
        font.getSubsetInternalName(0, doc)  # names the font (F2, F3) before the drawing order could
    return c


def _font_key(c: Any) -> _FontKey:
    doc = c._doc
    subsets = tuple(
        (name, tuple(tuple(subset) for subset in pdfmetrics.getFont(name).state[doc].subsets))
        for name in _FONTS
    )
    return tuple(sorted(doc.fontMapping.items())), subsets


def _build_font_resources(key: _FontKey) -> _FontResources:
    """The font objects reportlab writes for a document whose fonts are in the state `key` describes:
    a page with nothing on it, its fonts assigned the same characters in the same order."""
    _, subsets = key
    # Characters already assigned (ASCII, the notdef placeholder, the space) are skipped as reportlab
    # meets them again; the others get their codes in the order they come, which is code order.
    seed = ["".join(map(chr, itertools.chain.from_iterable(font_subsets))) for _, font_subsets in subsets]
    buf = io.BytesIO()
    c = _new_canvas(buf, seed)
    if _font_key(c) != key:
        # Only a change in how reportlab assigns codes could do this; a wrong font set would print
        # wrong characters, so refuse rather than guess.
        raise RuntimeError("the font subsets of a letter could not be rebuilt")
    c.showPage()
    c.save()
    page = PdfReader(io.BytesIO(buf.getvalue())).pages[0]
    holder = PdfWriter()
    # raw_get: the reference to the font dictionary, which the copy then points to in `holder`.
    fonts = cast(DictionaryObject, page["/Resources"]).raw_get("/Font").clone(holder)
    for font in cast(DictionaryObject, fonts.get_object()).values():
        font_dict = cast(DictionaryObject, font.get_object())
        widths = font_dict.raw_get("/Widths") if "/Widths" in font_dict else None
        if isinstance(widths, ArrayObject):
            font_dict[NameObject("/Widths")] = _Serialized(widths)
    return _FontResources(holder, fonts)


def _draw_address(c: Any, lines: list[str]) -> None:
    left = (WINDOW_LEFT_MM + WINDOW_INSET_MM) * mm
    top = PAGE_HEIGHT - (WINDOW_TOP_MM + WINDOW_INSET_MM) * mm
    width = (WINDOW_WIDTH_MM - 2 * WINDOW_INSET_MM) * mm
    height = (WINDOW_HEIGHT_MM - 2 * WINDOW_INSET_MM) * mm
    size = _address_font_size(lines, width, height)
    c.setFont(FONT, size)
    ascent = _ascent(size)
    y = top - ascent
    for line in lines:
        c.drawString(left, y, _fit(line, FONT, size, width))
        y -= size * 1.2


def _ascent(size: float) -> float:
    face = pdfmetrics.getFont(FONT).face
    return float(face.ascent) * size / 1000.0


def _descent(size: float) -> float:
    face = pdfmetrics.getFont(FONT).face
    return -float(face.descent) * size / 1000.0


def _address_font_size(lines: Sequence[str], width: float, height: float) -> float:
    """The largest size from the default down to the minimum at which every line fits the window width;
    lines still too wide at the minimum are cut by `_fit`."""
    size = ADDRESS_FONT_SIZE
    while size > ADDRESS_MIN_FONT_SIZE and any(_width(line, FONT, size) > width for line in lines):
        size = round(size - 0.5, 1)
    size = max(size, ADDRESS_MIN_FONT_SIZE)
    while _block_height(len(lines), size) > height and size > ADDRESS_MIN_FONT_SIZE:
        size = round(size - 0.5, 1)
    return max(size, ADDRESS_MIN_FONT_SIZE)


def _block_height(count: int, size: float) -> float:
    return _ascent(size) + (count - 1) * size * 1.2 + _descent(size)


def _fit(text: str, font: str, size: float, width: float) -> str:
    if _width(text, font, size) <= width:
        return text
    cut = text
    while cut and _width(cut.rstrip() + ELLIPSIS, font, size) > width:
        cut = cut[:-1]
    return cut.rstrip() + ELLIPSIS


def _draw_footer(c: Any, shipment_id: str, number: int, total: int) -> None:
    y = 12 * mm
    c.setFont(FONT, SMALL_FONT_SIZE)
    # The vendor quotes this reference when a letter comes back or is reported damaged.
    c.drawString(MARGIN_LEFT_MM * mm, y, f"Referens: {shipment_id}")
    c.drawRightString(PAGE_WIDTH - MARGIN_RIGHT_MM * mm, y, f"Sida {number} ({total})")


def _paginate(flow: list[_Line]) -> list[list[_Line]]:
    pages: list[list[_Line]] = [[]]
    room = PAGE_HEIGHT - BODY_TOP_MM * mm - MARGIN_BOTTOM_MM * mm
    full_page = PAGE_HEIGHT - (MARGIN_TOP_MM + MARGIN_BOTTOM_MM) * mm
    for line in flow:
        if line.leading > room:
            pages.append([])
            room = full_page
        if not pages[-1] and not line.text and len(pages) > 1:
            continue  # a blank line at the top of a continuation page only wastes space
        pages[-1].append(line)
        room -= line.leading
    while len(pages) > 1 and not any(line.text for line in pages[-1]):
        pages.pop()
    return pages


def _address_block(letter: Letter) -> list[str]:
    info = letter.recipient_info
    if not info.name or not info.name.strip():
        raise ValidationError("recipient.name", "mottagarens namn saknas; brevet kan inte skrivas ut")
    if info.postal_address is None:
        raise ValidationError(
            "recipient.postal_address", "mottagarens postadress saknas; brevet kan inte skrivas ut"
        )
    return [_one_line(info.name), *_postal_lines(info.postal_address)]


def _street_lines(lines: Sequence[str]) -> list[str]:
    return [_one_line(line) for line in lines if line.strip()]


def _abroad(country: str | None) -> bool:
    return country is not None and bool(country.strip()) and _one_line(country).casefold() not in _SWEDEN


def _postal_lines(address: PostalAddress) -> list[str]:
    street = _street_lines(address.lines)
    if len(street) > MAX_ADDRESS_LINES:
        raise ValidationError(
            "recipient.postal_address.lines",
            f"högst {MAX_ADDRESS_LINES} adressrader får plats i kuvertfönstret (fick {len(street)})",
        )
    if not address.postal_code.strip() or not address.city.strip():
        raise ValidationError(
            "recipient.postal_address", "postnummer och postort behövs för att brevet ska kunna skrivas ut"
        )
    abroad = _abroad(address.country)
    code = _one_line(address.postal_code)
    if not abroad:
        code = swedish_postal_code(code)
    lines = [*street, f"{code} {_one_line(address.city)}"]
    if abroad and address.country:
        lines.append(_one_line(address.country).upper())
    return lines


def swedish_postal_code(code: str) -> str:
    """Write a Swedish postal code the way PostNord prints it, ``123 45``; leave anything else as given."""
    digits = re.sub(r"\s+", "", code)
    if re.fullmatch(r"\d{5}", digits):
        return f"{digits[:3]} {digits[3:]}"
    return code


def _one_line(text: str) -> str:
    return " ".join(text.split())


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    return _CONTROL.sub("", text).strip("\n")


def _wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Greedy word wrap by measured width; a word wider than the line is split where it must be."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        words = paragraph.split(" ")
        line = ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if _width(candidate, font, size) <= width:
                line = candidate
                continue
            if line:
                out.append(line)
            while len(word) > 1 and _width(word, font, size) > width:
                cut = len(word) - 1
                while cut > 1 and _width(word[:cut], font, size) > width:
                    cut -= 1
                out.append(word[:cut])
                word = word[cut:]
            line = word
        out.append(line.rstrip())
    return out


_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset", "figure", "footer",
        "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main", "nav", "ol", "p", "pre",
        "section", "table", "tr", "ul",
    }
)  # fmt: skip
_SKIP_TAGS = frozenset({"script", "style", "head", "title"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n• ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        # Outside <pre>, HTML treats runs of white space as one space.
        self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def _html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    # convert_charrefs has already turned entities into characters; unescaping again would be wrong.
    text = "".join(parser.parts)
    lines = [line.strip(" ") for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _read_attachment(index: int, filename: str, content_type: str, data: bytes) -> tuple[PdfReader, str, str]:
    field = f"attachments[{index}]"
    if content_type.split(";")[0].strip().lower() != "application/pdf":
        raise ValidationError(field, f"{filename}: bara PDF kan skrivas ut (fick {content_type})")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ValidationError(field, f"{filename}: PDF-filen är lösenordsskyddad och kan inte skrivas ut")
        if len(reader.pages) == 0:
            raise ValidationError(field, f"{filename}: PDF-filen har inga sidor")
    except ValidationError:
        raise
    except Exception as exc:
        # pypdf raises many kinds of errors on a damaged file (its own, ValueError, KeyError, ...);
        # whichever it is, the attachment cannot be printed.
        raise ValidationError(field, f"{filename}: PDF-filen går inte att läsa ({exc})") from exc
    return reader, field, filename


def _append(writer: PdfWriter, reader: PdfReader, field: str, filename: str) -> None:
    try:
        writer.append(reader)
    except Exception as exc:
        raise ValidationError(field, f"{filename}: PDF-filen går inte att läsa ({exc})") from exc


# --------------------------------------------------------------------------------------------------
# Spool directory
# --------------------------------------------------------------------------------------------------

#: Columns of manifest.csv, in order; manifest.json uses the same names per letter, plus sha256.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "sequence",
    "shipment_id",
    "file",
    "pages",
    "recipient_name",
    "address_line_1",
    "address_line_2",
    "address_line_3",
    "postal_code",
    "city",
    "country",
    "sender_organisation_number",
    "sender_name",
    "case_reference",
)

# Shipment and batch ids become file names: keep them to characters that are safe on every share.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Ten or twelve digits, with or without the dash: what a personnummer looks like in free text.
REDACTED = "[personnummer borttaget]"
_ID_CANDIDATE = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")


class DirectoryPrintSpool:
    """`PrintSpool` over a directory tree (see the module docstring for the layout).

    Crash safety: files are written to a temporary name, fsynced and renamed; a batch is built in
    `outgoing/.<batch_id>.tmp/` from copies (or hard links) of the staged files and renamed into place
    in one step; staged files are deleted only after that. A crash at any point is repaired by calling
    `publish` again. Publishes in this process and others are serialised by a lock file in the root.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.outgoing = self.root / "outgoing"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.outgoing.mkdir(parents=True, exist_ok=True)

    def stage(self, shipment_id: str, pdf: bytes) -> StagedLetter:
        _check_name(shipment_id, "shipment id")
        pages = _count_pages(pdf, shipment_id)
        name = f"{shipment_id}.pdf"
        _atomic_write(self.staging / name, pdf)
        return StagedLetter(name=name, pages=pages, size_bytes=len(pdf))

    def publish(self, batch: PrintBatchInfo) -> str:
        _check_name(batch.batch_id, "batch id")
        final = self.outgoing / batch.batch_id
        records = _check_batch(batch)
        with self._lock():
            if final.is_dir():
                # Published before; a crash may have left staged files behind.
                self._remove_staged(records, final, _published_files(final))
                return str(final)
            missing = [r.staged_name for r in records if not (self.staging / r.staged_name).is_file()]
            if missing:
                shown = ", ".join(missing[:10])
                raise PrintSpoolError(
                    f"batch {batch.batch_id}: {len(missing)} staged letter(s) missing: {shown}"
                )
            tmp = self.outgoing / f".{batch.batch_id}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a crash in an earlier publish: rebuild from scratch
            tmp.mkdir()
            rows: list[dict[str, Any]] = []
            for record in records:
                file_name = f"{record.sequence:04d}-{record.shipment_id}.pdf"
                digest, size = _link_or_copy(self.staging / record.staged_name, tmp / file_name)
                if size != record.size_bytes:
                    raise PrintSpoolError(
                        f"batch {batch.batch_id}: {record.staged_name} is {size} bytes, "
                        f"the batch says {record.size_bytes}; it was staged again after the batch closed"
                    )
                rows.append({**_manifest_row(record, file_name), "sha256": digest, "size_bytes": size})
            _atomic_write(tmp / "manifest.csv", _manifest_csv(rows), sync_dir=False)
            _atomic_write(tmp / "manifest.json", _manifest_json(batch, rows), sync_dir=False)
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.outgoing)
            self._remove_staged(records, final, {r["shipment_id"]: (r["sha256"], r["file"]) for r in rows})
            return str(final)

    def _remove_staged(
        self, records: Sequence[PrintLetterRecord], batch_dir: Path, published: dict[str, tuple[str, str]]
    ) -> None:
        # Only a staged file identical to the published one goes: a letter staged anew since (a later
        # attempt for the same shipment) must survive a repeated publish of an old batch.
        removed = False
        for record in records:
            path = self.staging / record.staged_name
            want = published.get(record.shipment_id)
            if want is None or not path.is_file():
                continue
            sha256, file_name = want
            batch_file = batch_dir / file_name
            same = batch_file.exists() and os.path.samefile(path, batch_file)  # hard-linked: no need to hash
            if same or _sha256(path) == sha256:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            _fsync_dir(self.staging)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".publish.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_name(name: str, what: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise PrintSpoolError(f"{what} {name!r} cannot be used as a file name")


def _count_pages(pdf: bytes, shipment_id: str) -> int:
    try:
        pages = len(PdfReader(io.BytesIO(pdf)).pages)
    except Exception as exc:
        # Whatever pypdf raises, the vendor could not print this file either.
        raise PrintSpoolError(f"shipment {shipment_id}: not a readable PDF ({exc})") from exc
    if pages == 0:
        raise PrintSpoolError(f"shipment {shipment_id}: the PDF has no pages")
    return pages


def _check_batch(batch: PrintBatchInfo) -> list[PrintLetterRecord]:
    if not batch.letters:
        raise PrintSpoolError(f"batch {batch.batch_id}: has no letters")
    records = sorted(batch.letters, key=lambda r: r.sequence)
    seen_seq: set[int] = set()
    seen_ids: set[str] = set()
    for r in records:
        _check_name(r.shipment_id, "shipment id")
        if r.staged_name != f"{r.shipment_id}.pdf":
            raise PrintSpoolError(
                f"batch {batch.batch_id}: {r.staged_name!r} is not the staged name of {r.shipment_id}"
            )
        if r.sequence < 1 or r.sequence in seen_seq:
            raise PrintSpoolError(
                f"batch {batch.batch_id}: sequence {r.sequence} is not positive or not unique"
            )
        if r.shipment_id in seen_ids:
            raise PrintSpoolError(f"batch {batch.batch_id}: shipment {r.shipment_id} appears twice")
        if len(_street_lines(r.address_lines)) > MAX_ADDRESS_LINES:
            raise PrintSpoolError(
                f"batch {batch.batch_id}: sequence {r.sequence} has {len(r.address_lines)} address lines; "
                f"the manifest holds {MAX_ADDRESS_LINES}"
            )
        seen_seq.add(r.sequence)
        seen_ids.add(r.shipment_id)
    return records


def _manifest_row(r: PrintLetterRecord, file_name: str) -> dict[str, Any]:
    lines = [*_street_lines(r.address_lines), "", "", ""][:MAX_ADDRESS_LINES]
    code = _one_line(r.postal_code)
    row: dict[str, Any] = {
        "sequence": r.sequence,
        "shipment_id": r.shipment_id,
        "file": file_name,
        "pages": r.pages,
        "recipient_name": _one_line(r.recipient_name),
        "address_line_1": lines[0],
        "address_line_2": lines[1],
        "address_line_3": lines[2],
        "postal_code": code if _abroad(r.country) else swedish_postal_code(code),
        "city": _one_line(r.city),
        "country": _one_line(r.country or ""),
        "sender_organisation_number": r.sender_organisation_number,
        "sender_name": r.sender_name,
        "case_reference": r.case_reference or "",
    }
    # The vendor has no need for an identity number and must not receive one, not even one a case
    # handler typed into an address or case reference. Redacting (rather than refusing) keeps one odd
    # letter from blocking the whole batch; the envelope is addressed from the PDF, not the manifest.
    for key, value in row.items():
        if key != "sender_organisation_number" and isinstance(value, str):
            row[key] = _redact_personal_numbers(value)
    return row


def _redact_personal_numbers(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            is_person = RecipientId.parse(match.group(0)).kind.is_person
        except InvalidRecipientIdError:
            return match.group(0)
        return REDACTED if is_person else match.group(0)

    return _ID_CANDIDATE.sub(replace, text)


def _manifest_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _manifest_json(batch: PrintBatchInfo, rows: list[dict[str, Any]]) -> bytes:
    doc = {
        "batch_id": batch.batch_id,
        "sender_key": batch.sender_key,
        "opened_at": batch.opened_at.isoformat(),
        "closed_at": batch.closed_at.isoformat(),
        "letter_count": len(rows),
        "page_count": sum(int(r["pages"]) for r in rows),
        "total_bytes": sum(int(r["size_bytes"]) for r in rows),
        "letters": rows,
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _published_files(batch_dir: Path) -> dict[str, tuple[str, str]]:
    try:
        doc = json.loads((batch_dir / "manifest.json").read_bytes())
        return {str(row["shipment_id"]): (str(row["sha256"]), str(row["file"])) for row in doc["letters"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # not ours to judge: the vendor may already have taken files away


def _link_or_copy(src: Path, dst: Path) -> tuple[str, int]:
    """Put `src` at `dst` without moving it, so a crash never loses the staged letter; return the
    sha256 and size of what `dst` holds."""
    try:
        os.link(src, dst)
    except OSError:
        # No hard links on this file system (or across devices): copy instead.
        _atomic_write_from(dst, lambda fh: _copy_into(src, fh), sync_dir=False)
    return _sha256(dst), dst.stat().st_size


def _copy_into(src: Path, fh: io.BufferedWriter) -> None:
    with open(src, "rb") as source:
        shutil.copyfileobj(source, fh, 1024 * 1024)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    _atomic_write_from(path, lambda fh: fh.write(data), sync_dir=sync_dir)


def _atomic_write_from(path: Path, fill: Callable[[io.BufferedWriter], object], *, sync_dir: bool) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; without it a power cut can undo a rename that already "happened".
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
