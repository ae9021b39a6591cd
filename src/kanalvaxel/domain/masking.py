"""Masked forms of contact details, for logs, events and exports that must not carry personal data in full."""

from __future__ import annotations


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
