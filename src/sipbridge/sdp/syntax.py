"""SDP text: RFC 4566 parse and serialise.

Parsing follows the RFC 4566 s9 grammar with tolerances seen on real trunks: LF-only line ends
(and trailing blank lines), runs of spaces between the fields of structured lines (`m=`, `o=`,
`c=`, `t=`), an empty `s=` (RFC 3264's own examples send one), and lines in any order inside a
section (serialising writes the s5 order). Unknown attributes are kept verbatim, in order, so a
parsed description serialises back to its input. Malformed input raises
`SdpError(SdpErrorKind.MALFORMED)` saying which line is wrong and why.

    session-description = proto-version origin-field session-name-field
                          information-field uri-field email-fields phone-fields
                          connection-field bandwidth-fields time-fields key-field
                          attribute-fields media-descriptions
    media-description   = media-field information-field *connection-field
                          bandwidth-fields key-field attribute-fields
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sipbridge.sdp._abnf import (
    TOKEN,
    check_non_ws,
    check_token,
    is_rtp,
    malformed,
    parse_number,
    parse_port,
    required,
    split_fields,
)
from sipbridge.sdp.description import (
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
    Timing,
    parse_crypto,
    parse_fmtp,
    parse_ptime,
    parse_rtcp,
    parse_rtpmap,
)
from sipbridge.sdp.errors import SdpError

__all__ = [
    "MAX_FORMATS",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "MAX_SDP_LINES",
    "parse_sdp",
    "serialize_sdp",
]

# -- limits ---------------------------------------------------------------------------------------

MAX_SDP_BYTES = 64 * 1024
MAX_SDP_LINES = 1024
MAX_MEDIA = 32
# RTP payload types are 0-127; a browser's video m-line lists some 40 of them.
MAX_FORMATS = 128

# -- grammar of the lines (RFC 4566 s9) -----------------------------------------------------------

# <type>=<value>, type = exactly one lower-case letter, no whitespace around "=" (s5)
_LINE = re.compile(r"([a-z])=(.*)", re.DOTALL)
# proto = token *("/" token)
_PROTO = re.compile(rf"{TOKEN}(?:/{TOKEN})*")
# bandwidth-fields = *(%x62 "=" bwtype ":" bandwidth CRLF); bwtype = token; bandwidth = 1*DIGIT
_BANDWIDTH = re.compile(rf"({TOKEN}):([0-9]{{1,20}})")
# repeat-fields = %x72 "=" repeat-interval SP typed-time 1*(SP typed-time)
# typed-time = 1*DIGIT [fixed-len-time-unit]; fixed-len-time-unit = "d" / "h" / "m" / "s"
_TYPED_TIME = re.compile(r"[0-9]{1,20}[dhms]?")
# zone-adjustments = %x7a "=" time SP ["-"] typed-time *(SP time SP ["-"] typed-time)
_ZONE_OFFSET = re.compile(r"-?[0-9]{1,20}[dhms]?")
# key-type = %x6b "=" ("prompt" / "clear:" text / "base64:" base64 / "uri:" uri / key-type)
_KEY = re.compile(r"[A-Za-z0-9\-]+(?::.*)?", re.DOTALL)

_DIRECTIONS = frozenset(d.value for d in Direction)


# -- parse ----------------------------------------------------------------------------------------

_Entry = tuple[int, str, str]


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body (RFC 4566), or raise `SdpError(MALFORMED)` saying what is wrong.

    Text is UTF-8 (RFC 4566 s5); other bytes are kept as surrogate escapes so that they
    serialise back unchanged.
    """
    if isinstance(data, str):
        if len(data) > MAX_SDP_BYTES:
            raise malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
        try:
            data = data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise malformed("SDP text is not encodable as UTF-8") from None
    if len(data) > MAX_SDP_BYTES:
        raise malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:
        raise malformed("SDP contains a NUL byte")
    lines = text.split("\n")
    # A body ends with CRLF; tolerate LF and extra blank lines after the last field.
    while lines and lines[-1] in ("", "\r"):
        lines.pop()
    if not lines:
        raise malformed("empty SDP")
    if len(lines) > MAX_SDP_LINES:
        raise malformed(f"SDP has more than {MAX_SDP_LINES} lines")
    entries: list[_Entry] = []
    for number, raw_line in enumerate(lines, 1):
        line = raw_line.removesuffix("\r")
        match = _LINE.fullmatch(line)
        if match is None:
            raise malformed(f"line {number}: {line[:40]!r} is not <type>=<value> (RFC 4566 s5)")
        if "\r" in match[2]:
            raise malformed(f"line {number}: bare CR in value")
        entries.append((number, match[1], match[2]))
    if entries[0][1] != "v":
        raise malformed("line 1: an SDP body starts with v= (RFC 4566 s5)")
    starts = [i for i, (_, kind, _) in enumerate(entries) if kind == "m"]
    if len(starts) > MAX_MEDIA:
        raise malformed(f"more than {MAX_MEDIA} media descriptions")
    ends = [*starts[1:], len(entries)] if starts else []
    sd = _parse_session(
        entries[: starts[0]] if starts else entries,
        [entries[a:b] for a, b in zip(starts, ends, strict=True)],
    )
    if sd.connection is None:
        for (number, _, _), md in zip((entries[i] for i in starts), sd.media, strict=True):
            if md.connection is None and not md.is_rejected:
                raise malformed(
                    f"line {number}: no c= for this media and none at session level (RFC 4566 s5.7)"
                )
    return sd


def _once(current: object, kind: str) -> None:
    if current is not None:
        raise malformed(f"more than one {kind}= line in this section")


def _at(number: int, error: SdpError) -> SdpError:
    return malformed(f"line {number}: {error.detail}")


def _parse_session(
    entries: Sequence[_Entry], sections: list[Sequence[_Entry]]
) -> SessionDescription:
    """The session-level lines, then the media `sections`: session-level errors first, so
    that the first bad line is the one reported. (One `SessionDescription` made with its media,
    not made and then copied by `dataclasses.replace`: 15-25 us an SDP, issue 18.)"""
    version: int | None = None
    origin: Origin | None = None
    name: str | None = None
    information: str | None = None
    uri: str | None = None
    connection: Connection | None = None
    time_zones: str | None = None
    key: str | None = None
    emails: list[str] = []
    phones: list[str] = []
    bandwidths: list[Bandwidth] = []
    timings: list[Timing] = []
    attributes: list[Attribute] = []
    for number, kind, value in entries:
        try:
            if kind == "v":
                _once(version, kind)
                # proto-version = %x76 "=" 1*DIGIT; only version 0 exists (s5.1)
                version = parse_number(value, "version")
                if version != 0:
                    raise malformed(f"SDP version {version} is not supported (RFC 4566 s5.1)")
            elif kind == "o":
                _once(origin, kind)
                origin = _parse_origin(value)
            elif kind == "s":
                _once(name, kind)
                name = value
            elif kind == "i":
                _once(information, kind)
                information = value
            elif kind == "u":
                _once(uri, kind)
                uri = value
            elif kind == "e":
                emails.append(value)
            elif kind == "p":
                phones.append(value)
            elif kind == "c":
                _once(connection, kind)
                connection = _parse_connection(value)
            elif kind == "b":
                bandwidths.append(_parse_bandwidth(value))
            elif kind == "t":
                timings.append(_parse_timing(value))
            elif kind == "r":
                if not timings:
                    raise malformed("r= must follow a t= line (RFC 4566 s5.10)")
                timings[-1] = Timing(
                    start=timings[-1].start,
                    stop=timings[-1].stop,
                    repeats=(*timings[-1].repeats, _parse_repeat(value)),
                )
            elif kind == "z":
                _once(time_zones, kind)
                time_zones = _parse_zones(value)
            elif kind == "k":
                _once(key, kind)
                key = _parse_key(value)
            elif kind == "a":
                attributes.append(_parse_attribute(value, media_level=False))
            else:
                raise malformed(f"{kind}= is not an SDP session-level line (RFC 4566 s5)")
        except SdpError as error:
            raise _at(number, error) from None
    if origin is None:
        raise malformed("no o= line (RFC 4566 s5.2)")
    if name is None:
        raise malformed("no s= line (RFC 4566 s5.3)")
    if not timings:
        raise malformed("no t= line (RFC 4566 s5.9)")
    if sum(a.name in _DIRECTIONS for a in attributes) > 1:
        raise malformed("more than one session-level direction attribute (RFC 3264 s5.1)")
    media = tuple(_parse_media(section) for section in sections)
    return SessionDescription(
        version=0,
        origin=origin,
        session_name=name,
        information=information,
        uri=uri,
        emails=tuple(emails),
        phones=tuple(phones),
        connection=connection,
        bandwidths=tuple(bandwidths),
        timing=tuple(timings),
        time_zones=time_zones,
        key=key,
        attributes=tuple(attributes),
        media=media,
    )


def _parse_media(entries: Sequence[_Entry]) -> MediaDescription:
    m_number, _, m_value = entries[0]
    try:
        media, port, port_count, proto, formats = _parse_media_line(m_value)
    except SdpError as error:
        raise _at(m_number, error) from None
    title: str | None = None
    connection: Connection | None = None
    key: str | None = None
    bandwidths: list[Bandwidth] = []
    attributes: list[Attribute] = []
    for number, kind, value in entries[1:]:
        try:
            if kind == "i":
                _once(title, kind)
                title = value
            elif kind == "c":
                # media-level *connection-field allows several for layered multicast (s5.7);
                # unicast telephony never sends that, so more than one is refused.
                _once(connection, kind)
                connection = _parse_connection(value)
            elif kind == "b":
                bandwidths.append(_parse_bandwidth(value))
            elif kind == "k":
                _once(key, kind)
                key = _parse_key(value)
            elif kind == "a":
                attributes.append(_parse_attribute(value, media_level=True))
            else:
                raise malformed(f"{kind}= is not allowed in a media description (RFC 4566 s5)")
        except SdpError as error:
            raise _at(number, error) from None
    if sum(a.name in _DIRECTIONS for a in attributes) > 1:
        raise malformed(f"line {m_number}: more than one direction attribute in this media")
    return MediaDescription(
        media=media,
        port=port,
        port_count=port_count,
        proto=proto,
        formats=formats,
        title=title,
        connection=connection,
        bandwidths=tuple(bandwidths),
        key=key,
        attributes=tuple(attributes),
    )


def _parse_origin(value: str) -> Origin:
    fields = split_fields(value)
    if len(fields) != 6:
        raise malformed(
            "o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>"
        )
    username, session_id, session_version, net_type, addr_type, address = fields
    return Origin(
        username=check_non_ws(username, "o= username"),
        # sess-id = 1*DIGIT; 40 digits cover 128-bit ids with room to spare
        session_id=parse_number(session_id, "o= sess-id", digits=40),
        session_version=parse_number(session_version, "o= sess-version", digits=40),
        net_type=check_token(net_type, "o= nettype"),
        addr_type=check_token(addr_type, "o= addrtype"),
        address=check_non_ws(address, "o= address"),
    )


def _parse_connection(value: str) -> Connection:
    known = _CONNECTIONS.get(value)
    if known is not None:
        return known
    connection = _parse_new_connection(value)
    if len(_CONNECTIONS) >= MAX_CACHED:
        _CONNECTIONS.clear()
    _CONNECTIONS[value] = connection
    return connection


def _parse_new_connection(value: str) -> Connection:
    fields = split_fields(value)
    if len(fields) != 3:
        raise malformed("c= needs <nettype> <addrtype> <connection-address>")
    return Connection(
        net_type=check_token(fields[0], "c= nettype"),
        addr_type=check_token(fields[1], "c= addrtype"),
        address=check_non_ws(fields[2], "c= address"),
    )


def _parse_bandwidth(value: str) -> Bandwidth:
    match = _BANDWIDTH.fullmatch(value)
    if match is None:
        raise malformed(f"b={value} does not match <bwtype>:<bandwidth>")
    return Bandwidth(type=match[1], value=int(match[2]))


def _parse_timing(value: str) -> Timing:
    fields = split_fields(value)
    if len(fields) != 2:
        raise malformed("t= needs <start-time> <stop-time>")
    start, stop = parse_number(fields[0], "t= start"), parse_number(fields[1], "t= stop")
    return Timing(start=start, stop=stop)


def _parse_repeat(value: str) -> str:
    fields = split_fields(value)
    if len(fields) < 3 or not all(_TYPED_TIME.fullmatch(f) for f in fields):
        raise malformed(f"r={value} does not match <interval> <duration> <offsets>")
    return value


def _parse_zones(value: str) -> str:
    fields = split_fields(value)
    if not fields or len(fields) % 2 or not all(_ZONE_OFFSET.fullmatch(f) for f in fields):
        raise malformed(f"z={value} does not match <adjustment time> <offset> ...")
    return value


def _parse_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise malformed(f"k= {value!r} does not match <method>[:<key>]")
    return value


# Attribute and c= lines already parsed (a trunk's offers repeat the same lines call after call;
# 6-8 attributes an offer, issue 18): what they parsed to, frozen. A line that does not parse
# is never kept. Each bounded: emptied when full.
_MEDIA_ATTRIBUTES: dict[str, Attribute] = {}
_SESSION_ATTRIBUTES: dict[str, Attribute] = {}
_CONNECTIONS: dict[str, Connection] = {}
MAX_CACHED = 256


def _parse_attribute(value: str, *, media_level: bool) -> Attribute:
    cache = _MEDIA_ATTRIBUTES if media_level else _SESSION_ATTRIBUTES
    known = cache.get(value)
    if known is not None:
        return known
    attribute = _parse_new_attribute(value, media_level)
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[value] = attribute
    return attribute


def _parse_new_attribute(value: str, media_level: bool) -> Attribute:
    # attribute = (att-field ":" att-value) / att-field; att-field = token (s9)
    name, colon, rest = value.partition(":")
    check_token(name, "attribute name")
    attribute = Attribute(name=name, value=rest if colon else None)
    if media_level:
        _check_media_attribute(attribute)
    return attribute


def _check_media_attribute(attribute: Attribute) -> None:
    """Refuse a malformed attribute whose grammar we know and will act on."""
    checks = {
        "rtpmap": parse_rtpmap,
        "fmtp": parse_fmtp,
        "ptime": parse_ptime,
        "maxptime": parse_ptime,
        "rtcp": parse_rtcp,
        "crypto": parse_crypto,
    }
    check = checks.get(attribute.name)
    if check is not None:
        check(required(attribute.name, attribute.value))


def _parse_media_line(value: str) -> tuple[str, int, int | None, str, tuple[str, ...]]:
    # media-field = %x6d "=" media SP port ["/" integer] SP proto 1*(SP fmt) CRLF
    fields = split_fields(value)
    if len(fields) < 4:
        raise malformed("m= needs <media> <port>[/<count>] <proto> <fmt> ...")
    media, port_text, proto, *formats = fields
    check_token(media, "m= media")
    port_text, slash, count_text = port_text.partition("/")
    port = parse_port(port_text, "m= port")
    port_count = parse_number(count_text, "m= port count", digits=5) if slash else None
    if port_count == 0:
        raise malformed("m= port count must be at least 1")
    if not _PROTO.fullmatch(proto):
        raise malformed(f'm= proto {proto!r} is not token *("/" token)')
    if len(formats) > MAX_FORMATS:
        raise malformed(f"m= has more than {MAX_FORMATS} formats")
    for fmt in formats:
        check_token(fmt, "m= fmt")
        # RFC 4566 s5.14: with an RTP profile the fmts are RTP payload type numbers.
        if is_rtp(proto):
            parse_number(fmt, "m= payload type", digits=3, maximum=127)
    return media, port, port_count, proto, tuple(formats)


# -- serialise ------------------------------------------------------------------------------------


def serialize_sdp(sd: SessionDescription) -> bytes:
    """Write `sd` as an SDP body with CRLF line ends, in RFC 4566 s5 order.

    Raises ValueError if a field would break a line (CR, LF or NUL), so that text from
    configuration can never inject lines.
    """
    o = sd.origin
    lines = [
        f"v={sd.version}",
        f"o={o.username} {o.session_id} {o.session_version} {o.net_type} {o.addr_type} {o.address}",
        f"s={sd.session_name}",
    ]
    if sd.information is not None:
        lines.append(f"i={sd.information}")
    if sd.uri is not None:
        lines.append(f"u={sd.uri}")
    lines.extend(f"e={email}" for email in sd.emails)
    lines.extend(f"p={phone}" for phone in sd.phones)
    if sd.connection is not None:
        lines.append(_connection_line(sd.connection))
    lines.extend(f"b={b.type}:{b.value}" for b in sd.bandwidths)
    for timing in sd.timing:
        lines.append(f"t={timing.start} {timing.stop}")
        lines.extend(f"r={repeat}" for repeat in timing.repeats)
    if sd.time_zones is not None:
        lines.append(f"z={sd.time_zones}")
    if sd.key is not None:
        lines.append(f"k={sd.key}")
    lines.extend(_attribute_line(a) for a in sd.attributes)
    for md in sd.media:
        count = f"/{md.port_count}" if md.port_count is not None else ""
        lines.append(f"m={md.media} {md.port}{count} {md.proto} {' '.join(md.formats)}")
        if md.title is not None:
            lines.append(f"i={md.title}")
        if md.connection is not None:
            lines.append(_connection_line(md.connection))
        lines.extend(f"b={b.type}:{b.value}" for b in md.bandwidths)
        if md.key is not None:
            lines.append(f"k={md.key}")
        lines.extend(_attribute_line(a) for a in md.attributes)
    for line in lines:
        if any(c in line for c in "\r\n\0"):
            raise ValueError(f"SDP field contains CR, LF or NUL: {line[:40]!r}")
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape")


def _connection_line(c: Connection) -> str:
    return f"c={c.net_type} {c.addr_type} {c.address}"


def _attribute_line(a: Attribute) -> str:
    return f"a={a.name}" if a.value is None else f"a={a.name}:{a.value}"
