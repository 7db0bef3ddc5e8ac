"""StreamFramer (src/sipbridge/sip/message.py): TCP/TLS framing by Content-Length.

RFC 3261 s18.3 (Content-Length frames stream messages), s7.5 (CRLFs before a start line),
RFC 5626 s3.5.1 (double-CRLF keep-alive ping, single-CRLF pong).
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import MAX_MESSAGE, StreamFramer, parse_message
from tests.sip.test_message import CALL_FLOW, F1_INVITE, F4_ACK, options
from tests.sip.test_torture import MPART01, WSINV

FUZZ = settings(database=None, deadline=None, max_examples=500)
PING = b"\r\n\r\n"
PONG = b"\r\n"


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) is not None:
        out.append(message)
    return out


def feed_bytewise(framer: StreamFramer, data: bytes) -> list[tuple[int, bytes]]:
    """Feed one octet at a time; (offset of the last octet fed, message) for each message."""
    out = []
    for offset in range(len(data)):
        framer.feed(data[offset : offset + 1])
        out += [(offset, message) for message in drain(framer)]
    return out


def framing_error(framer: StreamFramer, data: bytes) -> SipProtocolError:
    with pytest.raises(SipProtocolError) as err:
        framer.feed(data)
        drain(framer)
    return err.value


# -- one octet at a time -----------------------------------------------------------------------


@pytest.mark.parametrize("message", [F1_INVITE, F4_ACK, WSINV, MPART01])
def test_message_fed_one_octet_at_a_time(message: bytes) -> None:
    framer = StreamFramer()
    # The message comes out exactly when its last octet arrives, and not before.
    assert feed_bytewise(framer, message) == [(len(message) - 1, message)]
    assert framer.buffered == 0
    parsed = parse_message(message, stream=True)
    assert parsed.serialize() == parse_message(parsed.serialize(), stream=True).serialize()


def test_call_flow_fed_one_octet_at_a_time() -> None:
    # RFC 3665 s3.1 F1-F6 back to back on one connection.
    framer = StreamFramer()
    stream = b"".join(CALL_FLOW)
    assert [message for _, message in feed_bytewise(framer, stream)] == CALL_FLOW


def test_several_messages_in_one_chunk() -> None:
    framer = StreamFramer()
    framer.feed(b"".join(CALL_FLOW) + F1_INVITE[:40])
    assert drain(framer) == CALL_FLOW
    assert framer.buffered == 40
    framer.feed(F1_INVITE[40:])
    assert drain(framer) == [F1_INVITE]


def test_body_split_across_feeds() -> None:
    head, body = F1_INVITE.split(b"\r\n\r\n", 1)
    framer = StreamFramer()
    framer.feed(head + b"\r\n\r\n" + body[:50])
    assert framer.next_message() is None
    framer.feed(body[50:100])
    assert framer.next_message() is None
    framer.feed(body[100:] + F4_ACK[:10])
    assert drain(framer) == [F1_INVITE]
    framer.feed(F4_ACK[10:])
    assert drain(framer) == [F4_ACK]


@pytest.mark.parametrize("header", ["l: 5", "L : 5", "content-length:5", "CONTENT-LENGTH :  5"])
def test_content_length_in_any_spelling(header: str) -> None:
    framer = StreamFramer()
    message = options(header, body="hello")
    framer.feed(message + b"OPTIONS")
    assert drain(framer) == [message]
    assert parse_message(message, stream=True).body == b"hello"


def test_body_octets_that_look_like_headers_are_body() -> None:
    body = "Content-Length: 999\r\n\r\n"
    message = options(f"Content-Length: {len(body)}", body=body)
    framer = StreamFramer()
    framer.feed(message + F4_ACK)
    assert drain(framer) == [message, F4_ACK]


# -- keep-alives (RFC 5626 s3.5.1) ---------------------------------------------------------


def test_double_crlf_pings_are_counted() -> None:
    framer = StreamFramer()
    framer.feed(PING + PING + F4_ACK + PING + F4_ACK + PING)
    assert drain(framer) == [F4_ACK, F4_ACK]
    assert framer.keepalives == 4 and framer.buffered == 0


def test_single_crlf_pongs_are_skipped() -> None:
    framer = StreamFramer()
    framer.feed(PONG + F4_ACK + PONG + F4_ACK + PONG)
    assert drain(framer) == [F4_ACK, F4_ACK]
    assert framer.keepalives == 0


def test_ping_fed_one_octet_at_a_time() -> None:
    framer = StreamFramer()
    assert feed_bytewise(framer, PING) == []
    assert framer.keepalives == 1 and framer.buffered == 0


def test_a_lone_crlf_waits_to_see_whether_it_is_a_ping() -> None:
    framer = StreamFramer()
    framer.feed(PONG)
    assert framer.next_message() is None
    assert (framer.keepalives, framer.buffered) == (0, 2)
    framer.feed(b"\r")
    assert framer.next_message() is None
    assert (framer.keepalives, framer.buffered) == (0, 3)
    framer.feed(b"\n" + F4_ACK)
    assert drain(framer) == [F4_ACK]
    assert framer.keepalives == 1


def test_pong_then_message_fed_one_octet_at_a_time() -> None:
    framer = StreamFramer()
    assert [m for _, m in feed_bytewise(framer, PONG + F4_ACK + PING)] == [F4_ACK]
    assert framer.keepalives == 1


# -- caps and framing errors -----------------------------------------------------------------


def test_header_block_that_never_ends_gets_513() -> None:
    framer = StreamFramer()
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    while framer.buffered + len(line) <= MAX_MESSAGE:
        framer.feed(line)
        assert framer.next_message() is None
    framer.feed(b"a" * (MAX_MESSAGE - framer.buffered))
    assert framer.next_message() is None  # exactly at the cap: still waiting
    err = framing_error(framer, b"a")
    assert (err.status, err.reason) == (513, "Message Too Large")


def test_a_flood_of_pings_is_not_an_overflow() -> None:
    framer = StreamFramer(max_buffer=10)
    framer.feed(PING * 100)  # over the cap, but nothing in it needs buffering
    assert (framer.keepalives, framer.buffered) == (100, 0)
    assert framer.next_message() is None


def test_oversized_chunk_is_refused_by_feed() -> None:
    # One read may hold several whole messages, so feed() only refuses a pile-up far beyond
    # one message's cap; a single oversized message is refused by next_message().
    framer = StreamFramer(max_buffer=1000)
    framer.feed(b"x" * 1005)
    with pytest.raises(SipProtocolError) as err:
        framer.next_message()
    assert err.value.status == 513
    with pytest.raises(SipProtocolError) as err:
        StreamFramer(max_buffer=1000).feed(b"x" * 16_005)
    assert err.value.status == 513


def test_huge_declared_content_length_gets_513_before_the_body() -> None:
    framer = StreamFramer()
    err = framing_error(framer, options("Content-Length: 999999999"))
    assert (err.status, err.reason) == (513, "Message Too Large")


def test_message_exactly_at_the_cap_passes() -> None:
    head = options("Content-Length: 00000")
    body_size = MAX_MESSAGE - len(head)
    message = options(f"Content-Length: {body_size:05d}", body="b" * body_size)
    assert len(message) == MAX_MESSAGE
    framer = StreamFramer()
    framer.feed(message)
    assert drain(framer) == [message]
    bigger = options(f"Content-Length: {body_size + 1:05d}")
    assert framing_error(StreamFramer(), bigger).status == 513


def test_small_buffer_cap() -> None:
    framer = StreamFramer(max_buffer=len(F4_ACK))
    framer.feed(F4_ACK)
    assert drain(framer) == [F4_ACK]
    assert framing_error(StreamFramer(max_buffer=len(F4_ACK) - 1), F4_ACK).status == 513


@pytest.mark.parametrize("value", ["", "-999", "five", "1.0", "0x10", "5 5"])
def test_malformed_content_length_fails_the_stream(value: str) -> None:
    # RFC 4475 s3.1.2.3: over TCP the framing error is not recoverable.
    err = framing_error(StreamFramer(), options(f"Content-Length: {value}", body="x"))
    assert err.status == 400


def test_missing_content_length_fails_the_stream() -> None:
    # RFC 3261 s18.3: Content-Length MUST be used with stream transports.
    err = framing_error(StreamFramer(), options(body="x"))
    assert err.status == 400 and "Content-Length" in err.detail


def test_several_complete_messages_larger_than_the_cap_in_one_chunk() -> None:
    message = options("Content-Length: 30000", body="b" * 30000)
    chunk = message * 3
    assert len(message) < MAX_MESSAGE < len(chunk)
    framer = StreamFramer()
    framer.feed(chunk)
    assert drain(framer) == [message] * 3


# -- fuzz ----------------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes, int, int]:
    """Whole messages with a ping or a pong (or nothing) before each and after the last: the
    messages, the stream, the pings in it, and what stays buffered (a final lone CRLF waits to
    learn whether it starts a ping)."""
    messages = draw(st.lists(st.sampled_from([*CALL_FLOW, WSINV, MPART01]), max_size=5))
    stream = b""
    pings = 0
    separator = b""
    for message in [*messages, b""]:
        separator = draw(st.sampled_from([b"", PONG, PING]))
        pings += separator == PING
        stream += separator + message
    return messages, stream, pings, len(separator) if separator == PONG else 0


@FUZZ
@given(streams(), st.lists(st.integers(1, 300), max_size=40))
def test_any_chunking_yields_the_same_messages(
    case: tuple[list[bytes], bytes, int, int], sizes: list[int]
) -> None:
    messages, stream, pings, left = case
    framer = StreamFramer()
    out: list[bytes] = []
    offset = 0
    for size in [*sizes, len(stream)]:
        framer.feed(stream[offset : offset + size])
        offset += size
        out += drain(framer)
    assert out == messages
    assert framer.keepalives == pings
    assert framer.buffered == left


def crash_free(data: bytes) -> bool:
    text = data.decode("utf-8", "surrogateescape")
    return not any(c.isdigit() and not c.isdecimal() for c in text)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from([*CALL_FLOW, PING, PONG, b"Content-Length: 3\r\n", b"l: 99\r\n"]),
            st.binary(max_size=40),
        ),
        max_size=8,
    ),
    st.integers(1, 64),
)
def test_framer_only_frames_or_refuses(pieces: list[bytes], step: int) -> None:
    data = b"".join(pieces)
    assume(crash_free(data))
    framer = StreamFramer()
    try:
        for offset in range(0, len(data), step):
            framer.feed(data[offset : offset + step])
            for message in drain(framer):
                try:
                    parse_message(message, stream=True)
                except SipProtocolError as err:
                    assert err.status in (400, 413, 505, 513)
    except SipProtocolError as err:
        assert err.status in (400, 513)
