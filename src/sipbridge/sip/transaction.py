"""SIP transactions (RFC 3261 s17, with the RFC 6026 "Accepted" state), sans-IO.

Each transaction is a state machine driven by three kinds of input: messages (a retransmitted
request, a response), the transaction user (a response to send), and timers. Time is passed in;
`get_timer()` says when `handle_timer(now)` must next be called. What to transmit comes out of
`messages_to_send()`, what the user must learn out of `next_event()`.

The transitions are data: `CLIENT_INVITE`, `CLIENT_NON_INVITE`, `SERVER_INVITE` and
`SERVER_NON_INVITE` map (state, input) to (actions, next state), following RFC 3261 figures 5-8
as amended by RFC 6026 figures 5 and 7. A pair missing from a table is not a legal input in that
state and is ignored (a stray response or a late timer), which is what s17 asks for.

INVITE client (fig. 5 + RFC 6026):          non-INVITE client (fig. 6):
  Calling --1xx--> Proceeding                 Trying --1xx--> Proceeding
  Calling/Proceeding --2xx--> Accepted        Trying/Proceeding --final--> Completed
  Calling/Proceeding --3xx-6xx/ACK--> Completed                      --Timer F--> Terminated
  Calling --Timer B--> Terminated             Completed --Timer K--> Terminated
  Completed --Timer D--> Terminated
  Accepted --Timer M--> Terminated

INVITE server (fig. 7 + RFC 6026):          non-INVITE server (fig. 8):
  Proceeding --TU 2xx--> Accepted             Trying --TU 1xx--> Proceeding
  Proceeding --TU 3xx-6xx--> Completed        Trying/Proceeding --TU final--> Completed
  Completed --ACK--> Confirmed                Completed --Timer J--> Terminated
  Completed --Timer H--> Terminated
  Confirmed --Timer I--> Terminated
  Accepted --Timer L--> Terminated
"""

from __future__ import annotations

from dataclasses import dataclass
from math import inf
from typing import Final

from sipbridge.sip.headers import MAGIC_COOKIE
from sipbridge.sip.message import Request, Response, atomic_tuple, make_response, parse_message
from sipbridge.sip.states import StateEnum
from sipbridge.sip.tokens import token_hex

# A request's (Call-ID, From tag, CSeq number, CSeq method), to spot merged requests (s8.2.2.2).
# Typed as a tuple of any length: compiled, a tuple of fixed types is a C struct, boxed into a
# new tuple (one the collector walks) wherever it is stored or looked up (issue 18).
MergeKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSettings:
    """RFC 3261 s17.1.1.1 and table 4: T1 RTT estimate, T2 max non-INVITE interval, T4 max
    time a message stays in the network."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        return 64 * self.t1  # Timers B, F, H, J (unreliable), L, M


class State(StateEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(StateEnum):
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    REQUEST = "retransmitted request"
    ACK = "ACK"
    TU_PROVISIONAL = "TU 1xx"
    TU_SUCCESS = "TU 2xx"
    TU_FAILURE = "TU 3xx-6xx"
    RETRANSMIT_TIMER = "Timer A/E/G"
    TIMEOUT_TIMER = "Timer B/F/H"
    LINGER_TIMER = "Timer D/I/J/K/L/M"
    TRANSPORT_ERROR = "transport error"


class Action(StateEnum):
    PASS_UP = "pass the response to the TU"
    SEND_ACK = "send ACK for the final response"
    RETRANSMIT = "retransmit the request"
    SEND = "send the TU's response"
    RESEND_LAST = "resend the last response"
    RESTART_RETRANSMIT = "start retransmitting (Timer G) the final response"
    TIMED_OUT = "tell the TU the transaction timed out"
    TRANSPORT_FAILED = "tell the TU the transport failed"
    STOP_RETRANSMIT = "stop retransmitting"


S, In, A = State, Input, Action
Table = dict[tuple[State, Input], tuple[tuple[Action, ...], State]]

CLIENT_INVITE: Table = {
    (S.CALLING, In.RETRANSMIT_TIMER): ((A.RETRANSMIT,), S.CALLING),
    (S.CALLING, In.TIMEOUT_TIMER): ((A.TIMED_OUT,), S.TERMINATED),
    (S.CALLING, In.PROVISIONAL): ((A.STOP_RETRANSMIT, A.PASS_UP), S.PROCEEDING),
    (S.CALLING, In.SUCCESS): ((A.STOP_RETRANSMIT, A.PASS_UP), S.ACCEPTED),
    (S.CALLING, In.FAILURE): ((A.STOP_RETRANSMIT, A.SEND_ACK, A.PASS_UP), S.COMPLETED),
    (S.CALLING, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.PROCEEDING, In.PROVISIONAL): ((A.PASS_UP,), S.PROCEEDING),
    (S.PROCEEDING, In.SUCCESS): ((A.PASS_UP,), S.ACCEPTED),
    (S.PROCEEDING, In.FAILURE): ((A.SEND_ACK, A.PASS_UP), S.COMPLETED),
    # The "Timer B" of a proceeding INVITE is the TU's business (s17.1.1.2): no transition.
    (S.COMPLETED, In.FAILURE): ((A.SEND_ACK,), S.COMPLETED),
    (S.COMPLETED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer D
    (S.COMPLETED, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.ACCEPTED, In.SUCCESS): ((A.PASS_UP,), S.ACCEPTED),  # RFC 6026: 2xx retransmissions
    (S.ACCEPTED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer M
}

CLIENT_NON_INVITE: Table = {
    (S.TRYING, In.RETRANSMIT_TIMER): ((A.RETRANSMIT,), S.TRYING),
    (S.TRYING, In.TIMEOUT_TIMER): ((A.TIMED_OUT,), S.TERMINATED),
    (S.TRYING, In.PROVISIONAL): ((A.PASS_UP,), S.PROCEEDING),
    (S.TRYING, In.SUCCESS): ((A.STOP_RETRANSMIT, A.PASS_UP), S.COMPLETED),
    (S.TRYING, In.FAILURE): ((A.STOP_RETRANSMIT, A.PASS_UP), S.COMPLETED),
    (S.TRYING, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.PROCEEDING, In.RETRANSMIT_TIMER): ((A.RETRANSMIT,), S.PROCEEDING),
    (S.PROCEEDING, In.TIMEOUT_TIMER): ((A.TIMED_OUT,), S.TERMINATED),
    (S.PROCEEDING, In.PROVISIONAL): ((A.PASS_UP,), S.PROCEEDING),
    (S.PROCEEDING, In.SUCCESS): ((A.STOP_RETRANSMIT, A.PASS_UP), S.COMPLETED),
    (S.PROCEEDING, In.FAILURE): ((A.STOP_RETRANSMIT, A.PASS_UP), S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.COMPLETED, In.SUCCESS): ((), S.COMPLETED),  # absorbed
    (S.COMPLETED, In.FAILURE): ((), S.COMPLETED),
    (S.COMPLETED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer K
}

SERVER_INVITE: Final[Table] = {
    (S.PROCEEDING, In.REQUEST): ((A.RESEND_LAST,), S.PROCEEDING),
    (S.PROCEEDING, In.TU_PROVISIONAL): ((A.SEND,), S.PROCEEDING),
    (S.PROCEEDING, In.TU_SUCCESS): ((A.SEND,), S.ACCEPTED),
    (S.PROCEEDING, In.TU_FAILURE): ((A.SEND, A.RESTART_RETRANSMIT), S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.COMPLETED, In.REQUEST): ((A.RESEND_LAST,), S.COMPLETED),
    (S.COMPLETED, In.RETRANSMIT_TIMER): ((A.RESEND_LAST,), S.COMPLETED),  # Timer G
    (S.COMPLETED, In.TIMEOUT_TIMER): ((A.TIMED_OUT,), S.TERMINATED),  # Timer H: no ACK
    (S.COMPLETED, In.ACK): ((A.STOP_RETRANSMIT,), S.CONFIRMED),
    (S.COMPLETED, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.CONFIRMED, In.ACK): ((), S.CONFIRMED),
    (S.CONFIRMED, In.REQUEST): ((), S.CONFIRMED),
    (S.CONFIRMED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer I
    (S.ACCEPTED, In.REQUEST): ((), S.ACCEPTED),  # RFC 6026: absorb; the core resends 2xx
    (S.ACCEPTED, In.TU_SUCCESS): ((A.SEND,), S.ACCEPTED),  # 2xx retransmission by the core
    (S.ACCEPTED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer L
    (S.ACCEPTED, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.ACCEPTED),  # RFC 6026 fig. 7
}

SERVER_NON_INVITE: Final[Table] = {
    (S.TRYING, In.REQUEST): ((), S.TRYING),
    (S.TRYING, In.TU_PROVISIONAL): ((A.SEND,), S.PROCEEDING),
    (S.TRYING, In.TU_SUCCESS): ((A.SEND,), S.COMPLETED),
    (S.TRYING, In.TU_FAILURE): ((A.SEND,), S.COMPLETED),
    (S.PROCEEDING, In.REQUEST): ((A.RESEND_LAST,), S.PROCEEDING),
    (S.PROCEEDING, In.TU_PROVISIONAL): ((A.SEND,), S.PROCEEDING),
    (S.PROCEEDING, In.TU_SUCCESS): ((A.SEND,), S.COMPLETED),
    (S.PROCEEDING, In.TU_FAILURE): ((A.SEND,), S.COMPLETED),
    (S.PROCEEDING, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
    (S.COMPLETED, In.REQUEST): ((A.RESEND_LAST,), S.COMPLETED),
    (S.COMPLETED, In.LINGER_TIMER): ((), S.TERMINATED),  # Timer J
    (S.COMPLETED, In.TRANSPORT_ERROR): ((A.TRANSPORT_FAILED,), S.TERMINATED),
}

# Each table by state, then input (`steps_of`): what `_step` looks a pair up in.
Steps = dict[State, dict[Input, tuple[tuple[Action, ...], State]]]


def steps_of(table: Table) -> Steps:
    """`table` by state, then input: a pair's transition found without making the pair (a
    tuple allocated and hashed for every step, compiled; issue 18)."""
    steps: Steps = {}
    for (state, given), transition in table.items():
        steps.setdefault(state, {})[given] = transition
    return steps


CLIENT_INVITE_STEPS = steps_of(CLIENT_INVITE)
CLIENT_NON_INVITE_STEPS = steps_of(CLIENT_NON_INVITE)
SERVER_INVITE_STEPS: Final = steps_of(SERVER_INVITE)
SERVER_NON_INVITE_STEPS: Final = steps_of(SERVER_NON_INVITE)


# -- events ---------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class ResponseReceived:
    transaction: ClientTransaction
    response: Response


@dataclass(slots=True, kw_only=True)
class TransactionTimedOut:
    transaction: ClientTransaction | ServerTransaction


@dataclass(slots=True, kw_only=True)
class TransportFailed:
    transaction: ClientTransaction | ServerTransaction


@dataclass(slots=True, init=False)
class TransactionTerminated:
    # (its own `__init__`, compiled by mypyc: one for every transaction, issue 18)
    transaction: ClientTransaction | ServerTransaction

    def __init__(self, *, transaction: ClientTransaction | ServerTransaction) -> None:
        self.transaction = transaction


TransactionEvent = ResponseReceived | TransactionTimedOut | TransportFailed | TransactionTerminated


def new_branch() -> str:
    return MAGIC_COOKIE + token_hex(10)


def classify(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    return Input.SUCCESS if status < 300 else Input.FAILURE


class _Transaction:
    # Slots, and nothing queued kept between inputs: thousands of transactions linger for
    # 32 s after their calls (Timers J, L...), and each object they keep is one more for the
    # cyclic garbage collector to walk.
    # Its deadlines are three floats (`inf`: not running), not a dict: one object fewer for
    # each of them, and no dictionary to search on every message (issue 18).
    __slots__ = (
        "_events",
        "_interval",
        "_linger_at",
        "_outbox",
        "_retransmit_at",
        "_timeout_at",
        "peer",
        "reliable",
        "request",
        "state",
        "steps",
        "table",
        "timers",
    )  # fmt: skip
    table: Table
    steps: Steps  # `table` by state (`steps_of`)
    state: State

    def __init__(self, request: Request, *, reliable: bool, timers: TimerSettings) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        # what to send, once there is any (bytes: a response resent as it was sent)
        self._outbox: list[Request | Response | bytes] | None = None
        self._events: list[TransactionEvent] | None = None
        # one deadline per kind of timer (inf: not running); get_timer() is their minimum
        self._retransmit_at = inf  # Timers A, E, G
        self._timeout_at = inf  # Timers B, F, H
        self._linger_at = inf  # Timers D, I, J, K, L, M
        self._interval = timers.t1
        # where its messages go (the endpoint's `Peer`, set by the endpoint that keeps it)
        self.peer: object = None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def _transmit(self, message: Request | Response | bytes) -> None:
        if self._outbox is None:
            self._outbox = [message]
        else:
            self._outbox.append(message)

    def _tell(self, event: TransactionEvent) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def messages_to_send(self) -> list[Request | Response | bytes]:
        out = self._outbox
        if out is None:
            return []
        self._outbox = None
        return out

    def next_event(self) -> TransactionEvent | None:
        events = self._events
        if not events:
            return None
        event = events.pop(0)
        if not events:
            self._events = None
        return event

    def get_timer(self) -> float | None:
        earliest = min(self._retransmit_at, self._timeout_at)  # (min of two: compiled inline)
        earliest = min(earliest, self._linger_at)
        return None if earliest == inf else earliest

    def deadline(self, timer: Input) -> float | None:
        """When a timer (RETRANSMIT_TIMER, TIMEOUT_TIMER, LINGER_TIMER) fires; None when it
        is not running."""
        if timer is Input.RETRANSMIT_TIMER:
            at = self._retransmit_at
        elif timer is Input.TIMEOUT_TIMER:
            at = self._timeout_at
        elif timer is Input.LINGER_TIMER:
            at = self._linger_at
        else:
            return None
        return None if at == inf else at

    def handle_timer(self, now: float) -> None:
        """Run the timers due by `now`, earliest first (on a tie: retransmit, timeout,
        linger); each once, as it was when this began."""
        if self._retransmit_at > now and self._timeout_at > now:
            # the common case: only a linger timer (I, J, L...) to run, or none
            if self._linger_at <= now and not self.terminated:
                self._linger_at = inf
                self._step(Input.LINGER_TIMER, now)
            return
        due = sorted(
            (at, order, timer)
            for order, (at, timer) in enumerate(
                (
                    (self._retransmit_at, Input.RETRANSMIT_TIMER),
                    (self._timeout_at, Input.TIMEOUT_TIMER),
                    (self._linger_at, Input.LINGER_TIMER),
                )
            )
            if at <= now
        )
        for at, _, timer in due:
            # (an earlier one may have ended the transaction, or stopped or moved this one)
            if self.terminated or self.deadline(timer) != at:
                continue
            self._stop(timer)
            self._step(timer, now)

    def _stop(self, timer: Input) -> None:
        if timer is Input.RETRANSMIT_TIMER:
            self._retransmit_at = inf
        elif timer is Input.TIMEOUT_TIMER:
            self._timeout_at = inf
        else:
            self._linger_at = inf

    def transport_error(self, now: float) -> None:
        self._step(Input.TRANSPORT_ERROR, now)

    def _step(self, event: Input, now: float, message: Response | None = None) -> bool:
        """Apply the table; False when the input is not legal in this state (ignored)."""
        by_input = self.steps.get(self.state)
        transition = None if by_input is None else by_input.get(event)
        if transition is None:
            return False
        actions, next_state = transition
        for action in actions:
            self._act(action, now, message)
        self._enter(next_state, now)
        return True

    def _act(self, action: Action, now: float, message: Response | None) -> None:
        raise NotImplementedError

    def _enter(self, state: State, now: float) -> None:
        if state is self.state:
            return
        self.state = state
        self._on_enter(state, now)
        if state is State.TERMINATED:
            self._retransmit_at = self._timeout_at = self._linger_at = inf
            self._tell(TransactionTerminated(transaction=self))  # type: ignore[arg-type]

    def _on_enter(self, state: State, now: float) -> None:
        raise NotImplementedError

    def _linger(self, now: float, unreliable_wait: float) -> None:
        """Timers D, I, J, K: wait for retransmissions only on unreliable transports."""
        wait = 0.0 if self.reliable else unreliable_wait
        self._linger_at = now + wait


class ClientTransaction(_Transaction):
    """Sends a request and collects its responses (s17.1)."""

    __slots__ = ("branch", "is_invite", "last_final")

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers or TimerSettings())
        self.is_invite = request.method == "INVITE"
        self.table = CLIENT_INVITE if self.is_invite else CLIENT_NON_INVITE
        self.steps = CLIENT_INVITE_STEPS if self.is_invite else CLIENT_NON_INVITE_STEPS
        self.state = State.CALLING if self.is_invite else State.TRYING
        self.branch = request.top_via.branch or ""
        self.last_final: Response | None = None

    def start(self, now: float) -> None:
        self._transmit(self.request)
        if not self.reliable:  # Timer A / E
            self._retransmit_at = now + self.timers.t1
        self._timeout_at = now + self.timers.timeout  # Timer B / F

    def receive_response(self, response: Response, now: float) -> None:
        self._step(classify(response.status), now, response)

    def _act(self, action: Action, now: float, message: Response | None) -> None:
        if action is Action.RETRANSMIT:
            self._transmit(self.request)
            if self.is_invite:
                self._interval *= 2
            else:
                cap = self.timers.t2
                self._interval = min(self._interval * 2, cap)
                if self.state is State.PROCEEDING:
                    self._interval = cap
            self._retransmit_at = now + self._interval
        elif action is Action.STOP_RETRANSMIT:
            self._retransmit_at = inf
        elif action is Action.PASS_UP:
            assert message is not None
            self._tell(ResponseReceived(transaction=self, response=message))
        elif action is Action.SEND_ACK:
            assert message is not None
            self.last_final = message
            self._transmit(ack_for_failure(self.request, message))
        elif action is Action.TIMED_OUT:
            self._tell(TransactionTimedOut(transaction=self))
        elif action is Action.TRANSPORT_FAILED:
            self._tell(TransportFailed(transaction=self))

    def _on_enter(self, state: State, now: float) -> None:
        # A non-INVITE in Proceeding keeps Timer E (at T2) and Timer F (s17.1.2.2).
        if state is State.PROCEEDING and self.is_invite:
            self._timeout_at = inf
        elif state is State.COMPLETED:
            self._timeout_at = self._retransmit_at = inf
            # Timer D (INVITE, >= 32 s) / Timer K (T4)
            self._linger(now, 32.0 if self.is_invite else self.timers.t4)
        elif state is State.ACCEPTED:
            self._timeout_at = inf
            self._linger_at = now + self.timers.timeout  # Timer M


class ServerTransaction(_Transaction):
    """Absorbs retransmitted requests and (re)sends the TU's responses (s17.2)."""

    __slots__ = (
        "_last",
        "_last_wire",
        "final_reason",
        "final_status",
        "is_invite",
        "key",
        "linger",
        "merge_key",
    )

    def __init__(
        self, request: Request, *, reliable: bool, timers: TimerSettings | None = None
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers or TimerSettings())
        self.is_invite = request.method == "INVITE"
        self.table = SERVER_INVITE if self.is_invite else SERVER_NON_INVITE
        self.steps = SERVER_INVITE_STEPS if self.is_invite else SERVER_NON_INVITE_STEPS
        self.state = State.PROCEEDING if self.is_invite else State.TRYING
        self._last: Response | None = None  # the last response sent (see `last_response`)
        self._last_wire: bytes | None = None  # ... or its bytes alone (`sent`)
        # the final response's status and reason, once sent (0, "" before)
        self.final_status = 0
        self.final_reason = ""
        # set by the endpoint that keeps it: its keys there (`server_key`, the merge key)
        self.key: tuple[str, ...] | None = None
        self.merge_key: MergeKey | None = None
        # How long it absorbs retransmissions after its final response on an unreliable
        # transport (Timers J and L): 64*T1; the endpoint makes it T4 while it is crowded.
        self.linger = self.timers.timeout

    @property
    def last_response(self) -> Response | None:
        """The last response sent, None before any. (A non-INVITE's final is kept as the bytes
        it was sent as, see `sent`, and parsed again when read here.)"""
        last = self._last
        if last is None and self._last_wire is not None:
            parsed = parse_message(self._last_wire)
            assert isinstance(parsed, Response)
            return parsed
        return last

    @property
    def responded(self) -> bool:
        """Whether any response was sent (`last_response is not None`, without making it)."""
        return self._last is not None or self._last_wire is not None

    def last_status(self) -> tuple[int, str]:
        """The last response's status and reason, (0, "") before any (read without parsing)."""
        if self.final_status:
            return self.final_status, self.final_reason
        last = self._last
        return (0, "") if last is None else (last.status, last.reason or "")

    def last_sent_is(self, response: Response) -> bool:
        """Whether `response` is the last response sent (`last_response is response`)."""
        return self._last is response

    def sent(self, response: Response, wire: bytes) -> None:
        """The transport user sent `response` as `wire`. A final response is the last this
        transaction sends (s17.2.1, s17.2.2): what it keeps for its linger (Timers J and L, up
        to 32 s), to resend when the request is retransmitted, is then these bytes and the
        status and reason (`final_status`, `final_reason`, which the call's end reads), not the
        response's objects: each of them one more for the garbage collector to walk, and freed
        seconds later, cold (issue 18). A CANCEL after the final, which needs its To tag, reads
        `last_response`, parsed again from the bytes."""
        if response is self._last and response.status >= 200:
            self._last = None
            self._last_wire = wire
            self.final_status = response.status
            self.final_reason = response.reason or ""

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmission of our request, or (INVITE) the ACK for a non-2xx final."""
        self._step(Input.ACK if request.method == "ACK" else Input.REQUEST, now)

    def send_response(self, response: Response, now: float) -> bool:
        """Send the TU's response; False when the state allows none (e.g. after a final)."""
        status = response.status
        if status < 200:
            tu_input = Input.TU_PROVISIONAL
        else:
            tu_input = Input.TU_SUCCESS if status < 300 else Input.TU_FAILURE
        return self._step(tu_input, now, response)

    def _act(self, action: Action, now: float, message: Response | None) -> None:
        if action is Action.SEND:
            assert message is not None
            self._last = message
            self._last_wire = None
            self._transmit(message)
        elif action is Action.RESEND_LAST:
            if self._last_wire is not None:
                self._transmit(self._last_wire)
            elif self._last is not None:
                self._transmit(self._last)
        elif action is Action.RESTART_RETRANSMIT:
            if not self.reliable:  # Timer G
                self._interval = self.timers.t1
                self._retransmit_at = now + self._interval
            self._timeout_at = now + self.timers.timeout  # Timer H
        elif action is Action.STOP_RETRANSMIT:
            self._retransmit_at = self._timeout_at = inf
        elif action is Action.TIMED_OUT:
            self._tell(TransactionTimedOut(transaction=self))
        elif action is Action.TRANSPORT_FAILED:
            self._tell(TransportFailed(transaction=self))

    def handle_timer(self, now: float) -> None:
        due = self._retransmit_at
        super().handle_timer(now)
        if due <= now and self.state is State.COMPLETED:
            # Timer G doubles up to T2 (s17.2.1)
            self._interval = min(self._interval * 2, self.timers.t2)
            self._retransmit_at = now + self._interval

    def _on_enter(self, state: State, now: float) -> None:
        if state is State.CONFIRMED:
            self._linger(now, self.timers.t4)  # Timer I
        elif state is State.COMPLETED and not self.is_invite:
            self._linger(now, self.linger)  # Timer J
        elif state is State.ACCEPTED:
            self._linger_at = now + self.linger  # Timer L
        if state is State.COMPLETED or state is State.ACCEPTED:
            # The final response is sent: what is left is absorbing retransmissions, matched
            # by key, for up to 32 s. What was parsed of the request goes (parsed again if the
            # TU reads it again): the objects each call keeps that long (issue 18).
            self.request.headers.compact()


def ack_for_failure(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 3xx-6xx (s17.1.1.3): same branch, Request-URI,
    Call-ID, From, CSeq number and Route; To from the response."""
    ack = Request(method="ACK", uri=invite.uri)
    vias = invite.headers.get_all("Via")
    if vias:
        ack.headers.add("Via", vias[0])
    for name in ("Max-Forwards", "From", "Call-ID"):
        value = invite.headers.get(name)
        if value is not None:
            ack.headers.add(name, value)
    ack.headers.add("To", response.headers.get("To") or "")
    ack.headers.add("CSeq", f"{invite.cseq.seq} ACK")
    for route in invite.headers.get_all("Route"):
        ack.headers.add("Route", route)
    return ack


def server_key(request: Request) -> tuple[str, ...]:
    """The key matching a request to a server transaction (s17.2.3).

    RFC 3261 branches: (branch, sent-by, method), with ACK matching its INVITE and CANCEL its
    own transaction. RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq, top Via (and the To
    tag, which only the ACK carries, is left out so the ACK finds its INVITE).
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if via.is_rfc3261:
        host, port = via.sent_by
        key: tuple[str, ...] = atomic_tuple(
            "3261", via.branch or "", host, _port_text(port), method
        )
        return key
    return (
        "2543",
        str(request.uri),
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        str(via),
        method,
    )


# Ports as text, for the keys (bounded: cleared when full)
_PORT_TEXTS: dict[int, str] = {}


def _port_text(port: int | None) -> str:
    """`str(port or "")`, each port written out once (not for every request, issue 18)."""
    if not port:
        return ""
    text = _PORT_TEXTS.get(port)
    if text is None:
        if len(_PORT_TEXTS) >= 1024:
            _PORT_TEXTS.clear()
        text = _PORT_TEXTS[port] = str(port)
    return text


def client_key(message: Request | Response) -> tuple[str, str]:
    """Responses match the client transaction by top Via branch and CSeq method (s17.1.3)."""
    method = message.cseq.method
    if method == "ACK":
        method = "INVITE"
    return (message.top_via.branch or "", method)


def make_server_response(
    transaction: ServerTransaction, status: int, reason: str = "", to_tag: str | None = None
) -> Response:
    return make_response(transaction.request, status, reason, to_tag=to_tag)
