"""The four SIP transaction state machines (src/sipbridge/sip/transaction.py), driven directly.

RFC 3261 s17.1.1 (INVITE client, figure 5), s17.1.2 (non-INVITE client, figure 6), s17.2.1
(INVITE server, figure 7), s17.2.2 (non-INVITE server, figure 8), s17.1.1.3 (the ACK for a
3xx-6xx), s17.2.3 (matching requests), table 4 (Timers A-K); RFC 6026 s7.1, s7.2 and figures 5
and 7 (the "Accepted" state, Timers L and M).

Time is fake: a transaction is only ever told the time, and its timers fire with
`handle_timer(get_timer())`. The figures are transcribed below independently of the tables in
transaction.py, with what each arc does ("to TU", "ACK", ...); the tests check the tables against
them and then drive every arc through the public methods and watch what comes out.

Test data: the INVITE is RFC 3665 s3.1 message F1 and the OPTIONS the RFC 3261 s11.1 example,
with the hosts moved to 127.0.0.1 (Alice at port 5060, Bob at 5070) and the transport in the Via
chosen by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sip.headers import MAGIC_COOKIE
from sipbridge.sip.message import Request, Response, make_response, parse_message
from sipbridge.sip.transaction import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    ClientTransaction,
    Input,
    ResponseReceived,
    ServerTransaction,
    State,
    Table,
    TimerSettings,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    ack_for_failure,
    classify,
    client_key,
    make_server_response,
    new_branch,
    server_key,
    steps_of,
)

S, In = State, Input
T1, T2, T4 = 0.5, 4.0, 5.0  # RFC 3261 table 4 defaults
TIMEOUT = 64 * T1  # Timers B, F, H, J (datagrams), L, M
BOB_TAG = "8321234356"  # RFC 3665 s3.1 F2


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


ALICE_SDP = """\
v=0
o=alice 2890844526 2890844526 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 49172 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""


def f1_invite(transport: str = "UDP") -> bytes:
    """RFC 3665 s3.1 F1 INVITE Alice -> Bob (moved to 127.0.0.1; RFC 3665 runs it over TCP)."""
    body = ALICE_SDP.replace("\n", "\r\n")
    return (
        crlf(f"""\
INVITE sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/{transport} 127.0.0.1:5060;branch=z9hG4bK74bf9
Max-Forwards: 70
From: Alice <sip:alice@127.0.0.1:5060>;tag=9fxced76sl
To: Bob <sip:bob@127.0.0.1:5070>
Call-ID: 3848276298220188511@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5060;transport={transport.lower()}>
Content-Type: application/sdp
Content-Length: {len(body)}

""")
        + body.encode()
    )


def s11_options(transport: str = "UDP") -> bytes:
    """RFC 3261 s11.1 OPTIONS example (Alice asks Bob's capabilities), moved to 127.0.0.1."""
    return crlf(f"""\
OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/{transport} 127.0.0.1:5060;branch=z9hG4bKhjhs8ass877
Max-Forwards: 70
To: <sip:bob@127.0.0.1:5070>
From: Alice <sip:alice@127.0.0.1:5060>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 63104 OPTIONS
Contact: <sip:alice@127.0.0.1:5060>
Accept: application/sdp
Content-Length: 0

""")


def request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def answer(req: Request, status: int) -> Response:
    return make_response(req, status, to_tag=BOB_TAG)


def drain(tx: ClientTransaction | ServerTransaction) -> list[TransactionEvent]:
    events = []
    while (event := tx.next_event()) is not None:
        events.append(event)
    return events


def fire(tx: ClientTransaction | ServerTransaction) -> float:
    """Fire the next timer, at exactly its deadline."""
    due = tx.get_timer()
    assert due is not None
    tx.handle_timer(due)
    return due


@dataclass
class Tick:
    time: float
    sent: list[str]
    events: list[str]
    state: State


def describe(message: Request | Response) -> str:
    if isinstance(message, Response):
        return f"{message.status} {message.cseq.method}"
    return message.method


def timeline(tx: ClientTransaction | ServerTransaction, until: float = 100.0) -> list[Tick]:
    """Fire every timer up to `until`, recording what each firing sent and told the TU (what was
    queued before the first firing is the caller's business and is discarded)."""
    tx.messages_to_send()
    drain(tx)
    ticks = []
    while (due := tx.get_timer()) is not None and due <= until:
        tx.handle_timer(due)
        ticks.append(
            Tick(
                time=due,
                sent=[describe(m) for m in tx.messages_to_send()],
                events=[type(e).__name__ for e in drain(tx)],
                state=tx.state,
            )
        )
    return ticks


def sends(ticks: list[Tick], what: str) -> list[float]:
    return [tick.time for tick in ticks for sent in tick.sent if sent == what]


def client(
    data: bytes | None = None, *, reliable: bool = False, timers: TimerSettings | None = None
) -> ClientTransaction:
    tx = ClientTransaction(request(data or f1_invite()), reliable=reliable, timers=timers)
    tx.start(0.0)
    assert tx.messages_to_send() == [tx.request]
    return tx


def server(data: bytes | None = None, *, reliable: bool = False) -> ServerTransaction:
    return ServerTransaction(request(data or f1_invite()), reliable=reliable)


# -- the figures, transcribed ---------------------------------------------------------------------
#
# (state, input) -> (next state, what the arc does). What an arc does, in the figures' words:
# "to TU" a response passed up, "ACK" an ACK sent, "request" the request retransmitted,
# "response" a response (the TU's, or the last one again) sent, "timeout" / "transport" the TU
# told of a timeout / transport error. Entering Terminated is not listed; it is always reported.

Arc = tuple[State, frozenset[str]]


def arc(state: State, *does: str) -> Arc:
    return (state, frozenset(does))


# RFC 3261 figure 5 with RFC 6026 figure 5 (2xx -> Accepted, Timer M).
FIGURE_5: dict[tuple[State, Input], Arc] = {
    (S.CALLING, In.RETRANSMIT_TIMER): arc(S.CALLING, "request"),  # Timer A
    (S.CALLING, In.TIMEOUT_TIMER): arc(S.TERMINATED, "timeout"),  # Timer B
    (S.CALLING, In.PROVISIONAL): arc(S.PROCEEDING, "to TU"),
    (S.CALLING, In.SUCCESS): arc(S.ACCEPTED, "to TU"),
    (S.CALLING, In.FAILURE): arc(S.COMPLETED, "ACK", "to TU"),
    (S.CALLING, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.PROCEEDING, In.PROVISIONAL): arc(S.PROCEEDING, "to TU"),
    (S.PROCEEDING, In.SUCCESS): arc(S.ACCEPTED, "to TU"),
    (S.PROCEEDING, In.FAILURE): arc(S.COMPLETED, "ACK", "to TU"),
    (S.COMPLETED, In.FAILURE): arc(S.COMPLETED, "ACK"),
    (S.COMPLETED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer D
    (S.COMPLETED, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.ACCEPTED, In.SUCCESS): arc(S.ACCEPTED, "to TU"),
    (S.ACCEPTED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer M
}

# RFC 3261 figure 6; the Completed self-loops are s17.1.2.2's "buffer any additional response
# retransmissions".
FIGURE_6: dict[tuple[State, Input], Arc] = {
    (S.TRYING, In.RETRANSMIT_TIMER): arc(S.TRYING, "request"),  # Timer E
    (S.TRYING, In.TIMEOUT_TIMER): arc(S.TERMINATED, "timeout"),  # Timer F
    (S.TRYING, In.PROVISIONAL): arc(S.PROCEEDING, "to TU"),
    (S.TRYING, In.SUCCESS): arc(S.COMPLETED, "to TU"),
    (S.TRYING, In.FAILURE): arc(S.COMPLETED, "to TU"),
    (S.TRYING, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.PROCEEDING, In.RETRANSMIT_TIMER): arc(S.PROCEEDING, "request"),  # Timer E
    (S.PROCEEDING, In.TIMEOUT_TIMER): arc(S.TERMINATED, "timeout"),  # Timer F
    (S.PROCEEDING, In.PROVISIONAL): arc(S.PROCEEDING, "to TU"),
    (S.PROCEEDING, In.SUCCESS): arc(S.COMPLETED, "to TU"),
    (S.PROCEEDING, In.FAILURE): arc(S.COMPLETED, "to TU"),
    (S.PROCEEDING, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.COMPLETED, In.SUCCESS): arc(S.COMPLETED),
    (S.COMPLETED, In.FAILURE): arc(S.COMPLETED),
    (S.COMPLETED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer K
}

# RFC 3261 figure 7 with RFC 6026 figure 7 (TU 2xx -> Accepted, Timer L, a transport error in
# Accepted told to the TU). The Confirmed self-loops are s17.2.1's "absorb any additional ACK
# messages" (and a late INVITE with them). Not here: the ACK arc of Accepted (endpoint.py hands
# such an ACK to the TU before the transaction sees it).
FIGURE_7: dict[tuple[State, Input], Arc] = {
    (S.PROCEEDING, In.REQUEST): arc(S.PROCEEDING, "response"),
    (S.PROCEEDING, In.TU_PROVISIONAL): arc(S.PROCEEDING, "response"),
    (S.PROCEEDING, In.TU_SUCCESS): arc(S.ACCEPTED, "response"),
    (S.PROCEEDING, In.TU_FAILURE): arc(S.COMPLETED, "response"),
    (S.PROCEEDING, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.COMPLETED, In.REQUEST): arc(S.COMPLETED, "response"),
    (S.COMPLETED, In.RETRANSMIT_TIMER): arc(S.COMPLETED, "response"),  # Timer G
    (S.COMPLETED, In.TIMEOUT_TIMER): arc(S.TERMINATED, "timeout"),  # Timer H
    (S.COMPLETED, In.ACK): arc(S.CONFIRMED),
    (S.COMPLETED, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.CONFIRMED, In.ACK): arc(S.CONFIRMED),
    (S.CONFIRMED, In.REQUEST): arc(S.CONFIRMED),
    (S.CONFIRMED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer I
    (S.ACCEPTED, In.REQUEST): arc(S.ACCEPTED),  # absorbed (RFC 6026 s7.1)
    (S.ACCEPTED, In.TU_SUCCESS): arc(S.ACCEPTED, "response"),
    (S.ACCEPTED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer L
    (S.ACCEPTED, In.TRANSPORT_ERROR): arc(S.ACCEPTED, "transport"),
}

# RFC 3261 figure 8; Trying discards request retransmissions (s17.2.2).
FIGURE_8: dict[tuple[State, Input], Arc] = {
    (S.TRYING, In.REQUEST): arc(S.TRYING),
    (S.TRYING, In.TU_PROVISIONAL): arc(S.PROCEEDING, "response"),
    (S.TRYING, In.TU_SUCCESS): arc(S.COMPLETED, "response"),
    (S.TRYING, In.TU_FAILURE): arc(S.COMPLETED, "response"),
    (S.PROCEEDING, In.REQUEST): arc(S.PROCEEDING, "response"),
    (S.PROCEEDING, In.TU_PROVISIONAL): arc(S.PROCEEDING, "response"),
    (S.PROCEEDING, In.TU_SUCCESS): arc(S.COMPLETED, "response"),
    (S.PROCEEDING, In.TU_FAILURE): arc(S.COMPLETED, "response"),
    (S.PROCEEDING, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
    (S.COMPLETED, In.REQUEST): arc(S.COMPLETED, "response"),
    (S.COMPLETED, In.LINGER_TIMER): arc(S.TERMINATED),  # Timer J
    (S.COMPLETED, In.TRANSPORT_ERROR): arc(S.TERMINATED, "transport"),
}

CLIENT_INPUTS = (In.PROVISIONAL, In.SUCCESS, In.FAILURE, In.TRANSPORT_ERROR)
SERVER_INPUTS = (
    In.REQUEST,
    In.ACK,
    In.TU_PROVISIONAL,
    In.TU_SUCCESS,
    In.TU_FAILURE,
    In.TRANSPORT_ERROR,
)
TIMERS = (In.RETRANSMIT_TIMER, In.TIMEOUT_TIMER, In.LINGER_TIMER)


@dataclass(frozen=True)
class Machine:
    name: str
    table: Table
    figure: dict[tuple[State, Input], Arc]
    make: Callable[[bool], ClientTransaction | ServerTransaction]
    # message/TU inputs that take the machine from its first state to each other state
    paths: dict[State, tuple[Input, ...]]
    inputs: tuple[Input, ...]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.name


def _client_invite(reliable: bool) -> ClientTransaction:
    return client(f1_invite(), reliable=reliable)


def _client_options(reliable: bool) -> ClientTransaction:
    return client(s11_options(), reliable=reliable)


def _server_invite(reliable: bool) -> ServerTransaction:
    return server(f1_invite(), reliable=reliable)


def _server_options(reliable: bool) -> ServerTransaction:
    return server(s11_options(), reliable=reliable)


MACHINES = [
    Machine(
        "INVITE client",
        CLIENT_INVITE,
        FIGURE_5,
        _client_invite,
        {
            S.CALLING: (),
            S.PROCEEDING: (In.PROVISIONAL,),
            S.COMPLETED: (In.FAILURE,),
            S.ACCEPTED: (In.SUCCESS,),
            S.TERMINATED: (In.TRANSPORT_ERROR,),
        },
        CLIENT_INPUTS,
    ),
    Machine(
        "non-INVITE client",
        CLIENT_NON_INVITE,
        FIGURE_6,
        _client_options,
        {
            S.TRYING: (),
            S.PROCEEDING: (In.PROVISIONAL,),
            S.COMPLETED: (In.SUCCESS,),
            S.TERMINATED: (In.TRANSPORT_ERROR,),
        },
        CLIENT_INPUTS,
    ),
    Machine(
        "INVITE server",
        SERVER_INVITE,
        FIGURE_7,
        _server_invite,
        {
            # a 180 first, so that "resend the last response" has one to resend
            S.PROCEEDING: (In.TU_PROVISIONAL,),
            S.COMPLETED: (In.TU_FAILURE,),
            S.CONFIRMED: (In.TU_FAILURE, In.ACK),
            S.ACCEPTED: (In.TU_SUCCESS,),
            S.TERMINATED: (In.TU_FAILURE, In.TRANSPORT_ERROR),
        },
        SERVER_INPUTS,
    ),
    Machine(
        "non-INVITE server",
        SERVER_NON_INVITE,
        FIGURE_8,
        _server_options,
        {
            S.TRYING: (),
            S.PROCEEDING: (In.TU_PROVISIONAL,),
            S.COMPLETED: (In.TU_SUCCESS,),
            S.TERMINATED: (In.TU_PROVISIONAL, In.TRANSPORT_ERROR),
        },
        tuple(i for i in SERVER_INPUTS if i is not In.ACK),
    ),
]


@dataclass
class Driver:
    """One transaction and the fake clock, fed one table input at a time."""

    tx: ClientTransaction | ServerTransaction
    now: float = 0.0
    accepted: list[bool] = field(default_factory=list)  # send_response's answers

    def status(self, event: Input) -> int:
        provisional = 180 if self.tx.is_invite else 100
        return {
            In.PROVISIONAL: provisional,
            In.TU_PROVISIONAL: provisional,
            In.SUCCESS: 200,
            In.TU_SUCCESS: 200,
            In.FAILURE: 486,
            In.TU_FAILURE: 486,
        }[event]

    def apply(self, event: Input) -> tuple[list[Request | Response], list[TransactionEvent]]:
        tx = self.tx
        if event in (In.PROVISIONAL, In.SUCCESS, In.FAILURE):
            assert isinstance(tx, ClientTransaction)
            tx.receive_response(answer(tx.request, self.status(event)), self.now)
        elif event in (In.TU_PROVISIONAL, In.TU_SUCCESS, In.TU_FAILURE):
            assert isinstance(tx, ServerTransaction)
            self.accepted.append(tx.send_response(answer(tx.request, self.status(event)), self.now))
        elif event is In.REQUEST:
            assert isinstance(tx, ServerTransaction)
            tx.receive_request(request(tx.request.serialize()), self.now)  # a retransmission
        elif event is In.ACK:
            assert isinstance(tx, ServerTransaction)
            final = tx.last_response or answer(tx.request, 486)
            tx.receive_request(ack_for_failure(tx.request, final), self.now)
        elif event is In.TRANSPORT_ERROR:
            tx.transport_error(self.now)
        else:  # a timer: the earliest one, at its deadline
            self.now = fire(tx)
        return tx.messages_to_send(), drain(tx)


def reach(machine: Machine, state: State, *, reliable: bool = False) -> Driver:
    driver = Driver(machine.make(reliable))
    for event in machine.paths[state]:
        driver.apply(event)
    assert driver.tx.state is state
    return driver


def effects(
    tx: ClientTransaction | ServerTransaction,
    sent: list[Request | Response],
    events: list[TransactionEvent],
) -> frozenset[str]:
    """What an input did, in the figures' words."""
    done = set()
    for message in sent:
        if isinstance(message, Response):
            done.add("response")
        elif message.method == "ACK":
            done.add("ACK")
        else:
            assert message is tx.request
            done.add("request")
    for event in events:
        if isinstance(event, ResponseReceived):
            done.add("to TU")
        elif isinstance(event, TransactionTimedOut):
            done.add("timeout")
        elif isinstance(event, TransportFailed):
            done.add("transport")
        else:
            assert isinstance(event, TransactionTerminated)
    return frozenset(done)


def row_id(row: tuple[Machine, tuple[State, Input]]) -> str:
    machine, (state, event) = row
    return f"{machine}: {state.value} + {event.value}"


ROWS = [(m, key) for m in MACHINES for key in m.figure]


# -- the tables are the figures ------------------------------------------------------------------


@pytest.mark.parametrize("machine", MACHINES, ids=str)
def test_table_has_exactly_the_arcs_of_the_rfc_figure(machine: Machine) -> None:
    assert {key: next_state for key, (_, next_state) in machine.table.items()} == {
        key: next_state for key, (next_state, _) in machine.figure.items()
    }


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_every_arc_does_what_the_figure_says(row: tuple[Machine, tuple[State, Input]]) -> None:
    machine, (state, event) = row
    # Timers B, F and H are the first to fire only where A, E and G do not run: on streams.
    driver = reach(machine, state, reliable=event is In.TIMEOUT_TIMER)
    driver.tx.messages_to_send()
    drain(driver.tx)
    sent, events = driver.apply(event)
    next_state, does = machine.figure[(state, event)]
    assert driver.tx.state is next_state
    assert effects(driver.tx, sent, events) == does
    # Terminated is reported once, on entry, as the last event
    terminated = [e for e in events if isinstance(e, TransactionTerminated)]
    assert len(terminated) == (next_state is S.TERMINATED)
    if terminated:
        assert events[-1] is terminated[0]
        assert driver.tx.get_timer() is None
    if driver.accepted:
        assert driver.accepted[-1] is True


ILLEGAL = [
    (m, (state, event))
    for m in MACHINES
    for state in m.paths
    for event in m.inputs
    if (state, event) not in m.table
]


@pytest.mark.parametrize("row", ILLEGAL, ids=row_id)
def test_an_input_missing_from_the_table_is_ignored(
    row: tuple[Machine, tuple[State, Input]],
) -> None:
    # s17: a stray response, a late request, a TU response after the final one change nothing.
    machine, (state, event) = row
    driver = reach(machine, state)
    driver.tx.messages_to_send()
    drain(driver.tx)
    timer = driver.tx.get_timer()
    assert driver.apply(event) == ([], [])
    assert driver.tx.state is state
    assert driver.tx.get_timer() == timer
    if driver.accepted and event.name.startswith("TU_"):
        assert driver.accepted[-1] is False  # send_response says it sent nothing


@pytest.mark.parametrize("machine", MACHINES, ids=str)
def test_a_timer_called_early_does_nothing(machine: Machine) -> None:
    driver = reach(machine, next(iter(machine.paths)))
    driver.tx.messages_to_send()
    if (due := driver.tx.get_timer()) is None:
        driver.apply(In.TU_FAILURE)  # servers: a final response starts their timers
        driver.tx.messages_to_send()
        due = driver.tx.get_timer()
    assert due is not None
    state = driver.tx.state
    drain(driver.tx)
    driver.tx.handle_timer(due - 0.001)
    assert (driver.tx.state, driver.tx.messages_to_send(), drain(driver.tx)) == (state, [], [])
    assert driver.tx.get_timer() == due


# -- Table 4: the timer values, over UDP --------------------------------------------------------


def test_timer_settings_defaults_are_table_4() -> None:
    timers = TimerSettings()
    assert (timers.t1, timers.t2, timers.t4, timers.timeout) == (0.5, 4.0, 5.0, 32.0)


def test_s17_1_1_2_timer_a_doubles_past_t2_and_timer_b_fires_at_64_t1() -> None:
    # Timer A starts at T1 and doubles with no T2 cap (s17.1.1.2), so the INVITE goes out again
    # at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; Timer B ends the transaction at 64*T1 = 32 s.
    ticks = timeline(client(f1_invite()))
    assert sends(ticks, "INVITE") == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert ticks[-1] == Tick(
        time=TIMEOUT,
        sent=[],
        events=["TransactionTimedOut", "TransactionTerminated"],
        state=S.TERMINATED,
    )


def test_s17_1_1_2_a_provisional_response_stops_timer_a_and_timer_b() -> None:
    tx = client(f1_invite())
    tx.handle_timer(0.5)
    tx.receive_response(answer(tx.request, 180), 0.7)
    tx.messages_to_send()
    drain(tx)
    # In Proceeding only the TU (CANCEL, or a final response) ends an INVITE transaction.
    assert tx.state is S.PROCEEDING
    assert tx.get_timer() is None
    tx.handle_timer(1000.0)
    assert (tx.messages_to_send(), drain(tx)) == ([], [])


@pytest.mark.parametrize(("reliable", "timer_d"), [(False, 32.0), (True, 0.0)])
def test_s17_1_1_2_timer_d(reliable: bool, timer_d: float) -> None:
    # Timer D: at least 32 s for unreliable transports, zero for reliable ones.
    tx = client(f1_invite(), reliable=reliable)
    tx.receive_response(answer(tx.request, 486), 2.0)
    assert tx.state is S.COMPLETED
    assert timeline(tx)[-1] == Tick(
        time=2.0 + timer_d, sent=[], events=["TransactionTerminated"], state=S.TERMINATED
    )


def test_s17_1_1_2_timer_b_on_a_reliable_transport_with_no_timer_a() -> None:
    ticks = timeline(client(f1_invite("TCP"), reliable=True))
    assert ticks == [
        Tick(
            time=TIMEOUT,
            sent=[],
            events=["TransactionTimedOut", "TransactionTerminated"],
            state=S.TERMINATED,
        )
    ]


def test_s17_1_2_2_timer_e_doubles_up_to_t2_and_timer_f_fires_at_64_t1() -> None:
    ticks = timeline(client(s11_options()))
    assert sends(ticks, "OPTIONS") == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert ticks[-1].time == TIMEOUT
    assert ticks[-1].events == ["TransactionTimedOut", "TransactionTerminated"]


def test_s17_1_2_2_timer_e_in_proceeding_is_reset_to_t2() -> None:
    # A 1xx does not stop Timer E: "If Timer E fires while in the Proceeding state, the request
    # MUST be passed to the transport layer for retransmission, and Timer E MUST be reset with a
    # value of T2 seconds." Timer F still ends it at 64*T1.
    tx = client(s11_options())
    tx.receive_response(answer(tx.request, 100), 0.2)
    assert [type(e) for e in drain(tx)] == [ResponseReceived]
    ticks = timeline(tx)
    assert sends(ticks, "OPTIONS") == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert ticks[-1].time == TIMEOUT
    assert ticks[-1].events == ["TransactionTimedOut", "TransactionTerminated"]


@pytest.mark.parametrize(("reliable", "timer_k"), [(False, T4), (True, 0.0)])
def test_s17_1_2_2_timer_k(reliable: bool, timer_k: float) -> None:
    tx = client(s11_options(), reliable=reliable)
    tx.handle_timer(0.5)
    tx.receive_response(answer(tx.request, 200), 1.0)
    assert tx.state is S.COMPLETED
    assert timeline(tx)[-1] == Tick(
        time=1.0 + timer_k, sent=[], events=["TransactionTerminated"], state=S.TERMINATED
    )


def test_s17_2_1_timer_g_doubles_up_to_t2_and_timer_h_fires_at_64_t1() -> None:
    tx = server(f1_invite())
    assert tx.send_response(answer(tx.request, 486), 1.0)
    assert [describe(m) for m in tx.messages_to_send()] == ["486 INVITE"]
    ticks = timeline(tx)
    # Timer G: T1, then MIN(2*T1, T2), doubling up to T2
    assert sends(ticks, "486 INVITE") == [
        1.0 + t for t in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5)
    ]
    # Timer H: the ACK never came; the TU is told
    assert ticks[-1] == Tick(
        time=1.0 + TIMEOUT,
        sent=[],
        events=["TransactionTimedOut", "TransactionTerminated"],
        state=S.TERMINATED,
    )


def test_s17_2_1_the_ack_stops_timers_g_and_h() -> None:
    tx = server(f1_invite())
    tx.send_response(answer(tx.request, 486), 0.0)
    tx.handle_timer(0.5)
    tx.handle_timer(1.5)
    assert len(tx.messages_to_send()) == 3
    tx.receive_request(ack_for_failure(tx.request, answer(tx.request, 486)), 2.0)
    assert tx.state is S.CONFIRMED
    # only Timer I is left
    assert timeline(tx) == [
        Tick(time=2.0 + T4, sent=[], events=["TransactionTerminated"], state=S.TERMINATED)
    ]


@pytest.mark.parametrize(("reliable", "timer_i"), [(False, T4), (True, 0.0)])
def test_s17_2_1_timer_i(reliable: bool, timer_i: float) -> None:
    tx = server(f1_invite(), reliable=reliable)
    tx.send_response(answer(tx.request, 603), 0.0)
    tx.receive_request(ack_for_failure(tx.request, answer(tx.request, 603)), 0.3)
    assert tx.state is S.CONFIRMED
    assert timeline(tx)[-1] == Tick(
        time=0.3 + timer_i, sent=[], events=["TransactionTerminated"], state=S.TERMINATED
    )


def test_s17_2_1_timer_h_on_a_reliable_transport_with_no_timer_g() -> None:
    tx = server(f1_invite("TCP"), reliable=True)
    tx.send_response(answer(tx.request, 486), 0.0)
    tx.messages_to_send()
    assert timeline(tx) == [
        Tick(
            time=TIMEOUT,
            sent=[],
            events=["TransactionTimedOut", "TransactionTerminated"],
            state=S.TERMINATED,
        )
    ]


@pytest.mark.parametrize(("reliable", "timer_j"), [(False, TIMEOUT), (True, 0.0)])
def test_s17_2_2_timer_j(reliable: bool, timer_j: float) -> None:
    tx = server(s11_options(), reliable=reliable)
    assert tx.get_timer() is None  # Trying: the TU answers, no timer runs
    tx.send_response(answer(tx.request, 200), 1.0)
    assert timeline(tx)[-1] == Tick(
        time=1.0 + timer_j, sent=[], events=["TransactionTerminated"], state=S.TERMINATED
    )


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
def test_rfc6026_timer_l_is_64_t1_on_every_transport(reliable: bool) -> None:
    tx = server(f1_invite(), reliable=reliable)
    tx.send_response(answer(tx.request, 200), 3.0)
    assert tx.state is S.ACCEPTED
    assert timeline(tx) == [
        Tick(time=3.0 + TIMEOUT, sent=[], events=["TransactionTerminated"], state=S.TERMINATED)
    ]


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
def test_rfc6026_timer_m_is_64_t1_on_every_transport(reliable: bool) -> None:
    tx = client(f1_invite(), reliable=reliable)
    tx.handle_timer(0.5)
    tx.receive_response(answer(tx.request, 200), 1.0)
    tx.messages_to_send()
    drain(tx)
    assert tx.state is S.ACCEPTED
    assert timeline(tx) == [
        Tick(time=1.0 + TIMEOUT, sent=[], events=["TransactionTerminated"], state=S.TERMINATED)
    ]


def test_timers_follow_the_settings() -> None:
    # T1 = 100 ms, T2 = 400 ms (a LAN profile): A still doubles freely, B is 64*T1 = 6.4 s.
    timers = TimerSettings(t1=0.1, t2=0.4, t4=1.0)
    ticks = timeline(client(f1_invite(), timers=timers))
    assert sends(ticks, "INVITE") == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert ticks[-1].time == pytest.approx(6.4)
    ticks = timeline(client(s11_options(), timers=timers))
    assert sends(ticks, "OPTIONS")[:5] == pytest.approx([0.1, 0.3, 0.7, 1.1, 1.5])


@pytest.mark.parametrize("machine", MACHINES, ids=str)
def test_no_retransmission_timers_on_a_reliable_transport(machine: Machine) -> None:
    # s17.1.1.2, s17.1.2.2, s17.2.1: Timers A, E and G run only over unreliable transports.
    for state in machine.paths:
        driver = reach(machine, state, reliable=True)
        driver.tx.messages_to_send()
        ticks = timeline(driver.tx, until=1000.0)
        assert [tick.sent for tick in ticks if tick.sent] == []


# -- RFC 6026: the Accepted state ---------------------------------------------------------------


def test_rfc6026_client_accepted_passes_every_2xx_up_and_never_acks_one() -> None:
    # RFC 6026 s7.2 / figure 5: each 2xx goes to the TU, which ACKs it (s13.2.2.4); the
    # transaction itself sends no ACK for a 2xx.
    tx = client(f1_invite())
    ok = answer(tx.request, 200)
    for now in (0.1, 0.6, 1.6, 3.6):  # the UAS retransmitting its 200 (s13.3.1.4)
        tx.receive_response(ok, now)
    events = drain(tx)
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [200] * 4
    assert tx.messages_to_send() == []
    assert tx.state is S.ACCEPTED
    # Provisional and failure responses after the 2xx are not for the TU.
    tx.receive_response(answer(tx.request, 180), 4.0)
    tx.receive_response(answer(tx.request, 500), 4.0)
    assert (tx.messages_to_send(), drain(tx)) == ([], [])


def test_rfc6026_server_accepted_absorbs_invite_retransmissions() -> None:
    # RFC 6026 s7.1: a retransmitted INVITE in Accepted is neither answered by the transaction
    # nor passed to the TU (the UAS core retransmits the 2xx on its own timer, s13.3.1.4) ...
    tx = server(f1_invite())
    tx.send_response(answer(tx.request, 180), 0.0)
    tx.send_response(answer(tx.request, 200), 1.0)
    assert [describe(m) for m in tx.messages_to_send()] == ["180 INVITE", "200 INVITE"]
    for now in (1.5, 2.5, 4.5):
        tx.receive_request(request(tx.request.serialize()), now)
    assert (tx.messages_to_send(), drain(tx), tx.state) == ([], [], S.ACCEPTED)
    # ... and the 2xx retransmissions the TU passes down go out (figure 7 "2xx from TU").
    assert tx.send_response(tx.last_response or answer(tx.request, 200), 1.5)
    assert [describe(m) for m in tx.messages_to_send()] == ["200 INVITE"]
    # Nothing but a 2xx may follow a 2xx.
    assert not tx.send_response(answer(tx.request, 183), 2.0)
    assert not tx.send_response(answer(tx.request, 500), 2.0)
    assert tx.messages_to_send() == []


def test_rfc6026_accepted_transport_error_informs_the_tu() -> None:
    # RFC 6026 figure 7: "Transport Err. Inform TU" loops on Accepted; Timer L still ends it.
    tx = server(f1_invite())
    tx.send_response(answer(tx.request, 200), 0.0)
    tx.messages_to_send()
    tx.transport_error(0.5)  # e.g. sending a 2xx retransmission failed
    assert [type(e) for e in drain(tx)] == [TransportFailed]
    assert (tx.state, tx.get_timer()) == (S.ACCEPTED, TIMEOUT)


def test_s17_2_1_invite_retransmission_before_any_response_sends_nothing() -> None:
    # The transaction has no response to repeat until the TU gives one (the UAS core sends its 100
    # Trying at once, s17.2.1).
    tx = server(f1_invite())
    tx.receive_request(request(tx.request.serialize()), 0.5)
    assert (tx.messages_to_send(), drain(tx), tx.state) == ([], [], S.PROCEEDING)
    tx.send_response(answer(tx.request, 100), 0.6)
    tx.messages_to_send()
    tx.receive_request(request(tx.request.serialize()), 1.5)
    assert [describe(m) for m in tx.messages_to_send()] == ["100 INVITE"]


def test_s17_2_2_request_retransmissions_get_the_last_response() -> None:
    tx = server(s11_options())
    tx.receive_request(request(tx.request.serialize()), 0.5)  # Trying: discarded
    assert tx.messages_to_send() == []
    tx.send_response(answer(tx.request, 100), 0.6)
    tx.receive_request(request(tx.request.serialize()), 1.5)
    tx.send_response(answer(tx.request, 200), 2.0)
    tx.receive_request(request(tx.request.serialize()), 3.5)
    assert [describe(m) for m in tx.messages_to_send()] == [
        "100 OPTIONS",
        "100 OPTIONS",
        "200 OPTIONS",
        "200 OPTIONS",
    ]
    # s17.2.2: further final responses from the TU are discarded in Completed
    assert not tx.send_response(answer(tx.request, 500), 4.0)
    assert tx.messages_to_send() == []


# -- the ACK for a 3xx-6xx and transaction matching ------------------------------------------


def test_s17_1_1_3_ack_for_a_failure() -> None:
    routes = b"Route: <sip:127.0.0.1:5080;lr>\r\nRoute: <sip:127.0.0.1:5090;lr>\r\n"
    invite = request(f1_invite().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + routes))
    busy = answer(invite, 486)
    ack = ack_for_failure(invite, busy)
    # Request-URI, Call-ID, From, CSeq number and Route of the INVITE; one Via, the INVITE's top
    # one (same branch); To of the response (with its tag); method ACK.
    assert (ack.method, ack.uri) == ("ACK", invite.uri)
    assert ack.headers.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK74bf9"]
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("Call-ID") == invite.headers.get("Call-ID")
    assert ack.headers.get("To") == f"Bob <sip:bob@127.0.0.1:5070>;tag={BOB_TAG}"
    assert str(ack.cseq) == "1 ACK"
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert ack.body == b""
    # and it matches the INVITE's server transaction (s17.2.3)
    assert server_key(request(ack.serialize())) == server_key(invite)


def test_s17_2_3_server_transaction_matching() -> None:
    invite = request(f1_invite())
    key = server_key(invite)
    assert key == ("3261", "z9hG4bK74bf9", "127.0.0.1", "5060", "INVITE")
    cancel = request(
        f1_invite().replace(b"INVITE sip:", b"CANCEL sip:").replace(b"1 INVITE", b"1 CANCEL")
    )
    assert server_key(cancel) == (*key[:-1], "CANCEL")  # its own transaction (s9.2)
    other_sender = request(f1_invite().replace(b"127.0.0.1:5060;", b"127.0.0.1:5062;"))
    assert server_key(other_sender) != key  # same branch, other sent-by


def test_s17_2_3_rfc2543_matching_without_the_magic_cookie() -> None:
    old = f1_invite().replace(b"branch=z9hG4bK74bf9", b"branch=74bf9")
    invite = request(old)
    key = server_key(invite)
    assert key[0] == "2543"
    # the ACK (with the To tag the INVITE lacked) still finds the INVITE
    ack = ack_for_failure(invite, answer(invite, 486))
    assert server_key(request(ack.serialize())) == key


def test_s17_1_3_client_transaction_matching() -> None:
    tx = client(f1_invite())
    assert tx.branch.startswith(MAGIC_COOKIE)
    assert client_key(answer(tx.request, 180)) == (tx.branch, "INVITE") == client_key(tx.request)
    ack = ack_for_failure(tx.request, answer(tx.request, 486))
    assert client_key(ack) == (tx.branch, "INVITE")
    assert client_key(request(s11_options())) == ("z9hG4bKhjhs8ass877", "OPTIONS")


def test_new_branches_carry_the_magic_cookie_and_differ() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(b.startswith(MAGIC_COOKIE) for b in branches)


def test_make_server_response() -> None:
    tx = server(f1_invite())
    ringing = make_server_response(tx, 180, to_tag=BOB_TAG)
    assert (ringing.status, ringing.reason, ringing.to.tag) == (180, "Ringing", BOB_TAG)


# -- Hypothesis: random inputs and timers against every machine ----------------------------------

STATUSES = [100, 180, 183, 200, 202, 302, 404, 486, 487, 503, 603]
Step = tuple[str, float]
TIMER_STEPS = st.one_of(
    st.tuples(st.just("timer"), st.just(0.0)),
    st.tuples(st.just("wait"), st.floats(0.0, 40.0, allow_nan=False)),
    st.tuples(st.just("transport error"), st.just(0.0)),
)
CLIENT_STEPS = st.one_of(st.tuples(st.just("response"), st.sampled_from(STATUSES)), TIMER_STEPS)
SERVER_STEPS = st.one_of(
    st.tuples(st.sampled_from(["request", "ack"]), st.just(0.0)),
    st.tuples(st.just("tu"), st.sampled_from(STATUSES)),
    TIMER_STEPS,
)
TU_INPUT = {
    In.PROVISIONAL: In.TU_PROVISIONAL,
    In.SUCCESS: In.TU_SUCCESS,
    In.FAILURE: In.TU_FAILURE,
}
# Timer inputs, to check the state changes a firing (or several) may make.
TIMER_CLOSURE = {
    machine.name: {key: next_state for key, (next_state, _) in machine.figure.items()}
    for machine in MACHINES
}


def reachable_by_timers(machine: Machine, start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for timer in TIMERS:
            next_state = TIMER_CLOSURE[machine.name].get((state, timer))
            if next_state is not None and next_state not in seen:
                seen.add(next_state)
                todo.append(next_state)
    return seen


def check_events(
    machine: Machine, tx: ClientTransaction | ServerTransaction, log: list[TransactionEvent]
) -> None:
    """Events come in a legal order: responses to the TU, a timeout or transport failures, then
    Terminated, once, last - and Terminated exactly when the state is. Only Accepted (RFC 6026
    figure 7) survives a transport error; nothing survives a timeout."""
    names = [type(e).__name__ for e in log]
    assert names.count("TransactionTerminated") == tx.terminated
    if tx.terminated:
        assert names[-1] == "TransactionTerminated"
    for i, name in enumerate(names):
        if name == "TransactionTimedOut":
            assert names[i + 1 :] == ["TransactionTerminated"]
        elif name == "TransportFailed":
            assert set(names[i + 1 :]) <= {"TransportFailed", "TransactionTerminated"}
            if names[i + 1 :] != ["TransactionTerminated"]:
                assert machine.name == "INVITE server"  # the one machine with such a loop
    statuses = [e.response.status for e in log if isinstance(e, ResponseReceived)]
    if isinstance(tx, ServerTransaction):
        assert statuses == []
        return
    finals = [i for i, status in enumerate(statuses) if status >= 200]
    if finals:
        first = statuses[finals[0]]
        after = statuses[finals[0] + 1 :]
        if tx.is_invite and first < 300:
            assert all(200 <= status < 300 for status in after)  # RFC 6026: only 2xx
        else:
            assert after == []  # a final response ends what the TU hears


def run_machine(machine: Machine, reliable: bool, steps: list[Step]) -> None:
    driver = Driver(machine.make(reliable))
    tx = driver.tx
    log: list[TransactionEvent] = []
    tu_responses: list[Response] = []
    for kind, value in steps:
        before = tx.state
        timer_before = tx.get_timer()
        if kind == "response":
            assert isinstance(tx, ClientTransaction)
            tx.receive_response(answer(tx.request, int(value)), driver.now)
            event = classify(int(value))
        elif kind == "tu":
            assert isinstance(tx, ServerTransaction)
            response = answer(tx.request, int(value))
            event = TU_INPUT[classify(int(value))]
            sent_ok = tx.send_response(response, driver.now)
            assert sent_ok == ((before, event) in machine.table)
            if sent_ok:
                tu_responses.append(response)
        elif kind in ("request", "ack"):
            assert isinstance(tx, ServerTransaction)
            event = In.ACK if kind == "ack" else In.REQUEST
            final = tx.last_response or answer(tx.request, 486)
            tx.receive_request(
                ack_for_failure(tx.request, final) if kind == "ack" else tx.request, driver.now
            )
        elif kind == "transport error":
            event = In.TRANSPORT_ERROR
            tx.transport_error(driver.now)
        else:
            event = In.RETRANSMIT_TIMER  # any timer
            if kind == "timer":
                if timer_before is None:
                    continue
                driver.now = max(driver.now, timer_before)
            else:
                driver.now += value
            tx.handle_timer(driver.now)
            # nothing due is left behind
            after_timer = tx.get_timer()
            assert after_timer is None or after_timer > driver.now
        sent = tx.messages_to_send()
        events = drain(tx)
        log.extend(events)

        # never sends, nor reports, after Terminated
        if before is S.TERMINATED:
            assert (sent, events, tx.state) == ([], [], S.TERMINATED)
        # the state moves only along the figure's arcs
        if kind in ("timer", "wait"):
            assert tx.state in reachable_by_timers(machine, before)
        elif tx.state is not before:
            assert machine.figure[(before, event)][0] is tx.state
        # what goes out
        if kind in ("ack", "transport error"):
            assert sent == []  # an ACK is never answered (s17)
        elif kind == "request":
            assert sent in ([], [tx.last_response])
        elif kind == "tu":
            assert sent == tu_responses[-1:] if sent_ok else sent == []
        for message in sent:
            if isinstance(tx, ClientTransaction):
                if isinstance(message, Request) and message.method == "ACK":
                    assert kind == "response" and value >= 300 and tx.is_invite
                    assert message.top_via.branch == tx.branch
                else:
                    assert message is tx.request
                    assert not reliable or kind not in ("timer", "wait")  # no Timer A/E
            else:
                assert any(message is r for r in tu_responses)
                if kind in ("timer", "wait"):  # Timer G: a 3xx-6xx, over datagrams only
                    assert not reliable and tx.is_invite and message.status >= 300
        check_events(machine, tx, log)
        # terminated transactions hold no timer; live ones that must end by themselves do
        if tx.terminated:
            assert tx.get_timer() is None
        elif tx.state in (S.COMPLETED, S.CONFIRMED, S.ACCEPTED) or (
            isinstance(tx, ClientTransaction) and tx.state is not S.PROCEEDING
        ):
            assert tx.get_timer() is not None
        elif isinstance(tx, ClientTransaction) and not tx.is_invite:
            assert tx.get_timer() is not None  # Timer F runs in Proceeding too


PROPERTY = settings(max_examples=150, deadline=None, database=None)


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("machine", MACHINES[:2], ids=str)
@PROPERTY
@given(steps=st.lists(CLIENT_STEPS, max_size=30))
def test_client_machines_under_random_inputs(
    machine: Machine, reliable: bool, steps: list[Step]
) -> None:
    run_machine(machine, reliable, steps)


@pytest.mark.parametrize("reliable", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("machine", MACHINES[2:], ids=str)
@PROPERTY
@given(steps=st.lists(SERVER_STEPS, max_size=30))
def test_server_machines_under_random_inputs(
    machine: Machine, reliable: bool, steps: list[Step]
) -> None:
    run_machine(machine, reliable, steps)


@pytest.mark.parametrize(
    "table", [CLIENT_INVITE, CLIENT_NON_INVITE, SERVER_INVITE, SERVER_NON_INVITE]
)
def test_steps_hold_every_pair_of_the_table_and_no_other(table: Table) -> None:
    """What `_step` looks a pair up in (the table by state, then input) is the table."""
    steps = steps_of(table)
    assert {(state, given): t for state, by in steps.items() for given, t in by.items()} == table
    for transaction in (
        ClientTransaction(request(s11_options()), reliable=False),
        ServerTransaction(request(s11_options()), reliable=False),
    ):
        assert steps_of(transaction.table) == transaction.steps
