"""RFC 4028 session timers on the sans-IO `SessionTimer`, both roles and both sides of the
INVITE, with fake time: the UAC and the UAS are two `SessionTimer`s that exchange real parsed
messages (`uac_and_uas()`), refreshes are carried across by `deliver_refresh()`, and time only
moves when a test says so. Nothing sleeps.

Cases: negotiation as UAS (422 + Min-SE, 400, refresher chosen or kept, Require only when the
caller supports timer, no timer without Supported or Session-Expires) and as UAC (our INVITE's
headers, the 2xx deciding refresher=uac/uas/absent, a 422 retried once with the larger Min-SE);
the refresher refreshing at half the interval for five minutes, its refresh answered 200 (the
interval and refresher changed or kept by it), 408, 481, 491 (retried while the session lasts),
or never; the refreshee ending the session at interval - min(32, interval / 3) unless refreshed;
refreshes from the peer; the transition table.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import Request, Response, make_response, parse_message
from sipbridge.sip.ua.session_timer import (
    DEFAULT_SESSION_EXPIRES,
    REFRESH_RETRY_S,
    RFC_MIN_SE,
    TRANSITIONS,
    Input,
    RefreshDue,
    Role,
    SessionExpired,
    SessionIntervalTooSmall,
    SessionTimer,
    SessionTimerEvent,
    State,
    expiry_margin,
    supports_timer,
)


def request(method: str, *headers: str, cseq: int = 1) -> Request:
    text = (
        f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-st1\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: session-timer@test\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
        + "".join(f"{h}\r\n" for h in headers)
        + "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def response(to: Request, status: int, headers: dict[str, str] | None = None) -> Response:
    answer = make_response(to, status, to_tag="b1")
    for name, value in (headers or {}).items():
        answer.headers.add(name, value)
    return answer


def events(timer: SessionTimer) -> list[SessionTimerEvent]:
    out = []
    while (event := timer.next_event()) is not None:
        out.append(event)
    return out


def fire(timer: SessionTimer) -> tuple[float, list[SessionTimerEvent]]:
    """Let time pass to the timer's deadline and fire it."""
    deadline = timer.get_timer()
    assert deadline is not None
    timer.handle_timer(deadline)
    return deadline, events(timer)


def refresh_due(timer: SessionTimer) -> tuple[float, RefreshDue]:
    """Fire the refresher's timer: the refresh it asks for, and when."""
    now, due = fire(timer)
    assert len(due) == 1 and isinstance(due[0], RefreshDue)
    return now, due[0]


def state(timer: SessionTimer) -> State:
    return timer.state


def uac_and_uas(
    *,
    refresher: str = "",
    min_se: int = RFC_MIN_SE,
    session_expires: int = DEFAULT_SESSION_EXPIRES,
) -> tuple[SessionTimer, SessionTimer, Response]:
    """Alice's INVITE (with our UAC's timer headers, and `refresher` added to its
    Session-Expires) answered by Bob's UAS: both timers started at t=0. Returns (uac, uas, the
    2xx)."""
    uac = SessionTimer(uac=True, min_se=min_se, session_expires=session_expires)
    offered = uac.invite_headers()
    if refresher:
        offered["Session-Expires"] += f";refresher={refresher}"
    invite = request("INVITE", "Supported: timer", *(f"{k}: {v}" for k, v in offered.items()))
    uas = SessionTimer(uac=False, min_se=min_se)
    ok = response(invite, 200, uas.invite_received(invite))
    uac.answer_received(ok)
    uac.start(0.0)
    uas.start(0.0)
    return uac, uas, ok


def deliver_refresh(
    refresher: SessionTimer, refreshee: SessionTimer, due: RefreshDue, now: float
) -> Response:
    """The refresher's UPDATE, accepted by the other side; its 2xx back to the refresher."""
    update = request("UPDATE", *(f"{name}: {value}" for name, value in due.headers))
    refreshee.check_refresh(update)
    ok = response(update, 200, refreshee.refresh_received(update, now))
    refresher.refresh_answered(ok, now)
    return ok


# -- negotiation ------------------------------------------------------------------------------


def test_our_invite_offers_an_interval_and_our_minimum() -> None:
    assert SessionTimer(uac=True).invite_headers() == {"Session-Expires": "1800", "Min-SE": "90"}
    timer = SessionTimer(uac=True, min_se=10, session_expires=300)
    assert timer.invite_headers() == {"Session-Expires": "300", "Min-SE": "10"}


@pytest.mark.parametrize(("min_se", "session_expires"), [(0, 90), (90, 89)])
def test_impossible_settings_are_refused(min_se: int, session_expires: int) -> None:
    with pytest.raises(ValueError, match="min_se"):
        SessionTimer(uac=True, min_se=min_se, session_expires=session_expires)


def test_the_callers_refresher_is_kept_and_unsaid_means_the_caller() -> None:
    uac, uas, ok = uac_and_uas()
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    assert (uac.role, uas.role) == (Role.REFRESHER, Role.REFRESHEE)
    assert uac.interval == uas.interval == 1800
    assert uac.state is uas.state is State.WAITING
    uac.start(99.0)  # once only
    assert uac.get_timer() == 900.0

    invite = request("INVITE", "Supported: timer", "Session-Expires: 900;refresher=uas")
    uas = SessionTimer(uac=False)
    assert uas.invite_received(invite) == {
        "Session-Expires": "900;refresher=uas",
        "Require": "timer",
    }
    assert uas.role is Role.REFRESHER


def test_below_our_minimum_is_422_with_min_se_and_malformed_is_400() -> None:
    uas = SessionTimer(uac=False)
    with pytest.raises(SessionIntervalTooSmall) as refused:
        uas.invite_received(request("INVITE", "Supported: timer", "Session-Expires: 30"))
    assert (refused.value.status, refused.value.reason) == (422, "Session Interval Too Small")
    assert refused.value.headers == {"Min-SE": "90"}
    with pytest.raises(SipProtocolError) as malformed:
        uas.invite_received(request("INVITE", "Supported: timer", "Session-Expires: abc"))
    assert malformed.value.status == 400
    assert uas.state is State.NEGOTIATING


@pytest.mark.parametrize(
    "headers", [(), ("Supported: timer",), ("Session-Expires: 1800",), ("Supported: 100rel",)]
)
def test_no_timer_without_an_interval_or_support_for_timers(headers: tuple[str, ...]) -> None:
    """s9 leaves the UAS free to run no timer for a caller that cannot take part in one."""
    uas = SessionTimer(uac=False)
    assert uas.invite_received(request("INVITE", *headers)) == {}
    uas.start(0.0)
    assert uas.state is State.INACTIVE and uas.get_timer() is None
    uas.handle_timer(10_000.0)
    assert uas.next_event() is None


def test_require_timer_counts_as_support() -> None:
    invite = request("INVITE", "Require: timer", "Session-Expires: 600")
    assert supports_timer(invite)
    assert SessionTimer(uac=False).invite_received(invite)["Require"] == "timer"
    assert not supports_timer(request("INVITE", "Supported: replaces, 100rel"))


@pytest.mark.parametrize(
    ("session_expires", "role", "interval"),
    [
        (None, None, None),  # absent: no session timer (s7.2)
        ("90;refresher=uac", Role.REFRESHER, 90),
        ("90;refresher=uas", Role.REFRESHEE, 90),
        ("120", Role.REFRESHER, 120),  # unsaid: we refresh, which keeps the session whatever
        ("junk", Role.REFRESHER, 1800),  # a 2xx cannot be refused: our own interval
    ],
)
def test_the_2xx_decides_our_role_as_uac(
    session_expires: str | None, role: Role | None, interval: int | None
) -> None:
    uac = SessionTimer(uac=True)
    invite = request("INVITE", "Supported: timer", "Session-Expires: 1800", "Min-SE: 90")
    headers = {"Session-Expires": session_expires} if session_expires else {}
    uac.answer_received(response(invite, 200, headers))
    uac.start(0.0)
    assert (uac.role, uac.interval) == (role, interval)
    assert uac.state is (State.INACTIVE if role is None else State.WAITING)


def test_a_422_is_retried_once_with_the_larger_min_se() -> None:
    uac = SessionTimer(uac=True, min_se=90, session_expires=90)
    invite = request("INVITE", *(f"{k}: {v}" for k, v in uac.invite_headers().items()))
    assert uac.invite_refused(response(invite, 486)) is None
    assert uac.invite_refused(response(invite, 422)) is None  # no Min-SE: nothing to learn
    assert uac.invite_refused(response(invite, 422, {"Min-SE": "bad"})) is None
    assert uac.invite_refused(response(invite, 422, {"Min-SE": "60"})) is None  # had it already
    retry = uac.invite_refused(response(invite, 422, {"Min-SE": "300"}))
    assert retry == {"Session-Expires": "300", "Min-SE": "300"}
    assert uac.invite_refused(response(invite, 422, {"Min-SE": "600"})) is None  # once only


# -- the refresher ----------------------------------------------------------------------------


@pytest.mark.parametrize("caller_refreshes", [True, False])
def test_the_refresher_keeps_the_session_up_for_five_minutes(caller_refreshes: bool) -> None:
    """Session-Expires 90 with either side the refresher (us as UAC with refresher=uac, or as
    UAS with refresher=uas): a refresh goes out at 45 s each time, and neither side ends the
    session."""
    who = "uac" if caller_refreshes else "uas"
    uac, uas, _ = uac_and_uas(refresher=who, session_expires=90)
    refresher, refreshee = (uac, uas) if caller_refreshes else (uas, uac)
    assert (refresher.role, refreshee.role) == (Role.REFRESHER, Role.REFRESHEE)
    sent_at = []
    now = 0.0
    while now < 300:
        assert refreshee.get_timer() == now + 60  # 90 - min(32, 30)
        now, due = refresh_due(refresher)
        assert refresher.state is State.REFRESHING
        assert dict(due.headers) == {
            "Session-Expires": "90;refresher=uac",
            "Min-SE": "90",
            "Supported": "timer",
        }
        answer = deliver_refresh(refresher, refreshee, due, now)
        assert answer.headers.get("Session-Expires") == "90;refresher=uac"
        assert answer.headers.get("Require") == "timer"
        sent_at.append(now)
        refreshee.handle_timer(now)
        assert refreshee.next_event() is None  # never a refresh of its own: no glare
    assert sent_at == [45.0 * n for n in range(1, 8)]
    assert refresher.state is refreshee.state is State.WAITING


@pytest.mark.parametrize("status", [408, 481])
def test_a_refresh_answered_408_or_481_ends_the_session(status: int) -> None:
    uac, _, _ = uac_and_uas()
    now, due = refresh_due(uac)
    assert now == 900.0
    update = request("UPDATE", *(f"{k}: {v}" for k, v in due.headers))
    uac.refresh_answered(response(update, 100), now)  # a provisional changes nothing
    assert uac.state is State.REFRESHING
    uac.refresh_answered(response(update, status), now + 1)
    assert events(uac) == [
        SessionExpired(reason=f"session expired: refresh answered {status} (RFC 4028)")
    ]
    assert state(uac) is State.EXPIRED and uac.get_timer() is None


def test_a_refresh_nobody_answers_ends_the_session() -> None:
    uac, _, _ = uac_and_uas()
    fire(uac)
    uac.refresh_failed()  # the transaction timed out
    assert events(uac) == [
        SessionExpired(reason="session expired: refresh not answered (RFC 4028)")
    ]
    uac.refresh_failed()  # only once
    assert uac.next_event() is None


def test_a_refresh_never_answered_ends_the_session_before_it_expires() -> None:
    uac, _, _ = uac_and_uas(session_expires=90)
    fire(uac)
    assert uac.get_timer() == 60.0  # the session would expire at 90: BYE before that
    uac.handle_timer(59.0)
    assert uac.next_event() is None
    now, expired = fire(uac)
    assert now == 60.0
    assert expired == [SessionExpired(reason="session expired: no answer (RFC 4028)")]


@pytest.mark.parametrize(
    ("session_expires", "role", "interval", "deadline"),
    [
        ("120;refresher=uac", Role.REFRESHER, 120, 45 + 60),  # a longer interval, still ours
        ("120;refresher=uas", Role.REFRESHEE, 120, 45 + 120 - 32),  # the peer takes it over
        (None, Role.REFRESHER, 90, 45 + 45),  # no Session-Expires: kept as it was
        ("junk", Role.REFRESHER, 90, 45 + 45),  # unreadable: kept as it was
    ],
)
def test_the_refresh_answer_may_change_the_interval_and_refresher(
    session_expires: str | None, role: Role, interval: int, deadline: float
) -> None:
    uac, _, _ = uac_and_uas(session_expires=90)
    now, due = refresh_due(uac)
    assert now == 45.0
    update = request("UPDATE", *(f"{k}: {v}" for k, v in due.headers))
    uac.refresh_answered(
        response(update, 200, {"Session-Expires": session_expires} if session_expires else {}),
        now,
    )
    assert (uac.role, uac.interval, uac.get_timer()) == (role, interval, deadline)
    uac.refresh_answered(response(update, 200), now + 1)  # a retransmitted 2xx: nothing
    uac.refresh_answered(response(update, 481), now + 1)  # a late failure: nothing
    assert uac.state is State.WAITING and uac.next_event() is None


def test_a_refused_refresh_is_tried_again_while_the_session_lasts() -> None:
    uac, _, _ = uac_and_uas(session_expires=90)
    now, due = refresh_due(uac)
    update = request("UPDATE", *(f"{k}: {v}" for k, v in due.headers))
    uac.refresh_answered(response(update, 491), now)  # glare with a re-INVITE of the peer
    assert uac.state is State.WAITING and uac.get_timer() == now + REFRESH_RETRY_S
    now, again = fire(uac)
    assert isinstance(again[0], RefreshDue)
    uac.refresh_answered(response(update, 200, {"Session-Expires": "90;refresher=uac"}), now)
    assert uac.get_timer() == now + 45


def test_no_retry_after_the_session_would_have_expired() -> None:
    uac, _, _ = uac_and_uas(min_se=10, session_expires=10)
    now, due = refresh_due(uac)
    assert now == 5.0
    update = request("UPDATE", *(f"{k}: {v}" for k, v in due.headers))
    uac.refresh_answered(response(update, 500), 6.0)
    give_up = 10 - 10 / 3
    assert uac.get_timer() == pytest.approx(give_up)  # sooner than the retry at 10 s
    now, expired = fire(uac)
    assert [type(e) for e in expired] == [SessionExpired]


def test_min_se_in_our_refresh_never_exceeds_the_interval() -> None:
    """A peer may answer with less than our Min-SE (it should not, s9); our refresh then says
    a Min-SE no larger than its Session-Expires."""
    uac = SessionTimer(uac=True)
    invite = request("INVITE", "Supported: timer", "Session-Expires: 1800", "Min-SE: 90")
    uac.answer_received(response(invite, 200, {"Session-Expires": "20;refresher=uac"}))
    uac.start(100.0)
    now, due = refresh_due(uac)
    assert now == 110.0
    assert dict(due.headers)["Min-SE"] == "20"


# -- the refreshee ----------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "ends_at"), [(90, 60.0), (1800, 1768.0), (30, 20.0)])
def test_the_refreshee_ends_a_session_nobody_refreshes(interval: int, ends_at: float) -> None:
    assert expiry_margin(interval) == min(32, interval / 3)
    _, uas, _ = uac_and_uas(min_se=30, session_expires=interval)
    assert uas.role is Role.REFRESHEE
    assert uas.get_timer() == ends_at
    uas.handle_timer(ends_at - 0.001)
    assert uas.next_event() is None
    now, expired = fire(uas)
    assert now == ends_at
    assert expired == [
        SessionExpired(reason="session expired: no refresh from the peer (RFC 4028)")
    ]
    assert uas.state is State.EXPIRED
    uas.handle_timer(now + 100)  # over: no more
    assert uas.next_event() is None and uas.get_timer() is None


def test_the_refreshee_as_uac_sends_bye_before_90_s() -> None:
    """An outbound call answered `Session-Expires: 90;refresher=uas` by a far end that never
    refreshes: our BYE is due at 60 s."""
    uac = SessionTimer(uac=True)
    invite = request("INVITE", "Supported: timer", "Session-Expires: 1800", "Min-SE: 90")
    uac.answer_received(response(invite, 200, {"Session-Expires": "90;refresher=uas"}))
    uac.start(10.0)
    assert fire(uac) == (
        70.0,
        [SessionExpired(reason="session expired: no refresh from the peer (RFC 4028)")],
    )


def test_any_reinvite_or_update_we_accept_refreshes_the_session() -> None:
    _, uas, _ = uac_and_uas(session_expires=90)
    assert uas.get_timer() == 60.0
    hold = request("INVITE", "Supported: timer", "Session-Expires: 90;refresher=uac", cseq=2)
    uas.check_refresh(hold)
    assert uas.refresh_received(hold, 50.0) == {
        "Session-Expires": "90;refresher=uac",
        "Require": "timer",
    }
    assert uas.get_timer() == 110.0 and uas.role is Role.REFRESHEE


def test_a_refresh_without_session_expires_makes_us_the_refresher() -> None:
    """s9: the UAS may keep a timer the request does not ask for, as its refresher."""
    _, uas, _ = uac_and_uas(session_expires=90)
    update = request("UPDATE", cseq=2)  # no Supported either: no Require
    assert uas.refresh_received(update, 30.0) == {"Session-Expires": "90;refresher=uas"}
    assert uas.role is Role.REFRESHER and uas.get_timer() == 75.0
    with_support = request("UPDATE", "Supported: timer", cseq=3)
    assert uas.refresh_received(with_support, 40.0)["Require"] == "timer"


def test_a_refresh_without_a_refresher_from_a_caller_without_timer_support() -> None:
    _, uas, _ = uac_and_uas(session_expires=90)
    update = request("UPDATE", "Session-Expires: 120", cseq=2)
    assert uas.refresh_received(update, 30.0) == {"Session-Expires": "120;refresher=uas"}
    assert uas.role is Role.REFRESHER and uas.interval == 120


def test_a_refresh_below_our_minimum_is_refused_and_changes_nothing() -> None:
    _, uas, _ = uac_and_uas(session_expires=90)
    short = request("UPDATE", "Supported: timer", "Session-Expires: 30", cseq=2)
    with pytest.raises(SessionIntervalTooSmall):
        uas.check_refresh(short)
    with pytest.raises(SessionIntervalTooSmall):
        uas.refresh_received(short, 10.0)
    assert (uas.state, uas.interval, uas.get_timer()) == (State.WAITING, 90, 60.0)


def test_a_peer_refresh_while_ours_is_on_its_way() -> None:
    """The peer's re-INVITE crossing our UPDATE (different methods: no 491): it refreshes the
    session; our UPDATE's answer then sets the next deadline."""
    uac, _, _ = uac_and_uas(session_expires=90)
    now, due = refresh_due(uac)
    hold = request("INVITE", "Supported: timer", "Session-Expires: 90;refresher=uas", cseq=2)
    assert uac.refresh_received(hold, now + 1)["Session-Expires"] == "90;refresher=uas"
    assert uac.state is State.REFRESHING and uac.refreshed_at == now + 1
    assert uac.get_timer() == now + 1 + 60  # no answer by then: the session is over
    update = request("UPDATE", *(f"{k}: {v}" for k, v in due.headers))
    uac.refresh_answered(response(update, 200, {"Session-Expires": "90;refresher=uac"}), now + 2)
    assert uac.get_timer() == now + 2 + 45


def test_refreshes_when_there_is_no_timer_or_it_is_over() -> None:
    uas = SessionTimer(uac=False)
    update = request("UPDATE", "Supported: timer", "Session-Expires: 10")  # below 90: ignored
    uas.check_refresh(update)  # still negotiating: nothing to check against
    assert uas.refresh_received(update, 1.0) == {}
    uas.invite_received(request("INVITE"))
    uas.start(0.0)
    assert uas.refresh_received(update, 1.0) == {}  # inactive: stays so
    assert uas.state is State.INACTIVE
    uas.start(5.0)  # twice: nothing
    assert uas.state is State.INACTIVE


# -- the end ----------------------------------------------------------------------------------


def test_close_forgets_deadlines_and_events() -> None:
    uac, uas, _ = uac_and_uas()
    uas.handle_timer(1768.0)
    assert uas.get_timer() is None
    uas.close()
    assert uas.state is State.CLOSED and uas.next_event() is None
    uac.close()
    assert uac.get_timer() is None
    uac.handle_timer(10_000.0)
    uac.refresh_failed()
    assert uac.next_event() is None and uac.state is State.CLOSED


def test_the_transition_table() -> None:
    """Every pair the table lacks leaves the state as it was (a late answer, a timer after the
    end); every state can be closed."""
    for state in State:
        assert TRANSITIONS[(state, Input.CLOSE)] is State.CLOSED
    assert (State.EXPIRED, Input.PEER_REFRESH) not in TRANSITIONS
    assert (State.WAITING, Input.REFRESH_ANSWERED) not in TRANSITIONS
    for (state, given), after in TRANSITIONS.items():
        timer = SessionTimer(uac=True)
        timer.state = state
        assert timer._step(given) and timer.state is after
    timer = SessionTimer(uac=True)
    assert not timer._step(Input.REFRESH_DUE) and timer.state is State.NEGOTIATING


def test_events_are_frozen_and_keyword_only() -> None:
    event = SessionExpired(reason="x")
    with pytest.raises(FrozenInstanceError):
        event.reason = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RefreshDue((("a", "b"),))  # type: ignore[call-arg]
