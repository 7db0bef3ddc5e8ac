"""Dialogs (RFC 3261 s12) and the UAS core's 2xx retransmission (s13.3.1.4), sans-IO.

A dialog is identified by Call-ID, local tag and remote tag. It keeps the route set (from
Record-Route, reversed for the UAC), the remote target (Contact, refreshed by target refresh
requests), and the CSeq numbers in each direction; it builds in-dialog requests and checks the
CSeq of incoming ones (lower than the last one -> 500, s12.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address, Via, tagged_address
from sipbridge.sip.message import Request, Response
from sipbridge.sip.tokens import token_hex
from sipbridge.sip.transaction import TimerSettings, new_branch
from sipbridge.sip.uri import Uri

TARGET_REFRESH: Final = frozenset({"INVITE", "UPDATE"})  # s12.2, RFC 3311


def new_tag() -> str:
    return token_hex(8)


def check_dialog_creating(request: Request) -> tuple[Uri, list[Address]]:
    """What a dialog-creating request (an INVITE outside a dialog) must carry for us to build
    its dialog (s12.1.1, s8.1.1.8), checked before any work is done for it: one Contact with a
    SIP or SIPS URI (not `*`), a From tag, no To tag, a Record-Route set of SIP URIs, a
    well-formed CSeq. Returns the remote target and route set; `SipProtocolError(400)` with a
    fixed detail (never the peer's bytes) otherwise."""
    try:
        contacts = request.contacts
        from_, to = request.from_, request.to
        route_set = request.record_routes
        request.cseq  # noqa: B018 - parsed to validate
    except SipProtocolError:
        raise SipProtocolError(400, "Bad Request", "malformed dialog header") from None
    if len(contacts) != 1 or not _usable_target(contacts[0]):
        raise SipProtocolError(400, "Bad Request", "no usable Contact")
    if not from_.tag:
        raise SipProtocolError(400, "Bad Request", "From without a tag")
    if to.tag is not None:
        raise SipProtocolError(400, "Bad Request", "To tag outside a dialog")
    if not all(_usable_target(route) for route in route_set):
        raise SipProtocolError(400, "Bad Request", "unusable Record-Route")
    return contacts[0].uri, route_set


def _usable_target(address: Address) -> bool:
    return not address.wildcard and address.uri.is_sip and bool(address.uri.host)


@dataclass(slots=True, init=False)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_address: Address  # our From (UAC) / To (UAS) value, with our tag
    remote_address: Address
    remote_target: Uri
    route_set: list[Address]
    local_seq: int
    remote_seq: int | None
    secure: bool
    confirmed: bool

    # Its own `__init__` (dataclass `init=False`): mypyc compiles it, where the generated one
    # stays interpreted (one for every call, issue 18).
    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_address: Address,
        remote_address: Address,
        remote_target: Uri,
        route_set: list[Address] | None = None,
        local_seq: int = 0,
        remote_seq: int | None = None,
        secure: bool = False,
        confirmed: bool = False,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_address = local_address
        self.remote_address = remote_address
        self.remote_target = remote_target
        self.route_set = [] if route_set is None else route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self.confirmed = confirmed

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog a 1xx/2xx to `request` creates on our side (s12.1.1); the request must
        pass `check_dialog_creating`."""
        target, route_set = check_dialog_creating(request)
        from_ = request.from_
        assert from_.tag is not None  # checked
        # our To, with our tag: as our responses echo it (make_response: a single To, checked)
        to_lines = request.headers.lines("To")
        local_address = tagged_address(to_lines[0] if to_lines else "", request.to, local_tag)
        # (`Dialog`, not `cls`: compiled, the class named is constructed directly, where `cls`
        # is a generic call with keywords, most of what a dialog costs; issue 18)
        return Dialog(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag,
            local_address=local_address,
            remote_address=from_,
            remote_target=target,
            route_set=route_set,
            remote_seq=request.cseq.seq,
            secure=request.uri.scheme == "sips",
        )

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 1xx/2xx with a To tag creates for our request (s12.1.2)."""
        to = response.to
        if to.tag is None:
            raise SipProtocolError(400, "Bad Request", "dialog-creating response without To tag")
        contacts = response.contacts
        target = contacts[0].uri if contacts and not contacts[0].wildcard else request.uri
        from_ = request.from_
        return Dialog(
            call_id=request.call_id,
            local_tag=from_.tag or "",
            remote_tag=to.tag,
            local_address=from_,
            remote_address=to,
            remote_target=target,
            route_set=list(reversed(response.record_routes)),
            local_seq=request.cseq.seq,
            secure=request.uri.scheme == "sips",
            confirmed=response.status >= 200,
        )

    def check_request(self, request: Request) -> None:
        """Enforce in-dialog CSeq order (s12.2.2) and refresh the remote target."""
        cseq = request.cseq.seq
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and cseq < self.remote_seq:
                raise SipProtocolError(500, "Server Internal Error", "CSeq out of order")
            self.remote_seq = cseq
        if request.method in TARGET_REFRESH:
            contacts = request.contacts
            if contacts and not contacts[0].wildcard:
                self.remote_target = contacts[0].uri

    def create_request(self, method: str, via: Via, contact: Address | None = None) -> Request:
        """An in-dialog request (s12.2.1.1). ACK reuses the INVITE's CSeq number; the caller
        passes it by setting `local_seq` beforehand (ACK does not increment)."""
        if method != "ACK":
            self.local_seq += 1
        uri = self.remote_target
        routes = [str(r) for r in self.route_set]
        # Strict routing (s12.2.1.1): a first route without `lr` becomes the Request-URI.
        if self.route_set and not self.route_set[0].uri.has_param("lr"):
            uri = self.route_set[0].uri
            routes = [str(r) for r in self.route_set[1:]] + [f"<{self.remote_target}>"]
        request = Request(method=method, uri=uri)
        request.headers.add("Via", str(via.with_params(branch=new_branch())))
        request.headers.add("Max-Forwards", "70")
        for route in routes:
            request.headers.add("Route", route)
        request.headers.add("From", str(self.local_address))
        request.headers.add("To", str(self.remote_address))
        request.headers.add("Call-ID", self.call_id)
        request.headers.add("CSeq", f"{self.local_seq} {method}")
        if contact is not None and method in ("INVITE", "UPDATE", "REFER", "NOTIFY", "SUBSCRIBE"):
            request.headers.add("Contact", str(contact))
        return request


class AnswerRetransmitter:
    """Resends a 2xx to an INVITE until its ACK arrives (s13.3.1.4): first after T1, doubling
    up to T2, giving up after 64*T1 (the caller then ends the dialog with BYE)."""

    def __init__(self, response: Response, now: float, timers: TimerSettings) -> None:
        self.response = response
        self.timers = timers
        self._interval = timers.t1
        self._next: float | None = now + timers.t1
        self._give_up = now + timers.timeout
        self.acked = False
        self.timed_out = False

    def get_timer(self) -> float | None:
        if self.acked or self.timed_out:
            return None
        return min(self._next or self._give_up, self._give_up)

    def handle_timer(self, now: float) -> Response | None:
        """The response to resend now, if any; sets `timed_out` when the ACK never came."""
        if self.acked or self.timed_out:
            return None
        if now >= self._give_up:
            self.timed_out = True
            return None
        if self._next is not None and now >= self._next:
            self._interval = min(self._interval * 2, self.timers.t2)
            self._next = now + self._interval
            return self.response
        return None

    def ack_received(self) -> None:
        self.acked = True
