"""What a WebSocket join asks for and may do: its token's grants and its `join_request`.

WIRE.md s4: the access token (an `Authorization: Bearer` header or the `access_token` query
parameter) must grant `roomJoin` for a room and name an identity; the SDK sends its JoinRequest
as a base64url `join_request` parameter, maybe gzipped.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib

from aiohttp import web
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from sipbridge.errors import ApiError
from sipbridge.server.api.auth import Claims, bearer_token, verify_token

MAX_JOIN_REQUEST = 256 * 1024
Kind = models.ParticipantInfo.Kind
_GZIP = rtc.WrappedJoinRequest.Compression.GZIP  # read once: the enum wrapper's is ~1 us a join

_STANDARD = Kind.STANDARD  # (read once: protobuf's enum wrapper answers in Python, ~1 us)
_KINDS = {
    "": Kind.STANDARD,
    "standard": Kind.STANDARD,
    "ingress": Kind.INGRESS,
    "egress": Kind.EGRESS,
    "sip": Kind.SIP,
    "agent": Kind.AGENT,
}


def authorize(request: web.Request, keys: dict[str, str]) -> tuple[Claims, rtc.JoinRequest]:
    """The verified claims of a join's token and its JoinRequest (empty when it sent none)."""
    header = request.headers.get("Authorization")
    token = bearer_token(header) if header else request.query.get("access_token", "")
    claims = verify_token(token, keys)
    join = rtc.JoinRequest()
    if "join_request" in request.query:
        join = decode_join_request(request.query["join_request"])
    elif request.query.get("reconnect") in ("1", "true"):
        # `/rtc` (two-PC) clients resume with query parameters: reconnect=1&sid=PA_...
        join.reconnect = True
        join.participant_sid = request.query.get("sid", "")
    if not claims.video_grant("roomJoin") or not claims.room:
        raise ApiError("permission_denied", "token lacks the roomJoin grant for a room")
    if not claims.identity:
        raise ApiError("unauthenticated", "token has no identity")
    return claims, join


def wants_two_connections(request: web.Request, join: rtc.JoinRequest) -> bool:
    """LiveKit's protocol before v1: `/rtc` with no offer in the join is two-PC (the server
    offers the subscriber connection); `/rtc/v1` is single-PC, the offer in the join or after
    it. (livekit-client with `singlePeerConnection: false` and the Python SDK with
    `single_peer_connection=False` open `/rtc` with query parameters.)"""
    return request.path.rstrip("/") == "/rtc" and not join.publisher_offer.sdp


def participant_kind(claims: Claims) -> int:
    """The participant kind the token names (`kind`), STANDARD when none or unknown."""
    return _KINDS.get(claims.kind, _STANDARD)


def decode_join_request(value: str) -> rtc.JoinRequest:
    """The `join_request` query parameter: base64url(WrappedJoinRequest), maybe gzipped."""
    if len(value) > MAX_JOIN_REQUEST:
        raise ApiError("malformed", "join_request too large")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        wrapped = rtc.WrappedJoinRequest.FromString(raw)
        payload = wrapped.join_request
        if wrapped.compression == _GZIP:
            # Bounded inflate: a small gzip bomb must not become gigabytes.
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            payload = inflater.decompress(payload, MAX_JOIN_REQUEST)
            if inflater.unconsumed_tail:
                raise ApiError("malformed", "join_request too large once decompressed")
        return rtc.JoinRequest.FromString(payload)
    except (binascii.Error, ValueError, DecodeError, zlib.error, gzip.BadGzipFile):
        raise ApiError("malformed", "join_request could not be decoded") from None


def permission_from(claims: Claims) -> models.ParticipantPermission:
    video = claims.video

    def grant(name: str) -> bool:
        value = video.get(name)
        return True if value is None else value is True  # LiveKit: publish/subscribe default on

    return models.ParticipantPermission(
        can_subscribe=grant("canSubscribe"),
        can_publish=grant("canPublish"),
        can_publish_data=grant("canPublishData"),
        hidden=video.get("hidden") is True,
        recorder=video.get("recorder") is True,
        can_update_metadata=video.get("canUpdateOwnMetadata") is True,
        agent=video.get("agent") is True or claims.kind == "agent",
    )
