"""Outbound REGISTER: an outbound trunk may register sipbridge at its carrier (RFC 3261 s10), so
calls for the trunk's number reach a server whose address the carrier cannot know in advance.

LiveKit's trunk has no field for it; a trunk registers when its `metadata` is JSON with a
`register` entry: `{"register": true}` or `{"register": {"expires": 600}}`. The address of
record is `sip:<auth_username, else the trunk's first number>@<trunk host>`, the registrar the
trunk's address and transport, the credentials the trunk's. sipbridge registers at start and
whenever such a trunk appears, answers Digest challenges, refreshes before the registration
expires (halfway, or 30 s before), retries failures with a growing delay (30 s up to 5 min),
and unregisters (Expires: 0) a trunk that is deleted or stops asking, and at shutdown. The state
of each is logged and counted in `/metrics` (`sipbridge_registrations{state=...}`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field

from livekit.protocol import sip as proto

from sipbridge.server.sip_config import SipConfig
from sipbridge.server.sip_ua import SipUserAgent
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import Address, param_value
from sipbridge.sip.message import Request, Response
from sipbridge.sip.transaction import new_branch
from sipbridge.sip.uri import Uri
from sipbridge.telephony.outbound import is_ip, trunk_address

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_S = 600
MIN_EXPIRES_S = 60
RECONCILE_S = 2.0  # how often the trunks are compared with the registrations
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 300.0
MAX_AUTH_TRIES = 2


def register_expires(trunk: proto.SIPOutboundTrunkInfo) -> int | None:
    """The registration a trunk asks for in its metadata (seconds), or None."""
    if not trunk.metadata or "register" not in trunk.metadata:
        return None
    try:
        doc = json.loads(trunk.metadata)
    except ValueError:
        return None
    wanted = doc.get("register") if isinstance(doc, dict) else None
    if wanted is True:
        return DEFAULT_EXPIRES_S
    if isinstance(wanted, dict):
        expires = wanted.get("expires", DEFAULT_EXPIRES_S)
        if isinstance(expires, int) and not isinstance(expires, bool):
            return max(MIN_EXPIRES_S, min(expires, 86400))
        return DEFAULT_EXPIRES_S
    return None


@dataclass(eq=False, kw_only=True)
class Registration:
    trunk_id: str
    user: str
    host: str
    peer: Peer
    expires: int
    credentials: DigestClient | None
    call_id: str = field(default_factory=lambda: secrets.token_hex(12))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    auth_tries: int = 0
    proxy_auth: bool = False  # the registrar challenged as a proxy (407)
    state: str = "registering"  # registered, failed, unregistered
    status: int = 0
    granted: int = 0  # the expiry the registrar granted
    timer: asyncio.TimerHandle | None = None
    retry_s: float = RETRY_FIRST_S
    signature: tuple[str, ...] = ()


class Registrations:
    def __init__(self, config: SipConfig, ua: SipUserAgent) -> None:
        self.config = config
        self.ua = ua
        self.active: dict[str, Registration] = {}  # by trunk id
        self._reconciler: asyncio.TimerHandle | None = None
        self.stats: dict[str, int] = {}

    def start(self) -> None:
        self.reconcile()

    def reconcile(self) -> None:
        """Register trunks that ask to be, unregister those that no longer do."""
        loop = asyncio.get_running_loop()
        wanted: dict[str, tuple[proto.SIPOutboundTrunkInfo, int]] = {}
        for trunk in self.config.outbound.values():
            expires = register_expires(trunk)
            if expires is not None:
                wanted[trunk.sip_trunk_id] = (trunk, expires)
        for trunk_id, registration in list(self.active.items()):
            entry = wanted.get(trunk_id)
            if entry is None or _signature(*entry) != registration.signature:
                self._unregister(registration)
        for trunk_id, (trunk, expires) in wanted.items():
            if trunk_id not in self.active:
                self._begin(trunk, expires)
        self._reconciler = loop.call_later(RECONCILE_S, self.reconcile)

    def _begin(self, trunk: proto.SIPOutboundTrunkInfo, expires: int) -> None:
        try:
            host, port, transport = trunk_address(trunk.address, trunk.transport)
        except Exception:  # a stored address that no longer parses: nothing to register at
            return
        user = trunk.auth_username or (trunk.numbers[0] if trunk.numbers else "")
        if not user or not is_ip(host):
            # DNS names are resolved per call; a registration needs one address for its
            # lifetime (SRV/NAPTR would be the way): not supported yet, logged once.
            log.warning(
                "trunk %s: cannot register (needs a user and an IP address)", trunk.sip_trunk_id
            )
            self._count("unusable")
            self.active[trunk.sip_trunk_id] = Registration(
                trunk_id=trunk.sip_trunk_id,
                user=user,
                host=host,
                peer=Peer(transport, host, port),
                expires=expires,
                credentials=None,
                state="failed",
                signature=_signature(trunk, expires),
            )
            return
        credentials = (
            DigestClient(trunk.auth_username, trunk.auth_password) if trunk.auth_username else None
        )
        registration = Registration(
            trunk_id=trunk.sip_trunk_id,
            user=user,
            host=host,
            peer=Peer(transport, host, port),
            expires=expires,
            credentials=credentials,
            signature=_signature(trunk, expires),
        )
        self.active[trunk.sip_trunk_id] = registration
        self._send(registration, registration.expires)

    def _send(self, registration: Registration, expires: int, authorization: str = "") -> None:
        registration.cseq += 1
        peer = registration.peer
        params = (("transport", peer.transport),) if peer.transport != "udp" else ()
        registrar = Uri(scheme="sip", host=registration.host, port=peer.port, params=params)
        aor = Address(uri=Uri(scheme="sip", user=registration.user, host=registration.host))
        request = Request(method="REGISTER", uri=registrar)
        request.headers.add("Via", str(self.ua.via(peer).with_params(branch=new_branch())))
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", str(aor.with_tag(registration.from_tag)))
        request.headers.add("To", str(aor))
        request.headers.add("Call-ID", registration.call_id)
        request.headers.add("CSeq", f"{registration.cseq} REGISTER")
        contact = self.ua.contact(peer)
        contact_uri = Uri(
            scheme=contact.uri.scheme,
            user=registration.user,
            host=contact.uri.host,
            port=contact.uri.port,
            params=contact.uri.params,
        )
        request.headers.add("Contact", f"<{contact_uri}>")
        request.headers.add("Expires", str(expires))
        proxy = registration.proxy_auth
        if authorization:
            proxy = authorization.startswith("proxy:")
            authorization = authorization.removeprefix("proxy:")
        elif registration.credentials is not None:
            # A refresh answers the last challenge again (a new nc): no 401 round trip.
            authorization = registration.credentials.authorization("REGISTER", str(registrar)) or ""
        if authorization:
            request.headers.add("Proxy-Authorization" if proxy else "Authorization", authorization)
        self.ua.send_request(
            request, peer, lambda response: self._answered(registration, request, expires, response)
        )

    def _answered(
        self,
        registration: Registration,
        request: Request,
        expires: int,
        response: Response | None,
    ) -> None:
        if self.active.get(registration.trunk_id) is not registration and expires:
            return  # replaced or removed meanwhile
        status = response.status if response is not None else 408
        registration.status = status
        if (
            response is not None
            and status in (401, 407)
            and registration.credentials is not None
            and registration.auth_tries < MAX_AUTH_TRIES
        ):
            registration.auth_tries += 1
            name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
            try:
                value = registration.credentials.answer(
                    response.headers.get_all(name), "REGISTER", str(request.uri)
                )
            except SipProtocolError:
                value = ""
            if value:
                registration.proxy_auth = status == 407
                prefix = "proxy:" if status == 407 else ""
                self._send(registration, expires, prefix + value)
                return
        registration.auth_tries = 0
        if not expires:  # our unregistration's answer: nothing more to do
            return
        if 200 <= status < 300 and response is not None:
            granted = _granted(response, expires)
            registration.granted = granted
            if registration.state != "registered":
                log.info("trunk %s: registered for %d s", registration.trunk_id, granted)
            registration.state = "registered"
            registration.retry_s = RETRY_FIRST_S
            self._count("registered")
            refresh = max(granted / 2, granted - 30) if granted > 60 else granted / 2
            self._later(registration, refresh, lambda: self._send(registration, expires))
            return
        registration.state = "failed"
        self._count(f"failed_{status}")
        log.warning(
            "trunk %s: registration failed (%d %s), retrying in %.0f s",
            registration.trunk_id,
            status,
            response.reason if response is not None else "no response",
            registration.retry_s,
        )
        self._later(registration, registration.retry_s, lambda: self._send(registration, expires))
        registration.retry_s = min(registration.retry_s * 2, RETRY_MAX_S)

    def _later(self, registration: Registration, delay: float, fn: object) -> None:
        if registration.timer is not None:
            registration.timer.cancel()
        loop = asyncio.get_running_loop()
        registration.timer = loop.call_later(delay, fn)  # type: ignore[arg-type]

    def _unregister(self, registration: Registration) -> None:
        self.active.pop(registration.trunk_id, None)
        if registration.timer is not None:
            registration.timer.cancel()
        if registration.state == "registered":
            self._send(registration, 0)
        registration.state = "unregistered"

    def close(self) -> int:
        """Unregister everything (at shutdown); how many were registered."""
        if self._reconciler is not None:
            self._reconciler.cancel()
        registered = [r for r in self.active.values() if r.state == "registered"]
        for registration in list(self.active.values()):
            self._unregister(registration)
        return len(registered)

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for registration in self.active.values():
            out[registration.state] = out.get(registration.state, 0) + 1
        return out

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


def _signature(trunk: proto.SIPOutboundTrunkInfo, expires: int) -> tuple[str, ...]:
    """What, when it changes, makes a trunk register anew."""
    return (
        trunk.address,
        str(trunk.transport),
        trunk.auth_username,
        trunk.auth_password,
        ",".join(trunk.numbers),
        str(expires),
    )


def _granted(response: Response, asked: int) -> int:
    """The expiry the registrar granted: our Contact's `expires`, else Expires, else ours."""
    for contact in response.contacts:
        value = param_value(contact.params, "expires")
        if value and value.isdigit():
            return int(value)
    header = response.headers.get("Expires")
    if header and header.strip().isdigit():
        return int(header.strip())
    return asked
