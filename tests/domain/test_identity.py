from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanalvaxel.domain.errors import InvalidRecipientIdError
from kanalvaxel.domain.identity import RecipientId, RecipientKind, luhn_ok, organisation_number

from .factories import bad_luhn, luhn_digit, person_twelve, with_luhn

TODAY = date(2025, 3, 14)


def parse(raw: str, today: date = TODAY) -> RecipientId:
    return RecipientId.parse(raw, today=today)


# ------------------------------------------------------------------------------- the Luhn helper itself


@pytest.mark.parametrize(
    "ten",
    [
        "1212121212",  # 19121212-1212, Skatteverket's classic example
        "8112289874",  # 811228-9874
        "6709199530",  # 670919-9530
        "7010632391",  # 701063-2391, samordningsnummer example
        "2021005448",  # 202100-5448, Skatteverket's organisation number
        "5560360793",
    ],
)
def test_known_numbers_pass_luhn_both_here_and_in_the_code(ten: str) -> None:
    assert luhn_digit(ten[:9]) == ten[9]
    assert luhn_ok(ten)


@given(st.from_regex(r"[0-9]{9}", fullmatch=True))
def test_luhn_ok_accepts_exactly_one_check_digit(nine: str) -> None:
    accepted = [d for d in "0123456789" if luhn_ok(nine + d)]
    assert accepted == [luhn_digit(nine)]


# ------------------------------------------------------------------------------------- personnummer


@pytest.mark.parametrize(
    "raw",
    [
        "19121212-1212",
        "191212121212",
        "121212+1212",  # 10-digit form with +: born 1912, aged 100 or more
        "  19121212-1212\n",
        "1912 1212 - 1212",
    ],
)
def test_classic_example_in_every_form(raw: str) -> None:
    rid = parse(raw)
    assert rid.value == "191212121212"
    assert rid.kind is RecipientKind.PERSON
    assert rid.kind.is_person
    assert str(rid) == "191212121212"


def test_ten_digit_form_takes_century_from_today() -> None:
    assert parse("121212-1212").value == "201212121212"
    assert parse("1212121212").value == "201212121212"
    assert parse("121212-1212", today=date(2010, 1, 1)).value == "191212121212"
    assert parse("811228-9874").value == "198112289874"
    assert parse("670919-9530").value == "196709199530"


def test_ten_digit_form_this_years_two_digits_are_this_century() -> None:
    born = date(2025, 1, 2)
    ten = person_twelve(born)[2:]
    assert parse(f"{ten[:6]}-{ten[6:]}").value == "20" + ten
    assert parse(f"{ten[:6]}+{ten[6:]}").value == "19" + ten


def test_plus_sign_means_a_hundred_years_more() -> None:
    # Born 1925: 99 or 100 in 2025; "+" is used from the year one turns 100.
    ten = person_twelve(date(1925, 6, 1))[2:]
    assert parse(f"{ten[:6]}+{ten[6:]}").value == "19" + ten
    # Two digits "26" with "+" in 2025: 1926 would be 99, so it must be 1826.
    ten = person_twelve(date(1826, 6, 1))[2:]
    assert parse(f"{ten[:6]}+{ten[6:]}").value == "18" + ten


def test_personnummer_with_century_18_is_accepted() -> None:
    twelve = person_twelve(date(1899, 12, 31))
    assert parse(twelve).value == twelve


@pytest.mark.parametrize("century", ["17", "21", "00", "99"])
def test_other_centuries_are_refused(century: str) -> None:
    ten = person_twelve(date(1990, 5, 17))[2:]
    with pytest.raises(InvalidRecipientIdError, match=f"century {century} is not possible"):
        parse(century + ten)


def test_plus_sign_with_twelve_digits_is_refused() -> None:
    with pytest.raises(InvalidRecipientIdError, match=r"\+ separator"):
        parse("19121212+1212")


# ---------------------------------------------------------------------------------- samordningsnummer


def test_samordningsnummer_is_coordination() -> None:
    rid = parse("701063-2391")
    assert rid.value == "197010632391"
    assert rid.kind is RecipientKind.COORDINATION
    assert rid.kind.is_person
    assert parse("197010632391") == rid


@pytest.mark.parametrize("day", [1, 15, 28, 31])
def test_samordningsnummer_days_61_to_91(day: int) -> None:
    twelve = person_twelve(date(1985, 1, day), coordination=True)
    assert twelve[6:8] == f"{day + 60:02d}"
    rid = parse(twelve)
    assert rid.kind is RecipientKind.COORDINATION
    assert rid.value == twelve


@pytest.mark.parametrize("mmdd", ["0160", "0192", "0491", "0290"])  # day 0, 32, Apr 31, Feb 30
def test_samordningsnummer_with_impossible_day(mmdd: str) -> None:
    with pytest.raises(InvalidRecipientIdError, match="not a real date"):
        parse("19" + with_luhn("85" + mmdd + "123"))


# ----------------------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("yyyymmdd", "real"),
    [
        ("20240229", True),  # leap year
        ("20230229", False),
        ("20000229", True),  # divisible by 400
        ("19000229", False),  # divisible by 100, not by 400
        ("20240230", False),
        ("20240431", False),
        ("20241231", True),
        ("20240001", False),
        ("20241301", False),
        ("20241900", False),  # month 19: still a person number, not an organisation
        ("20240100", False),
        ("20240132", False),
    ],
)
def test_date_part_must_be_a_real_date(yyyymmdd: str, real: bool) -> None:
    twelve = yyyymmdd[:2] + with_luhn(yyyymmdd[2:] + "123")
    if real:
        assert parse(twelve).value == twelve
    else:
        with pytest.raises(InvalidRecipientIdError, match="not a real date"):
            parse(twelve)


def test_leap_day_in_coordination_numbers() -> None:
    leap = person_twelve(date(2024, 2, 29), coordination=True)
    assert leap[4:8] == "0289"
    assert parse(leap).kind is RecipientKind.COORDINATION
    with pytest.raises(InvalidRecipientIdError, match="not a real date"):
        parse("20" + with_luhn("230289123"))  # 29 + 60 in a non-leap year


def test_ten_digit_leap_day_depends_on_the_inferred_century() -> None:
    ten = with_luhn("000229123")
    assert parse(f"{ten[:6]}-{ten[6:]}").value == "20" + ten  # 2000 was a leap year
    with pytest.raises(InvalidRecipientIdError, match="not a real date"):
        parse(f"{ten[:6]}+{ten[6:]}")  # 1900 was not


# ------------------------------------------------------------------------------ organisation numbers


@pytest.mark.parametrize("raw", ["202100-5448", "2021005448", "162021005448", " 202100-5448 "])
def test_organisation_number_forms(raw: str) -> None:
    rid = parse(raw)
    assert rid.value == "162021005448"
    assert rid.kind is RecipientKind.ORGANISATION
    assert not rid.kind.is_person
    assert rid.organisation_number == "2021005448"


def test_organisation_number_does_not_need_today() -> None:
    assert RecipientId.parse("556036-0793").value == "165560360793"


@pytest.mark.parametrize("raw", ["192021005448", "202021005448", "202100+5448"])
def test_organisation_number_with_a_century_or_plus_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRecipientIdError, match="no century other than 16"):
        parse(raw)


def test_sixteen_prefix_with_a_person_number_is_refused() -> None:
    with pytest.raises(InvalidRecipientIdError, match="16-prefixed numbers must be organisation numbers"):
        parse("161212121212")


def test_organisation_number_function() -> None:
    assert organisation_number("202100-5448") == "2021005448"
    assert organisation_number("162021005448") == "2021005448"
    with pytest.raises(InvalidRecipientIdError) as info:
        organisation_number("19121212-1212", field="sender.org")
    assert info.value.field == "sender.org"
    assert "not an organisation number" in str(info.value)


def test_organisation_number_property_of_a_person_raises() -> None:
    with pytest.raises(InvalidRecipientIdError, match="not an organisation number"):
        _ = parse("19121212-1212").organisation_number


# -------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "raw",
    [
        "19121212-1213",
        "191212121211",
        "121212-1210",
        "701063-2390",
        "202100-5449",
        "162021005440",
    ],
)
def test_luhn_failures(raw: str) -> None:
    with pytest.raises(InvalidRecipientIdError, match="Luhn"):
        parse(raw)


@given(st.from_regex(r"[0-9]{2}[0-1][0-9]{6}", fullmatch=True) | st.from_regex(r"[0-9]{9}", fullmatch=True))
def test_any_wrong_check_digit_is_refused(nine: str) -> None:
    with pytest.raises(InvalidRecipientIdError, match="Luhn"):
        parse(bad_luhn(nine))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "19121212-121",  # 11 digits
        "1912121212123",  # 13 digits
        "12121-21212",
        "19121212--1212",
        "19121212/1212",
        "19121212_1212",
        "1912121212 12 x",
        "19121212\t1212",  # only ordinary spaces are dropped inside
        "+121212-1212",
        "-1212121212",
        "1212121212-",
        "19121212-1212-",
        "１９１２１２１２-１２１２",  # full-width digits
        "８１１２２８-９８７４",
        "２０２１００-５４４８",
        "811228-987٤",  # an Arabic-Indic four
        "811228-9874\x00",
    ],
)
def test_garbage_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRecipientIdError) as info:
        parse(raw)
    assert info.value.field == "recipient.id"


def test_error_names_the_field() -> None:
    with pytest.raises(InvalidRecipientIdError) as info:
        RecipientId.parse("nonsense", field="recipients[3].id")
    assert info.value.field == "recipients[3].id"
    assert str(info.value).startswith("recipients[3].id: ")


@given(st.text(max_size=20))
def test_arbitrary_text_parses_to_ascii_twelve_digits_or_is_refused(raw: str) -> None:
    try:
        rid = parse(raw)
    except InvalidRecipientIdError:
        return
    assert len(rid.value) == 12
    assert rid.value.isascii()
    assert rid.value.isdigit()


# ------------------------------------------------------------------------------------------ masked


def test_masked_keeps_only_the_birth_date_of_a_person() -> None:
    assert parse("19121212-1212").masked == "19121212-****"
    assert parse("701063-2391").masked == "19701063-****"
    assert "1212" not in parse("19121212-1212").masked[8:]


def test_masked_organisation_number_is_shown_in_full() -> None:
    assert parse("202100-5448").masked == "162021005448"


# ----------------------------------------------------------------------------------- the property


@st.composite
def people(draw: st.DrawFn) -> tuple[date, date, bool, str]:
    today = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)))
    earliest = date(max(1800, today.year - 199), 1, 1)
    born = draw(st.dates(min_value=earliest, max_value=today))
    coordination = draw(st.booleans())
    serial = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
    return today, born, coordination, serial


@settings(max_examples=500, deadline=None)
@given(people())
def test_every_form_of_a_valid_personnummer_parses_to_the_same_value(
    person: tuple[date, date, bool, str],
) -> None:
    today, born, coordination, serial = person
    twelve = person_twelve(born, serial, coordination=coordination)
    ten = twelve[2:]
    sign = "+" if today.year - born.year >= 100 else "-"
    forms = [twelve, f"{twelve[:8]}-{twelve[8:]}", f"{ten[:6]}{sign}{ten[6:]}"]
    if sign == "-":
        forms.append(ten)
    parsed = {parse(f, today=today) for f in forms}
    assert len(parsed) == 1
    (rid,) = parsed
    assert rid.value == twelve
    assert rid.kind is (RecipientKind.COORDINATION if coordination else RecipientKind.PERSON)
    assert parse(rid.value, today=today) == rid
    assert rid.masked == f"{twelve[:8]}-****"


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[0-9]{2}[2-9][0-9]{6}", fullmatch=True))
def test_every_form_of_a_valid_organisation_number_parses_to_the_same_value(nine: str) -> None:
    ten = with_luhn(nine)
    forms = [ten, f"{ten[:6]}-{ten[6:]}", "16" + ten]
    parsed = {RecipientId.parse(f) for f in forms}
    assert parsed == {RecipientId("16" + ten, RecipientKind.ORGANISATION)}
    assert RecipientId.parse("16" + ten).value == "16" + ten
