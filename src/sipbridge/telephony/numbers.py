"""Phone number normalisation, as LiveKit compares numbers (SIP-BEHAVIOUR.md s2)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# A number made only of digits and the usual formatting: "+1 (510) 555-0100", "1.510.555.0100".
_NUMBER = re.compile(r"^\+?[\d\-. ()]+\Z")
_FORMATTING = str.maketrans("", "", " -.()")


def normalize_number(number: str) -> str:
    """`+15105550100` for any formatting of an E.164-looking number; other input unchanged.

    Spaces, dashes, dots and parentheses are removed and a leading `+` added, so "+1 510-555-0100",
    "15105550100" and "(1) 510.555.0100" compare equal. SIP users that are not numbers ("alice")
    are returned as given.
    """
    if not number or not _NUMBER.match(number):
        return number
    digits = number.translate(_FORMATTING)
    if not digits.lstrip("+"):
        return number
    return digits if digits.startswith("+") else "+" + digits


def numbers_match(number: str, candidates: Iterable[str]) -> bool:
    """True when `number` equals one of `candidates`, exactly or after normalisation."""
    norm = normalize_number(number)
    return any(number == c or norm == normalize_number(c) for c in candidates)
