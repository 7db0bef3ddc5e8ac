"""Call flows between two SipEndpoints joined by an in-memory network with a fake clock.

`uac_and_uas()` gives a `Network` with Alice's endpoint (the UAC, 127.0.0.1:5060) and Bob's (the
UAS, 127.0.0.1:5070). Everything an endpoint wants to send is taken from `outgoing()`, parsed
back from its bytes and handed to the other one by `deliver(drop=...)`, which can lose chosen
datagrams; over TCP the bytes go through a StreamFramer one octet at a time. `run(until)` lets
fake time pass, firing every timer at its deadline (the endpoints', and Bob's 2xx
retransmissions). Nothing sleeps; no socket is opened.

On top of each endpoint sits the real user agent (`sip/ua/agent.py`, `sip/ua/invite.py`), doing
what RFC 3261 s13 leaves to the UA core: dialogs from the 1xx/2xx (s12.1), the ACK for every 2xx
(s13.2.2.4), the 2xx retransmitted until its ACK (s13.3.1.4), BYE inside the dialog (s15), 481
for unknown dialogs and 500 for a stale CSeq (s12.2.2), 487 when a CANCEL wins (s9.2). `Caller`
(Alice, the UAC) and `Callee` (Bob, the UAS) only drive them and keep what they saw.

Flows: RFC 3665 (Session Initiation Protocol Basic Call Flow Examples) section 3, with its
message text moved to 127.0.0.1 and named by its section: 3.1 Successful Session Establishment
(over UDP and, as in the RFC, over TCP), 3.8 Unsuccessful No Answer (CANCEL), 3.9 Unsuccessful
Busy, 3.10 Unsuccessful No Response from User Agent, 3.11 Unsuccessful Temporarily Unavailable;
then the RFC 3261 / RFC 6026 recovery cases those flows leave out (lost INVITE, 1xx, 2xx, ACK and
OPTIONS datagrams).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pytest

from sipbridge.sip.dialog import AnswerRetransmitter, Dialog
from sipbridge.sip.endpoint import (
    AckReceived,
    CancelReceived,
    EndpointEvent,
    EndpointSettings,
    Peer,
    RequestFailed,
    RequestReceived,
    RequestTimedOut,
    ResponseForUs,
    SipEndpoint,
)
from sipbridge.sip.message import (
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
)
from sipbridge.sip.transaction import ClientTransaction, State, TimerSettings
from sipbridge.sip.ua.agent import AgentEvent
from sipbridge.sip.ua.agent import UserAgent as AgentCore
from sipbridge.sip.ua.invite import InviteReceived, InviteSession
from tests.sip.test_transactions import (
    BOB_TAG,
    T4,
    TIMEOUT,
    crlf,
    describe,
    f1_invite,
    request,
    s11_options,
)

ALICE_TAG = "9fxced76sl"
CALL_ID = "3848276298220188511@127.0.0.1"
BOB_SDP = """\
v=0
o=bob 2890844527 2890844527 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 3456 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""".replace("\n", "\r\n").encode()


def f9_cancel(transport: str = "UDP") -> bytes:
    """RFC 3665 s3.8 F9 CANCEL Alice -> Proxy 1, sent straight to Bob: the Request-URI, Via (one,
    with the INVITE's branch), From, To, Call-ID and CSeq number of the INVITE (RFC 3261 s9.1)."""
    return crlf(f"""\
CANCEL sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/{transport} 127.0.0.1:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@127.0.0.1:5060>;tag={ALICE_TAG}
To: Bob <sip:bob@127.0.0.1:5070>
Call-ID: {CALL_ID}
CSeq: 1 CANCEL
Content-Length: 0

""")


def stale_bye() -> bytes:
    """RFC 3665 s3.1 F5 BYE turned around (Alice -> Bob), for a dialog Bob does not have."""
    return crlf(f"""\
BYE sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
From: Alice <sip:alice@127.0.0.1:5060>;tag={ALICE_TAG}
To: Bob <sip:bob@127.0.0.1:5070>;tag={BOB_TAG}
Call-ID: {CALL_ID}
CSeq: 2 BYE
Content-Length: 0

""")


# -- the network -----------------------------------------------------------------------------------

Message = Request | Response
Drop = Callable[[Message], bool]


@dataclass(frozen=True)
class Wire:
    """One message put on the network."""

    time: float
    sender: str  # "alice" or "bob"
    message: Message
    lost: bool

    def __str__(self) -> str:
        return f"{self.time:g} {self.sender}: {describe(self.message)}" + " (lost)" * self.lost


class Clock(Protocol):
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


class Network:
    """Alice's and Bob's endpoints, the wire between them and the fake clock."""

    def __init__(
        self,
        transport: str = "udp",
        *,
        alice_timers: TimerSettings | None = None,
        bob_timers: TimerSettings | None = None,
    ) -> None:
        self.now = 0.0
        self.alice = SipEndpoint(EndpointSettings(timers=alice_timers or TimerSettings()))
        self.bob = SipEndpoint(EndpointSettings(timers=bob_timers or TimerSettings()))
        connection = None if transport == "udp" else 1
        self.to_bob = Peer(transport, "127.0.0.1", 5070, connection)  # Bob, as Alice sees him
        self.to_alice = Peer(transport, "127.0.0.1", 5060, connection)
        self.wire: list[Wire] = []
        self.framers = {"alice": StreamFramer(), "bob": StreamFramer()}  # what each one reads
        self.agents: list[UserAgent] = []

    @property
    def reliable(self) -> bool:
        return self.to_bob.reliable

    def deliver(self, drop: Drop | None = None) -> list[Wire]:
        """Move what both endpoints want to send to the other one, letting the UA cores react,
        until everything is quiet. `drop` loses the datagrams it returns True for."""
        moved: list[Wire] = []
        while True:
            for agent in self.agents:
                agent.react()
            batch = [("alice", out) for out in self.alice.outgoing()]
            batch += [("bob", out) for out in self.bob.outgoing()]
            if not batch:
                return moved
            streams = {"alice": bytearray(), "bob": bytearray()}
            for sender, (data, peer) in batch:
                assert peer == (self.to_bob if sender == "alice" else self.to_alice)
                message = parse_message(data, stream=self.reliable)
                lost = drop is not None and drop(message)
                assert not (lost and self.reliable), "streams lose nothing"
                entry = Wire(self.now, sender, message, lost)
                moved.append(entry)
                self.wire.append(entry)
                if lost:
                    continue
                if self.reliable:
                    streams[sender] += data
                else:
                    receiver, source = self._route(sender)
                    receiver.receive(data, source, self.now)
            for sender, stream in streams.items():
                self._feed_one_octet_at_a_time(sender, bytes(stream))

    def _route(self, sender: str) -> tuple[SipEndpoint, Peer]:
        """Who gets what `sender` sends, and the peer it comes from as the receiver sees it."""
        if sender == "alice":
            return self.bob, self.to_alice
        return self.alice, self.to_bob

    def _feed_one_octet_at_a_time(self, sender: str, stream: bytes) -> None:
        receiver, source = self._route(sender)
        framer = self.framers["bob" if sender == "alice" else "alice"]
        for i in range(len(stream)):
            framer.feed(stream[i : i + 1])
            while (message := framer.next_message()) is not None:
                receiver.receive(message, source, self.now)
        assert framer.buffered == 0

    def run(self, until: float, drop: Drop | None = None) -> None:
        """Let fake time pass until `until`, firing every timer at its deadline and delivering
        what comes of it."""
        self.deliver(drop)
        clocks: list[Clock] = [self.alice, self.bob, *self.agents]
        while True:
            due = min((t for c in clocks if (t := c.get_timer()) is not None), default=None)
            if due is None or due > until:
                break
            self.now = max(self.now, due)
            for clock in clocks:
                deadline = clock.get_timer()
                if deadline is not None and deadline <= self.now:
                    clock.handle_timer(self.now)
            self.deliver(drop)
        self.now = max(self.now, until)

    def times(self, what: str, sender: str | None = None) -> list[float]:
        """When messages `describe()`d as `what` went on the wire (lost or not)."""
        return [
            w.time for w in self.wire if describe(w.message) == what and sender in (None, w.sender)
        ]

    def flow(self) -> list[str]:
        return [str(w) for w in self.wire]

    def transactions(self) -> list[str]:
        """The live transactions of both endpoints, for checking when they end."""
        names = []
        for who, endpoint in (("alice", self.alice), ("bob", self.bob)):
            names += [
                f"{who} server {t.request.method}" for t in endpoint.server_transactions.values()
            ]
            names += [
                f"{who} client {t.request.method}" for t in endpoint.client_transactions.values()
            ]
        return sorted(names)


def uac_and_uas(transport: str = "udp", **timers: TimerSettings) -> Network:
    return Network(transport, **timers)


def lose(what: str, times: int = 1) -> Drop:
    """Lose the first `times` messages `describe()`d as `what` ("INVITE", "200 INVITE")."""
    left = [times]

    def drop(message: Message) -> bool:
        if describe(message) == what and left[0] > 0:
            left[0] -= 1
            return True
        return False

    return drop


def events(endpoint: SipEndpoint) -> list[EndpointEvent]:
    out = []
    while (event := endpoint.next_event()) is not None:
        out.append(event)
    return out


# -- the user agents -------------------------------------------------------------------------------


class UserAgent:
    """One side's real user agent (`sip/ua/agent.py`) on its endpoint: every endpoint event is
    kept (`seen`) and handed to it, and so is every event it gives (`happened`)."""

    def __init__(
        self, net: Network, endpoint: SipEndpoint, to_peer: Peer, port: int, *, tag: str
    ) -> None:
        self.net = net
        self.endpoint = endpoint
        self.to_peer = to_peer
        self.tag = tag
        # 100 Trying is sent by the tests when they want it: RFC 3665 shows flows without it.
        self.ua = AgentCore(endpoint, "127.0.0.1", port, send_trying=False)
        self.seen: list[tuple[float, EndpointEvent]] = []
        self.happened: list[tuple[float, AgentEvent]] = []
        self.session: InviteSession | None = None
        net.agents.append(self)

    @property
    def dialog(self) -> Dialog | None:
        return self.session.dialog if self.session is not None else None

    def react(self) -> None:
        for event in events(self.endpoint):
            self.seen.append((self.net.now, event))
            self.on_event(event)
            self.ua.handle_event(event, self.net.now)
        self.drain()

    def on_event(self, event: EndpointEvent) -> None:
        pass

    def drain(self) -> None:
        while (happened := self.ua.next_event()) is not None:
            self.happened.append((self.net.now, happened))
            if isinstance(happened, InviteReceived):
                assert self.session is None, "one INVITE, however often it is retransmitted"
                self.session = happened.session
                self.session.local_tag = self.tag

    def hang_up(self) -> Request:
        """BYE through the session; returns it."""
        assert self.session is not None
        assert self.session.hangup(self.net.now)
        [bye] = [r for r in self.session.sent.values() if r.method == "BYE"]
        return bye

    def send_raw(self, method: str) -> Request:
        """An in-dialog request built by the session but sent past it (to test the peer)."""
        assert self.session is not None
        request = self.session.build_request(method)
        self.endpoint.send_request(request, self.to_peer, self.net.now)
        return request

    def get_timer(self) -> float | None:
        return self.ua.get_timer()

    def handle_timer(self, now: float) -> None:
        self.ua.handle_timer(now)
        self.drain()

    def got(self, kind: type, method: str | None = None) -> list[tuple[float, EndpointEvent]]:
        """Events of one kind (for responses and requests: of one method), with their time."""
        found = []
        for now, event in self.seen:
            if not isinstance(event, kind):
                continue
            message = getattr(event, "response", None) or getattr(event, "request", None)
            if method is None or (message is not None and message.cseq.method == method):
                found.append((now, event))
        return found

    def statuses(self, method: str) -> list[int]:
        return [
            e.response.status
            for _, e in self.seen
            if isinstance(e, ResponseForUs) and e.response.cseq.method == method
        ]

    def outcomes(self) -> list[str]:
        """What the user agent told its application, by event name."""
        return [type(event).__name__ for _, event in self.happened]


class Caller(UserAgent):
    """Alice, the UAC: her INVITE through a real InviteSession; `early` is the early dialog a
    tagged 1xx makes (s12.1.2), kept here to check it."""

    def __init__(self, net: Network, invite: bytes | None = None) -> None:
        super().__init__(net, net.alice, net.to_bob, 5060, tag=ALICE_TAG)
        transport = net.to_bob.transport.upper()
        self.invite = request(invite or f1_invite(transport))
        self.early: Dialog | None = None

    @property
    def ack(self) -> Request | None:
        return self.session.ack if self.session is not None else None

    def call(self) -> ClientTransaction:
        self.session = self.ua.invite(self.invite, self.to_peer)
        self.session.send(self.net.now)
        assert self.session.client_transaction is not None
        return self.session.client_transaction

    def cancel(self) -> None:
        if self.session is None:  # a CANCEL for an INVITE Bob never saw: RFC 3665 s3.8 F9
            cancel = request(f9_cancel(self.to_peer.transport.upper()))
            self.endpoint.send_request(cancel, self.to_peer, self.net.now)
            return
        self.session.cancel(self.net.now)

    def on_event(self, event: EndpointEvent) -> None:
        if not isinstance(event, ResponseForUs):
            return
        response = event.response
        if response.cseq.method != "INVITE":
            return
        if response.status < 200 and response.to.tag is not None and self.early is None:
            self.early = Dialog.as_uac(self.invite, response)


class Callee(UserAgent):
    """Bob, the UAS: rings, answers (his 2xx resent until the ACK comes, s13.3.1.4) or rejects
    through the InviteSession his agent made of the INVITE; 487 when a CANCEL wins (s9.2)."""

    def __init__(self, net: Network) -> None:
        super().__init__(net, net.bob, net.to_alice, 5070, tag=BOB_TAG)
        self.invite: RequestReceived | None = None
        self.acks: list[Request] = []

    @property
    def retransmitter(self) -> AnswerRetransmitter | None:
        return self.session.retransmitter if self.session is not None else None

    def on_event(self, event: EndpointEvent) -> None:
        if isinstance(event, RequestReceived) and event.request.method == "INVITE":
            if event.request.to.tag is not None:
                return  # a re-INVITE
            assert self.invite is None, "one INVITE, however often it is retransmitted"
            self.invite = event
        elif isinstance(event, AckReceived):
            self.acks.append(event.request)
            assert self.dialog is not None
            assert self.dialog.id == (event.request.call_id, BOB_TAG, ALICE_TAG)
        elif isinstance(event, CancelReceived):
            assert self.invite is not None and event.invite is self.invite.transaction

    def reply(self, status: int) -> None:
        assert self.session is not None
        self.session.reject(self.net.now, status)

    @property
    def transport(self) -> str:
        return self.to_peer.transport

    def ring(self, *, trying: bool = True) -> None:
        """100 Trying (s8.2.6.1), then 180 Ringing, whose To tag makes the early dialog."""
        assert self.session is not None
        if trying:
            self.session.ring(self.net.now, 100)
            # On the wire before the 180: a response sent before the endpoint's output is
            # drained supersedes the 100, which then never goes out (s17.2.1).
            self.net.deliver()
        self.session.ring(self.net.now, 180)

    def answer(self) -> Response:
        assert self.session is not None
        contact = f"<sip:bob@127.0.0.1:5070;transport={self.transport}>"
        self.session.answer(self.net.now, BOB_SDP, headers={"Contact": contact})
        assert self.session.retransmitter is not None
        return self.session.retransmitter.response


def call_answered(net: Network, *, answer_at: float = 2.0, drop: Drop | None = None) -> None:
    """Alice calls, Bob rings at once and answers at `answer_at`."""
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver(drop)
    bob.ring()
    net.run(answer_at, drop)
    bob.answer()
    net.deliver(drop)


def caller_callee(net: Network) -> tuple[Caller, Callee]:
    """Alice and Bob on `net`, made on the first call."""
    if not net.agents:
        Caller(net)
        Callee(net)
    alice, bob = net.agents
    assert isinstance(alice, Caller) and isinstance(bob, Callee)
    return alice, bob


# -- RFC 3665 section 3 ------------------------------------------------------------------------


def test_rfc3665_s3_1_successful_session_establishment() -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    # F1 INVITE; Bob's UA answers 100 Trying and F2 180 Ringing at once
    alice.call()
    net.deliver()
    assert bob.invite is not None and bob.invite.peer == net.to_alice
    bob.ring()
    net.deliver()
    assert alice.statuses("INVITE") == [100, 180]
    assert alice.early is not None and not alice.early.confirmed  # s12.1.2: early dialog
    # Bob picks up after 2 s: F3 200 OK, F4 ACK
    net.run(2.0)
    bob.answer()
    net.deliver()
    assert alice.statuses("INVITE") == [100, 180, 200]
    assert alice.dialog is not None and alice.dialog.confirmed
    assert alice.dialog.id == (CALL_ID, ALICE_TAG, BOB_TAG)
    assert bob.dialog is not None and bob.dialog.id == (CALL_ID, BOB_TAG, ALICE_TAG)
    assert bob.dialog.confirmed and len(bob.acks) == 1
    # F4 ACK: to Bob's Contact, the INVITE's CSeq number, a new branch (s13.2.2.4, s12.2.1.1)
    ack = bob.acks[0]
    assert str(ack.uri) == "sip:bob@127.0.0.1:5070;transport=udp"
    assert str(ack.cseq) == "1 ACK"
    assert ack.top_via.branch not in (None, "z9hG4bK74bf9")
    assert (ack.from_.tag, ack.to.tag, ack.call_id) == (ALICE_TAG, BOB_TAG, CALL_ID)
    # They talk; Bob hangs up after 10 s: F5 BYE, F6 200 OK
    net.run(10.0)
    bye = bob.hang_up()
    net.deliver()
    assert str(bye.uri) == "sip:alice@127.0.0.1:5060;transport=udp"  # Alice's Contact
    assert str(bye.cseq) == "1 BYE"  # Bob's first request in the dialog
    assert (bye.from_.tag, bye.to.tag) == (BOB_TAG, ALICE_TAG)
    assert bob.statuses("BYE") == [200]
    assert [e.request.method for _, e in alice.got(RequestReceived)] == ["BYE"]

    assert net.flow() == [
        "0 alice: INVITE",
        "0 bob: 100 INVITE",
        "0 bob: 180 INVITE",
        "2 bob: 200 INVITE",
        "2 alice: ACK",
        "10 bob: BYE",
        "10 alice: 200 BYE",
    ]
    # The transactions end by their timers: K (T4) for Bob's BYE, M and L (64*T1 after the 2xx)
    # for the INVITE, J (64*T1) for the BYE at Alice; and nothing was ever sent twice.
    net.run(10.0 + T4)
    assert net.transactions() == [
        "alice client INVITE",
        "alice server BYE",
        "bob server INVITE",
    ]
    net.run(2.0 + TIMEOUT)
    assert net.transactions() == ["alice server BYE"]
    net.run(10.0 + TIMEOUT)
    assert net.transactions() == []
    assert (net.alice.get_timer(), net.bob.get_timer()) == (None, None)
    assert len(net.wire) == 7


def test_rfc3665_s3_1_over_tcp_one_octet_at_a_time_with_no_retransmissions() -> None:
    # RFC 3665 s3.1 runs over TCP. Every message crosses a StreamFramer octet by octet; no
    # Timer A, E or G runs (s17), and the ACK comes before Bob's 2xx timer (s13.3.1.4) fires.
    net = uac_and_uas("tcp")
    alice, bob = caller_callee(net)
    invite = alice.call()
    assert invite.reliable
    net.deliver()
    bob.ring()
    net.run(2.0)
    bob.answer()
    net.deliver()
    net.run(10.0)
    bob.hang_up()
    net.deliver()
    assert net.flow() == [
        "0 alice: INVITE",
        "0 bob: 100 INVITE",
        "0 bob: 180 INVITE",
        "2 bob: 200 INVITE",
        "2 alice: ACK",
        "10 bob: BYE",
        "10 alice: 200 BYE",
    ]
    assert [describe(w.message) for w in net.wire if w.message.top_via.transport != "TCP"] == []
    assert alice.dialog is not None and bob.dialog is not None and bob.dialog.confirmed
    # Timers J and K are zero on streams: the BYE transactions end at once; L and M do not
    # depend on the transport (RFC 6026).
    net.run(10.0)
    assert net.transactions() == ["alice client INVITE", "bob server INVITE"]
    net.run(100.0)
    assert net.transactions() == []
    assert len(net.wire) == 7
    assert {f.buffered for f in net.framers.values()} == {0}


def test_rfc3665_s3_8_unsuccessful_no_answer_cancel() -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.ring()
    net.run(5.0)
    # Alice gives up: CANCEL (F9), 200 OK to it (F10); Bob's UA stops ringing: 487 (F15) and
    # the INVITE client transaction ACKs it (F16) with the INVITE's branch (s17.1.1.3).
    alice.cancel()
    net.deliver()
    assert bob.got(CancelReceived) != []
    assert net.flow() == [
        "0 alice: INVITE",
        "0 bob: 100 INVITE",
        "0 bob: 180 INVITE",
        "5 alice: CANCEL",
        "5 bob: 200 CANCEL",
        "5 bob: 487 INVITE",
        "5 alice: ACK",
    ]
    assert alice.statuses("CANCEL") == [200]
    assert alice.statuses("INVITE") == [100, 180, 487]
    ack = net.wire[-1].message
    assert isinstance(ack, Request)
    assert ack.top_via.branch == "z9hG4bK74bf9"
    assert (str(ack.uri), str(ack.cseq), ack.to.tag) == ("sip:bob@127.0.0.1:5070", "1 ACK", BOB_TAG)
    # That ACK belongs to the transaction: Bob's core never sees it.
    assert bob.got(AckReceived) == []
    [bob_invite] = [t for t in net.bob.server_transactions.values() if t.is_invite]
    assert bob_invite.state is State.CONFIRMED
    net.run(100.0)
    assert len(net.wire) == 7  # no 487 retransmitted (Timer G stopped), no ACK repeated
    assert net.transactions() == []


@pytest.mark.parametrize(
    ("status", "section"), [(486, "3.9 Unsuccessful Busy"), (480, "3.11 Temporarily Unavailable")]
)
def test_rfc3665_s3_9_and_s3_11_rejected_and_acked(status: int, section: str) -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.reply(status)
    net.deliver()
    assert net.flow() == ["0 alice: INVITE", f"0 bob: {status} INVITE", "0 alice: ACK"], section
    assert alice.statuses("INVITE") == [status]
    assert alice.dialog is None and bob.got(AckReceived) == []
    net.run(100.0)
    assert len(net.wire) == 3
    assert net.transactions() == []


def test_rfc3665_s3_10_no_response_from_user_agent_timer_b() -> None:
    # Bob's UA takes the INVITE and says nothing. Alice's client transaction retransmits it with
    # Timer A (T1, doubling) and gives up with Timer B at 64*T1 (s17.1.1.2): the 408 of the
    # RFC's proxy is, for a UAC with no proxy, RequestTimedOut.
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.run(100.0)
    assert net.times("INVITE") == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [now for now, _ in alice.got(RequestTimedOut)] == [TIMEOUT]
    assert [w for w in net.wire if w.sender == "bob"] == []
    # Bob's server transaction absorbed the six retransmissions: one INVITE for its core
    assert len(bob.got(RequestReceived)) == 1
    assert net.bob.stats["retransmissions"] == 6
    assert net.transactions() == ["bob server INVITE"]  # Bob's core owes it a final response


# -- recovering from loss (RFC 3261, RFC 6026) -----------------------------------------------------


def test_s17_2_1_retransmitted_invite_is_absorbed_and_gets_the_last_provisional() -> None:
    # Bob answers with only 180 Ringing (RFC 3665 s3.1 F2), and it is lost: Alice retransmits
    # the INVITE at T1; Bob's server transaction resends the 180 instead of passing a second
    # INVITE up; Alice then stops retransmitting.
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.ring(trying=False)
    net.run(10.0, drop=lose("180 INVITE"))
    assert net.flow() == [
        "0 alice: INVITE",
        "0 bob: 180 INVITE (lost)",
        "0.5 alice: INVITE",
        "0.5 bob: 180 INVITE",
    ]
    assert len(bob.got(RequestReceived)) == 1
    assert alice.statuses("INVITE") == [180]
    assert net.bob.stats["retransmissions"] == 1


def test_rfc6026_invite_retransmitted_after_the_2xx_is_absorbed() -> None:
    # RFC 6026 s7.1: in Accepted the INVITE server transaction absorbs a late retransmission of
    # the INVITE; it is neither a new call nor answered by the transaction.
    net = uac_and_uas()
    call_answered(net)
    alice, bob = caller_callee(net)
    sent = len(net.wire)
    net.bob.receive(alice.invite.serialize(), net.to_alice, net.now)
    net.deliver()
    assert len(net.wire) == sent
    assert len(bob.got(RequestReceived)) == 1


def test_rfc6026_ack_for_the_2xx_with_the_invites_branch_goes_to_the_tu() -> None:
    # Some UACs reuse the INVITE's branch in the ACK for a 2xx. It then matches Bob's INVITE
    # server transaction, in Accepted, which passes it to the TU (RFC 6026 figure 7 "ACK to TU")
    # rather than absorbing it as a retransmission.
    net = uac_and_uas()
    call_answered(net, drop=lose("ACK"))  # Alice's own ACK is lost ...
    alice, bob = caller_callee(net)
    assert alice.ack is not None and bob.acks == []
    same_branch = request(alice.ack.serialize())
    same_branch.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK74bf9")
    net.alice.send_stateless(same_branch, net.to_bob)  # ... and this one stands in for it
    net.run(10.0)
    assert [ack.top_via.branch for ack in bob.acks] == ["z9hG4bK74bf9"]
    assert net.times("200 INVITE") == [2.0]  # acknowledged: never retransmitted


def test_s13_3_1_4_lost_2xx_is_retransmitted_until_acked() -> None:
    net = uac_and_uas()
    call_answered(net, drop=lose("200 INVITE"))
    alice, bob = caller_callee(net)
    assert alice.dialog is None
    # Bob's core resends the 2xx after T1 on its own timer, through send_stateless
    net.run(10.0)
    assert net.times("200 INVITE") == [2.0, 2.5]
    assert net.times("ACK") == [2.5]
    assert bob.retransmitter is not None and bob.retransmitter.acked
    assert alice.statuses("INVITE") == [100, 180, 200]
    # and the call completes
    bob.hang_up()
    net.run(100.0)
    assert alice.statuses("INVITE") == [100, 180, 200]
    assert bob.statuses("BYE") == [200]
    assert net.times("200 INVITE") == [2.0, 2.5]
    assert net.transactions() == []


def test_s13_2_2_4_lost_ack_the_2xx_comes_again_and_is_acked_again() -> None:
    net = uac_and_uas()
    drop = lose("ACK")
    call_answered(net, drop=drop)
    alice, bob = caller_callee(net)
    assert bob.acks == []
    net.run(10.0, drop=drop)
    # The retransmitted 2xx reaches Alice's INVITE client transaction, still in Accepted (RFC
    # 6026: Timer M), which passes it up; her core sends the same ACK again.
    assert net.flow()[3:] == [
        "2 bob: 200 INVITE",
        "2 alice: ACK (lost)",
        "2.5 bob: 200 INVITE",
        "2.5 alice: ACK",
    ]
    assert alice.statuses("INVITE") == [100, 180, 200, 200]
    first, second = (w.message for w in net.wire if describe(w.message) == "ACK")
    assert first.serialize() == second.serialize()
    assert len(bob.acks) == 1 and bob.retransmitter is not None and bob.retransmitter.acked
    alice.hang_up()
    net.run(100.0)
    assert alice.statuses("BYE") == [200]
    assert net.times("200 INVITE") == [2.0, 2.5]
    assert net.transactions() == []


def test_s13_3_1_4_2xx_retransmissions_give_up_after_64_t1() -> None:
    net = uac_and_uas()
    never = lose("ACK", times=1000)
    call_answered(net, drop=never)
    _, bob = caller_callee(net)
    net.run(100.0, drop=never)
    # T1, doubling up to T2, for 64*T1 (s13.3.1.4): each one ACKed by Alice (all lost)
    resent = [2.0 + t for t in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5)]
    assert net.times("200 INVITE") == [2.0, *resent]
    assert net.times("ACK") == [2.0, *resent]
    assert bob.retransmitter is not None and bob.retransmitter.timed_out
    assert bob.get_timer() is None


def test_s17_1_2_2_options_lost_twice_then_answered() -> None:
    # The OPTIONS (RFC 3261 s11.1) is lost twice; Timer E resends it at T1 and 2*T1 later.
    net = uac_and_uas()
    tx = net.alice.send_request(request(s11_options()), net.to_bob, net.now)
    net.run(1.5, drop=lose("OPTIONS", times=2))
    [(received)] = events(net.bob)
    assert isinstance(received, RequestReceived) and received.request.method == "OPTIONS"
    net.bob.respond(received.transaction, net.bob.options_response(received.request), net.now)
    net.run(40.0)
    assert net.flow() == [
        "0 alice: OPTIONS (lost)",
        "0.5 alice: OPTIONS (lost)",
        "1.5 alice: OPTIONS",
        "1.5 bob: 200 OPTIONS",
    ]
    [answered] = events(net.alice)
    assert isinstance(answered, ResponseForUs) and answered.transaction is tx
    assert answered.response.headers.get("Allow") is not None  # s11.2
    assert tx.state is State.TERMINATED  # Timer K, T4 after the 200
    assert net.transactions() == []


def test_s17_1_2_2_options_timer_k_and_timer_j() -> None:
    net = uac_and_uas()
    net.alice.send_request(request(s11_options()), net.to_bob, net.now)
    net.deliver()
    [received] = events(net.bob)
    assert isinstance(received, RequestReceived)
    net.bob.respond(received.transaction, net.bob.options_response(received.request), net.now)
    net.deliver()
    net.run(T4 - 0.01)
    assert net.transactions() == ["alice client OPTIONS", "bob server OPTIONS"]
    net.run(T4)
    assert net.transactions() == ["bob server OPTIONS"]
    net.run(TIMEOUT)
    assert net.transactions() == []


def test_s12_2_2_bye_for_an_unknown_dialog_gets_481() -> None:
    # The endpoint cannot know dialogs: it hands the BYE up, and the UA core answers 481.
    net = uac_and_uas()
    tx = net.alice.send_request(request(stale_bye()), net.to_bob, net.now)
    net.deliver()
    [received] = events(net.bob)
    assert isinstance(received, RequestReceived) and received.request.method == "BYE"
    assert received.request.to.tag == BOB_TAG
    net.bob.respond(received.transaction, make_response(received.request, 481), net.now)
    net.run(100.0)
    assert net.flow() == ["0 alice: BYE", "0 bob: 481 BYE"]  # no ACK for a non-INVITE
    [answered] = events(net.alice)
    assert isinstance(answered, ResponseForUs) and answered.transaction is tx
    assert answered.response.status == 481
    assert answered.response.reason == "Call/Transaction Does Not Exist"


def test_s12_2_2_in_dialog_request_with_a_stale_cseq_gets_500() -> None:
    net = uac_and_uas()
    call_answered(net)
    alice, _ = caller_callee(net)
    assert alice.dialog is not None and alice.dialog.local_seq == 1  # the INVITE's
    alice.dialog.local_seq = -1  # a BYE with CSeq 0: below the INVITE's 1, out of order ...
    assert str(alice.send_raw("BYE").cseq) == "0 BYE"
    net.deliver()
    alice.dialog.local_seq = 1  # ... then the right one, CSeq 2
    assert str(alice.send_raw("BYE").cseq) == "2 BYE"
    net.deliver()
    assert alice.statuses("BYE") == [500, 200]


def test_s17_1_4_connection_lost_fails_the_pending_invite() -> None:
    net = uac_and_uas("tcp")
    alice, bob = caller_callee(net)
    tx = alice.call()
    net.deliver()
    bob.ring()
    net.deliver()
    net.alice.transport_error(net.to_bob, net.now)
    net.deliver()
    # In Proceeding the INVITE client transaction has no transport-error arc (figure 5)...
    assert tx.state is State.PROCEEDING
    assert alice.got(RequestFailed) == []
    # ...but in Calling it has: a lost connection ends it at once, and the TU is told.
    net2 = uac_and_uas("tcp")
    alice2, _ = caller_callee(net2)
    tx2 = alice2.call()
    net2.alice.transport_error(net2.to_bob, net2.now)
    net2.deliver()
    assert tx2.state is State.TERMINATED
    assert [e.transaction for _, e in alice2.got(RequestFailed)] == [tx2]
    assert net2.alice.client_transactions == {}


# -- CANCEL races and stray responses (found as bugs by these tests, fixed since) ----------------


def test_s9_2_cancel_crossing_the_2xx_is_answered_200() -> None:
    # RFC 3665 s3.8: "If a 200 OK to the INVITE had crossed with the CANCEL, Alice would have sent
    # an ACK then a BYE". Bob's INVITE server transaction is still there (Accepted, RFC 6026).
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    alice.call()
    net.deliver()
    bob.ring()
    net.run(2.0)
    bob.answer()
    alice.cancel()  # before the 200 arrives
    net.deliver()
    assert alice.dialog is not None and len(bob.acks) == 1  # the call is up regardless
    assert alice.statuses("CANCEL") == [200]
    # The CANCEL had no effect: no 487, and Bob's core was not asked to stop ringing.
    assert alice.statuses("INVITE") == [100, 180, 200]
    assert bob.got(CancelReceived) == []
    # ... so Alice, who wanted no call, ACKs the 2xx and then sends BYE; both learn it ended.
    flow = net.flow()
    assert flow.index("2 alice: ACK") < flow.index("2 alice: BYE") < flow.index("2 bob: 200 BYE")
    assert alice.outcomes() == ["ProvisionalReceived", "CallEnded"] and bob.outcomes() == [
        "InviteReceived",
        "AckReceived",
        "CallEnded",
    ]


@pytest.mark.parametrize("ringing", [True, False], ids=["matched 200", "unmatched 481"])
def test_s8_2_6_2_responses_to_cancel_carry_a_to_tag(ringing: bool) -> None:
    net = uac_and_uas()
    alice, bob = caller_callee(net)
    if ringing:
        alice.call()
        net.deliver()
        bob.ring()
        net.deliver()
    alice.cancel()
    net.deliver()
    [answer] = [w.message for w in net.wire if describe(w.message).endswith("CANCEL")][1:]
    assert isinstance(answer, Response) and answer.status == (200 if ringing else 481)
    assert answer.to.tag is not None
    if ringing:  # s9.2: the To tag of the INVITE's response (the 180's)
        assert answer.to.tag == BOB_TAG


def test_rfc6026_s8_9_response_matching_no_transaction_is_discarded() -> None:
    # Alice's T1 is 250 ms (Timer M: 16 s); Bob, with T1 = 500 ms, resends his 2xx for 32 s
    # because every ACK is lost until 20 s.
    net = uac_and_uas(alice_timers=TimerSettings(t1=0.25))
    until_20s = lose("ACK", times=7)  # at 2, 2.5, 3.5, 5.5, 9.5, 13.5, 17.5 s
    call_answered(net, drop=until_20s)
    alice, _ = caller_callee(net)
    net.run(100.0, drop=until_20s)
    assert net.times("200 INVITE")[-1] > 2.0 + 16.0  # arrived after Alice's Timer M
    assert net.alice.stats["stray_responses"] == 4  # at 21.5, 25.5, 29.5, 33.5 s
    # Within Timer M every 2xx was passed up and ACKed (s13.2.2.4).
    assert alice.statuses("INVITE") == [100, 180] + [200] * 7
