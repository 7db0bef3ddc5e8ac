"""Twirp over aiohttp: routing, body limits, auth, protobuf/JSON codecs and error mapping.

Twirp v7 (https://twitchtv.github.io/twirp/docs/spec_v7.html):
`POST /twirp/<pkg>.<Service>/<Method>` with `application/protobuf` or `application/json`; errors
are JSON `{code, msg, meta}` with the HTTP status of the code. The official LiveKit clients read
errors only as JSON (WIRE.md s1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from sipbridge.errors import ApiError
from sipbridge.server.api.auth import Claims, bearer_token, verify_token

log = logging.getLogger(__name__)

PREFIX = "/twirp/"
MAX_BODY_BYTES = 1024 * 1024
MAX_TIMEOUT_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Encoded:
    """A reply already serialised as protobuf, for hot list methods that assemble it from
    per-item bytes kept since the item was written (no message copies per request)."""

    message_type: type[Message]
    payload: bytes

    def decode(self) -> Message:
        return self.message_type.FromString(self.payload)


def repeated_field(field_number: int, items: Iterable[bytes]) -> bytes:
    """The protobuf wire encoding of a repeated message field from each item's encoding."""
    tag = _varint(field_number << 3 | 2)
    return b"".join(tag + _varint(len(item)) + item for item in items)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


Handler = Callable[[Any, Claims], Awaitable[Message | Encoded]]
# Before a method runs: ("Service/Method", the decoded request, its claims, the HTTP request,
# its body) -> the reply of the node that serves it, or None to serve it here (cluster.md s3).
Router = Callable[[str, Message, Claims, web.Request, bytes], Awaitable[web.Response | None]]
Authorize = Callable[[Any, Claims], None]


@dataclass(frozen=True, slots=True)
class Method:
    request_type: type[Message]
    handler: Handler
    authorize: Authorize


class TwirpServer:
    """Routes `/twirp/...` requests to registered methods."""

    def __init__(self, keys: dict[str, str], *, body_timeout: float | None = None) -> None:
        self.keys = keys
        self.body_timeout = body_timeout  # a request body must be in within this (seconds)
        self.methods: dict[str, Method] = {}
        self.errors: Counter[str] = Counter()
        self.requests = 0
        # Told of each request's latency, by registered "Service/Method" (else "unknown").
        self.on_latency: Callable[[str, float], None] | None = None
        self.router: Router | None = None

    def register(
        self,
        service: str,
        name: str,
        request_type: type[Message],
        handler: Handler,
        auth: Authorize,
    ) -> None:
        self.methods[f"{service}/{name}"] = Method(request_type, handler, auth)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        started = time.perf_counter()
        try:
            return await self._handle(request)
        except ApiError as err:
            self.errors[err.code] += 1
            if err.code == "internal":
                log.error("twirp %s: %s", request.path, err.message)
            return error_response(err)
        finally:
            if self.on_latency is not None:
                route = request.path[len(PREFIX) :] if request.path.startswith(PREFIX) else ""
                method = route if route in self.methods else "unknown"
                self.on_latency(method, time.perf_counter() - started)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = request.path[len(PREFIX) :] if request.path.startswith(PREFIX) else ""
        method = self.methods.get(route)
        if method is None:
            raise ApiError("bad_route", f"no handler for path {request.path!r}")
        if request.method != "POST":
            raise ApiError("bad_route", f"unsupported method {request.method} (only POST)")
        content_type = request.content_type.lower()
        if content_type not in ("application/protobuf", "application/json"):
            raise ApiError("bad_route", f"unexpected Content-Type {request.content_type!r}")
        claims = verify_token(bearer_token(request.headers.get("Authorization")), self.keys)
        body = await read_body(request, deadline_s=self.body_timeout)
        message = decode(method.request_type, body, content_type)
        method.authorize(message, claims)
        if self.router is not None:
            routed = await self.router(route, message, claims, request, body)
            if routed is not None:
                return routed
        timeout = twirp_timeout(request.headers.get("X-Twirp-Timeout-Ms"))
        try:
            if timeout is None:  # (the usual request: no deadline to arm)
                reply = await method.handler(message, claims)
            else:
                async with asyncio.timeout(timeout):
                    reply = await method.handler(message, claims)
            return encode(reply, content_type)
        except TimeoutError:
            raise ApiError("deadline_exceeded", "request timed out") from None
        except ApiError:
            raise
        except Exception:
            log.exception("twirp %s failed", route)
            raise ApiError("internal", "internal server error") from None


async def read_body(
    request: web.Request, *, limit: int = MAX_BODY_BYTES, deadline_s: float | None = None
) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit`, or once `deadline_s`
    seconds pass before it is all in (a body that trickles would hold its connection and task
    for as long as its sender likes: `deadline_exceeded`, HTTP 408)."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError("malformed", f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    if length is not None and request.content.is_eof():
        # All of it is in already (the usual small request): taken at once, without arming a
        # deadline and iterating for a read that cannot wait (issue 18).
        try:
            chunks.append(request.content.read_nowait())
        except (ConnectionError, asyncio.IncompleteReadError, EOFError) as exc:
            raise ApiError("malformed", "the request body ended early") from exc
        size = len(chunks[0])
        if size == length:
            return chunks[0]
    try:
        async with asyncio.timeout(deadline_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise ApiError("malformed", f"request body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            "deadline_exceeded", f"the request body did not arrive within {deadline_s:g} s"
        ) from None
    except (ConnectionError, asyncio.IncompleteReadError, EOFError) as exc:
        raise ApiError("malformed", "the request body ended early") from exc
    return b"".join(chunks)


def decode(request_type: type[Message], body: bytes, content_type: str) -> Message:
    message = request_type()
    try:
        if content_type == "application/json":
            if body.strip() and not body.lstrip().startswith(b"{"):
                raise json_format.ParseError("the JSON body must be an object")
            json_format.Parse(
                body.decode("utf-8") if body else "{}", message, ignore_unknown_fields=True
            )
        else:
            message.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(
            "malformed", f"the request could not be decoded: {str(exc)[:200] or 'bad body'}"
        ) from None
    return message


def encode(reply: Message | Encoded, content_type: str) -> web.Response:
    if isinstance(reply, Encoded):
        if content_type != "application/json":
            return web.Response(body=reply.payload, content_type="application/protobuf")
        reply = reply.decode()
    if content_type == "application/json":
        text = json_format.MessageToJson(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return web.Response(body=text.encode(), content_type="application/json")
    return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")


def twirp_timeout(header: str | None) -> float | None:
    """`X-Twirp-Timeout-Ms` as seconds; absent or unusable means no deadline."""
    if not header:
        return None
    try:
        ms = int(header)
    except ValueError:
        return None
    if ms <= 0:
        return None
    return min(ms, MAX_TIMEOUT_MS) / 1000


async def not_implemented_yet(req: Any, _: Claims) -> Message:
    """For methods whose issue has not landed: a clear `unimplemented`, never a silent 404."""
    raise ApiError("unimplemented", f"{type(req).__name__[:-7]} is not implemented yet")


def error_response(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": err.code, "msg": err.message}
    if err.meta:
        body["meta"] = err.meta
    return web.Response(
        status=err.http_status, body=json.dumps(body).encode(), content_type="application/json"
    )
