"""RFC 4028 session timers, sans-IO: one object per call, for either side of the INVITE and
either role.

Negotiation. As UAS, `invite_received(request)` refuses an interval below our minimum
(`SessionIntervalTooSmall`, a 422 carrying `Min-SE`, s9) and returns the headers for our 2xx:
the caller's interval with the refresher it chose (the caller, when it did not say), and
`Require: timer`. A caller that does not say `Supported: timer`, or asks for no interval, gets
no session timer (s9 makes one optional then). As UAC, `invite_headers()` is what our INVITE
offers (`Session-Expires`, `Min-SE`; the caller adds `Supported: timer`), a 422 may be retried
once with the larger interval it asks for (`invite_refused`, s7.4), and `answer_received(2xx)`
reads the outcome: no `Session-Expires` means no session timer (s7.2); `refresher=uac` makes us
the refresher, `refresher=uas` the peer.

The session. `start(now)` once the INVITE's 2xx is sent or received. The refresher sends a
refresh at half the interval (`RefreshDue`, s7.4: UPDATE when the peer allows it, else a
re-INVITE); its 2xx restarts the interval and may change it and the refresher (s7.4, s9); a 408
or 481, or no answer at all, ends the session (`SessionExpired`, s10); any other refusal (491
glare, 500 Retry-After) is retried a little later while the session lasts. The refreshee ends
the session when no refresh came in time: the smaller of 32 s and a third of the interval before
it would expire (s10). Any re-INVITE or UPDATE from the peer that we accept is a refresh
(`refresh_received`, s10) and may change the interval and the refresher too. Only the refresher
ever sends refreshes, so the two sides never refresh against each other (no glare of ours).

Transitions (`TRANSITIONS`; an input not listed for a state is ignored - a late answer to a
refresh, a timer after the end):

    Negotiating --start, a timer--> Waiting          Negotiating --start, none--> Inactive
    Waiting --refresh due (refresher)--> Refreshing  Waiting --expiry--> Expired
    Refreshing --2xx, other refusal--> Waiting       Refreshing --408/481/none/expiry--> Expired
    Waiting/Refreshing/Inactive --peer refresh--> (the same)    any --close--> Closed
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import SessionExpires, parse_session_expires
from sipbridge.sip.message import Request, Response

RFC_MIN_SE = 90  # s4: Min-SE is never below 90 s
DEFAULT_SESSION_EXPIRES = 1800  # s4 recommends 30 minutes
MAX_EXPIRY_MARGIN_S = 32.0  # s10: the refreshee's BYE, at most 32 s before the expiry
REFRESH_RETRY_S = 4.0  # a refused refresh (491: 2.1-4 s later, RFC 3261 s14.1) is tried again


class Role(Enum):
    REFRESHER = "refresher"  # we send the refreshes
    REFRESHEE = "refreshee"  # the peer does; we end a session it lets expire


class State(Enum):
    NEGOTIATING = "Negotiating"
    INACTIVE = "Inactive"  # the session has no timer
    WAITING = "Waiting"  # for the refresh to send (refresher) or to come (refreshee)
    REFRESHING = "Refreshing"  # our refresh is sent, its answer awaited
    EXPIRED = "Expired"  # SessionExpired was given: the session ends
    CLOSED = "Closed"  # the call ended by other means


class Input(Enum):
    START_WITH_TIMER = "start, a timer negotiated"
    START_WITHOUT_TIMER = "start, no timer"
    REFRESH_DUE = "refresh due"
    REFRESH_ANSWERED = "refresh answered 2xx"
    REFRESH_REFUSED = "refresh refused, retry"
    REFRESH_FAILED = "refresh answered 408/481 or not at all"
    PEER_REFRESH = "peer refresh"
    EXPIRY = "expiry"
    CLOSE = "close"


TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.NEGOTIATING, Input.START_WITH_TIMER): State.WAITING,
    (State.NEGOTIATING, Input.START_WITHOUT_TIMER): State.INACTIVE,
    (State.WAITING, Input.REFRESH_DUE): State.REFRESHING,
    (State.WAITING, Input.EXPIRY): State.EXPIRED,
    (State.WAITING, Input.PEER_REFRESH): State.WAITING,
    (State.REFRESHING, Input.REFRESH_ANSWERED): State.WAITING,
    (State.REFRESHING, Input.REFRESH_REFUSED): State.WAITING,
    (State.REFRESHING, Input.REFRESH_FAILED): State.EXPIRED,
    (State.REFRESHING, Input.EXPIRY): State.EXPIRED,
    (State.REFRESHING, Input.PEER_REFRESH): State.REFRESHING,
    (State.INACTIVE, Input.PEER_REFRESH): State.INACTIVE,
    **{(state, Input.CLOSE): State.CLOSED for state in State},
}


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshDue:
    """Send a session refresh now, with these headers: UPDATE when the peer allows it (no SDP
    needed, s9), else a re-INVITE repeating our current session. Its final response goes to
    `refresh_answered`, or `refresh_failed` when none comes."""

    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionExpired:
    """The session is over (s10): send BYE. `reason` says why, for the log."""

    reason: str


SessionTimerEvent = RefreshDue | SessionExpired


class SessionIntervalTooSmall(SipProtocolError):
    """422 Session Interval Too Small, with the `Min-SE` header it must carry (s9)."""

    def __init__(self, min_se: int) -> None:
        super().__init__(422, "Session Interval Too Small", f"Min-SE is {min_se}")
        self.min_se = min_se

    @property
    def headers(self) -> dict[str, str]:
        return {"Min-SE": str(self.min_se)}


def expiry_margin(interval: float) -> float:
    """How long before the expiry the session is ended without a refresh (s10)."""
    return min(MAX_EXPIRY_MARGIN_S, interval / 3)


def supports_timer(message: Request | Response) -> bool:
    """Whether a message lists `timer` in Supported or Require."""
    return any(
        item.strip().lower() == "timer"
        for name in ("Supported", "Require")
        for line in message.headers.get_all(name)
        for item in line.split(",")
    )


class SessionTimer:
    """One call's session timer. `uac`: we sent the INVITE. `min_se`: the shortest interval we
    accept; `session_expires`: the interval our INVITE asks for."""

    def __init__(
        self,
        *,
        uac: bool,
        min_se: int = RFC_MIN_SE,
        session_expires: int = DEFAULT_SESSION_EXPIRES,
    ) -> None:
        if min_se < 1 or session_expires < min_se:
            raise ValueError("need 1 <= min_se <= session_expires")
        self.uac = uac
        self.min_se = min_se
        self.session_expires = session_expires
        self.state = State.NEGOTIATING
        self.interval: int | None = None  # negotiated; None: no session timer
        self.role: Role | None = None
        self.refreshed_at = 0.0  # when the current interval started
        self._next_refresh: float | None = None  # refresher: when to send the next refresh
        self._retried_422 = False
        self._events: deque[SessionTimerEvent] = deque()

    # -- negotiation, as UAC -------------------------------------------------------------------

    def invite_headers(self) -> dict[str, str]:
        """What our INVITE asks for (s7.1); the refresher is left to the UAS to choose."""
        return {"Session-Expires": str(self.session_expires), "Min-SE": str(self.min_se)}

    def invite_refused(self, response: Response) -> dict[str, str] | None:
        """A 422 to our INVITE: the headers to send it again with, raised to the peer's Min-SE
        (s7.4), or None when that is no use (tried already, no larger Min-SE said)."""
        if response.status != 422 or self._retried_422:
            return None
        value = response.headers.get("Min-SE")
        try:
            wanted = parse_session_expires(value).seconds if value is not None else 0
        except SipProtocolError:
            return None
        if wanted <= self.session_expires:  # asked for already: retrying would not help
            return None
        self._retried_422 = True
        self.min_se = max(self.min_se, wanted)
        self.session_expires = max(self.session_expires, wanted)
        return self.invite_headers()

    def answer_received(self, response: Response) -> None:
        """The 2xx to our INVITE decides (s7.2): no Session-Expires, no timer; refresher=uac
        (or unsaid) makes us the refresher. A malformed value cannot refuse a 2xx: we then
        refresh at the interval we asked for, which keeps the session whatever the peer meant."""
        value = response.headers.get("Session-Expires")
        if value is None:
            self.interval = self.role = None
            return
        try:
            said = parse_session_expires(value)
        except SipProtocolError:
            said = SessionExpires(self.session_expires, "uac")
        self.interval = max(1, said.seconds)
        self.role = Role.REFRESHEE if said.refresher == "uas" else Role.REFRESHER

    # -- negotiation, as UAS -------------------------------------------------------------------

    def invite_received(self, request: Request) -> dict[str, str]:
        """The INVITE's timer: the headers for our 2xx ({} when the session has no timer).
        Raises SessionIntervalTooSmall (422) below our Min-SE, SipProtocolError (400) when
        malformed."""
        wanted = self._check(request)
        if wanted is None or not supports_timer(request):
            self.interval = self.role = None
            return {}
        # The caller's choice of refresher is kept (s9); unsaid, the caller refreshes.
        refresher = wanted.refresher or "uac"
        self.interval = wanted.seconds
        self.role = Role.REFRESHER if refresher == "uas" else Role.REFRESHEE
        return {"Session-Expires": f"{wanted.seconds};refresher={refresher}", "Require": "timer"}

    def _check(self, request: Request) -> SessionExpires | None:
        value = request.headers.get("Session-Expires")
        if value is None:
            return None
        wanted = parse_session_expires(value)
        if wanted.seconds < self.min_se:
            raise SessionIntervalTooSmall(self.min_se)
        return wanted

    # -- the session ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The INVITE's 2xx was sent (UAS) or received (UAC): the first interval starts."""
        if self.interval is None:
            self._step(Input.START_WITHOUT_TIMER)
            return
        if self._step(Input.START_WITH_TIMER):
            self._restart(now)

    def close(self) -> None:
        """The call ended by other means: no more deadlines or events."""
        self._step(Input.CLOSE)
        self._events.clear()

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None."""
        if self.state not in (State.WAITING, State.REFRESHING):
            return None
        give_up = self._give_up()
        if self.state is State.WAITING and self._next_refresh is not None:
            return min(self._next_refresh, give_up)
        return give_up

    def handle_timer(self, now: float) -> None:
        if self.state not in (State.WAITING, State.REFRESHING):
            return
        if now >= self._give_up():
            self._step(Input.EXPIRY)
            reason = "no refresh from the peer" if self.role is Role.REFRESHEE else "no answer"
            self._events.append(SessionExpired(reason=f"session expired: {reason} (RFC 4028)"))
            return
        if self._next_refresh is not None and now >= self._next_refresh:
            self._step(Input.REFRESH_DUE)
            self._next_refresh = None
            self._events.append(RefreshDue(headers=tuple(self._refresh_headers().items())))

    def next_event(self) -> SessionTimerEvent | None:
        return self._events.popleft() if self._events else None

    def refresh_answered(self, response: Response, now: float) -> None:
        """The final response to the refresh we sent (RefreshDue)."""
        status = response.status
        if 200 <= status < 300:
            if not self._step(Input.REFRESH_ANSWERED):
                return
            value = response.headers.get("Session-Expires")
            if value is not None:
                # Its UAS chose (s9): refresher=uac is us, who sent the refresh. A 2xx without
                # Session-Expires keeps the interval and us as refresher, so a peer that drops
                # the header never gets a session ended for want of refreshes nobody sends.
                try:
                    said = parse_session_expires(value)
                except SipProtocolError:
                    said = SessionExpires(self.interval or self.session_expires, "uac")
                self.interval = max(1, said.seconds)
                self.role = Role.REFRESHEE if said.refresher == "uas" else Role.REFRESHER
            self._restart(now)
        elif status in (408, 481):
            self.refresh_failed(f"refresh answered {status}")
        elif status >= 300 and self._step(Input.REFRESH_REFUSED):
            self._next_refresh = now + REFRESH_RETRY_S

    def refresh_failed(self, reason: str = "refresh not answered") -> None:
        """No final response to our refresh (timeout, transport failure): the session ends."""
        if self._step(Input.REFRESH_FAILED):
            self._events.append(SessionExpired(reason=f"session expired: {reason} (RFC 4028)"))

    def check_refresh(self, request: Request) -> None:
        """Before accepting a re-INVITE or UPDATE from the peer: raises SessionIntervalTooSmall
        (422) or SipProtocolError (400) for its Session-Expires; changes nothing."""
        if self.state in (State.WAITING, State.REFRESHING):
            self._check(request)

    def refresh_received(self, request: Request, now: float) -> dict[str, str]:
        """A re-INVITE or UPDATE from the peer that we accept refreshes the session (s10): the
        headers for our 2xx. Its Session-Expires may change the interval and the refresher
        (refresher=uac: the peer, who sent it). Without one, the interval is kept and we become
        the refresher (refresher=uas in our 2xx, s9): the session keeps a timer that someone
        refreshes."""
        wanted = self._check(request) if self.state in (State.WAITING, State.REFRESHING) else None
        if not self._step(Input.PEER_REFRESH) or self.state is State.INACTIVE:
            return {}
        assert self.interval is not None
        peer_supports = supports_timer(request)
        if wanted is None:
            refresher = "uas"
        else:
            refresher = wanted.refresher or ("uac" if peer_supports else "uas")
            self.interval = wanted.seconds
        self.role = Role.REFRESHER if refresher == "uas" else Role.REFRESHEE
        if self.state is State.WAITING:
            self._restart(now)
        else:  # our refresh is on its way; its answer restarts the interval
            self.refreshed_at = now
        headers = {"Session-Expires": f"{self.interval};refresher={refresher}"}
        if peer_supports:
            headers["Require"] = "timer"
        return headers

    # -- internals -----------------------------------------------------------------------------

    def _refresh_headers(self) -> dict[str, str]:
        """Our refresh keeps us the refresher (s7.4: refresher=uac in a request we send)."""
        return {
            "Session-Expires": f"{self.interval};refresher=uac",
            "Min-SE": str(min(self.min_se, self.interval or self.min_se)),
            "Supported": "timer",
        }

    def _restart(self, now: float) -> None:
        assert self.interval is not None
        self.refreshed_at = now
        self._next_refresh = now + self.interval / 2 if self.role is Role.REFRESHER else None

    def _give_up(self) -> float:
        """When the session is over without a refresh: the refreshee's BYE time (s10), and the
        refresher's too when its refresh went unanswered."""
        assert self.interval is not None
        return self.refreshed_at + self.interval - expiry_margin(self.interval)

    def _step(self, given: Input) -> bool:
        """Take a transition; False (and nothing changes) when the table has none."""
        next_state = TRANSITIONS.get((self.state, given))
        if next_state is None:
            return False
        self.state = next_state
        return True
