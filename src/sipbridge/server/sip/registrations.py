"""Outbound REGISTER: an outbound trunk may register sipbridge at its carrier (RFC 3261 s10), so
calls for the trunk's number reach a server whose address the carrier cannot know in advance.

LiveKit's trunk has no field for it; a trunk registers when its `metadata` is JSON with a
`register` entry: `{"register": true}` or `{"register": {"expires": 600}}`. The address of
record is `sip:<auth_username, else the trunk's first number>@<trunk host>`, the registrar the
trunk's address and transport, the credentials the trunk's. sipbridge registers at start and
whenever such a trunk appears, answers Digest challenges, refreshes before the registration
expires (halfway, or 30 s before), retries failures with a growing delay (30 s up to 5 min),
and unregisters (Expires: 0) a trunk that is deleted or stops asking, and at shutdown - the
REGISTER client of `sip/ua/register.py`, driven here with one `loop.call_at` per trunk. The
state of each is logged and counted in `/metrics` (`sipbridge_registrations{state=...}`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from functools import partial

from livekit.protocol import sip as proto

from sipbridge.server.sip.user_agent import SipUserAgent
from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.sip.digest import DigestClient
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.headers import Address
from sipbridge.sip.message import Request, Response
from sipbridge.sip.ua.register import RegisterClient, Registered, granted_expiry
from sipbridge.sip.uri import Uri
from sipbridge.telephony.outbound import is_ip, trunk_address

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_S = 600
MIN_EXPIRES_S = 60
RECONCILE_S = 2.0  # how often the trunks are compared with the registrations


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
    """One trunk's registration: its sans-IO client (None when the trunk cannot register) and
    the one timer that runs the client's deadline."""

    trunk_id: str
    peer: Peer
    signature: tuple[str, ...]
    client: RegisterClient | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        return self.client.summary if self.client is not None else "failed"


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
        peer = Peer(transport, host, port)
        registration = Registration(
            trunk_id=trunk.sip_trunk_id, peer=peer, signature=_signature(trunk, expires)
        )
        self.active[trunk.sip_trunk_id] = registration
        if not user or not is_ip(host):
            # DNS names are resolved per call; a registration needs one address for its
            # lifetime (SRV/NAPTR would be the way): not supported yet, logged once.
            log.warning(
                "trunk %s: cannot register (needs a user and an IP address)", trunk.sip_trunk_id
            )
            self._count("unusable")
            return
        params = (("transport", transport),) if transport != "udp" else ()
        ours = self.ua.contact(peer).uri
        registration.client = RegisterClient(
            registrar=Uri(scheme="sip", host=host, port=port, params=params),
            aor=Address(uri=Uri(scheme="sip", user=user, host=host)),
            contact=Uri(
                scheme=ours.scheme, user=user, host=ours.host, port=ours.port, params=ours.params
            ),
            via=self.ua.via(peer),
            expires=expires,
            call_id=secrets.token_hex(12),
            from_tag=secrets.token_hex(8),
            credentials=(
                DigestClient(trunk.auth_username, trunk.auth_password)
                if trunk.auth_username
                else None
            ),
        )
        registration.client.register()
        self._drive(registration)

    def _drive(self, registration: Registration) -> None:
        """Send what the client wants sent, report what happened, arm its one timer."""
        client = registration.client
        assert client is not None
        while (request := client.next_request()) is not None:
            self.ua.send_request(
                request,
                registration.peer,
                partial(self._answered, registration, request),
            )
        while (event := client.next_event()) is not None:
            if isinstance(event, Registered):
                log.info("trunk %s: registered for %d s", registration.trunk_id, event.granted)
                self._count("registered")
            else:
                self._count(f"failed_{event.status}")
                log.warning(
                    "trunk %s: registration failed (%d %s), retrying in %.0f s",
                    registration.trunk_id,
                    event.status,
                    event.reason,
                    event.retry_in,
                )
        if registration.timer is not None:
            registration.timer.cancel()
            registration.timer = None
        deadline = client.get_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - self.ua.now())
            registration.timer = loop.call_at(loop.time() + delay, self._due, registration)

    def _due(self, registration: Registration) -> None:
        registration.timer = None
        assert registration.client is not None
        registration.client.handle_timer(self.ua.now())
        self._drive(registration)

    def _answered(
        self, registration: Registration, request: Request, response: Response | None
    ) -> None:
        assert registration.client is not None
        registration.client.response_received(request, response, self.ua.now())
        self._drive(registration)

    def _unregister(self, registration: Registration) -> None:
        self.active.pop(registration.trunk_id, None)
        if registration.client is not None:
            registration.client.unregister()
            self._drive(registration)

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


_granted = granted_expiry  # (its tests' name)
