"""The pure parts of transfers and registrations: Refer-To targets, sipfrag status lines, what
a trunk's metadata asks for, and the expiry a registrar granted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from livekit.protocol import sip as proto

from sipbridge.errors import ApiError
from sipbridge.server.calls import transfers
from sipbridge.server.sip import registrations
from sipbridge.sip.message import parse_message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sip:+15550100@carrier.example", "<sip:+15550100@carrier.example>"),
        ("sips:desk@10.0.0.1:5061", "<sips:desk@10.0.0.1:5061>"),
        ("tel:+15550100", "tel:+15550100"),
        ("  sip:a@b  ", "<sip:a@b>"),
    ],
)
def test_refer_targets(given: str, expected: str) -> None:
    assert transfers.refer_target(given) == expected


@pytest.mark.parametrize(
    "given", ["", "+15550100", "tel:", "http://x", "sip:a@b>", 'sip:"x"@b', "sip:a@b\r\nX: 1"]
)
def test_bad_refer_targets(given: str) -> None:
    with pytest.raises(ApiError) as raised:
        transfers.refer_target(given)
    assert raised.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"SIP/2.0 200 OK\r\n", (200, "OK")),
        (b"SIP/2.0 180 Ringing", (180, "Ringing")),
        (b"SIP/2.0 486", (486, "")),
        (b"SIP/2.0 999 Nope", None),
        (b"HTTP/1.1 200 OK", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_sipfrag_status_lines(body: bytes, expected: tuple[int, str] | None) -> None:
    assert transfers.sipfrag_status(body) == expected


@pytest.mark.parametrize(
    ("metadata", "expires"),
    [
        ("", None),
        ("not json", None),
        (json.dumps({"register": True}), registrations.DEFAULT_EXPIRES_S),
        (json.dumps({"register": {"expires": 120}}), 120),
        (json.dumps({"register": {"expires": 5}}), registrations.MIN_EXPIRES_S),
        (json.dumps({"register": {"expires": "x"}}), registrations.DEFAULT_EXPIRES_S),
        (json.dumps({"register": False}), None),
        (json.dumps(["register"]), None),
    ],
)
def test_what_a_trunk_asks_for(metadata: str, expires: int | None) -> None:
    trunk = proto.SIPOutboundTrunkInfo(metadata=metadata)
    assert registrations.register_expires(trunk) == expires


def response(*headers: str) -> Any:
    text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\n"
    text += "To: <sip:a@h>;tag=2\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\n"
    text += "".join(f"{h}\r\n" for h in headers) + "Content-Length: 0\r\n\r\n"
    return parse_message(text.encode())


def test_the_expiry_granted() -> None:
    granted = registrations._granted
    assert granted(response("Contact: <sip:a@10.0.0.2>;expires=90"), 600) == 90
    assert granted(response("Expires: 300"), 600) == 300
    assert granted(response(), 600) == 600
