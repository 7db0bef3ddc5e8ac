"""The drain of a node (`telephony/drain.py`) on fake time: every pair of the table, the
deadline, the shortcuts (nothing to wait for), and Hypothesis over input sequences."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.telephony.drain import (
    TRANSITIONS,
    Drain,
    DrainEvent,
    DrainInput,
    DrainStarted,
    NodeState,
    NodeStopped,
)


def events(drain: Drain) -> list[DrainEvent]:
    out: list[DrainEvent] = []
    while (event := drain.next_event()) is not None:
        out.append(event)
    return out


def test_sigterm_drains_until_the_last_call_ends() -> None:
    drain = Drain(30)
    drain.calls(2, 100.0)
    assert drain.accepting and drain.get_timer() is None
    drain.signal(DrainInput.TERM, 100.0)
    assert drain.state is NodeState.DRAINING and not drain.accepting
    assert events(drain) == [DrainStarted(deadline=130.0, calls=2)]
    assert drain.get_timer() == 130.0
    drain.handle_timer(129.9)  # early: nothing
    drain.calls(1, 110.0)
    assert events(drain) == [] and drain.state is NodeState.DRAINING
    drain.calls(0, 115.0)
    assert drain.state is NodeState.STOPPED
    assert events(drain) == [NodeStopped(cause=DrainInput.IDLE, hang_up=False)]
    assert drain.get_timer() is None


def test_the_deadline_hangs_up_what_is_left() -> None:
    drain = Drain(30)
    drain.calls(3, 0.0)
    drain.signal(DrainInput.TERM, 5.0)
    events(drain)
    drain.handle_timer(35.0)
    assert drain.state is NodeState.STOPPED
    assert events(drain) == [NodeStopped(cause=DrainInput.TIMEOUT, hang_up=True)]
    drain.handle_timer(40.0)
    drain.calls(0, 41.0)
    assert events(drain) == []  # stopped stays stopped


@pytest.mark.parametrize("second", [DrainInput.TERM, DrainInput.INT])
def test_a_second_signal_hangs_up_at_once(second: DrainInput) -> None:
    drain = Drain(30)
    drain.calls(1, 0.0)
    drain.signal(DrainInput.TERM, 0.0)
    drain.signal(second, 1.0)
    assert events(drain)[1:] == [NodeStopped(cause=second, hang_up=True)]


def test_sigint_while_serving_stops_at_once() -> None:
    drain = Drain(30)
    drain.calls(2, 0.0)
    drain.signal(DrainInput.INT, 0.0)
    assert drain.state is NodeState.STOPPED
    assert events(drain) == [NodeStopped(cause=DrainInput.INT, hang_up=True)]
    drain.signal(DrainInput.TERM, 1.0)  # after the end: nothing
    assert events(drain) == []


def test_nothing_to_wait_for_stops_at_once() -> None:
    idle = Drain(30)
    idle.signal(DrainInput.TERM, 0.0)  # no calls
    assert idle.state is NodeState.STOPPED
    assert events(idle) == [
        DrainStarted(deadline=30.0, calls=0),
        NodeStopped(cause=DrainInput.IDLE, hang_up=False),
    ]
    no_time = Drain(0)
    no_time.calls(1, 0.0)
    no_time.signal(DrainInput.TERM, 0.0)
    assert events(no_time)[1:] == [NodeStopped(cause=DrainInput.TIMEOUT, hang_up=True)]


def test_calls_while_serving_change_nothing_and_bad_input_is_refused() -> None:
    drain = Drain(1)
    drain.calls(0, 0.0)
    drain.handle_timer(100.0)
    assert drain.state is NodeState.SERVING and events(drain) == []
    with pytest.raises(ValueError):
        drain.signal(DrainInput.IDLE, 0.0)
    with pytest.raises(ValueError):
        Drain(-1)


@given(
    st.lists(
        st.tuples(st.sampled_from(list(DrainInput)), st.integers(0, 3), st.floats(0, 5)),
        max_size=12,
    )
)
def test_any_sequence_follows_the_table(steps: list[tuple[DrainInput, int, float]]) -> None:
    """Whatever arrives: states only move along the table, exactly one NodeStopped once
    stopped, and a hang-up only when calls were up."""
    drain, now, calls, calls_at_stop = Drain(10), 0.0, 0, 0
    for what, count, dt in steps:
        now += dt
        before = drain.state
        if what in (DrainInput.TERM, DrainInput.INT):
            drain.signal(what, now)
        elif what is DrainInput.IDLE:
            calls = count
            drain.calls(count, now)
        else:
            drain.handle_timer(now)
        if drain.state is not before:
            calls_at_stop = calls
            assert (before, drain.state) in {(s, n) for (s, _), (_, n) in TRANSITIONS.items()} | {
                (NodeState.SERVING, NodeState.STOPPED)
            }
    stopped = [e for e in events(drain) if isinstance(e, NodeStopped)]
    assert len(stopped) == (1 if drain.state is NodeState.STOPPED else 0)
    if stopped and stopped[0].hang_up:
        assert calls_at_stop > 0
