"""One INVITE proxied statefully to another node (RFC 3261 s16), sans-IO.

A node that receives an INVITE for a room another node owns hands the INVITE on: its server
transaction stays with the caller, a client transaction of its own carries the INVITE to the
owner with this node's Via on top (s16.6 step 8) and Max-Forwards one less (step 3). No
Record-Route (step 4 is optional): the owner's 2xx carries the owner's Contact, so the ACK, BYE
and every later request of the dialog go from the caller to the owner directly, and this node
forgets the call once the INVITE transaction is over.

Responses come back through this node (s16.7): its Via removed, then sent to the caller on the
server transaction - but for 100 Trying, which is hop by hop (this node sent its own). A CANCEL
from the caller is answered by the endpoint and sent on to the owner once a provisional response
shows the owner has the INVITE (s16.10, s9.1). No answer from the owner: 408 to the caller,
a transport failure 503. An owner that answered but never finishes (it died after its 180):
Timer C (s16.6 step 11, 3 minutes, restarted by each provisional response) cancels the INVITE
there and answers the caller 408. A 2xx is relayed again for 32 s (its retransmissions), then
the proxy forgets the call.
"""

from __future__ import annotations

from collections.abc import Iterable

from sipbridge.sip.dialog import new_tag
from sipbridge.sip.endpoint import Peer, SipEndpoint
from sipbridge.sip.headers import Via
from sipbridge.sip.message import Request, Response, make_response
from sipbridge.sip.transaction import ClientTransaction, ServerTransaction, new_branch

DEFAULT_MAX_FORWARDS = 70
TIMER_C_S = 180.0  # s16.6 step 11: more than 3 minutes
LINGER_S = 32.0  # a 2xx's retransmissions are relayed this long


def forwarded_invite(
    request: Request, via: Via, headers: Iterable[tuple[str, str]] = ()
) -> Request:
    """A copy of `request` to send on: `via` (its branch new) on top, Max-Forwards one less
    (70 when absent; the endpoint refused 0 on arrival), `headers` added."""
    out = Request(method=request.method, uri=request.uri, headers=request.headers.copy())
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
    out.headers.items = items
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
        self, endpoint: SipEndpoint, server: ServerTransaction, forwarded: Request, target: Peer
    ) -> None:
        self.endpoint = endpoint
        self.server = server
        self.forwarded = forwarded
        self.target = target
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
        """The owner never answered (timeout) or could not be reached."""
        if self.final:
            return
        status = 408 if timed_out else 503
        self.final, self.deadline = status, None
        self.endpoint.respond(
            self.server, make_response(self.server.request, status, to_tag=new_tag()), now
        )

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
