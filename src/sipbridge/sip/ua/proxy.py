"""One INVITE proxied statefully to another node (RFC 3261 s16), sans-IO.

A node that receives an INVITE for a room another node owns hands the INVITE on: its server
transaction stays with the caller, a client transaction of its own carries the INVITE to the
owner with this node's Via on top (s16.6 step 8) and Max-Forwards one less (step 3). No
Record-Route (step 4 is optional, and we decline it): the owner's 2xx carries the owner's
Contact, so the ACK, BYE and every later request of the dialog go from the caller to the owner
directly, and a node that only proxied an INVITE can stop without ending the call.

Responses come back through this node (s16.7): its Via removed, then sent to the caller on the
server transaction - but for 100 Trying, which is hop by hop (this node sent its own). A CANCEL
from the caller is answered by the endpoint and sent on to the owner once a provisional response
shows the owner has the INVITE (s16.10, s9.1). No answer from the owner: 408 to the caller, a
transport failure 503 with Retry-After; an owner known to be gone (its heartbeat expired:
`give_up`) 503 with Retry-After at once, so that the caller, or the balancer in front, tries
again - by then another node takes the room over. An owner that answered but never finishes
(it died after its 180): Timer C (s16.6 step 11, 3 minutes, restarted by each provisional
response) cancels the INVITE there and answers the caller 408. A 2xx is relayed again for 32 s
(its retransmissions).

The calls whose INVITE this node proxied and the owner accepted are kept by Call-ID
(`ProxiedCalls`: bounded, forgotten after a BYE's answer or hours of silence), for the requests
of their dialogs that still come here: a caller that ignores the 2xx's Contact and sends its
ACK, BYE or re-INVITE where it sent the INVITE (sipp's built-in `uac` does) - sent on to the
owner, at its Contact - and, from an owner that does not know the caller's address (an older
node, whose header has no port), the owner's own requests to the caller (its BYE when the room
ends), which it then sends where the INVITE came from: here - sent on to the caller, where its
INVITE came from. An ACK goes on statelessly, any other request through the same relay as the
INVITE (`ProxiedInvite` serves any method), our Via on top.

The owner's side (`caller_target`): the proxying node signs the caller's address as it saw it
(host, port, transport; telephony/placement.py), and the owner sends its own requests of the
dialog (BYE, re-INVITE, UPDATE, NOTIFY, REFER) straight to the caller - not to the node that
proxied the INVITE - so that a proxying node that dies costs no call the owner holds. Over UDP
that is the caller's source address, as for a caller that came to the owner directly (behind
a NAT its Contact may be unreachable, its source is not); over TCP or TLS the caller's source
port is the far end of its connection to the proxying node, which nobody can connect to, so a
new connection goes to its Contact's port (s12.2.1.1; a Record-Route's, when a proxy in front
asked to stay in the path) at the caller's source host: a Contact's host behind a NAT is a
private address, and the owner connects nowhere else than where the caller's packets came from
(no address or name a caller writes into its Contact makes the owner connect there).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from sipbridge.sip.dialog import new_tag
from sipbridge.sip.endpoint import Peer, SipEndpoint
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Via
from sipbridge.sip.message import Headers, Request, Response, make_response
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction, new_branch
from sipbridge.sip.uri import Uri

STREAM_PORTS = {"tcp": 5060, "tls": 5061}  # a Contact's port when it names none (s19.1.2)

DEFAULT_MAX_FORWARDS = 70
TIMER_C_S = 180.0  # s16.6 step 11: more than 3 minutes
LINGER_S = 32.0  # a 2xx's retransmissions are relayed this long
RETRY_AFTER_S = 2  # a 503 for an owner out of reach: by then another node may take the room
PROXIED_CALLS = 100_000  # calls kept for requests that come here instead of to the owner
PROXIED_CALL_IDLE_S = 6 * 3600.0  # one with no request through here this long is forgotten


def caller_target(invite: Request, transport: str, host: str, port: int) -> Peer | None:
    """Where the owner of a proxied INVITE sends its own requests of the dialog: the caller,
    as the proxying node signed it (`transport`, `host`, `port`: the source it saw), over UDP
    its source address, over TCP or TLS a new connection to its source host at its Contact's
    port (its first Record-Route's, when the INVITE came through a record-routing proxy). None
    when the header said too little (no port: an older node) or the INVITE has no usable
    Contact for a stream: the requests then go where the INVITE came from, as before."""
    if not host or not port or transport not in ("udp", "tcp", "tls"):
        return None
    if transport == "udp":
        return Peer("udp", host, port)
    try:  # the first hop of the dialog's route set when there is one (s12.2.1.1), else its
        # remote target
        targets = invite.record_routes or invite.contacts
    except SipProtocolError:
        return None
    if not targets or targets[0].wildcard or not targets[0].uri.is_sip:
        return None
    uri = targets[0].uri
    return Peer(transport, host, uri.port or STREAM_PORTS[transport])


def forwarded_invite(
    request: Request, via: Via, headers: Iterable[tuple[str, str]] = (), uri: Uri | None = None
) -> Request:
    """A copy of `request` (an INVITE, or any request) to send on: `via` (its branch new) on
    top, Max-Forwards one less (70 when absent; the endpoint refused 0 on arrival), `headers`
    added, `uri` (when given) its Request-URI."""
    out = Request(method=request.method, uri=uri or request.uri, headers=request.headers.copy())
    out.body = request.body
    out.headers.prepend("Via", str(via.with_params(branch=new_branch())))
    hops = (out.headers.get("Max-Forwards") or "").strip()
    remaining = int(hops) - 1 if hops.isdigit() else DEFAULT_MAX_FORWARDS
    out.headers.set("Max-Forwards", str(max(0, remaining)))
    for name, value in headers:
        out.headers.set(name, value)
    return out


def upstream_response(response: Response) -> Response:
    """`response` as sent back toward the caller: the top Via (ours) removed (s16.7 step 9)."""
    items = []
    dropped = False
    for name, value in response.headers.items:
        if name == "Via" and not dropped:
            dropped = True
            rest = value.split(",", 1)  # a comma list: only its first item is ours
            if len(rest) == 2 and rest[1].strip():
                items.append((name, rest[1].strip()))
            continue
        items.append((name, value))
    out = Response(status=response.status, reason=response.reason, body=response.body)
    out.headers = Headers(items)
    return out


def cancel_for(invite: Request) -> Request:
    """The CANCEL of a forwarded INVITE (s9.1): its Request-URI, top Via (same branch), From,
    To, Call-ID, CSeq number and Route."""
    cancel = Request(method="CANCEL", uri=invite.uri)
    vias = invite.headers.get_all("Via")
    cancel.headers.add("Via", vias[0] if vias else "")
    for value in invite.headers.get_all("Route"):
        cancel.headers.add("Route", value)
    cancel.headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
    for name in ("From", "To", "Call-ID"):
        cancel.headers.add(name, invite.headers.get(name) or "")
    cancel.headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return cancel


class ProxiedInvite:
    """The two transactions of one proxied INVITE; `UserAgent.proxy` makes it and feeds it."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        server: ServerTransaction,
        forwarded: Request,
        target: Peer,
        source: Peer | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.server = server
        self.forwarded = forwarded
        self.target = target
        self.source = source  # where the request came from (the caller, for an INVITE)
        self.client: ClientTransaction | None = None
        self.provisional = False  # a 1xx came: the owner has the INVITE (CANCEL may go)
        self.cancel_wanted = False
        self.cancelled = False
        self.final = 0  # the final status relayed, 0 until then
        self.deadline: float | None = None  # Timer C, then the 2xx's linger; None: done

    @property
    def done(self) -> bool:
        """Nothing more to relay: the transactions finish on their own in the endpoint."""
        return self.client is not None and self.deadline is None

    def get_timer(self) -> float | None:
        return self.deadline

    def start(self, now: float) -> ClientTransaction:
        self.client = self.endpoint.send_request(self.forwarded, self.target, now)
        self.deadline = now + TIMER_C_S
        return self.client

    def handle_timer(self, now: float) -> None:
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        if self.final:
            return  # the 2xx's linger is over
        # Timer C: the owner took the INVITE and never finished it
        self.cancel(now)
        self.final = 408
        self.endpoint.respond(
            self.server, make_response(self.server.request, 408, to_tag=new_tag()), now
        )

    def response(self, response: Response, now: float) -> None:
        """A response from the owner (2xx retransmissions included)."""
        if response.status < 200:
            self.provisional = True
            if self.cancel_wanted:
                self._send_cancel(now)
            if response.status == 100:
                return
            if not self.final:
                self.deadline = now + TIMER_C_S  # restarted by each provisional (s16.7 step 2)
        elif not self.final:
            self.final = response.status
            self.deadline = now + LINGER_S if response.status < 300 else None
        self.endpoint.respond(self.server, upstream_response(response), now)

    def failed(self, now: float, *, timed_out: bool) -> None:
        """The owner never answered (timeout: 408) or could not be reached (503)."""
        self._fail(now, 408 if timed_out else 503)

    def give_up(self, now: float) -> None:
        """The owner is gone (its heartbeat expired) before its final answer: 503 with
        Retry-After to the caller now, and a CANCEL there if it rang (in case it is not)."""
        if not self.final and self.provisional:
            self._send_cancel(now)
        self._fail(now, 503)

    def _fail(self, now: float, status: int) -> None:
        if self.final:
            return
        self.final, self.deadline = status, None
        response = make_response(self.server.request, status, to_tag=new_tag())
        if status == 503:
            response.headers.add("Retry-After", str(RETRY_AFTER_S))
        self.endpoint.respond(self.server, response, now)

    def cancel(self, now: float) -> None:
        """The caller cancelled (the endpoint has answered its CANCEL)."""
        if self.final or self.cancelled:
            return
        self.cancel_wanted = True
        if self.provisional:
            self._send_cancel(now)

    def _send_cancel(self, now: float) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.endpoint.send_request(cancel_for(self.forwarded), self.target, now)


@dataclass(slots=True)
class ProxiedCall:
    """A call whose INVITE this node proxied and the owner accepted."""

    target: Peer  # the owner, as the INVITE went there
    contact: Uri | None  # the owner's Contact in its 2xx (the dialog's remote target)
    caller: Peer  # where the INVITE came from
    caller_tag: str  # the INVITE's From tag: the caller's requests carry it, the owner's not
    last: float  # when a request of the call last came through here (or the 2xx)

    def route(self, request: Request) -> tuple[Peer, Uri | None]:
        """Where a request of the call goes (and its new Request-URI, None to keep it): the
        caller's to the owner, at its Contact; the owner's to the caller (an owner that does
        not know the caller's address sends them where the INVITE came from: here), at the URI
        it has."""
        if request.from_.tag == self.caller_tag:
            return self.target, self.contact
        return self.caller, None


class ProxiedCalls:
    """The calls whose INVITE this node proxied and the owner accepted, by Call-ID, for the
    requests of their dialogs that come here instead of to the owner. At most `limit` (the
    least recently used beyond are forgotten), none idle longer than `idle_s`."""

    def __init__(self, limit: int = PROXIED_CALLS, idle_s: float = PROXIED_CALL_IDLE_S) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self._calls: OrderedDict[str, ProxiedCall] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def accepted(self, proxied: ProxiedInvite, response: Response, now: float) -> None:
        """The owner's 2xx to the proxied INVITE (or one of its retransmissions)."""
        try:
            contacts = response.contacts
        except SipProtocolError:
            contacts = []
        invite = proxied.forwarded
        call_id = invite.call_id
        self._calls[call_id] = ProxiedCall(
            target=proxied.target,
            contact=contacts[0].uri if contacts else None,
            caller=proxied.source or proxied.target,
            caller_tag=invite.from_.tag or "",
            last=now,
        )
        self._calls.move_to_end(call_id)
        self._expire(now)

    def find(self, call_id: str, now: float) -> ProxiedCall | None:
        """The call a request of `call_id` belongs to, kept a while longer; None if unknown."""
        self._expire(now)
        call = self._calls.get(call_id)
        if call is not None:
            call.last = now
            self._calls.move_to_end(call_id)
        return call

    def ended(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def _expire(self, now: float) -> None:
        while len(self._calls) > self.limit:
            self._calls.popitem(last=False)
        while self._calls:
            call_id, oldest = next(iter(self._calls.items()))
            if now - oldest.last <= self.idle_s:
                break
            del self._calls[call_id]
