"""The call state machine (telephony/call.py): every (state, input) pair, the deadlines of each
stage, and the invariant that a live call always has a deadline that ends it (Hypothesis over
sequences of inputs and time)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models

from sipbridge.telephony.call import (
    ENDING_DEADLINE,
    STATUS,
    TRANSITIONS,
    Call,
    CallInput,
    CallLimits,
    CallState,
    CallStateError,
    Deadline,
    DeadlineReached,
    Direction,
    EndCause,
    disconnect_reason,
)

S, In = CallState, CallInput
LIMITS = CallLimits(ringing=30.0, max_duration=600.0, pin=20.0, ending=32.0)
Reason = models.DisconnectReason


def in_state(state: CallState, now: float = 0.0) -> Call:
    """A call brought to `state` by the shortest road through the table."""
    road = {
        S.DIALING: (S.DIALING, []),
        S.RINGING: (S.RINGING, []),
        S.PIN_ENTRY: (S.PIN_ENTRY, []),
        S.CONNECTING: (S.RINGING, [In.ANSWER]),
        S.AUTOMATION: (S.DIALING, [In.ANSWER, In.AUTOMATE]),
        S.ACTIVE: (S.RINGING, [In.ANSWER, In.MEDIA_UP]),
        S.HOLD: (S.RINGING, [In.ANSWER, In.MEDIA_UP, In.HOLD]),
        S.ENDING: (S.RINGING, [In.HANG_UP]),
        S.ENDED: (S.RINGING, [In.FINISHED]),
    }
    start, inputs = road[state]
    call = Call.start(Direction.INBOUND, start, now, LIMITS)
    for what in inputs:
        call.handle(what, now)
    assert call.state is state
    return call


@pytest.mark.parametrize(
    ("state", "what"), list(itertools.product(CallState, CallInput)), ids=lambda v: v.value
)
def test_every_pair_is_in_the_table_or_refused(state: CallState, what: CallInput) -> None:
    call = in_state(state)
    target = TRANSITIONS.get((state, what))
    assert call.can(what) == (target is not None)
    if target is None:
        with pytest.raises(CallStateError) as err:
            call.handle(what, 1.0)
        assert (err.value.state, err.value.what) == (state, what)
        assert call.state is state  # refused inputs change nothing
    else:
        assert call.handle(what, 1.0) is target is call.state


def test_a_call_starts_only_dialing_ringing_or_at_its_pin() -> None:
    with pytest.raises(ValueError, match="starts"):
        Call.start(Direction.OUTBOUND, S.ACTIVE, 0.0)


def test_ringing_ends_at_the_ringing_timeout_unless_answered() -> None:
    call = Call.start(Direction.OUTBOUND, S.DIALING, 100.0, LIMITS)
    assert call.get_timer() == 130.0
    assert call.status == "dialing" and not call.answered
    call.handle(In.RING, 101.0)
    assert call.status == "ringing" and call.get_timer() == 130.0  # ringing does not extend it
    assert not call.hanging_up
    assert call.handle_timer(129.9) == []
    assert call.handle_timer(130.0) == [DeadlineReached(deadline=Deadline.RINGING, state=S.RINGING)]
    # The call is ending (the runner CANCELs or answers 486) with the ending deadline set.
    assert call.state is S.ENDING and call.get_timer() == 162.0 and call.hanging_up
    assert call.handle_timer(131.0) == []  # each deadline fires once
    call.handle(In.HANG_UP, 135.0)  # the runner's own hangup changes nothing more
    assert call.get_timer() == 162.0
    call.handle(In.FINISHED, 140.0)  # 487 to our CANCEL
    assert not call.live and call.get_timer() is None and call.hanging_up


def test_the_answer_trades_the_ringing_timeout_for_the_maximum_duration() -> None:
    call = Call.start(Direction.INBOUND, S.RINGING, 0.0, LIMITS)
    call.handle(In.ANSWER, 10.0)
    assert call.deadlines == {Deadline.MAX_DURATION: 610.0}
    assert call.answered and call.status == "ringing"  # `active` waits for media or ACK + 1 s
    call.set_deadline(Deadline.CONFIRM, 11.5)
    assert call.get_timer() == 11.5
    assert call.handle_timer(12.0) == [
        DeadlineReached(deadline=Deadline.CONFIRM, state=S.CONNECTING)
    ]
    call.handle(In.MEDIA_UP, 12.0)
    assert call.status == "active" and call.get_timer() == 610.0
    call.handle(In.HOLD, 20.0)
    assert call.status == "active" and call.state is S.HOLD
    call.handle(In.RESUME, 30.0)
    call.set_deadline(Deadline.CONFIRM, 610.0)  # due at once, but the call ends first
    assert call.handle_timer(610.0) == [
        DeadlineReached(deadline=Deadline.MAX_DURATION, state=S.ACTIVE)
    ]
    assert call.state is S.ENDING and call.status == "hangup"


def test_automation_plays_then_the_call_is_active() -> None:
    call = Call.start(Direction.OUTBOUND, S.DIALING, 0.0, LIMITS)
    call.handle(In.ANSWER, 5.0)
    call.handle(In.AUTOMATE, 5.0)
    call.set_deadline(Deadline.AUTOMATION, 7.0)
    assert call.status == "automation"
    call.handle(In.MEDIA_UP, 5.5)  # the first packet changes nothing while DTMF plays
    call.set_deadline(Deadline.CONFIRM, 6.0)
    call.clear_deadline(Deadline.CONFIRM)  # (the first packet came)
    (reached,) = call.handle_timer(7.0)
    assert reached.deadline is Deadline.AUTOMATION
    call.handle(In.AUTOMATION_DONE, 7.0)
    assert call.status == "active"


def test_a_pin_call_counts_its_duration_from_its_answer() -> None:
    call = Call.start(Direction.INBOUND, S.PIN_ENTRY, 0.0, LIMITS)
    assert call.status is None  # in no room yet
    assert call.answered
    assert call.deadlines == {Deadline.PIN: 20.0, Deadline.MAX_DURATION: 600.0}
    call.handle(In.PIN_ACCEPTED, 8.0)
    assert call.deadlines == {Deadline.MAX_DURATION: 600.0}


def test_ending_forgets_the_call_when_the_far_end_never_confirms() -> None:
    call = in_state(S.ACTIVE)
    call.set_deadline(Deadline.CONFIRM, 1.0)
    call.handle(In.HANG_UP, 50.0)
    assert call.deadlines == {Deadline.ENDING: 82.0}  # nothing else can fire any more
    (reached,) = call.handle_timer(82.0)
    assert reached == DeadlineReached(deadline=Deadline.ENDING, state=S.ENDING)
    assert not call.live and call.get_timer() is None
    call.set_deadline(Deadline.CONFIRM, 90.0)  # ignored once ended
    assert call.get_timer() is None


def test_finished_ends_any_call_and_clears_its_deadlines() -> None:
    for state in CallState:
        call = in_state(state)
        call.handle(In.FINISHED, 5.0)
        assert call.state is S.ENDED and call.deadlines == {}
        assert call.history[-1][1] is S.ENDED


def test_statuses_follow_the_states() -> None:
    assert set(STATUS) | {S.PIN_ENTRY} == set(CallState)
    assert set(ENDING_DEADLINE) | {S.ENDED} == set(CallState)


def test_disconnect_reasons() -> None:
    assert disconnect_reason(EndCause.REMOTE_HANGUP) == Reason.CLIENT_INITIATED
    assert disconnect_reason(EndCause.MEDIA_TIMEOUT) == Reason.CONNECTION_TIMEOUT
    assert disconnect_reason(EndCause.SHUTDOWN) == Reason.SERVER_SHUTDOWN
    assert disconnect_reason(EndCause.REMOVED) == Reason.PARTICIPANT_REMOVED
    assert (
        disconnect_reason(EndCause.REMOVED, Reason.DUPLICATE_IDENTITY) == Reason.DUPLICATE_IDENTITY
    )
    for cause in EndCause:
        assert disconnect_reason(cause) in Reason.values()


@settings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from([S.DIALING, S.RINGING, S.PIN_ENTRY]),
    steps=st.lists(
        st.tuples(st.sampled_from([*CallInput, None]), st.floats(0.0, 400.0)),
        max_size=25,
    ),
)
def test_a_live_call_always_has_a_deadline_that_ends_it(
    start: CallState, steps: list[tuple[CallInput | None, float]]
) -> None:
    """Any sequence of inputs the table allows, with time passing (None: let time pass and fire
    what is due): while live, the deadline of its state is set and nothing is in the past."""
    now = 0.0
    call = Call.start(Direction.INBOUND, start, now, LIMITS)
    for what, later in steps:
        now += later
        for reached in call.handle_timer(now):
            assert isinstance(reached, DeadlineReached)
        if what is not None and call.can(what):
            call.handle(what, now)
        if call.live:
            assert call.get_timer() is not None
            assert ENDING_DEADLINE[call.state] in call.deadlines, (call.state, call.deadlines)
        else:
            assert call.get_timer() is None
