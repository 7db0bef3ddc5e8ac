"""A transfer we ask for (`sip/ua/refer.py`): the REFER's answer and the sipfrag NOTIFYs of RFC
3515 s4.1 (its example bodies "SIP/2.0 100 Trying", "SIP/2.0 200 OK"), failures by status, the
deadline, and Hypothesis over the state table."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipbridge.sip.message import Request
from sipbridge.sip.ua.refer import (
    TRANSITIONS,
    Input,
    ReferTransfer,
    State,
    TransferFailed,
    TransferProgress,
    TransferSucceeded,
    sipfrag_status,
)
from sipbridge.sip.uri import parse_uri


def notify(body: bytes, event: str = "refer") -> Request:
    """RFC 3515 s4.1 F5/F7 NOTIFY, as it reaches the transferor (only what is read)."""
    request = Request(method="NOTIFY", uri=parse_uri("sip:a@atlanta.example.com"))
    request.headers.add("Event", event)
    request.headers.add("Subscription-State", "active;expires=60")
    request.headers.add("Content-Type", "message/sipfrag;version=2.0")
    request.body = body
    return request


def outcomes(refer: ReferTransfer) -> list[object]:
    return list(iter(refer.next_event, None))


def test_rfc3515_s4_1_accepted_trying_then_ok() -> None:
    refer = ReferTransfer(deadline=30.0)
    assert refer.get_timer() == 30.0
    refer.refer_answered(202, "Accepted")
    refer.notify_received(notify(b"SIP/2.0 100 Trying\r\n"))
    refer.notify_received(notify(b"SIP/2.0 200 OK\r\n"))
    assert outcomes(refer) == [
        TransferProgress(status=100, reason="Trying"),
        TransferSucceeded(status=200, reason="OK"),
    ]
    assert refer.state is State.SUCCEEDED and refer.get_timer() is None
    refer.notify_received(notify(b"SIP/2.0 180 Ringing"))  # after the end: nothing
    refer.handle_timer(100.0)
    assert outcomes(refer) == []


def test_failures_refused_busy_and_the_deadline() -> None:
    refused = ReferTransfer(deadline=30.0)
    refused.refer_answered(403, "Forbidden")
    assert outcomes(refused) == [
        TransferFailed(status=403, reason="Forbidden", error="REFER refused: 403 Forbidden")
    ]
    busy = ReferTransfer(deadline=30.0)
    busy.refer_answered(202, "Accepted")
    busy.notify_received(notify(b"SIP/2.0 486 Busy Here"))
    busy.notify_received(notify(b"SIP/2.0 200 OK"))  # the outcome was given: once only
    assert outcomes(busy) == [TransferFailed(status=486, reason="Busy Here", error="486 Busy Here")]
    slow = ReferTransfer(deadline=30.0)
    slow.handle_timer(29.9)
    slow.notify_received(notify(b"SIP/2.0 200 OK", event="dialog"))  # not ours
    slow.notify_received(notify(b"garbage"))
    assert outcomes(slow) == []
    slow.handle_timer(30.0)
    [failed] = outcomes(slow)
    assert isinstance(failed, TransferFailed) and failed.status == 408


def test_a_notify_before_the_refers_answer() -> None:
    refer = ReferTransfer(deadline=30.0)
    refer.notify_received(notify(b"SIP/2.0 200 OK"))  # s2.4.5: NOTIFY may overtake the 202
    refer.refer_answered(202, "Accepted")
    assert outcomes(refer) == [TransferSucceeded(status=200, reason="OK")]


def test_sipfrag_status_lines() -> None:
    assert sipfrag_status(b"SIP/2.0 603 Declined\r\nX: y") == (603, "Declined")
    assert sipfrag_status(b"SIP/2.0 99 Low") is None
    assert sipfrag_status(b"SIP/2.0 OK") is None


@given(st.sampled_from(list(State)), st.sampled_from(list(Input)))
def test_every_state_input_pair_is_in_the_table_or_changes_nothing(
    state: State, given_input: Input
) -> None:
    refer = ReferTransfer(deadline=1.0)
    refer.state = state
    took = refer._step(given_input)
    assert took == ((state, given_input) in TRANSITIONS)
    assert refer.state is (TRANSITIONS[(state, given_input)] if took else state)
