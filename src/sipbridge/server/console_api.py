"""What the web console (`console/`, served at `/console`) asks of the server beyond the Twirp
API, which it uses as any client does:

- `POST /console/token` `{key, secret[, ttl_s]}` -> `{token, expires_at, identity}`: the API
  key and secret are checked here, once, and the page keeps only a short-lived JWT
  (CONSOLE_TOKEN_TTL_S, or `ttl_s` from MIN_TTL_S up to that) with the grants it needs:
  `roomList`, `roomAdmin`, `sip.admin`, `sip.call`. Wrong credentials are `unauthenticated`
  (401); an address that keeps failing is blocked as SIP digest guessers are
  (`telephony/auth_guard.py`), `resource_exhausted` (429) meanwhile.
- `GET /console/live` (Bearer): the rooms and their participants as a stream of JSON lines - a
  snapshot first, then each room event as it happens (the model's own snapshots, so a
  `sip.callStatus` that lasts a few milliseconds is still seen), and every QUALITY_EVERY_S the
  running calls' latest quality. LiveKit's Twirp lists participants one room at a time, with a
  token per room, and only as they are when asked: a supervisor's page would poll N rooms a
  second and still miss short states. The stream ends when the token expires (the page then signs
  in again) or after MAX_STREAM_S.
- `GET /console/calls/{call_id}` (Bearer, `sip.admin`): the call's record (`SIPCallInfo` as
  JSON; the Twirp call log pages by filters and has no lookup by id), its quality over time
  (every QUALITY_S while it ran, kept here in memory for the last MAX_CALLS calls), or its last
  quality record from the call log when this node has no history of it, and its transfers
  (`SIPTransferInfo`; null with Redis, which indexes no transfers by call).
- `POST /console/join` `{room, talk}` (Bearer): a token to join `room` from the page: hidden and
  subscribe-only to listen in; visible, publishing the microphone and data (DTMF) to talk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import sip as proto

from sipbridge.errors import ApiError
from sipbridge.rooms import events as ev
from sipbridge.server.api.auth import Claims, bearer_token, sign_token, verify_token
from sipbridge.server.api.stalled_writes import reset
from sipbridge.server.api.twirp import error_response, read_body
from sipbridge.server.state.call_log import KIND as CALL_KIND
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.telephony.auth_guard import AuthGuard

CONSOLE_TOKEN_TTL_S = 600
MIN_TTL_S = 2
JOIN_TOKEN_TTL_S = 600
MAX_BODY = 4096
MAX_STREAMS = 32  # live streams open at once, all pages together
MAX_QUEUED = 2000  # events waiting for one slow stream; past it the stream starts over
MAX_STREAM_S = 3600.0
QUALITY_EVERY_S = 2.0
MAX_CALLS = 1000  # calls whose quality history is kept
MAX_SAMPLES = 720  # samples per call (an hour at one per 5 s)
MAX_ROOM_NAME = 256
CLOSE_GRACE_S = 1.0  # at shutdown, how long the streams have to send their last line
CLOSING: dict[str, Any] = {"type": "closing"}  # the server stops: the page reconnects
CONSOLE_VIDEO = {"roomList": True, "roomAdmin": True}
CONSOLE_SIP = {"admin": True, "call": True}


def _json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


class QualityHistory:
    """Each recent call's quality records, oldest first, bounded in calls and samples."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.calls: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def record(self, call_id: str, quality: Mapping[str, Any]) -> None:
        samples = self.calls.get(call_id)
        if samples is None:
            samples = self.calls[call_id] = deque(maxlen=MAX_SAMPLES)
            while len(self.calls) > MAX_CALLS:
                self.calls.popitem(last=False)
        else:
            self.calls.move_to_end(call_id)
        samples.append({"time": round(self.clock(), 3), **quality})

    def latest(self, call_id: str) -> dict[str, Any] | None:
        samples = self.calls.get(call_id)
        return samples[-1] if samples else None

    def samples(self, call_id: str) -> list[dict[str, Any]]:
        return list(self.calls.get(call_id, ()))


class ConsoleApi:
    def __init__(
        self,
        keys: Mapping[str, str],
        rooms: RoomsRuntime,
        call_log: CallLog,
        clock: Callable[[], float] = time.time,
        *,
        io_timeout: float = 15.0,
    ) -> None:
        self.keys = keys
        # A request body must be in, and a stream's line taken by its reader, within this
        # (--http-idle-timeout): a page that stops reading is cut off, its slot released.
        self.io_timeout = io_timeout
        self.rooms = rooms
        self.call_log = call_log
        self.clock = clock
        self.guard = AuthGuard(max_failures=10, window=300.0, block=60.0)
        self.quality = QualityHistory(clock)
        # Each live stream's queue, and its connection (to cut one that reads nothing).
        self.streams: dict[asyncio.Queue[dict[str, Any] | None], asyncio.Transport] = {}
        self.none_streaming = asyncio.Event()  # set while no stream is open
        self.none_streaming.set()
        self.stalled = 0  # streams cut because their reader stopped reading
        self.refused = 0  # sign-ins refused: wrong credentials or a blocked address
        self.closing = False
        rooms.listen(
            self._room_event,
            (
                ev.RoomStarted,
                ev.RoomFinished,
                ev.ParticipantJoined,
                ev.ParticipantUpdated,
                ev.ParticipantLeft,
            ),
        )
        call_log.on_quality = self.quality.record

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/console/token", self.token)
        app.router.add_get("/console/live", self.live)
        app.router.add_get("/console/calls/{call_id}", self.call)
        app.router.add_post("/console/join", self.join)
        # before the server waits for its requests to end: the streams never would
        app.on_shutdown.append(self._close_streams)

    async def _close_streams(self, _: web.Application) -> None:
        self.closing = True
        for queue in list(self.streams):
            queue.put_nowait(CLOSING)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self.none_streaming.wait()
        for transport in list(self.streams.values()):
            reset(transport)  # still writing to a page that takes nothing: no wait for it

    # -- sign-in ---------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        source = request.remote or "unknown"
        try:
            body = await _json_body(request, self.io_timeout)
            key, secret = body.get("key"), body.get("secret")
            if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
                raise ApiError("invalid_argument", "key and secret: both must be given")
            ttl = body.get("ttl_s", CONSOLE_TOKEN_TTL_S)
            if not isinstance(ttl, int) or not MIN_TTL_S <= ttl <= CONSOLE_TOKEN_TTL_S:
                raise ApiError(
                    "invalid_argument",
                    f"ttl_s: seconds from {MIN_TTL_S} to {CONSOLE_TOKEN_TTL_S}",
                )
            now = time.monotonic()
            if (wait := self.guard.blocked(source, now)) is not None:
                self.refused += 1
                raise ApiError(
                    "resource_exhausted",
                    "too many failed sign-ins from this address: "
                    f"try again in {math.ceil(wait - now)} s",
                )
            known = self.keys.get(key)
            # (JSON may carry a lone surrogate, which no configured secret has: no UTF-8 for it)
            given = secret.encode("utf-8", "surrogatepass")
            if known is None or not hmac.compare_digest(known.encode(), given):
                self.refused += 1
                self.guard.failed(source, "console", now)
                raise ApiError("unauthenticated", "wrong API key or secret")
            self.guard.succeeded(source)
        except ApiError as err:
            return error_response(err)
        identity = "console-" + secrets.token_hex(4)
        issued = self.clock()
        token = sign_token(
            key,
            known,
            ttl_s=ttl,
            now=issued,
            sub=identity,
            video=CONSOLE_VIDEO,
            sip=CONSOLE_SIP,
        )
        return web.json_response(
            {"token": token, "identity": identity, "expires_at": int(issued) + ttl}
        )

    def _claims(self, request: web.Request) -> Claims:
        claims = verify_token(bearer_token(request.headers.get("Authorization")), self.keys)
        if not (claims.video_grant("roomList") and claims.sip_grant("admin")):
            raise ApiError("permission_denied", "requires the roomList and sip.admin grants")
        return claims

    # -- joining a room from the page ------------------------------------------------------

    async def join(self, request: web.Request) -> web.Response:
        try:
            claims = self._claims(request)
            body = await _json_body(request, self.io_timeout)
            room, talk = body.get("room"), body.get("talk", False)
            if not isinstance(room, str) or not room or len(room) > MAX_ROOM_NAME:
                raise ApiError("invalid_argument", "room: must be a room name")
            if not isinstance(talk, bool):
                raise ApiError("invalid_argument", "talk: must be true or false")
            if self.rooms.registry.find(room) is None:
                raise ApiError("not_found", f"room {room!r} not found")
        except ApiError as err:
            return error_response(err)
        video: dict[str, Any] = {"roomJoin": True, "room": room, "canSubscribe": True}
        if talk:
            video |= {
                "canPublish": True,
                "canPublishData": True,
                "canPublishSources": ["microphone"],
            }
        else:
            video |= {"canPublish": False, "canPublishData": False, "hidden": True}
        identity = f"{claims.identity or 'console'}-{'talk' if talk else 'listen'}"
        token = sign_token(
            claims.api_key,
            self.keys[claims.api_key],
            ttl_s=JOIN_TOKEN_TTL_S,
            now=self.clock(),
            sub=identity,
            name="console (talking)" if talk else "console (listening)",
            video=video,
        )
        return web.json_response({"token": token, "identity": identity, "room": room})

    # -- quality over time -----------------------------------------------------------------

    async def call(self, request: web.Request) -> web.Response:
        try:
            self._claims(request)
            call_id = request.match_info["call_id"]
            if len(call_id) > 200:
                raise ApiError("invalid_argument", "call id too long")
            record = await self.call_log.store.get(CALL_KIND, call_id)
            if record is None:
                raise ApiError("not_found", f"no call {call_id!r} in the call log")
            info = proto.SIPCallInfo.FromString(record.data)
            samples = self.quality.samples(call_id)
            if not samples:
                last = await self.call_log.quality(call_id)
                samples = [last] if last else []
            # SQLite indexes transfers by call; Redis has no such index (null: not known here)
            transfers_of = getattr(self.call_log.store, "transfers_of", None)
            transfers = None
            if transfers_of is not None:
                datas = await transfers_of([call_id])
                transfers = [_json(proto.SIPTransferInfo.FromString(d)) for d in datas]
        except ApiError as err:
            return error_response(err)
        return web.json_response({"call": _json(info), "quality": samples, "transfers": transfers})

    # -- the live stream -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        rooms = []
        for room in sorted(self.rooms.registry.rooms(), key=lambda r: r.name):
            participants = [p.to_proto() for p in room.participants.values()]
            rooms.append(
                {"room": _json(room.to_proto()), "participants": list(map(_json, participants))}
            )
        return {
            "type": "snapshot",
            "time": self.clock(),
            "rooms": rooms,
            "quality": self._running(),
        }

    def _running(self) -> dict[str, Any]:
        """The latest quality of each call with a participant in a room now."""
        out: dict[str, Any] = {}
        for room in self.rooms.registry.rooms():
            for participant in room.participants.values():
                call_id = participant.attributes.get("sip.callID")
                if call_id and (latest := self.quality.latest(call_id)) is not None:
                    out[call_id] = latest
        return out

    def _room_event(self, event: ev.RoomEvent) -> None:
        if not self.streams or self.closing:
            return
        line: dict[str, Any] | None = None
        match event:
            case ev.RoomStarted(room=room) | ev.RoomFinished(room=room):
                name = "room_started" if isinstance(event, ev.RoomStarted) else "room_finished"
                line = {"type": "event", "event": name, "room": _json(room)}
            case (
                ev.ParticipantJoined(room=room, participant=p)
                | ev.ParticipantUpdated(room=room, participant=p)
                | ev.ParticipantLeft(room=room, participant=p)
            ):
                name = {
                    ev.ParticipantJoined: "participant_joined",
                    ev.ParticipantUpdated: "participant_updated",
                    ev.ParticipantLeft: "participant_left",
                }[type(event)]
                line = {
                    "type": "event",
                    "event": name,
                    "room": _json(room),
                    "participant": _json(p),
                }
            case _:
                return
        line["time"] = self.clock()
        for queue in list(self.streams):
            if queue.qsize() >= MAX_QUEUED:
                _drain(queue)  # too slow: start it over from a fresh snapshot
                queue.put_nowait(self.snapshot())
            else:
                queue.put_nowait(line)

    async def live(self, request: web.Request) -> web.StreamResponse:
        try:
            self._claims(request)
            expires = _expiry(request) or self.clock() + MAX_STREAM_S
            if expires <= self.clock():  # past `exp`, inside the verifier's leeway: no stream
                raise ApiError("unauthenticated", "invalid token: expired")
            if self.closing:
                raise ApiError("unavailable", "the server is stopping")
            if len(self.streams) >= MAX_STREAMS:
                raise ApiError("resource_exhausted", f"at most {MAX_STREAMS} live views at once")
        except ApiError as err:
            return error_response(err)
        ends = time.monotonic() + min(MAX_STREAM_S, max(0.0, expires - self.clock()))
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        transport = request.transport
        if transport is None:  # the page is gone already
            return error_response(ApiError("canceled", "the connection closed"))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        queue.put_nowait(self.snapshot())
        self.streams[queue] = transport  # before any wait: MAX_STREAMS holds for concurrent ones
        self.none_streaming.clear()
        try:
            await response.prepare(request)
            next_quality = time.monotonic() + QUALITY_EVERY_S
            while (now := time.monotonic()) < ends:
                try:
                    async with asyncio.timeout(max(0.0, min(next_quality, ends) - now)):
                        line = await queue.get()
                except TimeoutError:
                    line = None
                if line is CLOSING:
                    await self._send(response, json.dumps(CLOSING).encode() + b"\n")
                    break
                if line is None:
                    if time.monotonic() >= next_quality:
                        next_quality = time.monotonic() + QUALITY_EVERY_S
                        line = {"type": "quality", "time": self.clock(), "quality": self._running()}
                    else:
                        continue
                await self._send(response, json.dumps(line, separators=(",", ":")).encode() + b"\n")
            else:
                await self._send(response, b'{"type":"expired"}\n')
            async with asyncio.timeout(self.io_timeout):
                await response.write_eof()
        except ConnectionError:  # the page went away
            pass
        except TimeoutError:  # the page stopped reading: cut off, its slot and queue released
            self.stalled += 1
            reset(transport)
        finally:
            del self.streams[queue]
            if not self.streams:
                self.none_streaming.set()
        return response

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        """One line to a stream; TimeoutError when its reader takes none for `io_timeout`."""
        async with asyncio.timeout(self.io_timeout):
            await response.write(data)


def _drain(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()


def _expiry(request: web.Request) -> float | None:
    """The `exp` of the request's (already verified) token."""
    import jwt  # noqa: PLC0415

    with contextlib.suppress(ApiError, jwt.PyJWTError):
        token = bearer_token(request.headers.get("Authorization"))
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    return None


async def _json_body(request: web.Request, deadline_s: float) -> dict[str, Any]:
    """The whole body (however many segments it came in) as a JSON object."""
    raw = await read_body(request, limit=MAX_BODY, deadline_s=deadline_s)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ApiError("malformed", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError("malformed", "the body must be a JSON object")
    return body
