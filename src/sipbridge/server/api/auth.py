"""Access tokens: LiveKit JWTs (HS256, `iss` = API key) and the grants they carry (WIRE.md s2)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.api_jwt import PyJWT

from sipbridge.errors import ApiError

LEEWAY_S = 60
MAX_TOKEN_BYTES = 16 * 1024
# Tokens verified already, by their exact text: (the secret that verified it, its claims, its
# `exp`, the later of its `nbf` and `iat`). The official clients sign one token per request, and
# one made in the same second with the same grants is the same text: a hit skips the decoding
# and the HMAC, and checks only what time changes (expiry, not-before) and that the key still has
# that secret. Bounded: the oldest entry goes when full (an OrderedDict: a plain dict's first
# key, found by `next(iter())`, is found past every slot deleted before it, 3 us against 1 with
# every token new, as the agents' joins are).
VERIFIED_MAX = 1024
_verified: OrderedDict[str, tuple[str, Claims, int, int | None]] = OrderedDict()
PREPARED_KEYS_MAX = 64


class PreparedHmac(HMACAlgorithm):
    """PyJWT's HS256, its keys prepared once each. PyJWT prepares the key again at every
    signature it checks or makes (`HMACAlgorithm.prepare_key`: the secret to bytes, then
    refused if it looks like a PEM, SSH or DER key or a JWK - a JSON parse and several pattern
    matches, about 40 us, more than half of verifying a token); a server has a handful of API
    secrets and checks two tokens a call with a room each (the agent's join, its request), each
    token new. The result for a secret never changes: it is kept (a bounded few), and a secret
    PyJWT refuses is refused every time, as before. Signing and verifying stay PyJWT's."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: dict[str | bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)
            if len(self._prepared) < PREPARED_KEYS_MAX:
                self._prepared[key] = prepared
        return prepared


def use_prepared_hmac() -> None:
    """Register `PreparedHmac` as PyJWT's HS256 (its `register_algorithm`: the module-level
    `jwt.encode` and `jwt.decode` use it); done once, on import."""
    if not isinstance(jwt.get_algorithm_by_name("HS256"), PreparedHmac):
        jwt.unregister_algorithm("HS256")
        jwt.register_algorithm("HS256", PreparedHmac())


use_prepared_hmac()

_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # base64url -> base64 (`urlsafe_b64decode`)
_PADDING = (b"", b"===", b"==", b"=")  # by length modulo 4
# A segment's last character, by its length modulo 4, where it encodes bits past the last
# byte (RFC 4648 s3.5): 2 characters make 1 byte, the second's low 4 bits left over; 3 make
# 2, the third's low 2 bits. The canonical encoding has them zero: what re-encoding the decoded
# bytes gives back. (A length of 1 modulo 4 is no encoding.)
_CANONICAL_LAST = (b"", b"", b"AQgw", b"AEIMQUYcgkosw048")


class SegmentCheckedJws(PyJWS):
    """PyJWS, its check of a token's segments done in C when they are of the usual shape.
    PyJWT (2.15 here) refuses a segment with a character outside base64url by testing each
    character in a Python generator (`any(c not in ALPHABET for c in segment)`): about 300 of
    them a token, 14 us of the 40 its decoding takes (issue 18: two new tokens a call with a
    room each, the agent's join and its UpdateSubscriptions). A segment of base64url characters only
    (so no `=` padding), of a length base64 allows, whose last character leaves no bits set past
    its bytes (so that it decodes back to itself: PyJWT re-encodes the bytes to compare), is
    what that check passes, and is decoded here as PyJWT decodes it (`urlsafe_b64decode`, its
    steps without its Python layers); anything else (padding, junk, a non-canonical encoding)
    goes to PyJWT's own check, which refuses it or decodes it, with its errors. Verifying stays
    PyJWT's: the signature, the claims and their times."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        tail = len(segment) % 4
        if not segment.translate(None, _BASE64URL) and (
            tail == 0 or segment[-1:] in _CANONICAL_LAST[tail]
        ):
            return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[tail])
        return PyJWS._decode_base64url_segment(segment, name)


def _pyjwt() -> PyJWT:
    """A PyJWT whose segments are checked by `SegmentCheckedJws`, with the prepared HS256 (as
    PyJWT wires its own module-level instance: `_jwt_global_obj._jws = _jws_global_obj`)."""
    decoder = PyJWT()
    jws = SegmentCheckedJws(options=decoder._jws.options)
    jws.unregister_algorithm("HS256")
    jws.register_algorithm("HS256", jwt.get_algorithm_by_name("HS256"))
    decoder._jws = jws
    return decoder


# What verifies tokens (`jwt.encode` and the module-level `jwt.decode` stay PyJWT's own)
_decoder = _pyjwt()


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """A verified token. `video` and `sip` hold the grants as sent (camelCase keys)."""

    api_key: str
    identity: str = ""
    name: str = ""
    kind: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    video: Mapping[str, Any] = field(default_factory=dict)
    sip: Mapping[str, Any] = field(default_factory=dict)
    room_config: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def video_grant(self, name: str) -> bool:
        return self.video.get(name) is True

    def sip_grant(self, name: str) -> bool:
        return self.sip.get(name) is True

    @property
    def room(self) -> str:
        room = self.video.get("room", "")
        return room if isinstance(room, str) else ""


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <jwt>` header (a bare token is accepted too)."""
    if not header:
        raise ApiError("unauthenticated", "missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if not token:
        token = scheme
    elif scheme.lower() != "bearer":
        raise ApiError("unauthenticated", "Authorization must be 'Bearer <token>'")
    return token.strip()


def verify_token(token: str, keys: Mapping[str, str]) -> Claims:
    """Check signature, expiry and shape; raise `unauthenticated` with the reason otherwise."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ApiError("unauthenticated", "token too large")
    if not token.isascii():  # a JWT is base64url and dots; HTTP may carry any bytes (RFC 7519 s3)
        raise ApiError("unauthenticated", "invalid token: not a JWT")
    known = _verified.get(token)
    if known is not None:
        secret, cached, exp, not_before = known
        if keys.get(cached.api_key) == secret:
            _check_times(exp, not_before, time.time())  # as PyJWT checks them, same leeway
            return cached
        del _verified[token]
    claims = _with_the_only_key(token, keys)
    if claims is not None:
        api_key = str(claims["iss"])
    else:
        try:
            unverified = _decoder.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ApiError("unauthenticated", "invalid token: not a JWT") from None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in keys:
            raise ApiError("unauthenticated", "invalid token: unknown API key")
        api_key = issuer
        try:
            claims = _decoder.decode(
                token,
                keys[api_key],
                algorithms=["HS256"],
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError("unauthenticated", "invalid token: expired") from None
        except jwt.ImmatureSignatureError:
            raise ApiError("unauthenticated", "invalid token: not valid yet") from None
        except jwt.InvalidSignatureError:
            raise ApiError("unauthenticated", "invalid token: signature mismatch") from None
        except jwt.PyJWTError as exc:
            raise ApiError("unauthenticated", f"invalid token: {exc}") from None
    video = claims.get("video") or {}
    sip = claims.get("sip") or {}
    attributes = claims.get("attributes") or {}
    room_config = claims.get("roomConfig") or {}
    if not all(isinstance(x, dict) for x in (video, sip, attributes, room_config)):
        raise ApiError("unauthenticated", "invalid token: malformed grants")
    verified = Claims(
        api_key=api_key,
        identity=str(claims.get("sub", "")),
        name=str(claims.get("name", "")),
        kind=str(claims.get("kind", "")),
        metadata=str(claims.get("metadata", "")),
        attributes={str(k): str(v) for k, v in attributes.items()},
        video=video,
        sip=sip,
        room_config=room_config,
        sha256=str(claims.get("sha256", "")),
    )
    _remember(token, keys[api_key], verified, claims)
    return verified


def _with_the_only_key(token: str, keys: Mapping[str, str]) -> dict[str, Any] | None:
    """With one API key (a server's usual setup), the token verified with its secret at once:
    its claims when that succeeds and the token's issuer is that key. None otherwise, and the
    general path (the issuer read first, then the signature checked) decides, with its error."""
    if len(keys) != 1:
        return None
    [(api_key, secret)] = keys.items()
    try:
        claims: dict[str, Any] = _decoder.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=LEEWAY_S,
            options={"require": ["exp"], "verify_aud": False},
        )
    except jwt.PyJWTError:
        return None
    return claims if claims.get("iss") == api_key else None


def _remember(token: str, secret: str, verified: Claims, claims: Mapping[str, Any]) -> None:
    """Keep a verified token for its next use (PyJWT has checked that `exp`, `nbf` and `iat`,
    where present, are integers)."""
    times = [int(claims[k]) for k in ("nbf", "iat") if k in claims]
    if len(_verified) >= VERIFIED_MAX:
        _verified.popitem(last=False)
    _verified[token] = (secret, verified, int(claims["exp"]), max(times) if times else None)


def _check_times(exp: int, not_before: int | None, now: float) -> None:
    if exp <= now - LEEWAY_S:
        raise ApiError("unauthenticated", "invalid token: expired")
    if not_before is not None and not_before > now + LEEWAY_S:
        raise ApiError("unauthenticated", "invalid token: not valid yet")


def sign_token(
    api_key: str,
    api_secret: str,
    *,
    ttl_s: float = 300,
    now: float | None = None,
    **claims: Any,
) -> str:
    """An HS256 token such as webhooks carry (`sha256` claim) or a server issues to agents."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iss": api_key, "nbf": issued, "exp": issued + int(ttl_s)}
    payload.update({k: v for k, v in claims.items() if v not in (None, "", {})})
    return jwt.encode(payload, api_secret, algorithm="HS256")


def body_sha256(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()
