"""Outbound call planning (telephony/outbound.py): trunks, addresses, the dial plan's checks,
attributes from the called side, and what a SIP failure means to the API and the room."""

from __future__ import annotations

from typing import Any

import pytest
from livekit.protocol import models
from livekit.protocol import sip as proto

from sipbridge.errors import ApiError
from sipbridge.telephony import outbound as ob

Reason = models.DisconnectReason


def trunk(**fields: Any) -> proto.SIPOutboundTrunkInfo:
    fields.setdefault("sip_trunk_id", "ST_a")
    fields.setdefault("address", "sip.carrier.example")
    fields.setdefault("numbers", ["+15550100"])
    return proto.SIPOutboundTrunkInfo(**fields)


def request(**fields: Any) -> proto.CreateSIPParticipantRequest:
    fields.setdefault("sip_call_to", "+15551234")
    fields.setdefault("room_name", "r")
    return proto.CreateSIPParticipantRequest(**fields)


def code_of(fn: Any, *args: Any) -> str:
    with pytest.raises(ApiError) as raised:
        fn(*args)
    return raised.value.code


def test_the_trunk_by_id_inline_or_by_number() -> None:
    stored = {"ST_a": trunk(), "ST_b": trunk(sip_trunk_id="ST_b", numbers=["+1 555 0199"])}
    assert ob.outbound_trunk(request(sip_trunk_id="ST_a"), stored).sip_trunk_id == "ST_a"
    assert code_of(ob.outbound_trunk, request(sip_trunk_id="ST_x"), stored) == "not_found"
    inline = ob.outbound_trunk(
        request(
            trunk=proto.SIPOutboundConfig(
                hostname="10.0.0.9:5080",
                auth_username="u",
                headers_to_attributes={"X-A": "a"},
                from_host="me.example",
            )
        ),
        stored,
    )
    assert inline.address == "10.0.0.9:5080" and inline.auth_username == "u"
    assert dict(inline.headers_to_attributes) == {"X-A": "a"} and inline.from_host == "me.example"
    assert ob.outbound_trunk(request(sip_number="+15550199"), stored).sip_trunk_id == "ST_b"
    assert code_of(ob.outbound_trunk, request(sip_number="+1999"), stored) == "not_found"
    assert code_of(ob.outbound_trunk, request(), stored) == "invalid_argument"


@pytest.mark.parametrize(
    ("address", "transport", "expected"),
    [
        ("carrier.example", 0, ("carrier.example", 5060, "udp")),
        ("10.0.0.1:5080", proto.SIPTransport.SIP_TRANSPORT_TCP, ("10.0.0.1", 5080, "tcp")),
        ("carrier.example", proto.SIPTransport.SIP_TRANSPORT_TLS, ("carrier.example", 5061, "tls")),
        ("sip:carrier.example;transport=tcp", 0, ("carrier.example", 5060, "tcp")),
        ("[2001:db8::1]:5062", 0, ("2001:db8::1", 5062, "udp")),
        ("[2001:db8::1]", 0, ("2001:db8::1", 5060, "udp")),
    ],
)
def test_trunk_addresses(address: str, transport: int, expected: tuple[str, int, str]) -> None:
    assert ob.trunk_address(address, transport) == expected


@pytest.mark.parametrize(
    "address", ["", "host:port", "host:70000", "user@host", "[2001:db8::1", "a b", "[::1]x"]
)
def test_bad_trunk_addresses(address: str) -> None:
    assert code_of(ob.trunk_address, address, 0) == "invalid_argument"


def test_a_dial_plan() -> None:
    plan = ob.dial_plan(
        request(
            participant_identity="",
            headers={"X-Campaign": "spring"},
            to_user_override="1234",
            sip_request_uri=proto.SIPRequestDest(raw="sip:1234@gw.example"),
        ),
        trunk(headers={"X-Campaign": "default", "X-Trunk": "t"}),
    )
    assert plan.identity == "sip_+15551234" and plan.name == "Phone +15551234"
    assert plan.to_user == "1234" and plan.from_number == "+15550100"
    assert plan.display_name == "+15550100"  # unset: the number
    assert plan.headers == {"X-Campaign": "spring", "X-Trunk": "t"}  # the request's win
    assert plan.request_uri == "sip:1234@gw.example"
    assert (plan.host, plan.port, plan.transport) == ("sip.carrier.example", 5060, "udp")
    assert ob.dial_plan(request(display_name=""), trunk()).display_name is None  # "": none
    picked = ob.dial_plan(request(), trunk(numbers=["+1", "+2", "+3"]), pick=4)
    assert picked.from_number == "+2"


@pytest.mark.parametrize(
    "fields",
    [
        {"room_name": ""},
        {"sip_call_to": ""},
        {"sip_call_to": "a@b"},
        {"sip_call_to": "has space"},
        {"to_user_override": "x@y"},
        {"sip_number": "a@b"},
        {"display_name": "x" * 129},
        {"display_name": "line\nbreak"},
        {"headers": {"Via": "x"}},
        {"headers": {"X-Ok": "line\r\nInjected: 1"}},
        {"sip_request_uri": proto.SIPRequestDest(raw="http://x")},
    ],
)
def test_dial_plan_refusals(fields: dict[str, Any]) -> None:
    assert code_of(ob.dial_plan, request(**fields), trunk()) == "invalid_argument"


def test_attributes_while_dialling_and_from_the_answer() -> None:
    plan = ob.dial_plan(request(), trunk())
    attrs = ob.dial_attributes(
        plan, call_id="SCL_x", call_id_full="abc@h", extra={"campaign": "a", "sip.callStatus": "x"}
    )
    assert attrs["sip.callStatus"] == "dialing" and attrs["campaign"] == "a"
    assert attrs["sip.phoneNumber"] == "+15551234" and attrs["sip.trunkPhoneNumber"] == "+15550100"
    assert attrs["sip.hostname"] == "sip.carrier.example" and attrs["sip.trunkID"] == "ST_a"
    hidden = ob.dial_attributes(
        ob.dial_plan(request(hide_phone_number=True), trunk()),
        call_id="SCL_x",
        call_id_full="abc@h",
        extra={},
    )
    assert "sip.phoneNumber" not in hidden and "sip.hostname" not in hidden
    headers = [("X-Twilio-CallSid", "CA1"), ("X-Agent", "7"), ("X-Agent", "8"), ("Foo", "bar")]
    mapped = ob.answer_attributes(
        trunk(headers_to_attributes={"x-agent": "agent", "Foo": "sip.evil"}), headers
    )
    assert mapped == {"sip.twilio.callSid": "CA1", "agent": "7"}  # first value; no sip.* target
    every_x = ob.answer_attributes(trunk(), headers, proto.SIPHeaderOptions.SIP_X_HEADERS)
    assert every_x["sip.h.x-agent"] == "7" and "sip.h.foo" not in every_x


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (486, "resource_exhausted", Reason.USER_REJECTED),
        (600, "resource_exhausted", Reason.USER_REJECTED),
        (480, "resource_exhausted", Reason.USER_UNAVAILABLE),
        (603, "permission_denied", Reason.USER_REJECTED),
        (404, "not_found", Reason.USER_UNAVAILABLE),
        (408, "deadline_exceeded", Reason.USER_UNAVAILABLE),
        (504, "deadline_exceeded", Reason.SIP_TRUNK_FAILURE),
        (403, "invalid_argument", Reason.SIP_TRUNK_FAILURE),
        (302, "invalid_argument", Reason.SIP_TRUNK_FAILURE),
        (503, "failed_precondition", Reason.SIP_TRUNK_FAILURE),
    ],
)
def test_failures(status: int, code: str, reason: int) -> None:
    err = ob.call_failed(status, "Why")
    assert err.code == code and ob.failure_reason(status) == reason
    assert err.meta == {"sip_status_code": str(status), "sip_status": "Why"}
