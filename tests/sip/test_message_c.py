"""The C cut of a message's head (src/sipbridge/_csipmsg.c) against the Python parser, and the
C search of the trace's Call-ID against trace.py's.

`parse_message` hands a message to `_csipmsg.parse_head` first; for the common shape (ASCII,
CRLF, no folding...) C builds the message's objects, for anything else it returns None and the
Python parser (`parse_message_python`) runs. Both must give the same message or the same error
(status, reason, detail) on every input: the call flows and RFC 4475 torture messages of the
message tests, the seed corpus of every fuzz target that carries SIP (fuzz/corpus), and seeded
random mutations of them (bytes flipped, inserted, deleted; lines repeated, folded, cut).
"""

from __future__ import annotations

import contextlib
import gc
import random
from pathlib import Path
from typing import Any

import pytest

from sipbridge.sip import headers
from sipbridge.sip import message as sipmsg
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_LINE,
    MAX_MESSAGE,
    Request,
    Response,
    parse_message,
    parse_message_python,
)
from sipbridge.sip.trace import call_id_of
from tests.sip.test_message import CALL_FLOW
from tests.sip.test_torture import MESSAGES as TORTURE

_csipmsg = pytest.importorskip("sipbridge.sip._csipmsg")
if sipmsg._cparse is None:
    pytest.skip("SIPBRIDGE_NO_CSIPMSG=1: the Python parser alone", allow_module_level=True)

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
# fuzz/targets.py: the endpoint and user agent targets cut their input into datagrams at NULs
SEPARATOR = b"\x00\x00\x00\x00"


def corpus() -> list[bytes]:
    found: list[bytes] = [SIPP_INVITE, SIPP_OK, *CALL_FLOW, *TORTURE.values()]
    for target in ("sip_message", "sip_stream", "endpoint", "user_agent", "sip_trying"):
        for path in sorted((CORPUS / target).glob("*")):
            data = path.read_bytes()
            found.append(data)
            found.extend(piece for piece in data.split(SEPARATOR) if piece)
    return found


def shape(message: Request | Response) -> tuple[Any, ...]:
    """Everything parsing makes, the memo aside (made only by the accessors)."""
    headers = message.headers
    start = (
        (message.method, message.uri)
        if isinstance(message, Request)
        else (message.status, message.reason)
    )
    return (type(message), *start, headers.items, headers._index, headers.memo, message.body)


def outcome(parse: Any, data: bytes, *, stream: bool = False) -> tuple[Any, ...]:
    try:
        return ("parsed", shape(parse(data, stream=stream)))
    except SipProtocolError as err:
        return ("refused", err.status, err.reason, err.detail)


def forget_caches() -> None:
    """The Python parser's caches, which the C side shares: emptied so that each side parses
    from nothing (a message equal only through a line cached by the other would hide a fault)."""
    sipmsg._LINES.clear()
    sipmsg._NAMES.clear()
    sipmsg._METHODS.clear()


def assert_same(data: bytes, *, cold: bool = False) -> None:
    for stream in (False, True):
        if cold:
            forget_caches()
        in_c = outcome(parse_message, data, stream=stream)
        if cold:
            forget_caches()
        in_python = outcome(parse_message_python, data, stream=stream)
        assert in_c == in_python, data[:200]
        # and warm: each side again, with the caches the two have filled
        assert outcome(parse_message, data, stream=stream) == in_python, data[:200]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out.extend(b"\r\n")
        i = rng.randrange(len(out) + 1)
        kind = rng.randrange(8)
        if kind == 0:  # a byte flipped
            out[min(i, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:  # a byte that matters to the cut inserted
            out[i:i] = rng.choice(
                [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x80", b"\x00", b"\x0b", b"\xc3\xa9"]
            )
        elif kind == 2:  # bytes deleted
            del out[i : i + rng.randint(1, 8)]
        elif kind == 3:  # a line folded
            out[i:i] = rng.choice([b"\r\n ", b"\r\n\t", b"\n "])
        elif kind == 4:  # a line repeated
            start = out.rfind(b"\r\n", 0, i) + 2
            end = out.find(b"\r\n", i)
            if start >= 2 and end > start:
                out[end:end] = out[start - 2 : end]
        elif kind == 5:  # cut short
            del out[i:]
        elif kind == 6:  # a case changed
            out[i:i] = rng.choice([b"sip/2.0", b"SIP/2.1", b"CONTENT-LENGTH: 0\r\n", b"l: 1\r\n"])
        else:  # a leading CRLF, or the head's end moved
            out[i:i] = rng.choice([b"\r\n\r\n", b"\n\n"]) if i else b"\r\n"
    return bytes(out)


# What `sipp -sn uac` sends (bench/sip_profile.py), and its answer: the common shape.
SIPP_INVITE = (
    b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)
SIPP_OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5060>;tag=abc\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_the_common_shape_is_cut_in_c() -> None:
    assert sipmsg._cparse is not None
    for data in (SIPP_INVITE, SIPP_OK, CALL_FLOW[0]):
        assert _csipmsg.parse_head(data, False) is not None
        assert_same(data, cold=True)
    request = parse_message(SIPP_INVITE)
    assert isinstance(request, Request)
    assert (request.method, request.call_id, request.cseq.method) == (
        "INVITE",
        "1-1234@127.0.0.1",
        "INVITE",
    )
    assert request.body == b"v=0\n"


@pytest.mark.parametrize(
    "data",
    [
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",  # common
        b"\r\nINVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",  # a leading CRLF
        b"INVITE sip:a@b SIP/2.0\nVia: x\n\n",  # bare LF
        b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n y\r\n\r\n",  # folded
        b"INVITE sip:a@b SIP/2.0\r\nSubject: \xc3\xa9\r\n\r\n",  # not ASCII
        b"INVITE sip:a@b sip/2.0\r\nVia: x\r\n\r\n",  # the version's case
        b"INVITE sip:a@b SIP/2.1\r\nVia: x\r\n\r\n",  # 505
        b"INV\x01TE sip:a@b SIP/2.0\r\n\r\n",  # a control character
        b"INVITE sip:a@b SIP/2.0\r\nVia\r\n\r\n",  # no colon
        b"INVITE sip:a@b SIP/2.0\r\nV ia: x\r\n\r\n",  # a name outside the grammar
        b"INVITE sip:a@b SIP/2.0\r\nVia: x\rx\r\n\r\n",  # a bare CR
        b"INVITE sip:a b SIP/2.0\r\n\r\n",  # three spaces
        b"INVITE  SIP/2.0\r\n\r\n",  # an empty URI
        b"INVITE sip:a@b SIP/2.0\r\n",  # no end of headers
        b"\r\n\r\n",  # nothing
        b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n",
        b"SIP/2.0 200 \r\n\r\n",  # an empty reason
        b"SIP/2.0 200\r\n\r\n",  # no reason
        b"SIP/2.0 700 Big\r\n\r\n",
        b"SIP/2.0 20x OK\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nabc",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 9\r\n\r\nabc",  # body too short
        b"INVITE sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nabc",  # conflicting
        b"INVITE sip:a@b SIP/2.0\r\nVia: \t x \t\r\nVia:y\r\nv:z\r\n\r\n",  # strip, repeats
        b"INVITE sip:a@b SIP/2.0\r\nX-\x7f: y\r\n\r\n",  # DEL: not a token character
        b"INVITE sip:a@b SIP/2.0\r\nVIA: x\r\nvia :y\r\nV:z\r\nCall-Id: c\r\n\r\n",  # case
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0002\r\n\r\nabc",  # leading zeros
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 1000000000\r\n\r\nabc",  # ten digits
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: \r\n\r\nabc",  # empty
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 1 2\r\n\r\nabc",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\nabc",
        b"INVITE sip:a@b SIP/2.0\r\nl: 2\r\ncontent-length:2 \r\n\r\nabc",  # the same twice
        b"INVITE sip:a@b SIP/2.0\r\nl: 2\r\nl: 02\r\n\r\nabc",  # equal numbers, not text
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc",  # all of it
    ],
)
def test_cases_at_the_edge_of_the_common_shape(data: bytes) -> None:
    assert_same(data, cold=True)


def test_limits() -> None:
    line = b"X-Long: " + b"a" * (MAX_LINE - 8)
    for extra in (0, 1):  # a line of MAX_LINE characters, and one more
        assert_same(b"OPTIONS sip:a@b SIP/2.0\r\n" + line + b"a" * extra + b"\r\n\r\n")
    for count in (MAX_HEADERS, MAX_HEADERS + 1, MAX_HEADERS + 2):
        head = b"OPTIONS sip:a@b SIP/2.0\r\n" + b"Via: x\r\n" * count
        assert_same(head + b"\r\n")
        assert_same(head + b"bad\r\n\r\n")  # a malformed line past the cap
    big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert_same(big + b"x" * (MAX_MESSAGE - len(big)))
    assert_same(big + b"x" * (MAX_MESSAGE - len(big) + 1))  # 513
    head = b"OPTIONS sip:a@b SIP/2.0\r\n"
    for size in (MAX_BODY, MAX_BODY + 1):  # the body's limit (413), with and without a length
        assert_same(head + b"\r\n" + b"x" * size)
        assert_same(head + b"Content-Length: %d\r\n\r\n" % size + b"x" * size)


def test_corpus() -> None:
    messages = corpus()
    assert len(messages) > 200
    for data in messages:
        assert_same(data, cold=True)


def test_mutations() -> None:
    rng = random.Random(18)
    seeds = corpus()
    for _ in range(6000):
        data = mutate(rng.choice(seeds), rng)
        assert_same(data, cold=rng.random() < 0.25)


def test_the_lines_found_by_their_bytes_follow_the_lines_cache() -> None:
    # C finds the lines of the Python parser's cache (`_LINES`) by their bytes: only lines that
    # cache holds, never more of them, none once it was emptied
    sipmsg._LINES.clear()
    parse_message(SIPP_INVITE)
    kept = _csipmsg.kept_lines()
    assert 0 < kept <= len(sipmsg._LINES)
    again = parse_message(SIPP_INVITE)
    assert _csipmsg.kept_lines() == kept and shape(again) == shape(parse_message(SIPP_INVITE))
    sipmsg._LINES.clear()
    parse_message(SIPP_INVITE)  # (found again in the cache, as on the first parse)
    assert _csipmsg.kept_lines() == kept and "Max-Forwards: 70" in sipmsg._LINES
    for n in range(3 * sipmsg._MAX_LINES):  # a peer inventing lines: bounded
        parse_message(SIPP_INVITE.replace(b"Max-Forwards: 70", b"Subject: s%d" % n))
        assert _csipmsg.kept_lines() <= min(len(sipmsg._LINES), sipmsg._MAX_LINES)


def test_not_configured_or_not_bytes() -> None:
    with pytest.raises(TypeError):
        _csipmsg.parse_head("INVITE sip:a@b SIP/2.0\r\n\r\n", False)


# -- the trace's Call-ID (sip/trace.py `call_id_of`, `_csipmsg.call_id`) -----------------------


def call_id_in_c(data: bytes) -> bytes | None:
    found = _csipmsg.call_id(data)
    return found if found is not None else call_id_of(data, canonical=False)


@pytest.mark.parametrize(
    "data",
    [
        b"BYE sip:a@b SIP/2.0\r\nCall-ID: abc\r\n\r\n",
        b"BYE sip:a@b SIP/2.0\r\nCall-ID:  \x0babc \t\r\n\r\n",  # blanks bytes.strip strips
        b"BYE sip:a@b SIP/2.0\r\nCall-ID: \r\n\r\n",  # empty
        b"BYE sip:a@b SIP/2.0\r\nCall-ID: abc",  # cut short: to the end
        b"BYE sip:a@b SIP/2.0\r\ni: abc\r\n\r\n",  # compact: the regular expression
        b"BYE sip:a@b SIP/2.0\r\ncall-id:abc\r\n\r\n",
        b"BYE sip:a@b SIP/2.0\r\n\r\nCall-ID: body\r\n",  # only in the body: none
        b"BYE sip:a@b SIP/2.0\r\n\r\nCall-ID: body\r\ni: x\r\n",
        b"NOTIFY sip:a@b SIP/2.0\r\ni: head\r\n\r\nCall-ID: body\r\n",
        b"\r\nCall-ID: first\r\n\r\n",  # at the very start
        b"\r\n\r\nCall-ID: x\r\n",  # the blank line is its first CRLF
        b"Call-ID: x\r\n\r\n",  # no CRLF before it
        b"BYE sip:a@b SIP/2.0\nCall-ID: lf\r\ni: x\r\n\r\n",  # a bare LF before it
        b"BYE sip:a@b SIP/2.0\r\r\nCall-ID: cr\r\n\r\n",
        b"BYE sip:a@b SIP/2.0\r\n\n\r\nCall-ID: x\r\n\r\n",  # not a blank line before it
        b"BYE sip:a@b SIP/2.0\r\nCall-ID: one\r\nCall-ID: two\r\n\r\n",  # the first
        b"BYE sip:a@b SIP/2.0\r\nCall-ID:",  # cut in its name
        b"",
    ],
)
def test_call_id_cases(data: bytes) -> None:
    assert call_id_in_c(data) == call_id_of(data)


def test_call_id_on_the_corpus_and_mutations() -> None:
    seeds = corpus()
    for data in seeds:
        assert call_id_in_c(data) == call_id_of(data), data[:200]
    rng = random.Random(3261)
    for _ in range(6000):
        data = mutate(rng.choice(seeds), rng)
        assert call_id_in_c(data) == call_id_of(data), data[:200]


# -- a plain Via (sip/headers.py `_parse_plain_via`, `_csipmsg.plain_via`) ---------------------


def mutate_text(value: str, rng: random.Random, alphabet: str) -> str:
    """`value` with 1-3 characters deleted, inserted from `alphabet` or replaced by one of it."""
    chars = list(value)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(chars) + 1)
        what = rng.random()
        if what < 0.4 and chars:
            del chars[min(at, len(chars) - 1)]
        elif what < 0.8:
            chars.insert(at, rng.choice(alphabet))
        elif chars:
            chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def via_outcome(parse: Any, value: str) -> tuple[Any, ...]:
    try:
        via = parse(value)
    except SipProtocolError as err:
        return ("refused", err.status, err.reason, err.detail)
    if via is None:
        return ("not plain",)
    return (via, via.protocol, via.transport, via.host, via.port, via.params, via.branch, via.rport)


def assert_same_via(value: str) -> None:
    """`_parse_plain_via` (C first) gives what the Python function alone gives; where C cuts
    the Via, the Python function accepts it with the same fields."""
    python = via_outcome(headers._parse_plain_via_python, value)
    assert via_outcome(headers._parse_plain_via, value) == python, value
    parts = _csipmsg.plain_via(value)
    if parts is not None:
        assert python[0] != "refused" and python[0] != "not plain", (value, parts)
        assert (python[2], python[3], python[4], python[5], python[6], python[7]) == parts, (
            value,
            parts,
            python,
        )


def corpus_vias() -> list[str]:
    vias: list[str] = []
    for data in corpus():
        try:
            message = parse_message_python(data)
        except SipProtocolError:
            continue
        vias.extend(message.headers.lines("Via"))
        with contextlib.suppress(SipProtocolError):
            vias.extend(message.headers.get_all("Via"))
    return vias


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0",
        "SIP/2.0/udp host.example.com;branch=z9hG4bK1;rport",
        "SIP/2.0/TCP h:5060;rport=5061;received=10.0.0.1;branch=z9hG4bKx",
        "SIP/2.0/WSS h",
        "SIP/2.0/SCTP h:65535",
        "SIP/2.0/UDP h;",  # a lone ";": no parameter
        "SIP/2.0/UDP h;;branch=x",  # empty parameter: refused
        "SIP/2.0/UDP h;branch=x;",
        "SIP/2.0/UDP h;branch=",  # empty value: refused
        "SIP/2.0/UDP h;=x",
        "SIP/2.0/UDP h;br@nch=x",  # not a token: refused
        "SIP/2.0/UDP h;a=b=c",  # the value keeps its "="
        "SIP/2.0/UDP h:0",  # out of range: refused
        "SIP/2.0/UDP h:65536",
        "SIP/2.0/UDP h:00001",
        "SIP/2.0/UDP h:123456",  # not plain
        "SIP/2.0/UDP h:",
        "SIP/2.0/UDP :5060",
        "SIP/2.0/Udp h",
        "SIP/2.0/XYZ h",
        "SIP/2.0/UDP [::1]:5060;branch=x",
        'SIP/2.0/UDP h;branch="x"',
        "SIP/2.0/UDP h;branch=x y",
        "SIP/2.0/UDP h;branch=x\t",
        "SIP/2.0/UDP h;branch=\u00e9",
        "SIP/2.0/UDP h\u00e9",
        "SIP/2.0/UDP h\n;branch=x",
        "SIP/2.0/UDP  h",
        "SIP/2.0/UDP",
        "SIP/2.0/",
        "",
        "sip/2.0/UDP h",
        # branch and rport found as `Via` finds them: the first of each name, in any case
        "SIP/2.0/UDP h;BRANCH=z9hG4bKa;Branch=z9hG4bKb;RPort=1;rport",
        "SIP/2.0/UDP h;rport;branch;rport=5",
        "SIP/2.0/UDP h;branches=x;rports=y;branc=z;rpor",
    ],
)
def test_plain_via_cases(value: str) -> None:
    assert_same_via(value)


def test_plain_via_on_the_corpus_and_mutations() -> None:
    vias = corpus_vias()
    assert len(vias) > 100
    for value in vias:
        assert_same_via(value)
    rng = random.Random(3581)
    alphabet = ';=:. \t"/@[]-_!~aZ09\u00e9\n'
    for _ in range(20_000):
        assert_same_via(mutate_text(rng.choice(vias), rng, alphabet))


def test_plain_via_takes_str() -> None:
    with pytest.raises(TypeError):
        _csipmsg.plain_via(b"SIP/2.0/UDP h")


# -- a message's bytes (sip/message.py `serialize_headers_and_body`, `_csipmsg.serialize`) ----


def both_serialisations(message: Request | Response) -> tuple[bytes, bytes]:
    """The bytes of `message` written by C where it can (`serialize`) and by Python alone."""
    if isinstance(message, Request):
        start = f"{message.method} {message.uri} SIP/2.0\r\n"
    else:
        reason = (
            sipmsg.REASONS.get(message.status, "") if message.reason is None else message.reason
        )
        start = f"SIP/2.0 {message.status} {reason}\r\n"
    return message.serialize(), message.serialize_python([start])


def test_serialisation_in_c_is_the_python_one() -> None:
    rng = random.Random(4475)
    seeds = corpus()
    messages: list[Request | Response] = []
    for data in [*seeds, *(mutate(rng.choice(seeds), rng) for _ in range(3000))]:
        with contextlib.suppress(SipProtocolError):
            messages.append(parse_message_python(data))
    assert len(messages) > 500
    written_in_c = 0
    for message in messages:
        c, python = both_serialisations(message)
        assert c == python, (c, python)
        written_in_c += _csipmsg.serialize("", "", message.headers.items, 0, b"") is not None
        if isinstance(message, Request):  # a response with kept headers, and more added
            with contextlib.suppress(SipProtocolError):
                response = sipmsg.make_response(message, 180, to_tag="c0ffee")
                echoed = sipmsg.EchoedHeaders(response.headers)
                again = echoed.response(200)
                again.headers.add("Content-Length", "999")  # (left out: the body's is written)
                again.headers.add("Contact", "<sip:x@y>")
                again.body = message.body
                c, python = both_serialisations(again)
                assert c == python, (c, python)
    assert written_in_c > 300  # (the rest: non-ASCII text, in Python)


@pytest.mark.parametrize(
    ("items", "body"),
    [
        ([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Content-Length", "5")], b"hello"),
        ([("Content-Length", "0"), ("Content-Length", "1")], b""),
        ([("Subject", "caf\u00e9")], b""),  # not ASCII: in Python
        ([("Subject", "\udcff")], b"x"),  # a surrogate escape: in Python
        ([("X-A", "b", "c")], b""),  # (not a pair: in Python, which takes two)
        ([], b"\x00\xff"),
    ],
)
def test_serialisation_cases(items: list[Any], body: bytes) -> None:
    message = Response(status=200, reason="OK", headers=sipmsg.Headers(items), body=body)
    if any(len(item) != 2 for item in items):
        assert _csipmsg.serialize("SIP/2.0 200 OK\r\n", "", items, 0, body) is None
        return
    assert both_serialisations(message)[0] == both_serialisations(message)[1]


def test_serialize_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        _csipmsg.serialize("a", "", [], 0)
    with pytest.raises(TypeError):
        _csipmsg.serialize("a", "", (), 0, b"")
    assert _csipmsg.serialize("a", "", [], 1, b"") is None  # `first` past the items
    assert _csipmsg.serialize("a\u00e9", "", [], 0, b"") is None
    assert _csipmsg.serialize("S\r\n", "W\r\n", [("A", "1"), ("B", "2")], 1, b"x") == (
        b"S\r\nW\r\nB: 2\r\nContent-Length: 1\r\n\r\nx"
    )


def test_header_block_in_c_is_the_python_one() -> None:
    """`EchoedHeaders`' text (`_csipmsg.header_block`, `header_block_python`): the same str
    for every message of the corpus and its mutations written in C, None for the rest."""
    rng = random.Random(3261)
    seeds = corpus()
    written_in_c = 0
    for data in [*seeds, *(mutate(rng.choice(seeds), rng) for _ in range(3000))]:
        try:
            message = parse_message_python(data)
        except SipProtocolError:
            continue
        items = (*message.headers.items, ("Content-Length", "7"), ("X-After", "v"))
        block = _csipmsg.header_block(items)
        python = sipmsg.header_block_python(items)
        if block is None:
            assert not python.isascii()
            continue
        written_in_c += 1
        assert block == python and type(block) is str, (block, python)
        echoed = sipmsg.EchoedHeaders(message.headers)
        assert echoed.wire == (len(message.headers.items), sipmsg.header_block_python(echoed.items))
    assert written_in_c > 300


@pytest.mark.parametrize(
    "items",
    [
        (),
        (("Content-Length", "0"),),
        (("Content-Length", "0"), ("A", "1"), ("Content-Length", "1")),
        (("Subject", "caf\u00e9"),),
        (("Subject", "\udcff"),),
        (("X-A", "b", "c"),),
        (("X-A", 1),),
        ("not a pair",),
    ],
)
def test_header_block_cases(items: tuple[Any, ...]) -> None:
    block = _csipmsg.header_block(items)
    if (
        all(
            isinstance(item, tuple) and len(item) == 2 and all(isinstance(p, str) for p in item)
            for item in items
        )
        and sipmsg.header_block_python(items).isascii()
    ):
        assert block == sipmsg.header_block_python(items)
    else:
        assert block is None
    with pytest.raises(TypeError):
        _csipmsg.header_block(list(items))


# -- a plain name-addr (sip/headers.py `_parse_address`, `_csipmsg.name_addr`) -----------------


def address_outcome(parse: Any, value: str) -> tuple[Any, ...]:
    try:
        address = parse(value)
    except SipProtocolError as err:
        return ("refused", err.status, err.reason, err.detail)
    return (address, address.uri, address.display_name, address.params, address.tag)


def assert_same_address(value: str) -> None:
    """`_parse_address` (C first) gives what the Python function alone gives."""
    python = address_outcome(headers._parse_address_python, value)
    assert address_outcome(headers._parse_address, value) == python, value
    parts = _csipmsg.name_addr(value)
    if parts is not None and python[0] != "refused":  # (refused: by parse_uri, both)
        assert (python[2], python[3]) == (parts[0], parts[2]), (value, parts, python)


ADDRESS_HEADERS = ("From", "To", "Contact", "Route", "Record-Route", "Refer-To", "Reply-To")


def corpus_addresses() -> list[str]:
    values: list[str] = []
    for data in corpus():
        try:
            message = parse_message_python(data)
        except SipProtocolError:
            continue
        for name in ADDRESS_HEADERS:
            values.extend(message.headers.lines(name))
            with contextlib.suppress(SipProtocolError):
                values.extend(message.headers.get_all(name))
    return values


@pytest.mark.parametrize(
    "value",
    [
        "sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag001",
        "<sip:a@b>",
        "Bob  Smith <sip:bob@b;transport=tcp>;tag=x;y",
        "Bob <sip:bob@b> ;tag=x",  # a blank after ">": Python
        "Bob <sip:bob@b>;tag=",
        "Bob <sip:bob@b>;;tag=x",
        "Bob <sip:bob@b>;",
        "Bob <sip:bob@b>x",
        "Bob <sip:bob@b>>",
        "Bob <sip:bob@b",
        "Bob <>",
        "Bob < sip:bob@b >",
        "<<sip:a@b>",
        "B@b <sip:bob@b>",
        '"Bob" <sip:bob@b>',
        "sip:bob@b;tag=x",
        "*",
        " <sip:a@b>",
        "<sip:a@b>\t",
        "Bob\t<sip:a@b>",
        "<sip:a@b>;tag=\u00e9",
        "<sip:a@b>;tag=x\x7f",
        "<sip:a b@c>",
        "<sip:a@b>;x=>",
        "",
        # a quoted display name (RFC 3261 s25.1 quoted-string), as carriers and sipp send it
        '"Carol" <sip:+15555550123@127.0.0.1:5061>;tag=1SIPpTag001',
        '"Carol"<sip:a@b>',
        '"Carol" \t <sip:a@b>',
        '"Bob \\"the\\" Builder" <sip:a@b>',  # escaped quotes
        '"C:\\\\" <sip:a@b>',  # an escaped backslash last
        '"C:\\" <sip:a@b>',  # a backslash escaping the closing quote: unterminated
        '"C:\\',  # a backslash at the end
        '"\\a\\b" <sip:a@b>',  # quoted-pairs of ordinary characters
        '"unterminated <sip:a@b>',
        '"',
        '""',
        '"a"',
        '"" <sip:a@b>',  # empty quotes: an empty display name, not none
        '""<sip:a@b>;tag=x',
        '"a <sip:x@y> b" <sip:a@b>',  # "<" and ">" inside the quotes
        '"a > b"<sip:a@b>',
        '"a;tag=x" <sip:a@b>;tag=y',
        '"Jos\u00e9" <sip:a@b>',  # UTF-8 in the display name
        '"a\tb" <sip:a@b>',  # a tab inside the quotes
        '"a\\\tb" <sip:a@b>',
        '"a\x01" <sip:a@b>',
        '"a\\\x01" <sip:a@b>',
        '"a\x7f" <sip:a@b>',
        '"a\r\n b" <sip:a@b>',
        '"a" sip:a@b',  # a quoted display name without <URI>
        '"a" b <sip:a@b>',
        '"a""b" <sip:a@b>',
        '"a" <sip:a@b> ;tag=x',
        '"a" < sip:a@b >',
        '"a" <sip:a@b>;tag=x;;y',
        '"a" <>',
        '"a" <sip:a@b',
        '"a"\x0b<sip:a@b>',
        "x" + '"a" <sip:a@b>',
        '"' + "x" * 5000 + '" <sip:a@b>',  # very long
        '"' + "\\x" * 3000 + '" <sip:a@b>;tag=' + "t" * 500,
        # an addr-spec (no angle brackets: the parameters are the header's, s20.10)
        "sip:+15555550123@127.0.0.1:5061",
        "sip:a@b;tag=x;lr",
        "sip:a@b;",
        "sip:a@b;;tag=x",
        "sip:a@b;tag=",
        'sip:a@b;tag="x"',
        'sip:"a"@b',
        ";tag=x",
        "*;x",
        "**",
        "sip:a@b>",
        "sip:a@b>;tag=x",
        "tel:+15555550123;tag=x",
        "sip:a@b,sip:c@d",
        "sip:a@b?Subject=x;tag=y",
        "sip:a\x7f@b",
        "sip:\u00e9@b",
        "sip:a@b;t@g=x",
    ],
)
def test_name_addr_cases(value: str) -> None:
    assert_same_address(value)


def test_a_quoted_display_name_is_cut_in_c_unquoted() -> None:
    """sipp's and the carriers' `From: "Name" <uri>;tag=...` and an addr-spec Contact are cut in
    C (no fallback to the Python parser), the display name as `unquote` gives it: without its
    quotes, each quoted-pair resolved."""
    cases = {
        '"Carol" <sip:+15555550123@127.0.0.1:5061>;tag=1SIPpTag001': (
            "Carol",
            "sip:+15555550123@127.0.0.1:5061",
            (("tag", "1SIPpTag001"),),
        ),
        '"Bob \\"the\\" \\\\ Builder"\t<sip:a@b>': ('Bob "the" \\ Builder', "sip:a@b", ()),
        '"" <sip:a@b>;lr': ("", "sip:a@b", (("lr", None),)),
        "sip:+15555550123@127.0.0.1:5061": (None, "sip:+15555550123@127.0.0.1:5061", ()),
        "sip:a@b;tag=x;lr": (None, "sip:a@b", (("tag", "x"), ("lr", None))),
    }
    for value, parts in cases.items():
        assert _csipmsg.name_addr(value) == parts, value
        assert_same_address(value)
    for value in ('"C:\\" <sip:a@b>', '"Jos\u00e9" <sip:a@b>', "*", '"a\x01" <sip:a@b>'):
        assert _csipmsg.name_addr(value) is None, value


def test_quoted_display_names_and_mutations_of_them() -> None:
    """Seeded mutations of quoted display names - quotes, backslashes, blanks, angle brackets
    added, removed or moved - give the same outcome both ways."""
    seeds = [
        '"Carol" <sip:+15555550123@127.0.0.1:5061>;tag=1SIPpTag001',
        '"Bob \\"the\\" Builder" <sip:bob@b;transport=tcp>;tag=x;y',
        '"a\\\\" <sip:a@b>',
        '"" <sip:a@b>',
        "sip:+15555550123@127.0.0.1:5061;tag=x",
    ]
    rng = random.Random(251)
    alphabet = '"\\\t <>;= a\u00e9\x01'
    for _ in range(20_000):
        assert_same_address(mutate_text(rng.choice(seeds), rng, alphabet))


def test_name_addr_on_the_corpus_and_mutations() -> None:
    values = corpus_addresses()
    assert len(values) > 100
    cut = 0
    for value in values:
        assert_same_address(value)
        cut += _csipmsg.name_addr(value) is not None
    assert cut > 100
    rng = random.Random(3261)
    alphabet = ';=:. \t"<>@-_!~aZ09\u00e9\\'
    for _ in range(20_000):
        assert_same_address(mutate_text(rng.choice(values), rng, alphabet))


def test_name_addr_takes_str() -> None:
    with pytest.raises(TypeError):
        _csipmsg.name_addr(b"<sip:a@b>")


@contextlib.contextmanager
def no_collection() -> Any:
    """The cyclic collector off: a collection would untrack the tuples it walks by itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_the_pairs_a_message_keeps_are_out_of_the_collectors_lists() -> None:
    """The tuples of str that C makes - a message's items and index, a Via's parameters - and
    the items of a response written in C are untracked at birth (what the collector would do
    at its first collection, after walking them; issue 18), a tuple holding anything else not."""
    with no_collection():
        unique = str(random.Random().getrandbits(64))  # lines no cache holds yet
        data = SIPP_INVITE.replace(b"1-1234@", f"{unique}@".encode()).replace(
            b"z9hG4bK-1-1-0", f"z9hG4bK-{unique}".encode()
        )
        request = parse_message(data)
        assert isinstance(request, Request)
        assert request.call_id == f"{unique}@127.0.0.1"
        assert request.headers._index is not None
        tuples = [*request.headers.items, *request.headers._index.values()]
        assert not any(gc.is_tracked(item) for item in tuples)
        params = request.top_via.params
        assert params == (("branch", f"z9hG4bK-{unique}"),)
        assert not gc.is_tracked(params) and not gc.is_tracked(params[0])

        class Pair(tuple[str, str]):  # (its instances have a __dict__: a cycle may run there)
            pass

        response = sipmsg.make_response(request, 200, to_tag=unique)
        response.headers.add("Contact", f"<sip:{unique}@127.0.0.1>")
        response.headers.items.append(Pair(("X-Odd", unique)))
        fresh = [item for item in response.headers.items if gc.is_tracked(item)]
        assert len(fresh) >= 3  # (the To with its tag, the Contact, the X-Odd: made anew)
        assert response.serialize() == response.serialize_python(["SIP/2.0 200 OK\r\n"])
        tracked = [item for item in response.headers.items if gc.is_tracked(item)]
        assert tracked == [("X-Odd", unique)]
        assert type(tracked[0]) is Pair


def test_atomic_tuples_are_made_untracked_and_others_as_python_makes_them() -> None:
    """`atomic_tuple`: the tuple of its arguments; not tracked by the cyclic collector when no
    argument may be (what the collector does itself at its first look), tracked otherwise - so
    a cycle through it is still found and freed."""
    atomic = _csipmsg.atomic_tuple
    for items in [("3261", "z9hG4bK1", "10.0.0.1", "5060", "INVITE"), (1.5, True, b"x", None)]:
        made = atomic(*items)
        assert made == items and type(made) is tuple and not gc.is_tracked(made)
    inner = atomic("a", 1)
    assert not gc.is_tracked(atomic("b", inner))  # an untracked tuple inside: still atomic
    assert atomic() == ()
    holder: list[Any] = []
    looped = atomic("c", holder)
    assert gc.is_tracked(looped)
    holder.append(looped)  # a cycle through it
    del holder, looped
    assert gc.collect() >= 2  # the list and the tuple, found by the collector


def test_keys_and_trace_entries_kept_for_seconds_are_not_walked_by_the_collector() -> None:
    from sipbridge.sip.trace import CallTraces  # noqa: PLC0415
    from sipbridge.sip.transaction import server_key  # noqa: PLC0415

    invite = parse_message(CALL_FLOW[0])
    assert isinstance(invite, Request)
    assert not gc.is_tracked(server_key(invite))
    traces = CallTraces()
    traces.record(
        CALL_FLOW[0], 1.0, outgoing=False, transport="udp", local=("a", 1), remote=("b", 2)
    )
    (trace,) = traces._calls.values()
    assert trace.size > 0
    assert all(not gc.is_tracked(kept) for kept in trace.head)
