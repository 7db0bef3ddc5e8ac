"""The asyncio driver of the user agent (`sip/ua/agent.py`, `sip/ua/invite.py`).

It feeds the endpoint's events into the sans-IO `UserAgent`, drains what comes out into the
call runners' callbacks, lets `SipService` transmit, and keeps one `loop.call_at` for the
agent's next deadline. `IncomingCall` and `OutgoingCall` are the runners' handles on one
`InviteSession`: ring, answer or reject an INVITE; send, cancel ours; hang up, refresh, refer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from sipbridge.server.deadline import DeadlineTimer
from sipbridge.server.sip.transport import SipService
from sipbridge.sip.dialog import AnswerRetransmitter, Dialog
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import EndpointEvent, Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address, Via
from sipbridge.sip.message import Request, Response
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction
from sipbridge.sip.ua import invite as ev
from sipbridge.sip.ua.agent import AgentEvent, RequestAnswered, UserAgent
from sipbridge.sip.ua.invite import InviteSession, allowed_methods
from sipbridge.sip.ua.proxy import ProxiedInvite

log = logging.getLogger(__name__)

__all__ = ["IncomingCall", "OutgoingCall", "SipCall", "SipUserAgent", "allowed_methods"]
OfferHandler = Callable[[Request], bytes]


class SipCall:
    """A call's dialog, whichever side created it: re-INVITEs and UPDATEs, session refreshes,
    BYE either way, the end. `request` is the dialog-creating INVITE (theirs or ours)."""

    def __init__(self, *, ua: SipUserAgent, session: InviteSession) -> None:
        self.ua = ua
        self.session = session
        self.trunk_id = ""  # the trunk it came or went through, once known (for metrics)
        self.started = ua.now()  # its INVITE received, or ours sent
        self.final_status = 0  # the final response to the INVITE, ours or theirs
        self.response_headers: dict[str, str] = {}  # on every 2xx we send
        self.on_end: Callable[[str], None] | None = None  # "bye", "cancel", "timeout"...
        self.on_ack: Callable[[], None] | None = None
        # A re-INVITE's or UPDATE's offer (b"" when it has none) -> our SDP; raises
        # SipProtocolError (488...) to refuse it and keep the session as it was (s14.2).
        self.on_offer: OfferHandler | None = None
        # The SDP answer an ACK carries, when our 2xx held the offer (RFC 3261 s13.2.1).
        self.on_answer: Callable[[bytes], None] | None = None
        # A transfer we asked for (REFER): its final response, and the NOTIFYs of its progress.
        self.on_refer_response: Callable[[int, str], None] | None = None
        self.on_notify: Callable[[Request], None] | None = None
        # The final response to a session refresh we sent, or None when none came.
        self.on_refresh_response: Callable[[Response | None], None] | None = None

    # A call's attributes read from its InviteSession. (Properties: a descriptor object as a
    # class attribute is, compiled by mypyc, each instance's default value instead - made for
    # every call, and what the attribute then reads.)

    @property
    def request(self) -> Request:
        """The dialog-creating INVITE (ours: the latest)."""
        return self.session.request

    @property
    def peer(self) -> Peer:
        return self.session.peer

    @property
    def answered(self) -> bool:
        return self.session.answered

    @property
    def ended(self) -> bool:
        return self.session.ended

    @property
    def remote_allow(self) -> frozenset[str]:
        return self.session.remote_allow

    @property
    def retransmitter(self) -> AnswerRetransmitter | None:
        """Our latest 2xx."""
        return self.session.retransmitter

    @property
    def dialog(self) -> Dialog | None:
        return self.session.dialog

    @property
    def local_tag(self) -> str:
        return self.session.local_tag

    def refresh_session(self, headers: dict[str, str], body: bytes = b"") -> None:
        """Refresh the session as its refresher (RFC 4028 s7.4): UPDATE when the peer allows
        it, else a re-INVITE repeating our session (`body`); the final response comes to
        `on_refresh_response`, and a 408, 481 or no answer ends the call with BYE (s10)."""
        self.session.refresh(self.ua.now(), headers, body)
        self.ua.after_application()

    def refer(self, refer_to: str, headers: dict[str, str] | None = None) -> None:
        """Ask the peer to call `refer_to` instead (RFC 3515): its answer to the REFER comes to
        `on_refer_response`, its progress in NOTIFYs to `on_notify`."""
        self.session.refer(self.ua.now(), refer_to, headers)
        self.ua.after_application()

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        """End the call from our side: BYE once answered, else nothing here - an unanswered
        INVITE is ended with `reject` or `cancel`."""
        self.session.hangup(self.ua.now(), headers)
        self.ua.after_application()

    def _end(self, reason: str) -> None:
        self.session.close(reason)
        self.ua.after_application()

    def _finish(self, reason: str) -> None:
        on_end, self.on_end, self.on_ack = self.on_end, None, None  # no cycles left behind
        self.on_offer = self.on_answer = None
        self.on_notify = self.on_refer_response = None
        self.on_refresh_response = None
        if on_end is not None:
            on_end(reason)


class IncomingCall(SipCall):
    """An INVITE being handled: ring, answer or reject it; learn when it ends."""

    @property
    def transaction(self) -> ServerTransaction:
        transaction = self.session.server_transaction
        assert transaction is not None  # (an incoming call's session is made with it)
        return transaction

    # Set when a cluster node that proxied this INVITE vouches for it (server/cluster/
    # sip_proxy.py): the caller's address as it saw it, and the trunk it authenticated.
    vouched_source = ""
    vouched_trunk: str | None = None

    def ring(self, status: int = 180, body: bytes = b"", content_type: str = "") -> None:
        self.session.ring(self.ua.now(), status, body, content_type)
        self.ua.after_application()

    def answer(
        self,
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: dict[str, str] | None = None,
    ) -> None:
        # (merged only when there is something to merge: the session only reads them)
        merged = {**self.response_headers, **headers} if headers else self.response_headers
        self.session.answer(self.ua.now(), body, content_type, merged)
        self.ua.call_final(self, 200)
        self.ua.after_application()

    def reject(
        self,
        status: int,
        reason: str = "",
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        end_reason: str = "rejected",
    ) -> None:
        self.session.reject(self.ua.now(), status, reason, headers, end_reason=end_reason)
        self.ua.call_final(self, status)
        self.ua.after_application()


class OutgoingCall(SipCall):
    """Our INVITE to a trunk: provisional and final responses, Digest challenges answered with
    `credentials`, CANCEL (sent once a provisional came, s9.1), and the 2xx ACKed - every
    retransmission of it too (s13.2.2.4). A 2xx that crosses our CANCEL is ACKed and hung up."""

    def __init__(
        self,
        *,
        ua: SipUserAgent,
        request: Request,
        peer: Peer,
        local_tag: str = "",
        credentials: DigestClient | None = None,
    ) -> None:
        super().__init__(ua=ua, session=ua.agent.invite(request, peer, local_tag=local_tag or None))
        self.session.credentials = credentials
        self.on_progress: Callable[[Response], None] | None = None  # a 1xx other than 100
        self.on_answered: Callable[[Response], None] | None = None
        self.on_failed: Callable[[int, str, Response | None], None] | None = None

    @property
    def transaction(self) -> ClientTransaction | None:
        return self.session.client_transaction

    @property
    def final(self) -> Response | None:
        return self.session.final

    @property
    def cancel_headers(self) -> dict[str, str]:
        return self.session.cancel_headers

    @property
    def credentials(self) -> DigestClient | None:
        return self.session.credentials

    @credentials.setter
    def credentials(self, value: DigestClient | None) -> None:
        self.session.credentials = value

    @property
    def on_interval_too_small(self) -> Callable[[Response], dict[str, str] | None] | None:
        """A 422 (RFC 4028 s7.4): the session timer headers to send the INVITE again with."""
        return self.session.interval_policy  # type: ignore[return-value]

    @on_interval_too_small.setter
    def on_interval_too_small(
        self, value: Callable[[Response], dict[str, str] | None] | None
    ) -> None:
        self.session.interval_policy = value

    def send(self) -> None:
        """Send the INVITE."""
        self.ua.calls[self.session] = self
        self.started = self.ua.now()
        self.session.send(self.started)
        self.ua.after_application()

    def cancel(self, headers: dict[str, str] | None = None) -> None:
        """Give up on an unanswered call: CANCEL now, or once a provisional response says the
        far end has the INVITE. Answered calls are ended with `hangup`."""
        self.session.cancel(self.ua.now(), headers)
        self.ua.after_application()

    def _finish(self, reason: str) -> None:
        self.on_progress = self.on_answered = self.on_failed = None
        super()._finish(reason)


InviteHandler = Callable[[IncomingCall], None]


def reject_invites(call: IncomingCall) -> None:
    """The default until inbound calls land: refuse politely, never drop silently."""
    call.reject(480, "Temporarily Unavailable")


class SipUserAgent:
    """Drives the sans-IO `UserAgent` for `SipService`: its events to the calls' callbacks."""

    def __init__(self, host: str, port: int, on_invite: InviteHandler = reject_invites) -> None:
        self.host = host
        self.port = port
        self.on_invite = on_invite
        self.calls: dict[InviteSession, SipCall] = {}
        # requests of ours outside any call (REGISTER): their final response, or None
        self.standalone: dict[int, Callable[[Response | None], None]] = {}
        self._service: SipService | None = None
        self._agent: UserAgent | None = None
        # the agent's next deadline (lazy: each answered call sets one, its ACK clears it)
        self._timer = DeadlineTimer(self.now, self._fire, lazy=True)
        # Metrics: seconds from an INVITE to our 100 Trying (when one is sent: not for an INVITE
        # its handler answered at once); a call's final status to its INVITE (ours or theirs),
        # with the seconds since the INVITE.
        self.on_trying: Callable[[float], None] | None = None
        self.on_final: Callable[[SipCall, int, float], None] | None = None

    @property
    def service(self) -> SipService:
        assert self._service is not None
        return self._service

    @property
    def agent(self) -> UserAgent:
        if self._agent is None:
            self._agent = UserAgent(
                self.service.endpoint, self.host, self.port, local_port=self.service.local_port
            )
        return self._agent

    @property
    def dialogs(self) -> dict[tuple[str, str, str], SipCall]:
        return {key: self.calls[s] for key, s in self.agent.dialogs.items() if s in self.calls}

    @property
    def requests(self) -> dict[int, tuple[SipCall, Request]]:
        """Requests we sent in live calls, awaiting their answers, by client transaction."""
        return {
            key: (call, request)
            for session, call in self.calls.items()
            for key, request in session.sent.items()
        }

    def proxy(self, call: IncomingCall, forwarded: Request, target: Peer) -> ProxiedInvite:
        """Hand a new INVITE (answered 100 only) on to `target`, a stateful proxy of its
        transaction (sip/ua/proxy.py): the call is no longer ours."""
        self.calls.pop(call.session, None)
        proxied = self.agent.proxy(call.session, forwarded, target, self.now())
        self.after_application()
        return proxied

    def give_up(self, proxied: ProxiedInvite) -> None:
        """A proxied INVITE's target is gone: 503 with Retry-After to the caller now."""
        self.agent.give_up(proxied, self.now())
        self.after_application()

    def attach(self, service: SipService) -> None:
        self._service = service
        # Our timer is re-armed once the service has handled a datagram (or what we did
        # outside one) to the end, not after every event.
        service.on_flushed.append(self._arm)

    def now(self) -> float:
        return self.service.now()

    def send_request(
        self, request: Request, peer: Peer, on_final: Callable[[Response | None], None]
    ) -> None:
        """A request outside any call (REGISTER); `on_final` gets its final response, or None
        when none came (timeout, transport failure)."""
        transaction = self.agent.send_request(request, peer, self.now())
        self.standalone[id(transaction)] = on_final
        self.after_application()

    def listens(self, transport: str) -> bool:
        """Whether a listener of `transport` (udp, tcp, tls) is open."""
        return any(bound.transport == transport for bound in self.service.bound)

    def via(self, peer: Peer) -> Via:
        """Our Via for a request to `peer` (no branch yet)."""
        return self.agent.via(peer)

    def contact(self, peer: Peer, *, secure: bool = False) -> Address:
        """Our Contact for a dialog with `peer` (see `UserAgent.contact`)."""
        return self.agent.contact(peer, secure=secure)

    def __call__(self, service: SipService, event: EndpointEvent) -> None:
        self._service = service
        self.agent.handle_event(event, service.now())
        self._drain()

    def call_final(self, call: SipCall, status: int) -> None:
        """The final response to a call's INVITE, sent or received: told once to `on_final`."""
        if call.final_status:
            return
        call.final_status = status
        if self.on_final is not None:
            self.on_final(call, status, self.now() - call.started)

    def after_application(self) -> None:
        """The application acted outside an endpoint event: deliver, transmit, re-arm (the
        service's flush re-arms our timer once it is done: `attach`)."""
        self._drain()
        self.service.after_application()

    def _drain(self) -> None:
        while (event := self.agent.next_event()) is not None:
            self._dispatch(event)

    def _arm(self) -> None:
        self._timer.arm(self.agent.get_timer())

    def _fire(self) -> None:
        self.agent.handle_timer(self.now())
        self.after_application()

    def _dispatch(self, event: AgentEvent) -> None:
        if isinstance(event, RequestAnswered):
            on_final = self.standalone.pop(id(event.transaction), None)
            if on_final is not None:
                on_final(event.response)
            return
        if isinstance(event, ev.InviteReceived):
            incoming = IncomingCall(ua=self, session=event.session)
            self.calls[event.session] = incoming
            # The handler runs first: a response it gives at once supersedes the 100 Trying the
            # endpoint holds, which otherwise goes out as soon as the handler returns, in the
            # same flush (RFC 3261 s17.2.1). Handlers defer their heavy work to a later turn.
            self.on_invite(incoming)
            if self.on_trying is not None and not incoming.transaction.responded:
                # Nothing sent by the handler: the held 100 goes out in this flush's drain.
                self.on_trying(self.now() - incoming.started)
            return
        call = self.calls.get(event.session)
        if call is None:
            return
        if isinstance(event, ev.CallEnded):
            del self.calls[event.session]
            call._finish(event.reason)
        elif isinstance(event, ev.AckReceived):
            self._ack(call, event)
        elif isinstance(event, ev.OfferReceived):
            self._offer(call, event.request)
        elif isinstance(event, ev.NotifyReceived) and call.on_notify is not None:
            call.on_notify(event.request)
        elif isinstance(event, ev.ReferAnswered) and call.on_refer_response is not None:
            call.on_refer_response(event.status, event.reason)
        elif isinstance(event, ev.RefreshAnswered):
            if call.on_refresh_response is not None:
                call.on_refresh_response(event.response)  # (may end the call)
            if event.dialog_gone:
                log.info("call %s: refresh failed, hanging up", call.request.call_id)
                call.hangup()
        elif isinstance(call, OutgoingCall):
            self._outgoing(call, event)

    def _outgoing(self, call: OutgoingCall, event: AgentEvent) -> None:
        if isinstance(event, ev.ProvisionalReceived) and call.on_progress is not None:
            call.on_progress(event.response)
        elif isinstance(event, ev.CallAnswered):
            self.call_final(call, 200)
            if call.on_answered is not None:
                call.on_answered(event.response)
        elif isinstance(event, ev.CallFailed):
            self.call_final(call, event.status)
            if call.on_failed is not None:
                on_failed, call.on_failed = call.on_failed, None
                on_failed(event.status, event.reason, event.response)

    def _ack(self, call: SipCall, event: ev.AckReceived) -> None:
        if event.body and call.on_answer is not None:
            try:
                call.on_answer(event.body)
            except SipProtocolError as err:
                # An ACK cannot be refused: a useless answer ends the call (RFC 3261 s13.2.1).
                log.info("call %s: answer in ACK refused: %s", call.request.call_id, err.detail)
                if event.first and call.on_ack is not None:
                    call.on_ack()
                call.hangup({"Reason": f'SIP;cause=488;text="{err.reason}"'})
                return
        if event.first and call.on_ack is not None:
            call.on_ack()

    def _offer(self, call: SipCall, request: Request) -> None:
        """A re-INVITE or UPDATE: a new offer (hold, resume, new address, codec) or a session
        refresh (RFC 4028): our answer, or the refusal `on_offer` raised."""
        body = b""
        if call.on_offer is not None:
            try:
                body = call.on_offer(request)
            except SipProtocolError as err:
                call.session.refuse_offer(request, err, self.now())
                return
        call.session.accept_offer(request, self.now(), body, call.response_headers)
