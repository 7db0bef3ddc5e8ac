"""A minimal SIP application for interop tests: the stack under test (transport, endpoint,
transactions, UAS core, digest) with the smallest possible call logic on top."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sipbridge.server.sip.transport import Listen, SipService
from sipbridge.server.sip.user_agent import IncomingCall, SipUserAgent
from sipbridge.sip.digest import DigestServer

ANSWER_SDP = (
    b"v=0\r\n"
    b"o=sipbridge 1 1 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendrecv\r\n"
)


@dataclass
class AnsweringApp:
    """Answers every INVITE (after a digest challenge when `password` is set). `keep_calls`
    False forgets each call once answered, as a server does once calls end (a benchmark's
    UAS: thousands of calls a second kept would only measure the garbage collector)."""

    password: str | None = None
    realm: str = "sipbridge.test"
    calls: list[IncomingCall] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    challenges: int = 0
    keep_calls: bool = True
    # Answer on a later turn of the event loop (as the server's inbound calls do) instead of
    # within the INVITE's handling: the caller then gets the 100 Trying first.
    deferred: bool = False
    digest: DigestServer = field(
        default_factory=lambda: DigestServer(b"test-secret-0123456789abcdef")
    )

    def on_invite(self, call: IncomingCall) -> None:
        now = call.ua.service.now()
        if self.password is not None:
            result = self.digest.verify(
                call.request.headers.get("Authorization"),
                method="INVITE",
                realm=self.realm,
                lookup_password=lambda user: self.password if user == "sipp" else None,
                now=now,
            )
            if not result.ok:
                self.challenges += 1
                challenge = self.digest.challenge(self.realm, now, algorithms=("MD5",))[0]
                call.reject(401, headers={"WWW-Authenticate": challenge})
                return
        if self.keep_calls:
            self.calls.append(call)
            call.on_end = self.ended.append
        if self.deferred:
            asyncio.get_running_loop().call_soon(self._answer, call)
        else:
            self._answer(call)

    def _answer(self, call: IncomingCall) -> None:
        call.ring()
        call.answer(ANSWER_SDP)


@asynccontextmanager
async def running_app(
    app: AnsweringApp,
    transports: tuple[str, ...] = ("udp", "tcp"),
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    *,
    batched_udp: bool | None = None,
    threaded_udp: bool | None = None,
    early_trying: bool = False,
) -> AsyncIterator[tuple[SipService, int]]:
    """UDP and TCP share one port; TLS (with `tls`) gets its own free one: see `service.bound`.
    `batched_udp`: True for the batched UDP socket where built (server/sip/udp.py), False for
    the event loop's datagram endpoint (either: not the reader thread, unless `threaded_udp`);
    None for the default. `threaded_udp`: the same for the reader thread
    (server/sip/udp_thread.py, the default where built), which sends a new INVITE's 100 itself
    only with `early_trying` (the app answers at once, so the endpoint's lazy 100 by default)."""
    if batched_udp is not None and threaded_udp is None:
        threaded_udp = False
    for attempt in range(5):
        ua = SipUserAgent("127.0.0.1", 0, on_invite=app.on_invite)
        service = SipService(ua)
        service.early_trying = early_trying
        if batched_udp is not None:
            service.batched_udp = batched_udp
        if threaded_udp is not None:
            service.threaded_udp = threaded_udp
        ua.attach(service)
        try:
            first = await service.listen(Listen(transports[0], "127.0.0.1", port), tls)
            for transport in transports[1:]:
                own = 0 if transport == "tls" else first.port
                await service.listen(Listen(transport, "127.0.0.1", own), tls)
        except OSError as e:
            # the port the first transport got is taken for the next by another process: again
            await service.close()
            if port or e.errno != errno.EADDRINUSE or attempt == 4:
                raise
            continue
        break
    ua.port = first.port
    try:
        yield service, first.port
    finally:
        await service.close()
        await asyncio.sleep(0)  # one turn of the loop for the closed transports, not a wait
