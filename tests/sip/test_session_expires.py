"""`Session-Expires` and `Min-SE` (RFC 4028 s4-s5): parse, refuse with 400, serialize back."""

from __future__ import annotations

import pytest

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import SessionExpires, parse_session_expires


@pytest.mark.parametrize(
    ("value", "seconds", "refresher"),
    [
        ("4000;refresher=uac", 4000, "uac"),  # RFC 4028 s4's example
        ("1800;refresher=uas", 1800, "uas"),
        ("90", 90, None),  # the refresher not said: the UAS decides (s9)
        ("  1800 ;refresher=UAC", 1800, "uac"),  # LWS and a token compared without case
        ("1800;x-extension=1;refresher=uas", 1800, "uas"),  # generic-params are allowed
        ("1800;x-extension=1", 1800, None),
    ],
)
def test_session_expires_is_parsed(value: str, seconds: int, refresher: str | None) -> None:
    """s4: Session-Expires = delta-seconds *(SEMI se-params); refresher-param = "refresher"
    EQUAL ("uas" / "uac")."""
    assert parse_session_expires(value) == SessionExpires(seconds, refresher)


def test_min_se_is_the_same_grammar_without_refresher() -> None:
    """s5: Min-SE = delta-seconds *(SEMI generic-param)."""
    assert parse_session_expires("90") == SessionExpires(90)


def test_a_huge_interval_is_clamped_not_refused() -> None:
    """delta-seconds is 1*DIGIT: a value beyond 32-bit signed arithmetic is clamped."""
    assert parse_session_expires("9999999999").seconds == 2**31 - 1


@pytest.mark.parametrize(
    "value",
    ["", "abc", "-90", "90 seconds", "12345678901", "1800;refresher=proxy", "1800;refresher="],
)
def test_a_malformed_session_expires_is_a_400(value: str) -> None:
    """s4 grammar; a refresher other than uac/uas is not one of the two ends of the dialog."""
    with pytest.raises(SipProtocolError) as refused:
        parse_session_expires(value)
    assert refused.value.status == 400


@pytest.mark.parametrize("header", [SessionExpires(1800, "uac"), SessionExpires(90)])
def test_session_expires_round_trips(header: SessionExpires) -> None:
    """What we write is what we read (house rule: every parse has a serialize)."""
    assert parse_session_expires(str(header)) == header
