"""Masked forms of contact details, for logs, events and exports that must not carry personal data in full."""

from __future__ import annotations

import re

#: Something that looks like an e-mail address inside free text (a relay's answer, an operator's note).
ADDRESS_IN_TEXT = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
#: A personnummer or samordningsnummer (10 or 12 digits, with or without separator) inside free text.
IDENTITY_IN_TEXT = re.compile(r"(?<!\d)((?:\d ?){5}\d|(?:\d ?){7}\d) ?[-+]? ?((?:\d ?){3}\d)(?!\d)")


def mask_email(address: str) -> str:
    """``mottagare@example.se`` -> ``mo*******@example.se``: enough for customer service to recognise it."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "*" * min(len(address), 8)
    keep = 2 if len(local) > 4 else 1
    return f"{local[:keep]}{'*' * max(3, len(local) - keep)}@{domain}"


def mask_mobile(number: str) -> str:
    """``+46701234567`` -> ``+4670*****67``: country and operator prefix and the last two digits."""
    digits = number.lstrip("+")
    if len(digits) < 7:
        return "*" * len(number)
    prefix = "+" if number.startswith("+") else ""
    return f"{prefix}{digits[:4]}{'*' * (len(digits) - 6)}{digits[-2:]}"


#: A UUID (shipment, batch and attempt ids): its digit runs are not identity numbers, and grepping a log for
#: an id must find it.
UUID_IN_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: The password in a URL's user information: ``scheme://user:password@host``. The password runs to the
#: next ``@`` (SQLAlchemy reads ``/`` inside a password too); a URL with no user information but an ``@``
#: later on may lose more than its password, which is the safe way to be wrong.
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)(?P<password>[^\s@]*)@")
#: ``password=...`` (and the like) in a URL's query or a connection string.
QUERY_PASSWORD = re.compile(
    r"(?i)(?P<head>(?:^|[?&;\s])(?:password|passwd|pwd|secret|token)=)(?P<password>[^&;\s]*)"
)


def mask_identity_numbers(text: str) -> str:
    """Identity numbers in free text keep the birth date only: ``19121212-1212`` -> ``19121212-****``.
    UUIDs are left as they are."""
    out: list[str] = []
    last = 0
    for uuid in UUID_IN_TEXT.finditer(text):
        out.append(IDENTITY_IN_TEXT.sub(lambda m: f"{m[1]}-****", text[last : uuid.start()]))
        out.append(uuid.group())
        last = uuid.end()
    out.append(IDENTITY_IN_TEXT.sub(lambda m: f"{m[1]}-****", text[last:]))
    return "".join(out)


def redact_passwords(text: str) -> str:
    """Passwords in URLs (``postgresql://user:secret@host`` -> ``postgresql://user:***@host``) and
    ``password=`` parameters replaced, wherever they occur in `text`."""
    text = URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)
    return QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def escape_controls(text: str) -> str:
    """Control and other invisible characters written as escapes, so that what came from outside (a URL
    path, a header) can neither forge a log line nor move the terminal's cursor. A backslash is doubled, so
    an escape in the log always stands for the character, never for the text someone sent."""
    return "".join(
        "\\\\" if c == "\\" else c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def mask_free_text(text: str) -> str:
    """Free text that may quote contact details (an operator's note, a relay's answer): addresses and
    identity numbers masked."""
    return mask_identity_numbers(ADDRESS_IN_TEXT.sub(lambda m: mask_email(m.group(0)), text))
