"""The SIP trace of a call over HTTP: `GET /sipbridge/v1/calls/{id}/trace` (JSON) and
`GET /sipbridge/v1/calls/{id}/pcap` (a libpcap file).

Plain GETs rather than a Twirp method: Twirp here serves LiveKit's own services with
`livekit-protocol`'s messages, which have no trace; a method of ours would need a protobuf
schema of ours for what is a log of texts and, for the pcap, a file best served as it is (with
its content type, to `curl -o` or a browser). Authentication is the rest of the API's: a LiveKit
JWT as `Authorization: Bearer`, with the `sip.admin` grant (traces show numbers and digest
headers, as trunk settings do). Errors have the Twirp error shape and status (`not_found`, 404,
for a call with no trace: unknown, or expired from the bounded store).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from urllib.parse import quote

from aiohttp import web

from sipbridge.errors import ApiError, not_found
from sipbridge.server.api.auth import bearer_token, sign_token, verify_token
from sipbridge.server.api.twirp import error_response
from sipbridge.sip.pcap import write_pcap
from sipbridge.sip.trace import CallTrace, CallTraces, packets_of, trace_as_json

PREFIX = "/sipbridge/v1/calls/"
MAX_CALL_ID = 1024


class TraceApi:
    def __init__(
        self,
        traces: Callable[[], CallTraces | None],
        keys: Mapping[str, str],
        clock: Callable[[], float],
        capture_rtp: Callable[[str], bool] | None = None,
    ) -> None:
        self.traces = traces
        self.keys = keys
        self.clock = clock
        self.capture_rtp = capture_rtp

    def routes(self, app: web.Application) -> None:
        # A Call-ID may hold "/" (RFC 3261 s25.1 `word`): the id is everything up to the suffix.
        app.router.add_get(PREFIX + "{call_id:.+}/trace", self.trace)
        app.router.add_get(PREFIX + "{call_id:.+}/pcap", self.pcap)
        app.router.add_post(PREFIX + "{call_id:.+}/rtp", self.rtp)

    def _call_id(self, request: web.Request) -> str:
        """The call id of an authorised request."""
        claims = verify_token(bearer_token(request.headers.get("Authorization")), self.keys)
        if not claims.sip_grant("admin"):
            raise ApiError("permission_denied", "requires the sip.admin grant")
        call_id = request.match_info["call_id"]
        if len(call_id) > MAX_CALL_ID:
            raise ApiError("invalid_argument", "call id too long")
        return call_id

    def _find(self, request: web.Request) -> CallTrace:
        call_id = self._call_id(request)
        traces = self.traces()
        trace = traces.get(call_id, self.clock()) if traces is not None else None
        if trace is None:
            raise not_found(
                f"no SIP trace for call {call_id[:200]!r}: unknown, or no longer kept "
                "(traces are kept for recent calls only)"
            )
        return trace

    async def trace(self, request: web.Request) -> web.Response:
        try:
            trace = self._find(request)
        except ApiError as err:
            return error_response(err)
        return web.Response(text=json.dumps(trace_as_json(trace)), content_type="application/json")

    async def rtp(self, request: web.Request) -> web.Response:
        """Trace the RTP headers of a live call from now on."""
        try:
            call_id = self._call_id(request)
            if self.capture_rtp is None or not self.capture_rtp(call_id):
                raise not_found(f"no live call {call_id[:200]!r} with a SIP trace")
        except ApiError as err:
            return error_response(err)
        return web.json_response({"call_id": call_id, "rtp": "traced"})

    async def pcap(self, request: web.Request) -> web.Response:
        try:
            trace = self._find(request)
        except ApiError as err:
            return error_response(err)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in trace.call_id)[:100]
        packets = packets_of(trace)  # taken here, while the call may go on
        if len(packets) > 500:  # 30,000 RTP headers take a few hundred ms: off the loop
            body = await asyncio.to_thread(write_pcap, packets)
        else:
            body = write_pcap(packets)
        return web.Response(
            body=body,
            content_type="application/vnd.tcpdump.pcap",
            headers={"Content-Disposition": f'attachment; filename="{name}.pcap"'},
        )


class TraceRequestError(Exception):
    """The server refused a trace request; the message says why (its code and text)."""


async def fetch(
    url: str, api_key: str, api_secret: str, call_id: str, what: str, *, method: str = "GET"
) -> bytes:
    """`trace` (JSON) or `pcap` of a call from a server, or `rtp` (POST), as the CLI asks."""
    import aiohttp  # noqa: PLC0415 - the server side needs only aiohttp.web

    base = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if base.startswith(ws):
            base = http + base[len(ws) :]
    token = sign_token(api_key, api_secret, ttl_s=60, sip={"admin": True})
    target = f"{base}{PREFIX}{quote(call_id, safe='')}/{what}"
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, target, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        body = await response.read()
        if response.status == 200:
            return body
    try:
        error = json.loads(body)
        reason = f"{error['code']}: {error['msg']}"
    except (ValueError, KeyError, TypeError):
        reason = f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}"
    raise TraceRequestError(reason)
