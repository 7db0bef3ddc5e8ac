"""SIP, SIPS and tel URIs (RFC 3261 s19.1, s25.1; RFC 3966).

    SIP-URI        = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    SIPS-URI       = "sips:" [ userinfo ] hostport uri-parameters [ headers ]
    userinfo       = ( user / telephone-subscriber ) [ ":" password ] "@"
    hostport       = host [ ":" port ]
    host           = hostname / IPv4address / IPv6reference
    uri-parameters = *( ";" uri-parameter )
    headers        = "?" header *( "&" header )
    telephone-uri  = "tel:" telephone-subscriber *( ";" par )          (RFC 3966 s3)

Escaped characters are kept as received so that a parsed URI serialises to the same text;
`user_unescaped` gives the decoded user part. Other absolute URIs (`http:`, `urn:`) parse with
their scheme and opaque text so a server can answer 416 Unsupported URI Scheme.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import unquote

from sipbridge.sip.errors import SipProtocolError

MAX_URI_LENGTH = 2048

# hostname = *( domainlabel "." ) toplabel [ "." ]; IPv4address; IPv6reference = "[" IPv6 "]"
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# user = 1*( unreserved / escaped / user-unreserved ); password likewise
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/#]*")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*")
_URI_DELIMITERS = re.compile(r"[ \t\r\n<>\"]")
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()pw]+")


def _bad(detail: str) -> SipProtocolError:
    return SipProtocolError(400, "Bad Request", detail)


# Uri writes its own `__init__` (dataclass `init=False`), as Address and Via do (headers.py):
# mypyc compiles it, where the generated one stays interpreted - 12.9k instructions a URI made,
# by callgrind, one a call for the From of bench/inbound.py's INVITE (issue 18). Frozen, so each
# field is set through `object.__setattr__`, called as such (mypyc calls it directly).


@dataclass(frozen=True, slots=True, init=False)
class Uri:
    """A parsed URI. For `tel:` the number is `user` and `host` is empty."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str], ...]
    opaque: str  # absolute URIs of other schemes

    def __init__(
        self,
        *,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: tuple[tuple[str, str | None], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        opaque: str = "",
    ) -> None:
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "opaque", opaque)

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def user_unescaped(self) -> str:
        return unquote(self.user or "")

    def param(self, name: str) -> str | None:
        """A parameter's value ("" for a flag such as `;lr`), None when absent."""
        lname = name.lower()
        for key, value in self.params:
            if key.lower() == lname:
                return "" if value is None else value
        return None

    def has_param(self, name: str) -> bool:
        return self.param(name) is not None

    @property
    def transport(self) -> str:
        """The `transport` parameter, lowercased; `tls` implied by `sips:`."""
        value = (self.param("transport") or "").lower()
        if not value and self.scheme == "sips":
            return "tls"
        return value or "udp"

    def with_params(self, **values: str | None) -> Uri:
        params = [(k, v) for k, v in self.params if k.lower() not in values]
        params += [(k, v) for k, v in values.items()]
        return replace(self, params=tuple(params))

    def without_headers(self) -> Uri:
        return replace(self, headers=())

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if not self.is_sip and self.scheme != "tel":
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.scheme == "tel":
            out.append(self.user or "")
        else:
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out += [":", self.password]
                out.append("@")
            out.append(self.host_port)
        for key, value in self.params:
            out += [";", key] if value is None else [";", key, "=", value]
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def matches(self, other: Uri) -> bool:
        """URI comparison (RFC 3261 s19.1.4), enough for dialog and request matching:
        scheme, user and password case-sensitive, host case-insensitive, ports and the
        transport/user/ttl/method/maddr parameters equal when present in either."""
        if self.scheme != other.scheme or self.user_unescaped != other.user_unescaped:
            return False
        if self.password != other.password or self.host.lower() != other.host.lower():
            return False
        if self.port != other.port:
            return False
        # Parameters in both must agree; the special ones must agree even if in one only.
        mine = {k.lower(): (v or "").lower() for k, v in self.params}
        theirs = {k.lower(): (v or "").lower() for k, v in other.params}
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        for name in ("transport", "user", "ttl", "method", "maddr"):
            if (name in mine) != (name in theirs):
                return False
        # Header components: all present in both and equal (s19.1.4).
        return {(k.lower(), unquote(v)) for k, v in self.headers} == {
            (k.lower(), unquote(v)) for k, v in other.headers
        }


# URIs parsed, by their text (bounded: cleared when full). A plain dictionary rather than
# `lru_cache`: compiled, a lookup here is a native one, a cached function's call a generic one
# (every request's URI; issue 18).
_URIS: Final[dict[str, Uri]] = {}
_MAX_URIS: Final = 4096


def parse_uri(text: str) -> Uri:
    """Parse a URI; raise `SipProtocolError(400)` on anything malformed."""
    uri = _URIS.get(text)
    if uri is None:
        uri = _parse_uri(text)
        if len(_URIS) >= _MAX_URIS:
            _URIS.clear()
        _URIS[text] = uri
    return uri


def _parse_uri(text: str) -> Uri:
    if len(text) > MAX_URI_LENGTH:
        raise _bad("URI too long")
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise _bad(f"malformed URI {text[:80]!r}")
    scheme = scheme.lower()
    if _URI_DELIMITERS.search(text) and scheme in ("sip", "sips", "tel"):
        raise _bad(f"URI contains whitespace or delimiters: {text[:80]!r}")
    if scheme == "tel":
        return _parse_tel(rest)
    if scheme not in ("sip", "sips"):
        if not rest or _URI_DELIMITERS.search(rest):
            raise _bad(f"malformed URI {text[:80]!r}")
        return Uri(scheme=scheme, opaque=rest)

    # The last "@" ends the userinfo: user-unreserved allows ";" and "?", while parameters and
    # URI headers cannot contain an unescaped "@".
    at = rest.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not _USER.fullmatch(user) or (password is not None and not _USER.fullmatch(password)):
            raise _bad("invalid characters in URI user part")
    rest, _, header_text = rest.partition("?")
    hostport, *param_texts = rest.split(";")
    host, port = _parse_hostport(hostport)
    return Uri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_parse_params(param_texts),
        headers=_parse_uri_headers(header_text),
    )


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _bad("garbage after IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    if not host or not _HOST.fullmatch(host):
        raise _bad(f"invalid host {host[:80]!r}")
    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise _bad(f"invalid port {port_text[:10]!r}")
        port = int(port_text)
    return host, port


def _parse_params(texts: list[str]) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for item in texts:
        name, eq, value = item.partition("=")
        if not name or not _PARAM_CHARS.fullmatch(name) or not _PARAM_CHARS.fullmatch(value):
            raise _bad(f"malformed URI parameter {item[:40]!r}")
        params.append((name, value if eq else None))
    return tuple(params)


def _parse_uri_headers(text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise _bad(f"malformed URI header {item[:40]!r}")
        out.append((name, value))
    return tuple(out)


def _parse_tel(rest: str) -> Uri:
    number, *param_texts = rest.split(";")
    # telephone-subscriber: global ("+" digits with visual separators) or local number
    if not number or not _TEL_NUMBER.fullmatch(number):
        raise _bad(f"malformed tel URI number {number[:40]!r}")
    return Uri(scheme="tel", user=number, params=_parse_params(param_texts))
