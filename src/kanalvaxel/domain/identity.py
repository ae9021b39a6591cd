"""Swedish identity numbers: personnummer, samordningsnummer and organisationsnummer.

All three end in a Luhn check digit over the last ten digits. We accept the forms people type
(``YYMMDD-NNNN``, ``YYYYMMDDNNNN``, ``NNNNNN-NNNN``, ``16NNNNNNNNNN``) and normalise to the
12-digit form Mina meddelanden uses (``r1:RecipientId``): century + date + four digits for a person,
``16`` + ten digits for an organisation.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date

from kanalvaxel.domain.errors import InvalidRecipientIdError

# ASCII digits only: `\d` would also take e.g. full-width or Arabic-Indic digits, which int() reads but
# Mina meddelanden and our database would store as something other than twelve ASCII digits.
_FORM = re.compile(r"^(?P<century>[0-9]{2})?(?P<six>[0-9]{6})(?P<sep>[-+]?)(?P<last>[0-9]{4})$")


class RecipientKind(enum.StrEnum):
    PERSON = "PERSON"
    COORDINATION = "COORDINATION"  # samordningsnummer: day of birth + 60
    ORGANISATION = "ORGANISATION"

    @property
    def is_person(self) -> bool:
        return self is not RecipientKind.ORGANISATION


def luhn_ok(ten_digits: str) -> bool:
    """True when the last digit is the Luhn check digit of the first nine."""
    total = 0
    for i, ch in enumerate(ten_digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class RecipientId:
    """A validated identity number in its 12-digit form."""

    value: str
    kind: RecipientKind

    def __str__(self) -> str:
        return self.value

    @property
    def masked(self) -> str:
        """The form we may show in logs and exports to callers who are not entitled: birth date kept."""
        if self.kind is RecipientKind.ORGANISATION:
            return self.value  # organisation numbers are public
        return self.value[:8] + "-****"

    @property
    def organisation_number(self) -> str:
        """The ten-digit organisation number (``NNNNNN-NNNN`` without the dash)."""
        if self.kind is not RecipientKind.ORGANISATION:
            raise InvalidRecipientIdError("recipient.id", "not an organisation number")
        return self.value[2:]

    @classmethod
    def parse(cls, raw: str, *, today: date | None = None, field: str = "recipient.id") -> RecipientId:
        """Validate and normalise. `today` decides the century of a ten-digit personnummer."""
        text = raw.strip().replace(" ", "")
        m = _FORM.match(text)
        if m is None:
            raise InvalidRecipientIdError(
                field, "must be a personnummer, samordningsnummer or organisationsnummer (10 or 12 digits)"
            )
        century, six, sep, last = m["century"], m["six"], m["sep"], m["last"]
        ten = six + last
        if not luhn_ok(ten):
            raise InvalidRecipientIdError(field, "check digit does not match (Luhn)")
        month = int(ten[2:4])
        if month >= 20:  # the third digit of an organisation number is at least 2
            if century not in (None, "16") or sep == "+":
                raise InvalidRecipientIdError(field, "an organisation number takes no century other than 16")
            return cls("16" + ten, RecipientKind.ORGANISATION)
        if century == "16":
            raise InvalidRecipientIdError(field, "16-prefixed numbers must be organisation numbers")
        day = int(ten[4:6])
        kind = RecipientKind.PERSON
        if day > 60:
            kind, day = RecipientKind.COORDINATION, day - 60
        yy = int(ten[0:2])
        if century is None:
            ref = today or date.today()
            full = (ref.year // 100) * 100 + yy
            if full > ref.year:
                full -= 100
            if sep == "+":  # the plus sign marks people aged 100 or more
                full -= 100
        else:
            if century not in ("18", "19", "20"):
                raise InvalidRecipientIdError(field, f"century {century} is not possible")
            if sep == "+":
                raise InvalidRecipientIdError(field, "the + separator goes only with the 10-digit form")
            full = int(century) * 100 + yy
        try:
            date(full, month, day)
        except ValueError:
            raise InvalidRecipientIdError(field, "the date part is not a real date") from None
        return cls(f"{full // 100:02d}{ten}", kind)


def organisation_number(raw: str, *, field: str = "organisation_number") -> str:
    """Validate an organisation number and return its ten digits (for sender identities)."""
    rid = RecipientId.parse(raw, field=field)
    if rid.kind is not RecipientKind.ORGANISATION:
        raise InvalidRecipientIdError(field, "not an organisation number")
    return rid.organisation_number
