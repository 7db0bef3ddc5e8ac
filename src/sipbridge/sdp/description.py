"""The SDP data model (RFC 4566 s5) and the grammars of the attributes we act on.

Every value is a frozen dataclass, so descriptions compare, hash and print. The attribute
parsers (`parse_rtpmap`, `parse_crypto`...) follow RFC 4566 s6, RFC 3605 and RFC 4568 and raise
`SdpError(MALFORMED)`; each has a `format_*` that it reads back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final

from sipbridge.sdp._abnf import (
    TOKEN,
    TOKEN_RE,
    check_non_ws,
    check_token,
    is_rtp,
    malformed,
    parse_number,
    parse_port,
    required,
    split_fields,
)

__all__ = [
    "G722",
    "OPUS",
    "PCMA",
    "PCMU",
    "STATIC_PAYLOAD_TYPES",
    "TELEPHONE_EVENT",
    "Attribute",
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
    "format_crypto",
    "format_fmtp",
    "format_rtcp",
    "format_rtpmap",
    "parse_crypto",
    "parse_fmtp",
    "parse_ptime",
    "parse_rtcp",
    "parse_rtpmap",
]

# -- grammars of the attributes (RFC 4566 s6, RFC 4568 s9.1) --------------------------------------

# payload types are 7 bits (RFC 3550 s5.1)
_PAYLOAD_TYPE = re.compile(r"[0-9]{1,3}")
# a=rtpmap:<payload type> <encoding name>/<clock rate> [/<encoding parameters>] (s6)
_RTPMAP = re.compile(rf"([0-9]{{1,3}}) +({TOKEN})/([0-9]{{1,10}})(?:/([0-9]{{1,3}}))?")
# a=fmtp:<format> <format specific parameters> (s6)
_FMTP = re.compile(rf"({TOKEN})(?: +(.*))?", re.DOTALL)
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
        if not TOKEN_RE.fullmatch(self.name):
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


PCMU: Final[Codec] = Codec(name="PCMU", clock_rate=8000)
PCMA: Final[Codec] = Codec(name="PCMA", clock_rate=8000)
# G.722 samples at 16 kHz but its RTP clock is 8000, an error kept for compatibility
# (RFC 3551 s4.5.2).
G722: Final[Codec] = Codec(name="G722", clock_rate=8000)
# RFC 7587 s7: always "opus/48000/2", whatever is actually sent.
OPUS: Final[Codec] = Codec(name="opus", clock_rate=48000, channels=2)
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


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class Attribute:
    """One `a=` line: `a=<name>` (value None) or `a=<name>:<value>` (RFC 4566 s5.13)."""

    name: str
    value: str | None = None

    def __init__(self, *, name: str, value: str | None = None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (s5.2)."""

    username: str
    session_id: int
    session_version: int
    address: str
    net_type: str = "IN"
    addr_type: str = "IP4"

    def __init__(
        self,
        *,
        username: str,
        session_id: int,
        session_version: int,
        address: str,
        net_type: str = "IN",
        addr_type: str = "IP4",
    ) -> None:
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "session_version", session_version)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "net_type", net_type)
        object.__setattr__(self, "addr_type", addr_type)


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class Connection:
    """`c=<nettype> <addrtype> <connection-address>` (s5.7)."""

    address: str
    net_type: str = "IN"
    addr_type: str = "IP4"

    def __init__(self, *, address: str, net_type: str = "IN", addr_type: str = "IP4") -> None:
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "net_type", net_type)
        object.__setattr__(self, "addr_type", addr_type)

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


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class Timing:
    """`t=<start-time> <stop-time>` with its `r=` repeat lines kept verbatim (s5.9, s5.10)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()

    def __init__(self, *, start: int = 0, stop: int = 0, repeats: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "repeats", repeats)


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


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
class PayloadFormat:
    """A payload type of an m-line with the codec it stands for and its fmtp parameters."""

    payload_type: int
    codec: Codec
    fmtp: str | None = None

    def __init__(self, *, payload_type: int, codec: Codec, fmtp: str | None = None) -> None:
        object.__setattr__(self, "payload_type", payload_type)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "fmtp", fmtp)


# -- attribute grammars ---------------------------------------------------------------------------


# rtpmap values already parsed (a trunk sends the same few on every call, and each offer's are
# read twice: checked as the SDP is parsed, then by `MediaDescription.rtpmap`): the value's
# payload type and its codec, which is frozen. Bounded: emptied when full.
_RTPMAPS: dict[str, tuple[int, Codec]] = {}
MAX_CACHED = 256


def parse_rtpmap(value: str) -> tuple[int, Codec]:
    """Parse an rtpmap value, `0 PCMU/8000` or `96 opus/48000/2` (RFC 4566 s6)."""
    known = _RTPMAPS.get(value)
    if known is not None:
        return known
    parsed = _parse_rtpmap(value)
    if len(_RTPMAPS) >= MAX_CACHED:
        _RTPMAPS.clear()
    _RTPMAPS[value] = parsed
    return parsed


def _parse_rtpmap(value: str) -> tuple[int, Codec]:
    match = _RTPMAP.fullmatch(value.strip(" "))
    if match is None:
        raise malformed(f"a=rtpmap:{value} does not match <pt> <name>/<rate>[/<channels>]")
    payload_type = parse_number(match[1], "rtpmap payload type", maximum=127)
    clock_rate = int(match[3])
    channels = 1 if match[4] is None else int(match[4])
    if clock_rate == 0 or channels == 0:
        raise malformed(f"a=rtpmap:{value}: clock rate and channels must be positive")
    return payload_type, Codec(name=match[2], clock_rate=clock_rate, channels=channels)


def format_rtpmap(payload_type: int, codec: Codec) -> str:
    """The rtpmap value for `codec` on `payload_type`; `parse_rtpmap` reads it back."""
    return f"{payload_type} {codec}"


def parse_fmtp(value: str) -> tuple[str, str]:
    """Parse an fmtp value into (format, parameters), e.g. `101 0-16` (RFC 4566 s6)."""
    match = _FMTP.fullmatch(value.strip(" "))
    if match is None:
        raise malformed(f"a=fmtp:{value} does not match <format> <parameters>")
    return match[1], (match[2] or "").strip(" ")


def format_fmtp(fmt: str, params: str) -> str:
    """The fmtp value for `fmt`; `parse_fmtp` reads it back."""
    return f"{fmt} {params}" if params else fmt


def parse_ptime(value: str) -> int:
    """Parse `a=ptime` or `a=maxptime`, milliseconds as a whole number (RFC 4566 s6)."""
    return parse_number(value.strip(" "), "ptime", digits=6)


def parse_rtcp(value: str) -> RtcpAttribute:
    """Parse `a=rtcp:53020` or `a=rtcp:53020 IN IP4 192.0.2.1` (RFC 3605 s2.1)."""
    fields = split_fields(value)
    if len(fields) not in (1, 4):
        raise malformed(f"a=rtcp:{value} does not match <port> [<nettype> <addrtype> <addr>]")
    port = parse_port(fields[0], "rtcp port")
    if len(fields) == 1:
        return RtcpAttribute(port=port)
    connection = Connection(
        net_type=check_token(fields[1], "rtcp nettype"),
        addr_type=check_token(fields[2], "rtcp addrtype"),
        address=check_non_ws(fields[3], "rtcp address"),
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
        raise malformed(f"a=crypto:{value} does not match <tag> <suite> <key-params>")
    tag, suite, key_params, *session_params = fields
    if not _CRYPTO_TAG.fullmatch(tag):
        raise malformed(f"a=crypto tag {tag!r} is not 1*9DIGIT")
    if not _CRYPTO_SUITE.fullmatch(suite):
        raise malformed(f'a=crypto suite {suite!r} is not 1*(ALPHA / DIGIT / "_")')
    keys: list[CryptoKey] = []
    for param in key_params.split(";"):
        match = _CRYPTO_KEY_PARAM.fullmatch(param)
        if match is None:
            raise malformed(f"a=crypto key-param {param!r} is not <method>:<info>")
        # ABNF string literals are case-insensitive (RFC 5234 s2.3)
        if match[1].lower() == "inline" and not _INLINE_KEY.fullmatch(match[2]):
            raise malformed(f"a=crypto inline key {match[2]!r} is not <key||salt>[|...]")
        keys.append(CryptoKey(method=match[1], info=match[2]))
    for param in session_params:
        if not _VCHARS.fullmatch(param):
            raise malformed(f"a=crypto session-param {param!r} is not visible characters")
    return CryptoAttribute(
        tag=int(tag), suite=suite, keys=tuple(keys), session_params=tuple(session_params)
    )


def format_crypto(crypto: CryptoAttribute) -> str:
    """The `a=crypto` value; `parse_crypto` reads it back."""
    keys = ";".join(f"{key.method}:{key.info}" for key in crypto.keys)
    return " ".join([str(crypto.tag), crypto.suite, keys, *crypto.session_params])


def _direction_of(attributes: Sequence[Attribute]) -> Direction | None:
    return next((Direction(a.name) for a in attributes if a.name in _DIRECTIONS), None)


def _has_ice(attributes: Sequence[Attribute]) -> bool:
    return any(a.name == "ice-ufrag" for a in attributes)


# -- descriptions ---------------------------------------------------------------------------------


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
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

    def __init__(
        self,
        *,
        media: str,
        port: int,
        proto: str,
        formats: tuple[str, ...],
        port_count: int | None = None,
        title: str | None = None,
        connection: Connection | None = None,
        bandwidths: tuple[Bandwidth, ...] = (),
        key: str | None = None,
        attributes: tuple[Attribute, ...] = (),
    ) -> None:
        object.__setattr__(self, "media", media)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "port_count", port_count)
        object.__setattr__(self, "title", title)
        object.__setattr__(self, "connection", connection)
        object.__setattr__(self, "bandwidths", bandwidths)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "attributes", attributes)

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
            payload_type, codec = parse_rtpmap(required("rtpmap", value))
            found.setdefault(payload_type, codec)
        return found

    @property
    def fmtp(self) -> dict[str, str]:
        """Format -> parameters from the `a=fmtp` lines (the first wins for a repeated format)."""
        found: dict[str, str] = {}
        for value in self.attribute_values("fmtp"):
            fmt, params = parse_fmtp(required("fmtp", value))
            found.setdefault(fmt, params)
        return found

    @property
    def payload_formats(self) -> tuple[PayloadFormat, ...]:
        """The m-line's payload types we can name, in the offerer's order of preference.

        A payload type takes its codec from its rtpmap, else from the RFC 3551 static table;
        dynamic types without an rtpmap are left out. Empty for non-RTP media.
        """
        if not is_rtp(self.proto):
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
        return parse_ptime(required("ptime", values[0])) if values else None

    @property
    def maxptime(self) -> int | None:
        """`a=maxptime` in milliseconds (RFC 4566 s6)."""
        values = self.attribute_values("maxptime")
        return parse_ptime(required("maxptime", values[0])) if values else None

    @property
    def rtcp(self) -> RtcpAttribute | None:
        """`a=rtcp`, where the peer wants RTCP when not at RTP port + 1 (RFC 3605)."""
        values = self.attribute_values("rtcp")
        return parse_rtcp(required("rtcp", values[0])) if values else None

    @property
    def crypto(self) -> tuple[CryptoAttribute, ...]:
        """The SDES `a=crypto` lines, in the offerer's order of preference (RFC 4568)."""
        return tuple(parse_crypto(required("crypto", v)) for v in self.attribute_values("crypto"))

    @property
    def rtcp_mux(self) -> bool:
        """Whether `a=rtcp-mux` asks for RTP and RTCP on one port (RFC 5761 s5.1.1)."""
        return self.has_attribute("rtcp-mux")


@dataclasses.dataclass(init=False, frozen=True, slots=True, kw_only=True)
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

    def __init__(
        self,
        *,
        origin: Origin,
        session_name: str = "-",
        version: int = 0,
        information: str | None = None,
        uri: str | None = None,
        emails: tuple[str, ...] = (),
        phones: tuple[str, ...] = (),
        connection: Connection | None = None,
        bandwidths: tuple[Bandwidth, ...] = (),
        timing: tuple[Timing, ...] = (Timing(),),
        time_zones: str | None = None,
        key: str | None = None,
        attributes: tuple[Attribute, ...] = (),
        media: tuple[MediaDescription, ...] = (),
    ) -> None:
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "session_name", session_name)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "information", information)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "emails", emails)
        object.__setattr__(self, "phones", phones)
        object.__setattr__(self, "connection", connection)
        object.__setattr__(self, "bandwidths", bandwidths)
        object.__setattr__(self, "timing", timing)
        object.__setattr__(self, "time_zones", time_zones)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "media", media)

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
