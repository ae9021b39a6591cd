from __future__ import annotations

import pytest

from kanalvaxel.domain.masking import mask_email, mask_mobile


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("mottagare@example.se", "mo*******@example.se"),
        ("ab@example.se", "a***@example.se"),
        ("a@example.se", "a***@example.se"),
        ("not-an-address", "********"),
    ],
)
def test_mask_email_keeps_the_domain_and_hides_the_person(address: str, masked: str) -> None:
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+46701234567", "+4670*****67"), ("0701234567", "0701****67"), ("12345", "*****")],
)
def test_mask_mobile_keeps_prefix_and_last_two_digits(number: str, masked: str) -> None:
    assert mask_mobile(number) == masked
    assert number[4:-2] not in masked or len(number) < 7


def test_free_text_masks_quoted_addresses_and_identity_numbers() -> None:
    from kanalvaxel.domain.masking import mask_free_text

    text = "to=<mottagare@example.se> pnr 19121212-1212 och 121212+1212, kö-id 4XyZ12"
    assert mask_free_text(text) == "to=<mo*******@example.se> pnr 19121212-**** och 121212-****, kö-id 4XyZ12"
