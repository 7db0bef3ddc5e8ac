"""HTTP Digest authentication for SIP, sans-IO (RFC 3261 s22, RFC 2617, RFC 7616, RFC 8760).

The module works on header values, not on messages. A server hands the value of a request's
`Authorization` / `Proxy-Authorization` header to `DigestServer.verify` and, when that does not
come back `OK`, puts the values `DigestServer.challenge` returns in the `WWW-Authenticate` /
`Proxy-Authenticate` headers of its 401 / 407. A client hands the challenge values it received to
`DigestClient.answer` (or the stateless `answer_challenge`) and sends the value it gets back.

Nonces are stateless: each one carries its creation time and an HMAC over that time, a random
salt, the realm and the algorithm, keyed with the server's secret. The server recognises its own
nonces without storing them, so every node sharing the secret accepts them and a restart does not
invalidate outstanding challenges (when `now` is wall-clock time). The only state is a bounded map
from nonce to the highest `nc` seen, for replay protection with qop=auth.

No clock is read here (STYLE.md point 2): every function that needs the time takes `now`, in
seconds, from the same clock for `challenge` and `verify`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipbridge.sip.errors import SipProtocolError

# Limits on what we parse (STYLE.md point 6). A real Authorization header is a few hundred
# characters with about ten parameters; the caps leave room for long request URIs.
MAX_AUTH_HEADER_LENGTH = 4096
MAX_AUTH_PARAMS = 32

DEFAULT_NONCE_LIFETIME = 300.0
DEFAULT_MAX_TRACKED_NONCES = 4096

# RFC 7616 s6.1 / RFC 8760 s2: the algorithm names we implement, by lower-case spelling. The
# names compare case-insensitively (RFC 7616 s3.3 calls them tokens; tokens in auth-params are
# matched without regard to case), and are written back in the registry's spelling.
_ALGORITHMS = {
    "md5": "MD5",
    "md5-sess": "MD5-sess",
    "sha-256": "SHA-256",
    "sha-256-sess": "SHA-256-sess",
}
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS.values())

# A client answers the strongest challenge it can (RFC 7616 s3.7, RFC 8760 s2.4): SHA-256 before
# MD5; the plain form before `-sess`, which only adds a cnonce to HA1.
ALGORITHM_PREFERENCE: tuple[str, ...] = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

# RFC 3261 s25.1:
#   token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_CHARS = r"[A-Za-z0-9\-.!%*_+`'~]"
_TOKEN = re.compile(_TOKEN_CHARS + "+")
#   LWS = [*WSP CRLF] 1*WSP   ; linear whitespace
#   SWS = [LWS]               ; sep whitespace
# A non-empty match of this pattern is exactly one LWS; the empty match is the absent SWS.
_SWS = re.compile(r"[ \t]*(?:\r\n[ \t]+)?")
# The fold inside a quoted string: CRLF followed by at least one WSP.
_FOLD = re.compile(r"\r\n[ \t]+")
# The scheme at the start of a header value, when it is followed by whitespace or the end.
_LEADING_SCHEME = re.compile(r"[ \t]*(?:\r\n[ \t]+)?(" + _TOKEN_CHARS + r"+)(?=[ \t\r]|\Z)")
# RFC 3261 s25.1: nc-value = 8LHEX
_NC_VALUE = re.compile(r"[0-9a-fA-F]{8}")
_MAX_NC = 0xFFFFFFFF

# Our nonces: base64url, unpadded, of issued-ms (8 bytes) + salt (8 bytes) + HMAC-SHA256 (16 bytes).
_SALT_LENGTH = 8
_MAC_LENGTH = 16
_NONCE_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
_MIN_SECRET_LENGTH = 16


def _bad(detail: str) -> SipProtocolError:
    return SipProtocolError(400, "Bad Request", detail)


# -- the auth-param syntax ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuthParam:
    """One `auth-param` (RFC 3261 s25.1): `name = ( token / quoted-string )`.

    `value` is unescaped. `quoted` records which of the two forms carries it, so a header
    serialises back the way it was written; the meaning is the same either way (RFC 7616 s3.3).
    """

    name: str
    value: str
    quoted: bool = False


@dataclass(frozen=True, kw_only=True)
class AuthHeader:
    """A `challenge` or `credentials` value: a scheme and its comma-separated auth-params.

    Parameter names are lower-case after parsing (they compare case-insensitively); each occurs
    at most once (RFC 7616 s3.3, RFC 7235 s2.1).
    """

    scheme: str
    params: tuple[AuthParam, ...]

    def get(self, name: str) -> str | None:
        """The value of parameter `name` (any case), or None when it is absent."""
        wanted = name.lower()
        for param in self.params:
            if param.name.lower() == wanted:
                return param.value
        return None


def parse_auth_header(value: str) -> AuthHeader:
    """Parse a `WWW-Authenticate`, `Authorization` or `Proxy-*` header value.

    RFC 3261 s25.1:

        challenge       = ("Digest" LWS digest-cln *(COMMA digest-cln)) / other-challenge
        other-challenge = auth-scheme LWS auth-param *(COMMA auth-param)
        credentials     = ("Digest" LWS digest-response) / other-response
        auth-param      = auth-param-name EQUAL ( token / quoted-string )
        COMMA = SWS "," SWS ; EQUAL = SWS "=" SWS

    The Digest productions are instances of the generic one, so one parser serves both. Raises
    `SipProtocolError(400)` on anything else, on a duplicate parameter and past the limits.
    """
    if len(value) > MAX_AUTH_HEADER_LENGTH:
        raise _bad(f"authentication header longer than {MAX_AUTH_HEADER_LENGTH} characters")
    pos = _skip_sws(value, 0)
    match = _TOKEN.match(value, pos)
    if match is None:
        raise _bad(f"expected an authentication scheme at offset {pos}")
    scheme = match.group()
    pos = _skip_sws(value, match.end())
    if pos == match.end():
        raise _bad("expected whitespace and parameters after the authentication scheme")
    params: list[AuthParam] = []
    seen: set[str] = set()
    while True:
        match = _TOKEN.match(value, pos)
        if match is None:
            raise _bad(f"expected a parameter name at offset {pos}")
        name = match.group().lower()
        pos = _skip_sws(value, match.end())
        if not value.startswith("=", pos):
            raise _bad(f"expected '=' after parameter {name!r}")
        pos = _skip_sws(value, pos + 1)
        if value.startswith('"', pos):
            text, pos = _read_quoted_string(value, pos)
            param = AuthParam(name=name, value=text, quoted=True)
        else:
            match = _TOKEN.match(value, pos)
            if match is None:
                raise _bad(f"expected a token or quoted string for parameter {name!r}")
            pos = match.end()
            param = AuthParam(name=name, value=match.group())
        if name in seen:
            raise _bad(f"parameter {name!r} occurs twice")
        seen.add(name)
        params.append(param)
        if len(params) > MAX_AUTH_PARAMS:
            raise _bad(f"more than {MAX_AUTH_PARAMS} authentication parameters")
        pos = _skip_sws(value, pos)
        if pos == len(value):
            return AuthHeader(scheme=scheme, params=tuple(params))
        if value[pos] != ",":
            raise _bad(f"expected ',' between parameters at offset {pos}")
        pos = _skip_sws(value, pos + 1)


def format_auth_header(header: AuthHeader) -> str:
    """Serialise `header`; `parse_auth_header` gives it back (names lower-cased).

    Raises ValueError when a scheme, a name or an unquoted value is not a token, or a quoted value
    holds a character no quoted-string can carry (CR, LF, a lone surrogate).
    """
    _require_token(header.scheme, "scheme")
    if not header.params:
        raise ValueError("an authentication header needs at least one parameter")
    parts = []
    for param in header.params:
        _require_token(param.name, "parameter name")
        if param.quoted:
            parts.append(f"{param.name}={quote_string(param.value)}")
        else:
            _require_token(param.value, f"value of {param.name}")
            parts.append(f"{param.name}={param.value}")
    return f"{header.scheme} " + ", ".join(parts)


def quote_string(text: str) -> str:
    """`text` as an RFC 3261 s25.1 quoted-string.

        quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
        qdtext        = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
        quoted-pair   = "\\" (%x00-09 / %x0B-0C / %x0E-7F)

    DQUOTE, backslash and the control characters are escaped; CR and LF cannot be carried at all.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in "\r\n" or 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"{char!r} cannot appear in a quoted-string")
        if char in '"\\' or (code < 0x20 and char != "\t") or code == 0x7F:
            out.append("\\")
        out.append(char)
    out.append('"')
    return "".join(out)


def _skip_sws(value: str, pos: int) -> int:
    match = _SWS.match(value, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _read_quoted_string(value: str, pos: int) -> tuple[str, int]:
    """The unescaped content of the quoted-string opening at `pos`, and the offset after it."""
    out: list[str] = []
    i = pos + 1
    end = len(value)
    while i < end:
        char = value[i]
        code = ord(char)
        if char == '"':
            return "".join(out), i + 1
        if char == "\\":
            # quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F): any ASCII but CR and LF
            if i + 1 == end:
                break
            escaped = value[i + 1]
            if escaped in "\r\n" or ord(escaped) > 0x7F:
                raise _bad(f"invalid escape in quoted string at offset {i}")
            out.append(escaped)
            i += 2
            continue
        if char == "\r":
            # LWS inside qdtext: a fold. RFC 3261 s7.3.1 lets us read it as one SP.
            fold = _FOLD.match(value, i)
            if fold is None:
                raise _bad(f"line break in quoted string at offset {i}")
            out.append(" ")
            i = fold.end()
            continue
        if (code < 0x20 and char != "\t") or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            raise _bad(f"control character in quoted string at offset {i}")
        out.append(char)
        i += 1
    raise _bad(f"unterminated quoted string starting at offset {pos}")


def _require_token(text: str, what: str) -> None:
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a token (RFC 3261 s25.1)")


# -- Digest challenges and credentials ------------------------------------------------------------


def _canonical_algorithm(name: str) -> str:
    return _ALGORITHMS.get(name.lower(), name)


def _require_digest(header: AuthHeader) -> None:
    if header.scheme.lower() != "digest":
        raise _bad(f"expected the Digest scheme, got {header.scheme!r}")


def _required(header: AuthHeader, name: str) -> str:
    value = header.get(name)
    if value is None:
        raise _bad(f"Digest parameter {name!r} is missing")
    return value


def _format_nc(nc: int) -> str:
    # RFC 3261 s25.1: nc-value = 8LHEX; the first request with a nonce sends 00000001
    if not 0 < nc <= _MAX_NC:
        raise ValueError(f"nc {nc} is outside 1..{_MAX_NC:#x}")
    return f"{nc:08x}"


@dataclass(frozen=True, kw_only=True)
class DigestChallenge:
    """A Digest `challenge` (RFC 3261 s25.1 digest-cln, RFC 7616 s3.3).

    `algorithm` is MD5 when the header names none (RFC 2617 s3.2.1); `qop` lists the offered
    quality-of-protection values, lower-case, and is empty for an RFC 2069 style challenge.
    Unrecognised parameters are dropped, as RFC 7616 s3.3 requires.
    """

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: str | None = None

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        """Parse a `WWW-Authenticate` / `Proxy-Authenticate` value; SipProtocolError(400) if bad."""
        header = parse_auth_header(value)
        _require_digest(header)
        qop = header.get("qop")
        algorithm = header.get("algorithm")
        stale = header.get("stale")
        return cls(
            realm=_required(header, "realm"),
            nonce=_required(header, "nonce"),
            opaque=header.get("opaque"),
            algorithm="MD5" if algorithm is None else _canonical_algorithm(algorithm),
            # qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
            qop=()
            if qop is None
            else tuple(item.strip().lower() for item in qop.split(",") if item.strip()),
            # RFC 2617 s3.2.1: anything but TRUE (any case) means FALSE
            stale=stale is not None and stale.lower() == "true",
            domain=header.get("domain"),
        )

    def serialize(self) -> str:
        """The header value: realm, nonce and opaque quoted; algorithm a token; qop a quoted list.

        RFC 3261 s25.1 writes `algorithm = "algorithm" EQUAL ( "MD5" / "MD5-sess" / token )`
        (unquoted) and `qop-options` between double quotes; `stale=TRUE` is a bare token.
        """
        params = [AuthParam(name="realm", value=self.realm, quoted=True)]
        if self.domain is not None:
            params.append(AuthParam(name="domain", value=self.domain, quoted=True))
        params.append(AuthParam(name="nonce", value=self.nonce, quoted=True))
        if self.opaque is not None:
            params.append(AuthParam(name="opaque", value=self.opaque, quoted=True))
        params.append(AuthParam(name="algorithm", value=self.algorithm))
        if self.qop:
            for item in self.qop:
                _require_token(item, "qop value")
            params.append(AuthParam(name="qop", value=",".join(self.qop), quoted=True))
        if self.stale:
            params.append(AuthParam(name="stale", value="TRUE"))
        return format_auth_header(AuthHeader(scheme="Digest", params=tuple(params)))


@dataclass(frozen=True, kw_only=True)
class DigestCredentials:
    """Digest `credentials` (RFC 3261 s25.1 digest-response, RFC 2617 s3.2.2).

    `algorithm` is MD5 when the header names none. With a `qop`, `nc` (an int, sent as 8 hex
    digits) and `cnonce` are present; without one the credentials are RFC 2069 style.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        """Parse an `Authorization` / `Proxy-Authorization` value; SipProtocolError(400) if bad.

        Required: username, realm, nonce, uri, response (RFC 3261 s22.4 requires uri, unlike
        HTTP); with qop also nc and cnonce (RFC 2617 s3.2.2); with a `-sess` algorithm, cnonce.
        """
        header = parse_auth_header(value)
        _require_digest(header)
        username = _required(header, "username")
        realm = _required(header, "realm")
        nonce = _required(header, "nonce")
        uri = _required(header, "uri")
        response = _required(header, "response")
        qop = header.get("qop")
        cnonce = header.get("cnonce")
        nc_text = header.get("nc")
        nc = None
        if nc_text is not None:
            if not _NC_VALUE.fullmatch(nc_text):
                raise _bad(f"nc {nc_text!r} is not 8 hex digits")
            nc = int(nc_text, 16)
            if nc == 0:
                raise _bad("nc counts from 00000001")
        if qop is not None and (nc is None or not cnonce):
            raise _bad("qop requires nc and cnonce (RFC 2617 s3.2.2)")
        algorithm_value = header.get("algorithm")
        algorithm = "MD5" if algorithm_value is None else _canonical_algorithm(algorithm_value)
        if algorithm.endswith("-sess") and not cnonce:
            raise _bad(f"{algorithm} requires a cnonce (RFC 7616 s3.4.2)")
        return cls(
            username=username,
            realm=realm,
            nonce=nonce,
            uri=uri,
            response=response,
            algorithm=algorithm,
            cnonce=cnonce,
            opaque=header.get("opaque"),
            qop=None if qop is None else qop.lower(),
            nc=nc,
        )

    def serialize(self) -> str:
        """The header value: strings quoted; algorithm, qop and nc as tokens (RFC 3261 s25.1)."""
        params = [
            AuthParam(name="username", value=self.username, quoted=True),
            AuthParam(name="realm", value=self.realm, quoted=True),
            AuthParam(name="nonce", value=self.nonce, quoted=True),
            AuthParam(name="uri", value=self.uri, quoted=True),
            AuthParam(name="response", value=self.response, quoted=True),
            AuthParam(name="algorithm", value=self.algorithm),
        ]
        if self.cnonce is not None:
            params.append(AuthParam(name="cnonce", value=self.cnonce, quoted=True))
        if self.opaque is not None:
            params.append(AuthParam(name="opaque", value=self.opaque, quoted=True))
        if self.qop is not None:
            params.append(AuthParam(name="qop", value=self.qop))
        if self.nc is not None:
            params.append(AuthParam(name="nc", value=_format_nc(self.nc)))
        return format_auth_header(AuthHeader(scheme="Digest", params=tuple(params)))


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
) -> str:
    """The `response` value, lower-case hex (RFC 2617 s3.2.2.1, RFC 7616 s3.4.1).

        HA1 = H(username ":" realm ":" password)            ; `-sess`: H(HA1 ":" nonce ":" cnonce)
        HA2 = H(method ":" uri)
        response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   ; qop=auth
                 = H(HA1 ":" nonce ":" HA2)                             ; no qop (RFC 2069)

    Strings are hashed as UTF-8 (RFC 3261 s22.4 carries them in UTF-8). Raises ValueError for an
    algorithm other than MD5/SHA-256 (and `-sess`), a qop other than auth, or missing nc/cnonce.
    """
    canonical = _canonical_algorithm(algorithm)
    if canonical not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha1 = _hash(canonical, f"{username}:{realm}:{password}")
    if canonical.endswith("-sess"):
        if cnonce is None:
            raise ValueError(f"{canonical} needs a cnonce")
        ha1 = _hash(canonical, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(canonical, f"{method}:{uri}")
    if qop is None:
        return _hash(canonical, f"{ha1}:{nonce}:{ha2}")
    if qop != "auth":
        # auth-int would hash the body, which this module never sees; we never offer it
        raise ValueError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise ValueError("qop=auth needs nc and cnonce")
    return _hash(canonical, f"{ha1}:{nonce}:{_format_nc(nc)}:{cnonce}:{qop}:{ha2}")


def _hash(algorithm: str, text: str) -> str:
    data = text.encode("utf-8")
    if algorithm.startswith("SHA-256"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.md5(data).hexdigest()


# -- server side ----------------------------------------------------------------------------------


class AuthOutcome(enum.Enum):
    """What `DigestServer.verify` decided, and the answer each outcome calls for.

    Malformed credentials are not an outcome: `verify` raises SipProtocolError(400) for them, and
    the boundary turns that into the 400 response like any other protocol error (STYLE.md 5).
    """

    OK = "ok"
    """Authenticated: serve the request."""
    MISSING = "missing"
    """No credentials we can use (none, another scheme, another realm): 401/407 + challenge."""
    BAD_NONCE = "bad_nonce"
    """Nonce not issued by us for this realm and algorithm (forged, other key, opaque changed):
    401/407 with a fresh challenge."""
    STALE = "stale"
    """Right password, but the nonce expired (RFC 2617 s3.2.1): challenge with stale=TRUE so the
    client retries without asking its user."""
    REPLAY = "replay"
    """qop=auth with an nc not above the highest seen for the nonce (RFC 2617 s3.2.2): refuse.
    A legitimate client whose requests were reordered recovers from a stale=TRUE challenge, and
    a replayer gains nothing from a nonce it cannot answer, so re-challenge with stale=TRUE."""
    WRONG_RESPONSE = "wrong_response"
    """The response does not match (wrong password, or method/uri changed): 403, or a fresh
    challenge to let the user try again (RFC 3261 s22.3)."""
    UNKNOWN_USER = "unknown_user"
    """No such username. Answer exactly as for WRONG_RESPONSE so callers cannot probe which
    usernames exist; the distinction is for logs and metrics."""


@dataclass(frozen=True, kw_only=True)
class AuthResult:
    """The verdict on one credentials header value."""

    outcome: AuthOutcome
    username: str | None = None
    algorithm: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the request is authenticated."""
        return self.outcome is AuthOutcome.OK

    @property
    def stale(self) -> bool:
        """True when the re-challenge should carry stale=TRUE (expired nonce or replayed nc)."""
        return self.outcome in (AuthOutcome.STALE, AuthOutcome.REPLAY)


class _NonceCounts:
    """Highest nc seen per nonce, for at most `capacity` nonces.

    Entries leave oldest-issued first: when the nonce expires, or when the map is full. The
    `floor` remembers the newest issue time ever dropped; a nonce issued at or before it that is
    not in the map may have been forgotten, so it is refused as stale rather than trusted with any
    nc. A legitimate client then fetches a fresh nonce; a replay is never accepted.
    """

    def __init__(self, capacity: int, lifetime: float) -> None:
        self._capacity = capacity
        self._lifetime = lifetime
        self._highest: dict[str, int] = {}
        self._by_issue: list[tuple[float, str]] = []  # heap, one entry per key of _highest
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._highest)

    def record(self, nonce: str, issued: float, nc: int, now: float) -> AuthOutcome:
        """OK and remember `nc` if it is above the highest seen for `nonce`; else why not."""
        while self._by_issue and now - self._by_issue[0][0] > self._lifetime:
            self._drop_oldest()
        highest = self._highest.get(nonce)
        if highest is None:
            if issued <= self._floor:
                return AuthOutcome.STALE
            self._highest[nonce] = nc
            heapq.heappush(self._by_issue, (issued, nonce))
            if len(self._highest) > self._capacity:
                self._drop_oldest()
            return AuthOutcome.OK
        if nc <= highest:
            return AuthOutcome.REPLAY
        self._highest[nonce] = nc
        return AuthOutcome.OK

    def _drop_oldest(self) -> None:
        issued, nonce = heapq.heappop(self._by_issue)
        del self._highest[nonce]
        self._floor = max(self._floor, issued)


class DigestServer:
    """Issues Digest challenges and verifies credentials, with stateless HMAC-signed nonces.

    `secret` (at least 16 bytes) keys the nonce MAC; every node that must accept the same nonces
    shares it. `nonce_lifetime` is how long, in seconds, a nonce stays good; `max_tracked_nonces`
    bounds the replay map. `random_bytes` is the salt source (`secrets.token_bytes`; tests pass
    a deterministic one).

    Replay protection applies to qop=auth credentials, whose nc must rise with every request on a
    nonce. Credentials without qop (RFC 2069 clients, RFC 2617 s3.2.2 allows them) have no counter
    and may reuse a nonce for its whole lifetime: refusing reuse would cost such clients a 401
    round trip on every request, and the exposure is bounded by the lifetime; the replay map is
    per process; a cluster behind one secret accepts a replay on another node.

    A wrong answer spends its nonce (issue 17): the next guess needs a new challenge, so a
    password is guessed one round trip at a time, which the server's per-source limits can see.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        max_tracked_nonces: int = DEFAULT_MAX_TRACKED_NONCES,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if len(secret) < _MIN_SECRET_LENGTH:
            raise ValueError(f"the nonce secret needs at least {_MIN_SECRET_LENGTH} bytes")
        if nonce_lifetime <= 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        self._secret = secret
        self._lifetime = nonce_lifetime
        self._random_bytes = random_bytes
        self._counts = _NonceCounts(max_tracked_nonces, nonce_lifetime)
        # Nonces a wrong answer used up: one guess per challenge, never 200 on one nonce.
        self._spent: OrderedDict[str, None] = OrderedDict()
        self._max_spent = max_tracked_nonces

    @property
    def tracked_nonces(self) -> int:
        """How many nonces the replay map holds now (at most `max_tracked_nonces`)."""
        return len(self._counts)

    def challenge(
        self,
        realm: str,
        now: float,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        stale: bool = False,
    ) -> list[str]:
        """One `WWW-Authenticate` / `Proxy-Authenticate` value per algorithm, in order.

        RFC 8760 s2.4: a UAS offers SHA-256 before MD5, and a UAC answers the first it supports.
        Each value has its own nonce, qop="auth" and the realm's opaque.
        """
        if not algorithms:
            raise ValueError("offer at least one algorithm")
        values = []
        for name in algorithms:
            algorithm = _ALGORITHMS.get(name.lower())
            if algorithm is None:
                raise ValueError(f"unsupported digest algorithm {name!r}")
            challenge = DigestChallenge(
                realm=realm,
                nonce=self._new_nonce(realm, algorithm, now),
                opaque=self._opaque(realm),
                algorithm=algorithm,
                qop=("auth",),
                stale=stale,
            )
            values.append(challenge.serialize())
        return values

    def verify(
        self,
        header_value: str | None,
        *,
        method: str,
        realm: str,
        lookup_password: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        """Check one `Authorization` / `Proxy-Authorization` value (None when absent).

        `method` is the request's method; `lookup_password` maps a username to its password, or
        None when there is no such user. The digest-uri is hashed as sent: matching it against the
        Request-URI (RFC 2617 s3.2.2.5) needs SIP URI comparison and is left to the caller.
        Raises SipProtocolError(400) when the value is malformed or misses a required parameter.
        """
        if header_value is None:
            return AuthResult(outcome=AuthOutcome.MISSING, detail="no credentials")
        if len(header_value) > MAX_AUTH_HEADER_LENGTH:
            raise _bad(f"authentication header longer than {MAX_AUTH_HEADER_LENGTH} characters")
        leading = _LEADING_SCHEME.match(header_value)
        if leading is not None and leading.group(1).lower() != "digest":
            # RFC 3261 s22.1: SIP uses Digest only (Basic is forbidden); challenge for it
            return AuthResult(
                outcome=AuthOutcome.MISSING,
                detail=f"scheme {leading.group(1)!r} is not supported",
            )
        credentials = DigestCredentials.parse(header_value)
        username = credentials.username
        algorithm = credentials.algorithm
        if credentials.realm != realm:
            # RFC 3261 s22.3: credentials for another realm (a proxy downstream) are not ours
            return AuthResult(
                outcome=AuthOutcome.MISSING,
                username=username,
                detail=f"credentials are for realm {credentials.realm!r}",
            )
        if credentials.qop not in (None, "auth"):
            raise _bad(f"qop {credentials.qop!r} was not offered")
        if algorithm not in SUPPORTED_ALGORITHMS:
            return AuthResult(
                outcome=AuthOutcome.BAD_NONCE,
                username=username,
                detail=f"algorithm {algorithm!r} was not offered",
            )
        issued = self._nonce_issued(credentials.nonce, realm, algorithm)
        if issued is None:
            return AuthResult(
                outcome=AuthOutcome.BAD_NONCE,
                username=username,
                algorithm=algorithm,
                detail="nonce was not issued by this server for this realm and algorithm",
            )
        if credentials.nonce in self._spent:
            return AuthResult(
                outcome=AuthOutcome.BAD_NONCE,
                username=username,
                algorithm=algorithm,
                detail="nonce spent by a wrong answer",
            )
        if credentials.opaque is not None and not hmac.compare_digest(
            credentials.opaque.encode("utf-8"), self._opaque(realm).encode("ascii")
        ):
            return AuthResult(
                outcome=AuthOutcome.BAD_NONCE,
                username=username,
                algorithm=algorithm,
                detail="opaque does not match",
            )
        password = lookup_password(username)
        # hash even for an unknown user, so the time taken does not tell which users exist
        expected = digest_response(
            algorithm=algorithm,
            username=username,
            realm=realm,
            password="" if password is None else password,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=credentials.qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
        )
        matches = hmac.compare_digest(
            expected.encode("ascii"), credentials.response.lower().encode("utf-8")
        )
        if password is None or not matches:
            self._spend(credentials.nonce)
        if password is None:
            return AuthResult(
                outcome=AuthOutcome.UNKNOWN_USER,
                username=username,
                algorithm=algorithm,
                detail="no such user",
            )
        if not matches:
            return AuthResult(
                outcome=AuthOutcome.WRONG_RESPONSE,
                username=username,
                algorithm=algorithm,
                detail="response does not match",
            )
        # Expiry is judged only after the response matched: stale=TRUE tells the client its
        # password was right (RFC 2617 s3.2.1). A nonce from the future means the clock stepped
        # back; treat it as expired too so the client gets a fresh one.
        if abs(now - issued) > self._lifetime:
            return AuthResult(
                outcome=AuthOutcome.STALE,
                username=username,
                algorithm=algorithm,
                detail="nonce expired",
            )
        if credentials.nc is not None and credentials.qop is not None:
            outcome = self._counts.record(credentials.nonce, issued, credentials.nc, now)
            if outcome is not AuthOutcome.OK:
                return AuthResult(
                    outcome=outcome,
                    username=username,
                    algorithm=algorithm,
                    detail="nc not above the highest seen for this nonce"
                    if outcome is AuthOutcome.REPLAY
                    else "nonce no longer tracked for replays",
                )
        return AuthResult(outcome=AuthOutcome.OK, username=username, algorithm=algorithm)

    def _spend(self, nonce: str) -> None:
        self._spent[nonce] = None
        while len(self._spent) > self._max_spent:
            self._spent.popitem(last=False)

    def _mac(self, body: bytes, realm: str, algorithm: str) -> bytes:
        realm_bytes = realm.encode("utf-8")
        message = b"".join(
            (
                b"sipbridge digest nonce\x00",
                body,
                struct.pack(">I", len(realm_bytes)),
                realm_bytes,
                algorithm.encode("ascii"),
            )
        )
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_LENGTH]

    def _new_nonce(self, realm: str, algorithm: str, now: float) -> str:
        salt = self._random_bytes(_SALT_LENGTH)
        if len(salt) != _SALT_LENGTH:
            raise ValueError(f"random_bytes must return {_SALT_LENGTH} bytes")
        body = struct.pack(">q", round(now * 1000)) + salt
        raw = body + self._mac(body, realm, algorithm)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _nonce_issued(self, nonce: str, realm: str, algorithm: str) -> float | None:
        """When we issued `nonce` (seconds), or None if it is not ours for realm and algorithm."""
        if not _NONCE_SHAPE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=")
        # one spelling per nonce: the decoder ignores the last character's spare bits
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return None
        body = raw[: 8 + _SALT_LENGTH]
        if not hmac.compare_digest(raw[8 + _SALT_LENGTH :], self._mac(body, realm, algorithm)):
            return None
        (issued_ms,) = struct.unpack(">q", body[:8])
        return float(issued_ms) / 1000

    def _opaque(self, realm: str) -> str:
        # RFC 2617 s3.2.1: opaque comes back unchanged. Our nonces already authenticate
        # themselves, so it is a per-realm constant that only catches tampering clients.
        mac = hmac.new(
            self._secret, b"sipbridge digest opaque\x00" + realm.encode("utf-8"), "sha256"
        )
        return base64.urlsafe_b64encode(mac.digest()[:12]).decode("ascii")


# -- client side ----------------------------------------------------------------------------------


def _unanswerable(challenge: DigestChallenge) -> str | None:
    """Why we cannot answer `challenge`, or None when we can."""
    if challenge.algorithm not in SUPPORTED_ALGORITHMS:
        return f"algorithm {challenge.algorithm!r} is not supported"
    if challenge.qop and "auth" not in challenge.qop:
        return f"none of the offered qop values {challenge.qop!r} is supported"
    if not challenge.qop and challenge.algorithm.endswith("-sess"):
        return f"{challenge.algorithm} without qop has no cnonce to hash"
    return None


def _credentials_for(
    challenge: DigestChallenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str,
    nc: int,
) -> DigestCredentials:
    reason = _unanswerable(challenge)
    if reason is not None:
        raise SipProtocolError(401, "Unauthorized", reason)
    # RFC 2617 s3.2.2: answer with qop=auth when offered; RFC 2069 style when no qop is offered
    qop = "auth" if challenge.qop else None
    response = digest_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc if qop else None,
        cnonce=cnonce if qop else None,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce if qop else None,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc if qop else None,
    )


def answer_challenge(
    challenge_value: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str,
    nc: int = 1,
) -> str:
    """The `Authorization` / `Proxy-Authorization` value answering one challenge value.

    Uses qop=auth when the challenge offers it (with `nc` and `cnonce`), no qop when it offers
    none; echoes opaque and algorithm. Raises SipProtocolError(400) for a malformed challenge and
    SipProtocolError(401) for one we cannot answer (unknown algorithm, only auth-int offered):
    the request then stays unauthorised.
    """
    challenge = DigestChallenge.parse(challenge_value)
    return _credentials_for(
        challenge, method, uri, username, password, cnonce=cnonce, nc=nc
    ).serialize()


def _default_cnonce() -> str:
    return secrets.token_hex(8)


class DigestClient:
    """Answers Digest challenges for one username and password, counting nc per nonce.

    `answer` picks the strongest challenge it supports from a 401/407 (SHA-256 before MD5, RFC
    8760 s2.4) and remembers it; `authorization` answers it again for a later request (RFC 2617
    s3.3 nonce reuse), so a REGISTER refresh or an in-dialog request needs no new 401. nc starts
    at 00000001 for each new nonce and rises by one per request; every request gets a new cnonce
    from `new_cnonce`. One realm at a time: the latest challenge replaces the previous one.
    """

    def __init__(
        self, username: str, password: str, *, new_cnonce: Callable[[], str] = _default_cnonce
    ) -> None:
        self._username = username
        self._password = password
        self._new_cnonce = new_cnonce
        self._challenge: DigestChallenge | None = None
        self._nc = 0

    @property
    def challenge(self) -> DigestChallenge | None:
        """The challenge being answered, or None before the first `answer`."""
        return self._challenge

    def answer(self, challenge_values: Sequence[str], method: str, uri: str) -> str:
        """The credentials value answering the best of `challenge_values` for this request.

        Values with another scheme, malformed ones and ones we cannot answer are skipped; when
        none is left this raises SipProtocolError(401), and the request stays unauthorised.
        """
        best: DigestChallenge | None = None
        for value in challenge_values:
            try:
                challenge = DigestChallenge.parse(value)
            except SipProtocolError:
                continue
            if _unanswerable(challenge) is not None:
                continue
            if best is None or ALGORITHM_PREFERENCE.index(
                challenge.algorithm
            ) < ALGORITHM_PREFERENCE.index(best.algorithm):
                best = challenge
        if best is None:
            raise SipProtocolError(401, "Unauthorized", "no Digest challenge we can answer")
        if self._challenge is None or self._challenge.nonce != best.nonce:
            self._nc = 0
        self._challenge = best
        return self._authorize(best, method, uri)

    def authorization(self, method: str, uri: str) -> str | None:
        """Credentials for another request on the remembered challenge, or None if none yet."""
        if self._challenge is None:
            return None
        return self._authorize(self._challenge, method, uri)

    def _authorize(self, challenge: DigestChallenge, method: str, uri: str) -> str:
        self._nc += 1
        return _credentials_for(
            challenge,
            method,
            uri,
            self._username,
            self._password,
            cnonce=self._new_cnonce(),
            nc=self._nc,
        ).serialize()
