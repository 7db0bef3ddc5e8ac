"""The transaction layer and the stateless checks of a UAS core, sans-IO (RFC 3261 s8.2, s17,
s18.2, RFC 3581).

`SipEndpoint.receive(data, peer, now)` takes a datagram or a framed stream message from a peer;
what to transmit comes out of `outgoing()` as (bytes, peer) pairs, and what the application must
handle out of `next_event()`: new requests (each with its server transaction), ACKs for 2xx,
CANCELs, responses to our requests, timeouts. Requests that fail the core's checks are answered
here (400 with the fault, 405, 416, 420, 482, 483, 505, 513) and never reach the application.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from mypy_extensions import mypyc_attr

from sipbridge.sip.admission import LIMITED_METHODS, Admission, Verdict
from sipbridge.sip.deadlines import DeadlineHeap
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.events import EventQueue
from sipbridge.sip.message import (
    Request,
    Response,
    atomic_tuple,
    make_response,
    parse_message,
)
from sipbridge.sip.tokens import token_hex
from sipbridge.sip.transaction import (
    ClientTransaction,
    MergeKey,
    ResponseReceived,
    ServerTransaction,
    State,
    TimerSettings,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    client_key,
    server_key,
)

# REFER is ours to send (TransferSIPParticipant), not to take: a carrier's REFER gets 405.
ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY", "UPDATE")
# Only what is implemented: RFC 4028 session timers (sip/ua/session_timer.py). Not `replaces`
# (RFC 3891): nothing takes an INVITE with Replaces, so a Require of it gets 420.
SUPPORTED = ("timer",)
ACCEPT = ("application/sdp",)
# Server transactions held at most (a new request past it: 503). Most of them, under load, are
# answered and only linger (below): 3-4 KB each, measured with bench/sip.py's UAS.
MAX_TRANSACTIONS = 200_000
# From this many server transactions on, a new one lingers T4 after its final response instead
# of 64*T1 (Timers J and L on UDP, 32 s): what it waits for are retransmissions of its request,
# which come within T2 of a lost response, and T4 is the longest a message stays in the network
# (RFC 3261 table 4; Kamailio's tm keeps its transactions 5 s, its wait timer, in every case).
# With every linger at 32 s a steady 1,600 calls/s (two transactions each) filled the 100,000
# held then, and every call past it was refused 503 (issue 18); now the lingers stay the RFC's
# up to about 300 calls/s, and (MAX - CROWDED) / (2 * T4) = 18,000 calls/s fit.
CROWDED_TRANSACTIONS = 20_000
# what a request must carry for us to answer it at all (s8.1.1): (key, name)
_CORE_HEADERS: Final = (
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
)
# how the datagrams of the requests that `Admission` limits begin (RFC 3261 s7.1 Request-Line)
_LIMITED_STARTS: Final = tuple(f"{method} ".encode() for method in sorted(LIMITED_METHODS))


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from / goes to. `connection` names a stream connection (TCP/TLS)
    so responses reuse it (s18.2.2); datagrams have none."""

    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int
    connection: int | None = None
    # (host, port), made once: every datagram to the peer is sent to it
    address: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", (self.host, self.port))

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


# A 100 Trying waiting for the next `outgoing()`: its transaction, the response (None: to be
# made then, `send_trying`), where it goes, and the time it was asked for.
_Held = tuple[ServerTransaction, Response | None, Peer, float]


# -- events for the application ----------------------------------------------------------------


# The events made for every request write their own `__init__` (dataclass `init=False`):
# mypyc compiles it, where the generated one stays interpreted (issue 18).


@dataclass(slots=True, init=False)
class RequestReceived:
    """A new request (not ACK): answer it through `respond(transaction, response)`."""

    request: Request
    transaction: ServerTransaction
    peer: Peer

    def __init__(self, *, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        self.request = request
        self.transaction = transaction
        self.peer = peer


@dataclass(slots=True, init=False)
class AckReceived:
    """An ACK matching no transaction: the ACK for a 2xx, owned by the dialog (s13.3.1.4)."""

    request: Request
    peer: Peer

    def __init__(self, *, request: Request, peer: Peer) -> None:
        self.request = request
        self.peer = peer


@dataclass(slots=True, kw_only=True)
class CancelReceived:
    """A CANCEL matched a pending INVITE; the CANCEL itself was answered 200 (s9.2). The
    application should answer the INVITE with 487."""

    cancel: Request
    invite: ServerTransaction


@dataclass(slots=True, kw_only=True)
class ResponseForUs:
    """A response to a request we sent (through its client transaction)."""

    response: Response
    transaction: ClientTransaction


@dataclass(slots=True, kw_only=True)
class RequestTimedOut:
    transaction: ClientTransaction | ServerTransaction


@dataclass(slots=True, kw_only=True)
class RequestFailed:
    transaction: ClientTransaction | ServerTransaction


EndpointEvent = (
    RequestReceived | AckReceived | CancelReceived | ResponseForUs | RequestTimedOut | RequestFailed
)


@dataclass(slots=True, kw_only=True)
class EndpointSettings:
    timers: TimerSettings = field(default_factory=TimerSettings)
    user_agent: str = "sipbridge"
    allow: tuple[str, ...] = ALLOW
    supported: tuple[str, ...] = SUPPORTED
    accept: tuple[str, ...] = ACCEPT


@mypyc_attr(native_class=False)  # (a dict's own subclass: what `__missing__` needs)
class Stats(dict[str, int]):
    """What the endpoint counted, by name: 0 for a name never counted, as a `Counter` reads.
    A dict with `__missing__` alone, not a Counter: Counter's `__delitem__`, written in Python,
    makes every store into one a call of a Python method (about 1,000 instructions an increment,
    eight increments a call of bench/sip.py, issue 18)."""

    def __missing__(self, key: str) -> int:
        return 0


class _TransactionDeadlines(DeadlineHeap[ClientTransaction | ServerTransaction]):
    """The transactions' deadlines, each asked for by a direct call (`DeadlineHeap`)."""

    __slots__ = ()

    def deadline_of(self, owner: ClientTransaction | ServerTransaction) -> float | None:
        return owner.get_timer()


class SipEndpoint:
    def __init__(
        self, settings: EndpointSettings | None = None, admission: Admission | None = None
    ) -> None:
        self.settings = settings or EndpointSettings()
        self.admission = admission  # per-address limits on new requests (None: none)
        self.server_transactions: dict[tuple[str, ...], ServerTransaction] = {}
        # past it, a new request gets 503 (MAX_TRANSACTIONS as it was when made: compiled, an
        # attribute's read, where a module's variable is a search of its dictionary, issue 18)
        self.max_transactions = MAX_TRANSACTIONS
        self.crowded_transactions = CROWDED_TRANSACTIONS
        self.client_transactions: dict[tuple[str, str], ClientTransaction] = {}
        self._outgoing: list[tuple[bytes, Peer]] = []
        # 100 Trying responses not yet handed out: each goes out at the next `outgoing()`
        # unless its transaction sent another response first (RFC 3261 s17.2.1: the 100 is
        # needed only when the TU does not answer at once).
        self._held: list[_Held] | None = None
        # What the application must handle, in order (`next_event`)
        self._events: EventQueue[EndpointEvent] = EventQueue()
        self._timers: DeadlineHeap[ClientTransaction | ServerTransaction] = _TransactionDeadlines()
        # (Call-ID, From tag, CSeq) of requests outside a dialog, to spot merged ones (s8.2.2.2)
        self._merge_keys: dict[MergeKey, ServerTransaction] = {}
        self.stats = Stats()
        self._allow_text: tuple[tuple[str, ...], str] | None = None

    # -- input ---------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float, trying_sent: bool = False) -> None:
        """One message from the network. Never raises: bad input is answered or counted.
        `trying_sent`: the transport answered this INVITE 100 Trying already (a new one: the
        transaction records that 100 as sent, and sends no other)."""
        self.stats["received"] += 1
        if (
            self.admission is not None
            and data.startswith(_LIMITED_STARTS)
            and self.admission.dropping(peer.host, now)
        ):
            # A flood past its source's drop threshold: not parsed, not answered. (A re-INVITE
            # from that source waits for the bucket too; its sender retransmits.)
            self.stats["dropped_flood"] += 1
            return
        try:
            message = parse_message(data, stream=peer.reliable)
        except SipProtocolError as err:
            self.stats["malformed"] += 1
            self._answer_unparseable(data, peer, err)
            return
        if isinstance(message, Response):
            self._receive_response(message, peer, now)
        else:
            try:
                self._receive_request(message, peer, now, trying_sent)
            except SipProtocolError as err:
                self.stats["rejected"] += 1
                self._reject(message, peer, err.status, err.reason, err.detail)

    def _receive_response(self, response: Response, peer: Peer, now: float) -> None:
        try:
            key = client_key(response)
        except SipProtocolError:
            self.stats["malformed"] += 1  # responses to malformed responses are never sent
            return
        transaction = self.client_transactions.get(key)
        if transaction is None:
            # RFC 6026 s8.9: a response matching no transaction is discarded. 2xx
            # retransmissions reach the dialog through the INVITE's Accepted state.
            self.stats["stray_responses"] += 1
            return
        transaction.receive_response(response, now)
        self._drain(transaction)

    def _receive_request(
        self, request: Request, peer: Peer, now: float, trying_sent: bool = False
    ) -> None:
        if self.admission is not None and not self.admission.allowed(peer.host):
            self.stats["dropped_not_allowed"] += 1
            return
        # Checks needing the core headers first: without them we cannot even answer (s8.1.1).
        index = request.headers._lines()
        if (
            "via" not in index
            or "from" not in index
            or "to" not in index
            or "call-id" not in index
            or "cseq" not in index
        ):
            # (the first missing, in this order; the common case above: five lookups written
            # out, not a loop over a table of them, compiled a generic iteration, issue 18)
            for header, name in _CORE_HEADERS:
                if header not in index:
                    raise SipProtocolError(400, "Bad Request", f"missing {name} header")
        via = request.top_via
        request.from_, request.to, request.call_id  # noqa: B018 - validate now, answer 400 if malformed
        cseq = request.cseq
        if cseq.method != request.method:
            raise SipProtocolError(400, "Bad Request", "CSeq method does not match")
        # RFC 3581: record where the request really came from, for the responses.
        if via.rport is not None or via.host != peer.host:
            params = {"received": peer.host}
            if via.rport is not None:
                params["rport"] = str(peer.port)
            fixed = via.with_params(**params)
            _replace_top_via(request, str(fixed))

        key = server_key(request)
        existing = self.server_transactions.get(key)
        if existing is not None:  # the key includes the method (INVITE for its ACK)
            if request.method == "ACK" and existing.state is State.ACCEPTED:
                # An ACK for our 2xx that reused the INVITE's branch (RFC 6026 s8.9): it is the
                # dialog's, as any 2xx ACK.
                self._events.append(AckReceived(request=request, peer=peer))
                return
            self.stats["retransmissions"] += 1
            existing.receive_request(request, now)
            self._drain(existing)
            return
        if request.method == "ACK":
            self._events.append(AckReceived(request=request, peer=peer))
            return

        if (
            self.admission is not None
            and request.method not in ("ACK", "CANCEL")
            and request.to.tag is None
        ):
            verdict = self.admission.admit(peer.host, request.method, now)
            if verdict is Verdict.DROP:
                self.stats["dropped_flood"] += 1
                return
            if verdict is Verdict.REFUSE:
                self.stats["refused_flood"] += 1
                raise SipProtocolError(503, "Service Unavailable", "over the rate for its source")
        self._check_request(request)
        merge_key = _merge_key(request)
        if merge_key is not None and merge_key in self._merge_keys:
            # The same request reached us again on another branch: a fork came back (s8.2.2.2).
            raise SipProtocolError(482, "Loop Detected")
        held = len(self.server_transactions)
        if held >= self.max_transactions:
            raise SipProtocolError(503, "Service Unavailable", "too many transactions")
        transaction = ServerTransaction(
            request, reliable=peer.reliable, timers=self.settings.timers
        )
        if held >= self.crowded_transactions:
            transaction.linger = self.settings.timers.t4  # (CROWDED_TRANSACTIONS)
            self.stats["short_lingers"] += 1
        self.server_transactions[key] = transaction
        transaction.key = key
        if merge_key is not None:
            self._merge_keys[merge_key] = transaction
            transaction.merge_key = merge_key
        transaction.peer = peer
        if request.method == "CANCEL":
            self._receive_cancel(request, transaction, now)
            return
        if trying_sent and request.method == "INVITE":
            self._trying_sent(transaction, now)
        self._events.append(RequestReceived(request=request, transaction=transaction, peer=peer))

    def _check_request(self, request: Request) -> None:
        """The UAS core's stateless checks (s8.2.1-8.2.3, s16.3 for loops)."""
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None:
            text = max_forwards.strip()
            if not text.isdigit() or len(text) > 3:
                raise SipProtocolError(400, "Bad Request", "malformed Max-Forwards")
            if int(text) == 0 and request.method != "OPTIONS":
                raise SipProtocolError(483, "Too Many Hops")
        if request.method not in self.settings.allow:
            raise SipProtocolError(405, "Method Not Allowed", request.method)
        if not request.uri.is_sip and request.uri.scheme != "tel":
            raise SipProtocolError(416, "Unsupported URI Scheme", request.uri.scheme)
        if request.method not in ("ACK", "CANCEL"):
            unsupported = [t for t in request.tokens("Require") if t not in self.settings.supported]
            if unsupported:
                raise SipProtocolError(420, "Bad Extension", ", ".join(unsupported))

    def _receive_cancel(self, cancel: Request, transaction: ServerTransaction, now: float) -> None:
        """s9.2: find the INVITE with the same branch; 200 to the CANCEL, 481 if none."""
        invite_key = (*server_key(cancel)[:-1], "INVITE")
        invite = self.server_transactions.get(invite_key)
        if invite is None:
            self.respond(transaction, make_response(cancel, 481, to_tag=_tag()), now)
            return
        # Matched: 200 even when the INVITE was already answered (the CANCEL then has no
        # effect); the response carries a To tag (s8.2.6.2), the INVITE's if it has one.
        final = invite.last_response
        to_tag = final.to.tag if final is not None and final.status > 100 else None
        self.respond(transaction, make_response(cancel, 200, to_tag=to_tag or _tag()), now)
        if final is None or final.status < 200:
            self._events.append(CancelReceived(cancel=cancel, invite=invite))

    # -- answering what the core refuses -------------------------------------------------

    def _answer_unparseable(self, data: bytes, peer: Peer, err: SipProtocolError) -> None:
        """Answer a request we could not parse if it has enough to answer (s8.2 and RFC 4475
        s3.1.2): a status line never gets an answer."""
        if data.lstrip()[:4] == b"SIP/":
            return
        try:
            # Parse again without the part that failed: the core headers may still be fine.
            request = _salvage_request(data)
        except SipProtocolError:
            return
        self._reject(request, peer, err.status, err.reason, err.detail)

    def _reject(self, request: Request, peer: Peer, status: int, reason: str, detail: str) -> None:
        if request.method == "ACK":
            return  # never answer an ACK
        try:
            response = make_response(request, status, reason, to_tag=_tag())
        except SipProtocolError:
            # A To we cannot parse cannot gain a tag: it is echoed as it came (s8.2.6.2 asks
            # for the tag; an answer without one still tells the peer, where silence would not).
            response = make_response(request, status, reason)
        # The reason phrase stays the fixed one of the status: details may quote the peer's own
        # bytes, which are never echoed back (a scanner learns nothing; no reflected payloads).
        self.stats[f"refused_{status}"] += 1
        if status == 405:
            response.headers.add("Allow", ", ".join(self.settings.allow))
        if status == 420:
            response.headers.add("Unsupported", detail)
        if status == 503:
            response.headers.add("Retry-After", "5")
        self._add_identity(response)
        self._send(response, peer)

    # -- output --------------------------------------------------------------------------

    def respond(self, transaction: ServerTransaction, response: Response, now: float) -> None:
        """Send a response through its transaction (retransmitted there as the RFC says)."""
        self._add_identity(response)
        if transaction.send_response(response, now):
            self._drain(transaction)

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        transaction = ClientTransaction(
            request, reliable=peer.reliable, timers=self.settings.timers
        )
        self._add_identity(request)
        self.client_transactions[client_key(request)] = transaction
        transaction.peer = peer
        transaction.start(now)
        self._drain(transaction)
        return transaction

    def send_stateless(self, message: Request | Response, peer: Peer) -> None:
        """ACK for a 2xx and 2xx retransmissions: outside any transaction (s13.3.1.4, s17.1.1.3)."""
        self._add_identity(message)
        self._send(message, peer)

    def options_response(self, request: Request) -> Response:
        """200 to OPTIONS with our capabilities (s11.2)."""
        response = make_response(request, 200, to_tag=_tag())
        response.headers.add("Allow", ", ".join(self.settings.allow))
        response.headers.add("Accept", ", ".join(self.settings.accept))
        response.headers.add("Supported", ", ".join(self.settings.supported))
        return response

    @property
    def allow_text(self) -> str:
        """The Allow header's value (our methods), joined once per settings."""
        allow = self.settings.allow
        cached = self._allow_text
        if cached is None or cached[0] is not allow:
            cached = self._allow_text = (allow, ", ".join(allow))
        return cached[1]

    def _add_identity(self, message: Request | Response) -> None:
        name = "User-Agent" if isinstance(message, Request) else "Server"
        # Our own messages, built with `Headers.add` (names in their canonical spelling): a
        # scan for the name, rather than indexing a message about to be sent.
        for key, _ in message.headers.items:
            if key == name:
                return
        message.headers.add(name, self.settings.user_agent)

    def _send(self, message: Request | Response, peer: Peer) -> bytes:
        self.stats["sent"] += 1
        data = message.serialize()
        self._outgoing.append((data, peer))
        return data

    def outgoing(self) -> list[tuple[bytes, Peer]]:
        """What to transmit now, in order. A 100 Trying held since it was sent is in it (first)
        unless its transaction has sent another response since: then it is dropped, counted
        as `trying_superseded`."""
        held = self._held
        if held is not None:
            self._held = None
            return self._release(held)
        out = self._outgoing
        if not out:
            return []
        self._outgoing = []
        return out

    def send_trying(self, transaction: ServerTransaction, now: float) -> None:
        """A 100 Trying for a new request (s8.2.6.1, s17.2.1), made and sent at the next
        `outgoing()` only if `transaction` has sent no response by then: a TU that answers
        at once costs no 100 at all."""
        self._hold(transaction, None, _peer(transaction), now)

    def _trying_sent(self, transaction: ServerTransaction, now: float) -> None:
        """The transport sent this new INVITE's 100 (the same bytes as ours): recorded as the
        transaction's last response, for its retransmissions, and not sent again."""
        trying = make_response(transaction.request, 100)
        self._add_identity(trying)
        if transaction.send_response(trying, now):
            transaction.messages_to_send()  # (sent by the transport)
            self.stats["sent"] += 1

    def _hold(
        self, transaction: ServerTransaction, response: Response | None, peer: Peer, now: float
    ) -> None:
        held = self._held
        if held is None:
            self._held = [(transaction, response, peer, now)]
            return
        for entry in held:
            if entry[0] is transaction and entry[1] is response:
                return  # resent (a retransmitted request) before it went out
        held.append((transaction, response, peer, now))

    def _release(self, held: list[_Held]) -> list[tuple[bytes, Peer]]:
        out: list[tuple[bytes, Peer]] = []
        stats = self.stats
        for transaction, given, peer, now in held:
            if given is None and not transaction.responded:
                # `send_trying`'s 100: nothing sent since, so it is made now
                trying = make_response(transaction.request, 100)
                self._add_identity(trying)
                if not transaction.send_response(trying, now):
                    stats["trying_superseded"] += 1  # (the transaction is over)
                    continue
                transaction.messages_to_send()  # (that 100, sent here)
            elif given is None or not transaction.last_sent_is(given):
                stats["trying_superseded"] += 1
                continue
            else:
                trying = given
            stats["sent"] += 1
            out.append((trying.serialize(), peer))
        out.extend(self._outgoing)
        self._outgoing = []
        return out

    def next_event(self) -> EndpointEvent | None:
        return self._events.take()

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest transaction deadline."""
        return self._timers.earliest()

    def handle_timer(self, now: float) -> None:
        for transaction in self._timers.due(now):
            transaction.handle_timer(now)
            self._drain(transaction)

    def _all_transactions(self) -> Iterable[ClientTransaction | ServerTransaction]:
        yield from self.server_transactions.values()
        yield from self.client_transactions.values()

    def transport_error(self, peer: Peer, now: float) -> None:
        """A connection was lost or a send failed: its transactions fail (s17.1.4, s17.2.4)."""
        for transaction in list(self._all_transactions()):
            if transaction.peer == peer:
                transaction.transport_error(now)
                self._drain(transaction)

    def _drain(self, transaction: ClientTransaction | ServerTransaction) -> None:
        if transaction._outbox is not None:
            peer = _peer(transaction)
            for message in transaction.messages_to_send():
                if isinstance(message, bytes):  # a final response resent as it was sent
                    self.stats["sent"] += 1
                    self._outgoing.append((message, peer))
                elif type(message) is Response and isinstance(transaction, ServerTransaction):
                    if message.status == 100:
                        self._hold(transaction, message, peer, 0.0)
                    else:
                        transaction.sent(message, self._send(message, peer))
                else:
                    self._send(message, peer)
        if transaction._events is not None:
            while (event := transaction.next_event()) is not None:
                self._on_transaction_event(event, transaction)
        self._timers.schedule(transaction)

    def _on_transaction_event(
        self, event: TransactionEvent, transaction: ClientTransaction | ServerTransaction
    ) -> None:
        if isinstance(event, ResponseReceived):
            self._events.append(
                ResponseForUs(response=event.response, transaction=event.transaction)
            )
        elif isinstance(event, TransactionTimedOut):
            self._events.append(RequestTimedOut(transaction=transaction))
        elif isinstance(event, TransportFailed):
            self._events.append(RequestFailed(transaction=transaction))
        elif isinstance(event, TransactionTerminated):
            self._forget(transaction)

    def _forget(self, transaction: ClientTransaction | ServerTransaction) -> None:
        if isinstance(transaction, ServerTransaction):
            key = transaction.key or server_key(transaction.request)
            if self.server_transactions.get(key) is transaction:
                del self.server_transactions[key]
            merge_key = transaction.merge_key
            if merge_key is not None and self._merge_keys.get(merge_key) is transaction:
                del self._merge_keys[merge_key]
        else:
            ckey = client_key(transaction.request)
            if self.client_transactions.get(ckey) is transaction:
                del self.client_transactions[ckey]


def _peer(transaction: ClientTransaction | ServerTransaction) -> Peer:
    """Where the transaction's messages go (set when the endpoint made it)."""
    peer = transaction.peer
    assert isinstance(peer, Peer)
    return peer


def _merge_key(request: Request) -> MergeKey | None:
    if request.method in ("ACK", "CANCEL") or request.to.tag is not None:
        return None
    cseq = request.cseq
    key: MergeKey = atomic_tuple(request.call_id, request.from_.tag or "", cseq.seq, cseq.method)
    return key


def _replace_top_via(request: Request, value: str) -> None:
    """Put the rewritten top Via value first, keeping any other Via values in order."""
    items = request.headers.items
    for i, (name, raw) in enumerate(items):
        if name == "Via":
            rest = raw.split(",", 1)  # a comma list: the first item is the top Via
            line = value if len(rest) == 1 else f"{value},{rest[1]}"
            items[i] = ("Via", line)
            request.headers.replaced_first("Via", line)
            return


def _salvage_request(data: bytes) -> Request:
    """Core headers of a request whose parse failed, good enough to answer it with a 4xx/5xx."""
    text = data[: 64 * 1024].decode("utf-8", "replace")
    head = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    lines = head.split("\n")
    method = lines[0].split(" ", 1)[0] if lines else ""
    if not method or not method.isalpha():
        raise SipProtocolError(400, "Bad Request", "no request line")
    kept = ["OPTIONS sip:invalid SIP/2.0"]
    from sipbridge.sip.message import canonical_name  # noqa: PLC0415

    for line in lines[1:]:
        name, colon, _ = line.partition(":")
        if colon and canonical_name(name.strip()) in ("Via", "From", "To", "Call-ID", "CSeq"):
            kept.append(line)
    request = parse_message(("\r\n".join(kept) + "\r\n\r\n").encode())
    if not isinstance(request, Request):
        raise SipProtocolError(400, "Bad Request", "not a request")
    request.method = method
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if request.headers.get(name) is None:
            raise SipProtocolError(400, "Bad Request", f"missing {name}")
    request.top_via  # noqa: B018 - the response goes to the top Via
    return request


def _tag() -> str:
    return token_hex(6)
