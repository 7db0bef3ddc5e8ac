"""The 100 Trying only when it is needed (RFC 3261 s17.2.1): "the server transaction MUST
generate a 100 (Trying) response unless it knows that the TU will generate a provisional or
final response within 200 ms". The endpoint holds a transaction's 100 until its output is next
drained (`outgoing()`); a response the transaction sends before that supersedes it, and the 100
never goes out. Driven in memory: bytes in, bytes out, fake time."""

from __future__ import annotations

from sipbridge.sip.endpoint import Peer, RequestReceived, SipEndpoint
from sipbridge.sip.message import Response, make_response, parse_message
from sipbridge.sip.ua.agent import UserAgent
from sipbridge.sip.ua.invite import InviteReceived, InviteSession
from tests.sip.test_endpoint import PHONE, message

CARRIER = Peer("tcp", "192.0.2.20", 5060, connection=7)


def sent(endpoint: SipEndpoint) -> list[tuple[int, Peer]]:
    out = []
    for data, peer in endpoint.outgoing():
        parsed = parse_message(data, stream=peer.reliable)
        assert isinstance(parsed, Response)
        out.append((parsed.status, peer))
    return out


def invite(endpoint: SipEndpoint, peer: Peer = PHONE, now: float = 0.0) -> RequestReceived:
    endpoint.receive(message("INVITE"), peer, now)
    event = endpoint.next_event()
    assert isinstance(event, RequestReceived)
    return event


def test_a_100_not_superseded_goes_out_at_the_next_drain() -> None:
    endpoint = SipEndpoint()
    event = invite(endpoint)
    endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    assert sent(endpoint) == [(100, PHONE)]
    assert sent(endpoint) == []  # once
    assert endpoint.stats["sent"] == 1 and endpoint.stats["trying_superseded"] == 0


def test_a_response_before_the_drain_supersedes_the_100() -> None:
    endpoint = SipEndpoint()
    event = invite(endpoint)
    endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    endpoint.respond(event.transaction, make_response(event.request, 180, to_tag="b1"), 0.0)
    endpoint.respond(event.transaction, make_response(event.request, 200, to_tag="b1"), 0.0)
    assert sent(endpoint) == [(180, PHONE), (200, PHONE)]
    assert endpoint.stats["trying_superseded"] == 1
    assert endpoint.stats["sent"] == 2


def test_a_final_failure_supersedes_the_100_too_over_tcp() -> None:
    endpoint = SipEndpoint()
    event = invite(endpoint, CARRIER)
    endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    endpoint.respond(event.transaction, make_response(event.request, 486, to_tag="b1"), 0.0)
    assert sent(endpoint) == [(486, CARRIER)]


def test_a_retransmitted_invite_gets_the_100_again_once_it_went_out() -> None:
    """s17.2.1: a retransmitted INVITE in Proceeding gets the last provisional again."""
    endpoint = SipEndpoint()
    event = invite(endpoint)
    endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    assert sent(endpoint) == [(100, PHONE)]
    endpoint.receive(message("INVITE"), PHONE, 0.5)
    assert endpoint.next_event() is None  # absorbed by its transaction
    assert sent(endpoint) == [(100, PHONE)]
    # two retransmissions received before one drain: one 100 for them
    endpoint.receive(message("INVITE"), PHONE, 1.0)
    endpoint.receive(message("INVITE"), PHONE, 1.5)
    assert sent(endpoint) == [(100, PHONE)]


def test_the_100s_of_several_transactions_are_held_apart() -> None:
    endpoint = SipEndpoint()
    endpoint.receive(message("INVITE", branch="z9hG4bK-one"), PHONE, 0.0)
    endpoint.receive(message("INVITE", branch="z9hG4bK-two", cseq="2 INVITE"), PHONE, 0.0)
    first, second = endpoint.next_event(), endpoint.next_event()
    assert isinstance(first, RequestReceived) and isinstance(second, RequestReceived)
    for event in (first, second):
        endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    endpoint.respond(second.transaction, make_response(second.request, 180, to_tag="b2"), 0.0)
    assert sent(endpoint) == [(100, PHONE), (180, PHONE)]  # the first's 100, the second's 180


def test_other_output_keeps_its_order_behind_the_held_100() -> None:
    endpoint = SipEndpoint()
    event = invite(endpoint)
    endpoint.respond(event.transaction, make_response(event.request, 100), 0.0)
    endpoint.receive(message("OPTIONS", branch="z9hG4bK-opt"), PHONE, 0.0)
    options = endpoint.next_event()
    assert isinstance(options, RequestReceived)
    endpoint.respond(options.transaction, make_response(options.request, 200, to_tag="o"), 0.0)
    endpoint.respond(options.transaction, make_response(options.request, 200, to_tag="o"), 0.0)
    assert sent(endpoint) == [(100, PHONE), (200, PHONE)]


def test_send_trying_makes_the_100_only_when_nothing_was_sent_and_it_is_resent_after() -> None:
    endpoint = SipEndpoint()
    event = invite(endpoint)
    endpoint.send_trying(event.transaction, 0.0)
    endpoint.send_trying(event.transaction, 0.0)  # (asked twice: one 100)
    assert sent(endpoint) == [(100, PHONE)]
    assert event.transaction.last_response is not None
    assert event.transaction.last_response.status == 100
    endpoint.receive(message("INVITE"), PHONE, 0.5)  # retransmitted: the 100 again
    assert sent(endpoint) == [(100, PHONE)]
    other = SipEndpoint()
    event = invite(other)
    other.send_trying(event.transaction, 0.0)
    other.respond(event.transaction, make_response(event.request, 486, to_tag="b1"), 0.0)
    assert sent(other) == [(486, PHONE)]
    assert other.stats["trying_superseded"] == 1


# -- through the user agent: the 100 the agent sends for every new INVITE ------------------------


def agent_invite() -> tuple[SipEndpoint, UserAgent, InviteSession]:
    endpoint = SipEndpoint()
    agent = UserAgent(endpoint, "198.51.100.1", 5060)
    endpoint.receive(message("INVITE"), PHONE, 0.0)
    event = endpoint.next_event()
    assert event is not None
    agent.handle_event(event, 0.0)
    received = agent.next_event()
    assert isinstance(received, InviteReceived)
    return endpoint, agent, received.session


def test_an_invite_left_unanswered_by_its_handler_gets_the_100() -> None:
    endpoint, _agent, session = agent_invite()
    assert sent(endpoint) == [(100, PHONE)]
    session.ring(0.1)
    assert sent(endpoint) == [(180, PHONE)]


def test_an_invite_answered_at_once_gets_no_100() -> None:
    endpoint, _agent, session = agent_invite()
    session.ring(0.0)
    session.answer(0.0, b"v=0\r\n")
    assert sent(endpoint) == [(180, PHONE), (200, PHONE)]
    assert endpoint.stats["trying_superseded"] == 1


def test_an_invite_rejected_at_once_gets_no_100() -> None:
    endpoint, _agent, session = agent_invite()
    session.reject(0.0, 486)
    assert sent(endpoint) == [(486, PHONE)]
