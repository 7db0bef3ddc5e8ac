"""What an INVITE outside a dialog must carry for us to make its dialog (RFC 3261 s12.1.1,
s8.1.1.8), checked before any work is done for it: issue 17's INVITEs that used to ring forever.
Each refusal is a 400 whose detail is fixed text, never the peer's bytes."""

from __future__ import annotations

import pytest

from sipbridge.sip.dialog import Dialog, check_dialog_creating
from sipbridge.sip.endpoint import Peer, SipEndpoint
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import Request, parse_message

GOOD = {
    "Via": "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdc1",
    "From": "<sip:+15550001@192.0.2.1>;tag=f1",
    "To": "<sip:+15105550100@192.0.2.2>",
    "Call-ID": "dc1@192.0.2.1",
    "CSeq": "1 INVITE",
    "Contact": "<sip:caller@192.0.2.1:5060>",
    "Max-Forwards": "70",
}


def invite(**headers: str | None) -> Request:
    fields = {**GOOD, **{k.replace("_", "-"): v for k, v in headers.items()}}
    lines = ["INVITE sip:+15105550100@192.0.2.2 SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_a_well_formed_invite_gives_its_target_and_route_set() -> None:
    request = invite(Record_Route="<sip:p1.example;lr>, <sip:p2.example;lr>")
    target, routes = check_dialog_creating(request)
    assert str(target) == "sip:caller@192.0.2.1:5060"
    assert [r.uri.host for r in routes] == ["p1.example", "p2.example"]
    dialog = Dialog.as_uas(request, "local")
    assert dialog.remote_target == target and dialog.route_set == routes
    assert dialog.remote_tag == "f1"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"Contact": None}, "no usable Contact"),
        ({"Contact": "*"}, "no usable Contact"),
        ({"Contact": "<tel:+15550001>"}, "no usable Contact"),
        ({"Contact": "<sip:a@192.0.2.1>, <sip:b@192.0.2.1>"}, "no usable Contact"),
        ({"Contact": "<sip:caller@192.0.2.1"}, "malformed dialog header"),
        ({"From": "<sip:+15550001@192.0.2.1>"}, "From without a tag"),
        ({"From": "<sip:+15550001@192.0.2.1>;tag="}, None),  # empty param: malformed or no tag
        ({"To": "<sip:x@192.0.2.2>;tag=t1"}, "To tag outside a dialog"),
        ({"Record_Route": "<sip:proxy.example;lr"}, "malformed dialog header"),
        ({"Record_Route": "<tel:+15550002>"}, "unusable Record-Route"),
        ({"Record_Route": "*"}, None),
    ],
)
def test_an_invite_that_cannot_make_a_dialog_is_a_400(
    headers: dict[str, str | None], detail: str | None
) -> None:
    with pytest.raises(SipProtocolError) as err:
        check_dialog_creating(invite(**headers))
    assert (err.value.status, err.value.reason) == (400, "Bad Request")
    if detail is not None:
        assert err.value.detail == detail
    with pytest.raises(SipProtocolError):
        Dialog.as_uas(invite(**headers), "local")


def test_the_endpoint_never_echoes_the_peers_bytes_in_a_reason_phrase() -> None:
    """A malformed header's detail quotes the bytes; the 400 on the wire says only its fixed
    phrase, and an unparseable To is echoed without a tag rather than left unanswered."""
    endpoint = SipEndpoint()
    peer = Peer("udp", "192.0.2.1", 5060)
    for bad in ({"CSeq": "1 INVITE<script>"}, {"To": "<sip:nowhere"}):
        endpoint.receive(_wire(bad), peer, 0.0)
        (sent,) = endpoint.outgoing()
        status_line = sent[0].split(b"\r\n", 1)[0]
        assert status_line == b"SIP/2.0 400 Bad Request", status_line
        assert b"Call-ID: dc1@192.0.2.1" in sent[0]
    assert endpoint.stats["refused_400"] == 2


def _wire(headers: dict[str, str]) -> bytes:
    fields = {**GOOD, **headers}
    lines = ["INVITE sip:+15105550100@192.0.2.2 SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
