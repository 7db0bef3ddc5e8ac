"""The UAS core: what a user agent server does with requests the transaction layer delivers.

Out-of-dialog OPTIONS get 200 with our capabilities; INVITEs are handed to an `InviteHandler`
(the call runners of later issues) through an `IncomingCall` that can ring, answer or reject;
the core keeps the dialogs, resends a 2xx until its ACK (RFC 3261 s13.3.1.4), answers BYE and
other in-dialog requests, 481 for unknown dialogs (s12.2.2), and 487 when a CANCEL wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sipbridge.server.sip_transport import SipService
from sipbridge.sip.dialog import AnswerRetransmitter, Dialog, check_dialog_creating, new_tag
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import (
    AckReceived,
    CancelReceived,
    EndpointEvent,
    Peer,
    RequestFailed,
    RequestReceived,
    RequestTimedOut,
    ResponseForUs,
)
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address, Via
from sipbridge.sip.message import Request, Response, make_response
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction, new_branch
from sipbridge.sip.ua.session_timer import SessionIntervalTooSmall
from sipbridge.sip.uri import Uri

log = logging.getLogger(__name__)

IN_DIALOG_OK = frozenset({"INFO", "NOTIFY", "OPTIONS"})
OfferHandler = Callable[[Request], bytes]


@dataclass(eq=False, kw_only=True)
class SipCall:
    """A call's dialog, whichever side created it: re-INVITEs and UPDATEs, session refreshes,
    BYE either way, the end. `request` is the dialog-creating INVITE (theirs or ours)."""

    ua: SipUserAgent
    request: Request
    peer: Peer
    local_tag: str = field(default_factory=new_tag)
    dialog: Dialog | None = None
    answered: bool = False
    ended: bool = False
    on_end: Callable[[str], None] | None = None  # "bye", "cancel", "timeout", "hangup"...
    on_ack: Callable[[], None] | None = None
    # A re-INVITE's or UPDATE's offer (b"" when it has none) -> our SDP; raises
    # SipProtocolError (488...) to refuse it and keep the session as it was (RFC 3261 s14.2).
    on_offer: OfferHandler | None = None
    # The SDP answer an ACK carries, when our 2xx held the offer (RFC 3261 s13.2.1).
    on_answer: Callable[[bytes], None] | None = None
    response_headers: dict[str, str] = field(default_factory=dict)  # on every 2xx we send
    remote_allow: frozenset[str] = frozenset()  # the methods the peer said it allows
    # A transfer we asked for (REFER): its final response, and the NOTIFYs reporting progress.
    on_refer_response: Callable[[int, str], None] | None = None
    on_notify: Callable[[Request], None] | None = None
    # The final response to a session refresh we sent (re-INVITE or UPDATE), or None when none
    # came: the call's RFC 4028 session timer (`server/session_timers.py`) takes it.
    on_refresh_response: Callable[[Response | None], None] | None = None
    retransmitter: AnswerRetransmitter | None = None
    timer: asyncio.TimerHandle | None = None
    reinvite_ack: tuple[int, Request] | None = None  # the ACK of our last re-INVITE's 2xx

    def _via(self) -> Via:
        return self.ua.via(self.peer)

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.retransmitter is None:
            return
        deadline = self.retransmitter.get_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - self.ua.service.now())
            self.timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.retransmitter is None:
            return
        resend = self.retransmitter.handle_timer(self.ua.service.now())
        if resend is not None and not self.peer.reliable:
            self.ua.service.endpoint.send_stateless(resend, self.peer)
            self.ua.service.after_application()
        if self.retransmitter.timed_out:
            log.info("no ACK for the 200 to %s", self.request.call_id)
            self.hangup()
            self._end("timeout")
            return
        self._arm()

    def ack_received(self, request: Request | None = None) -> None:
        if request is not None and request.body and self.on_answer is not None:
            try:
                self.on_answer(request.body)
            except SipProtocolError as err:
                # An ACK cannot be refused: a useless answer ends the call (RFC 3261 s13.2.1).
                log.info("call %s: answer in ACK refused: %s", self.request.call_id, err.detail)
                self.on_answer = None
                self.ack_received()
                self.hangup({"Reason": f'SIP;cause=488;text="{err.reason}"'})
                return
        first = self.dialog is not None and not self.dialog.confirmed
        if self.retransmitter is not None:
            self.retransmitter.ack_received()
        if self.dialog is not None:
            self.dialog.confirmed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if first and self.on_ack is not None:
            self.on_ack()

    def refresh_session(self, headers: dict[str, str], body: bytes = b"") -> None:
        """Refresh the session as its refresher (RFC 4028 s7.4, either side of the INVITE):
        UPDATE when the peer allows it (no SDP, s9), else a re-INVITE repeating our session
        (`body`). Its final response goes to `on_refresh_response`; a 408 or 481 answer, or no
        answer, ends the call with BYE (s10)."""
        if self.dialog is None or self.ended:
            return
        allow = self.remote_allow or allowed_methods(self.request)
        method = "UPDATE" if "UPDATE" in allow else "INVITE"
        via = self._via()
        request = self.dialog.create_request(
            method, via, self.ua.contact(self.peer, secure=self.request.uri.scheme == "sips")
        )
        for name, value in headers.items():
            request.headers.add(name, value)
        if method == "INVITE" and body:
            request.body = body
            request.headers.add("Content-Type", "application/sdp")
        transaction = self.ua.service.endpoint.send_request(
            request, self.peer, self.ua.service.now()
        )
        self.ua.requests[id(transaction)] = (self, request)
        self.ua.service.after_application()

    def response_received(self, request: Request, response: Response) -> None:
        """A response to a request we sent in this dialog."""
        if self.ended or self.dialog is None:
            return
        refresh = request.method in ("INVITE", "UPDATE") and response.status >= 200
        if request.method == "INVITE" and 200 <= response.status < 300:
            # The 2xx of our re-INVITE is ACKed by us, outside the transaction (s13.2.2.4);
            # each retransmission of it gets the same ACK again.
            seq = request.cseq.seq
            refresh = self.reinvite_ack is None or self.reinvite_ack[0] != seq  # not again
            if refresh:
                current, self.dialog.local_seq = self.dialog.local_seq, seq
                self.reinvite_ack = (seq, self.dialog.create_request("ACK", self._via()))
                self.dialog.local_seq = current
            assert self.reinvite_ack is not None
            self.ua.service.endpoint.send_stateless(self.reinvite_ack[1], self.peer)
            self.ua.service.after_application()
        if refresh and self.on_refresh_response is not None:
            self.on_refresh_response(response)  # (may end the call: then nothing below does)
        if request.method == "REFER":
            if response.status >= 200 and self.on_refer_response is not None:
                self.on_refer_response(response.status, response.reason or "")
        elif response.status in (408, 481):
            log.info(
                "call %s: refresh answered %d, hanging up", self.request.call_id, response.status
            )
            self.hangup()

    def refer(self, refer_to: str, headers: dict[str, str] | None = None) -> None:
        """Ask the peer to call `refer_to` instead (RFC 3515): its answer to the REFER comes to
        `on_refer_response`, its progress in NOTIFYs to `on_notify`."""
        if self.dialog is None or self.ended:
            return
        refer = self.dialog.create_request(
            "REFER",
            self._via(),
            self.ua.contact(self.peer, secure=self.request.uri.scheme == "sips"),
        )
        refer.headers.add("Refer-To", refer_to)
        refer.headers.add("Referred-By", str(self.dialog.local_address.uri))
        for name, value in (headers or {}).items():
            refer.headers.add(name, value)
        transaction = self.ua.service.endpoint.send_request(refer, self.peer, self.ua.service.now())
        self.ua.requests[id(transaction)] = (self, refer)
        self.ua.service.after_application()

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        """End the call from our side: BYE once answered (the 200 sent), else nothing here -
        an unanswered INVITE is ended with `reject`."""
        if self.dialog is None or self.ended:
            return
        bye = self.dialog.create_request("BYE", self._via())
        for name, value in (headers or {}).items():
            bye.headers.add(name, value)
        self.ua.service.endpoint.send_request(bye, self.peer, self.ua.service.now())
        self._end("hangup")
        self.ua.service.after_application()

    def _forget(self) -> None:
        """Drop what the user agent keeps for this call's first transaction."""

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.dialog is not None:
            self.ua.dialogs.pop(self.dialog.id, None)
        self._forget()
        on_end, self.on_end, self.on_ack = self.on_end, None, None  # no cycles left behind
        self.on_offer = self.on_answer = None
        self.on_notify = self.on_refer_response = None
        self.on_refresh_response = None
        for key in [k for k, (call, _) in self.ua.requests.items() if call is self]:
            del self.ua.requests[key]
        if on_end is not None:
            on_end(reason)


@dataclass(eq=False, kw_only=True)
class IncomingCall(SipCall):
    """An INVITE being handled: ring, answer or reject it; learn when it ends."""

    transaction: ServerTransaction

    def ring(self, status: int = 180, body: bytes = b"", content_type: str = "") -> None:
        if self.answered or self.ended:
            return
        response = self._response(status)
        if body:
            response.body = body
            response.headers.add("Content-Type", content_type or "application/sdp")
        self.ua.service.endpoint.respond(self.transaction, response, self.ua.service.now())
        self.ua.service.after_application()

    def answer(
        self,
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: dict[str, str] | None = None,
    ) -> None:
        if self.answered or self.ended:
            return
        try:
            dialog = Dialog.as_uas(self.request, self.local_tag)
        except SipProtocolError:
            # Checked on arrival, so not expected: still, a call that cannot be answered ends
            # here with a final response rather than holding its slot (never half-answered).
            log.warning("call %s: cannot build the dialog, refusing", self.request.call_id)
            self.reject(500, "Server Internal Error")
            return
        self.answered = True
        response = self._response(200)
        for name, value in {**self.response_headers, **(headers or {})}.items():
            response.headers.add(name, value)
        secure = self.request.uri.scheme == "sips"
        response.headers.add("Contact", str(self.ua.contact(self.peer, secure=secure)))
        response.headers.add("Allow", ", ".join(self.ua.service.endpoint.settings.allow))
        if body:
            response.body = body
            response.headers.add("Content-Type", content_type)
        self.dialog = dialog
        self.ua.dialogs[self.dialog.id] = self
        now = self.ua.service.now()
        self.ua.service.endpoint.respond(self.transaction, response, now)
        # The core, not the transaction, retransmits the 2xx on unreliable transports too
        # (RFC 6026): a lost 200 is resent until the ACK arrives.
        self.retransmitter = AnswerRetransmitter(
            response, now, self.ua.service.endpoint.settings.timers
        )
        self._arm()
        self.ua.service.after_application()

    def reject(
        self,
        status: int,
        reason: str = "",
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        end_reason: str = "rejected",
    ) -> None:
        if self.answered or self.ended:
            return
        response = self._response(status, reason)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in items:
            response.headers.add(name, value)
        self.ua.service.endpoint.respond(self.transaction, response, self.ua.service.now())
        self._end(end_reason)
        self.ua.service.after_application()

    def _response(self, status: int, reason: str = "") -> Response:
        return make_response(self.request, status, reason, to_tag=self.local_tag)

    def _forget(self) -> None:
        self.ua.pending.pop(id(self.transaction), None)


MAX_AUTH_TRIES = 2  # answers to 401/407 for one INVITE before its failure is final


@dataclass(eq=False, kw_only=True)
class OutgoingCall(SipCall):
    """Our INVITE to a trunk: provisional and final responses, Digest challenges answered with
    `credentials`, CANCEL (sent once a provisional came, s9.1), and the 2xx ACKed - every
    retransmission of it too (s13.2.2.4). A 2xx that crosses our CANCEL is ACKed and hung up."""

    credentials: DigestClient | None = None
    transaction: ClientTransaction | None = None
    on_progress: Callable[[Response], None] | None = None  # a 1xx other than 100
    on_answered: Callable[[Response], None] | None = None
    on_failed: Callable[[int, str, Response | None], None] | None = None  # status, reason
    # A 422 (RFC 4028 s7.4): the session timer headers to send the INVITE again with, or None
    on_interval_too_small: Callable[[Response], dict[str, str] | None] | None = None
    provisional: bool = False
    cancelling: bool = False
    cancel_sent: bool = False
    auth_tries: int = 0
    final: Response | None = None
    cancel_headers: dict[str, str] = field(default_factory=dict)  # on CANCEL, or the BYE
    ack: Request | None = None  # the ACK of our INVITE's 2xx, sent again for each retransmission

    def send(self) -> None:
        """Send the INVITE (again, after a challenge)."""
        now = self.ua.service.now()
        self.transaction = self.ua.service.endpoint.send_request(self.request, self.peer, now)
        self.ua.invites[id(self.transaction)] = self
        self.ua.service.after_application()

    def cancel(self, headers: dict[str, str] | None = None) -> None:
        """Give up on an unanswered call: CANCEL now, or once a provisional response says the
        far end has the INVITE. Answered calls are ended with `hangup`."""
        if self.answered or self.ended or self.cancelling:
            return
        self.cancelling = True
        self.cancel_headers = dict(headers or {})
        if self.provisional:
            self._send_cancel()

    def _send_cancel(self) -> None:
        if self.cancel_sent:
            return
        self.cancel_sent = True
        invite = self.request
        cancel = Request(method="CANCEL", uri=invite.uri)
        cancel.headers.add("Via", invite.headers.get("Via") or "")  # the INVITE's, same branch
        for name in ("Route",):
            for value in invite.headers.get_all(name):
                cancel.headers.add(name, value)
        cancel.headers.add("Max-Forwards", "70")
        cancel.headers.add("From", invite.headers.get("From") or "")
        cancel.headers.add("To", invite.headers.get("To") or "")
        cancel.headers.add("Call-ID", invite.call_id)
        cancel.headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
        for name, value in self.cancel_headers.items():
            cancel.headers.add(name, value)
        self.ua.service.endpoint.send_request(cancel, self.peer, self.ua.service.now())
        self.ua.service.after_application()

    def invite_response(self, response: Response) -> None:
        """A response to our INVITE (its transaction passes 2xx retransmissions on too)."""
        if self.ended:
            if 200 <= response.status < 300 and self.dialog is not None:
                self._ack()  # a retransmitted 2xx after we hung up: ACK, the BYE is on its way
            return
        status = response.status
        if status < 200:
            self.provisional = True
            if self.cancelling:
                self._send_cancel()
            elif status > 100 and self.on_progress is not None:
                self.on_progress(response)
            return
        if status < 300:
            first = self.dialog is None
            if first:
                self.dialog = Dialog.as_uac(self.request, response)
                self.ua.dialogs[self.dialog.id] = self
                self.answered = True
                self.final = response
                self.remote_allow = allowed_methods(response)
            self._ack()
            if not first:
                return
            if self.cancelling:
                self.hangup(self.cancel_headers)  # it crossed our CANCEL
            elif self.on_answered is not None:
                self.on_answered(response)
            return
        self.final = response
        if status in (401, 407) and not self.cancelling and self._retry_with_auth(response):
            return
        if status == 422 and not self.cancelling and self.on_interval_too_small is not None:
            headers = self.on_interval_too_small(response)
            if headers is not None:
                self._resend(headers)
                return
        self._fail(status, response.reason or "", response)

    def _ack(self) -> None:
        """ACK the 2xx; a retransmitted 2xx gets the very same ACK again (s13.2.2.4)."""
        assert self.dialog is not None
        if self.ack is None:
            self.ack = self.dialog.create_request("ACK", self._via())  # the INVITE's CSeq
        self.ua.service.endpoint.send_stateless(self.ack, self.peer)
        self.ua.service.after_application()

    def _retry_with_auth(self, challenge: Response) -> bool:
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
        self._resend({"Proxy-Authorization" if proxy else "Authorization": answer})
        return True

    def _resend(self, headers: dict[str, str]) -> None:
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
        retry.headers.prepend("Via", str(self._via().with_params(branch=new_branch())))
        for name, value in headers.items():
            retry.headers.add(name, value)
        retry.body = self.request.body
        self.request = retry
        self.provisional = False
        self.send()

    def transaction_failed(self, timed_out: bool) -> None:
        """No final response (Timer B) or the transport failed."""
        if self.ended or self.answered:
            return
        if timed_out:
            self._fail(408, "Request Timeout", None)
        else:
            self._fail(503, "Service Unavailable", None)

    def _fail(self, status: int, reason: str, response: Response | None) -> None:
        on_failed = self.on_failed
        self.on_failed = None
        if on_failed is not None:
            on_failed(status, reason, response)
        self._end("cancel" if self.cancelling and status == 487 else "rejected")

    def _forget(self) -> None:
        if self.transaction is not None:
            self.ua.invites.pop(id(self.transaction), None)
        self.on_progress = self.on_answered = None
        self.on_interval_too_small = None


def allowed_methods(message: Request | Response) -> frozenset[str]:
    """The methods a message's Allow headers list."""
    return frozenset(
        item.strip().upper()
        for line in message.headers.get_all("Allow")
        for item in line.split(",")
    )


InviteHandler = Callable[[IncomingCall], None]


def reject_invites(call: IncomingCall) -> None:
    """The default until inbound calls land: refuse politely, never drop silently."""
    call.reject(480, "Temporarily Unavailable")


class SipUserAgent:
    """Dispatches endpoint events; owns calls and dialogs."""

    def __init__(self, host: str, port: int, on_invite: InviteHandler = reject_invites) -> None:
        self.host = host
        self.port = port
        self.on_invite = on_invite
        self.dialogs: dict[tuple[str, str, str], SipCall] = {}
        self.pending: dict[int, IncomingCall] = {}
        # requests we sent inside dialogs, by transaction: (call, request)
        self.requests: dict[int, tuple[SipCall, Request]] = {}
        self.invites: dict[int, OutgoingCall] = {}  # our INVITEs, by client transaction
        # requests of ours outside any call (REGISTER): their final response, or None
        self.standalone: dict[int, Callable[[Response | None], None]] = {}
        self._service: SipService | None = None

    @property
    def service(self) -> SipService:
        assert self._service is not None
        return self._service

    def attach(self, service: SipService) -> None:
        self._service = service

    def send_request(
        self, request: Request, peer: Peer, on_final: Callable[[Response | None], None]
    ) -> None:
        """A request outside any call (REGISTER); `on_final` gets its final response, or None
        when none came (timeout, transport failure)."""
        transaction = self.service.endpoint.send_request(request, peer, self.service.now())
        self.standalone[id(transaction)] = on_final
        self.service.after_application()

    def via(self, peer: Peer) -> Via:
        """Our Via for a request to `peer` (no branch yet)."""
        port = self.service.local_port(peer.transport) if self._service else self.port
        return Via(transport=peer.transport.upper(), host=self.host, port=port)

    def contact(self, peer: Peer, *, secure: bool = False) -> Address:
        """Our Contact for a dialog with `peer`: the listener of the transport the request came
        on (ACK and BYE are sent there, s12.2.1.1), and `sips:` only when the request was
        `sips:` (s12.1.1) - `sip:...;transport=tls` peers may refuse a `sips:` target."""
        params = (("transport", peer.transport),) if peer.transport != "udp" else ()
        port = self.service.local_port(peer.transport) if self._service else self.port
        return Address(
            uri=Uri(scheme="sips" if secure else "sip", host=self.host, port=port, params=params)
        )

    def __call__(self, service: SipService, event: EndpointEvent) -> None:
        self._service = service
        if isinstance(event, RequestReceived):
            self._request(event)
        elif isinstance(event, AckReceived):
            call = self._find_dialog(event.request)
            if call is not None:
                call.ack_received(event.request)
        elif isinstance(event, CancelReceived):
            call = self.pending.get(id(event.invite))
            if call is not None and not call.answered:
                call.reject(487, end_reason="cancel")
        elif isinstance(event, ResponseForUs) and id(event.transaction) in self.standalone:
            if event.response.status >= 200:
                self.standalone.pop(id(event.transaction))(event.response)
        elif isinstance(event, RequestTimedOut | RequestFailed) and (
            id(event.transaction) in self.standalone
        ):
            self.standalone.pop(id(event.transaction))(None)
        elif isinstance(event, ResponseForUs) and id(event.transaction) in self.invites:
            self.invites[id(event.transaction)].invite_response(event.response)
        elif isinstance(event, RequestTimedOut | RequestFailed) and (
            id(event.transaction) in self.invites
        ):
            outgoing = self.invites.pop(id(event.transaction))
            outgoing.transaction_failed(isinstance(event, RequestTimedOut))
        elif isinstance(event, ResponseForUs):
            sent = self.requests.get(id(event.transaction))
            if sent is not None:
                if event.response.status >= 200 and sent[1].method != "INVITE":
                    del self.requests[id(event.transaction)]
                sent[0].response_received(sent[1], event.response)
        elif isinstance(event, RequestTimedOut | RequestFailed):
            sent = self.requests.pop(id(event.transaction), None)
            if sent is not None and sent[1].method == "REFER":
                if sent[0].on_refer_response is not None:  # the transfer failed, not the call
                    sent[0].on_refer_response(408, "Request Timeout")
            elif sent is not None and sent[1].method != "BYE":
                log.info("call %s: no answer to our %s", sent[0].request.call_id, sent[1].method)
                if sent[1].method in ("INVITE", "UPDATE") and sent[0].on_refresh_response:
                    sent[0].on_refresh_response(None)
                sent[0].hangup()

    def _find_dialog(self, request: Request) -> SipCall | None:
        try:
            key = (request.call_id, request.to.tag or "", request.from_.tag or "")
        except SipProtocolError:
            return None
        return self.dialogs.get(key)

    def _request(self, event: RequestReceived) -> None:
        request, transaction = event.request, event.transaction
        endpoint = self.service.endpoint
        now = self.service.now()
        to_tag = request.to.tag
        if to_tag is not None:
            self._in_dialog(event)
            return
        if request.method == "OPTIONS":
            endpoint.respond(transaction, endpoint.options_response(request), now)
        elif request.method == "INVITE":
            try:
                check_dialog_creating(request)
            except SipProtocolError as err:
                # Refused before any work or slot: 400 with a fixed phrase (s8.2.1 and s12.1.1;
                # the peer's bytes are never echoed), counted by what was wrong.
                endpoint.stats[f"invite_refused_{err.detail.replace(' ', '_').lower()}"] += 1
                endpoint.respond(
                    transaction, make_response(request, 400, "Bad Request", to_tag=new_tag()), now
                )
                return
            call = IncomingCall(ua=self, request=request, transaction=transaction, peer=event.peer)
            self.pending[id(transaction)] = call
            endpoint.respond(transaction, make_response(request, 100), now)
            self.service.transmit_now()
            self.on_invite(call)
        elif request.method == "BYE":
            endpoint.respond(transaction, make_response(request, 481), now)
        else:
            endpoint.respond(transaction, make_response(request, 405), now)

    def _in_dialog(self, event: RequestReceived) -> None:
        request, transaction = event.request, event.transaction
        endpoint = self.service.endpoint
        now = self.service.now()
        call = self._find_dialog(request)
        if call is None or call.dialog is None:
            endpoint.respond(transaction, make_response(request, 481), now)  # s12.2.2
            return
        try:
            call.dialog.check_request(request)
        except SipProtocolError as err:
            endpoint.respond(transaction, make_response(request, err.status, err.reason), now)
            return
        if request.method == "BYE":
            endpoint.respond(transaction, make_response(request, 200), now)
            call._end("bye")
        elif request.method in ("INVITE", "UPDATE"):
            self._offer(call, event)
        elif request.method == "NOTIFY":
            endpoint.respond(transaction, make_response(request, 200), now)
            if call.on_notify is not None:
                call.on_notify(request)
        elif request.method == "REFER":
            response = make_response(request, 405)
            response.headers.add("Allow", ", ".join(endpoint.settings.allow))
            endpoint.respond(transaction, response, now)
        elif request.method in IN_DIALOG_OK:
            endpoint.respond(transaction, make_response(request, 200), now)
        else:
            endpoint.respond(transaction, make_response(request, 501), now)

    def _offer(self, call: SipCall, event: RequestReceived) -> None:
        """A re-INVITE or UPDATE: a new offer (hold, resume, new address, codec) or a session
        refresh (RFC 4028). 200 with our answer; the 2xx to a re-INVITE is resent until ACKed."""
        request, transaction = event.request, event.transaction
        endpoint = self.service.endpoint
        now = self.service.now()
        if request.method == "INVITE" and call.retransmitter is not None and call.timer:
            # RFC 3261 s14.2: an INVITE while our 2xx to the previous one awaits its ACK.
            response = make_response(request, 500)
            response.headers.add("Retry-After", "1")
            endpoint.respond(transaction, response, now)
            return
        body = b""
        if call.on_offer is not None:
            try:
                body = call.on_offer(request)
            except SipProtocolError as err:
                refusal = make_response(request, err.status, err.reason)
                if isinstance(err, SessionIntervalTooSmall):  # 422 carries Min-SE (RFC 4028 s9)
                    for name, value in err.headers.items():
                        refusal.headers.add(name, value)
                endpoint.respond(transaction, refusal, now)
                return
        response = make_response(request, 200)
        for name, value in call.response_headers.items():
            response.headers.add(name, value)
        response.headers.add("Contact", str(self.contact(event.peer)))
        if body:
            response.body = body
            response.headers.add("Content-Type", "application/sdp")
        endpoint.respond(transaction, response, now)
        if request.method == "INVITE":
            call.retransmitter = AnswerRetransmitter(response, now, endpoint.settings.timers)
            call._arm()
