"""The comparable form of an e-mail address (certificates against what case systems send)."""

from __future__ import annotations

import pytest

from kanalvaxel.domain.addresses import address_key


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("anna@example.se", "anna@example.se"),
        (" Anna.Berg@Example.SE ", "anna.berg@example.se"),
        ("anna@räksmörgås.se", "anna@xn--rksmrgs-5wao1o.se"),
        ("anna@RÄKSMÖRGÅS.SE", "anna@xn--rksmrgs-5wao1o.se"),
        ("anna@xn--rksmrgs-5wao1o.se", "anna@xn--rksmrgs-5wao1o.se"),
        ("anna@example.se.", "anna@example.se"),  # the root's dot names the same domain
        ("a@b@example.se", "a@b@example.se"),  # the last @ separates the domain
        ("ingen-adress", "ingen-adress"),
        ("anna@" + "å" * 70 + ".se", "anna@" + "å" * 70 + ".se"),  # a label too long for IDNA: left as is
    ],
)
def test_address_key(written: str, key: str) -> None:
    assert address_key(written) == key


def test_different_mailboxes_stay_different() -> None:
    assert address_key("anna@räksmörgås.se") != address_key("anna@raksmorgas.se")
    assert address_key("anna@example.se") != address_key("anne@example.se")
