"""The text rules of a letter: the published patterns and the checks are the same rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.text import (
    FILE_NAME_PATTERN,
    ONE_LINE_PATTERN,
    RUNNING_TEXT_PATTERN,
    file_name,
    one_line,
    running_text,
)

# Without surrogates: the published patterns leave them out (the checks refuse them; see below).
bmp_text = st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=30)


def _accepts(check: object, value: str) -> bool:
    try:
        check("f", value)  # type: ignore[operator]
    except ValidationError:
        return False
    return True


# re.search, as JSON Schema validators apply a pattern (unanchored, and `$` before a final "\n" in Python).
@given(bmp_text)
def test_the_one_line_pattern_and_check_agree(value: str) -> None:
    assert bool(re.search(ONE_LINE_PATTERN, value)) == _accepts(
        lambda f, v: one_line(f, v, required=False), value
    )


@given(bmp_text)
def test_the_running_text_pattern_and_check_agree(value: str) -> None:
    assert bool(re.search(RUNNING_TEXT_PATTERN, value)) == _accepts(running_text, value)


names = st.one_of(
    bmp_text,
    st.sampled_from(
        ["CON", "con.pdf", "CONIN$.pdf", "conout$", "COM\u00b9.pdf", "LPT3", "a.pdf\n", ". .", "x "]
    ),
    st.builds(lambda a, b: a + b, st.sampled_from(["", ".", "COM1", "Nul ", "beslut"]), bmp_text),
)


@given(names)
def test_the_file_name_pattern_and_check_agree_but_for_compatibility_forms(value: str) -> None:
    import unicodedata

    # The check also folds compatibility forms (NFKC: ．．／ is ../) and strips white space, which no
    # pattern can say; everywhere else the two agree.
    if unicodedata.normalize("NFKC", value) != value or value != value.strip():
        return
    assert bool(re.search(FILE_NAME_PATTERN, value)) == _accepts(file_name, value), value


@given(st.text(max_size=40))
def test_one_line_output_is_one_line_nfc_and_stripped(value: str) -> None:
    import unicodedata

    try:
        out = one_line("f", value, required=False)
    except ValidationError:
        return
    assert not set(out) & {"\n", "\r"}
    assert out == unicodedata.normalize("NFC", out) == out.strip()


@given(st.text(max_size=40))
def test_running_text_has_only_lf_line_breaks(value: str) -> None:
    try:
        out = running_text("f", value)
    except ValidationError:
        return
    assert not set(out) & {"\r", "\u0085", "\u2028", "\u2029", "\ufeff", "\u200b"}


@pytest.mark.parametrize("value", ["x\U0001fffe", "x\U0010ffff", "x\U000e0041"])
def test_noncharacters_and_tags_beyond_the_bmp_are_refused_in_one_line(value: str) -> None:
    with pytest.raises(ValidationError):
        one_line("f", value)


def test_emoji_with_joiners_and_directional_marks_stay_in_running_text() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert running_text("f", f"Hej {family} \u200fשלום\u200f") == f"Hej {family} \u200fשלום\u200f"


def test_lone_surrogates_are_refused_everywhere() -> None:
    for check in (one_line, running_text, file_name):
        with pytest.raises(ValidationError):
            check("f", "x\ud800")  # type: ignore[operator]
