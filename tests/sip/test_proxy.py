"""An INVITE proxied statefully to another node (`sip/ua/proxy.py`, docs/cluster.md s4), fed
bytes and time by hand: our Via on top and Max-Forwards one less on the way there; responses
back with our Via removed, the owner's To tag kept, 100 not relayed; a CANCEL from the caller
answered here and sent on once the owner has rung; a 2xx and its retransmissions relayed; no
answer at all ends in 408 to the caller, and so does an owner that rang and went silent (Timer
C, after CANCEL to it); an owner known to be gone, or out of reach, 503 with Retry-After at
once; a caller's ACK and BYE sent here instead of to the owner's Contact reach the owner, and
the owner's BYE sent here reaches the caller (an owner without the caller's address). On the
owner's side, its own requests of a proxied call (BYE, refresh) go straight to the caller the
proxying node vouched for (`caller_target`), while its answers follow the Via back through it."""

from __future__ import annotations

from sipbridge.sip.endpoint import Peer, SipEndpoint
from sipbridge.sip.headers import Via
from sipbridge.sip.message import Request, Response, make_response, parse_message
from sipbridge.sip.transaction import ServerTransaction
from sipbridge.sip.ua.agent import UserAgent
from sipbridge.sip.ua.invite import InviteReceived
from sipbridge.sip.ua.proxy import (
    DEFAULT_MAX_FORWARDS,
    RETRY_AFTER_S,
    ProxiedCalls,
    ProxiedInvite,
    caller_target,
    cancel_for,
    forwarded_invite,
    upstream_response,
)

CALLER = Peer("udp", "127.0.0.1", 5060)
OWNER = Peer("udp", "127.0.0.2", 5080)
INVITE = (
    b"INVITE sip:+15550100@127.0.0.3:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcaller1;rport\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:+15550100@127.0.0.3>\r\nCall-ID: px1\r\n"
    b"CSeq: 7 INVITE\r\nContact: <sip:alice@127.0.0.1:5060>\r\nMax-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
)
CANCEL = (
    b"CANCEL sip:+15550100@127.0.0.3:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcaller1;rport\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:+15550100@127.0.0.3>\r\nCall-ID: px1\r\n"
    b"CSeq: 7 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


class Node:
    def __init__(self) -> None:
        self.endpoint = SipEndpoint()
        self.ua = UserAgent(self.endpoint, "127.0.0.3", 5070)
        self.now = 100.0

    def feed(self, data: bytes, peer: Peer) -> None:
        self.endpoint.receive(data, peer, self.now)
        while (event := self.endpoint.next_event()) is not None:
            self.ua.handle_event(event, self.now)

    def sent(self) -> list[tuple[Request | Response, Peer]]:
        return [(parse_message(data), peer) for data, peer in self.endpoint.outgoing()]

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.endpoint.handle_timer(self.now)
        self.ua.handle_timer(self.now)
        while (event := self.endpoint.next_event()) is not None:
            self.ua.handle_event(event, self.now)

    def proxied_invite(self) -> Request:
        """An INVITE received (100 sent) and proxied to OWNER: what went there."""
        self.feed(INVITE, CALLER)
        event = self.ua.next_event()
        assert isinstance(event, InviteReceived)
        assert [(m.status, p) for m, p in self.sent() if isinstance(m, Response)] == [(100, CALLER)]
        forwarded = forwarded_invite(
            event.session.request, self.ua.via(OWNER), [("X-Sipbridge-Proxied", "signed")]
        )
        self.ua.proxy(event.session, forwarded, OWNER, self.now)
        assert self.ua.pending == {}  # the session is forgotten
        ((out, peer),) = self.sent()
        assert isinstance(out, Request) and peer == OWNER
        return out


def test_forwarded_invite_and_cancel_built_as_the_rfc_says() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    node = Node()
    out = forwarded_invite(request, node.ua.via(OWNER), [("X-A", "1")])
    vias = out.vias
    assert [v.host for v in vias] == ["127.0.0.3", "127.0.0.1"]
    assert vias[0].is_rfc3261 and vias[0].branch != vias[1].branch
    assert out.headers.get("Max-Forwards") == "69" and out.headers.get("X-A") == "1"
    assert out.body == request.body and str(out.uri) == str(request.uri)
    assert request.headers.get("Max-Forwards") == "70" and len(request.vias) == 1  # a copy
    request.headers.remove("Max-Forwards")
    assert forwarded_invite(request, vias[0]).headers.get("Max-Forwards") == str(
        DEFAULT_MAX_FORWARDS
    )
    cancel = cancel_for(out)
    assert cancel.method == "CANCEL" and cancel.vias == [vias[0]]
    assert cancel.cseq.seq == 7 and cancel.cseq.method == "CANCEL"
    assert cancel.call_id == "px1"


def test_ringing_relayed_then_cancelled_by_the_caller() -> None:
    node = Node()
    out = node.proxied_invite()
    assert len(out.vias) == 2 and out.headers.get("X-Sipbridge-Proxied") == "signed"
    assert out.headers.get("Max-Forwards") == "69"

    # The caller cancels before the owner said anything: answered here, held until it rings.
    node.feed(CANCEL, CALLER)
    assert [(m.status, p) for m, p in node.sent() if isinstance(m, Response)] == [(200, CALLER)]
    node.feed(make_response(out, 100).serialize(), OWNER)
    sent = node.sent()
    assert [(m.method, p) for m, p in sent if isinstance(m, Request)] == [("CANCEL", OWNER)]
    assert not [m for m, _ in sent if isinstance(m, Response)]  # 100 is hop by hop
    cancel = next(m for m, _ in sent if isinstance(m, Request))
    assert cancel.top_via.branch == out.top_via.branch

    ringing = make_response(out, 180, to_tag="owner1")
    node.feed(ringing.serialize(), OWNER)
    ((relayed, peer),) = node.sent()
    assert isinstance(relayed, Response) and relayed.status == 180 and peer == CALLER
    assert [v.branch for v in relayed.vias] == ["z9hG4bKcaller1"]
    assert relayed.to.tag == "owner1"

    node.feed(make_response(cancel, 200).serialize(), OWNER)
    node.feed(make_response(out, 487, to_tag="owner1").serialize(), OWNER)
    sent = node.sent()
    assert [(m.method, p) for m, p in sent if isinstance(m, Request)] == [("ACK", OWNER)]
    assert [(m.status, p) for m, p in sent if isinstance(m, Response)] == [(487, CALLER)]
    # the caller's ACK of the 487 ends at our server transaction
    ack = (
        INVITE.split(b"\r\n\r\n")[0]
        .replace(b"INVITE sip", b"ACK sip")
        .replace(b"7 INVITE", b"7 ACK")
    )
    node.feed(ack + b"\r\n\r\n", CALLER)
    assert node.sent() == []


def test_answer_and_its_retransmissions_relayed() -> None:
    node = Node()
    out = node.proxied_invite()
    ok = make_response(out, 200, to_tag="owner2")
    ok.headers.add("Contact", "<sip:127.0.0.2:5080>")
    for _ in range(2):  # the owner's 2xx and a retransmission of it
        node.feed(ok.serialize(), OWNER)
        ((relayed, peer),) = node.sent()
        assert isinstance(relayed, Response) and relayed.status == 200 and peer == CALLER
        assert relayed.headers.get("Contact") == "<sip:127.0.0.2:5080>"
        assert len(relayed.vias) == 1
    assert len(node.ua.proxies) == 2  # kept for retransmissions...
    assert node.ua.get_timer() is not None
    node.tick(40)
    node.sent()
    assert node.ua.proxies == {}  # ... not for ever


def test_an_owner_that_never_answers_ends_in_408() -> None:
    node = Node()
    node.proxied_invite()
    for _ in range(10):
        node.tick(4)
    responses = [(m.status, p) for m, p in node.sent() if isinstance(m, Response)]
    assert responses and set(responses) == {(408, CALLER)}  # (retransmitted until ACKed)


def test_an_owner_that_rang_and_went_silent_is_cancelled_after_timer_c() -> None:
    node = Node()
    out = node.proxied_invite()
    node.feed(make_response(out, 180, to_tag="owner3").serialize(), OWNER)
    node.sent()
    node.tick(170)
    node.feed(make_response(out, 183, to_tag="owner3").serialize(), OWNER)  # restarts Timer C
    node.sent()
    node.tick(170)
    assert not [m for m, _ in node.sent() if isinstance(m, Response)]
    node.tick(11)  # 3 minutes since the 183
    sent = node.sent()
    assert [(m.method, p) for m, p in sent if isinstance(m, Request)] == [("CANCEL", OWNER)]
    assert [(m.status, p) for m, p in sent if isinstance(m, Response)] == [(408, CALLER)]
    assert node.ua.proxies == {}


def test_a_comma_list_of_vias_loses_only_its_first_and_routes_follow_the_cancel() -> None:
    out = parse_message(INVITE)
    assert isinstance(out, Request)
    out.headers.add("Route", "<sip:edge.example;lr>")
    cancel = cancel_for(out)
    assert cancel.headers.get_all("Route") == ["<sip:edge.example;lr>"]
    response = make_response(out, 180)
    response.headers.set(
        "Via", "SIP/2.0/UDP 127.0.0.3:5070;branch=z9hG4bKours, SIP/2.0/UDP 127.0.0.1:5060"
    )
    assert [v.host for v in upstream_response(response).vias] == ["127.0.0.1"]


def test_an_owner_out_of_reach_is_503_and_late_events_change_nothing() -> None:
    node = Node()
    node.proxied_invite()
    (proxied,) = set(node.ua.proxies.values())
    proxied.failed(node.now, timed_out=False)
    proxied.failed(node.now, timed_out=True)  # (a second failure: already answered)
    proxied.cancel(node.now)  # (after the final: nothing to cancel)
    proxied.handle_timer(node.now)  # (no deadline left)
    sent = [(m, p) for m, p in node.sent() if isinstance(m, Response)]
    assert [(m.status, p) for m, p in sent] == [(503, CALLER)]
    assert sent[0][0].headers.get("Retry-After") == str(RETRY_AFTER_S)
    assert proxied.done


def test_an_owner_gone_is_503_with_retry_after_at_once_and_its_late_answer_dropped() -> None:
    node = Node()
    out = node.proxied_invite()
    node.feed(make_response(out, 180, to_tag="owner4").serialize(), OWNER)
    node.sent()
    (proxied,) = set(node.ua.proxies.values())
    node.ua.give_up(proxied, node.now)
    sent = node.sent()
    assert [(m.method, p) for m, p in sent if isinstance(m, Request)] == [("CANCEL", OWNER)]
    ((refusal, peer),) = [(m, p) for m, p in sent if isinstance(m, Response)]
    assert isinstance(refusal, Response) and (refusal.status, peer) == (503, CALLER)
    assert refusal.headers.get("Retry-After") == str(RETRY_AFTER_S)
    assert node.ua.proxies == {}
    ok = make_response(out, 200, to_tag="owner4")
    node.feed(ok.serialize(), OWNER)  # it was not dead after all: too late
    assert not [m for m, _ in node.sent() if isinstance(m, Response) and m.status == 200]


def _in_dialog(method: str, seq: int, to_tag: str) -> bytes:
    """A request of the proxied call (px1) sent by the caller to this node, as sipp's `uac`
    does: to where the INVITE went, not to the owner's Contact."""
    return (
        f"{method} sip:+15550100@127.0.0.3:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcaller{method}{seq}\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:+15550100@127.0.0.3>;tag={to_tag}\r\n"
        f"Call-ID: px1\r\nCSeq: {seq} {method}\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_a_callers_ack_and_bye_sent_here_reach_the_owner() -> None:
    node = Node()
    out = node.proxied_invite()
    ok = make_response(out, 200, to_tag="owner5")
    ok.headers.add("Contact", "<sip:owner@127.0.0.2:5080>")
    node.feed(ok.serialize(), OWNER)
    node.sent()
    assert len(node.ua.proxied_calls) == 1

    node.feed(_in_dialog("ACK", 7, "owner5"), CALLER)
    ((ack, peer),) = node.sent()
    assert isinstance(ack, Request) and ack.method == "ACK" and peer == OWNER
    assert str(ack.uri) == "sip:owner@127.0.0.2:5080"  # the owner's Contact
    assert [v.host for v in ack.vias] == ["127.0.0.3", "127.0.0.1"]
    assert ack.headers.get("Max-Forwards") == "69"

    node.feed(_in_dialog("BYE", 8, "owner5"), CALLER)
    ((bye, peer),) = node.sent()
    assert isinstance(bye, Request) and bye.method == "BYE" and peer == OWNER
    assert str(bye.uri) == "sip:owner@127.0.0.2:5080" and len(bye.vias) == 2
    node.feed(make_response(bye, 200).serialize(), OWNER)
    ((answer, peer),) = node.sent()
    assert isinstance(answer, Response) and (answer.status, peer) == (200, CALLER)
    assert [v.branch for v in answer.vias] == ["z9hG4bKcallerBYE8"]
    assert len(node.ua.proxied_calls) == 0  # the call is over: forgotten
    assert node.endpoint.stats["proxied_stray_bye"] == 1

    node.feed(_in_dialog("BYE", 9, "owner5"), CALLER)  # nothing to send on any more
    ((late, peer),) = node.sent()
    assert isinstance(late, Response) and (late.status, peer) == (481, CALLER)
    node.feed(_in_dialog("ACK", 10, "owner5"), CALLER)
    assert node.sent() == []


def test_the_owners_bye_sent_here_reaches_the_caller() -> None:
    """An owner that does not know the caller's address (a header without its port) sends its
    in-dialog requests where the INVITE came from (this node): its BYE (the room ended) goes on
    to the caller, and the caller's 200 back to the owner."""
    node = Node()
    out = node.proxied_invite()
    ok = make_response(out, 200, to_tag="owner6")
    ok.headers.add("Contact", "<sip:owner@127.0.0.2:5080>")
    node.feed(ok.serialize(), OWNER)
    node.sent()
    bye = (
        b"BYE sip:alice@127.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKownerbye\r\n"
        b"From: <sip:+15550100@127.0.0.3>;tag=owner6\r\nTo: <sip:alice@127.0.0.1>;tag=a1\r\n"
        b"Call-ID: px1\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    node.feed(bye, OWNER)
    ((sent_on, peer),) = node.sent()
    assert isinstance(sent_on, Request) and sent_on.method == "BYE" and peer == CALLER
    assert str(sent_on.uri) == "sip:alice@127.0.0.1:5060"  # (the owner's remote target)
    assert [v.host for v in sent_on.vias] == ["127.0.0.3", "127.0.0.2"]
    node.feed(make_response(sent_on, 200).serialize(), CALLER)
    ((answer, peer),) = node.sent()
    assert isinstance(answer, Response) and (answer.status, peer) == (200, OWNER)
    assert [v.branch for v in answer.vias] == ["z9hG4bKownerbye"]
    assert len(node.ua.proxied_calls) == 0


def _accepted_invite(call_id: str) -> ProxiedInvite:
    invite = parse_message(INVITE.replace(b"px1", call_id.encode()))
    assert isinstance(invite, Request)
    server = ServerTransaction(invite, reliable=False)  # (the caller's; not used here)
    return ProxiedInvite(SipEndpoint(), server, invite, OWNER, CALLER)


def test_proxied_calls_are_bounded_in_number_and_time() -> None:
    ok = make_response(parse_message(INVITE), 200, to_tag="t")  # type: ignore[arg-type]
    ok.headers.add("Contact", "<sip:owner@127.0.0.2:5080>")
    calls = ProxiedCalls(limit=2, idle_s=10.0)
    for n, call_id in enumerate(("a", "b", "c")):
        calls.accepted(_accepted_invite(call_id), ok, float(n))
    assert len(calls) == 2 and calls.find("a", 3.0) is None  # the least recently used
    found = calls.find("b", 3.0)
    assert found is not None and str(found.contact) == "sip:owner@127.0.0.2:5080"
    assert (found.last, found.caller, found.caller_tag) == (3.0, CALLER, "a1")
    assert calls.find("c", 12.5) is None  # idle since 2.0
    assert calls.find("b", 12.5) is not None  # used at 3.0
    bad = make_response(parse_message(INVITE), 200, to_tag="t")  # type: ignore[arg-type]
    bad.headers.add("Contact", "<<<")
    calls.accepted(_accepted_invite("d"), bad, 13.0)
    found = calls.find("d", 13.0)
    assert found is not None and found.contact is None  # the Request-URI is kept then


def _invite(contact: str) -> Request:
    invite = parse_message(
        INVITE.replace(b"Contact: <sip:alice@127.0.0.1:5060>", f"Contact: {contact}".encode())
    )
    assert isinstance(invite, Request)
    return invite


def test_caller_target_a_udp_caller_at_its_source_a_stream_caller_at_its_contact() -> None:
    # UDP: the source the proxying node saw, whatever the Contact says (a caller behind a NAT)
    behind_nat = _invite("<sip:alice@10.0.0.9:5060>")
    assert caller_target(behind_nat, "udp", "192.0.2.7", 40000) == Peer("udp", "192.0.2.7", 40000)
    # TCP/TLS: the source port is its connection's to the proxying node: its Contact's port,
    # at its source host (its Contact's host may be private, or anyone's)
    tcp = _invite("<sip:alice@10.0.0.9:5090;transport=tcp>")
    assert caller_target(tcp, "tcp", "192.0.2.7", 40001) == Peer("tcp", "192.0.2.7", 5090)
    tls = _invite("<sip:alice@[2001:db8::1];transport=tls>")  # no port: the transport's own
    assert caller_target(tls, "tls", "2001:db8::7", 40002) == Peer("tls", "2001:db8::7", 5061)
    named = _invite("<sip:alice@pbx.example.com:5062;transport=tcp>")  # never looked up
    assert caller_target(named, "tcp", "192.0.2.7", 40003) == Peer("tcp", "192.0.2.7", 5062)
    routed = _invite("<sip:alice@192.0.2.8:5090;transport=tcp>")  # behind a proxy that stays
    routed.headers.add("Record-Route", "<sip:192.0.2.30:5070;transport=tcp;lr>")
    assert caller_target(routed, "tcp", "192.0.2.30", 40007) == Peer("tcp", "192.0.2.30", 5070)
    # too little said: the owner's requests go where the INVITE came from, as before
    assert caller_target(tcp, "udp", "192.0.2.7", 0) is None  # an older node: no port
    assert caller_target(tcp, "sctp", "192.0.2.7", 5060) is None
    assert caller_target(tcp, "", "192.0.2.7", 5060) is None
    assert caller_target(tcp, "tcp", "", 5060) is None
    assert caller_target(_invite("*"), "tcp", "192.0.2.7", 40004) is None
    assert caller_target(_invite("<tel:+15550100>"), "tcp", "192.0.2.7", 40005) is None
    assert caller_target(_invite("<<<"), "tcp", "192.0.2.7", 40006) is None


PROXY = Peer("udp", "127.0.0.3", 5070)  # the node that proxied the INVITE to the owner


class Owner:
    """The node that owns the room: it receives the INVITE PROXY proxied, its session's target
    the caller (as `caller_target` makes it from the signed header), and answers it."""

    def __init__(self, caller: Peer) -> None:
        self.endpoint = SipEndpoint()
        self.ua = UserAgent(self.endpoint, "127.0.0.2", 5080)
        self.now = 100.0
        incoming = parse_message(INVITE)
        assert isinstance(incoming, Request)
        self.call_id = incoming.call_id
        proxied = forwarded_invite(incoming, Via(transport="UDP", host="127.0.0.3", port=5070))
        self.feed(proxied.serialize(), PROXY)
        event = self.ua.next_event()
        assert isinstance(event, InviteReceived)
        self.session = event.session
        request = self.session.request
        self.session.target = caller_target(request, caller.transport, caller.host, caller.port)
        self.session.answer(self.now, b"v=0\n")

    def feed(self, data: bytes, peer: Peer) -> None:
        self.endpoint.receive(data, peer, self.now)
        self.events()

    def events(self) -> None:
        while (event := self.endpoint.next_event()) is not None:
            self.ua.handle_event(event, self.now)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.endpoint.handle_timer(self.now)
        self.ua.handle_timer(self.now)
        self.events()

    def sent(self) -> list[tuple[Request | Response, Peer]]:
        return [(parse_message(data), peer) for data, peer in self.endpoint.outgoing()]

    def acked(self) -> None:
        ack = _in_dialog("ACK", 7, self.session.local_tag)
        self.feed(ack, PROXY)  # (through the proxy, as sipp's uac sends it)


def test_the_owners_own_requests_go_to_the_caller_and_its_answers_through_the_proxy() -> None:
    """The owner of a proxied call: its 200 (and the 200's retransmissions) go back through
    the node that proxied the INVITE (the Via), but once the session's target is the caller,
    its session refresh and its BYE go straight there - the proxying node may be dead."""
    caller = Peer("udp", "127.0.0.1", 40000)  # its source, as the proxying node saw it
    owner = Owner(caller)
    session = owner.session
    answers = [(m.status, p) for m, p in owner.sent() if isinstance(m, Response)]
    assert answers == [(200, PROXY)]  # (answered at once: the 200 superseded the 100, s17.2.1)
    owner.tick(0.6)  # no ACK yet: the 200 again, the way it went (s13.3.1.4)
    ((again, peer),) = owner.sent()
    assert isinstance(again, Response) and (again.status, peer) == (200, PROXY)
    owner.acked()
    assert owner.sent() == []

    assert session.refresh(owner.now)
    ((refresh, peer),) = owner.sent()
    assert isinstance(refresh, Request) and refresh.method == "INVITE"  # (no Allow: re-INVITE)
    assert peer == caller and str(refresh.uri) == "sip:alice@127.0.0.1:5060"
    assert [(v.host, v.port) for v in refresh.vias] == [("127.0.0.2", 5080)]  # ours only
    owner.feed(make_response(refresh, 200, to_tag="a1").serialize(), caller)
    ((ack, peer),) = owner.sent()  # the re-INVITE's ACK: to the caller too
    assert isinstance(ack, Request) and ack.method == "ACK" and peer == caller
    assert session.hangup(owner.now)
    ((bye, peer),) = owner.sent()
    assert isinstance(bye, Request) and bye.method == "BYE" and peer == caller
    assert str(bye.uri) == "sip:alice@127.0.0.1:5060"  # the remote target: its Contact
    owner.feed(make_response(bye, 200).serialize(), caller)
    assert owner.sent() == [] and session.ended


def test_an_owners_request_the_caller_does_not_answer_goes_again_through_the_proxy() -> None:
    """A caller the owner cannot reach directly (a NAT that lets only the proxying node
    through, a TCP caller that takes no connection): its refresh unanswered there, the owner
    sends it again, with the next CSeq, where the INVITE came from - the proxying node relays it by
    Call-ID - and every later request of the call goes that way too."""
    caller = Peer("udp", "192.0.2.7", 40000)
    owner = Owner(caller)
    owner.sent()
    owner.acked()
    assert owner.session.refresh(owner.now)
    ((refresh, peer),) = owner.sent()
    assert isinstance(refresh, Request) and peer == caller
    owner.tick(33.0)  # Timer B: no answer from the caller
    resent = [(m, p) for m, p in owner.sent() if isinstance(m, Request) and m.method == "INVITE"]
    assert [p for _, p in resent][-1] == PROXY, resent
    again = resent[-1][0]
    assert again.cseq.seq == refresh.cseq.seq + 1 and again.body == refresh.body
    assert [(v.host, v.port, v.transport) for v in again.vias] == [("127.0.0.2", 5080, "UDP")]
    assert again.vias[0].branch != refresh.vias[0].branch
    assert owner.session.target is None and not owner.session.ended
    assert owner.endpoint.stats["dialog_target_unanswered"] == 1
    owner.feed(make_response(again, 200, to_tag="a1").serialize(), PROXY)
    ((ack, peer),) = owner.sent()
    assert isinstance(ack, Request) and ack.method == "ACK" and peer == PROXY
    assert owner.session.hangup(owner.now)
    ((bye, peer),) = owner.sent()
    assert isinstance(bye, Request) and bye.method == "BYE" and peer == PROXY
    assert bye.cseq.seq == again.cseq.seq + 1
