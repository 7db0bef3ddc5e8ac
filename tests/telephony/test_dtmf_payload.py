"""Digits carried by SendData user packets to SIP participants (telephony/dtmf.py)."""

from __future__ import annotations

import pytest
from livekit.protocol import models

from sipbridge.telephony.dtmf import dtmf_payload


@pytest.mark.parametrize(
    ("payload", "digits"),
    [
        (b"123#", "123#"),
        (b" *0w9 ", "*0w9"),
        (b'{"digit": "5"}', "5"),
        (b'{"code": 11}', "#"),
        (b'{"code": 16}', ""),
        (b'{"digit": "x"}', ""),
        (b"{not json", ""),
        (b"[1]", ""),
        (models.SipDTMF(code=10, digit="*").SerializeToString(), "*"),
        (models.SipDTMF(code=3).SerializeToString(), "3"),
        (models.SipDTMF(digit="?").SerializeToString(), ""),
        (b"", ""),
        (b"\xff\xff\xff", ""),
    ],
)
def test_dtmf_payloads(payload: bytes, digits: str) -> None:
    assert dtmf_payload(payload) == digits
