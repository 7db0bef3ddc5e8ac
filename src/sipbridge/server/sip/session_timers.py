"""Drives one call's RFC 4028 session timer (`sip/ua/session_timer.py`) from asyncio, for
inbound and outbound calls alike: one `loop.call_at` for its deadline, `RefreshDue` carried out
with `SipCall.refresh_session` (UPDATE when the peer allows it, else a re-INVITE with our
current SDP), the refresh's final response fed back, `SessionExpired` handed to the call runner
to hang up. Time is the loop's clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sipbridge.server.sip.user_agent import IncomingCall, SipCall
from sipbridge.sip.message import Request, Response
from sipbridge.sip.ua.session_timer import RefreshDue, SessionIntervalTooSmall, SessionTimer

log = logging.getLogger(__name__)


class SessionTimerDriver:
    """`timer` for `call`. `session()` is our current SDP (a re-INVITE repeats it);
    `on_expired(reason)` ends the call; `on_refresh()` is told of each refresh we send."""

    def __init__(
        self,
        timer: SessionTimer,
        call: SipCall,
        *,
        session: Callable[[], bytes],
        on_expired: Callable[[str], None],
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        self.timer = timer
        self.call = call
        self.session = session
        self.on_expired = on_expired
        self.on_refresh = on_refresh
        self.handle: asyncio.TimerHandle | None = None
        call.on_refresh_response = self.refresh_response

    def start(self) -> None:
        """The INVITE's 2xx is sent or received: the first interval starts (once; later calls
        change nothing)."""
        self.timer.start(self._now())
        self._arm()

    def check(self, request: Request) -> None:
        """Before a peer's re-INVITE or UPDATE is taken: raises its 422 (or 400)."""
        self.timer.check_refresh(request)

    def refreshed(self, request: Request) -> dict[str, str]:
        """A peer's re-INVITE or UPDATE was taken: the session timer headers for our 2xx."""
        headers = self.timer.refresh_received(request, self._now())
        self._arm()
        return headers

    def refresh_response(self, response: Response | None) -> None:
        if response is None:
            self.timer.refresh_failed()
        else:
            self.timer.refresh_answered(response, self._now())
        self._drain()
        self._arm()

    def close(self) -> None:
        self.timer.close()
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        deadline = self.timer.get_timer()
        if deadline is not None:
            self.handle = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.handle = None
        self.timer.handle_timer(self._now())
        self._drain()
        self._arm()

    def _drain(self) -> None:
        while (event := self.timer.next_event()) is not None:
            if isinstance(event, RefreshDue):
                if self.on_refresh is not None:
                    self.on_refresh()
                self.call.refresh_session(dict(event.headers), self.session())
            else:
                log.info("call %s: %s", self.call.request.call_id, event.reason)
                self.close()
                self.on_expired(event.reason)


def uas_session_timer(
    call: IncomingCall,
    min_se: int,
    *,
    session: Callable[[], bytes],
    on_expired: Callable[[str], None],
    count: Callable[[str], None],
) -> SessionTimerDriver | None:
    """RFC 4028 as UAS (`sip/ua/session_timer.py`) for a new INVITE: 422 below our Min-SE
    (None: refused); when the caller supports timers, the refresher it chose (itself, unless it
    said uas) refreshes, and a session not refreshed in time is hung up (`on_expired`)."""
    timer = SessionTimer(uac=False, min_se=min_se)
    try:
        call.response_headers = timer.invite_received(call.request)
    except SessionIntervalTooSmall as err:
        count("rejected_422")
        call.reject(err.status, err.reason, err.headers)
        return None
    return SessionTimerDriver(
        timer,
        call,
        session=session,
        on_expired=on_expired,
        on_refresh=lambda: count("session_refreshed"),
    )
