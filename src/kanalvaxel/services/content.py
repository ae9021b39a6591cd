"""Checks on letter content that need libraries (PDF parsing, HTML sanitising): done once, at intake."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace

import nh3
from pypdf import PdfReader
from pypdf.errors import LimitReachedError
from pypdf.filters import decode_stream_data
from pypdf.generic import IndirectObject, StreamObject

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.model import BodyType, Letter

log = logging.getLogger(__name__)

#: Tags a letter body may keep: structure and emphasis, no scripts, forms, images or styles.
ALLOWED_TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "b",
    "i",
    "u",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "a",
    "blockquote",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "div",
    "hr",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}


@dataclass(frozen=True, slots=True)
class ContentLimits:
    max_attachments: int
    max_attachment_bytes: int
    max_total_attachment_bytes: int
    max_body_chars: int
    #: What the streams of a letter's attachments may expand to, together.
    max_decompressed_bytes: int = 100 * 1024 * 1024


def sanitise_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"https", "mailto", "tel"},
        link_rel="noopener noreferrer",
    )


class ExpansionBudget:
    """What the PDFs of one letter may expand to, together: shared by its attachments."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


def pdf_page_count(
    content: bytes,
    field: str,
    *,
    max_decompressed_bytes: int | None = None,
    budget: ExpansionBudget | None = None,
) -> int:
    """Raise ValidationError unless `content` is a readable, unencrypted PDF with at least one page (and
    whose streams expand to no more than `max_decompressed_bytes`, or what is left of `budget`)."""
    if budget is None and max_decompressed_bytes is not None:
        budget = ExpansionBudget(max_decompressed_bytes)
    if not content.startswith(b"%PDF-"):
        raise ValidationError(field, "is not a PDF (the file does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise ValidationError(field, "is an encrypted PDF; send it unencrypted")
        pages = len(reader.pages)
        if budget is not None:
            _check_expansion(reader, field, budget)
    except ValidationError:
        raise
    except LimitReachedError as exc:
        raise ValidationError(field, f"is a PDF too large or too deep to read safely ({exc})") from None
    except RecursionError:
        raise ValidationError(field, "is not a readable PDF (its structure nests too deep)") from None
    except Exception as exc:
        # pypdf raises many kinds of errors on a damaged or hostile file (its own, ValueError, KeyError,
        # AssertionError, ...); whichever it is, nobody downstream can read the file either.
        raise ValidationError(field, f"is not a readable PDF ({type(exc).__name__})") from None
    if pages < 1:
        raise ValidationError(field, "is a PDF without pages")
    return pages


def _check_expansion(reader: PdfReader, field: str, budget: ExpansionBudget) -> None:
    """Decode every stream once, counting: a small file that expands to hundreds of MB is refused here
    rather than in the print vendor's RIP or a mailbox operator's viewer. pypdf bounds each stream itself
    (75 MB); decoded data is counted and dropped at once (`get_data` would keep it in the reader), so memory
    holds at most one stream, and the budget is the letter's, so many attachments cannot multiply it."""
    for generation, objects in reader.xref.items():
        for number in objects:
            obj = reader.get_object(IndirectObject(number, generation, reader))
            if isinstance(obj, StreamObject):
                budget.used += len(decode_stream_data(obj))
                if budget.used > budget.limit:
                    raise ValidationError(
                        field,
                        f"is a PDF whose content expands past {budget.limit} bytes "
                        "(the attachments of a letter together)",
                    )


def check_letter(letter: Letter, limits: ContentLimits) -> Letter:
    """Check sizes and attachment content; return the letter with an HTML body sanitised."""
    if len(letter.body) > limits.max_body_chars:
        raise ValidationError("body.content", f"is longer than {limits.max_body_chars} characters")
    if len(letter.attachments) > limits.max_attachments:
        raise ValidationError("attachments", f"at most {limits.max_attachments} attachments")
    total = 0
    budget = ExpansionBudget(limits.max_decompressed_bytes)
    for i, att in enumerate(letter.attachments):
        field = f"attachments[{i}]"
        size = len(att.content)
        if size > limits.max_attachment_bytes:
            raise ValidationError(field, f"is {size} bytes; the limit is {limits.max_attachment_bytes}")
        total += size
        if att.content_type != "application/pdf":
            raise ValidationError(f"{field}.content_type", "only application/pdf is accepted")
        pdf_page_count(att.content, field, budget=budget)
    if total > limits.max_total_attachment_bytes:
        raise ValidationError(
            "attachments", f"are {total} bytes together; the limit is {limits.max_total_attachment_bytes}"
        )
    if letter.body_type is BodyType.HTML:
        clean = sanitise_html(letter.body)
        if clean != letter.body:
            log.info("HTML body sanitised (%d -> %d characters)", len(letter.body), len(clean))
        letter = replace(letter, body=clean)
    return letter
