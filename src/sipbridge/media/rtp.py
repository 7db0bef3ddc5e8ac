"""RTP and RTCP packets (RFC 3550 s5.1, s6.4-6.6): parse and serialize, no I/O.

Every parse has a serialize and the two round-trip. Bad input raises `MediaError`, never any other
exception, so the transport edge can count and drop a bad datagram without crashing the call.

RTP is the hot path (one G.711 call is 50 packets/s each way): `parse_rtp` reads the fixed header
with one `struct.unpack_from` and allocates nothing beyond the packet object and its payload
slice when there are no CSRCs, extension or padding - the usual case for telephony.

RTP and RTCP may share one port (RFC 5761); `is_rtcp` tells them apart by the second octet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sipbridge.media.errors import MediaError

__all__ = [
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Goodbye",
    "MediaError",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "RtpHeaderExtension",
    "RtpPacket",
    "SdesChunk",
    "SdesItem",
    "SenderInfo",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcpPacket",
    "build_compound_report",
    "is_rtcp",
    "parse_rtcp",
    "parse_rtp",
    "serialize_rtcp",
]

RTP_VERSION = 2

# RFC 3550 s5.1: V(2) P(1) X(1) CC(4) | M(1) PT(7) | sequence number(16) | timestamp | SSRC
_RTP_HEADER = struct.Struct("!BBHII")
_RTP_HEADER_SIZE = _RTP_HEADER.size  # 12
# One precompiled struct per list length of 32-bit words (CSRC count is 4 bits, the BYE source
# count 5), so parsing builds no format strings.
_WORD_LISTS = tuple(struct.Struct(f"!{count}I") for count in range(32))
# RFC 3550 s5.3.1: defined by profile(16) | length in 32-bit words(16), then the data
_RTP_EXTENSION = struct.Struct("!HH")

# RFC 5761 s4: RTP payload types 72-76 would put 200-204 (SR, RR, SDES, BYE, APP) in the second
# octet when the marker bit is set, so a muxed receiver could not tell RTP from RTCP.
_RTCP_CONFLICTING_PAYLOAD_TYPES = range(72, 77)

# RFC 3550 s12.1 packet types
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203

# RFC 3550 s12.2 SDES item types
SDES_END = 0
SDES_CNAME = 1

# RFC 3550 s6.4.1: V(2) P(1) RC(5) | PT(8) | length in 32-bit words minus one(16)
_RTCP_HEADER = struct.Struct("!BBH")
# SSRC of sender, NTP timestamp (64), RTP timestamp, sender's packet count, sender's octet count
_SENDER_INFO = struct.Struct("!IQIII")
# SSRC, fraction lost(8) + cumulative lost(24), extended highest seq, jitter, LSR, DLSR
_REPORT_BLOCK = struct.Struct("!IIIIII")
_SSRC = struct.Struct("!I")
_MAX_COUNT = 31  # the 5-bit RC/SC field


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise MediaError(message)


# --- RTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpHeaderExtension:
    """The one header extension an RTP packet may carry (RFC 3550 s5.3.1).

    `data` is the extension body; its length must be a multiple of 4 octets (the wire carries it
    in 32-bit words). RFC 8285 one- and two-byte elements live inside `data` and are not parsed
    here.
    """

    profile: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpPacket:
    """One RTP packet (RFC 3550 s5.1). Version is always 2.

    `padding` is the number of padding octets (0 when the P bit is clear); it counts the final
    octet that holds the count itself, so a padded packet has `padding >= 1`.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpHeaderExtension | None = None
    padding: int = 0

    @property
    def version(self) -> int:
        return RTP_VERSION

    def serialize(self) -> bytes:
        """The packet's wire bytes; raises `MediaError` if a field does not fit its width."""
        csrc_count = len(self.csrc)
        _check(0 <= self.payload_type <= 127, f"payload type {self.payload_type} out of range")
        _check(
            self.payload_type not in _RTCP_CONFLICTING_PAYLOAD_TYPES,
            f"payload type {self.payload_type} collides with RTCP (RFC 5761 s4)",
        )
        _check(csrc_count <= 15, f"{csrc_count} CSRCs, at most 15 fit")
        _check(0 <= self.padding <= 255, f"padding of {self.padding} octets does not fit")
        first = (
            (RTP_VERSION << 6)
            | (0x20 if self.padding else 0)
            | (0x10 if self.extension is not None else 0)
            | csrc_count
        )
        second = (0x80 if self.marker else 0) | self.payload_type
        try:
            header = _RTP_HEADER.pack(
                first, second, self.sequence_number, self.timestamp, self.ssrc
            )
            if csrc_count == 0 and self.extension is None and not self.padding:
                return header + self.payload  # the usual telephony packet
            parts = [header]
            if csrc_count:
                parts.append(_WORD_LISTS[csrc_count].pack(*self.csrc))
            if self.extension is not None:
                data = self.extension.data
                _check(len(data) % 4 == 0, "extension data must be a multiple of 4 octets")
                parts.append(_RTP_EXTENSION.pack(self.extension.profile, len(data) // 4))
                parts.append(data)
        except struct.error as exc:
            raise MediaError(f"RTP field out of range: {exc}") from None
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on an RTP/RTCP-multiplexed port is RTCP (RFC 5761 s4).

    RTCP packet types 192-223 occupy the second octet where RTP has the marker bit and payload
    types 64-95, which RTP must not use when multiplexing.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet (RFC 3550 s5.1); raises `MediaError` when it is malformed."""
    length = len(data)
    if length < _RTP_HEADER_SIZE:
        raise MediaError(f"RTP packet of {length} octets is shorter than the 12-octet header")
    first, second, sequence_number, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise MediaError(f"RTP version {first >> 6}, expected 2")
    payload_type = second & 0x7F
    if payload_type in _RTCP_CONFLICTING_PAYLOAD_TYPES:
        raise MediaError(f"payload type {payload_type} is RTCP (RFC 5761 s4)")
    csrc_count = first & 0x0F
    offset = _RTP_HEADER_SIZE + 4 * csrc_count
    if offset > length:
        raise MediaError(f"CSRC count {csrc_count} runs past the end of the packet")
    csrc: tuple[int, ...] = _WORD_LISTS[csrc_count].unpack_from(data, 12) if csrc_count else ()
    extension = None
    if first & 0x10:
        if offset + 4 > length:
            raise MediaError("header extension runs past the end of the packet")
        profile, words = _RTP_EXTENSION.unpack_from(data, offset)
        offset += 4
        end = offset + 4 * words
        if end > length:
            raise MediaError(f"header extension of {words} words runs past the end of the packet")
        extension = RtpHeaderExtension(profile=profile, data=data[offset:end])
        offset = end
    end = length
    padding = 0
    if first & 0x20:
        # RFC 3550 s5.1: the last octet counts the padding, itself included
        padding = data[-1]
        if padding == 0 or offset + padding > length:
            raise MediaError(f"padding of {padding} octets does not fit the packet")
        end -= padding
    return RtpPacket(
        payload_type=payload_type,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=data[offset:end],
        marker=bool(second & 0x80),
        csrc=csrc,
        extension=extension,
        padding=padding,
    )


# --- RTCP --------------------------------------------------------------------------------------


def _rtcp_packet(count: int, packet_type: int, body: bytes) -> bytes:
    """Frame an RTCP body with its common header (RFC 3550 s6.4.1), padding to 32 bits."""
    _check(0 <= count <= _MAX_COUNT, f"count {count} does not fit in 5 bits")
    first = (RTP_VERSION << 6) | count
    remainder = len(body) % 4
    if remainder:
        pad = 4 - remainder
        body += bytes(pad - 1) + bytes((pad,))
        first |= 0x20
    _check(len(body) // 4 <= 0xFFFF, "RTCP packet too long for its 16-bit length field")
    return _RTCP_HEADER.pack(first, packet_type, len(body) // 4) + body


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportBlock:
    """One reception report (RFC 3550 s6.4.1) about the source `ssrc`.

    `cumulative_lost` is 24-bit signed (duplicates can make it negative); `highest_sequence` is the
    extended highest sequence number; `last_sr` is the middle 32 bits of the last SR's NTP
    timestamp and `delay_since_last_sr` is in units of 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    last_sr: int = 0
    delay_since_last_sr: int = 0

    def serialize(self) -> bytes:
        _check(0 <= self.fraction_lost <= 255, f"fraction lost {self.fraction_lost} out of range")
        _check(
            -0x800000 <= self.cumulative_lost <= 0x7FFFFF,
            f"cumulative lost {self.cumulative_lost} does not fit 24 signed bits",
        )
        try:
            return _REPORT_BLOCK.pack(
                self.ssrc,
                (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF),
                self.highest_sequence,
                self.jitter,
                self.last_sr,
                self.delay_since_last_sr,
            )
        except struct.error as exc:
            raise MediaError(f"report block field out of range: {exc}") from None


def _parse_report_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost, highest, jitter, last_sr, delay = _REPORT_BLOCK.unpack_from(body, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(
            ReportBlock(
                ssrc=ssrc,
                fraction_lost=lost >> 24,
                cumulative_lost=cumulative,
                highest_sequence=highest,
                jitter=jitter,
                last_sr=last_sr,
                delay_since_last_sr=delay,
            )
        )
        offset += _REPORT_BLOCK.size
    return tuple(blocks)


def _serialize_report_blocks(reports: Sequence[ReportBlock]) -> bytes:
    _check(len(reports) <= _MAX_COUNT, f"{len(reports)} report blocks, at most 31 fit")
    return b"".join(block.serialize() for block in reports)


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderInfo:
    """The sender information of an SR (RFC 3550 s6.4.1).

    `ntp_timestamp` is the full 64-bit NTP time (32.32 fixed point); `ntp_middle` is what a
    receiver echoes back as LSR.
    """

    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def ntp_middle(self) -> int:
        return (self.ntp_timestamp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderReport:
    """An SR packet (RFC 3550 s6.4.1); `extension` is the profile-specific tail, kept as is."""

    ssrc: int
    sender_info: SenderInfo
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        info = self.sender_info
        try:
            head = _SENDER_INFO.pack(
                self.ssrc,
                info.ntp_timestamp,
                info.rtp_timestamp,
                info.packet_count,
                info.octet_count,
            )
        except struct.error as exc:
            raise MediaError(f"sender report field out of range: {exc}") from None
        body = head + _serialize_report_blocks(self.reports) + self.extension
        return _rtcp_packet(len(self.reports), RTCP_SR, body)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverReport:
    """An RR packet (RFC 3550 s6.4.2); `extension` is the profile-specific tail, kept as is."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        try:
            head = _SSRC.pack(self.ssrc)
        except struct.error as exc:
            raise MediaError(f"SSRC out of range: {exc}") from None
        body = head + _serialize_report_blocks(self.reports) + self.extension
        return _rtcp_packet(len(self.reports), RTCP_RR, body)


@dataclass(frozen=True, slots=True, kw_only=True)
class SdesItem:
    """One SDES item (RFC 3550 s6.5): `type` 1-255 (1 is CNAME) and up to 255 octets of text."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SdesChunk:
    """The SDES items describing one source (RFC 3550 s6.5)."""

    ssrc: int
    items: tuple[SdesItem, ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item's text (RFC 3550 s6.5.1), or None when the chunk has none."""
        for item in self.items:
            if item.type == SDES_CNAME:
                return item.value.decode("utf-8", errors="replace")
        return None

    def serialize(self) -> bytes:
        parts = []
        try:
            parts.append(_SSRC.pack(self.ssrc))
        except struct.error as exc:
            raise MediaError(f"SSRC out of range: {exc}") from None
        for item in self.items:
            _check(1 <= item.type <= 255, f"SDES item type {item.type} out of range")
            _check(len(item.value) <= 255, "SDES item longer than 255 octets")
            parts.append(bytes((item.type, len(item.value))))
            parts.append(item.value)
        size = sum(len(part) for part in parts)
        # RFC 3550 s6.5: a null item ends the list, then null octets up to the next 32-bit boundary
        parts.append(bytes(4 - size % 4))
        return b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDescription:
    """An SDES packet (RFC 3550 s6.5)."""

    chunks: tuple[SdesChunk, ...] = ()

    def serialize(self) -> bytes:
        body = b"".join(chunk.serialize() for chunk in self.chunks)
        return _rtcp_packet(len(self.chunks), RTCP_SDES, body)


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye:
    """A BYE packet (RFC 3550 s6.6): the sources leaving and an optional reason text."""

    ssrcs: tuple[int, ...] = ()
    reason: bytes | None = None

    def serialize(self) -> bytes:
        count = len(self.ssrcs)
        _check(count <= _MAX_COUNT, f"{count} SSRCs, at most 31 fit")
        try:
            body = _WORD_LISTS[count].pack(*self.ssrcs)
        except struct.error as exc:
            raise MediaError(f"SSRC out of range: {exc}") from None
        if self.reason is not None:
            _check(len(self.reason) <= 255, "BYE reason longer than 255 octets")
            body += bytes((len(self.reason),)) + self.reason
            body += bytes(-len(body) % 4)  # RFC 3550 s6.6: null octets to the 32-bit boundary
        return _rtcp_packet(count, RTCP_BYE, body)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownRtcpPacket:
    """An RTCP packet of a type this module does not interpret (APP, RTPFB, XR, ...), kept raw."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        _check(0 <= self.packet_type <= 255, f"packet type {self.packet_type} out of range")
        return _rtcp_packet(self.count, self.packet_type, self.body)


RtcpPacket: TypeAlias = (
    SenderReport | ReceiverReport | SourceDescription | Goodbye | UnknownRtcpPacket
)


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    offset = 0
    length = len(body)
    for _ in range(count):
        if offset + 4 > length:
            raise MediaError("SDES chunk runs past the end of the packet")
        start = offset
        (ssrc,) = _SSRC.unpack_from(body, offset)
        offset += 4
        items = []
        while True:
            if offset >= length:
                raise MediaError("SDES item list has no terminating null item")
            item_type = body[offset]
            if item_type == SDES_END:
                offset += 1
                break
            if offset + 2 > length:
                raise MediaError("SDES item runs past the end of the packet")
            end = offset + 2 + body[offset + 1]
            if end > length:
                raise MediaError("SDES item runs past the end of the packet")
            items.append(SdesItem(type=item_type, value=body[offset + 2 : end]))
            offset = end
        offset += -(offset - start) % 4
        if offset > length:
            raise MediaError("SDES chunk padding runs past the end of the packet")
        chunks.append(SdesChunk(ssrc=ssrc, items=tuple(items)))
    if offset != length:
        raise MediaError(f"{length - offset} octets after the last SDES chunk")
    return SourceDescription(chunks=tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Goodbye:
    end = 4 * count
    if end > len(body):
        raise MediaError(f"BYE with {count} SSRCs runs past the end of the packet")
    ssrcs: tuple[int, ...] = _WORD_LISTS[count].unpack_from(body)
    reason = None
    if end < len(body):
        reason_end = end + 1 + body[end]
        if reason_end > len(body):
            raise MediaError("BYE reason runs past the end of the packet")
        reason = body[end + 1 : reason_end]
    return Goodbye(ssrcs=ssrcs, reason=reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 s6.1) into its packets, in order.

    Raises `MediaError` for an empty datagram, a version other than 2, a length field or count
    that runs past the data, or bad padding. Types other than SR, RR, SDES and BYE are returned as
    `UnknownRtcpPacket`. The rule that a compound starts with SR or RR is not enforced: reduced-size
    RTCP (RFC 5506) drops it.
    """
    packets: list[RtcpPacket] = []
    offset = 0
    length = len(data)
    if length == 0:
        raise MediaError("empty RTCP datagram")
    while offset < length:
        if offset + 4 > length:
            raise MediaError("RTCP header runs past the end of the datagram")
        first, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise MediaError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 + 4 * words
        if end > length:
            raise MediaError(f"RTCP length of {words} words runs past the end of the datagram")
        body = data[offset + 4 : end]
        offset = end
        if first & 0x20:
            # RFC 3550 s6.4.1: the last octet counts the padding, itself included
            padding = body[-1] if body else 0
            if padding == 0 or padding > len(body):
                raise MediaError(f"RTCP padding of {padding} octets does not fit the packet")
            body = body[:-padding]
        count = first & 0x1F
        packets.append(_parse_rtcp_body(packet_type, count, body))
    return packets


def _parse_rtcp_body(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RTCP_SR:
        reports_end = _SENDER_INFO.size + _REPORT_BLOCK.size * count
        if reports_end > len(body):
            raise MediaError(f"SR with {count} report blocks runs past the end of the packet")
        ssrc, ntp, rtp_timestamp, packet_count, octet_count = _SENDER_INFO.unpack_from(body)
        return SenderReport(
            ssrc=ssrc,
            sender_info=SenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_timestamp,
                packet_count=packet_count,
                octet_count=octet_count,
            ),
            reports=_parse_report_blocks(body, _SENDER_INFO.size, count),
            extension=body[reports_end:],
        )
    if packet_type == RTCP_RR:
        reports_end = 4 + _REPORT_BLOCK.size * count
        if reports_end > len(body):
            raise MediaError(f"RR with {count} report blocks runs past the end of the packet")
        (ssrc,) = _SSRC.unpack_from(body)
        return ReceiverReport(
            ssrc=ssrc,
            reports=_parse_report_blocks(body, 4, count),
            extension=body[reports_end:],
        )
    if packet_type == RTCP_SDES:
        return _parse_sdes(body, count)
    if packet_type == RTCP_BYE:
        return _parse_bye(body, count)
    return UnknownRtcpPacket(packet_type=packet_type, count=count, body=body)


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Join packets into one compound RTCP datagram (RFC 3550 s6.1)."""
    return b"".join(packet.serialize() for packet in packets)


def build_compound_report(
    *,
    ssrc: int,
    cname: str,
    reports: Sequence[ReportBlock] = (),
    sender_info: SenderInfo | None = None,
) -> bytes:
    """The regular compound RTCP report (RFC 3550 s6.1): SR or RR, then SDES with the CNAME.

    An SR when `sender_info` is given (we sent RTP since the last report), otherwise an RR. Report
    blocks beyond the 31 one packet holds go into further RRs (RFC 3550 s6.4.2).
    """
    first_reports = tuple(reports[:_MAX_COUNT])
    packets: list[RtcpPacket] = []
    if sender_info is not None:
        packets.append(SenderReport(ssrc=ssrc, sender_info=sender_info, reports=first_reports))
    else:
        packets.append(ReceiverReport(ssrc=ssrc, reports=first_reports))
    for start in range(_MAX_COUNT, len(reports), _MAX_COUNT):
        packets.append(
            ReceiverReport(ssrc=ssrc, reports=tuple(reports[start : start + _MAX_COUNT]))
        )
    cname_item = SdesItem(type=SDES_CNAME, value=cname.encode("utf-8"))
    packets.append(SourceDescription(chunks=(SdesChunk(ssrc=ssrc, items=(cname_item,)),)))
    return serialize_rtcp(packets)
