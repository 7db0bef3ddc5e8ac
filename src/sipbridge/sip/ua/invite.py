"""The INVITE session (RFC 3261 s13-s15, RFC 3311, RFC 6026), sans-IO, for both sides.

One `InviteSession` per call, made by the `UserAgent` (`sip/ua/agent.py`) that dispatches the
endpoint's events to it: an incoming INVITE (UAS) or one of ours (UAC). It acts on the sans-IO
`SipEndpoint` (responses through their transactions, requests in new client transactions, ACKs
and 2xx retransmissions stateless) and says what happened in events the agent queues. Time is an
argument; the only timers are deadlines (`get_timer()`): our 2xx resent until its ACK
(s13.3.1.4), and a CANCEL that no final response follows (s9.1: 64*T1).

UAS: `ring` (1xx; one with our tag makes the early dialog, s12.1.1), `answer` (2xx, resent until
the ACK; no ACK in 64*T1 ends the call with BYE), `reject` (3xx-6xx); a CANCEL that wins is 487
(s9.2); the ACK may carry the SDP answer (s13.2.1). UAC: `send` the INVITE, provisional and final
responses, every 2xx ACKed with the same ACK (s13.2.2.4), one Digest retry per challenge
(s22.2, up to `MAX_AUTH_TRIES`), a 422 retried as the session-timer policy says (RFC 4028 s7.4),
`cancel` built from the INVITE once a provisional came (s9.1), a 2xx crossing our CANCEL ACKed
then ended with BYE. Both: re-INVITE and UPDATE offers from the peer (`OfferReceived`, answered
through `accept_offer`/`refuse_offer`), refreshes, REFER and BYE of ours, NOTIFYs from the peer.

States (`TRANSITIONS`; an input a state does not list changes nothing - a late response, a
`ring` after the answer, a timer after the end):

    UAC:  Idle --send--> Calling --1xx--> Proceeding --2xx (ACK sent)--> Confirmed
          Calling/Proceeding --401/407/422 retried--> Calling
          Calling/Proceeding --cancel--> Cancelling --2xx (ACK, BYE)--> Ending
          Calling/Proceeding/Cancelling --3xx-6xx, no answer, cancel timeout--> Terminated
    UAS:  Incoming --ring--> Proceeding --answer--> Answered --ACK--> Confirmed
          Incoming/Proceeding --reject, CANCEL, BYE in the early dialog--> Terminated
          Answered --no ACK in 64*T1 (BYE sent)--> Ending
    Both: Answered/Confirmed --hangup (BYE sent)--> Ending --its final or none--> Terminated
          Answered/Confirmed --BYE received--> Terminated     any --close--> Terminated

Requests from the peer inside the dialog, by state (`answer_in_dialog`):

    Proceeding (UAS, early):  UPDATE with an offer -> 500 + Retry-After (the INVITE's offer is
                              not answered yet, RFC 3311 s5.2), without one -> 200; INVITE -> 500
                              + Retry-After (s14.2); BYE -> 200, the INVITE 487 (s15.1.2)
    Answered, Confirmed:      re-INVITE while our 2xx awaits its ACK or an offer of the peer is
                              unanswered -> 500 + Retry-After (s14.2); re-INVITE, or UPDATE with
                              an offer, while our own re-INVITE/UPDATE offer is pending -> 491
                              (s14.1, RFC 3311 s5.2); else OfferReceived. NOTIFY -> 200 and
                              NotifyReceived; INFO, OPTIONS -> 200; REFER -> 405; others 501
    Ending (our BYE sent):    BYE -> 200 (they crossed); anything else -> 481: the dialog is over
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from sipbridge.sip.dialog import AnswerRetransmitter, Dialog
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import EchoedHeaders, Request, Response, header_key, make_response
from sipbridge.sip.states import StateEnum
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction, new_branch
from sipbridge.sip.ua.session_timer import SessionIntervalTooSmall

if TYPE_CHECKING:
    from sipbridge.sip.ua.agent import UserAgent

MAX_AUTH_TRIES = 2  # answers to 401/407 for one INVITE before its failure is final
RETRY_AFTER_S = "1"  # s14.2: the 500 to an INVITE that came too early says when to try again
IN_DIALOG_OK = frozenset({"INFO", "NOTIFY", "OPTIONS"})
# A re-INVITE's or UPDATE's refresh policy for a 422 to our INVITE (RFC 4028 s7.4): the headers
# to send the INVITE again with, or None to give up. `SessionTimer.invite_refused` is one.
IntervalPolicy = Callable[[Response], "Mapping[str, str] | None"]


class Role(StateEnum):
    UAC = "UAC"  # we sent the INVITE
    UAS = "UAS"  # the peer did


class State(StateEnum):
    IDLE = "Idle"  # UAC: the INVITE is not sent yet
    CALLING = "Calling"  # UAC: INVITE sent, no response yet
    INCOMING = "Incoming"  # UAS: INVITE received, nothing but 100 sent
    PROCEEDING = "Proceeding"  # a provisional response passed (early dialog when tagged)
    CANCELLING = "Cancelling"  # UAC: we gave up; CANCEL sent or waiting for a provisional
    ANSWERED = "Answered"  # UAS: our 2xx is sent, its ACK awaited
    CONFIRMED = "Confirmed"  # the dialog is up
    ENDING = "Ending"  # our BYE is sent, its answer awaited
    TERMINATED = "Terminated"


class Input(StateEnum):
    SEND = "send the INVITE"
    PROVISIONAL = "1xx sent or received"
    RETRY = "INVITE sent again (challenge, 422)"
    CANCEL = "cancel (ours)"
    ANSWER = "2xx sent"
    ANSWERED = "2xx received, ACKed"
    ANSWERED_AFTER_CANCEL = "2xx crossed our CANCEL: ACK and BYE"
    FAILED = "final 3xx-6xx, no answer, or cancel timeout"
    REJECT = "3xx-6xx sent"
    CANCELLED = "CANCEL received, 487 sent"
    ACK = "ACK received"
    ACK_TIMEOUT = "no ACK in 64*T1: BYE sent"
    HANGUP = "hangup: BYE sent"
    BYE = "BYE received"
    BYE_DONE = "our BYE answered or timed out"
    CLOSE = "close"


S, In = State, Input
TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.IDLE, In.SEND): S.CALLING,
    (S.CALLING, In.PROVISIONAL): S.PROCEEDING,
    (S.PROCEEDING, In.PROVISIONAL): S.PROCEEDING,
    (S.CALLING, In.RETRY): S.CALLING,
    (S.PROCEEDING, In.RETRY): S.CALLING,
    (S.CALLING, In.CANCEL): S.CANCELLING,
    (S.PROCEEDING, In.CANCEL): S.CANCELLING,
    (S.CANCELLING, In.PROVISIONAL): S.CANCELLING,
    (S.CALLING, In.ANSWERED): S.CONFIRMED,
    (S.PROCEEDING, In.ANSWERED): S.CONFIRMED,
    (S.CANCELLING, In.ANSWERED_AFTER_CANCEL): S.ENDING,
    (S.CALLING, In.FAILED): S.TERMINATED,
    (S.PROCEEDING, In.FAILED): S.TERMINATED,
    (S.CANCELLING, In.FAILED): S.TERMINATED,
    (S.INCOMING, In.PROVISIONAL): S.PROCEEDING,
    (S.INCOMING, In.ANSWER): S.ANSWERED,
    (S.PROCEEDING, In.ANSWER): S.ANSWERED,
    (S.INCOMING, In.REJECT): S.TERMINATED,
    (S.PROCEEDING, In.REJECT): S.TERMINATED,
    (S.INCOMING, In.CANCELLED): S.TERMINATED,
    (S.PROCEEDING, In.CANCELLED): S.TERMINATED,
    (S.PROCEEDING, In.BYE): S.TERMINATED,  # s15.1.2: the caller's BYE in the early dialog
    (S.ANSWERED, In.ACK): S.CONFIRMED,
    (S.CONFIRMED, In.ACK): S.CONFIRMED,  # the ACK of a re-INVITE's 2xx
    (S.ANSWERED, In.ACK_TIMEOUT): S.ENDING,
    (S.CONFIRMED, In.ACK_TIMEOUT): S.ENDING,
    (S.ANSWERED, In.HANGUP): S.ENDING,
    (S.CONFIRMED, In.HANGUP): S.ENDING,
    (S.ANSWERED, In.BYE): S.TERMINATED,
    (S.CONFIRMED, In.BYE): S.TERMINATED,
    (S.ENDING, In.BYE): S.ENDING,  # the BYEs crossed
    (S.ENDING, In.BYE_DONE): S.TERMINATED,
    **{(state, In.CLOSE): S.TERMINATED for state in State if state is not S.TERMINATED},
}
LIVE_DIALOG: Final = frozenset({S.ANSWERED, S.CONFIRMED})


def _by_state(table: dict[tuple[State, Input], State]) -> dict[State, dict[Input, State]]:
    """`table` by state, then input: a pair's next state found without making the pair (a
    tuple allocated and hashed for every step, compiled; issue 18)."""
    steps: dict[State, dict[Input, State]] = {}
    for (state, given), next_state in table.items():
        steps.setdefault(state, {})[given] = next_state
    return steps


_STEPS: Final = _by_state(TRANSITIONS)


# -- events -----------------------------------------------------------------------------------


# The events made for every call write their own `__init__` (dataclass `init=False`): mypyc
# compiles it, where the generated one stays interpreted (issue 18).


@dataclass(slots=True, init=False)
class InviteReceived:
    """A new INVITE (its 100 Trying held until the output is drained, and dropped if it is
    answered before): ring, answer or reject `session`."""

    session: InviteSession

    def __init__(self, *, session: InviteSession) -> None:
        self.session = session


@dataclass(slots=True, kw_only=True)
class ProvisionalReceived:
    """A 1xx other than 100 to our INVITE (180 Ringing, 183 with early media...)."""

    session: InviteSession
    response: Response


@dataclass(slots=True, kw_only=True)
class CallAnswered:
    """The first 2xx to our INVITE; it is ACKed."""

    session: InviteSession
    response: Response


@dataclass(slots=True, kw_only=True)
class CallFailed:
    """Our INVITE's final failure: the peer's status, or 408 (no answer), 503 (transport), 487
    (cancelled). `response` is None when no response said it."""

    session: InviteSession
    status: int
    reason: str
    response: Response | None


@dataclass(slots=True, init=False)
class AckReceived:
    """The ACK of a 2xx we sent: `first` for the INVITE's (the dialog is confirmed), else a
    re-INVITE's; `body` is the SDP answer when our 2xx held the offer (s13.2.1)."""

    session: InviteSession
    body: bytes
    first: bool

    def __init__(self, *, session: InviteSession, body: bytes, first: bool) -> None:
        self.session = session
        self.body = body
        self.first = first


@dataclass(slots=True, kw_only=True)
class OfferReceived:
    """A re-INVITE or UPDATE from the peer (its body is b"" when it has no offer): answer with
    `session.accept_offer(request, sdp)` or `session.refuse_offer(request, error)`."""

    session: InviteSession
    request: Request


@dataclass(slots=True, kw_only=True)
class NotifyReceived:
    """A NOTIFY in the dialog (answered 200): the progress of a transfer we asked for."""

    session: InviteSession
    request: Request


@dataclass(slots=True, kw_only=True)
class ReferAnswered:
    """The final response to our REFER (408 when none came)."""

    session: InviteSession
    status: int
    reason: str


@dataclass(slots=True, kw_only=True)
class RefreshAnswered:
    """The final response to our re-INVITE or UPDATE, or None when none came. When
    `dialog_gone` (408, 481 or no answer, s12.2.1.2) the application ends the call with
    `hangup` once it has seen this (its session timer may hang up first, with its headers)."""

    session: InviteSession
    response: Response | None

    @property
    def dialog_gone(self) -> bool:
        return self.response is None or self.response.status in (408, 481)


@dataclass(slots=True, init=False)
class CallEnded:
    """The call is over for the application: "bye" (the peer's BYE), "cancel" (a CANCEL won, or
    ours did), "timeout" (no ACK), "hangup" (our BYE), "rejected" (a final 3xx-6xx either way),
    or what `close` was given."""

    session: InviteSession
    reason: str

    def __init__(self, *, session: InviteSession, reason: str) -> None:
        self.session = session
        self.reason = reason


SessionEvent = (
    InviteReceived
    | ProvisionalReceived
    | CallAnswered
    | CallFailed
    | AckReceived
    | OfferReceived
    | NotifyReceived
    | ReferAnswered
    | RefreshAnswered
    | CallEnded
)


def allowed_methods(message: Request | Response) -> frozenset[str]:
    """The methods a message's Allow headers list."""
    return frozenset(
        item.strip().upper()
        for line in message.headers.get_all("Allow")
        for item in line.split(",")
        if item.strip()
    )


def _add(message: Request | Response, headers: Mapping[str, str] | None) -> None:
    if headers:
        for name, value in headers.items():
            message.headers.add(name, value)


class InviteSession:
    """One INVITE and the dialog it makes. Made by `UserAgent.invite` (UAC) or handed out in
    `InviteReceived` (UAS); every method that acts takes `now`."""

    def __init__(
        self,
        agent: UserAgent,
        *,
        role: Role,
        request: Request,
        peer: Peer,
        local_tag: str,
        transaction: ServerTransaction | None = None,
    ) -> None:
        self.agent = agent
        self.role = role
        self.request = request  # the dialog-creating INVITE (ours: the latest one sent)
        self.peer = peer
        # The transport our Contact names, when not the one the INVITE came on (a call another
        # node proxied to us over TCP from a TLS caller: tls, so that the caller stays on TLS).
        self.contact_transport: str | None = None
        # Where our own in-dialog requests go, when not `peer` (a call another node proxied to
        # us: the caller itself, as that node vouched for it - sip/ua/proxy.py `caller_target`).
        # Answers still follow the Via: our 2xx's retransmissions go to `peer`. A request sent
        # there that gets no answer is sent again to `peer` (which relays it by Call-ID), and so
        # is every later one: `target` is dropped.
        self.target: Peer | None = None
        self._direct: set[int] = set()  # our requests sent to `target`, by client transaction
        self.local_tag = local_tag
        self.state = State.INCOMING if role is Role.UAS else State.IDLE
        self.dialog: Dialog | None = None
        self.answered = False
        self.server_transaction = transaction  # UAS: the INVITE's
        self.client_transaction: ClientTransaction | None = None  # UAC: the latest INVITE's
        self.final: Response | None = None  # UAC: the INVITE's final response
        self.remote_allow: frozenset[str] = frozenset()
        self.credentials: DigestClient | None = None
        self.interval_policy: IntervalPolicy | None = None
        self.retransmitter: AnswerRetransmitter | None = None  # our latest 2xx to an INVITE
        self.ack: Request | None = None  # UAC: the ACK of our INVITE's 2xx
        self.cancel_headers: dict[str, str] = {}
        self.auth_tries = 0
        self._provisional = False  # UAC: a provisional came, so a CANCEL may go (s9.1)
        self._cancel_sent = False
        self._cancel_deadline: float | None = None
        self._reinvite_ack: tuple[int, Request] | None = None  # our re-INVITE's 2xx ACK
        self.sent: dict[int, Request] = {}  # our in-dialog requests, by client transaction
        self._offer_pending_out = False  # our re-INVITE or UPDATE offer awaits its answer
        # the peer's re-INVITEs and UPDATEs awaiting our answer, by id(request)
        self._offers: dict[int, tuple[Request, ServerTransaction]] = {}
        # UAS: the headers of our responses to the INVITE that make the dialog (its 1xx with
        # our tag and its 2xx), made with the first (`_response`)
        self._echoed: EchoedHeaders | None = None

    def __repr__(self) -> str:
        return f"<InviteSession {self.role.value} {self.request.call_id} {self.state.value}>"

    @property
    def ended(self) -> bool:
        """CallEnded was given: nothing more for the application."""
        return self.state in (State.ENDING, State.TERMINATED)

    # -- the state table -----------------------------------------------------------------

    def _step(self, given: Input) -> bool:
        """Take a transition; False (and nothing changes) when the table has none."""
        by_input = _STEPS.get(self.state)
        next_state = None if by_input is None else by_input.get(given)
        if next_state is None:
            return False
        self.state = next_state
        if next_state is State.TERMINATED:
            self.agent.forget(self)
        return True

    def _emit(self, event: SessionEvent) -> None:
        self.agent.emit(event)

    def _end(self, reason: str) -> None:
        self._emit(CallEnded(session=self, reason=reason))

    # -- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline: our 2xx's retransmission or give-up, or our CANCEL's give-up."""
        if self.state is State.CANCELLING and self._cancel_deadline is not None:
            return self._cancel_deadline
        if self.retransmitter is not None and self.state in LIVE_DIALOG:
            return self.retransmitter.get_timer()
        return None

    def handle_timer(self, now: float) -> None:
        if self.state is State.CANCELLING:
            if self._cancel_deadline is not None and now >= self._cancel_deadline:
                # s9.1: no final response 64*T1 after the CANCEL - the INVITE is over.
                self._fail(487, "Request Terminated", None)
            return
        if self.retransmitter is None or self.state not in LIVE_DIALOG:
            return
        resend = self.retransmitter.handle_timer(now)
        if resend is not None and not self.peer.reliable:
            self.agent.endpoint.send_stateless(resend, self.peer)
        if self.retransmitter.timed_out:
            self._bye(None, now)
            if self._step(Input.ACK_TIMEOUT):
                self._end("timeout")
        self.agent.schedule(self)

    # -- the one request builder -------------------------------------------------------------

    def build_request(self, method: str, headers: Mapping[str, str] | None = None) -> Request:
        """A request of ours for this session: CANCEL from the INVITE (s9.1: its Request-URI,
        Via with the same branch, From, To, Call-ID, CSeq number and Route), an ACK or any
        in-dialog request (s12.2.1.1) - our Via, and Contact for target refreshes and REFER."""
        if method == "CANCEL":
            invite = self.request
            request = Request(method="CANCEL", uri=invite.uri)
            request.headers.add("Via", invite.headers.get("Via") or "")
            for value in invite.headers.get_all("Route"):
                request.headers.add("Route", value)
            request.headers.add("Max-Forwards", "70")
            request.headers.add("From", invite.headers.get("From") or "")
            request.headers.add("To", invite.headers.get("To") or "")
            request.headers.add("Call-ID", invite.call_id)
            request.headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
        else:
            assert self.dialog is not None
            contact = self.agent.contact(
                self._contact_peer, secure=self.request.uri.scheme == "sips"
            )
            request = self.dialog.create_request(method, self.agent.via(self.to), contact)
        _add(request, headers)
        return request

    @property
    def _contact_peer(self) -> Peer:
        if self.contact_transport is None:
            return self.peer
        return replace(self.peer, transport=self.contact_transport, connection=None)

    @property
    def to(self) -> Peer:
        """Where our requests go: `target` when set, else `peer`."""
        return self.target or self.peer

    def _send(self, request: Request, now: float) -> ClientTransaction:
        transaction = self.agent.endpoint.send_request(request, self.to, now)
        self.agent.track(transaction, self)
        if self.target is not None:
            self._direct.add(id(transaction))
        return transaction

    def _through_peer(self, request: Request, now: float) -> None:
        """`request` went to `target` and got no answer (a NAT that lets only the node that
        proxied the INVITE through, a stream caller that takes no connection at its Contact):
        it goes again, with the next CSeq, to `peer` - that node relays it to the caller by
        Call-ID - and so does every later request of ours."""
        assert self.dialog is not None
        self.target = None
        self.agent.endpoint.stats["dialog_target_unanswered"] += 1
        self.dialog.local_seq += 1
        again = Request(method=request.method, uri=request.uri, headers=request.headers.copy())
        again.body = request.body
        via = self.agent.via(self.peer).with_params(branch=new_branch())
        again.headers.set("Via", str(via))
        again.headers.set("CSeq", f"{self.dialog.local_seq} {request.method}")
        self.sent[id(self._send(again, now))] = again

    # -- UAC -------------------------------------------------------------------------------

    def send(self, now: float) -> None:
        """Send the INVITE (`self.request`)."""
        if self._step(Input.SEND):
            self.client_transaction = self._send(self.request, now)

    def cancel(self, now: float, headers: Mapping[str, str] | None = None) -> None:
        """Give up on our unanswered INVITE: CANCEL now, or once a provisional response says
        the far end has it (s9.1). Answered calls are ended with `hangup`."""
        if not self._step(Input.CANCEL):
            return
        self.cancel_headers = dict(headers or {})
        if self._provisional:
            self._send_cancel(now)

    def _send_cancel(self, now: float) -> None:
        if self._cancel_sent:
            return
        self._cancel_sent = True
        self._cancel_deadline = now + self.agent.endpoint.settings.timers.timeout
        self.agent.endpoint.send_request(self.build_request("CANCEL", self.cancel_headers),
                                         self.peer, now)  # fmt: skip
        self.agent.schedule(self)

    def invite_response(self, response: Response, now: float) -> None:
        """A response to our INVITE (its transaction passes 2xx retransmissions on too)."""
        status = response.status
        if self.ended:
            if 200 <= status < 300 and self.ack is not None:
                self._send_ack()  # a retransmitted 2xx after our BYE: ACK it again
            return
        if status < 200:
            self._provisional = True
            if self._step(Input.PROVISIONAL) and self.state is State.CANCELLING:
                self._send_cancel(now)
            elif self.state is State.PROCEEDING and status > 100:
                self._emit(ProvisionalReceived(session=self, response=response))
            return  # (a 1xx overtaken by the 2xx tells nothing more)
        if status < 300:
            self._answered(response, now)
            return
        self.final = response
        if self.state is State.CANCELLING:
            self._fail(status, response.reason or "", response)
            return
        if status in (401, 407) and self._retry_with_auth(response, now):
            return
        if status == 422 and self.interval_policy is not None:
            headers = self.interval_policy(response)
            if headers is not None:
                self._resend(headers, now)
                return
        self._fail(status, response.reason or "", response)

    def _answered(self, response: Response, now: float) -> None:
        if self.dialog is None:
            try:
                self.dialog = Dialog.as_uac(self.request, response)
            except SipProtocolError:
                return  # a 2xx without a To tag makes no dialog: the transaction times out
            self.answered = True
            self.final = response
            self.remote_allow = allowed_methods(response)
            self.agent.register(self)
        self._send_ack()
        if self._step(Input.ANSWERED):
            self._emit(CallAnswered(session=self, response=response))
        elif self._step(Input.ANSWERED_AFTER_CANCEL):
            # s9.1 / RFC 3665 s3.8: the 2xx crossed our CANCEL - ACK, then BYE.
            self._send_bye(self.cancel_headers, now)
            self._end("hangup")

    def _send_ack(self) -> None:
        """ACK the 2xx; a retransmitted 2xx gets the very same ACK again (s13.2.2.4)."""
        if self.ack is None:
            self.ack = self.build_request("ACK")  # the INVITE's CSeq: ACK does not count
        self.agent.endpoint.send_stateless(self.ack, self.peer)

    def _retry_with_auth(self, challenge: Response, now: float) -> bool:
        """The INVITE again with credentials for the challenge (s22.2); False when we have none
        for it or tried enough."""
        if self.credentials is None or self.auth_tries >= MAX_AUTH_TRIES:
            return False
        proxy = challenge.status == 407
        values = challenge.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            answer = self.credentials.answer(values, "INVITE", str(self.request.uri))
        except SipProtocolError:
            return False
        self.auth_tries += 1
        self._resend({"Proxy-Authorization" if proxy else "Authorization": answer}, now)
        return True

    def _resend(self, headers: Mapping[str, str], now: float) -> None:
        """The INVITE again, in a new transaction with the next CSeq (s8.1.3.5), `headers`
        replacing its own of those names; credentials are never carried over."""
        replaced = {name.lower() for name in headers} | {
            "via",
            "authorization",
            "proxy-authorization",
        }
        retry = Request(method="INVITE", uri=self.request.uri)
        for name, value in self.request.headers:
            if name.lower() in replaced:
                continue
            cseq = name.lower() == "cseq"
            retry.headers.add(name, f"{self.request.cseq.seq + 1} INVITE" if cseq else value)
        retry.headers.prepend(
            "Via", str(self.agent.via(self.peer).with_params(branch=new_branch()))
        )
        _add(retry, headers)
        retry.body = self.request.body
        self.request = retry
        self._provisional = False
        self._step(Input.RETRY)
        self.client_transaction = self._send(retry, now)

    def transaction_failed(self, timed_out: bool) -> None:
        """No final response to our INVITE (Timer B) or the transport failed."""
        if timed_out:
            self._fail(408, "Request Timeout", None)
        else:
            self._fail(503, "Service Unavailable", None)

    def _fail(self, status: int, reason: str, response: Response | None) -> None:
        cancelled = self.state is State.CANCELLING
        if not self._step(Input.FAILED):
            return
        self._emit(CallFailed(session=self, status=status, reason=reason, response=response))
        self._end("cancel" if cancelled and status == 487 else "rejected")

    # -- UAS -------------------------------------------------------------------------------

    def _response(self, status: int, reason: str = "") -> Response:
        if not 100 < status < 300:
            return make_response(self.request, status, reason, to_tag=self.local_tag)
        echoed = self._echoed
        if echoed is not None:  # the same headers as the first (a 180, then the 200)
            return echoed.response(status, reason)
        response = make_response(self.request, status, reason, to_tag=self.local_tag)
        # it makes the dialog: the proxies' Record-Route, in order (s12.1.1)
        for value in self.request.headers.get_all("Record-Route"):
            response.headers.add("Record-Route", value)
        echoed = self._echoed = EchoedHeaders(response.headers)
        response.headers.wire = echoed.wire
        return response

    def _respond(self, response: Response, now: float) -> None:
        assert self.server_transaction is not None
        self.agent.endpoint.respond(self.server_transaction, response, now)

    def _uas_dialog(self) -> Dialog | None:
        if self.dialog is None:
            try:
                self.dialog = Dialog.as_uas(self.request, self.local_tag)
            except SipProtocolError:
                return None  # checked on arrival: not expected
            self.agent.register(self)
        return self.dialog

    def ring(
        self, now: float, status: int = 180, body: bytes = b"", content_type: str = ""
    ) -> None:
        """A provisional response; one above 100 carries our tag and makes the early dialog."""
        if self.state not in (State.INCOMING, State.PROCEEDING):
            return
        response = self._response(status) if status > 100 else make_response(self.request, 100)
        if body:
            response.body = body
            response.headers.add("Content-Type", content_type or "application/sdp")
        if status > 100:
            self._step(Input.PROVISIONAL)
            self._uas_dialog()
        self._respond(response, now)

    def answer(
        self,
        now: float,
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """200 OK with our Contact and Allow (and `headers`: a Contact there replaces ours),
        resent until its ACK comes (s13.3.1.4, RFC 6026: by us, on every transport's timer)."""
        if self.state not in (State.INCOMING, State.PROCEEDING):
            return
        if self._uas_dialog() is None:
            # A call that cannot be answered ends with a final response rather than holding its
            # slot (never half-answered).
            self.reject(now, 500, "Server Internal Error")
            return
        response = self._response(200)
        _add(response, headers)
        # (the response echoes no Contact of the request: only `headers` may hold one)
        if not headers or not any(header_key(name) == "contact" for name in headers):
            secure = self.request.uri.scheme == "sips"
            response.headers.add(
                "Contact", self.agent.contact_text(self._contact_peer, secure=secure)
            )
        response.headers.add("Allow", self.agent.endpoint.allow_text)
        if body:
            response.body = body
            response.headers.add("Content-Type", content_type)
        self.answered = True
        self._step(Input.ANSWER)
        self._respond(response, now)
        self.retransmitter = AnswerRetransmitter(response, now, self.agent.endpoint.settings.timers)
        self.agent.schedule(self)

    def reject(
        self,
        now: float,
        status: int,
        reason: str = "",
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        end_reason: str = "rejected",
    ) -> None:
        """A final 3xx-6xx to the INVITE: the call is over."""
        if self.state not in (State.INCOMING, State.PROCEEDING):
            return
        response = self._response(status, reason)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in items:
            response.headers.add(name, value)
        self._respond(response, now)
        given = {"cancel": Input.CANCELLED, "bye": Input.BYE}.get(end_reason, Input.REJECT)
        if self._step(given):
            self._end(end_reason)

    def cancel_received(self, now: float) -> None:
        """A CANCEL matched our pending INVITE (the endpoint answered it 200): 487 (s9.2)."""
        self.reject(now, 487, end_reason="cancel")

    def ack_received(self, request: Request) -> None:
        """The ACK of a 2xx of ours: the dialog is confirmed; its SDP is the answer."""
        first = self.state is State.ANSWERED
        if not self._step(Input.ACK):
            return
        if self.retransmitter is not None:
            self.retransmitter.ack_received()
        if self.dialog is not None:
            self.dialog.confirmed = True
        self.agent.schedule(self)
        self._emit(AckReceived(session=self, body=request.body, first=first))

    # -- requests from the peer in the dialog --------------------------------------------------

    def request_received(
        self, request: Request, transaction: ServerTransaction, now: float
    ) -> None:
        """An in-dialog request whose CSeq the dialog took (s12.2.2): answered by state (see the
        module's table)."""
        method = request.method
        # (each answer through `_answer`, a method: a closure here was an object made per
        # request and a generic call per answer, compiled)
        if self.state is State.ENDING:
            self._answer(request, transaction, now, 200 if method == "BYE" else 481)
        elif self.state is State.PROCEEDING:  # UAS, early dialog
            if method == "BYE":
                self._answer(request, transaction, now, 200)
                self.reject(now, 487, end_reason="bye")
            elif method == "INVITE" or (method == "UPDATE" and request.body):
                self._answer(
                    request, transaction, now, 500, header="Retry-After", value=RETRY_AFTER_S
                )
            else:
                status = 200 if method in IN_DIALOG_OK or method == "UPDATE" else 501
                self._answer(request, transaction, now, status)
        elif method == "BYE":
            self._answer(request, transaction, now, 200)
            if self._step(Input.BYE):
                self._end("bye")
        elif method in ("INVITE", "UPDATE"):
            self._offer(request, transaction, now)
        elif method == "NOTIFY":
            self._answer(request, transaction, now, 200)
            self._emit(NotifyReceived(session=self, request=request))
        elif method == "REFER":
            allow = ", ".join(self.agent.endpoint.settings.allow)
            self._answer(request, transaction, now, 405, header="Allow", value=allow)
        else:
            self._answer(request, transaction, now, 200 if method in IN_DIALOG_OK else 501)

    def _answer(
        self,
        request: Request,
        transaction: ServerTransaction,
        now: float,
        status: int,
        *,
        header: str = "",
        value: str = "",
    ) -> None:
        """Answer a request from the peer in the dialog `status`, with one `header` if given."""
        response = make_response(request, status)
        if header:
            response.headers.add(header, value)
        self.agent.endpoint.respond(transaction, response, now)

    def _offer(self, request: Request, transaction: ServerTransaction, now: float) -> None:
        invite = request.method == "INVITE"
        awaiting_ack = self.retransmitter is not None and self.retransmitter.get_timer() is not None
        unanswered = any(r.method == "INVITE" or r.body for r, _ in self._offers.values())
        if (invite and awaiting_ack) or (unanswered and (invite or request.body)):
            # s14.2: an INVITE while our 2xx to the previous one awaits its ACK; an offer while
            # the previous one is unanswered (RFC 3311 s5.2).
            self._answer(request, transaction, now, 500, header="Retry-After", value=RETRY_AFTER_S)
        elif self._offer_pending_out and (invite or request.body):
            self._answer(request, transaction, now, 491)  # s14.1 / RFC 3311 s5.2: glare
        else:
            self._offers[id(request)] = (request, transaction)
            self._emit(OfferReceived(session=self, request=request))

    def accept_offer(
        self,
        request: Request,
        now: float,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """200 to the peer's re-INVITE or UPDATE, with our SDP answer (if any) and `headers`;
        the 2xx to a re-INVITE is resent until its ACK."""
        pending = self._offers.pop(id(request), None)
        if pending is None:
            return
        transaction = pending[1]
        response = make_response(request, 200)
        _add(response, headers)
        response.headers.add("Contact", self.agent.contact_text(self._contact_peer))
        if body:
            response.body = body
            response.headers.add("Content-Type", "application/sdp")
        self.agent.endpoint.respond(transaction, response, now)
        if request.method == "INVITE" and self.state in LIVE_DIALOG:
            timers = self.agent.endpoint.settings.timers
            self.retransmitter = AnswerRetransmitter(response, now, timers)
            self.agent.schedule(self)

    def refuse_offer(self, request: Request, error: SipProtocolError, now: float) -> None:
        """Refuse the peer's offer; the session stays as it was (s14.2). A 422 carries Min-SE."""
        pending = self._offers.pop(id(request), None)
        if pending is None:
            return
        transaction = pending[1]
        refusal = make_response(request, error.status, error.reason)
        if isinstance(error, SessionIntervalTooSmall):  # RFC 4028 s9
            _add(refusal, error.headers)
        self.agent.endpoint.respond(transaction, refusal, now)

    # -- requests of ours in the dialog ------------------------------------------------------

    def refresh(
        self, now: float, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> bool:
        """A session refresh (RFC 4028 s7.4): UPDATE when the peer allows it (no SDP, s9), else
        a re-INVITE repeating our session (`body`). Its final response comes as
        RefreshAnswered; 408/481 or none also ends the call with BYE (s10)."""
        if self.state not in LIVE_DIALOG or self.dialog is None:
            return False
        allow = self.remote_allow or allowed_methods(self.request)
        method = "UPDATE" if "UPDATE" in allow else "INVITE"
        request = self.build_request(method, headers)
        if method == "INVITE" and body:
            request.body = body
            request.headers.add("Content-Type", "application/sdp")
        self._offer_pending_out = method == "INVITE" or bool(request.body)
        self.sent[id(self._send(request, now))] = request
        return True

    def refer(self, now: float, refer_to: str, headers: Mapping[str, str] | None = None) -> bool:
        """Ask the peer to call `refer_to` instead (RFC 3515): its answer comes as
        ReferAnswered, its progress as NotifyReceived. Nothing is sent once the dialog is
        ending (False)."""
        if self.state not in LIVE_DIALOG or self.dialog is None:
            return False
        request = self.build_request("REFER", {"Refer-To": refer_to})
        request.headers.add("Referred-By", str(self.dialog.local_address.uri))
        _add(request, headers)
        self.sent[id(self._send(request, now))] = request
        return True

    def hangup(self, now: float, headers: Mapping[str, str] | None = None) -> bool:
        """End the call from our side: BYE once answered; nothing before (an unanswered INVITE
        is ended with `reject` or `cancel`)."""
        if not self._bye(headers, now):
            return False
        self._step(Input.HANGUP)
        self._end("hangup")
        return True

    def _bye(self, headers: Mapping[str, str] | None, now: float) -> bool:
        if self.state not in LIVE_DIALOG:
            return False
        self._send_bye(headers, now)
        return True

    def _send_bye(self, headers: Mapping[str, str] | None, now: float) -> None:
        request = self.build_request("BYE", headers)
        self.sent[id(self._send(request, now))] = request

    def close(self, reason: str) -> None:
        """End the call here without a message (the caller has said what it had to)."""
        was_ending = self.ended
        if self._step(Input.CLOSE) and not was_ending:
            self._end(reason)

    def response_received(
        self, transaction: ClientTransaction, response: Response | None, now: float
    ) -> None:
        """A response to a request we sent in this dialog, or None when none came."""
        request = self.sent.get(id(transaction))
        if request is None:
            return
        final = response is None or response.status >= 200
        direct = id(transaction) in self._direct
        if final:
            self._direct.discard(id(transaction))
        if response is None and direct and self.target is not None and self.dialog is not None:
            del self.sent[id(transaction)]
            self._through_peer(request, now)
            return
        if final and (response is None or request.method != "INVITE"):
            del self.sent[id(transaction)]  # an INVITE's 2xx may come again (s13.2.2.4)
        method = request.method
        if method == "BYE":
            if final:
                self._step(Input.BYE_DONE)
            return
        if self.ended or not final:
            return
        assert self.dialog is not None
        if method == "REFER":
            status, reason = (408, "Request Timeout") if response is None else (
                response.status, response.reason or "")  # fmt: skip
            self._emit(ReferAnswered(session=self, status=status, reason=reason))
            return
        first = True
        self._offer_pending_out = False  # (INVITE or UPDATE: all we send besides REFER, BYE)
        if method == "INVITE" and response is not None and 200 <= response.status < 300:
            # The 2xx of our re-INVITE is ACKed by us, outside the transaction (s13.2.2.4);
            # each retransmission of it gets the same ACK again.
            seq = request.cseq.seq
            first = self._reinvite_ack is None or self._reinvite_ack[0] != seq
            if first:
                current, self.dialog.local_seq = self.dialog.local_seq, seq
                self._reinvite_ack = (seq, self.build_request("ACK"))
                self.dialog.local_seq = current
            assert self._reinvite_ack is not None
            self.agent.endpoint.send_stateless(self._reinvite_ack[1], self.to)
        if first:
            self._emit(RefreshAnswered(session=self, response=response))
