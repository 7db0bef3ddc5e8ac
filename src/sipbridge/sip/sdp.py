"""SDP: RFC 4566 parse and serialise, and RFC 3264 offer/answer for one audio stream.

Sans-IO like the rest of `sip/`: bytes in, dataclasses out, and back. Nothing here reads a clock
or draws random numbers; session ids and versions for `o=` come from the caller.

Parsing follows the RFC 4566 s9 grammar with tolerances seen on real trunks: LF-only line ends
(and trailing blank lines), runs of spaces between the fields of structured lines (`m=`, `o=`,
`c=`, `t=`), an empty `s=` (RFC 3264's own examples send one), and lines in any order inside a
section (serialising writes the s5 order). Unknown attributes are kept verbatim, in order, so a
parsed description serialises back to its input. Malformed input raises
`SipProtocolError(400)`; media that we cannot accept is the negotiator's business and raises
`SipProtocolError(488)`.

    session-description = proto-version origin-field session-name-field
                          information-field uri-field email-fields phone-fields
                          connection-field bandwidth-fields time-fields key-field
                          attribute-fields media-descriptions
    media-description   = media-field information-field *connection-field
                          bandwidth-fields key-field attribute-fields
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum

from sipbridge.sip.errors import SipProtocolError

__all__ = [
    "G722",
    "MAX_FORMATS",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "MAX_SDP_LINES",
    "OPUS",
    "PCMA",
    "PCMU",
    "STATIC_PAYLOAD_TYPES",
    "TELEPHONE_EVENT",
    "Attribute",
    "AudioAnswer",
    "Bandwidth",
    "Codec",
    "Connection",
    "CryptoAttribute",
    "CryptoKey",
    "Direction",
    "MediaDescription",
    "Origin",
    "PayloadFormat",
    "RtcpAttribute",
    "SessionDescription",
    "Timing",
    "build_answer",
    "format_crypto",
    "format_fmtp",
    "format_rtcp",
    "format_rtpmap",
    "make_offer",
    "negotiate_audio",
    "parse_crypto",
    "parse_fmtp",
    "parse_ptime",
    "parse_rtcp",
    "parse_rtpmap",
    "parse_sdp",
    "serialize_sdp",
]

# -- limits ---------------------------------------------------------------------------------------

MAX_SDP_BYTES = 64 * 1024
MAX_SDP_LINES = 1024
MAX_MEDIA = 32
# RTP payload types are 0-127; a browser's video m-line lists some 40 of them.
MAX_FORMATS = 128

# -- grammar (RFC 4566 s9) ------------------------------------------------------------------------

# token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E
# token      = 1*(token-char)
_TOKEN = r"[!#-'*+\-.0-9A-Z^-~]+"
_TOKEN_RE = re.compile(_TOKEN)
# non-ws-string = 1*(VCHAR/%x80-FF)  (bytes >= 0x80 are decoded text or surrogate escapes here)
_NON_WS = r"[!-~\x80-\U0010ffff]+"
_NON_WS_RE = re.compile(_NON_WS)
# <type>=<value>, type = exactly one lower-case letter, no whitespace around "=" (s5)
_LINE = re.compile(r"([a-z])=(.*)", re.DOTALL)
# proto = token *("/" token)
_PROTO = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")
# bandwidth-fields = *(%x62 "=" bwtype ":" bandwidth CRLF); bwtype = token; bandwidth = 1*DIGIT
_BANDWIDTH = re.compile(rf"({_TOKEN}):([0-9]{{1,20}})")
# repeat-fields = %x72 "=" repeat-interval SP typed-time 1*(SP typed-time)
# typed-time = 1*DIGIT [fixed-len-time-unit]; fixed-len-time-unit = "d" / "h" / "m" / "s"
_TYPED_TIME = re.compile(r"[0-9]{1,20}[dhms]?")
# zone-adjustments = %x7a "=" time SP ["-"] typed-time *(SP time SP ["-"] typed-time)
_ZONE_OFFSET = re.compile(r"-?[0-9]{1,20}[dhms]?")
# key-type = %x6b "=" ("prompt" / "clear:" text / "base64:" base64 / "uri:" uri / key-type)
_KEY = re.compile(r"[A-Za-z0-9\-]+(?::.*)?", re.DOTALL)
# payload types are 7 bits (RFC 3550 s5.1)
_PAYLOAD_TYPE = re.compile(r"[0-9]{1,3}")

# a=rtpmap:<payload type> <encoding name>/<clock rate> [/<encoding parameters>] (s6)
_RTPMAP = re.compile(rf"([0-9]{{1,3}}) +({_TOKEN})/([0-9]{{1,10}})(?:/([0-9]{{1,3}}))?")
# a=fmtp:<format> <format specific parameters> (s6)
_FMTP = re.compile(rf"({_TOKEN})(?: +(.*))?", re.DOTALL)
# RFC 4568 s9.1: tag = 1*9DIGIT; crypto-suite = 1*(ALPHA / DIGIT / "_")
_CRYPTO_TAG = re.compile(r"[0-9]{1,9}")
_CRYPTO_SUITE = re.compile(r"[A-Za-z0-9_]+")
# key-param = key-method ":" key-info; key-method = "inline" / 1*(ALPHA / DIGIT / "_");
# key-info = 1*(%x21-3A / %x3C-7E)
_CRYPTO_KEY_PARAM = re.compile(r"([A-Za-z0-9_]+):([!-:<-~]+)")
# RFC 4568 s6.1 (SRTP): "inline:" <key||salt> ["|" lifetime] ["|" MKI ":" length];
# lifetime = ["2^"] 1*DIGIT
_INLINE_KEY = re.compile(r"[A-Za-z0-9+/=]+(?:\|(?:2\^)?[0-9]{1,20})?(?:\|[0-9]{1,20}:[0-9]{1,3})?")
# session-param = 1*(VCHAR)
_VCHARS = re.compile(r"[!-~]+")
_WSP = re.compile(r"[ \t]+")


def _malformed(detail: str) -> SipProtocolError:
    return SipProtocolError(400, "Bad Request", detail)


def _not_acceptable(detail: str) -> SipProtocolError:
    return SipProtocolError(488, "Not Acceptable Here", detail)


def _fields(value: str) -> list[str]:
    """The SP-separated fields of a structured line, tolerating runs of spaces."""
    return [part for part in value.split(" ") if part]


def _number(text: str, what: str, *, digits: int = 20, maximum: int | None = None) -> int:
    # The digit cap also keeps int() clear of Python's 4300-digit conversion limit.
    if not re.fullmatch(rf"[0-9]{{1,{digits}}}", text):
        raise _malformed(f"{what} {text!r} is not a number")
    number = int(text)
    if maximum is not None and number > maximum:
        raise _malformed(f"{what} {number} is out of range (max {maximum})")
    return number


def _port(text: str, what: str = "port") -> int:
    return _number(text, what, digits=5, maximum=65535)


def _token(text: str, what: str) -> str:
    if not _TOKEN_RE.fullmatch(text):
        raise _malformed(f"{what} {text!r} is not a token")
    return text


def _non_ws(text: str, what: str) -> str:
    if not _NON_WS_RE.fullmatch(text):
        raise _malformed(f"{what} {text!r} is not a non-whitespace string")
    return text


# -- values ---------------------------------------------------------------------------------------


class Direction(StrEnum):
    """The direction attributes of RFC 4566 s6, as RFC 3264 s5.1 uses them."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @classmethod
    def from_flags(cls, *, sends: bool, receives: bool) -> Direction:
        """The direction that sends and/or receives as given."""
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    @property
    def sends(self) -> bool:
        """Whether the side declaring this direction sends media."""
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        """Whether the side declaring this direction receives media."""
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    def mirrored(self) -> Direction:
        """The answerer's view of an offered direction (RFC 3264 s6.1): sendonly <-> recvonly."""
        return Direction.from_flags(sends=self.receives, receives=self.sends)

    def intersect(self, other: Direction) -> Direction:
        """What both directions allow: `sendrecv & sendonly` is `sendonly`."""
        return Direction.from_flags(
            sends=self.sends and other.sends, receives=self.receives and other.receives
        )


_DIRECTIONS = frozenset(d.value for d in Direction)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    """An RTP payload format as an rtpmap names it: encoding name, clock rate, channels.

    Encoding names compare case-insensitively (RFC 4855 s3), so use `matches`, not `==`,
    to ask whether two codecs are the same.
    """

    name: str
    clock_rate: int
    channels: int = 1

    def __post_init__(self) -> None:
        if not _TOKEN_RE.fullmatch(self.name):
            raise ValueError(f"codec name {self.name!r} is not an SDP token")
        if self.clock_rate <= 0 or self.channels <= 0:
            raise ValueError(f"codec {self.name}: clock rate and channels must be positive")

    def matches(self, other: Codec) -> bool:
        """Whether `other` is the same payload format (name case-insensitive, RFC 4855 s3)."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock_rate == other.clock_rate
            and self.channels == other.channels
        )

    @property
    def is_telephone_event(self) -> bool:
        """Whether this is the RFC 4733 DTMF event format."""
        return self.name.lower() == "telephone-event"

    def __str__(self) -> str:
        # RFC 4566 s6: the channel count may be omitted when it is one.
        suffix = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{suffix}"


PCMU = Codec(name="PCMU", clock_rate=8000)
PCMA = Codec(name="PCMA", clock_rate=8000)
# G.722 samples at 16 kHz but its RTP clock is 8000, an error kept for compatibility
# (RFC 3551 s4.5.2).
G722 = Codec(name="G722", clock_rate=8000)
# RFC 7587 s7: always "opus/48000/2", whatever is actually sent.
OPUS = Codec(name="opus", clock_rate=48000, channels=2)
TELEPHONE_EVENT = Codec(name="telephone-event", clock_rate=8000)

# RFC 3551 s6 Table 4: the static audio payload types, which apply when no rtpmap redefines them.
STATIC_PAYLOAD_TYPES: Mapping[int, Codec] = {
    0: PCMU,
    3: Codec(name="GSM", clock_rate=8000),
    4: Codec(name="G723", clock_rate=8000),
    5: Codec(name="DVI4", clock_rate=8000),
    6: Codec(name="DVI4", clock_rate=16000),
    7: Codec(name="LPC", clock_rate=8000),
    8: PCMA,
    9: G722,
    10: Codec(name="L16", clock_rate=44100, channels=2),
    11: Codec(name="L16", clock_rate=44100),
    12: Codec(name="QCELP", clock_rate=8000),
    13: Codec(name="CN", clock_rate=8000),
    14: Codec(name="MPA", clock_rate=90000),
    15: Codec(name="G728", clock_rate=8000),
    16: Codec(name="DVI4", clock_rate=11025),
    17: Codec(name="DVI4", clock_rate=22050),
    18: Codec(name="G729", clock_rate=8000),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Attribute:
    """One `a=` line: `a=<name>` (value None) or `a=<name>:<value>` (RFC 4566 s5.13)."""

    name: str
    value: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (s5.2)."""

    username: str
    session_id: int
    session_version: int
    address: str
    net_type: str = "IN"
    addr_type: str = "IP4"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """`c=<nettype> <addrtype> <connection-address>` (s5.7)."""

    address: str
    net_type: str = "IN"
    addr_type: str = "IP4"

    @property
    def host(self) -> str:
        """The address without a multicast `/ttl/count` suffix."""
        return self.address.split("/", 1)[0]

    @property
    def is_null(self) -> bool:
        """Whether this is the RFC 2543 hold address: send neither RTP nor RTCP (RFC 3264 s8.4).

        `::` is the IPv6 spelling some stacks use the same way.
        """
        return self.host in ("0.0.0.0", "::")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Bandwidth:
    """`b=<bwtype>:<bandwidth>` (s5.8), e.g. `AS` in kb/s or `TIAS` in b/s (RFC 3890)."""

    type: str
    value: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """`t=<start-time> <stop-time>` with its `r=` repeat lines kept verbatim (s5.9, s5.10)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RtcpAttribute:
    """`a=rtcp:<port> [<nettype> <addrtype> <connection-address>]` (RFC 3605 s2.1)."""

    port: int
    connection: Connection | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CryptoKey:
    """One key-param of an SDES crypto line: `<method>:<info>` (RFC 4568 s9.1)."""

    method: str
    info: str

    @property
    def key_salt(self) -> str:
        """For `inline`, the base64 master key and salt (RFC 4568 s6.1)."""
        return self.info.split("|", 1)[0]

    @property
    def lifetime(self) -> str | None:
        """For `inline`, the master key lifetime (`2^20` or a number), if given."""
        return next((part for part in self.info.split("|")[1:] if ":" not in part), None)

    @property
    def mki(self) -> str | None:
        """For `inline`, the `<MKI value>:<MKI length>` pair, if given."""
        return next((part for part in self.info.split("|")[1:] if ":" in part), None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CryptoAttribute:
    """`a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]` (RFC 4568 s9.1)."""

    tag: int
    suite: str
    keys: tuple[CryptoKey, ...]
    session_params: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PayloadFormat:
    """A payload type of an m-line with the codec it stands for and its fmtp parameters."""

    payload_type: int
    codec: Codec
    fmtp: str | None = None


# -- attribute grammars ---------------------------------------------------------------------------


def parse_rtpmap(value: str) -> tuple[int, Codec]:
    """Parse an rtpmap value, `0 PCMU/8000` or `96 opus/48000/2` (RFC 4566 s6)."""
    match = _RTPMAP.fullmatch(value.strip(" "))
    if match is None:
        raise _malformed(f"a=rtpmap:{value} does not match <pt> <name>/<rate>[/<channels>]")
    payload_type = _number(match[1], "rtpmap payload type", maximum=127)
    clock_rate = int(match[3])
    channels = 1 if match[4] is None else int(match[4])
    if clock_rate == 0 or channels == 0:
        raise _malformed(f"a=rtpmap:{value}: clock rate and channels must be positive")
    return payload_type, Codec(name=match[2], clock_rate=clock_rate, channels=channels)


def format_rtpmap(payload_type: int, codec: Codec) -> str:
    """The rtpmap value for `codec` on `payload_type`; `parse_rtpmap` reads it back."""
    return f"{payload_type} {codec}"


def parse_fmtp(value: str) -> tuple[str, str]:
    """Parse an fmtp value into (format, parameters), e.g. `101 0-16` (RFC 4566 s6)."""
    match = _FMTP.fullmatch(value.strip(" "))
    if match is None:
        raise _malformed(f"a=fmtp:{value} does not match <format> <parameters>")
    return match[1], (match[2] or "").strip(" ")


def format_fmtp(fmt: str, params: str) -> str:
    """The fmtp value for `fmt`; `parse_fmtp` reads it back."""
    return f"{fmt} {params}" if params else fmt


def parse_ptime(value: str) -> int:
    """Parse `a=ptime` or `a=maxptime`, milliseconds as a whole number (RFC 4566 s6)."""
    return _number(value.strip(" "), "ptime", digits=6)


def parse_rtcp(value: str) -> RtcpAttribute:
    """Parse `a=rtcp:53020` or `a=rtcp:53020 IN IP4 192.0.2.1` (RFC 3605 s2.1)."""
    fields = _fields(value)
    if len(fields) not in (1, 4):
        raise _malformed(f"a=rtcp:{value} does not match <port> [<nettype> <addrtype> <addr>]")
    port = _port(fields[0], "rtcp port")
    if len(fields) == 1:
        return RtcpAttribute(port=port)
    connection = Connection(
        net_type=_token(fields[1], "rtcp nettype"),
        addr_type=_token(fields[2], "rtcp addrtype"),
        address=_non_ws(fields[3], "rtcp address"),
    )
    return RtcpAttribute(port=port, connection=connection)


def format_rtcp(rtcp: RtcpAttribute) -> str:
    """The `a=rtcp` value; `parse_rtcp` reads it back."""
    if rtcp.connection is None:
        return str(rtcp.port)
    c = rtcp.connection
    return f"{rtcp.port} {c.net_type} {c.addr_type} {c.address}"


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse an SDES line, `1 AES_CM_128_HMAC_SHA1_80 inline:<key||salt>[|...]` (RFC 4568)."""
    fields = _WSP.split(value.strip(" \t"))
    if len(fields) < 3:
        raise _malformed(f"a=crypto:{value} does not match <tag> <suite> <key-params>")
    tag, suite, key_params, *session_params = fields
    if not _CRYPTO_TAG.fullmatch(tag):
        raise _malformed(f"a=crypto tag {tag!r} is not 1*9DIGIT")
    if not _CRYPTO_SUITE.fullmatch(suite):
        raise _malformed(f'a=crypto suite {suite!r} is not 1*(ALPHA / DIGIT / "_")')
    keys: list[CryptoKey] = []
    for param in key_params.split(";"):
        match = _CRYPTO_KEY_PARAM.fullmatch(param)
        if match is None:
            raise _malformed(f"a=crypto key-param {param!r} is not <method>:<info>")
        # ABNF string literals are case-insensitive (RFC 5234 s2.3)
        if match[1].lower() == "inline" and not _INLINE_KEY.fullmatch(match[2]):
            raise _malformed(f"a=crypto inline key {match[2]!r} is not <key||salt>[|...]")
        keys.append(CryptoKey(method=match[1], info=match[2]))
    for param in session_params:
        if not _VCHARS.fullmatch(param):
            raise _malformed(f"a=crypto session-param {param!r} is not visible characters")
    return CryptoAttribute(
        tag=int(tag), suite=suite, keys=tuple(keys), session_params=tuple(session_params)
    )


def format_crypto(crypto: CryptoAttribute) -> str:
    """The `a=crypto` value; `parse_crypto` reads it back."""
    keys = ";".join(f"{key.method}:{key.info}" for key in crypto.keys)
    return " ".join([str(crypto.tag), crypto.suite, keys, *crypto.session_params])


def _required(name: str, value: str | None) -> str:
    if value is None:
        raise _malformed(f"a={name} needs a value")
    return value


def _is_rtp(proto: str) -> bool:
    # RTP/AVP, RTP/SAVP, RTP/AVPF, UDP/TLS/RTP/SAVPF, TCP/RTP/AVP...: fmts are payload types.
    return "RTP" in proto.upper().split("/")


def _direction_of(attributes: Sequence[Attribute]) -> Direction | None:
    return next((Direction(a.name) for a in attributes if a.name in _DIRECTIONS), None)


def _has_ice(attributes: Sequence[Attribute]) -> bool:
    return any(a.name == "ice-ufrag" for a in attributes)


# -- descriptions ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MediaDescription:
    """One media section: the `m=` line and the `i=`, `c=`, `b=`, `k=`, `a=` lines under it.

    `formats` are the m-line's `<fmt>` tokens as written (payload type numbers for RTP).
    `port_count` is the `/<number of ports>` suffix, None when absent.
    """

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    title: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    def attribute_values(self, name: str) -> tuple[str | None, ...]:
        """The values of every `a=<name>` line, in order."""
        return tuple(a.value for a in self.attributes if a.name == name)

    def has_attribute(self, name: str) -> bool:
        """Whether an `a=<name>` line is present."""
        return any(a.name == name for a in self.attributes)

    @property
    def is_rejected(self) -> bool:
        """Port 0: the stream is disabled or rejected (RFC 3264 s5.1, s6)."""
        return self.port == 0

    @property
    def rtpmap(self) -> dict[int, Codec]:
        """Payload type -> codec from the `a=rtpmap` lines (the first wins for a repeated pt)."""
        found: dict[int, Codec] = {}
        for value in self.attribute_values("rtpmap"):
            payload_type, codec = parse_rtpmap(_required("rtpmap", value))
            found.setdefault(payload_type, codec)
        return found

    @property
    def fmtp(self) -> dict[str, str]:
        """Format -> parameters from the `a=fmtp` lines (the first wins for a repeated format)."""
        found: dict[str, str] = {}
        for value in self.attribute_values("fmtp"):
            fmt, params = parse_fmtp(_required("fmtp", value))
            found.setdefault(fmt, params)
        return found

    @property
    def payload_formats(self) -> tuple[PayloadFormat, ...]:
        """The m-line's payload types we can name, in the offerer's order of preference.

        A payload type takes its codec from its rtpmap, else from the RFC 3551 static table;
        dynamic types without an rtpmap are left out. Empty for non-RTP media.
        """
        if not _is_rtp(self.proto):
            return ()
        rtpmap, fmtp = self.rtpmap, self.fmtp
        found: list[PayloadFormat] = []
        for fmt in self.formats:
            if not _PAYLOAD_TYPE.fullmatch(fmt):
                continue
            payload_type = int(fmt)
            codec = rtpmap.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type)
            if codec is not None:
                found.append(
                    PayloadFormat(payload_type=payload_type, codec=codec, fmtp=fmtp.get(fmt))
                )
        return tuple(found)

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, None when absent.

        Absent means the session-level attribute applies, else sendrecv (RFC 4566 s6);
        `SessionDescription.direction_for` resolves that.
        """
        return _direction_of(self.attributes)

    @property
    def ptime(self) -> int | None:
        """`a=ptime`, the packet duration in milliseconds the sender wants to receive."""
        values = self.attribute_values("ptime")
        return parse_ptime(_required("ptime", values[0])) if values else None

    @property
    def maxptime(self) -> int | None:
        """`a=maxptime` in milliseconds (RFC 4566 s6)."""
        values = self.attribute_values("maxptime")
        return parse_ptime(_required("maxptime", values[0])) if values else None

    @property
    def rtcp(self) -> RtcpAttribute | None:
        """`a=rtcp`, where the peer wants RTCP when not at RTP port + 1 (RFC 3605)."""
        values = self.attribute_values("rtcp")
        return parse_rtcp(_required("rtcp", values[0])) if values else None

    @property
    def crypto(self) -> tuple[CryptoAttribute, ...]:
        """The SDES `a=crypto` lines, in the offerer's order of preference (RFC 4568)."""
        return tuple(parse_crypto(_required("crypto", v)) for v in self.attribute_values("crypto"))

    @property
    def rtcp_mux(self) -> bool:
        """Whether `a=rtcp-mux` asks for RTP and RTCP on one port (RFC 5761 s5.1.1)."""
        return self.has_attribute("rtcp-mux")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription:
    """A whole SDP body (RFC 4566 s5).

    Rarely used fields are kept as text so they survive a round trip: `i=` (`information`),
    `u=`, `e=`, `p=`, `z=` (`time_zones`), `k=` and the `r=` lines of each `Timing`.
    """

    origin: Origin
    session_name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    timing: tuple[Timing, ...] = (Timing(),)
    time_zones: str | None = None
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()

    @property
    def direction(self) -> Direction | None:
        """The session-level direction attribute, None when absent."""
        return _direction_of(self.attributes)

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """Where `media` is sent: its own `c=`, else the session's (RFC 4566 s5.7)."""
        return media.connection or self.connection

    def direction_for(self, media: MediaDescription) -> Direction:
        """The direction of `media`: its attribute, else the session's, else sendrecv (s6)."""
        return media.direction or self.direction or Direction.SENDRECV

    def is_on_hold(self, media: MediaDescription) -> bool:
        """Whether the sender of this description asks us not to send `media` to it.

        That is sendonly or inactive (RFC 3264 s8.4), or the RFC 2543 null address `c=0.0.0.0`.
        With ICE a null `c=` is only the default before candidates (RFC 8839 s5.1), not a hold.
        """
        if not self.direction_for(media).receives:
            return True
        connection = self.connection_for(media)
        ice = _has_ice(media.attributes) or _has_ice(self.attributes)
        return connection is not None and connection.is_null and not ice


# -- parse ----------------------------------------------------------------------------------------

_Entry = tuple[int, str, str]


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body (RFC 4566), or raise `SipProtocolError(400)` saying what is wrong.

    Text is UTF-8 (RFC 4566 s5); other bytes are kept as surrogate escapes so that they
    serialise back unchanged.
    """
    if isinstance(data, str):
        if len(data) > MAX_SDP_BYTES:
            raise _malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
        try:
            data = data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise _malformed("SDP text is not encodable as UTF-8") from None
    if len(data) > MAX_SDP_BYTES:
        raise _malformed(f"SDP larger than {MAX_SDP_BYTES} bytes")
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:
        raise _malformed("SDP contains a NUL byte")
    lines = text.split("\n")
    # A body ends with CRLF; tolerate LF and extra blank lines after the last field.
    while lines and lines[-1] in ("", "\r"):
        lines.pop()
    if not lines:
        raise _malformed("empty SDP")
    if len(lines) > MAX_SDP_LINES:
        raise _malformed(f"SDP has more than {MAX_SDP_LINES} lines")
    entries: list[_Entry] = []
    for number, raw_line in enumerate(lines, 1):
        line = raw_line.removesuffix("\r")
        match = _LINE.fullmatch(line)
        if match is None:
            raise _malformed(f"line {number}: {line[:40]!r} is not <type>=<value> (RFC 4566 s5)")
        if "\r" in match[2]:
            raise _malformed(f"line {number}: bare CR in value")
        entries.append((number, match[1], match[2]))
    if entries[0][1] != "v":
        raise _malformed("line 1: an SDP body starts with v= (RFC 4566 s5)")
    starts = [i for i, (_, kind, _) in enumerate(entries) if kind == "m"]
    if len(starts) > MAX_MEDIA:
        raise _malformed(f"more than {MAX_MEDIA} media descriptions")
    # Session-level errors first, so that the first bad line is the one reported.
    sd = _parse_session(entries[: starts[0]] if starts else entries)
    ends = [*starts[1:], len(entries)] if starts else []
    media = tuple(_parse_media(entries[a:b]) for a, b in zip(starts, ends, strict=True))
    if sd.connection is None:
        for (number, _, _), md in zip((entries[i] for i in starts), media, strict=True):
            if md.connection is None and not md.is_rejected:
                raise _malformed(
                    f"line {number}: no c= for this media and none at session level (RFC 4566 s5.7)"
                )
    return dataclasses.replace(sd, media=media)


def _once(current: object, kind: str) -> None:
    if current is not None:
        raise _malformed(f"more than one {kind}= line in this section")


def _at(number: int, error: SipProtocolError) -> SipProtocolError:
    return _malformed(f"line {number}: {error.detail}")


def _parse_session(entries: Sequence[_Entry]) -> SessionDescription:
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
                version = _number(value, "version")
                if version != 0:
                    raise _malformed(f"SDP version {version} is not supported (RFC 4566 s5.1)")
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
                    raise _malformed("r= must follow a t= line (RFC 4566 s5.10)")
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
                raise _malformed(f"{kind}= is not an SDP session-level line (RFC 4566 s5)")
        except SipProtocolError as error:
            raise _at(number, error) from None
    if origin is None:
        raise _malformed("no o= line (RFC 4566 s5.2)")
    if name is None:
        raise _malformed("no s= line (RFC 4566 s5.3)")
    if not timings:
        raise _malformed("no t= line (RFC 4566 s5.9)")
    if sum(a.name in _DIRECTIONS for a in attributes) > 1:
        raise _malformed("more than one session-level direction attribute (RFC 3264 s5.1)")
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
    )


def _parse_media(entries: Sequence[_Entry]) -> MediaDescription:
    m_number, _, m_value = entries[0]
    try:
        media, port, port_count, proto, formats = _parse_media_line(m_value)
    except SipProtocolError as error:
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
                raise _malformed(f"{kind}= is not allowed in a media description (RFC 4566 s5)")
        except SipProtocolError as error:
            raise _at(number, error) from None
    if sum(a.name in _DIRECTIONS for a in attributes) > 1:
        raise _malformed(f"line {m_number}: more than one direction attribute in this media")
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
    fields = _fields(value)
    if len(fields) != 6:
        raise _malformed(
            "o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>"
        )
    username, session_id, session_version, net_type, addr_type, address = fields
    return Origin(
        username=_non_ws(username, "o= username"),
        # sess-id = 1*DIGIT; 40 digits cover 128-bit ids with room to spare
        session_id=_number(session_id, "o= sess-id", digits=40),
        session_version=_number(session_version, "o= sess-version", digits=40),
        net_type=_token(net_type, "o= nettype"),
        addr_type=_token(addr_type, "o= addrtype"),
        address=_non_ws(address, "o= address"),
    )


def _parse_connection(value: str) -> Connection:
    fields = _fields(value)
    if len(fields) != 3:
        raise _malformed("c= needs <nettype> <addrtype> <connection-address>")
    return Connection(
        net_type=_token(fields[0], "c= nettype"),
        addr_type=_token(fields[1], "c= addrtype"),
        address=_non_ws(fields[2], "c= address"),
    )


def _parse_bandwidth(value: str) -> Bandwidth:
    match = _BANDWIDTH.fullmatch(value)
    if match is None:
        raise _malformed(f"b={value} does not match <bwtype>:<bandwidth>")
    return Bandwidth(type=match[1], value=int(match[2]))


def _parse_timing(value: str) -> Timing:
    fields = _fields(value)
    if len(fields) != 2:
        raise _malformed("t= needs <start-time> <stop-time>")
    return Timing(start=_number(fields[0], "t= start"), stop=_number(fields[1], "t= stop"))


def _parse_repeat(value: str) -> str:
    fields = _fields(value)
    if len(fields) < 3 or not all(_TYPED_TIME.fullmatch(f) for f in fields):
        raise _malformed(f"r={value} does not match <interval> <duration> <offsets>")
    return value


def _parse_zones(value: str) -> str:
    fields = _fields(value)
    if not fields or len(fields) % 2 or not all(_ZONE_OFFSET.fullmatch(f) for f in fields):
        raise _malformed(f"z={value} does not match <adjustment time> <offset> ...")
    return value


def _parse_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise _malformed(f"k= {value!r} does not match <method>[:<key>]")
    return value


def _parse_attribute(value: str, *, media_level: bool) -> Attribute:
    # attribute = (att-field ":" att-value) / att-field; att-field = token (s9)
    name, colon, rest = value.partition(":")
    _token(name, "attribute name")
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
        check(_required(attribute.name, attribute.value))


def _parse_media_line(value: str) -> tuple[str, int, int | None, str, tuple[str, ...]]:
    # media-field = %x6d "=" media SP port ["/" integer] SP proto 1*(SP fmt) CRLF
    fields = _fields(value)
    if len(fields) < 4:
        raise _malformed("m= needs <media> <port>[/<count>] <proto> <fmt> ...")
    media, port_text, proto, *formats = fields
    _token(media, "m= media")
    port_text, slash, count_text = port_text.partition("/")
    port = _port(port_text, "m= port")
    port_count = _number(count_text, "m= port count", digits=5) if slash else None
    if port_count == 0:
        raise _malformed("m= port count must be at least 1")
    if not _PROTO.fullmatch(proto):
        raise _malformed(f'm= proto {proto!r} is not token *("/" token)')
    if len(formats) > MAX_FORMATS:
        raise _malformed(f"m= has more than {MAX_FORMATS} formats")
    for fmt in formats:
        _token(fmt, "m= fmt")
        # RFC 4566 s5.14: with an RTP profile the fmts are RTP payload type numbers.
        if _is_rtp(proto):
            _number(fmt, "m= payload type", digits=3, maximum=127)
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


# -- offer/answer (RFC 3264) ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AudioAnswer:
    """The outcome of negotiating the audio stream of an offer (RFC 3264 s6.1).

    `direction` is ours, as the answer states it. `remote_*` say where to send RTP and RTCP;
    when `on_hold` is true the offerer asked us not to send at all. `offered_crypto` are the
    offer's SDES lines for the media layer to choose from when `proto` is RTP/SAVP.
    """

    media_index: int
    proto: str
    audio: PayloadFormat
    telephone_event: PayloadFormat | None
    ptime: int | None
    direction: Direction
    on_hold: bool
    remote_address: str
    remote_port: int
    remote_rtcp_address: str
    remote_rtcp_port: int
    rtcp_mux: bool
    offered_crypto: tuple[CryptoAttribute, ...] = ()


def negotiate_audio(
    offer: SessionDescription,
    supported: Sequence[Codec],
    *,
    prefer_offer_order: bool = True,
    protos: Collection[str] = ("RTP/AVP",),
    direction: Direction = Direction.SENDRECV,
    rtcp_mux: bool = False,
) -> AudioAnswer:
    """Accept the first offered audio stream we can serve; raise 488 if there is none.

    `supported` lists our codecs, most preferred first, plus telephone-event if we take RFC
    4733 DTMF. The codec is the first offered one we support (the offerer's preference, RFC 3264
    s6.1), or with `prefer_offer_order=False` the first of ours that is offered. The offer's
    payload type numbers are kept. `protos` are the transports we can answer; `direction` is
    what we are willing to do; `rtcp_mux` says whether we accept RFC 5761 multiplexing.
    Other m-lines are for `build_answer` to reject with port 0.
    """
    accepted = {proto.upper() for proto in protos}
    primaries = [codec for codec in supported if not codec.is_telephone_event]
    events = [codec for codec in supported if codec.is_telephone_event]
    reasons: list[str] = []
    for index, md in enumerate(offer.media):
        if md.media != "audio" or md.is_rejected:
            continue
        if md.proto.upper() not in accepted:
            reasons.append(f"m-line {index}: transport {md.proto} not supported")
            continue
        offered = md.payload_formats
        chosen = _choose_codec(offered, primaries, prefer_offer_order=prefer_offer_order)
        if chosen is None:
            names = ", ".join(str(p.codec) for p in offered) or "none we can name"
            reasons.append(f"m-line {index}: no common codec (offered {names})")
            continue
        connection = offer.connection_for(md)
        if connection is None:
            raise _malformed(f"m-line {index}: no c= line (RFC 4566 s5.7)")
        offered_direction = offer.direction_for(md)
        if offer.is_on_hold(md):
            # RFC 3264 s8.4: a null address means send neither RTP nor RTCP there.
            offered_direction = offered_direction.intersect(Direction.SENDONLY)
        mux = rtcp_mux and md.rtcp_mux
        rtcp = md.rtcp
        if mux:
            rtcp_address, rtcp_port = connection.host, md.port
        elif rtcp is not None:
            rtcp_host = rtcp.connection.host if rtcp.connection else connection.host
            rtcp_address, rtcp_port = rtcp_host, rtcp.port
        else:
            # RFC 3550 s11: RTCP goes to the next higher port
            rtcp_address, rtcp_port = connection.host, md.port + 1
        return AudioAnswer(
            media_index=index,
            proto=md.proto,
            audio=chosen,
            telephone_event=_choose_event(offered, events, chosen.codec.clock_rate),
            ptime=md.ptime,
            direction=offered_direction.mirrored().intersect(direction),
            on_hold=not offered_direction.receives,
            remote_address=connection.host,
            remote_port=md.port,
            remote_rtcp_address=rtcp_address,
            remote_rtcp_port=rtcp_port,
            rtcp_mux=mux,
            offered_crypto=md.crypto,
        )
    raise _not_acceptable("; ".join(reasons) or "no audio stream offered")


def _choose_codec(
    offered: Sequence[PayloadFormat], ours: Sequence[Codec], *, prefer_offer_order: bool
) -> PayloadFormat | None:
    if prefer_offer_order:
        return next((p for p in offered if any(p.codec.matches(c) for c in ours)), None)
    for codec in ours:
        for payload in offered:
            if payload.codec.matches(codec):
                return payload
    return None


def _choose_event(
    offered: Sequence[PayloadFormat], ours: Sequence[Codec], clock_rate: int
) -> PayloadFormat | None:
    events = [p for p in offered if any(p.codec.matches(c) for c in ours)]
    # RFC 4733 s2.1: events use the clock of the audio they accompany, when offered.
    same_clock = [p for p in events if p.codec.clock_rate == clock_rate]
    candidates = same_clock or events
    return candidates[0] if candidates else None


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")


def _payload_attributes(payload: PayloadFormat) -> list[Attribute]:
    found = [Attribute(name="rtpmap", value=format_rtpmap(payload.payload_type, payload.codec))]
    if payload.fmtp is not None:
        found.append(
            Attribute(name="fmtp", value=format_fmtp(str(payload.payload_type), payload.fmtp))
        )
    return found


def _session(
    *,
    address: str,
    session_id: int,
    session_version: int,
    username: str,
    session_name: str,
    timing: tuple[Timing, ...],
    media: tuple[MediaDescription, ...],
) -> SessionDescription:
    addr_type = _addr_type(address)
    return SessionDescription(
        origin=Origin(
            username=username,
            session_id=session_id,
            session_version=session_version,
            addr_type=addr_type,
            address=address,
        ),
        session_name=session_name,
        connection=Connection(addr_type=addr_type, address=address),
        timing=timing,
        media=media,
    )


def build_answer(
    offer: SessionDescription,
    audio: AudioAnswer,
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    username: str = "-",
    session_name: str = "-",
    crypto: CryptoAttribute | None = None,
) -> SessionDescription:
    """The answer to `offer` accepting `audio` at our `address`:`port` (RFC 3264 s6).

    It has one m-line per offered m-line, in the same order; all but the accepted audio
    stream are rejected with port 0. The t= lines equal the offer's (s6). `crypto` is our SDES
    line, required when the accepted transport is RTP/SAVP(F) (RFC 4568 s7.1.2).
    """
    _check_port(port)
    if not 0 <= audio.media_index < len(offer.media):
        raise ValueError(f"media index {audio.media_index} is not in the offer")
    if crypto is None and audio.proto.upper() in ("RTP/SAVP", "RTP/SAVPF"):
        raise ValueError(f"an answer on {audio.proto} needs a crypto attribute (RFC 4568)")
    media: list[MediaDescription] = []
    for index, md in enumerate(offer.media):
        if index != audio.media_index:
            # RFC 3264 s6: a rejected stream keeps its m-line with port 0.
            media.append(
                MediaDescription(media=md.media, port=0, proto=md.proto, formats=md.formats)
            )
            continue
        payloads = (
            [audio.audio] if audio.telephone_event is None else [audio.audio, audio.telephone_event]
        )
        attributes = [a for payload in payloads for a in _payload_attributes(payload)]
        if audio.ptime is not None:
            attributes.append(Attribute(name="ptime", value=str(audio.ptime)))
        if crypto is not None:
            attributes.append(Attribute(name="crypto", value=format_crypto(crypto)))
        if audio.rtcp_mux:
            attributes.append(Attribute(name="rtcp-mux"))
        attributes.append(Attribute(name=audio.direction.value))
        media.append(
            MediaDescription(
                media="audio",
                port=port,
                proto=md.proto,
                formats=tuple(str(p.payload_type) for p in payloads),
                attributes=tuple(attributes),
            )
        )
    return _session(
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        session_name=session_name,
        timing=offer.timing,
        media=tuple(media),
    )


def make_offer(
    codecs: Sequence[Codec],
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    username: str = "-",
    session_name: str = "-",
    ptime: int | None = 20,
    direction: Direction = Direction.SENDRECV,
    proto: str = "RTP/AVP",
    fmtp: Mapping[Codec, str] | None = None,
    crypto: Sequence[CryptoAttribute] = (),
    rtcp_mux: bool = False,
) -> SessionDescription:
    """An offer of one audio stream with `codecs`, most preferred first (RFC 3264 s5).

    Static codecs take their RFC 3551 payload types; others take dynamic ones from 96 (101 for
    telephone-event/8000, the number most equipment expects). `fmtp` maps a codec to its
    parameters; by default telephone-event offers events 0-16 (RFC 4733 s7.1.1).
    """
    _check_port(port)
    if not codecs:
        raise ValueError("an offer needs at least one codec")
    params = {TELEPHONE_EVENT: "0-16"} if fmtp is None else fmtp
    payloads: list[PayloadFormat] = []
    used: set[int] = set()
    for codec in codecs:
        if any(p.codec.matches(codec) for p in payloads):
            raise ValueError(f"codec {codec} is listed twice")
        payload_type = next(
            (pt for pt, static in STATIC_PAYLOAD_TYPES.items() if static.matches(codec)), None
        )
        if payload_type is None and codec.matches(TELEPHONE_EVENT) and 101 not in used:
            payload_type = 101
        if payload_type is None:
            payload_type = next((pt for pt in range(96, 128) if pt not in used), None)
            if payload_type is None:
                raise ValueError("more codecs than dynamic payload types")
        used.add(payload_type)
        codec_fmtp = next((value for c, value in params.items() if c.matches(codec)), None)
        payloads.append(PayloadFormat(payload_type=payload_type, codec=codec, fmtp=codec_fmtp))
    attributes = [a for payload in payloads for a in _payload_attributes(payload)]
    if ptime is not None:
        attributes.append(Attribute(name="ptime", value=str(ptime)))
    attributes.extend(Attribute(name="crypto", value=format_crypto(c)) for c in crypto)
    if rtcp_mux:
        attributes.append(Attribute(name="rtcp-mux"))
    attributes.append(Attribute(name=direction.value))
    media = MediaDescription(
        media="audio",
        port=port,
        proto=proto,
        formats=tuple(str(p.payload_type) for p in payloads),
        attributes=tuple(attributes),
    )
    return _session(
        address=address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        session_name=session_name,
        timing=(Timing(),),
        media=(media,),
    )
