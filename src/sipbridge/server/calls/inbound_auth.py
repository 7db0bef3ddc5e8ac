"""Digest auth of inbound calls on trunks with credentials (SIP-BEHAVIOUR.md s1 step 5, issue 17
s4): the challenge as a proxy would ask (407; Authorization/401 style accepted too), 403 for a
wrong answer, the `AuthGuard` blocking addresses that keep failing, and numbers no trunk has
answered like a wrong password where trunks ask for passwords (no enumeration)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from livekit.protocol import sip as proto

from sipbridge.server.sip.user_agent import IncomingCall
from sipbridge.sip.digest import AuthOutcome, DigestServer
from sipbridge.telephony.auth_guard import AuthGuard

log = logging.getLogger(__name__)


class TrunkAuth:
    def __init__(
        self,
        digest: DigestServer,
        guard: AuthGuard,
        *,
        realm: str = "sipbridge",
        conceal_numbers: bool = True,
    ) -> None:
        self.digest = digest
        self.guard = guard
        self.realm = realm  # unless the trunk names its own
        self.conceal_numbers = conceal_numbers
        self.count: Callable[[str], None] = lambda _: None  # the runner's counters

    def check(self, call: IncomingCall, trunk: proto.SIPInboundTrunkInfo | None) -> bool:
        """Digest auth as a proxy would ask (407), Authorization/401 style accepted too; `None`:
        a number no trunk has, which no credentials open. A source that keeps failing is
        blocked (403 without a challenge, even for the right password) by the `AuthGuard`."""
        request = call.request
        source, now = call.peer.host, time.monotonic()
        if self.guard.blocked(source, now) is not None:
            self.count("auth_blocked")
            return self._refuse(call)
        header = request.headers.get("Proxy-Authorization") or request.headers.get("Authorization")
        realm = trunk.auth_realm if trunk is not None and trunk.auth_realm else self.realm
        result = self.digest.verify(
            header,
            method="INVITE",
            realm=realm,
            lookup_password=lambda user: (
                trunk.auth_password if trunk is not None and user == trunk.auth_username else None
            ),
            now=time.time(),
        )
        if result.outcome is AuthOutcome.OK:
            self.guard.succeeded(source)
            return True
        if result.outcome in (AuthOutcome.WRONG_RESPONSE, AuthOutcome.UNKNOWN_USER):
            self.count("auth_failed")
            trunk_id = trunk.sip_trunk_id if trunk is not None else ""
            until = self.guard.failed(source, trunk_id, now)
            if until is not None:
                self.count("auth_source_blocked")
                log.warning(
                    "digest: %s blocked for %.0f s after %d wrong answers",
                    source,
                    until - now,
                    self.guard.max_failures,
                )
            return self._refuse(call)
        self.count("auth_challenged")
        # MD5 first: many carriers' and test tools' UAs read only the first challenge and know
        # no other algorithm; SHA-256 (RFC 8760) is offered beside it for those that do.
        challenges = self.digest.challenge(
            realm, time.time(), algorithms=("MD5", "SHA-256"), stale=result.stale
        )
        call.reject(407, headers=[("Proxy-Authenticate", value) for value in challenges])
        return False

    def _refuse(self, call: IncomingCall) -> bool:
        self.count("rejected_403")
        call.reject(403, "Forbidden")
        return False
