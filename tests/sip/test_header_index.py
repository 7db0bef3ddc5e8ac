"""The caches and fast paths of the SIP parser (issue 18): the header index and parsed-header
memo of `Headers` (src/sipbridge/sip/message.py) answer exactly what a scan of the lines answers,
after any edit; parameters without quotes or whitespace (src/sipbridge/sip/headers.py) parse as
the general path parses them; the header lines, addresses, URIs and CSeqs kept parsed are the
same as parsed anew, and bounded.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sip import headers as headers_module
from sipbridge.sip import message as message_module
from sipbridge.sip import uri as uri_module
from sipbridge.sip.endpoint import Peer, RequestReceived, SipEndpoint
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import (
    TOKEN,
    _split,
    parse_address,
    parse_cseq,
    parse_params,
    parse_via,
    split_list,
)
from sipbridge.sip.message import (
    LIST_HEADERS,
    Headers,
    Request,
    canonical_name,
    header_key,
    parse_message,
)
from sipbridge.sip.uri import parse_uri

FUZZ = settings(database=None, deadline=None, max_examples=300)

INVITE = (
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport\r\n"
    b"From: <sip:alice@192.0.2.1>;tag=a1\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: c1@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def scanned(headers: Headers, name: str) -> list[str]:
    """What a lookup answered before the index: a scan of every line."""
    key = header_key(name)
    return [v for k, v in headers.items if header_key(k) == key]


NAMES = st.sampled_from(["Via", "v", "VIA", "To", "t", "CSeq", "X-Foo", "x-foo", "Contact"])
VALUES = st.sampled_from(["a", "b, c", '"x, y" <sip:z>', "", " d ", ",", "<sip:a,b>"])
EDITS = st.lists(
    st.tuples(st.sampled_from(["add", "set", "remove", "prepend", "look"]), NAMES, VALUES),
    max_size=12,
)


@FUZZ
@given(EDITS)
def test_lookups_agree_with_a_scan_after_any_edits(edits: list[tuple[str, str, str]]) -> None:
    headers = Headers()
    for op, name, value in edits:
        if op == "look":
            headers.get_all(name)  # builds the index midway
        elif op == "remove":
            headers.remove(name)
        else:
            getattr(headers, op)(name, value)
        for probe in ("Via", "To", "CSeq", "X-FOO", "Contact", "Absent"):
            lines = scanned(headers, probe)
            assert list(headers.lines(probe)) == lines
            assert headers.get(probe) == (lines[0] if lines else None)
            assert (probe in headers) == bool(lines)
            if canonical_name(probe) not in LIST_HEADERS:
                assert headers.get_all(probe) == lines
            else:
                assert headers.get_all(probe) == [i for v in lines for i in split_list(v)]


def test_parsed_headers_follow_edits() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    assert request.top_via.branch == "z9hG4bK-1" and request.to.tag is None
    # what the endpoint does for RFC 3581: the top Via rewritten in place, then changed()
    request.headers.items[0] = ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport=9")
    request.headers.changed()
    assert request.top_via.rport == "9"
    request.headers.prepend("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-2")
    assert request.top_via.host == "10.0.0.1"
    request.headers.set("To", "<sip:bob@127.0.0.1>;tag=b1")
    assert request.to.tag == "b1"
    request.headers.add("To", "<sip:carol@127.0.0.1>")  # a second To: no longer one value
    with pytest.raises(SipProtocolError, match="more than one To"):
        request.to  # noqa: B018
    request.headers.remove("Contact")
    assert request.contacts == []
    request.headers.add("Contact", "<sip:a@1.2.3.4>, <sip:b@1.2.3.4>")
    assert [c.uri.user for c in request.contacts] == ["a", "b"]


def test_a_copy_has_its_own_index_and_memo() -> None:
    request = parse_message(INVITE)
    assert request.call_id == "c1@192.0.2.1"
    copied = request.headers.copy()
    copied.set("Call-ID", "other")
    assert request.call_id == "c1@192.0.2.1" and request.headers.get("Call-ID") == "c1@192.0.2.1"
    assert copied.get("Call-ID") == "other"
    assert Request(method="INVITE", uri=parse_uri("sip:x@y"), headers=copied).call_id == "other"


@pytest.mark.parametrize(
    "data",
    [
        INVITE,
        INVITE.replace(b"\r\n", b"\n"),  # bare LF
        b"\r\n" + INVITE,  # a leading CRLF (s7.5)
        INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 70"),  # folded (s7.3.1)
        INVITE.replace(b"Via: ", b"v: ").replace(b"Call-ID: ", b"i: "),  # compact forms
    ],
)
def test_every_spelling_of_a_message_indexes_alike(data: bytes) -> None:
    message = parse_message(data)
    assert message.headers.lines("Max-Forwards") == ("70",)
    assert message.call_id == "c1@192.0.2.1" and message.top_via.branch == "z9hG4bK-1"
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length"):
        assert list(message.headers.lines(name)) == scanned(message.headers, name)


def test_the_endpoints_rewrite_of_the_top_via_is_read_back() -> None:
    endpoint = SipEndpoint()
    endpoint.receive(INVITE, Peer("udp", "192.0.2.9", 5999), 0.0)
    assert endpoint.outgoing() == []  # an INVITE is the application's to answer
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    # the top Via already read (for the checks) now says the real source (RFC 3581)
    via = event.request.top_via
    assert (via.received, via.rport) == ("192.0.2.9", "5999")
    assert event.request.headers.get("Via") == str(via)


def params_as_before(text: str) -> tuple[tuple[str, str | None], ...]:
    """parse_params without its fast path: every item split with quotes honoured, stripped."""
    text = text.strip().removeprefix(";")
    if not text:
        return ()
    items = _split(text, ";", angles=False)
    if not all(items):
        raise SipProtocolError(400, "Bad Request", "empty parameter")
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not TOKEN.fullmatch(name):
            raise SipProtocolError(400, "Bad Request", "malformed parameter")
        if eq and not value:
            raise SipProtocolError(400, "Bad Request", "empty value")
        out.append((name, value if eq else None))
    return tuple(out)


PARAM_TEXT = st.text(alphabet=st.sampled_from(list(';=ab-."\\ \t\x0c\xa0\u2003z9')), max_size=20)


@FUZZ
@given(PARAM_TEXT)
def test_parameters_parse_as_before_the_fast_path(text: str) -> None:
    try:
        expected = params_as_before(text)
    except SipProtocolError:
        with pytest.raises(SipProtocolError) as got:
            parse_params(text)
        assert got.value.status == 400
        return
    assert parse_params(text) == expected


def test_a_via_of_empty_items_is_missing() -> None:
    message = parse_message(
        INVITE.replace(b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport", b"Via: ,")
    )
    with pytest.raises(SipProtocolError, match="missing Via"):
        message.top_via  # noqa: B018


def test_invented_methods_and_names_stay_bounded() -> None:
    # a peer inventing methods and header names: each parsed and checked, the caches bounded
    for n in range(5000):
        message = parse_message(
            INVITE.replace(b"INVITE sip", b"M%d sip" % n, 1).replace(b"Max-Forwards", b"X-H%d" % n)
        )
        assert isinstance(message, Request) and message.method == f"M{n}"
        assert message.headers.get(f"x-h{n}") == "70"
    assert len(message_module._METHODS) <= 64 and len(message_module._NAMES) <= 4096


def test_repeated_lines_parse_as_the_first_and_the_kept_ones_stay_bounded() -> None:
    # Lines seen before (all of a message but its per-call headers) come from what the first
    # parse made: the same items and index as a first parse, in every order and repetition.
    message_module._LINES.clear()
    first = parse_message(INVITE)
    again = parse_message(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" * 2))
    fresh = message_module._index_lines([f"{n}: {v}" for n, v in again.headers.items])
    assert again.headers.items == fresh.items and again.headers._index == fresh._index
    assert again.headers.lines("Max-Forwards") == ("70", "70")
    rest = list(again.headers.items)
    rest.remove(("Max-Forwards", "70"))
    assert first.headers.items == rest
    assert "Max-Forwards: 70" in message_module._LINES
    # per-call headers are not kept (they would only push the others out)
    assert not any(line.startswith(("Via", "Call-ID", "From")) for line in message_module._LINES)
    # a line kept does not let a malformed one through after it
    with pytest.raises(SipProtocolError):
        parse_message(INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nbad\r\n"))
    # a peer inventing lines: bounded, in number and in length
    for n in range(5000):
        parse_message(INVITE.replace(b"Max-Forwards: 70", b"Subject: s%d" % n))
    assert len(message_module._LINES) <= message_module._MAX_LINES
    long = parse_message(INVITE.replace(b"Max-Forwards: 70", b"Subject: " + b"x" * 300))
    assert long.headers.get("Subject") == "x" * 300
    assert not any(len(line) > message_module._LINE_KEPT for line in message_module._LINES)


def test_the_parsed_addresses_uris_and_cseqs_stay_bounded() -> None:
    # every From, To and request URI different (a peer inventing them): bounded, and what is
    # malformed is refused each time, never kept
    for n in range(5000):
        assert parse_address(f"<sip:u{n}@h>;tag={n}").tag == str(n)
        assert parse_uri(f"sip:u{n}@h").user == f"u{n}"
        assert parse_cseq(f"{n} INVITE").seq == n
    assert len(headers_module._ADDRESSES) <= headers_module._MAX_CACHED
    assert len(headers_module._CSEQS) <= headers_module._MAX_CACHED
    assert len(uri_module._URIS) <= uri_module._MAX_URIS
    for _ in range(2):
        with pytest.raises(SipProtocolError):
            parse_address("<sip:unterminated")
        with pytest.raises(SipProtocolError):
            parse_cseq("x INVITE")


def test_a_via_host_or_port_beyond_the_plain_characters_takes_the_pattern() -> None:
    # the plain Via's host and port are checked character by character (ASCII letters, digits,
    # '-', '.'; ASCII digits): anything else is the pattern's to judge (here: refused)
    for value in (
        "SIP/2.0/UDP h\u00e9st:5060;branch=z9hG4bK1",
        "SIP/2.0/UDP host:\uff15\uff10\uff16\uff10;branch=z9hG4bK1",  # full-width digits
        "SIP/2.0/UDP host:\u0665;branch=z9hG4bK1",  # an Arabic-Indic digit
    ):
        with pytest.raises(SipProtocolError):
            parse_via(value)
    via = parse_via("SIP/2.0/UDP Host-1.example:5060;branch=z9hG4bK1")
    assert (via.host, via.port, via.branch) == ("Host-1.example", 5060, "z9hG4bK1")
