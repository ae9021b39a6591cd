"""One comparable form of an e-mail address, so that the same mailbox written two ways is the same key.

Certificates carry addresses in ASCII (an rfc822Name is IA5String), with an internationalised domain in its
IDNA ``xn--`` form, while a case system may send ``anna@räksmörgås.se``. Both become
``anna@xn--rksmrgs-5wao1o.se``. The local part is compared without regard to case: RFC 5321 lets a server
tell ``Anna`` from ``anna``, but no mail system in use does, and certificate authorities lower-case it.
"""

from __future__ import annotations

import contextlib


def address_key(address: str) -> str:
    """``Anna@Räksmörgås.SE`` -> ``anna@xn--rksmrgs-5wao1o.se``; an address that is not one is only trimmed
    and lower-cased (it then matches nothing real)."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().lower()
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        # Not a valid domain name: left as it is, so it matches no certificate.
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return f"{local.lower()}@{domain}"
