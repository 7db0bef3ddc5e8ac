"""`SessionTimerDriver` (server/sip/session_timers.py) on a real `SipCall` over loopback UDP,
against the raw caller of test_session_refresh.py, with intervals of a few seconds: the refresh
goes out at half the interval with the module's headers, its 200 schedules the next, a 481 or no
answer at all ends the call with BYE and `on_expired`; as refreshee, the caller's UPDATE pushes
our BYE back by an interval. The roles themselves are tested with fake time in
tests/sip/test_session_timer.py; this is the asyncio glue."""

from __future__ import annotations

import asyncio
import time

from sipbridge.server.sip.session_timers import SessionTimerDriver
from sipbridge.server.sip.user_agent import SipCall
from sipbridge.sip.message import Request, make_response
from sipbridge.sip.ua.session_timer import SessionTimer
from tests.server.test_session_refresh import SDP, Caller, answered_call
from tests.sip_app import AnsweringApp, running_app

UPDATE_ALLOWED = "INVITE, ACK, BYE, CANCEL, UPDATE"


def update(caller: Caller, call: SipCall, *headers: str) -> bytes:
    """The caller's UPDATE in the dialog (CSeq 2; the INVITE was 1)."""
    return (
        f"UPDATE sip:bob@127.0.0.1:{caller.server[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-upd2\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>;tag={call.local_tag}\r\n"
        f"Call-ID: refresh-test\r\nCSeq: 2 UPDATE\r\nMax-Forwards: 70\r\n"
        + "".join(f"{h}\r\n" for h in headers)
        + "Content-Length: 0\r\n\r\n"
    ).encode()


def driven(call: SipCall, session_expires: str, expired: list[str]) -> SessionTimerDriver:
    """A driver for `call` as if its INVITE's 2xx had said `session_expires` (as UAC)."""
    timer = SessionTimer(uac=True, min_se=1, session_expires=10)
    answer = make_response(call.request, 200)
    answer.headers.add("Session-Expires", session_expires)
    timer.answer_received(answer)

    def on_expired(reason: str) -> None:  # as the call runners do: BYE
        expired.append(reason)
        call.hangup()

    driver = SessionTimerDriver(timer, call, session=lambda: SDP, on_expired=on_expired)

    def on_offer(request: Request) -> bytes:  # as the call runners' re-offer handlers do
        driver.check(request)
        call.response_headers = driver.refreshed(request)
        return b""

    call.on_offer = on_offer
    driver.start()
    return driver


async def test_refresh_at_half_the_interval_then_481_ends_the_call() -> None:
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (_, port):
        caller = await answered_call(app, port, UPDATE_ALLOWED)
        try:
            call, expired = app.calls[0], list[str]()
            started = time.monotonic()
            driven(call, "2;refresher=uac", expired)
            first = await caller.receive_request("UPDATE", timeout=3)
            assert 0.8 <= time.monotonic() - started <= 1.8
            assert first.headers.get("Session-Expires") == "2;refresher=uac"
            assert first.headers.get("Min-SE") == "1"
            assert first.headers.get("Supported") == "timer"
            caller.respond(first, 200)
            second = await caller.receive_request("UPDATE", timeout=3)
            assert 1.8 <= time.monotonic() - started <= 3.0
            caller.respond(second, 481)
            bye = await caller.receive_request("BYE")
            assert bye.cseq.seq == second.cseq.seq + 1
            assert expired == ["session expired: refresh answered 481 (RFC 4028)"]
            assert call.ended and call.on_refresh_response is None
        finally:
            caller.close()


async def test_a_refresh_never_answered_ends_the_call_before_the_session_expires() -> None:
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (_, port):
        caller = await answered_call(app, port, "INVITE, ACK, BYE")
        try:
            call, expired = app.calls[0], list[str]()
            started = time.monotonic()
            driven(call, "3;refresher=uac", expired)
            refresh = await caller.receive_request("INVITE", timeout=3)  # no UPDATE allowed
            assert refresh.body == SDP  # a re-INVITE repeats our session
            bye = await caller.receive_request("BYE", timeout=3)  # none answered: 2 s in
            assert 1.8 <= time.monotonic() - started <= 2.8
            assert bye.cseq.seq == refresh.cseq.seq + 1
            assert expired == ["session expired: no answer (RFC 4028)"]
        finally:
            caller.close()


async def test_as_refreshee_the_callers_update_pushes_our_bye_back() -> None:
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (_, port):
        caller = await answered_call(app, port, UPDATE_ALLOWED)
        try:
            call, expired = app.calls[0], list[str]()
            started = time.monotonic()
            driver = driven(call, "3;refresher=uas", expired)
            await asyncio.sleep(0.5)  # a caller refreshing some time into the session
            caller.send(
                update(caller, call, "Session-Expires: 3;refresher=uac", "Supported: timer")
            )
            ok = await caller.receive()
            assert getattr(ok, "status", 0) == 200, ok
            assert ok.headers.get("Session-Expires") == "3;refresher=uac"
            assert ok.headers.get("Require") == "timer"
            refreshed = time.monotonic()
            await caller.receive_request("BYE", timeout=4)  # 3 - 1 s after that UPDATE
            assert 1.8 <= time.monotonic() - refreshed <= 2.6
            assert time.monotonic() - started >= 2.3  # not 2 s after the start
            assert expired == ["session expired: no refresh from the peer (RFC 4028)"]
            assert driver.handle is None
        finally:
            caller.close()
