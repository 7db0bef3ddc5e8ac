"""Phone number normalisation (SIP-BEHAVIOUR.md s2): how trunks and rules compare numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.telephony.numbers import normalize_number, numbers_match

# Hypothesis keeps no example database on disk: these tests leave nothing behind.
quick = settings(database=None, max_examples=300)

# Characters a formatted number is written with, plus some that make it "not a number".
number_chars = st.text(alphabet="0123456789+-. ()", max_size=20)
any_text = st.text(max_size=20)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        # E.164 written in the ways people and carriers write it
        ("+15105550100", "+15105550100"),
        ("15105550100", "+15105550100"),
        ("+1 510-555-0100", "+15105550100"),
        ("+1 (510) 555-0100", "+15105550100"),
        ("1.510.555.0100", "+15105550100"),
        ("(1) 510.555.0100", "+15105550100"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+33 1 23 45 67 89 ", "+33123456789"),
        ("+ 1 510", "+1510"),
        # short numbers and extensions look like digits too: they get the "+" as well
        ("100", "+100"),
        ("0", "+0"),
        ("1-", "+1"),
    ],
)
def test_formatted_numbers_normalise_to_e164(raw: str, normalised: str) -> None:
    assert normalize_number(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "alice",
        "bob.smith",
        "sip:+15105550100@example.com",
        "+1510555010x",
        "1+510",  # a "+" is only allowed in front
        "++15105550100",
        "*123#",
        "+",
        "-",
        "()",
        "+()",
        " - . ",
        "anonymous",
        " +15105550100",  # space before the "+": not a number shape
    ],
)
def test_non_numbers_are_returned_unchanged(raw: str) -> None:
    assert normalize_number(raw) == raw


def test_trailing_newline_is_not_a_number() -> None:
    assert normalize_number("15105550100\n") == "15105550100\n"


@quick
@given(number_chars | any_text)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_number(raw)
    assert normalize_number(once) == once


@quick
@given(st.text(alphabet="0123456789", min_size=1, max_size=15), st.data())
def test_any_formatting_of_digits_normalises_to_plus_digits(
    digits: str, data: st.DataObject
) -> None:
    # Interleave formatting characters between the digits, optionally with a leading "+".
    formatted = "".join(
        data.draw(st.text(alphabet=" -.()", max_size=2)) + d for d in digits
    ) + data.draw(st.text(alphabet=" -.()", max_size=2))
    if data.draw(st.booleans()):
        formatted = "+" + formatted
    assert normalize_number(formatted) == "+" + digits


@quick
@given(number_chars | any_text)
def test_normalised_numbers_have_no_formatting(raw: str) -> None:
    norm = normalize_number(raw)
    if norm != raw:
        assert norm.startswith("+")
        assert norm[1:].isdigit()


@pytest.mark.parametrize(
    ("number", "candidates", "expected"),
    [
        ("+15105550100", ["+15105550100"], True),
        ("15105550100", ["+1 (510) 555-0100"], True),
        ("+1.510.555.0100", ["000", "15105550100"], True),
        ("+15105550100", ["+15105550101"], False),
        ("+15105550100", [], False),
        ("alice", ["alice"], True),
        ("alice", ["Alice"], False),
        ("alice", ["bob", "alice"], True),
        ("", [""], True),
        ("", ["+1"], False),
    ],
)
def test_numbers_match(number: str, candidates: list[str], expected: bool) -> None:
    assert numbers_match(number, candidates) is expected


def test_numbers_match_accepts_any_iterable() -> None:
    assert numbers_match("15105550100", (n for n in ["x", "+15105550100"]))


@quick
@given(number_chars | any_text, number_chars | any_text)
def test_numbers_match_is_symmetric(a: str, b: str) -> None:
    assert numbers_match(a, [b]) == numbers_match(b, [a])


@quick
@given(number_chars | any_text)
def test_a_number_matches_its_normalised_form(raw: str) -> None:
    assert numbers_match(raw, [normalize_number(raw)])
    assert numbers_match(normalize_number(raw), [raw])
