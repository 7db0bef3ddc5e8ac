"""The UAS core's stateless checks and the transaction layer's dispatch (RFC 3261 s8.2, s9.2,
s17, RFC 3581), driven in memory: bytes in with `receive(data, peer, now)`, bytes out of
`outgoing()`, what the application sees out of `next_event()`. One rule a test."""

from __future__ import annotations

import pytest

from sipbridge.sip.endpoint import (
    AckReceived,
    CancelReceived,
    Peer,
    RequestFailed,
    RequestReceived,
    RequestTimedOut,
    ResponseForUs,
    SipEndpoint,
)
from sipbridge.sip.message import Request, Response, make_response, parse_message

PHONE = Peer("udp", "192.0.2.10", 5060)
CARRIER = Peer("tcp", "192.0.2.20", 5060, connection=7)


def message(
    method: str = "OPTIONS",
    *extra: str,
    branch: str = "z9hG4bK776asdhds",
    via: str = "SIP/2.0/UDP 192.0.2.10:5060",
    uri: str = "sip:bob@198.51.100.1",
    cseq: str | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    """A request from PHONE, RFC 3261 s24.2 style; `drop` leaves headers out."""
    headers = {
        "Via": f"{via};branch={branch}",
        "Max-Forwards": "70",
        "To": "Bob <sip:bob@biloxi.com>",
        "From": "Alice <sip:alice@atlanta.com>;tag=1928301774",
        "Call-ID": "a84b4c76e66710@pc33.atlanta.com",
        "CSeq": cseq or f"314159 {method}",
        "Contact": "<sip:alice@192.0.2.10>",
    }
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name not in drop]
    lines += [*extra, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answers(endpoint: SipEndpoint) -> list[Response]:
    out = []
    for data, _peer in endpoint.outgoing():
        parsed = parse_message(data)
        assert isinstance(parsed, Response)
        out.append(parsed)
    return out


def refused(data: bytes, peer: Peer = PHONE) -> Response:
    """The one answer of a fresh endpoint to `data`; the application never sees the request."""
    endpoint = SipEndpoint()
    endpoint.receive(data, peer, 0.0)
    assert endpoint.next_event() is None
    (answer,) = answers(endpoint)
    return answer


# -- what the core refuses (s8.2.1-s8.2.3, s16.3) ---------------------------------------------


@pytest.mark.parametrize("header", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_a_request_without_a_core_header_is_not_passed_on(header: str) -> None:
    """s8.1.1: To, From, CSeq, Call-ID and Via are mandatory: a request without one is
    answered 400 (to the address it came from, when there is no Via to follow) and never
    reaches the application. The phrase is the fixed one: details are counted, never echoed."""
    reply = refused(message(drop=(header,)))
    assert (reply.status, reply.reason) == (400, "Bad Request")


def test_a_cseq_method_other_than_the_request_method_is_400() -> None:
    """s8.1.1.5: the CSeq method MUST match the request method."""
    reply = refused(message("OPTIONS", cseq="1 INVITE"))
    assert (reply.status, reply.reason) == (400, "Bad Request")


@pytest.mark.parametrize(("value", "status"), [("0", 483), ("abc", 400), ("1000", 400)])
def test_max_forwards_zero_is_483_and_garbage_400(value: str, status: int) -> None:
    """s16.3 step 3 / s8.2 (a UAS is an endpoint, but loops still end): Max-Forwards 0 is 483
    Too Many Hops; Max-Forwards = 1*DIGIT (at most 255, three digits)."""
    data = message("INFO").replace(b"Max-Forwards: 70", f"Max-Forwards: {value}".encode())
    assert refused(data).status == status


def test_options_with_max_forwards_zero_is_still_answered_by_the_application() -> None:
    """s11 / s16.3: OPTIONS with Max-Forwards 0 is for the element that receives it."""
    endpoint = SipEndpoint()
    endpoint.receive(message().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), PHONE, 0.0)
    assert isinstance(endpoint.next_event(), RequestReceived)


def test_an_unknown_method_is_405_with_allow() -> None:
    """s8.2.1: a method we do not support gets 405 with an Allow header listing ours."""
    reply = refused(message("SUBSCRIBE"))
    assert reply.status == 405
    assert "INVITE" in (reply.headers.get("Allow") or "")


def test_an_unsupported_uri_scheme_is_416() -> None:
    """s8.2.2.1: a Request-URI scheme we do not understand gets 416; tel: is understood."""
    assert refused(message(uri="mailto:bob@biloxi.com")).status == 416
    endpoint = SipEndpoint()
    endpoint.receive(message(uri="tel:+15105550100"), PHONE, 0.0)
    assert isinstance(endpoint.next_event(), RequestReceived)


def test_a_required_extension_we_lack_is_420_with_unsupported() -> None:
    """s8.2.2.3: Require with an option tag we do not support gets 420 listing it in
    Unsupported; the ones we support pass."""
    reply = refused(message("OPTIONS", "Require: timer, 100rel"))
    assert reply.status == 420 and reply.headers.get("Unsupported") == "100rel"
    endpoint = SipEndpoint()
    endpoint.receive(message("OPTIONS", "Require: timer"), PHONE, 0.0)
    assert isinstance(endpoint.next_event(), RequestReceived)


def test_a_merged_request_is_482() -> None:
    """s8.2.2.2: the same Call-ID, From tag and CSeq on a new branch, outside a dialog, is a
    fork that came back: 482 Loop Detected."""
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    assert isinstance(endpoint.next_event(), RequestReceived)
    endpoint.receive(message("INVITE", branch="z9hG4bKother"), PHONE, 0.0)
    assert [r.status for r in answers(endpoint)] == [482]  # 100 Trying is the application's
    assert endpoint.next_event() is None


def test_an_unparseable_request_with_core_headers_gets_400() -> None:
    """RFC 4475 s3.1.2 / s8.2: a request that fails to parse but whose core headers survive is
    answered 400; a broken response is never answered."""
    data = message("OPTIONS", "Expires: not-a-number", "Content-Type").replace(
        b"Content-Length: 0", b"Content-Length: zero"
    )
    reply = refused(data)
    assert reply.status == 400 and reply.call_id == "a84b4c76e66710@pc33.atlanta.com"
    endpoint = SipEndpoint()
    endpoint.receive(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", PHONE, 0.0)
    assert endpoint.outgoing() == [] and endpoint.stats["malformed"] == 1


def test_a_refusal_to_repeated_core_headers_is_a_message_we_can_parse() -> None:
    """Found by fuzz/targets.py `endpoint`: a request with a version we do not speak (505) and
    its 128 header lines all From, To, Call-ID and CSeq was answered with every one of them
    echoed plus Server and Content-Length - 130 headers, past MAX_HEADERS, a response no parser
    of ours would take. Single-valued headers are echoed once (message.py make_response)."""
    repeated = [
        f"{name}: {value}"
        for _ in range(32)
        for name, value in [
            ("From", "<sip:alice@atlanta.com>;tag=1"),
            ("To", "<sip:bob@biloxi.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 OPTIONS"),
        ]
    ]
    lines = ["OPTIONS sip:bob@198.51.100.1 SIP/3.0", "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1"]
    data = ("\r\n".join(lines + repeated[:127]) + "\r\n\r\n").encode()
    reply = refused(data)  # parses what was sent
    assert reply.status == 505
    assert [name for name, _ in reply.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Server",
        "Content-Length",
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01garbage\r\n\r\n",  # no request line to answer
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n",  # no core headers to answer to
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\nContent-Length: x\r\n\r\n",  # and a bad Via
    ],
)
def test_unanswerable_garbage_is_dropped_and_counted(data: bytes) -> None:
    """s8.2 / RFC 4475: without a request line and the core headers there is nobody to answer."""
    endpoint = SipEndpoint()
    endpoint.receive(data, PHONE, 0.0)
    assert endpoint.outgoing() == [] and endpoint.next_event() is None
    assert endpoint.stats["malformed"] == 1


def test_an_ack_is_never_answered_even_when_malformed() -> None:
    """s17.2.3 / s8.2: an ACK gets no response, whatever is wrong with it."""
    endpoint = SipEndpoint()
    endpoint.receive(message("ACK", drop=("CSeq",)), PHONE, 0.0)
    assert endpoint.outgoing() == []


# -- RFC 3581 and responses --------------------------------------------------------------------


def test_received_and_rport_are_filled_in_for_the_response() -> None:
    """RFC 3581 s4 and RFC 3261 s18.2.1: the top Via gets received= when the source address
    differs from its sent-by, and rport= the source port when the client asked with `rport`."""
    endpoint = SipEndpoint()
    natted = Peer("udp", "203.0.113.5", 61000)
    endpoint.receive(message(via="SIP/2.0/UDP 192.0.2.10:5060;rport"), natted, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    via = event.request.top_via
    assert (via.received, via.rport) == ("203.0.113.5", "61000")
    endpoint.respond(event.transaction, endpoint.options_response(event.request), 0.0)
    ((data, peer),) = endpoint.outgoing()
    assert peer == natted and b"received=203.0.113.5" in data and b"rport=61000" in data


def test_options_lists_what_we_allow_accept_and_support() -> None:
    """s11.2: the 200 to OPTIONS carries Allow, Accept and Supported."""
    endpoint = SipEndpoint()
    endpoint.receive(message(), PHONE, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    response = endpoint.options_response(event.request)
    assert response.status == 200 and response.to.tag
    for name in ("Allow", "Accept", "Supported"):
        assert response.headers.get(name), name
    endpoint.respond(event.transaction, response, 0.0)
    (sent,) = answers(endpoint)
    assert sent.headers.get("Server") == "sipbridge"


# -- CANCEL (s9.2) and ACK -------------------------------------------------------------------


def test_cancel_of_a_pending_invite_is_200_and_reaches_the_application() -> None:
    """s9.2: a CANCEL matching a pending INVITE (same branch) is answered 200 by the core and
    the application is told, to answer the INVITE 487."""
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    invite = endpoint.next_event()
    assert isinstance(invite, RequestReceived)
    endpoint.receive(message("CANCEL", cseq="314159 CANCEL"), PHONE, 0.1)
    cancelled = endpoint.next_event()
    assert isinstance(cancelled, CancelReceived) and cancelled.invite is invite.transaction
    assert [r.status for r in answers(endpoint)] == [200]  # to the CANCEL


def test_cancel_after_the_final_answer_is_200_and_changes_nothing() -> None:
    """s9.2: a CANCEL for an INVITE already answered finally gets 200 (with the INVITE's To
    tag) and has no effect."""
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    invite = endpoint.next_event()
    assert isinstance(invite, RequestReceived)
    endpoint.respond(invite.transaction, make_response(invite.request, 486, to_tag="busy1"), 0.0)
    endpoint.outgoing()
    endpoint.receive(message("CANCEL", cseq="314159 CANCEL"), PHONE, 0.1)
    assert endpoint.next_event() is None
    (reply,) = answers(endpoint)
    assert reply.status == 200 and reply.to.tag == "busy1"


def test_cancel_matching_nothing_is_481() -> None:
    """s9.2: a CANCEL for which no transaction exists gets 481."""
    assert refused(message("CANCEL", cseq="314159 CANCEL")).status == 481


def test_an_ack_for_a_2xx_goes_to_the_application() -> None:
    """s13.3.1.4 / s17.2.1: the ACK of a 2xx is not part of the INVITE transaction; it goes to
    the dialog (the application), whether on a new branch or, as RFC 6026 s8.9 allows for old
    clients, on the INVITE's."""
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    invite = endpoint.next_event()
    assert isinstance(invite, RequestReceived)
    ok = make_response(invite.request, 200, to_tag="ok1")
    endpoint.respond(invite.transaction, ok, 0.0)
    endpoint.receive(message("ACK", cseq="314159 ACK"), PHONE, 0.1)  # the INVITE's branch
    assert isinstance(endpoint.next_event(), AckReceived)
    endpoint.receive(message("ACK", cseq="314159 ACK", branch="z9hG4bKack2"), PHONE, 0.1)
    assert isinstance(endpoint.next_event(), AckReceived)


def test_a_retransmitted_request_is_absorbed_by_its_transaction() -> None:
    """s17.2.3: a retransmission matches the server transaction; the application sees the
    request once, the peer gets the last response again."""
    endpoint = SipEndpoint()
    endpoint.receive(message(), PHONE, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    endpoint.respond(event.transaction, endpoint.options_response(event.request), 0.0)
    endpoint.outgoing()
    endpoint.receive(message(), PHONE, 0.5)
    assert endpoint.next_event() is None
    assert [r.status for r in answers(endpoint)] == [200]
    assert endpoint.stats["retransmissions"] == 1


def test_a_completed_non_invite_keeps_its_final_as_bytes_and_resends_them() -> None:
    """s17.2.2: a retransmitted non-INVITE request gets the final response again, byte for byte,
    until Timer J (64*T1 on UDP). The transaction keeps those bytes, not the response's
    objects (issue 18), and still reads back the response it sent."""
    endpoint = SipEndpoint()
    endpoint.receive(message("OPTIONS", "Timestamp: 54"), PHONE, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    transaction = event.transaction
    ok = endpoint.options_response(event.request)
    endpoint.respond(transaction, ok, 0.0)
    ((first, to),) = endpoint.outgoing()
    assert to == PHONE
    assert transaction.responded and not transaction.last_sent_is(ok)
    kept = transaction.last_response
    assert kept is not None and kept.status == 200 and kept.to.tag == ok.to.tag
    for when in (0.5, 1.5, 31.9):
        endpoint.receive(message("OPTIONS", "Timestamp: 54"), PHONE, when)
        assert endpoint.next_event() is None
        assert endpoint.outgoing() == [(first, PHONE)]
    assert endpoint.get_timer() == 32.0  # Timer J
    endpoint.handle_timer(32.0)
    assert not endpoint.server_transactions
    endpoint.receive(message("OPTIONS", "Timestamp: 54"), PHONE, 32.1)  # a new request now
    assert isinstance(endpoint.next_event(), RequestReceived)


def test_an_invite_keeps_its_final_as_bytes_and_its_status_and_tag_still_answer() -> None:
    """An INVITE's final, once sent, is kept as its bytes (issue 18), as a non-INVITE's is: a
    retransmitted INVITE gets them again byte for byte (s17.2.1), the call's end reads the
    status and reason without a parse, and a CANCEL after it gets 200 with the INVITE's To tag
    (s9.2), read back from the bytes."""
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    transaction = event.transaction
    assert transaction.last_status() == (0, "")
    busy = make_response(event.request, 486, "Busy Here", to_tag="busy1")
    endpoint.respond(transaction, busy, 0.0)
    ((first, _),) = endpoint.outgoing()
    assert not transaction.last_sent_is(busy)  # not the object any longer
    assert transaction.last_status() == (486, "Busy Here")
    kept = transaction.last_response
    assert kept is not None and kept.status == 486 and kept.to.tag == "busy1"
    endpoint.receive(message("INVITE"), PHONE, 0.5)  # retransmitted before the ACK
    assert endpoint.outgoing() == [(first, PHONE)]
    endpoint.receive(message("CANCEL"), PHONE, 0.6)
    ((cancelled, _),) = endpoint.outgoing()
    assert cancelled.startswith(b"SIP/2.0 200 ") and b";tag=busy1" in cancelled
    assert endpoint.next_event() is None  # answered already: nothing for the TU


# -- our own requests ----------------------------------------------------------------------------


def outgoing_request(endpoint: SipEndpoint, peer: Peer) -> Request:
    request = parse_message(message("OPTIONS", branch="z9hG4bKours"))
    assert isinstance(request, Request)
    endpoint.send_request(request, peer, 0.0)
    ((data, to),) = endpoint.outgoing()
    assert to == peer and b"User-Agent: sipbridge" in data
    return request


def test_a_response_to_our_request_reaches_the_application_and_a_stray_one_does_not() -> None:
    """s17.1.3 / RFC 6026 s8.9: a response is matched to its client transaction by branch and
    CSeq method; one that matches none is discarded."""
    endpoint = SipEndpoint()
    request = outgoing_request(endpoint, PHONE)
    endpoint.receive(make_response(request, 200, to_tag="x").serialize(), PHONE, 0.1)
    event = endpoint.next_event()
    assert isinstance(event, ResponseForUs) and event.response.status == 200
    stray = make_response(request, 200, to_tag="x").serialize().replace(b"ours", b"gone")
    endpoint.receive(stray, PHONE, 0.2)
    assert endpoint.next_event() is None and endpoint.stats["stray_responses"] == 1
    endpoint.receive(b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", PHONE, 0.3)
    assert endpoint.next_event() is None and endpoint.stats["malformed"] == 1


def test_our_request_times_out_at_64_t1_after_retransmissions() -> None:
    """s17.1.2.2: a non-INVITE over UDP is resent from T1 (Timer E) and fails at 64*T1 (Timer
    F); the endpoint's one timer is the earliest deadline of its transactions."""
    endpoint = SipEndpoint()
    outgoing_request(endpoint, PHONE)
    resent = 0
    for _ in range(100):  # bounded: Timer F comes well before
        deadline = endpoint.get_timer()
        assert deadline is not None
        endpoint.handle_timer(deadline)
        resent += len(endpoint.outgoing())
        event = endpoint.next_event()
        if event is not None:
            assert isinstance(event, RequestTimedOut)
            assert deadline == pytest.approx(32.0)
            break
    else:
        raise AssertionError("Timer F never fired")
    assert resent >= 9


def test_a_lost_connection_fails_its_transactions_only() -> None:
    """s17.1.4 / s18.4: a transport error fails the transactions using that connection."""
    endpoint = SipEndpoint()
    outgoing_request(endpoint, CARRIER)
    endpoint.transport_error(PHONE, 0.1)
    assert endpoint.next_event() is None
    endpoint.transport_error(CARRIER, 0.1)
    assert isinstance(endpoint.next_event(), RequestFailed)


def answered_options(endpoint: SipEndpoint, n: int, now: float) -> None:
    """OPTIONS number `n` (a branch and Call-ID of its own) received at `now` and answered 200
    at once: a transaction that lingers from then on."""
    endpoint.receive(message("OPTIONS", branch=f"z9hG4bK-{n}", cseq=f"{n} OPTIONS"), PHONE, now)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived), event
    endpoint.respond(event.transaction, endpoint.options_response(event.request), now)


def test_a_crowded_endpoint_lingers_t4_not_64_t1() -> None:
    """Past `crowded_transactions` held, a new server transaction lingers T4 (5 s) after its
    final response, not 64*T1: it still absorbs a retransmission meanwhile."""
    endpoint = SipEndpoint()
    endpoint.crowded_transactions = 2
    for n in range(3):
        answered_options(endpoint, n, 0.0)
    endpoint.outgoing()
    assert endpoint.stats["short_lingers"] == 1
    endpoint.receive(message("OPTIONS", branch="z9hG4bK-2", cseq="2 OPTIONS"), PHONE, 4.9)
    assert endpoint.next_event() is None
    assert [r.status for r in answers(endpoint)] == [200]
    assert endpoint.get_timer() == 5.0  # Timer J at T4
    endpoint.handle_timer(5.0)
    assert len(endpoint.server_transactions) == 2  # the first two wait out their 32 s
    assert endpoint.get_timer() == 32.0


def test_a_crowded_endpoint_lingers_an_accepted_invite_t4() -> None:
    """Timer L (RFC 6026) of an INVITE made while crowded is T4 too."""
    endpoint = SipEndpoint()
    endpoint.crowded_transactions = 0
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    endpoint.respond(event.transaction, make_response(event.request, 200, to_tag="ok1"), 1.0)
    assert endpoint.get_timer() == 6.0
    endpoint.handle_timer(6.0)
    assert not endpoint.server_transactions


def test_a_steady_rate_past_the_32_s_lingers_is_not_refused() -> None:
    """Issue 18: at 32 s lingers a steady rate of new transactions fills `max_transactions` in
    max/rate seconds and every request past it is refused 503 (1,600 calls/s of two
    transactions each filled 100,000). Lingering T4 past the crowded mark, the same rate holds
    for a minute with the table below the cap."""
    endpoint = SipEndpoint()
    endpoint.max_transactions = 100
    endpoint.crowded_transactions = 25
    for n in range(600):  # 60 s, 10 new transactions a second
        now = n / 10
        endpoint.handle_timer(now)
        answered_options(endpoint, n, now)
        endpoint.outgoing()
        assert len(endpoint.server_transactions) <= 25 + 10 * 5 + 1
    assert endpoint.stats["refused_503"] == 0
    assert endpoint.stats["short_lingers"] == 600 - 25
