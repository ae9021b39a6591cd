"""Checks on letter content that need libraries (PDF parsing, HTML sanitising): done once, at intake."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace

import nh3
from pypdf import PdfReader
from pypdf.errors import PdfReadError

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


def sanitise_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"https", "mailto", "tel"},
        link_rel="noopener noreferrer",
    )


def pdf_page_count(content: bytes, field: str) -> int:
    """Raise ValidationError unless `content` is a readable, unencrypted PDF with at least one page."""
    if not content.startswith(b"%PDF-"):
        raise ValidationError(field, "is not a PDF (the file does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise ValidationError(field, "is an encrypted PDF; send it unencrypted")
        pages = len(reader.pages)
    except ValidationError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValidationError(field, f"is not a readable PDF ({type(exc).__name__})") from None
    if pages < 1:
        raise ValidationError(field, "is a PDF without pages")
    return pages


def check_letter(letter: Letter, limits: ContentLimits) -> Letter:
    """Check sizes and attachment content; return the letter with an HTML body sanitised."""
    if len(letter.body) > limits.max_body_chars:
        raise ValidationError("body.content", f"is longer than {limits.max_body_chars} characters")
    if len(letter.attachments) > limits.max_attachments:
        raise ValidationError("attachments", f"at most {limits.max_attachments} attachments")
    total = 0
    for i, att in enumerate(letter.attachments):
        field = f"attachments[{i}]"
        size = len(att.content)
        if size > limits.max_attachment_bytes:
            raise ValidationError(field, f"is {size} bytes; the limit is {limits.max_attachment_bytes}")
        total += size
        if att.content_type != "application/pdf":
            raise ValidationError(f"{field}.content_type", "only application/pdf is accepted")
        pdf_page_count(att.content, field)
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
