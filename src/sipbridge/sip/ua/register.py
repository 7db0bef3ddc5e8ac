"""The REGISTER client (RFC 3261 s10.2), sans-IO: one binding of our Contact at a registrar.

`RegisterClient` builds each REGISTER (the same Call-ID and From tag throughout, CSeq rising,
s10.2.4), which the caller takes from `next_request()`, sends outside any dialog, and whose
final response (or None when none came) it gives back to `response_received`. A 401/407 is
answered with the Digest credentials, up to `MAX_AUTH_TRIES` times in a row (s22.2); a refresh
answers the last challenge again with a new nonce count, so it needs no 401 round trip. The
binding is refreshed before it expires (halfway, or 30 s before when that is later), a failure
is retried after a delay that doubles from `RETRY_FIRST_S` up to `RETRY_MAX_S`; `unregister()`
removes the binding (Expires: 0, s10.2.2). Deadlines through `get_timer()`/`handle_timer(now)`;
outcomes as events (`Registered`, `RegistrationFailed`).

    Idle --register--> Registering --2xx--> Registered --refresh due--> Refreshing --2xx-->
    Registered;  Registering/Refreshing --failure or no answer--> Failed --retry due-->
    Registering;  Registered/Refreshing --unregister--> Unregistering --any answer--> Closed;
    any other --unregister--> Closed.  A 401/407 answered keeps the state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from sipbridge.sip.digest import DigestClient
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address, Via, param_value
from sipbridge.sip.message import Request, Response
from sipbridge.sip.transaction import new_branch
from sipbridge.sip.uri import Uri

RETRY_FIRST_S = 30.0
RETRY_MAX_S = 300.0
MAX_AUTH_TRIES = 2  # answers to 401/407 in a row before the failure counts
REFRESH_MARGIN_S = 30.0


class State(Enum):
    IDLE = "Idle"
    REGISTERING = "Registering"
    REGISTERED = "Registered"
    REFRESHING = "Refreshing"
    FAILED = "Failed"
    UNREGISTERING = "Unregistering"
    CLOSED = "Closed"


class Input(Enum):
    REGISTER = "register"
    SUCCESS = "2xx"
    FAILURE = "failure or no answer"
    REFRESH_DUE = "refresh due"
    RETRY_DUE = "retry due"
    UNREGISTER = "unregister, bound"
    CLOSE = "unregister, not bound; or the unregistration answered"


TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.IDLE, Input.REGISTER): State.REGISTERING,
    (State.REGISTERING, Input.SUCCESS): State.REGISTERED,
    (State.REGISTERING, Input.FAILURE): State.FAILED,
    (State.REGISTERED, Input.REFRESH_DUE): State.REFRESHING,
    (State.REFRESHING, Input.SUCCESS): State.REGISTERED,
    (State.REFRESHING, Input.FAILURE): State.FAILED,
    (State.FAILED, Input.RETRY_DUE): State.REGISTERING,
    (State.REGISTERED, Input.UNREGISTER): State.UNREGISTERING,
    (State.REFRESHING, Input.UNREGISTER): State.UNREGISTERING,
    **{(state, Input.CLOSE): State.CLOSED for state in State if state is not State.CLOSED},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    """The registrar bound our Contact for `granted` seconds."""

    granted: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationFailed:
    """The REGISTER failed (`status` 408 when nothing answered); tried again in `retry_in` s."""

    status: int
    reason: str
    retry_in: float


RegisterEvent = Registered | RegistrationFailed


def granted_expiry(response: Response, asked: int) -> int:
    """The expiry the registrar granted: our Contact's `expires`, else Expires, else ours."""
    for contact in response.contacts:
        value = param_value(contact.params, "expires")
        if value and value.isdigit():
            return int(value)
    header = response.headers.get("Expires")
    if header and header.strip().isdigit():
        return int(header.strip())
    return asked


def refresh_after(granted: int) -> float:
    """When to refresh a binding granted for `granted` s: halfway, or 30 s before its end."""
    return max(granted / 2, granted - REFRESH_MARGIN_S) if granted > 60 else granted / 2


class RegisterClient:
    """Keeps `aor` bound to `contact` at `registrar` for `expires` seconds. `via` is ours,
    without a branch (each REGISTER gets a new one)."""

    def __init__(
        self,
        *,
        registrar: Uri,
        aor: Address,
        contact: Uri,
        via: Via,
        expires: int,
        call_id: str,
        from_tag: str,
        credentials: DigestClient | None = None,
    ) -> None:
        self.registrar = registrar
        self.aor = aor
        self.contact = contact
        self.via = via
        self.expires = expires
        self.call_id = call_id
        self.from_tag = from_tag
        self.credentials = credentials
        self.state = State.IDLE
        self.cseq = 0
        self.status = 0  # the last final status (408: none came)
        self.granted = 0
        self.failures = 0  # in a row
        self.retry_s = RETRY_FIRST_S
        self.auth_tries = 0
        self._proxy_auth = False  # the registrar challenged as a proxy (407)
        self._deadline: float | None = None
        self._outstanding: Request | None = None
        self._to_send: deque[Request] = deque()
        self._events: deque[RegisterEvent] = deque()

    @property
    def summary(self) -> str:
        """For metrics: registering, registered, failed (until a retry succeeds), unregistered."""
        if self.state in (State.REGISTERED, State.REFRESHING):
            return "registered"
        if self.state is State.FAILED or (self.state is State.REGISTERING and self.failures):
            return "failed"
        if self.state in (State.UNREGISTERING, State.CLOSED):
            return "unregistered"
        return "registering"

    def _step(self, given: Input) -> bool:
        next_state = TRANSITIONS.get((self.state, given))
        if next_state is None:
            return False
        self.state = next_state
        return True

    # -- the application's side ------------------------------------------------------------------

    def register(self) -> None:
        """Bind (the first REGISTER)."""
        if self._step(Input.REGISTER):
            self._send(self.expires)

    def unregister(self) -> None:
        """Remove the binding (Expires: 0) when there is one; in any case, stop."""
        self._deadline = None
        if self._step(Input.UNREGISTER):
            self._send(0)
        elif self._step(Input.CLOSE):
            self._outstanding = None  # what is in flight no longer matters

    def next_request(self) -> Request | None:
        """A REGISTER to send now (outside any dialog, to the registrar)."""
        return self._to_send.popleft() if self._to_send else None

    def next_event(self) -> RegisterEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._step(Input.REFRESH_DUE) or self._step(Input.RETRY_DUE):
            self._send(self.expires)

    def response_received(self, request: Request, response: Response | None, now: float) -> None:
        """The final response to `request` (one we sent), or None when none came. Answers to
        REGISTERs since replaced (a challenge answered, an unregistration) are ignored."""
        if request is not self._outstanding:
            return
        self._outstanding = None
        status = response.status if response is not None else 408
        self.status = status
        if response is not None and status in (401, 407) and self._answer_challenge(response):
            return
        self.auth_tries = 0
        if self.state is State.UNREGISTERING:
            self._step(Input.CLOSE)
        elif 200 <= status < 300 and response is not None:
            self.granted = granted_expiry(response, self.expires)
            self.failures = 0
            self.retry_s = RETRY_FIRST_S
            self._step(Input.SUCCESS)
            self._deadline = now + refresh_after(self.granted)
            self._events.append(Registered(granted=self.granted))
        elif self._step(Input.FAILURE):
            self.failures += 1
            reason = response.reason or "" if response is not None else "no response"
            self._events.append(
                RegistrationFailed(status=status, reason=reason, retry_in=self.retry_s)
            )
            self._deadline = now + self.retry_s
            self.retry_s = min(self.retry_s * 2, RETRY_MAX_S)

    # -- internals -----------------------------------------------------------------------------

    def _answer_challenge(self, challenge: Response) -> bool:
        if self.credentials is None or self.auth_tries >= MAX_AUTH_TRIES:
            return False
        proxy = challenge.status == 407
        values = challenge.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            answer = self.credentials.answer(values, "REGISTER", str(self.registrar))
        except SipProtocolError:
            return False
        self.auth_tries += 1
        self._proxy_auth = proxy
        self._send(0 if self.state is State.UNREGISTERING else self.expires, answer)
        return True

    def _send(self, expires: int, authorization: str = "") -> None:
        self.cseq += 1
        request = Request(method="REGISTER", uri=self.registrar)
        request.headers.add("Via", str(self.via.with_params(branch=new_branch())))
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", str(self.aor.with_tag(self.from_tag)))
        request.headers.add("To", str(self.aor))
        request.headers.add("Call-ID", self.call_id)
        request.headers.add("CSeq", f"{self.cseq} REGISTER")
        request.headers.add("Contact", f"<{self.contact}>")
        request.headers.add("Expires", str(expires))
        if not authorization and self.credentials is not None:
            # A refresh answers the last challenge again (a new nc): no 401 round trip.
            authorization = self.credentials.authorization("REGISTER", str(self.registrar)) or ""
        if authorization:
            name = "Proxy-Authorization" if self._proxy_auth else "Authorization"
            request.headers.add(name, authorization)
        self._outstanding = request
        self._to_send.append(request)
