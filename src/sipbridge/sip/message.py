"""SIP messages: parsing and serialisation (RFC 3261 s7, s18.3, s25).

    SIP-message    = Request / Response
    Request        = Request-Line *( message-header ) CRLF [ message-body ]
    Request-Line   = Method SP Request-URI SP SIP-Version CRLF
    Status-Line    = SIP-Version SP Status-Code SP Reason-Phrase CRLF
    message-header = header-name HCOLON header-value CRLF   (LWS may fold a value: s7.3.1)

Header names are stored in their canonical form (compact forms expanded, s7.3.3); values are
kept as received, unfolded. Helpers parse the structured headers on demand. Limits bound every
dimension an attacker controls: line length, header count, message and body size.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import (
    Address,
    CSeq,
    Via,
    parse_address,
    parse_cseq,
    parse_via,
    split_list,
)
from sipbridge.sip.uri import Uri, parse_uri

SIP_VERSION: Final = "SIP/2.0"
MAX_LINE = 8 * 1024
MAX_HEADERS = 128
MAX_MESSAGE = 64 * 1024
MAX_BODY = 32 * 1024

# RFC 3261 s7.3.3 and the registries of later RFCs (3515 r, 3903 o/u, 3892 b, 4028 x, 3841 j...)
COMPACT_FORMS = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in [
        *COMPACT_FORMS.values(),
        "CSeq",
        "Max-Forwards",
        "Record-Route",
        "Route",
        "Allow",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Authorization",
        "Proxy-Authorization",
        "User-Agent",
        "Server",
        "Expires",
        "Min-Expires",
        "Retry-After",
        "Timestamp",
        "Warning",
        "Min-SE",
        "RSeq",
        "RAck",
        "Reason",
        "Date",
        "MIME-Version",
        "Organization",
        "Priority",
        "Reply-To",
        "In-Reply-To",
        "Alert-Info",
        "Call-Info",
        "Error-Info",
        "Content-Disposition",
        "Content-Language",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Privacy",
        "Diversion",
        "Path",
        "Subscription-State",
    ]
}
# Headers whose value is a comma-separated list that may also come as repeated lines (s7.3.1).
LIST_HEADERS = frozenset(
    {
        "Via",
        "Route",
        "Record-Route",
        "Contact",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Allow-Events",
        "Path",
        "Content-Encoding",
    }
)
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_STATUS = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ([^\r\n]*)")
REASONS: Final = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


# The keys of the known headers, interned: an index's key is then the very str the accessors
# look up (compiled, their literals are interned), found by identity instead of compared
# character by character, some 130 lookups a call (issue 18). Only these: a name a peer
# invents is not interned.
_INTERNED_KEYS: Final = {key: sys.intern(key) for key in _CANONICAL}

# Status codes as text, made once (an int written out in decimal each response, otherwise)
_STATUS_TEXT: Final = {status: str(status) for status in range(100, 700)}

# Header names -> their canonical form (bounded; a dictionary for the reason `_KEYS` is one)
_CANONICAL_NAMES: Final[dict[str, str]] = {}


def canonical_name(name: str) -> str:
    canonical = _CANONICAL_NAMES.get(name)
    if canonical is None:
        canonical = _canonical_name(name)
        if len(_CANONICAL_NAMES) >= 1024:
            _CANONICAL_NAMES.clear()
        _CANONICAL_NAMES[name] = canonical
    return canonical


def _canonical_name(name: str) -> str:
    lname = name.lower()
    if lname in COMPACT_FORMS:
        return COMPACT_FORMS[lname]
    known = _CANONICAL.get(lname)
    if known is not None:
        return known
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _bad(detail: str) -> SipProtocolError:
    return SipProtocolError(400, "Bad Request", detail)


# Header names asked for -> their keys (bounded). A plain dictionary rather than `lru_cache`:
# compiled, a lookup here is a native call, a cached function's a generic one, and headers are
# looked up by name many times a message (issue 18).
_KEYS: Final[dict[str, str]] = {}


def header_key(name: str) -> str:
    """The case-insensitive identity of a header name (RFC 3261 s7.3.5), compact forms expanded."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical_name(name).lower()
        key = _INTERNED_KEYS.get(key, key)
        if len(_KEYS) >= 1024:
            _KEYS.clear()
        _KEYS[name] = key
    return key


_LIST_KEYS = frozenset(name.lower() for name in LIST_HEADERS)


# The classes below write their own `__init__` (dataclass `init=False`): mypyc compiles a
# hand-written one, while a generated one stays interpreted (bench/sip_profile.py, issue 18).


@dataclass(slots=True, init=False)
class Headers:
    """Ordered header lines, (name, value); repeated names allowed. Known names are stored in
    their canonical form, others as received; lookups ignore case.

    The first lookup indexes the lines by name in one pass, and the accessors of `Message`
    keep what they parsed (the core headers' in fields of their own, the others' in `memo`): a
    message's core headers are read many times on their way through the stack and parsed once.
    The methods below keep them all up to date; code that edits `items` in place calls
    `changed()` afterwards.

    `wire`, when set, is (n, text): the first n items as they serialise, made once for several
    messages (`EchoedHeaders`); only appending keeps it, any other edit forgets it.
    """

    items: list[tuple[str, str]]
    # header key -> its lines' values, in order (tuples: the garbage collector stops tracking
    # them, and a message kept for a transaction's lifetime keeps its index)
    _index: dict[str, tuple[str, ...]] | None = field(repr=False, compare=False)
    # header key -> what an accessor parsed from that header (immutable values only); made
    # by the first accessor (most responses we build are never read, only sent)
    memo: dict[str, Any] | None = field(repr=False, compare=False)
    wire: tuple[int, str] | None = field(repr=False, compare=False)
    # What the accessors parsed of the core headers (Via: the top one), read a dozen times a
    # call each: fields, found at once, not entries of `memo` searched for (issue 18)
    parsed_via: Via | None = field(repr=False, compare=False)
    parsed_from: Address | None = field(repr=False, compare=False)
    parsed_to: Address | None = field(repr=False, compare=False)
    parsed_cseq: CSeq | None = field(repr=False, compare=False)
    parsed_call_id: str | None = field(repr=False, compare=False)

    def __init__(
        self,
        items: list[tuple[str, str]] | None = None,
        _index: dict[str, tuple[str, ...]] | None = None,
        memo: dict[str, Any] | None = None,
        wire: tuple[int, str] | None = None,
    ) -> None:
        self.items = [] if items is None else items
        self._index = _index
        self.memo = memo
        self.wire = wire
        self.parsed_via = self.parsed_from = self.parsed_to = self.parsed_cseq = None
        self.parsed_call_id = None

    def parsed(self) -> dict[str, Any]:
        """`memo`, made when first needed."""
        memo = self.memo
        if memo is None:
            memo = self.memo = {}
        return memo

    def _lines(self) -> dict[str, tuple[str, ...]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self.items:
                key = header_key(name)
                lines = index.get(key)
                index[key] = (value,) if lines is None else (*lines, value)
            self._index = index
        return index

    def lines(self, name: str) -> tuple[str, ...]:
        """The values of every line of a header, as they are (list headers not split)."""
        return self._lines().get(header_key(name), ())

    def get(self, name: str) -> str | None:
        """The first value of a header (for list headers: the first line, not the first item)."""
        lines = self._lines().get(header_key(name))
        return None if lines is None else lines[0]

    def get_all(self, name: str) -> list[str]:
        """Every value; comma-separated lists are split into their items."""
        key = header_key(name)
        lines = self._lines().get(key)
        if lines is None:
            return []
        if key not in _LIST_KEYS:
            return list(lines)
        items: list[str] = []
        for value in lines:
            if "," in value or '"' in value:
                items.extend(split_list(value))
            elif value := value.strip():  # one item (what split_list makes of it)
                items.append(value)
        return items

    def __contains__(self, name: str) -> bool:
        return header_key(name) in self._lines()

    def replaced_first(self, name: str, value: str) -> None:
        """The first line of `name` in `items` was replaced, in place, with `value`: the index
        follows, and what was parsed from that header is forgotten (the others are kept)."""
        key = header_key(name)
        self.wire = None
        index = self._index
        if index is not None:
            lines = index.get(key)
            index[key] = (value,) if lines is None else (value, *lines[1:])
        self._forget(key)

    def _forget(self, key: str) -> None:
        """What was parsed of the header of key `key`."""
        if key == "via":
            self.parsed_via = None
        elif key == "from":
            self.parsed_from = None
        elif key == "to":
            self.parsed_to = None
        elif key == "cseq":
            self.parsed_cseq = None
        elif key == "call-id":
            self.parsed_call_id = None
        elif self.memo is not None:
            self.memo.pop(key, None)

    def _forget_all(self) -> None:
        self.memo = None
        self.parsed_via = self.parsed_from = self.parsed_to = self.parsed_cseq = None
        self.parsed_call_id = None

    def changed(self) -> None:
        """`items` was edited in place: forget the index, what was parsed and `wire`."""
        self._index = None
        self._forget_all()
        self.wire = None

    def compact(self) -> None:
        """Forget the index and what was parsed (made again if read again): for a message kept
        only in case its peer retransmits, 32 s in a transaction, as few objects as can be."""
        self._index = None
        self._forget_all()

    def add(self, name: str, value: str) -> None:
        canonical = canonical_name(name)
        self.items.append((canonical, value))
        index = self._index
        if index is not None:
            key = canonical.lower()
            lines = index.get(key)
            index[key] = (value,) if lines is None else (*lines, value)
            self._forget(key)

    def set(self, name: str, value: str) -> None:
        """Replace every line of a header with one, at the position of the first."""
        key = header_key(name)
        self.changed()
        for i, (k, _) in enumerate(self.items):
            if header_key(k) == key:
                self.items[i] = (canonical_name(name), value)
                self.items[i + 1 :] = [
                    (k2, v2) for k2, v2 in self.items[i + 1 :] if header_key(k2) != key
                ]
                return
        self.items.append((canonical_name(name), value))

    def remove(self, name: str) -> None:
        key = header_key(name)
        self.changed()
        self.items = [(k, v) for k, v in self.items if header_key(k) != key]

    def prepend(self, name: str, value: str) -> None:
        self.changed()
        self.items.insert(0, (canonical_name(name), value))

    def copy(self) -> Headers:
        copied = Headers(
            list(self.items),
            None if self._index is None else dict(self._index),
            None if self.memo is None else dict(self.memo),
            self.wire,
        )
        copied.parsed_via, copied.parsed_from = self.parsed_via, self.parsed_from
        copied.parsed_to, copied.parsed_cseq = self.parsed_to, self.parsed_cseq
        copied.parsed_call_id = self.parsed_call_id
        return copied

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)


@dataclass(slots=True, init=False)
class Message:
    headers: Headers
    body: bytes

    def __init__(self, *, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = Headers() if headers is None else headers
        self.body = body

    # -- structured accessors (raise SipProtocolError(400) when malformed) ---------------
    # Each parses its header once per message (the core headers' `Headers.parsed_*`, the others'
    # `Headers.memo`, keyed by the header's key).

    def _required(self, key: str, name: str) -> str:
        """The value of a single-valued header, found by its key (`header_key(name)`, which
        each accessor knows: not looked up for every message, issue 18)."""
        lines = self.headers._lines().get(key)
        if lines is None:
            raise _bad(f"missing {name} header")
        value = lines[0].strip()
        if not value:
            raise _bad(f"missing {name} header")
        if len(lines) > 1:  # single-valued headers (RFC 4475 s3.1.2.18 multi01)
            raise _bad(f"more than one {name} header")
        return value

    @property
    def call_id(self) -> str:
        headers = self.headers
        value = headers.parsed_call_id
        if value is None:
            value = headers.parsed_call_id = self._required("call-id", "Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        headers = self.headers
        value = headers.parsed_cseq
        if value is None:
            value = headers.parsed_cseq = parse_cseq(self._required("cseq", "CSeq"))
        return value

    @property
    def from_(self) -> Address:
        headers = self.headers
        value = headers.parsed_from
        if value is None:
            value = headers.parsed_from = parse_address(self._required("from", "From"))
        return value

    @property
    def to(self) -> Address:
        headers = self.headers
        value = headers.parsed_to
        if value is None:
            value = headers.parsed_to = parse_address(self._required("to", "To"))
        return value

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.parsed_via
        if value is None:
            lines = self.headers._lines().get("via")
            if lines is None:
                raise _bad("missing Via header")
            first = lines[0].strip()
            if not first or "," in first or '"' in first:  # a list: its first item
                values = self.headers.get_all("Via")
                if not values:
                    raise _bad("missing Via header")
                first = values[0]
            value = self.headers.parsed_via = parse_via(first)
        return value

    @property
    def contacts(self) -> list[Address]:
        return self._addresses("Contact", "contact")

    @property
    def record_routes(self) -> list[Address]:
        return self._addresses("Record-Route", "record-route")

    def _addresses(self, name: str, key: str) -> list[Address]:
        """The addresses of every `name` header, parsed once per message (memo under `key`)."""
        memo = self.headers.parsed()
        value = memo.get(key)
        if value is None:
            lines = self.headers._lines().get(key)
            if lines is None:
                value = ()
            elif len(lines) == 1 and "," not in lines[0] and '"' not in lines[0]:
                # one line of one address (the common case: what `get_all` makes of it, without
                # a list and a generator for it, issue 18)
                text = lines[0].strip()
                value = (parse_address(text),) if text else ()
            else:
                value = tuple(parse_address(v) for v in self.headers.get_all(name))
            memo[key] = value
        return list(value)

    def tokens(self, name: str) -> list[str]:
        """A list header of tokens (Allow, Supported, Require), lowercased."""
        if name not in self.headers:
            return []
        return [t.strip().lower() for t in self.headers.get_all(name) if t.strip()]

    def serialize_headers_and_body(self, out: list[str]) -> bytes:
        """The message's bytes after its start line, `out` (a list of it alone): written
        by the C extension where built, for ASCII text (`_csipmsg.serialize`), else by
        `serialize_python`."""
        cserialize = _cserialize  # (read once: see `parse_message`)
        if cserialize is not None:
            headers = self.headers
            wire = headers.wire
            data = cserialize(
                out[0],
                "" if wire is None else wire[1],
                headers.items,
                0 if wire is None else wire[0],
                self.body,
            )
            if data is not None:
                return cast(bytes, data)
        return self.serialize_python(out)

    def serialize_python(self, out: list[str]) -> bytes:
        """`serialize_headers_and_body` in Python alone: what the C extension leaves, and its
        tests."""
        body = self.body
        headers = self.headers
        items = headers.items
        wire = headers.wire
        if wire is not None:  # the first items, serialised once (`EchoedHeaders`)
            out.append(wire[1])
            items = items[wire[0] :]
        # The pieces of every line joined once, not each line built first (issue 18).
        for name, value in items:
            if name != "Content-Length":
                out.append(name)
                out.append(": ")
                out.append(value)
                out.append("\r\n")
        out.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(out).encode("utf-8", "surrogateescape") + body


@dataclass(slots=True, init=False)
class Request(Message):
    method: str
    uri: Uri

    def __init__(
        self, *, method: str, uri: Uri, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.method = method
        self.uri = uri

    def serialize(self) -> bytes:
        return self.serialize_headers_and_body([f"{self.method} {self.uri} {SIP_VERSION}\r\n"])

    def __str__(self) -> str:
        return f"{self.method} {self.uri}"


@dataclass(slots=True, init=False)
class Response(Message):
    status: int
    reason: str | None  # None: the standard phrase; "" is kept (RFC 4475 noreason)

    def __init__(
        self,
        *,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.status = status
        self.reason = reason

    def serialize(self) -> bytes:
        status = self.status
        reason = REASONS.get(status, "") if self.reason is None else self.reason
        code = _STATUS_TEXT.get(status) or str(status)
        return self.serialize_headers_and_body([f"{SIP_VERSION} {code} {reason}\r\n"])

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


# -- parsing ------------------------------------------------------------------------------


# What `_csipmsg.parse_head` returns, typed: compiled, such a tuple is unpacked by index, where
# an untyped one is iterated (issue 18).
_CutHead = tuple[Any, Any, list[tuple[str, str]], dict[str, tuple[str, ...]], int, int]


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one whole message (a datagram, or one framed by `StreamFramer`).

    On a datagram the body is what follows the headers, cut to Content-Length when that is
    shorter; a Content-Length larger than what arrived is an error (s18.3). On streams the
    framer has already used Content-Length, which is required there.

    The head of a message of the common shape is cut by the C extension `_csipmsg` where it
    is built (the same objects, the same caches); any other message, or every one without the
    extension (or with SIPBRIDGE_NO_CSIPMSG=1), by `parse_message_python`.
    """
    cparse = _cparse  # (read once: a Final, compiled, is a C static)
    if cparse is not None:
        parts = cparse(data, stream)
        if parts is not None:
            first, second, items, index, start, end = cast(_CutHead, parts)
            headers = Headers(items, index)
            body = data[start:end]
            if isinstance(first, str):
                return Request(method=first, uri=second, headers=headers, body=body)
            return Response(status=first, reason=second, headers=headers, body=body)
    return parse_message_python(data, stream=stream)


def parse_message_python(data: bytes, *, stream: bool = False) -> Request | Response:
    """`parse_message` in Python alone: every message the C extension leaves, and its tests."""
    if len(data) > MAX_MESSAGE:
        raise SipProtocolError(513, "Message Too Large")
    end = data.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = data.find(b"\n\n")  # bare-LF senders exist; tolerate them
        sep = 2
    if end < 0:
        raise _bad("message has no end of headers")
    head = data[:end].decode("utf-8", "surrogateescape")
    body = data[end + sep :]
    lines = _split_lines(head)
    if not lines:
        raise _bad("empty message")
    message = _parse_start_line(lines[0])
    headers = message.headers = _parse_headers(lines, 1)
    return _with_body(message, headers._lines(), body, stream)


def _with_body(
    message: Request | Response, index: dict[str, tuple[str, ...]], body: bytes, stream: bool
) -> Request | Response:
    """The body of `message` from what followed its head, checked against Content-Length."""
    length_lines = index.get("content-length")
    if length_lines is not None:
        length_text = length_lines[0].strip()
        if not (length_text.isascii() and length_text.isdigit()):
            raise _bad("malformed Content-Length")
        if len(length_lines) > 1 and len({v.strip() for v in length_lines}) > 1:
            raise _bad("conflicting Content-Length headers")  # RFC 4475 s3.1.2.12 mcl01
        length = int(length_text)
        if length > len(body):
            raise _bad("body shorter than Content-Length")
        body = body[:length]
    elif stream:
        raise _bad("missing Content-Length on a stream transport")
    if len(body) > MAX_BODY:
        raise SipProtocolError(413, "Request Entity Too Large")
    message.body = body
    return message


def _split_lines(head: str) -> list[str]:
    """The start line and header lines of `head`. Most messages have CRLF line ends, no folded
    line, no leading CRLF and no line near MAX_LINE: those are split in one call; anything else
    takes `_unfold`, which handles (or refuses) each case."""
    lines = head.split("\r\n")
    no_bare_lf = head.count("\n") == len(lines) - 1
    if (
        no_bare_lf
        and lines[0]  # (no leading CRLF)
        and (len(head) <= MAX_LINE or max(map(len, lines)) <= MAX_LINE)
    ):
        # every LF ends a CRLF: a line beginning with a blank is a folded one (or the first)
        for line in lines:
            if line.startswith(" ") or line.startswith("\t"):
                return _unfold(head)
        return lines
    return _unfold(head)


def _unfold(head: str) -> list[str]:
    """Split header lines, joining folded continuation lines (s7.3.1) into one with one SP."""
    lines: list[str] = []
    for raw in head.replace("\r\n", "\n").split("\n"):
        if len(raw) > MAX_LINE:
            raise _bad("header line too long")
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1].rstrip() + " " + raw.strip()
            if len(lines[-1]) > MAX_LINE:
                raise _bad("folded header too long")
        elif raw[:1] in (" ", "\t"):
            raise _bad("continuation line before any header")
        else:
            lines.append(raw)
    while lines and not lines[0]:
        lines.pop(0)  # leading CRLFs are ignored (s7.5)
    return lines


# Methods seen in request lines, each checked against the token grammar once (bounded).
_METHODS: dict[str, str] = {}
_MAX_METHODS = 64


def _parse_start_line(line: str) -> Request | Response:
    if line.startswith("SIP/"):
        m = _STATUS.fullmatch(line)
        if m is None:
            raise _bad(f"malformed status line {line[:80]!r}")
        return Response(status=int(m.group(1)), reason=m.group(2))
    parts = line.split(" ")
    if len(parts) != 3:
        raise _bad(f"malformed request line {line[:80]!r}")
    method, uri_text, version = parts
    if method not in _METHODS:
        if not _TOKEN.fullmatch(method):
            raise _bad(f"malformed method {method[:40]!r}")
        if len(_METHODS) >= _MAX_METHODS:
            _METHODS.clear()
        _METHODS[method] = method
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        raise SipProtocolError(505, "Version Not Supported", version[:20])
    return Request(method=method, uri=parse_uri(uri_text))


# Header names as received (before the colon, spaces included) -> their canonical form and
# key, for names that passed the token grammar; bounded, so that a peer inventing names cannot
# grow it.
_NAMES: dict[str, tuple[str, str]] = {}
_MAX_NAMES = 4096


def _header_name(raw: str, line: str) -> tuple[str, str]:
    name = raw.strip()
    if not _TOKEN.fullmatch(name):
        raise _bad(f"malformed header line {line[:80]!r}")
    if len(_NAMES) >= _MAX_NAMES:
        _NAMES.clear()
    canonical = canonical_name(name)
    key = canonical.lower()
    known = _NAMES[raw] = (canonical, _INTERNED_KEYS.get(key, key))
    return known


def _parse_headers(lines: list[str], start: int = 0) -> Headers:
    """Header lines from `lines[start:]`: name and value, the name canonical, the value
    stripped; a line without a colon or a name outside the token grammar is malformed. The
    index by name (`Headers.lines`) is built in the same pass."""
    body = lines[start:] if start else lines
    if len(body) > MAX_HEADERS:
        _index_lines(body[: MAX_HEADERS + 1])  # a malformed line up to the cap is the fault
        raise _bad("too many headers")
    return _index_lines(body)


# Header lines seen whole -> what they parse to: the item (name, value), the key, and the value
# alone as a tuple (an index entry). Most lines of a peer's messages repeat from call to call
# (Max-Forwards, Contact, Content-Type, Allow, User-Agent, a CSeq of "1 INVITE"...): found here
# by one lookup instead of cut, named and stripped again, and their tuples shared. Lines of
# the headers that differ in every call are not kept, nor lines longer than _LINE_KEPT; bounded
# (cleared when full: at most about 1 MB), so that a peer inventing lines cannot grow it, only
# make it miss. (The tuples are typed of any length: compiled, a fixed-length one is unboxed
# when read and boxed anew when stored.)
_LINES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {}
_MAX_LINES = 2048
_LINE_KEPT = 256
_VARYING = frozenset({"via", "from", "to", "call-id", "authorization", "proxy-authorization"})


def _index_lines(lines: list[str]) -> Headers:
    items: list[tuple[str, ...]] = []
    index: dict[str, tuple[str, ...]] = {}
    names = _NAMES
    seen = _LINES
    for line in lines:
        parsed = seen.get(line)
        if parsed is None:
            raw, colon, value = line.partition(":")
            if not colon:
                raise _bad(f"malformed header line {line[:80]!r}")
            known = names.get(raw)
            if known is None:
                known = _header_name(raw, line)
            name, key = known
            value = value.strip()
            item: tuple[str, ...] = (name, value)
            alone: tuple[str, ...] = (value,)
            if key not in _VARYING and len(line) <= _LINE_KEPT:
                if len(seen) >= _MAX_LINES:
                    seen.clear()
                seen[line] = (item, key, alone)
        else:
            item, key, alone = parsed
        items.append(item)
        lines_of = index.get(key)
        index[key] = alone if lines_of is None else (*lines_of, item[1])
    return Headers(cast(list[tuple[str, str]], items), index)


def _load_c_message() -> Any:
    """The C extension cutting the head of a message of the common shape (`_csipmsg.c`),
    given the caches, helpers and limits above, which it shares; None without it (not built: no
    compiler, or a source checkout) or with SIPBRIDGE_NO_CSIPMSG=1 (pure Python)."""
    if os.environ.get("SIPBRIDGE_NO_CSIPMSG", "") not in ("", "0"):
        return None
    try:
        # (by name: compiled, `from sipbridge.sip import _csipmsg` reads the package's
        # attribute without importing the submodule)
        module: Any = importlib.import_module("sipbridge.sip._csipmsg")
    except ImportError:
        return None
    module.configure(
        _NAMES,
        _LINES,
        _METHODS,
        _VARYING,
        _header_name,
        parse_uri,
        MAX_MESSAGE,
        MAX_LINE,
        MAX_HEADERS,
        _MAX_LINES,
        _LINE_KEPT,
        _MAX_METHODS,
        MAX_BODY,
    )
    return module


# The extension (also what trace.py uses of it: C_MESSAGE.call_id) and its functions, or None.
# Final, assigned once: compiled, each read on every message is a C static's, not a search of
# the module's dictionary (issue 18).
C_MESSAGE: Final[Any] = _load_c_message()
_cparse: Final[Any] = None if C_MESSAGE is None else C_MESSAGE.parse_head
# ... and writing a message's bytes (`serialize_headers_and_body`)
_cserialize: Final[Any] = None if C_MESSAGE is None else C_MESSAGE.serialize
# ... and the text of `EchoedHeaders`
_cheader_block: Final[Any] = None if C_MESSAGE is None else C_MESSAGE.header_block


def _tuple_of(*items: Any) -> tuple[Any, ...]:
    return items


# A tuple of its arguments that the cyclic collector does not walk when none of them is a
# container (strings, numbers, bytes): the extension's, or a plain one (which the collector
# stops tracking after its first walk of it). For tuples kept seconds, many a call: the SIP
# trace's entries, the transactions' keys (issue 18).
atomic_tuple: Final[Any] = _tuple_of if C_MESSAGE is None else C_MESSAGE.atomic_tuple


# -- streams ------------------------------------------------------------------------------


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261 s18.3).

    Feed bytes in any pieces (one at a time works); take whole messages out. CRLF keep-alives
    between messages (RFC 5626 s3.5.1) are reported so the caller can answer them. Input is
    capped per message: a peer that sends headers without end, or declares a huge body, gets an
    error instead of our memory. Callers drain messages after every feed.
    """

    def __init__(self, max_buffer: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self.max_buffer = max_buffer
        self.keepalives = 0  # double-CRLF pings seen, each to be answered with one CRLF
        self._scanned = 0  # how far the end-of-headers search got (no rescans, byte by byte)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        # One read may hold several whole messages; only a pile-up beyond what any sane
        # sender could have in flight is refused here (per-message caps are in next_message).
        if len(self._buffer) > 16 * self.max_buffer:
            self._skip_keepalives()
            if len(self._buffer) > 16 * self.max_buffer:
                raise SipProtocolError(513, "Message Too Large", "stream buffer overflow")

    def _skip_keepalives(self) -> None:
        while self._buffer[:2] == b"\r\n":
            if self._buffer[:4] == b"\r\n\r\n":
                del self._buffer[:4]
                self.keepalives += 1
            elif len(self._buffer) >= 4 or bytes(self._buffer[2:3]) not in (b"", b"\r"):
                del self._buffer[:2]  # a lone CRLF: a pong, or noise
            else:
                return
            self._scanned = 0

    def next_message(self) -> bytes | None:
        """The next complete message's bytes, or None until more input arrives."""
        self._skip_keepalives()
        end = self._buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_buffer:
                raise SipProtocolError(513, "Message Too Large", "headers too long")
            return None
        head = bytes(self._buffer[:end])
        length = _content_length(head)
        if length is None:
            raise _bad("missing Content-Length on a stream transport")
        total = end + 4 + length
        if total > self.max_buffer:
            raise SipProtocolError(513, "Message Too Large", "declared body too large")
        if len(self._buffer) < total:
            self._scanned = end  # the headers are complete: find them again at once
            return None
        message = bytes(self._buffer[:total])
        del self._buffer[:total]
        self._scanned = 0
        return message

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _content_length(head: bytes) -> int | None:
    length: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                raise _bad("malformed Content-Length")
            if length is not None and length != int(text):
                raise _bad("conflicting Content-Length headers")
            length = int(text)
    return length


# -- building responses -------------------------------------------------------------------


class EchoedHeaders:
    """The headers of a response to a request, as made for its first response (the echoed
    ones of `make_response`, and what its maker added to every response), kept to make its
    next responses (an INVITE's 180 then 200, issue 18): their items copied from here, their
    text serialised once (`Headers.wire`). The bytes on the wire are those of the same headers
    made anew (tests/sip/test_message.py)."""

    __slots__ = ("items", "wire")

    def __init__(self, headers: Headers) -> None:
        items = self.items = tuple(headers.items)
        cblock = _cheader_block  # (read once: see `parse_message`)
        text = None if cblock is None else cblock(items)
        if text is None:  # (not ASCII text, or not built)
            text = header_block_python(items)
        self.wire: tuple[int, str] = (len(items), cast(str, text))

    def response(self, status: int, reason: str = "") -> Response:
        """A response with these headers (more may be added)."""
        headers = Headers(list(self.items), None, None, self.wire)
        return Response(status=status, reason=reason or REASONS.get(status, ""), headers=headers)


def header_block_python(items: tuple[tuple[str, str], ...]) -> str:
    """`EchoedHeaders`' text of `items` in Python alone (`_csipmsg.header_block` writes it in C
    where built): every item but Content-Length as a header line, joined."""
    out: list[str] = []
    for name, value in items:
        if name != "Content-Length":
            out.append(f"{name}: {value}\r\n")
    return "".join(out)


def make_response(
    request: Request, status: int, reason: str = "", *, to_tag: str | None = None
) -> Response:
    """A response echoing Via, From, To, Call-ID and CSeq (RFC 3261 s8.2.6.2).

    Every Via is copied, in order; From, To, Call-ID and CSeq are single-valued (s20), and a
    request repeating one (refused 400, RFC 4475 s3.1.2.18) has only its first echoed: copying
    them all let a request of 128 such lines draw a response of more headers than MAX_HEADERS,
    which our own parser refuses (found by fuzz/targets.py `endpoint`).
    """
    headers = request.headers
    index = headers._lines()
    items: list[tuple[str, str]] = []
    vias = index.get("via")
    if vias is not None:
        for value in vias:
            items.append(("Via", value))
    # The single-valued headers after the Vias, each written out: compiled, a loop over a
    # table of them was a generic iteration and a tuple unpacked per header (issue 18).
    lines = index.get("from")
    if lines is not None:
        items.append(("From", lines[0]))
    lines = index.get("to")
    if lines is not None:
        value = lines[0]
        if to_tag and status != 100:
            to = headers.parsed_to if len(lines) == 1 else None
            if (to or parse_address(value)).tag is None:
                # the echoed To gains a tag: a header parameter, after the address as received
                value = f"{value};tag={to_tag}"
        items.append(("To", value))
    lines = index.get("call-id")
    if lines is not None:
        items.append(("Call-ID", lines[0]))
    lines = index.get("cseq")
    if lines is not None:
        items.append(("CSeq", lines[0]))
    response = Response(
        status=status, reason=reason or REASONS.get(status, ""), headers=Headers(items)
    )
    if status == 100 and "Timestamp" in request.headers:  # s8.2.6.1
        response.headers.add("Timestamp", request.headers.get("Timestamp") or "")
    return response
