"""The user agent core, sans-IO: the endpoint's events dispatched to INVITE sessions.

`UserAgent(endpoint, host, port)` sits on a `SipEndpoint` (which has answered what the core
refuses and matched transactions). `handle_event(event, now)` takes each endpoint event:
out-of-dialog OPTIONS get 200 with our capabilities, INVITEs become `InviteSession`s (100 Trying
sent; `InviteReceived` out), other out-of-dialog requests 481 (BYE) or 405; in-dialog requests go
to their session after the dialog's CSeq check (481 with no dialog, 500 for a stale CSeq,
s12.2.2); ACKs of 2xx and CANCELs to their session; responses and timeouts to whoever sent the
request. What happened comes out of `next_event()`; the sessions' deadlines out of `get_timer()`
(one for the whole agent), and `handle_timer(now)` runs the due ones. What to transmit is the
endpoint's `outgoing()`.

Requests outside any call (REGISTER) go through `send_request`; their final response (or None)
comes out as `RequestAnswered`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from sipbridge.sip.deadlines import DeadlineHeap
from sipbridge.sip.dialog import check_dialog_creating, new_tag
from sipbridge.sip.endpoint import (
    AckReceived,
    CancelReceived,
    EndpointEvent,
    Peer,
    RequestReceived,
    RequestTimedOut,
    ResponseForUs,
    SipEndpoint,
)
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.events import EventQueue
from sipbridge.sip.headers import Address, Via
from sipbridge.sip.message import Request, Response, make_response
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction
from sipbridge.sip.ua.invite import InviteReceived, InviteSession, Role, SessionEvent
from sipbridge.sip.ua.proxy import ProxiedCall, ProxiedCalls, ProxiedInvite, forwarded_invite
from sipbridge.sip.uri import Uri

DialogId = tuple[str, str, str]  # Call-ID, local tag, remote tag


@dataclass(slots=True, kw_only=True)
class RequestAnswered:
    """The final response to a request of ours outside any call, or None when none came."""

    transaction: ClientTransaction
    response: Response | None


AgentEvent = SessionEvent | RequestAnswered


class _SessionDeadlines(DeadlineHeap[InviteSession]):
    """The sessions' deadlines, each asked for by a direct call (`DeadlineHeap`)."""

    __slots__ = ()

    def deadline_of(self, owner: InviteSession) -> float | None:
        return owner.get_timer()


class _ProxyDeadlines(DeadlineHeap[ProxiedInvite]):
    """The proxied INVITEs' deadlines, each asked for by a direct call (`DeadlineHeap`)."""

    __slots__ = ()

    def deadline_of(self, owner: ProxiedInvite) -> float | None:
        return owner.get_timer()


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled packages
class UserAgent:
    """Dispatches endpoint events to INVITE sessions; owns sessions and dialogs. `host` and
    `port` go into our Via and Contact; `local_port(transport)`, when given, says the port of a
    transport's listener instead. `send_trying`: answer every new INVITE 100 (s8.2.6.1) unless
    the application answers it before the endpoint's output is next drained (s17.2.1:
    `SipEndpoint.send_trying`)."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        host: str,
        port: int,
        *,
        local_port: Callable[[str], int | None] | None = None,
        send_trying: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.local_port = local_port
        self.send_trying = send_trying
        # While set (a node draining): out-of-dialog OPTIONS and INVITEs are answered 503 with
        # this Retry-After (s21.5.4), so that a load balancer's OPTIONS probe marks us down and
        # callers go elsewhere; requests within dialogs carry on.
        self.refuse_new: int | None = None
        self.dialogs: dict[DialogId, InviteSession] = {}
        self.pending: dict[int, InviteSession] = {}  # incoming INVITEs, by server transaction
        self._transactions: dict[int, InviteSession] = {}  # our requests, by client transaction
        self._standalone: set[int] = set()  # our requests outside any call
        # INVITEs proxied to another node (sip/ua/proxy.py), by client and server transaction
        self.proxies: dict[int, ProxiedInvite] = {}
        self.proxied_calls = ProxiedCalls()  # ... and answered 2xx: their dialogs' strays
        self._events: EventQueue[AgentEvent] = EventQueue()
        self._timers: DeadlineHeap[InviteSession] = _SessionDeadlines()
        self._proxy_timers: DeadlineHeap[ProxiedInvite] = _ProxyDeadlines()
        self._contact_texts: dict[tuple[str, int | None, str, bool], str] = {}

    # -- addresses -------------------------------------------------------------------------

    def _port(self, transport: str) -> int | None:
        return self.local_port(transport) if self.local_port is not None else self.port

    def via(self, peer: Peer) -> Via:
        """Our Via for a request to `peer` (no branch yet)."""
        return Via(
            transport=peer.transport.upper(), host=self.host, port=self._port(peer.transport)
        )

    def contact(self, peer: Peer, *, secure: bool = False) -> Address:
        """Our Contact for a dialog with `peer`: the listener of the transport the request came
        on (ACK and BYE are sent there, s12.2.1.1), and `sips:` only when the request was
        `sips:` (s12.1.1) - `sip:...;transport=tls` peers may refuse a `sips:` target."""
        params = (("transport", peer.transport),) if peer.transport != "udp" else ()
        uri = Uri(
            scheme="sips" if secure else "sip",
            host=self.host,
            port=self._port(peer.transport),
            params=params,
        )
        return Address(uri=uri)

    def contact_text(self, peer: Peer, *, secure: bool = False) -> str:
        """`contact(peer, secure=secure)` as a header value, made once per address."""
        key = (self.host, self._port(peer.transport), peer.transport, secure)
        text = self._contact_texts.get(key)
        if text is None:
            if len(self._contact_texts) >= 64:
                self._contact_texts.clear()
            text = self._contact_texts[key] = str(self.contact(peer, secure=secure))
        return text

    # -- what sessions use -------------------------------------------------------------------

    def emit(self, event: AgentEvent) -> None:
        self._events.append(event)

    def register(self, session: InviteSession) -> None:
        """`session` has a dialog (early or confirmed): in-dialog requests reach it."""
        assert session.dialog is not None
        self.dialogs[session.dialog.id] = session

    def track(self, transaction: ClientTransaction, session: InviteSession) -> None:
        self._transactions[id(transaction)] = session

    def schedule(self, session: InviteSession) -> None:
        """`session`'s deadline may have changed."""
        self._timers.schedule(session)

    def forget(self, session: InviteSession) -> None:
        """`session` is terminated: nothing of it is kept."""
        if session.dialog is not None and self.dialogs.get(session.dialog.id) is session:
            del self.dialogs[session.dialog.id]
        if session.server_transaction is not None:
            self.pending.pop(id(session.server_transaction), None)
        if self._transactions:  # (a UAS session's calls have none: no list made for them)
            for key in [k for k, s in self._transactions.items() if s is session]:
                del self._transactions[key]

    # -- the application's requests ------------------------------------------------------------

    def invite(
        self, request: Request, peer: Peer, *, local_tag: str | None = None
    ) -> InviteSession:
        """A UAC session for our INVITE `request` to `peer`; `session.send(now)` sends it."""
        tag = local_tag or request.from_.tag or new_tag()
        return InviteSession(self, role=Role.UAC, request=request, peer=peer, local_tag=tag)

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        """A request outside any call (REGISTER): its outcome comes as RequestAnswered."""
        transaction = self.endpoint.send_request(request, peer, now)
        self._standalone.add(id(transaction))
        return transaction

    def proxy(
        self, session: InviteSession, forwarded: Request, target: Peer, now: float
    ) -> ProxiedInvite:
        """Hand an INVITE we received (`session`, answered only 100 so far) on to `target` as
        a stateful proxy: the session is forgotten, its server transaction relays what the
        target answers."""
        assert session.server_transaction is not None and session.role is Role.UAS
        self.forget(session)
        proxied = ProxiedInvite(
            self.endpoint, session.server_transaction, forwarded, target, session.peer
        )
        self.proxies[id(session.server_transaction)] = proxied
        self.proxies[id(proxied.start(now))] = proxied
        self._proxy_timers.schedule(proxied)
        return proxied

    def give_up(self, proxied: ProxiedInvite, now: float) -> None:
        """The owner of a proxied INVITE is gone: 503 with Retry-After to the caller now."""
        proxied.give_up(now)
        self._proxied(proxied)

    def _proxy_stray(
        self,
        request: Request,
        call: ProxiedCall,
        now: float,
        transaction: ServerTransaction | None = None,
    ) -> None:
        """A request of a proxied call's dialog that came here: the caller's sent on to the
        owner, the owner's to the caller - an ACK statelessly, any other through a relay of
        its own."""
        to, uri = call.route(request)
        forwarded = forwarded_invite(request, self.via(to), uri=uri)
        self.endpoint.stats[f"proxied_stray_{request.method.lower()}"] += 1
        if transaction is None:
            self.endpoint.send_stateless(forwarded, to)
            return
        proxied = ProxiedInvite(self.endpoint, transaction, forwarded, to)
        self.proxies[id(transaction)] = proxied
        self.proxies[id(proxied.start(now))] = proxied
        self._proxy_timers.schedule(proxied)

    def _proxied(self, proxied: ProxiedInvite) -> None:
        """After a proxied INVITE acted: forgotten once done, else its deadline kept."""
        if not proxied.done:
            self._proxy_timers.schedule(proxied)
            return
        assert proxied.client is not None
        for key in (id(proxied.server), id(proxied.client)):
            if self.proxies.get(key) is proxied:
                del self.proxies[key]

    # -- events, timers ------------------------------------------------------------------------

    def next_event(self) -> AgentEvent | None:
        return self._events.take()

    def get_timer(self) -> float | None:
        """The earliest deadline of a session or a proxied INVITE."""
        sessions, proxied = self._timers.earliest(), self._proxy_timers.earliest()
        if sessions is None or proxied is None:
            return proxied if sessions is None else sessions
        return min(sessions, proxied)

    def handle_timer(self, now: float) -> None:
        for session in self._timers.due(now):
            session.handle_timer(now)
        for proxied in self._proxy_timers.due(now):
            proxied.handle_timer(now)
            self._proxied(proxied)

    # -- endpoint events -----------------------------------------------------------------------

    def handle_event(self, event: EndpointEvent, now: float) -> None:
        if isinstance(event, RequestReceived):
            self._request(event, now)
        elif isinstance(event, AckReceived):
            session = self._find_dialog(event.request)
            if session is not None:
                session.ack_received(event.request)
            elif (call := self.proxied_calls.find(event.request.call_id, now)) is not None:
                self._proxy_stray(event.request, call, now)
        elif isinstance(event, CancelReceived):
            if (proxied := self.proxies.get(id(event.invite))) is not None:
                proxied.cancel(now)
                self._proxied(proxied)
                return
            incoming = self.pending.get(id(event.invite))
            if incoming is not None:
                incoming.cancel_received(now)
        else:
            response = event.response if isinstance(event, ResponseForUs) else None
            key = id(event.transaction)
            if (proxied := self.proxies.get(key)) is not None:
                if response is not None:
                    proxied.response(response, now)
                    self._proxied_answer(proxied, response, now)
                else:
                    proxied.failed(now, timed_out=isinstance(event, RequestTimedOut))
                self._proxied(proxied)
                return
            if key in self._standalone:
                if response is None or response.status >= 200:
                    self._standalone.discard(key)
                    assert isinstance(event.transaction, ClientTransaction)
                    self.emit(RequestAnswered(transaction=event.transaction, response=response))
                return
            session = self._transactions.get(key)
            if session is None or not isinstance(event.transaction, ClientTransaction):
                return
            if event.transaction.request.method == "INVITE" and session.dialog is None:
                if response is not None:
                    session.invite_response(response, now)
                else:
                    session.transaction_failed(isinstance(event, RequestTimedOut))
            elif session.role is Role.UAC and event.transaction.request is session.request:
                if response is not None:  # our INVITE's 2xx again (s13.2.2.4)
                    session.invite_response(response, now)
            else:
                session.response_received(event.transaction, response, now)

    def _proxied_answer(self, proxied: ProxiedInvite, response: Response, now: float) -> None:
        """Calls kept for the strays of their dialogs from the owner's 2xx to their INVITE
        until the answer to their BYE."""
        method, call_id = proxied.forwarded.method, proxied.forwarded.call_id
        if method == "INVITE" and 200 <= response.status < 300 and proxied.source is not None:
            self.proxied_calls.accepted(proxied, response, now)
        elif method == "BYE" and (200 <= response.status < 300 or response.status == 481):
            self.proxied_calls.ended(call_id)

    def _find_dialog(self, request: Request) -> InviteSession | None:
        try:
            key = (request.call_id, request.to.tag or "", request.from_.tag or "")
        except SipProtocolError:
            return None
        return self.dialogs.get(key)

    def _request(self, event: RequestReceived, now: float) -> None:
        request, transaction = event.request, event.transaction
        endpoint = self.endpoint
        if request.to.tag is not None:
            self._in_dialog(event, now)
        elif self.refuse_new is not None and request.method in ("OPTIONS", "INVITE"):
            endpoint.stats[f"{request.method.lower()}_refused_unavailable"] += 1
            refusal = make_response(request, 503, "Service Unavailable", to_tag=new_tag())
            refusal.headers.add("Retry-After", str(self.refuse_new))
            endpoint.respond(transaction, refusal, now)
        elif request.method == "OPTIONS":
            endpoint.respond(transaction, endpoint.options_response(request), now)
        elif request.method == "INVITE":
            try:
                check_dialog_creating(request)
            except SipProtocolError as err:
                # Refused before any work or slot: 400 with a fixed phrase (s8.2.1 and s12.1.1;
                # the peer's bytes are never echoed), counted by what was wrong.
                endpoint.stats[f"invite_refused_{err.detail.replace(' ', '_').lower()}"] += 1
                refusal = make_response(request, 400, "Bad Request", to_tag=new_tag())
                endpoint.respond(transaction, refusal, now)
                return
            session = InviteSession(
                self,
                role=Role.UAS,
                request=request,
                peer=event.peer,
                local_tag=new_tag(),
                transaction=transaction,
            )
            self.pending[id(transaction)] = session
            if self.send_trying:  # (not made when the application answers at once)
                endpoint.send_trying(transaction, now)
            self.emit(InviteReceived(session=session))
        elif request.method == "BYE":
            endpoint.respond(transaction, make_response(request, 481), now)
        else:
            endpoint.respond(transaction, make_response(request, 405), now)

    def _in_dialog(self, event: RequestReceived, now: float) -> None:
        request, transaction = event.request, event.transaction
        session = self._find_dialog(request)
        if session is None and (call := self.proxied_calls.find(request.call_id, now)):
            self._proxy_stray(request, call, now, transaction)
            return
        if session is None or session.dialog is None:
            self.endpoint.respond(transaction, make_response(request, 481), now)  # s12.2.2
            return
        try:
            session.dialog.check_request(request)
        except SipProtocolError as err:
            response = make_response(request, err.status, err.reason)
            self.endpoint.respond(transaction, response, now)
            return
        session.request_received(request, transaction, now)
