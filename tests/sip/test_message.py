"""SIP messages (src/sipbridge/sip/message.py): parsing, serialising, limits, make_response.

RFC 3261 s7 (messages), s7.3.1 (folding, repeated list headers), s7.3.3 (compact forms), s18.3
(framing), s8.2.6 (responses).
"""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_LINE,
    MAX_MESSAGE,
    EchoedHeaders,
    Headers,
    Request,
    Response,
    canonical_name,
    header_key,
    make_response,
    parse_message,
    parse_message_python,
)
from tests.sip.test_torture import MESSAGES as TORTURE

FUZZ = settings(database=None, deadline=None, max_examples=500)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def refused(data: bytes, *, stream: bool = False) -> SipProtocolError:
    with pytest.raises(SipProtocolError) as err:
        parse_message(data, stream=stream)
    return err.value


def request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


# RFC 3665 s3.1 "Successful Session Establishment", messages F1-F6, lines ending in CRLF.
F1_INVITE = crlf("""\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com;transport=tcp>
Content-Type: application/sdp
Content-Length: 151

v=0
o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com
s=-
c=IN IP4 192.0.2.101
t=0 0
m=audio 49172 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")
F2_RINGING = crlf("""\
SIP/2.0 180 Ringing
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
   ;received=192.0.2.101
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:bob@client.biloxi.example.com;transport=tcp>
Content-Length: 0

""")
F3_OK = crlf("""\
SIP/2.0 200 OK
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9
   ;received=192.0.2.101
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:bob@client.biloxi.example.com;transport=tcp>
Content-Type: application/sdp
Content-Length: 147

v=0
o=bob 2890844527 2890844527 IN IP4 client.biloxi.example.com
s=-
c=IN IP4 192.0.2.201
t=0 0
m=audio 3456 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")
F4_ACK = crlf("""\
ACK sip:bob@client.biloxi.example.com SIP/2.0
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bd5
Max-Forwards: 70
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 ACK
Content-Length: 0

""")
F5_BYE = crlf("""\
BYE sip:alice@client.atlanta.example.com SIP/2.0
Via: SIP/2.0/TCP client.biloxi.example.com:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
From: Bob <sip:bob@biloxi.example.com>;tag=8321234356
To: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 BYE
Content-Length: 0

""")
F6_OK = crlf("""\
SIP/2.0 200 OK
Via: SIP/2.0/TCP client.biloxi.example.com:5060;branch=z9hG4bKnashds7
   ;received=192.0.2.201
From: Bob <sip:bob@biloxi.example.com>;tag=8321234356
To: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 BYE
Content-Length: 0

""")
CALL_FLOW = [F1_INVITE, F2_RINGING, F3_OK, F4_ACK, F5_BYE, F6_OK]


def options(*headers: str, body: str = "") -> bytes:
    """A small OPTIONS request (RFC 3261 s11.1 shape) with extra header lines."""
    lines = [
        "OPTIONS sip:carol@chicago.com SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKhjhs8ass877",
        "Max-Forwards: 70",
        "To: <sip:carol@chicago.com>",
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 63104 OPTIONS",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


# -- header names ------------------------------------------------------------------------------

# RFC 3261 s7.3.3 and s20 (i m f t v l c k s e), RFC 3265 (o u), RFC 3515 (r), RFC 3892 (b),
# RFC 4028 (x), RFC 3841 (a j d), RFC 4474 (y).
COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}


@pytest.mark.parametrize(("short", "name"), COMPACT.items())
def test_compact_forms_expand(short: str, name: str) -> None:
    assert canonical_name(short) == name
    assert canonical_name(short.upper()) == name
    assert canonical_name(name.upper()) == name


@pytest.mark.parametrize(
    ("received", "name"),
    [
        ("cseq", "CSeq"),
        ("CALL-ID", "Call-ID"),
        ("www-authenticate", "WWW-Authenticate"),
        ("mime-version", "MIME-Version"),
        ("max-forwards", "Max-Forwards"),
        ("RSEQ", "RSeq"),
        ("p-asserted-identity", "P-Asserted-Identity"),
        ("x-custom-header", "X-Custom-Header"),
        ("NewFangledHeader", "NewFangledHeader"),
        ("Via", "Via"),
    ],
)
def test_canonical_names(received: str, name: str) -> None:
    assert canonical_name(received) == name
    assert canonical_name(name) == name  # idempotent


def test_compact_forms_in_a_message_are_expanded() -> None:
    message = request(
        crlf("""\
INVITE sip:bob@biloxi.com SIP/2.0
v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8
f: Alice <sip:alice@atlanta.com>;tag=1928301774
t: Bob <sip:bob@biloxi.com>
i: a84b4c76e66710@pc33.atlanta.com
m: <sip:alice@pc33.atlanta.com>
k: timer, 100rel
s: Lunch
o: refer
u: refer, dialog
r: <sip:carol@chicago.com>
b: <sip:alice@atlanta.com>
e: gzip
c: application/sdp
l: 0

""")
    )
    assert [name for name, _ in message.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "Contact",
        "Supported",
        "Subject",
        "Event",
        "Allow-Events",
        "Refer-To",
        "Referred-By",
        "Content-Encoding",
        "Content-Type",
        "Content-Length",
    ]
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert message.tokens("Supported") == ["timer", "100rel"]
    assert message.tokens("Allow-Events") == ["refer", "dialog"]
    wire = message.serialize()
    assert re.findall(rb"^([A-Za-z-]+):", wire, re.MULTILINE) == [
        name.encode() for name, _ in message.headers
    ]


def test_unknown_header_names_are_case_insensitive() -> None:
    message = request(options("X-Custom-HEADER: 1", "NewFangledHeader: 2"))
    assert message.headers.get("x-custom-header") == "1"
    assert message.headers.get("newfangledheader") == "2"


# -- Headers -----------------------------------------------------------------------------------


def test_headers_container() -> None:
    headers = Headers()
    headers.add("v", "SIP/2.0/UDP a;branch=z9hG4bK1")
    headers.add("Route", "<sip:p1;lr>, <sip:p2;lr>")
    headers.add("Via", "SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/UDP c;branch=z9hG4bK3")
    headers.prepend("via", "SIP/2.0/UDP first;branch=z9hG4bK0")
    assert "VIA" in headers and "Contact" not in headers
    assert headers.get("Via") == "SIP/2.0/UDP first;branch=z9hG4bK0"  # first line, not item
    assert [v.split(";")[0] for v in headers.get_all("v")] == [
        "SIP/2.0/UDP first",
        "SIP/2.0/UDP a",
        "SIP/2.0/UDP b",
        "SIP/2.0/UDP c",
    ]
    assert headers.get_all("Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    copy = headers.copy()
    headers.set("Via", "SIP/2.0/UDP only;branch=z9hG4bK9")
    assert headers.get_all("Via") == ["SIP/2.0/UDP only;branch=z9hG4bK9"]
    assert [name for name, _ in headers] == ["Via", "Route"]  # at the first line's place
    assert len(copy.get_all("Via")) == 4  # the copy is independent
    headers.remove("route")
    headers.set("Call-ID", "new")
    assert list(headers) == [("Via", "SIP/2.0/UDP only;branch=z9hG4bK9"), ("Call-ID", "new")]
    # Headers that are not lists are never split on commas.
    headers.add("Subject", "Lunch, at noon")
    assert headers.get_all("subject") == ["Lunch, at noon"]


def test_repeated_list_header_lines_equal_one_comma_list() -> None:
    # RFC 3261 s7.3.1: these two header blocks are equivalent.
    separate = request(
        options(
            "Route: <sip:alice@atlanta.com>",
            "Subject: Lunch",
            "Route: <sip:bob@biloxi.com>",
            "Route: <sip:carol@chicago.com>",
        )
    )
    combined = request(
        options(
            "Route: <sip:alice@atlanta.com>, <sip:bob@biloxi.com>",
            "Route: <sip:carol@chicago.com>",
            "Subject: Lunch",
        )
    )
    assert (
        separate.headers.get_all("Route")
        == combined.headers.get_all("Route")
        == [
            "<sip:alice@atlanta.com>",
            "<sip:bob@biloxi.com>",
            "<sip:carol@chicago.com>",
        ]
    )


# -- parsing -----------------------------------------------------------------------------------


def test_rfc3665_invite() -> None:
    invite = request(F1_INVITE)
    assert (invite.method, str(invite.uri)) == ("INVITE", "sip:bob@biloxi.example.com")
    assert str(invite) == "INVITE sip:bob@biloxi.example.com"
    assert invite.top_via.transport == "TCP" and invite.top_via.branch == "z9hG4bK74bf9"
    assert invite.from_.display_name == "Alice" and invite.from_.tag == "9fxced76sl"
    assert invite.to.display_name == "Bob" and invite.to.tag is None
    assert invite.call_id == "3848276298220188511@atlanta.example.com"
    assert (invite.cseq.seq, invite.cseq.method) == (1, "INVITE")
    assert invite.contacts[0].uri.transport == "tcp"
    assert invite.record_routes == []
    assert len(invite.body) == 151 and invite.body.endswith(b"a=rtpmap:0 PCMU/8000\r\n")


def test_rfc3665_folded_via_is_unfolded() -> None:
    ringing = response(F2_RINGING)
    assert (ringing.status, ringing.reason, str(ringing)) == (180, "Ringing", "180 Ringing")
    assert ringing.headers.get("Via") == (
        "SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9 ;received=192.0.2.101"
    )
    assert ringing.top_via.received == "192.0.2.101"
    assert ringing.to.tag == "8321234356"
    assert ringing.body == b""


def test_folding_with_tabs_and_runs_of_whitespace() -> None:
    # RFC 3261 s7.3.1: the folded Subject equals the unfolded one.
    folded = request(
        options(
            "Subject: I know you're there,", "               pick up the phone", "\tand talk to me!"
        )
    )
    assert folded.headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"


@pytest.mark.parametrize("message", CALL_FLOW)
def test_call_flow_messages_have_every_core_header(message: bytes) -> None:
    parsed = parse_message(message)
    assert parsed.call_id == "3848276298220188511@atlanta.example.com"
    assert parsed.from_.tag and parsed.top_via.is_rfc3261
    assert parsed.cseq.seq == 1


def test_bare_lf_message_is_tolerated() -> None:
    message = request(F4_ACK.replace(b"\r\n", b"\n"))
    assert message.method == "ACK" and message.cseq.method == "ACK"
    assert message.serialize() == request(F4_ACK).serialize()


def test_one_leading_crlf_is_ignored() -> None:
    assert request(b"\r\n" + F4_ACK).method == "ACK"  # RFC 3261 s7.5


def test_datagram_body_is_cut_to_content_length() -> None:
    # RFC 3261 s18.3: octets after the Content-Length are discarded on datagrams.
    message = request(options("Content-Length: 5", body="hello, and trailing noise"))
    assert message.body == b"hello"


def test_datagram_without_content_length_takes_the_rest() -> None:
    message = request(options(body="v=0\r\n"))
    assert message.body == b"v=0\r\n"
    assert "Content-Length" not in message.headers


def test_content_length_with_whitespace() -> None:
    assert request(options("Content-Length :   4  ", body="abcd")).body == b"abcd"


def test_stream_message_requires_content_length() -> None:
    assert request(options("Content-Length: 2", body="ok")).body == b"ok"
    assert parse_message(options("Content-Length: 2", body="ok"), stream=True).body == b"ok"
    err = refused(options(body="ok"), stream=True)  # RFC 3261 s18.3: MUST on streams
    assert err.status == 400


def test_status_lines() -> None:
    assert response(b"SIP/2.0 200 OK\r\n\r\n").reason == "OK"
    assert response(b"SIP/2.0 100 \r\n\r\n").reason == ""  # RFC 4475 s3.1.1.13
    assert response(b"SIP/2.0 699 Custom reason, with commas\r\n\r\n").status == 699
    assert response(b"SIP/2.0 486 Busy Here\r\n\r\n").reason == "Busy Here"


def test_request_version_is_case_insensitive() -> None:
    assert request(b"OPTIONS sip:a@b sip/2.0\r\n\r\n").method == "OPTIONS"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n",  # no empty line
        b"\r\n\r\n",
        b" OPTIONS sip:a@b SIP/2.0\r\n\r\n",  # continuation before any line
        b"OPTIONS sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",  # no colon
        b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\n: x\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\n[x]: y\r\n\r\n",
        b"OPTIONS sip:a@b\r\n\r\n",
        b"OPTIONS  sip:a@b SIP/2.0\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0 extra\r\n\r\n",
        b"OPT<IONS sip:a@b SIP/2.0\r\n\r\n",
        b"OPTIONS <sip:a@b> SIP/2.0\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"SIP/2.0 700 Too big\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",
        b"SIP/3.0 200 OK\r\n\r\n",
        b"SIP/2.0  200 OK\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ],
)
def test_malformed_messages_get_400(data: bytes) -> None:
    err = refused(data)
    assert (err.status, err.reason) == (400, "Bad Request")


def test_unknown_version_gets_505() -> None:
    err = refused(b"OPTIONS sip:t.watson@example.org SIP/7.0\r\n\r\n")  # RFC 4475 s3.1.2.16
    assert (err.status, err.reason) == (505, "Version Not Supported")


@pytest.mark.parametrize("value", ["-1", "five", "1.5", "0x10", "", "1 2", "+3"])
def test_bad_content_length_gets_400(value: str) -> None:
    assert refused(options(f"Content-Length: {value}", body="abc")).status == 400


def test_superscript_digit_content_length_gets_400() -> None:
    # Found by fuzzing mutated torture messages.
    assert refused(options("Content-Length: \u00b2", body="ab")).status == 400


# -- limits ------------------------------------------------------------------------------------


def test_header_line_limit() -> None:
    name = "X-Long: "
    at_limit = options(name + "a" * (MAX_LINE - len(name)))
    assert len(request(at_limit).headers.get("X-Long") or "") == MAX_LINE - len(name)
    err = refused(options(name + "a" * (MAX_LINE - len(name) + 1)))
    assert err.status == 400 and "too long" in err.detail


def test_folded_header_line_limit() -> None:
    # Folding must not smuggle a line past the cap: the unfolded line is measured.
    pieces = ["X-Folded: start", *[" " + "b" * 1000] * (MAX_LINE // 1000 + 1)]
    err = refused(options(*pieces))
    assert err.status == 400 and "too long" in err.detail


def test_header_count_limit() -> None:
    core = 6  # header lines options() always has
    fits = options(*[f"X-{n}: {n}" for n in range(MAX_HEADERS - core)])
    assert len(request(fits).headers.items) == MAX_HEADERS
    err = refused(options(*[f"X-{n}: {n}" for n in range(MAX_HEADERS - core + 1)]))
    assert err.status == 400 and "too many headers" in err.detail


def test_message_size_limit_gets_513() -> None:
    head = options("Content-Length: 0")
    fits = head + b"x" * (MAX_MESSAGE - len(head))  # trailing octets of a datagram
    assert len(fits) == MAX_MESSAGE and request(fits).body == b""
    err = refused(fits + b"x")
    assert (err.status, err.reason) == (513, "Message Too Large")


def test_body_size_limit_gets_413() -> None:
    assert (
        len(request(options(f"Content-Length: {MAX_BODY}", body="b" * MAX_BODY)).body) == MAX_BODY
    )
    err = refused(options(f"Content-Length: {MAX_BODY + 1}", body="b" * (MAX_BODY + 1)))
    assert (err.status, err.reason) == (413, "Request Entity Too Large")
    err = refused(options(body="b" * (MAX_BODY + 1)))  # no Content-Length: the rest is the body
    assert err.status == 413


def test_content_length_beyond_the_datagram_gets_400() -> None:
    # RFC 3261 s18.3 / RFC 4475 s3.1.2.2: a datagram shorter than its Content-Length.
    err = refused(options("Content-Length: 10", body="123456789"))
    assert err.status == 400 and "Content-Length" in err.detail


# -- structured accessors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["call_id", "cseq", "from_", "to", "top_via"])
def test_missing_core_header_gets_400(name: str) -> None:
    message = request(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SipProtocolError) as err:
        getattr(message, name)
    assert err.value.status == 400


def test_empty_core_header_gets_400() -> None:
    message = request(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID:   \r\n\r\n")
    with pytest.raises(SipProtocolError):
        message.call_id  # noqa: B018
    assert message.vias == [] and message.contacts == []


# -- serialising ---------------------------------------------------------------------------


def test_serialize_writes_canonical_names_crlf_and_the_real_content_length() -> None:
    message = request(
        b"MESSAGE sip:bob@biloxi.com SIP/2.0\n"
        b"v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8\n"
        b"l: 999\n"
        b"cseq:   4 MESSAGE\n"
        b"i: a84b4c76e66710\n"
        b"content-type:text/plain\n"
        b"\n" + b"x" * 999
    )
    message.body = b"Watson, come here."
    wire = message.serialize()
    head, body = wire.split(b"\r\n\r\n", 1)
    assert body == b"Watson, come here."
    assert head.split(b"\r\n") == [
        b"MESSAGE sip:bob@biloxi.com SIP/2.0",
        b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8",
        b"CSeq: 4 MESSAGE",
        b"Call-ID: a84b4c76e66710",
        b"Content-Type: text/plain",
        b"Content-Length: 18",
    ]
    assert b"\n" not in wire.replace(b"\r\n", b"")


def test_serialize_adds_a_missing_content_length() -> None:
    message = request(options(body="v=0\r\n"))
    assert message.serialize().endswith(b"\r\nContent-Length: 5\r\n\r\nv=0\r\n")


def test_response_serialize_uses_the_default_reason_when_there_is_none() -> None:
    assert Response(status=180).serialize() == b"SIP/2.0 180 Ringing\r\nContent-Length: 0\r\n\r\n"
    assert Response(status=299).serialize().startswith(b"SIP/2.0 299 \r\n")


@pytest.mark.parametrize("message", CALL_FLOW)
def test_call_flow_round_trips(message: bytes) -> None:
    first = parse_message(message)
    wire = first.serialize()
    second = parse_message(wire)
    assert second == first  # Content-Length is already last in these messages
    assert wire == message.replace(b"\r\n   ;received", b" ;received")  # only the unfolding


@pytest.mark.parametrize("message", CALL_FLOW)
def test_round_trip_over_a_stream(message: bytes) -> None:
    first = parse_message(message, stream=True)
    assert parse_message(first.serialize(), stream=True) == first


# -- make_response (RFC 3261 s8.2.6) -------------------------------------------------------


def test_make_response_copies_the_rfc3665_ringing_headers() -> None:
    invite = request(F1_INVITE)
    ringing = make_response(invite, 180, to_tag="8321234356")
    expected = response(F2_RINGING)
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert [name for name, _ in ringing.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert ringing.headers.get("To") == expected.headers.get("To")  # the To gains the tag
    for name in ("From", "Call-ID", "CSeq"):
        assert ringing.headers.get(name) == invite.headers.get(name) == expected.headers.get(name)
    assert ringing.headers.get("Via") == invite.headers.get("Via")
    assert ringing.body == b""
    assert response(ringing.serialize()).to.tag == "8321234356"


def test_known_header_keys_are_interned() -> None:
    """The index's keys of known headers are the interned str the accessors look up (found by
    identity, issue 18), in every spelling, whichever parser cut the message."""
    data = F1_INVITE.replace(
        b"Contact:", b"v: SIP/2.0/UDP h;branch=z9hG4bKx\r\nX-Invented-Zq: 1\r\nContact:"
    )
    for message in (request(data), parse_message_python(data)):
        keys = list(message.headers._lines())
        assert {"via", "from", "to", "call-id", "cseq", "x-invented-zq"} <= set(keys)
        for key in keys:
            if key != "x-invented-zq":
                assert key is sys.intern(key), key
    assert header_key("CALL-ID") is sys.intern("call-id") and header_key("i") is header_key(
        "Call-ID"
    )


def test_echoed_headers_give_the_bytes_of_responses_made_anew() -> None:
    """An INVITE's 180 and 200 made from the headers kept from its first response (the
    session's `_response`) are, byte for byte, those made by `make_response` each time."""
    invite = request(F1_INVITE.replace(b"Contact:", b"Record-Route: <sip:p1;lr>\r\nContact:"))

    def made(status: int) -> Response:
        fresh = make_response(invite, status, to_tag="8321234356")
        fresh.headers.add("Record-Route", "<sip:p1;lr>")
        return fresh

    first = made(180)
    echoed = EchoedHeaders(first.headers)
    first.headers.wire = echoed.wire
    assert first.serialize() == made(180).serialize()
    for status, reason in ((180, ""), (183, "Session Progress"), (200, ""), (202, "Fine")):
        fresh, again = (
            make_response(invite, status, reason, to_tag="8321234356"),
            echoed.response(status, reason),
        )
        fresh.headers.add("Record-Route", "<sip:p1;lr>")
        for message in (fresh, again):
            message.headers.add("Contact", "<sip:us@192.0.2.4>")
            message.headers.add("Content-Type", "application/sdp")
            message.body = b"v=0\r\n"
        assert again.serialize() == fresh.serialize()
        assert again == fresh
        assert again.headers.wire is not None
    # an edit other than appending forgets the kept text
    for edit in (
        lambda h: h.set("CSeq", "2 INVITE"),
        lambda h: h.remove("Call-ID"),
        lambda h: h.prepend("Via", "SIP/2.0/UDP x;branch=z9hG4bKx"),
        lambda h: h.replaced_first("Via", "SIP/2.0/UDP y;branch=z9hG4bKy"),
        lambda h: h.changed(),
    ):
        edited, fresh = echoed.response(200), made(200)
        edit(edited.headers)
        edit(fresh.headers)
        assert edited.headers.wire is None
        if fresh.headers.items != edited.headers.items:  # (replaced_first leaves items alone)
            continue
        assert edited.serialize() == fresh.serialize()


def test_make_response_copies_every_via_in_order() -> None:
    invite = request(
        options(
            "Via: SIP/2.0/TCP proxy2.example.com;branch=z9hG4bK2, "
            "SIP/2.0/UDP proxy1.example.com;branch=z9hG4bK1",
            "v: SIP/2.0/UDP client.example.com;branch=z9hG4bK0;received=192.0.2.1",
        )
    )
    reply = make_response(invite, 486)
    assert [v for k, v in reply.headers if k == "Via"] == [
        v for k, v in invite.headers if k == "Via"
    ]
    assert [v.host for v in reply.vias] == [
        "pc33.atlanta.com",
        "proxy2.example.com",
        "proxy1.example.com",
        "client.example.com",
    ]
    assert reply.reason == "Busy Here"
    assert reply.to.tag is None  # no tag was asked for


def test_make_response_echoes_a_repeated_single_valued_header_once() -> None:
    """From, To, Call-ID and CSeq are single-valued (s20): a request repeating them is refused
    400 (RFC 4475 s3.1.2.18), and that refusal echoes the first of each, so it stays within
    MAX_HEADERS and parses (fuzz/targets.py `endpoint` found a 505 to 128 such lines that had
    130 headers)."""
    repeated = [
        line
        for _ in range(MAX_HEADERS // 4)
        for line in ("From: <sip:x@y>;tag=1", "To: <sip:z@y>", "Call-ID: c", "CSeq: 1 OPTIONS")
    ]
    core = len(request(options()).headers.items)
    invite = request(options(*repeated[: MAX_HEADERS - core]))
    assert len(invite.headers.items) == MAX_HEADERS
    reply = make_response(invite, 400, to_tag="t")
    assert [name for name, _ in reply.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert reply.headers.get("From") == "Alice <sip:alice@atlanta.com>;tag=1928301774"
    assert reply.to.tag == "t"
    assert response(reply.serialize()).call_id == "a84b4c76e66710"


def test_make_response_keeps_an_existing_to_tag() -> None:
    bye = request(F5_BYE)
    ok = make_response(bye, 200, to_tag="other")
    assert ok.to.tag == "9fxced76sl"
    assert ok.headers.get("To") == bye.headers.get("To")


def test_100_trying_gets_no_tag_and_echoes_timestamp() -> None:
    # s8.2.6.1: the Timestamp goes into the 100 (Trying); RFC 3261 s20.38 example value.
    invite = request(options("Timestamp: 54"))
    trying = make_response(invite, 100, to_tag="abc")
    assert (trying.status, trying.reason) == (100, "Trying")
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54"
    assert "Timestamp" not in make_response(invite, 200, to_tag="abc").headers
    assert "Timestamp" not in make_response(request(options()), 100).headers


def test_make_response_reason_override_and_unknown_status() -> None:
    invite = request(F1_INVITE)
    assert make_response(invite, 488, "Codecs Rejected").reason == "Codecs Rejected"
    assert make_response(invite, 499).reason == ""


def test_make_response_refuses_a_malformed_to_when_tagging() -> None:
    invite = request(options().replace(b"To: <sip:carol@chicago.com>", b'To: "broken <sip:x@y>'))
    with pytest.raises(SipProtocolError):
        make_response(invite, 200, to_tag="t")


# -- fuzz: only "parses" or "raises SipProtocolError" ---------------------------------------

SEEDS = [*CALL_FLOW, *TORTURE.values()]
STATUSES = {400, 413, 505, 513}
INTERESTING = st.sampled_from(
    [
        b"",
        b" ",
        b"\t",
        b"\r\n",
        b"\n",
        b"\r\n ",
        b"\r\n\r\n",
        b":",
        b";",
        b",",
        b"<",
        b">",
        b'"',
        b"\\",
        b"@",
        b"%",
        b"[",
        b"]",
        b"\x00",
        b"\xff",
        b"\xc3\xa9",
        b"\xd9\xa3",  # a non-ASCII decimal digit
        b"0",
        b"-1",
        b"99999999999999999999",
        b"sip:",
        b"SIP/2.0",
        b"l:",
        b"Content-Length:",
        b"v: SIP/2.0/UDP h",
        b";tag=",
        b";branch=",
    ]
)


def crash_free(data: bytes) -> bool:
    """Non-decimal digits ('²') crash the Content-Length and URI port checks: those are pinned
    by the xfail tests, and kept out of the fuzz so that it keeps guarding everything else."""
    text = data.decode("utf-8", "surrogateescape")
    return not any(c.isdigit() and not c.isdecimal() for c in text)


def check(data: bytes, *, stream: bool = False) -> None:
    """parse_message returns a message or refuses; a message serialises and parses back."""
    try:
        message = parse_message(data, stream=stream)
    except SipProtocolError as err:
        assert err.status in STATUSES
        return
    assert isinstance(message, Request | Response)
    for name in ("call_id", "cseq", "from_", "to", "top_via", "vias", "contacts"):
        try:
            getattr(message, name)
        except SipProtocolError as err:
            assert err.status == 400
    again = parse_message(message.serialize(), stream=True)
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"
    ]
    assert again.body == message.body


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_parse_or_refuse(data: bytes) -> None:
    assume(crash_free(data))
    check(data)
    check(data, stream=True)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 8))
        data[at : at + cut] = draw(st.one_of(INTERESTING, st.binary(max_size=6)))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages_only_parse_or_refuse(data: bytes) -> None:
    assume(crash_free(data))
    check(data)
    check(data, stream=True)


def _parsed(message: Request) -> dict[str, object]:
    return {
        "via": message.top_via,
        "from": message.from_,
        "to": message.to,
        "call-id": message.call_id,
        "cseq": message.cseq,
        "contact": tuple(message.contacts),
    }


def _kept(headers: Headers) -> dict[str, bool]:
    """Which core headers' parsed values are kept."""
    return {
        "via": headers.parsed_via is not None,
        "from": headers.parsed_from is not None,
        "to": headers.parsed_to is not None,
        "call-id": headers.parsed_call_id is not None,
        "cseq": headers.parsed_cseq is not None,
    }


def _replaced(headers: Headers, name: str, value: str) -> None:
    """The first line of `name` replaced in place, the way `replaced_first` is told of it."""
    at = next(i for i, (k, _) in enumerate(headers.items) if k == name)
    headers.items[at] = (name, value)
    headers.replaced_first(name, value)


def test_an_edit_forgets_what_was_parsed_of_the_header_it_edits() -> None:
    """The core headers' parsed values (`Headers.parsed_*`, issue 18) follow every edit of
    their header, as the other headers' (`memo`) do; replacing or adding a line keeps what
    was parsed of the other headers, other edits forget it all (parsed again when read)."""
    edits = [
        ("via", True, lambda h: _replaced(h, "Via", "SIP/2.0/UDP y;branch=z9hG4bKy")),
        ("via", False, lambda h: h.prepend("Via", "SIP/2.0/UDP x;branch=z9hG4bKx")),
        ("from", False, lambda h: h.set("From", "<sip:f@x>;tag=f2")),
        ("from", True, lambda h: _replaced(h, "From", "<sip:f@x>;tag=f3")),
        ("to", True, lambda h: _replaced(h, "To", "<sip:t@x>;tag=t2")),
        ("call-id", True, lambda h: _replaced(h, "Call-ID", "other")),
        ("cseq", True, lambda h: _replaced(h, "CSeq", "7 INVITE")),
        ("contact", True, lambda h: h.add("Contact", "<sip:c2@x>")),
    ]
    forgetting = [Headers.changed, Headers.compact]
    edits += [("via", False, forget) for forget in forgetting]
    for key, keeps_others, edit in edits:
        message = request(F1_INVITE)
        before = _parsed(message)
        assert all(_kept(message.headers).values())
        edit(message.headers)
        kept = _kept(message.headers)
        assert kept.pop(key, False) is False, key
        assert set(kept.values()) == {keeps_others}, key
        after = _parsed(message)
        assert after == _parsed(request(message.serialize())), key
        if edit in forgetting:  # (the lines as they were)
            assert after == before
        else:
            assert after[key] != before[key], key
    message = request(F1_INVITE)
    before = _parsed(message)
    copied = Request(method=message.method, uri=message.uri, headers=message.headers.copy())
    assert all(_kept(copied.headers).values())
    assert all(_parsed(copied)[k] is before[k] for k in ("via", "from", "to", "cseq"))
