"""Structured SIP header values: name-addr/addr-spec, Via, CSeq, generic parameters.

RFC 3261 s25.1:

    name-addr      = [ display-name ] LAQUOT addr-spec RAQUOT
    addr-spec      = SIP-URI / SIPS-URI / absoluteURI
    display-name   = *(token LWS)/ quoted-string
    from-spec      = ( name-addr / addr-spec ) *( SEMI from-param )
    via-parm       = sent-protocol LWS sent-by *( SEMI via-params )
    sent-protocol  = protocol-name SLASH protocol-version SLASH transport
    sent-by        = host [ COLON port ]
    CSeq           = "CSeq" HCOLON 1*DIGIT LWS Method
    generic-param  = token [ EQUAL gen-value ];  gen-value = token / host / quoted-string

With an addr-spec (no angle brackets) the parameters after the URI belong to the header, not
to the URI (s20.10): `From: sip:alice@example.com;tag=1` has a `tag` header parameter.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.uri import Uri, parse_uri

TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
MAGIC_COOKIE: Final = "z9hG4bK"  # RFC 3261 s8.1.1.7


def _bad(detail: str) -> SipProtocolError:
    return SipProtocolError(400, "Bad Request", detail)


Params = tuple[tuple[str, str | None], ...]
# What `_csipmsg.name_addr` and `plain_via` return, typed: compiled, such a tuple is unpacked
# by index, where an untyped one is iterated (issue 18).
_CutAddress = tuple[str | None, str, Params]
_CutVia = tuple[str, str, int | None, Params, str | None, str | None]


def param_value(params: Params, name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def unquote(value: str) -> str:
    """A quoted-string's content with `\\x` escapes resolved (RFC 3261 s25.1 quoted-pair)."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    out = []
    chars = iter(value[1:-1])
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else ch)
    return "".join(out)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(text: str, separator: str, *, angles: bool) -> list[str]:
    """`text` cut at `separator`, except inside quoted strings (and `<...>` when `angles`);
    each part stripped, empty parts kept for the caller to judge."""
    if '"' not in text:  # the common cases need no scanning
        if separator not in text:  # one part (a Contact `<sip:...>`, a single Via)
            return [text.strip()]
        if not (angles and "<" in text):
            return [part.strip() for part in text.split(separator)]
    parts = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angles and ch == "<":
            depth += 1
        elif angles and ch == ">":
            depth = max(0, depth - 1)
        elif ch == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise _bad("unterminated quoted string")
    parts.append(text[start:].strip())
    return parts


def split_list(value: str) -> Iterator[str]:
    """Items of a comma-separated header value, ignoring commas in quotes and `<...>`."""
    return (item for item in _split(value, ",", angles=True) if item)


# Parameter names seen that match the token grammar (bounded: the first 256 distinct ones).
_PARAM_NAMES: set[str] = set()


def parse_params(text: str) -> Params:
    """`;name=value;flag` (leading `;` optional); values may be quoted strings. An empty
    parameter (`;;`, RFC 4475 s3.1.2.1 badinv01) is malformed."""
    params: list[tuple[str, str | None]] = []
    text = text.strip()
    if text.startswith(";"):
        text = text[1:]
    if not text:
        return ()
    if '"' not in text and " " not in text and text.isprintable():
        # the common case: no quoted values, no whitespace to strip (`;branch=z9hG4bK..;rport`;
        # every whitespace character but the space is unprintable)
        items = text.split(";")
        if "" in items:
            raise _bad("empty parameter")
        for item in items:
            name, eq, value = item.partition("=")
            if name not in _PARAM_NAMES:
                if not TOKEN.fullmatch(name):
                    raise _bad(f"malformed parameter {item[:40]!r}")
                if len(_PARAM_NAMES) < 256:
                    _PARAM_NAMES.add(name)
            if eq and not value:
                raise _bad(f"parameter {name!r} has an empty value")
            params.append((name, value if eq else None))
        return tuple(params)
    for item in _split_semicolons(text):
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not TOKEN.fullmatch(name):
            raise _bad(f"malformed parameter {item[:40]!r}")
        if eq and not value:
            raise _bad(f"parameter {name!r} has an empty value")
        params.append((name, value if eq else None))
    return tuple(params)


def _split_semicolons(text: str) -> list[str]:
    parts = _split(text, ";", angles=False)
    if not all(parts):
        raise _bad("empty parameter")
    return parts


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


# Address and Via write their own `__init__` (dataclass `init=False`): mypyc compiles it, where
# the generated one stays interpreted (half the cost of each, compiled; issue 18). Frozen, so
# each field is set through `object.__setattr__`, called as such (mypyc calls it directly).


@dataclass(frozen=True, slots=True, init=False)
class Address:
    """From, To, Contact, Route, Record-Route, Refer-To, P-Asserted-Identity values."""

    uri: Uri
    display_name: str | None  # unquoted
    params: Params
    wildcard: bool  # `Contact: *`
    # the `tag` parameter, found once: dialogs and transactions ask for it many times a message
    tag: str | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        uri: Uri,
        display_name: str | None = None,
        params: Params = (),
        wildcard: bool = False,
    ) -> None:
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "display_name", display_name)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "wildcard", wildcard)
        object.__setattr__(self, "tag", param_value(params, "tag") if params else None)

    def with_tag(self, tag: str) -> Address:
        params = tuple((k, v) for k, v in self.params if k.lower() != "tag")
        return Address(
            uri=self.uri,
            display_name=self.display_name,
            params=(*params, ("tag", tag)),
            wildcard=self.wildcard,
        )

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        name = ""
        if self.display_name is not None:
            dn = self.display_name
            plain = (
                dn and dn == dn.strip() and "  " not in dn and TOKEN.fullmatch(dn.replace(" ", ""))
            )
            name = (dn if plain else quote(dn)) + " "
        return f"{name}<{self.uri}>{format_params(self.params)}"


def _c_cut(name: str) -> Any:
    """The function `name` of `_csipmsg`; None without the extension (not built: no compiler,
    or a source checkout) or with SIPBRIDGE_NO_CSIPMSG=1, as for the message heads (message.py).
    (By name: compiled, a `from` import reads the package's attribute, see message.py.)"""
    if os.environ.get("SIPBRIDGE_NO_CSIPMSG", "") not in ("", "0"):
        return None
    try:
        module = importlib.import_module("sipbridge.sip._csipmsg")
    except ImportError:
        return None
    return getattr(module, name)


# The C cuts of a common address and a plain Via (`_csipmsg.name_addr`, `plain_via`), or None.
# Final, assigned once: compiled, each read on every message is a C static's, not a search of
# the module's dictionary (issue 18).
_cname_addr: Final[Any] = _c_cut("name_addr")
_cvia: Final[Any] = _c_cut("plain_via")


# Addresses and CSeqs parsed, by their text (bounded: cleared when full). Plain dictionaries
# rather than `lru_cache`: compiled, a lookup here is a native one, a cached function's call a
# generic one (the From and To of every message; issue 18). Final, as the module's other constants
# read on every message: compiled, a C static read, not a search of the module's dictionary.
_ADDRESSES: Final[dict[str, Address]] = {}
_CSEQS: Final[dict[str, CSeq]] = {}
_MAX_CACHED: Final = 4096


def parse_address(value: str) -> Address:
    address = _ADDRESSES.get(value)
    if address is None:
        address = _parse_address(value)
        if len(_ADDRESSES) >= _MAX_CACHED:
            _ADDRESSES.clear()
        _ADDRESSES[value] = address
    return address


def tagged_address(value: str, address: Address, tag: str) -> Address:
    """`address` (parsed from `value`, a header value as parsed: stripped) with a `tag`
    parameter added, as `address.with_tag(tag)` makes it; when `value` is a plain name-addr
    without parameters (`Name <uri>`), that Address is also what `parse_address` gives for the
    text our responses echo it as, `value;tag=...` (`make_response`), and is kept for it: the
    ACK and BYE that repeat it find it parsed (issue 18)."""
    if address.params or address.wildcard:
        return address.with_tag(tag)
    # (made directly: no parameters to filter)
    tagged = Address(uri=address.uri, display_name=address.display_name, params=(("tag", tag),))
    if value.endswith(">") and "<" in value:
        if len(_ADDRESSES) >= _MAX_CACHED:
            _ADDRESSES.clear()
        _ADDRESSES[f"{value};tag={tag}"] = tagged
    return tagged


def _parse_address(value: str) -> Address:
    """A name-addr or addr-spec: the common name-addr cut in C where built
    (`_csipmsg.name_addr`: the display name, the URI's text and the parameters, as
    `_parse_address_python` cuts them; None for anything it leaves to that function)."""
    if _cname_addr is not None:
        parts = _cname_addr(value)
        if parts is not None:
            display, uri_text, params = cast(_CutAddress, parts)
            return Address(uri=parse_uri(uri_text), display_name=display, params=params)
    return _parse_address_python(value)


def _parse_address_python(value: str) -> Address:
    """`_parse_address` in Python alone: what the C cut leaves, and its tests."""
    text = value.strip()
    if text == "*":
        return Address(uri=Uri(scheme="sip"), wildcard=True)
    display: str | None = None
    if text.startswith('"'):
        end = _closing_quote(text)
        display = unquote(text[: end + 1])
        text = text[end + 1 :].lstrip()
        if not text.startswith("<"):
            raise _bad("display name without <URI>")
    lt = text.find("<")
    if lt >= 0:
        if display is None:
            name = text[:lt].strip()
            if name and not all(TOKEN.fullmatch(w) for w in name.split()):
                raise _bad(f"malformed display name {name[:40]!r}")
            display = name or None
        gt = text.find(">", lt)
        if gt < 0:
            raise _bad("unterminated <URI>")
        uri = parse_uri(text[lt + 1 : gt].strip())
        rest = text[gt + 1 :].strip()
        if rest and not rest.startswith(";"):
            raise _bad(f"garbage after <URI>: {rest[:40]!r}")
        return Address(uri=uri, display_name=display, params=parse_params(rest))
    # addr-spec: the URI ends at the first ";" (its parameters belong to the header, s20.10)
    uri_text, _, rest = text.partition(";")
    if not uri_text or " " in uri_text.strip():
        raise _bad(f"malformed address {value[:80]!r}")
    return Address(uri=parse_uri(uri_text.strip()), params=parse_params(rest))


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise _bad("unterminated quoted display name")


@dataclass(frozen=True, slots=True, init=False)
class Via:
    transport: str  # upper case: UDP, TCP, TLS, WS, WSS, SCTP
    host: str
    port: int | None
    params: Params
    protocol: str
    # the `branch` parameter, found once: transaction matching asks for it on every message
    branch: str | None = field(init=False, repr=False, compare=False)
    # `rport` (RFC 3581), found in the same pass: None: absent; "": requested; digits: filled
    # in by the server
    rport: str | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
        protocol: str = "SIP/2.0",
        found: bool = False,
        branch: str | None = None,
        rport: str | None = None,
    ) -> None:
        """`found`: `branch` and `rport` are those of `params` (`_csipmsg.plain_via` finds
        them as it cuts the parameters), not to be looked for again."""
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "protocol", protocol)
        if not found:
            branch = rport = None
            for key, value in params:  # the first of each, as `param_value` finds
                lkey = key.lower()
                if lkey == "branch":
                    if branch is None:
                        branch = "" if value is None else value
                elif lkey == "rport" and rport is None:
                    rport = "" if value is None else value
        object.__setattr__(self, "branch", branch)
        object.__setattr__(self, "rport", rport)

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received")

    @property
    def is_rfc3261(self) -> bool:
        branch = self.branch or ""
        # A bare cookie is no branch at all (RFC 4475 s3.3.2 badbranch): RFC 2543 matching.
        return branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host.lower(), self.port)

    def with_params(self, **values: str | None) -> Via:
        """Set or add parameters (`rport`/`received` for RFC 3581)."""
        names = {k.lower() for k in values}
        params = [(k, v) for k, v in self.params if k.lower() not in names]
        return Via(
            transport=self.transport,
            host=self.host,
            port=self.port,
            params=(*params, *values.items()),
            protocol=self.protocol,
        )

    def __str__(self) -> str:
        host = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {host}{format_params(self.params)}"


_VIA = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([0-9.]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]{1,5}))?\s*(;.*)?"
)


def parse_via(value: str) -> Via:
    # Not cached: every request's top Via differs (its branch), and a message parses its own
    # once (`Message.top_via`); a cache would only keep thousands of Vias for no hit.
    plain = _parse_plain_via(value)
    if plain is not None:
        return plain
    return _parse_via_pattern(value)


def _host_chars(text: str) -> bool:
    """Whether `text` is made of what a host name or IPv4 address of a plain Via is made of
    (`_VIA`'s host alternative: ASCII letters, digits, '-', '.'). Compiled, a loop over the
    code points is native; `frozenset.issuperset` of a text made a set of it first."""
    for i in range(len(text)):
        c = ord(text[i])
        if not (97 <= c <= 122 or 48 <= c <= 57 or 65 <= c <= 90 or c in (45, 46)):
            return False
    return True


def _ascii_digits(text: str) -> bool:
    """Whether `text` is made of ASCII digits alone (`isdigit` takes others too)."""
    return all(48 <= ord(text[i]) <= 57 for i in range(len(text)))


# The transports of a plain Via (RFC 3261 s20.42, RFC 7118); others take the pattern.
_PLAIN_TRANSPORTS = frozenset(
    name for known in ("UDP", "TCP", "TLS", "SCTP", "WS", "WSS") for name in (known, known.lower())
)


def _parse_plain_via(value: str) -> Via | None:
    """The Via almost every peer sends, `SIP/2.0/UDP host:port;params` with no whitespace
    beyond the one space, an alphanumeric transport and no IPv6 reference: cut in C where
    built (`_csipmsg.plain_via`, its fields as `_parse_plain_via_python` makes them, or None
    for anything it leaves to that), else with string methods (the pattern's match and groups
    were a tenth of the bare UAS's parse, issue 18); None for anything else, which
    `_parse_via_pattern` parses or refuses. All give the same Via for what they accept
    (tests/sip/test_headers.py, tests/sip/test_message_c.py check it)."""
    if _cvia is not None:
        parts = _cvia(value)
        if parts is not None:
            transport, host, port, params, branch, rport = cast(_CutVia, parts)
            return Via(
                protocol="SIP/2.0",
                transport=transport,
                host=host,
                port=port,
                params=params,
                found=True,
                branch=branch,
                rport=rport,
            )
    return _parse_plain_via_python(value)


def _parse_plain_via_python(value: str) -> Via | None:
    """`_parse_plain_via` in Python alone: what the C cut leaves, and its tests."""
    if not value.startswith("SIP/2.0/") or "\n" in value:
        return None
    space = value.find(" ", 8)
    if space < 0:
        return None
    transport = value[8:space]
    if transport not in _PLAIN_TRANSPORTS:
        return None
    semi = value.find(";", space)
    sent_by = value[space + 1 :] if semi < 0 else value[space + 1 : semi]
    host, colon, port = sent_by.partition(":")
    if not host or not _host_chars(host):
        return None
    port_number: int | None = None
    if colon:
        if not (0 < len(port) <= 5 and _ascii_digits(port)):
            return None
        port_number = int(port)
        if not 0 < port_number < 65536:
            raise _bad("Via port out of range")
    return Via(
        protocol="SIP/2.0",
        transport=transport.upper(),
        host=host,
        port=port_number,
        params=parse_params(value[semi:]) if semi >= 0 else (),
    )


def _parse_via_pattern(value: str) -> Via:
    m = _VIA.fullmatch(value)
    if m is None:
        raise _bad(f"malformed Via {value[:80]!r}")
    name, version, transport, host, port, params = m.groups()
    port_number = int(port) if port else None
    if port_number is not None and not 0 < port_number < 65536:
        raise _bad("Via port out of range")
    return Via(
        protocol=f"{name.upper()}/{version}",
        transport=transport.upper(),
        host=host,
        port=port_number,
        params=parse_params(params or ""),
    )


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_CSEQ: Final = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\s*")


def parse_cseq(value: str) -> CSeq:
    cseq = _CSEQS.get(value)
    if cseq is None:
        m = _CSEQ.fullmatch(value)
        if m is None or int(m.group(1)) >= 2**31:  # RFC 3261 s8.1.1.5: less than 2**31
            raise _bad(f"malformed CSeq {value[:40]!r}")
        cseq = CSeq(int(m.group(1)), m.group(2))
        if len(_CSEQS) >= _MAX_CACHED:
            _CSEQS.clear()
        _CSEQS[value] = cseq
    return cseq


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """RFC 4028 s4: `Session-Expires: delta-seconds [;refresher=uac|uas]`."""

    seconds: int
    refresher: str | None = None  # "uac", "uas" or None (not said)

    def __str__(self) -> str:
        suffix = f";refresher={self.refresher}" if self.refresher else ""
        return f"{self.seconds}{suffix}"


# Session-Expires = delta-seconds *(SEMI se-params); se-params = refresher-param / generic-param
_SESSION_EXPIRES = re.compile(r"\s*([0-9]{1,10})\s*((?:;.*)?)", re.DOTALL)


def parse_session_expires(value: str) -> SessionExpires:
    """`Session-Expires` (or a `Min-SE`, which has no refresher) - 400 when malformed."""
    m = _SESSION_EXPIRES.fullmatch(value)
    if m is None:
        raise _bad(f"malformed Session-Expires {value[:40]!r}")
    refresher = param_value(parse_params(m.group(2)), "refresher") if m.group(2) else None
    if refresher is not None:
        refresher = refresher.lower()
        if refresher not in ("uac", "uas"):
            raise _bad(f"refresher must be uac or uas, not {refresher[:10]!r}")
    return SessionExpires(min(int(m.group(1)), 2**31 - 1), refresher)
