"""One call's life, inbound or outbound: a state, a transition table, and the deadline that ends it.

The table is the whole of the call's logic above SIP (h11's `_state.py` is the model): a pair of
(state, input) that is not in it is a `CallStateError`, never a silent change. The runner in
`server/` feeds inputs (what SIP, the room and the media did) and the time; it asks
`get_timer()` for the next deadline, calls `handle_timer(now)` when it passes, and carries out
the `DeadlineReached` events that come out. No I/O, no clock: time is an argument.

    outbound (CreateSIPParticipant)          inbound (an INVITE matched to a rule)

    DIALING --RING--> RINGING                RINGING (in the room, 180 every second)
       |                 |                   PIN_ENTRY --PIN_ACCEPTED--> CONNECTING
       +-----ANSWER------+--ANSWER--> CONNECTING --MEDIA_UP--> ACTIVE <--HOLD/RESUME--> HOLD
                                          |
                                          +--AUTOMATE--> AUTOMATION --AUTOMATION_DONE--> ACTIVE

    any live state --HANG_UP--> ENDING (we sent BYE, CANCEL or a final response)
    any state but ENDED --FINISHED--> ENDED (the SIP side is over: BYE, CANCEL, failure, done)

Invariant (checked by `get_timer`): a live call always has a deadline that ends it - the ringing
timeout while it rings, the PIN timeout while a PIN is typed, the maximum duration once
answered, the ending timeout while the far end is told. `sip.callStatus` follows the state
(`status`), so the participant attribute can never disagree with the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit.protocol import models

# An Enum base whose members hash by identity, not by `Enum.__hash__` in Python: the runner looks
# (state, input) and deadlines up in dicts about forty times a call (issue 18).
from sipbridge.sip.states import StateEnum

Reason = models.DisconnectReason

# RFC 3261 s17.1.2.2: a BYE or CANCEL transaction gives up after 64*T1 = 32 s; past it the far
# end has had every chance to hear that the call is over.
ENDING_TIMEOUT_S = 32.0
PIN_TIMEOUT_S = 30.0  # to type a PIN once the prompt starts
DEFAULT_RINGING_TIMEOUT_S = 180.0
DEFAULT_MAX_CALL_DURATION_S = 24 * 3600.0


class Direction(StateEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CallState(StateEnum):
    DIALING = "dialing"  # outbound: the INVITE is out, nothing heard yet
    RINGING = "ringing"  # inbound: in the room, 180s; outbound: the far end rings (18x)
    PIN_ENTRY = "pin_entry"  # inbound: answered to collect a PIN, in no room yet
    CONNECTING = "connecting"  # answered; waiting for the ACK or the first packet
    AUTOMATION = "automation"  # outbound: answered, playing the request's DTMF string
    ACTIVE = "active"
    HOLD = "hold"  # the phone put the call on hold (sendonly/inactive re-INVITE)
    ENDING = "ending"  # we ended it (BYE, CANCEL, a final response); the far end is told
    ENDED = "ended"


class CallInput(StateEnum):
    RING = "ring"  # a provisional response (outbound), or ringing again
    ANSWER = "answer"  # the 200 sent (inbound) or received (outbound)
    PIN_ACCEPTED = "pin_accepted"  # the right PIN: the call joins its room
    AUTOMATE = "automate"  # the DTMF string starts (outbound)
    AUTOMATION_DONE = "automation_done"
    MEDIA_UP = "media_up"  # the first packet, or the ACK plus a second (SIP-BEHAVIOUR s1.9)
    HOLD = "hold"
    RESUME = "resume"
    HANG_UP = "hang_up"  # we end the call
    FINISHED = "finished"  # the SIP side is over, whoever ended it


class Deadline(StateEnum):
    """What a deadline is for; the runner acts on each as it passes."""

    RINGING = "ringing"  # no answer in time: 486 (or the trunk's status) / CANCEL
    PIN = "pin"  # no PIN in time: the "wrong PIN" prompt, then BYE
    MAX_DURATION = "max_duration"  # BYE
    ENDING = "ending"  # the far end never confirmed the end: forget the call
    CONFIRM = "confirm"  # (set by the runner) the ACK plus a second: `active`
    AUTOMATION = "automation"  # (set by the runner) the DTMF string has been played
    PROGRESS = "progress"  # (set by the runner) the next 180 while the call rings


S, In = CallState, CallInput
LIVE_ANSWERED = (S.CONNECTING, S.AUTOMATION, S.ACTIVE, S.HOLD)
TRANSITIONS: dict[tuple[CallState, CallInput], CallState] = {
    (S.DIALING, In.RING): S.RINGING,
    (S.RINGING, In.RING): S.RINGING,
    (S.DIALING, In.ANSWER): S.CONNECTING,
    (S.RINGING, In.ANSWER): S.CONNECTING,
    (S.PIN_ENTRY, In.PIN_ACCEPTED): S.CONNECTING,
    (S.CONNECTING, In.AUTOMATE): S.AUTOMATION,
    (S.AUTOMATION, In.AUTOMATION_DONE): S.ACTIVE,
    (S.CONNECTING, In.MEDIA_UP): S.ACTIVE,
    (S.ACTIVE, In.MEDIA_UP): S.ACTIVE,
    (S.HOLD, In.MEDIA_UP): S.HOLD,
    (S.AUTOMATION, In.MEDIA_UP): S.AUTOMATION,
    (S.ACTIVE, In.HOLD): S.HOLD,
    (S.HOLD, In.HOLD): S.HOLD,
    (S.HOLD, In.RESUME): S.ACTIVE,
    (S.ACTIVE, In.RESUME): S.ACTIVE,
    **{(state, In.HANG_UP): S.ENDING for state in (S.DIALING, S.RINGING, S.PIN_ENTRY)},
    **{(state, In.HANG_UP): S.ENDING for state in LIVE_ANSWERED},
    (S.ENDING, In.HANG_UP): S.ENDING,
    **{(state, In.FINISHED): S.ENDED for state in CallState if state is not S.ENDED},
    (S.ENDED, In.FINISHED): S.ENDED,
    (S.ENDED, In.HANG_UP): S.ENDED,
}

# The deadline that ends a call in each live state (the invariant above).
ENDING_DEADLINE: dict[CallState, Deadline] = {
    S.DIALING: Deadline.RINGING,
    S.RINGING: Deadline.RINGING,
    S.PIN_ENTRY: Deadline.PIN,
    **{state: Deadline.MAX_DURATION for state in LIVE_ANSWERED},
    S.ENDING: Deadline.ENDING,
}

# `sip.callStatus` in each state (SIP-BEHAVIOUR.md s4); PIN entry is in no room.
STATUS: dict[CallState, str] = {
    S.DIALING: "dialing",
    S.RINGING: "ringing",
    S.CONNECTING: "ringing",  # answered, not yet `active` until media or ACK + 1 s
    S.AUTOMATION: "automation",
    S.ACTIVE: "active",
    S.HOLD: "active",
    S.ENDING: "hangup",
    S.ENDED: "hangup",
}


class CallStateError(Exception):
    """An input the call cannot take in its state: a bug in the runner, never the network's."""

    def __init__(self, state: CallState, what: CallInput) -> None:
        super().__init__(f"{what.value} in state {state.value}")
        self.state = state
        self.what = what


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class DeadlineReached:
    deadline: Deadline
    state: CallState  # the call's state when it passed

    def __init__(self, *, deadline: Deadline, state: CallState) -> None:
        object.__setattr__(self, "deadline", deadline)
        object.__setattr__(self, "state", state)


@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class CallLimits:
    """How long each stage may last (seconds); from the trunk, the rule and the request."""

    ringing: float = DEFAULT_RINGING_TIMEOUT_S
    max_duration: float = DEFAULT_MAX_CALL_DURATION_S
    pin: float = PIN_TIMEOUT_S
    ending: float = ENDING_TIMEOUT_S

    def __init__(
        self,
        *,
        ringing: float = DEFAULT_RINGING_TIMEOUT_S,
        max_duration: float = DEFAULT_MAX_CALL_DURATION_S,
        pin: float = PIN_TIMEOUT_S,
        ending: float = ENDING_TIMEOUT_S,
    ) -> None:
        object.__setattr__(self, "ringing", ringing)
        object.__setattr__(self, "max_duration", max_duration)
        object.__setattr__(self, "pin", pin)
        object.__setattr__(self, "ending", ending)

    @classmethod
    def of(cls, *, ringing: object = None, max_duration: object = None) -> CallLimits:
        """From a trunk's or a request's protobuf Durations: unset ones take the defaults,
        and no call lasts longer than the default maximum (SIP-BEHAVIOUR.md s6)."""
        return cls(
            ringing=seconds_of(ringing) or DEFAULT_RINGING_TIMEOUT_S,
            max_duration=min(
                seconds_of(max_duration) or DEFAULT_MAX_CALL_DURATION_S,
                DEFAULT_MAX_CALL_DURATION_S,
            ),
        )


@dataclass(init=False, eq=False, kw_only=True)
class Call:
    """A call's state and deadlines. Start it in DIALING (outbound), RINGING (inbound, in the
    room) or PIN_ENTRY (inbound, answered for a PIN)."""

    direction: Direction
    state: CallState
    limits: CallLimits = field(default_factory=CallLimits)
    deadlines: dict[Deadline, float] = field(default_factory=dict)
    history: list[tuple[float, CallState]] = field(default_factory=list)

    def __init__(
        self,
        *,
        direction: Direction,
        state: CallState,
        limits: CallLimits | None = None,
        deadlines: dict[Deadline, float] | None = None,
        history: list[tuple[float, CallState]] | None = None,
    ) -> None:
        self.direction = direction
        self.state = state
        self.limits = CallLimits() if limits is None else limits
        self.deadlines = {} if deadlines is None else deadlines
        self.history = [] if history is None else history

    @classmethod
    def start(
        cls, direction: Direction, state: CallState, now: float, limits: CallLimits | None = None
    ) -> Call:
        if state not in (S.DIALING, S.RINGING, S.PIN_ENTRY):
            raise ValueError(f"a call starts dialing, ringing or at its PIN, not {state.value}")
        call = cls(direction=direction, state=state, limits=limits or CallLimits())
        call.history.append((now, state))
        if state is S.PIN_ENTRY:
            call.deadlines[Deadline.PIN] = now + call.limits.pin
            call.deadlines[Deadline.MAX_DURATION] = now + call.limits.max_duration
        else:
            call.deadlines[Deadline.RINGING] = now + call.limits.ringing
        return call

    @classmethod
    def unstarted(cls) -> Call:
        """A placeholder for a call whose life has not begun (an INVITE still being matched):
        no deadlines; replaced by `start` before anything waits on it."""
        return cls(direction=Direction.INBOUND, state=S.DIALING)

    @property
    def live(self) -> bool:
        return self.state is not S.ENDED

    @property
    def hanging_up(self) -> bool:
        """Ending or ended: nothing more goes to or from the phone."""
        return self.state is S.ENDING or self.state is S.ENDED

    @property
    def answered(self) -> bool:
        """The call was answered at some point (its 200 sent or received)."""
        return Deadline.MAX_DURATION in self.deadlines or self.state in LIVE_ANSWERED

    @property
    def status(self) -> str | None:
        """The participant's `sip.callStatus`; None while a PIN is typed (no participant)."""
        return STATUS.get(self.state)

    def handle(self, what: CallInput, now: float) -> CallState:
        """Take an input; the new state. Raises `CallStateError` for a pair not in the table."""
        target = TRANSITIONS.get((self.state, what))
        if target is None:
            raise CallStateError(self.state, what)
        if target is self.state:
            return target
        previous, self.state = self.state, target
        self.history.append((now, target))
        if target is S.CONNECTING:
            self.deadlines.pop(Deadline.RINGING, None)
            self.deadlines.pop(Deadline.PIN, None)
            if previous is not S.PIN_ENTRY:  # (a PIN call's duration counts from its answer)
                self.deadlines[Deadline.MAX_DURATION] = now + self.limits.max_duration
        elif target is S.ENDING:
            self.deadlines = {Deadline.ENDING: now + self.limits.ending}
        elif target is S.ENDED:
            self.deadlines.clear()
        return target

    def can(self, what: CallInput) -> bool:
        return (self.state, what) in TRANSITIONS

    def set_deadline(self, deadline: Deadline, at: float) -> None:
        """A deadline of the runner's own (CONFIRM, AUTOMATION), while the call is live."""
        if self.state is S.ENDED:
            return
        self.deadlines[deadline] = at

    def clear_deadline(self, deadline: Deadline) -> None:
        self.deadlines.pop(deadline, None)

    def get_timer(self) -> float | None:
        """The next deadline; None only once the call has ended."""
        if not self.deadlines:
            assert self.state is S.ENDED, f"a live call ({self.state.value}) with no deadline"
            return None
        assert ENDING_DEADLINE.get(self.state) in self.deadlines or self.state is S.ENDED
        return min(self.deadlines.values())

    def handle_timer(self, now: float) -> list[DeadlineReached]:
        """The deadlines that have passed by `now`, earliest first; each fires once. The one
        that ends the call in its state ends it here (HANG_UP, or FINISHED when the ending
        itself timed out), so the invariant holds between this and the runner's action; the
        runner carries out what each event means (486 or CANCEL, the PIN prompt, BYE)."""
        ending = ENDING_DEADLINE.get(self.state)
        # Earliest first; at the same instant the call's end comes before anything else.
        due = sorted(
            (at, d is not ending, d.value, d) for d, at in self.deadlines.items() if at <= now
        )
        reached: list[DeadlineReached] = []
        for *_, deadline in due:
            if deadline not in self.deadlines:  # cleared by an earlier one (the call ended)
                continue
            del self.deadlines[deadline]
            reached.append(DeadlineReached(deadline=deadline, state=self.state))
            if deadline is ENDING_DEADLINE.get(self.state):
                self.handle(In.FINISHED if self.state is S.ENDING else In.HANG_UP, now)
        return reached


class EndCause(StateEnum):
    """Why a call ended, in the words of the runner; `disconnect_reason` maps it for the room."""

    REMOTE_HANGUP = "remote_hangup"  # BYE or CANCEL from the phone's side
    REMOVED = "removed"  # the room side: RemoveParticipant, DeleteRoom, a duplicate identity
    MEDIA_TIMEOUT = "media_timeout"
    SESSION_EXPIRED = "session_expired"  # RFC 4028: no refresh came, or ours was refused
    MAX_DURATION = "max_duration"
    RINGING_TIMEOUT = "ringing_timeout"
    NO_ACK = "no_ack"
    SHUTDOWN = "shutdown"
    ERROR = "error"  # a failure of ours


DISCONNECT_REASON: dict[EndCause, int] = {
    EndCause.REMOTE_HANGUP: Reason.CLIENT_INITIATED,
    # No packets for the media timeout: the same reason whichever side dialled (the runners
    # used to differ); MEDIA_FAILURE stays for media that could not be agreed at all (488).
    EndCause.MEDIA_TIMEOUT: Reason.CONNECTION_TIMEOUT,
    EndCause.SESSION_EXPIRED: Reason.CONNECTION_TIMEOUT,
    EndCause.NO_ACK: Reason.CONNECTION_TIMEOUT,
    EndCause.MAX_DURATION: Reason.CLIENT_INITIATED,
    EndCause.RINGING_TIMEOUT: Reason.USER_UNAVAILABLE,
    EndCause.SHUTDOWN: Reason.SERVER_SHUTDOWN,
    EndCause.ERROR: Reason.UNKNOWN_REASON,
}


def disconnect_reason(cause: EndCause, room_reason: int = 0) -> int:
    """The participant's `disconnect_reason` for a call ended by `cause`; a removal keeps the
    room's own reason (PARTICIPANT_REMOVED, ROOM_DELETED, DUPLICATE_IDENTITY...)."""
    if cause is EndCause.REMOVED:
        return room_reason or int(Reason.PARTICIPANT_REMOVED)
    return int(DISCONNECT_REASON[cause])


def room_participant_key(room: str, identity: str) -> str:
    """How runners key a call by its participant: room and identity."""
    return f"{room}\x00{identity}"


def seconds_of(duration: object) -> float:
    """A protobuf Duration (or None) in seconds; 0 when unset."""
    if duration is None:
        return 0.0
    seconds = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return float(seconds)
